"""STFT / iSTFT matching `torch.stft` / `torch.istft` as HDemucs calls them, plus HDemucs's padding wrappers.

torch's settings reproduced here: periodic Hann window of length nfft, `center=True` with reflect padding,
`normalized=True` (spectrum scaled by nfft**-0.5, undone by the inverse), `onesided`, and the inverse's
division by the overlap-added squared window. All shapes are static per input length, so everything jits.
Always computed in float32, whatever the model's compute dtype. Shapes are jaxtyping annotations (checked by
the test suite, not at run time).
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Complex, Complex64, Float, Float32, Shaped

from ...errors import ConfigError


def hann_window(n: int) -> Float32[np.ndarray, " n"]:
    """`torch.hann_window(n)` (periodic), float32."""
    return (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / n)).astype(np.float32)


def overlap_add(pieces: Shaped[Array, "*pieces"], axis: int) -> Shaped[Array, "*summed"]:
    """Sum `pieces[..., l, j, ...]` into `out[..., l + j, ...]`.

    pieces: (..., L, m, ...) with `L` at `axis` and the m pieces per position at `axis + 1`.
    Returns (..., L + m - 1, ...). Used by the iSTFT (each output block of `hop` samples sums m shifted
    frames).
    """
    axis = axis % pieces.ndim
    m = pieces.shape[axis + 1]
    out: Array | None = None
    for j in range(m):
        piece = jnp.take(pieces, j, axis=axis + 1)
        widths = [(0, 0)] * piece.ndim
        widths[axis] = (j, m - 1 - j)
        piece = jnp.pad(piece, widths)
        out = piece if out is None else out + piece
    assert out is not None, "overlap_add: no pieces (m = 0)"
    return out


def stft(x: Float[Array | np.ndarray, "*batch samples"], nfft: int, hop: int) -> Complex64[Array, "*batch frames bins"]:
    """`torch.stft(x, nfft, hop, window=hann(nfft), normalized=True, center=True, pad_mode="reflect")`.

    x: (..., samples) float. Returns complex64 (..., frames, nfft // 2 + 1) with frames = 1 + samples // hop
    (time before frequency: the layout the model uses inside).
    """
    x = x.astype(jnp.float32)
    half = nfft // 2
    widths = [(0, 0)] * (x.ndim - 1) + [(half, half)]
    x = jnp.pad(x, widths, mode="reflect")
    frames = 1 + (x.shape[-1] - nfft) // hop
    index = np.arange(frames)[:, None] * hop + np.arange(nfft)[None, :]
    windowed = x[..., index] * hann_window(nfft)
    return jnp.fft.rfft(windowed, axis=-1) * np.float32(nfft**-0.5)


def istft(
    z: Complex[Array | np.ndarray, "*batch frames bins"], hop: int, length: int
) -> Float32[Array, "*batch length"]:
    """`torch.istft(z, nfft, hop, window=hann(nfft), normalized=True, center=True, length=length)`.

    z: complex (..., frames, nfft // 2 + 1). Returns float32 (..., length).
    """
    frames, bins = z.shape[-2], z.shape[-1]
    nfft = 2 * (bins - 1)
    if nfft % hop:
        raise ConfigError(f"istft: nfft {nfft} must be a multiple of the hop {hop}")
    window = hann_window(nfft)
    chunks = jnp.fft.irfft(z * np.float32(math.sqrt(nfft)), n=nfft, axis=-1).astype(jnp.float32) * window
    chunks = chunks.reshape(*chunks.shape[:-1], nfft // hop, hop)
    signal = overlap_add(chunks, axis=-3)
    signal = signal.reshape(*signal.shape[:-2], -1)
    # torch divides by the overlap-added squared window (computed here once, in numpy, for this shape).
    envelope = np.zeros(signal.shape[-1], np.float32)
    for f in range(frames):
        envelope[f * hop : f * hop + nfft] += window * window
    start = nfft // 2
    end = min(start + length, signal.shape[-1])
    if np.any(envelope[start:end] <= 1e-11):
        raise ConfigError("istft: window overlap-add is zero somewhere (torch raises the same)")
    signal = signal[..., start:end] / envelope[start:end]
    if end - start < length:
        signal = jnp.pad(signal, [(0, 0)] * (signal.ndim - 1) + [(0, length - (end - start))])
    return signal


def pad1d_reflect(
    x: Shaped[Array | np.ndarray, "*batch samples"], left: int, right: int
) -> Shaped[Array, "*batch padded"]:
    """Reflect-pad the last axis by (left, right), also when the signal is shorter than the padding.

    Reflection needs more samples than the pad. For shorter signals this follows demucs's `pad1d`: zeros
    first extend the signal, and the reflection shrinks by as much, so the output is always
    `left + samples + right` long with the signal at `[left : left + samples]`. (torchaudio's `_pad1d`
    appends the zeros without shrinking the reflection, and its `_spec` then raises; for every length it
    accepts, both agree exactly.)
    """
    length = x.shape[-1]
    widths = [(0, 0)] * (x.ndim - 1)
    if length <= max(left, right):
        extra = max(left, right) - length + 1
        extra_right = min(right, extra)
        extra_left = extra - extra_right
        x = jnp.pad(x, widths + [(extra_left, extra_right)])
        left, right = left - extra_left, right - extra_right
    return jnp.pad(x, widths + [(left, right)], mode="reflect")


def hdemucs_spec(x: Float[Array | np.ndarray, "*batch samples"], nfft: int) -> Complex64[Array, "*batch frames bins"]:
    """`HDemucs._spec`: x (..., samples) -> complex (..., frames, nfft // 2), frames = ceil(samples / hop).

    Padding, dropped Nyquist bin and dropped outer frames (two on each side) as in torchaudio.
    """
    hop = nfft // 4
    samples = x.shape[-1]
    frames = math.ceil(samples / hop)
    pad = hop // 2 * 3
    x = pad1d_reflect(x.astype(jnp.float32), pad, pad + frames * hop - samples)
    z = stft(x, nfft, hop)[..., :-1]
    return z[..., 2 : 2 + frames, :]


def hdemucs_ispec(
    z: Complex[Array | np.ndarray, "*batch frames bins"], nfft: int, length: int
) -> Float32[Array, "*batch length"]:
    """`HDemucs._ispec`: complex (..., frames, nfft // 2) -> float32 (..., length)."""
    hop = nfft // 4
    widths = [(0, 0)] * (z.ndim - 2)
    z = jnp.pad(z, widths + [(2, 2), (0, 1)])
    pad = hop // 2 * 3
    total = hop * math.ceil(length / hop) + 2 * pad
    x = istft(z, hop, total)
    return x[..., pad : pad + length]
