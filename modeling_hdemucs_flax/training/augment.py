"""demucs's training augmentations (demucs/augment.py: Shift, FlipChannels, FlipSign, Remix, Scale) in numpy, each
drawing from the `np.random.Generator` it is given, so a batch is a pure function of its seed.

Every function takes and returns float32 (batch, sources, channels, samples) stems; none modifies its input.
"""

from __future__ import annotations

import numpy as np


def shift(stems: np.ndarray, shift: int, rng: np.random.Generator, *, same: bool = False) -> np.ndarray:
    """Cut `samples - shift` samples out of each example's sources at a random offset in [0, shift), drawn per
    source (demucs's default) or once per example with `same`: sources that never line up the same way twice."""
    batch, sources, _, samples = stems.shape
    if shift <= 0:
        return stems
    length = samples - shift
    offsets = rng.integers(0, shift, (batch, 1 if same else sources))
    offsets = np.broadcast_to(offsets, (batch, sources))
    out = np.empty(stems.shape[:3] + (length,), np.float32)
    for b in range(batch):
        for s in range(sources):
            out[b, s] = stems[b, s, :, offsets[b, s] : offsets[b, s] + length]
    return out


def flip_channels(stems: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Swap left and right of each stereo source with probability 1/2 (mono and other counts: unchanged)."""
    return _flip_channels_(stems.copy(), rng)


def _flip_channels_(stems: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """`flip_channels` in place."""
    batch, sources, channels, _ = stems.shape
    if channels != 2:
        return stems
    swap = rng.integers(0, 2, (batch, sources)) == 1  # demucs draws the channel that goes first
    for b, s in zip(*np.nonzero(swap), strict=True):
        stems[b, s] = stems[b, s, ::-1].copy()
    return stems


def flip_sign(stems: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Multiply each source by -1 with probability 1/2."""
    return _flip_sign_(stems.copy(), rng)


def _flip_sign_(stems: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    signs = rng.integers(0, 2, stems.shape[:2]).astype(np.float32) * 2 - 1
    stems *= signs[..., None, None]
    return stems


def remix(stems: np.ndarray, rng: np.random.Generator, group_size: int = 4) -> np.ndarray:
    """New mixes: within each group of `group_size` consecutive examples, each source is permuted across the
    group's examples independently (demucs's Remix; groups keep the odds of two sources of one track meeting
    again independent of the batch size). `group_size` must divide the batch."""
    batch, sources = stems.shape[:2]
    if batch % group_size:
        raise ValueError(f"batch size {batch} is not a multiple of the remix group size {group_size}")
    groups = stems.reshape(batch // group_size, group_size, *stems.shape[1:])
    order = np.argsort(rng.random((batch // group_size, group_size, sources)), axis=1)
    # mixed[g, i, s] = groups[g, order[g, i, s], s]: whole (channels, samples) blocks picked by index
    group_index = np.arange(batch // group_size)[:, None, None]
    mixed = groups[group_index, order, np.arange(sources)[None, None, :]]
    return mixed.reshape(stems.shape)


def scale(stems: np.ndarray, rng: np.random.Generator, low: float = 0.25, high: float = 1.25) -> np.ndarray:
    """Multiply each source of each example by a gain drawn uniformly in [low, high)."""
    return _scale_(stems.copy(), rng, low, high)


def _scale_(stems: np.ndarray, rng: np.random.Generator, low: float = 0.25, high: float = 1.25) -> np.ndarray:
    gains = rng.uniform(low, high, stems.shape[:2]).astype(np.float32)
    stems *= gains[..., None, None]
    return stems


def demucs_augment(stems: np.ndarray, shift_samples: int, rng: np.random.Generator, group_size: int) -> np.ndarray:
    """demucs's training pipeline in its order: shift, flip channels, flip sign, remix, scale. One new array
    (the shift's, or a copy), then every step in place but the remix (a gather): 176 MB per batch of 16 examples
    of 7.8 s is copied twice, not six times."""
    stems = shift(stems, shift_samples, rng) if shift_samples > 0 else np.array(stems, np.float32)
    stems = _flip_channels_(stems, rng)
    stems = _flip_sign_(stems, rng)
    stems = remix(stems, rng, group_size)
    return _scale_(stems, rng)
