"""The inference schedule: normalisation, chunking, batching and weighted overlap-add, streamed.

A song of any length is separated with ONE compiled forward pass of shape (batch_size, audio_channels,
segment samples). The pipeline, each stage a generator over blocks so memory does not grow with the song:

    blocks (channels, n) at the input rate
      -> normalise with the mono mix's mean/std (computed in a first pass over the input)
      -> adapt channels (mono is duplicated) -> resample to the model rate (soxr, streamed)
      -> cut into chunks of `segment` samples every `stride` samples (zeros outside the song),
         run `batch_size` chunks per forward (the last batch padded with empty rows)
      -> weighted overlap-add (`OverlapAdd`), finished samples leave as soon as no later chunk covers them
      -> back to the input's channels and rate -> denormalise -> {source: (channels, n)} blocks

Demucs parity notes: the weighting, normalisation (`sources * std + mean`, the mean added to every source)
and random shifts follow demucs's `apply_model` / `separate.py`. One difference is deliberate: demucs runs
the song's final, shorter chunk at its own length; here every chunk is `segment` samples, the song's end
zero-padded, because a shorter chunk would need a compilation per song length.

This module opens no file: `file_output.separate_file` reads a song through `audio_io`, runs it through
`Separator.stream` and writes the stems. Options are validated by `options.SeparationOptions`. Array shapes are
jaxtyping annotations, checked by the test suite (tests/shape_checks.py), never when a user separates.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import soxr
from jaxtyping import Float, Float32

from .errors import AudioError, OptionError
from .layers import Dtype
from .modeling_flax_hdemucs import FlaxHDemucs
from .options import WEIGHTINGS, SeparationOptions

STD_EPS = 1e-8  # added to the mix's std (demucs's api.py) so silence normalises to silence, not NaN
BLOCK = 1 << 16  # samples per block read from a file or handed between stages
Progress = Callable[[int, int], None]  # (chunks_done, chunks_total)
# float32 (batch, channels, segment) -> (batch, sources, channels, segment): one batch through the network
Forward = Callable[[Float32[np.ndarray, "batch channels segment"]], Float[np.ndarray, "batch sources channels segment"]]


# ---------------------------------------------------------------------------------------------------------
# Weights and chunk plan


def chunk_weight(
    segment: int, overlap_samples: int, weighting: str = "triangle", transition_power: float = 1.0
) -> Float32[np.ndarray, " segment"]:
    """The overlap-add weight of one chunk: float32 (segment,), every value > 0, maximum 1.

    "triangle" is demucs's: a triangle peaking mid-chunk, normalised to 1, raised to `transition_power`
    (larger means sharper transitions; with overlap < 50 % and power 1 the cross-fade is linear).
    "linear" is torchaudio's tutorial fade: linear ramps over the `overlap_samples` at each end, flat 1
    between, also raised to `transition_power`. Ramps stay strictly positive so the song's first and last
    samples, covered by one chunk only, keep a non-zero weight.
    """
    if weighting == "triangle":
        half = segment // 2
        weight = np.concatenate([np.arange(1, half + 1), np.arange(segment - half, 0, -1)]).astype(np.float64)
    elif weighting == "linear":
        ramp = max(overlap_samples, 0) + 1
        index = np.arange(segment, dtype=np.float64)
        weight = np.minimum(1.0, np.minimum((index + 1) / ramp, (segment - index) / ramp))
    else:
        raise OptionError("weighting", weighting, f"must be one of {', '.join(WEIGHTINGS)}")
    weight = (weight / weight.max()) ** transition_power
    return weight.astype(np.float32)


@dataclass(frozen=True)
class Chunk:
    """One forward-pass input: `segment` samples of the mix from `start` (model-rate samples; negative or past
    the end means zeros), belonging to the pass delayed by `delays[shift]` samples."""

    shift: int
    start: int


def plan_chunks(length: int, segment: int, stride: int, delays: tuple[int, ...] = (0,)) -> list[Chunk]:
    """Every chunk needed to cover `length` samples, in processing order (by start, then shift).

    For delay d, demucs's shift trick prepends d zeros; that longer signal (length + d) is cut every `stride`
    samples from 0 until a chunk reaches its end, so in the song's own time the chunks start at k * stride - d.
    Unlike demucs (a chunk at every multiple of the stride below the length) no chunk starts once an earlier
    one has reached the end: a song no longer than the segment is exactly one forward pass.
    """
    if length < 1 or segment < 1 or not 1 <= stride <= segment:
        raise ValueError(
            f"need length >= 1, segment >= 1 and 1 <= stride <= segment (got {length}, {segment}, {stride})"
        )
    chunks = [
        Chunk(s, k * stride - d)
        for s, d in enumerate(delays)
        for k in range(1 + max(0, -(-(length + d - segment) // stride)))
    ]
    return sorted(chunks, key=lambda c: (c.start, c.shift))


def draw_shift_delays(shifts: int, max_shift: int, seed: int) -> tuple[int, ...]:
    """Delays (samples, in [0, max_shift]) for demucs's random-shift averaging; `shifts=0` means one pass
    with no delay. Deterministic in `seed` (an explicit `jax.random` key; no global RNG)."""
    if shifts <= 0:
        return (0,)
    draws = jax.random.randint(jax.random.key(seed), (shifts,), 0, max_shift + 1)
    return tuple(int(d) for d in np.asarray(draws))


# ---------------------------------------------------------------------------------------------------------
# Streaming overlap-add


class _Window:
    """Samples [base, base + n) of a (channels, length) signal fed in blocks; zeros outside [0, length)."""

    def __init__(self, blocks: Iterator[np.ndarray], channels: int, length: int):
        self._blocks, self.length = blocks, length
        self.base, self._data = 0, np.zeros((channels, 0), np.float32)

    @property
    def end(self) -> int:
        return self.base + self._data.shape[1]

    def fill_to(self, position: int) -> None:
        """Read blocks until samples before `position` (capped at the length) are present."""
        position = min(position, self.length)
        pending = []
        end = self.end
        while end < position:
            block = next(self._blocks, None)
            if block is None:  # a short stream (resampler rounding) is padded with zeros to the length
                block = np.zeros((self._data.shape[0], position - end), np.float32)
            block = block[:, : self.length - end]
            pending.append(block)
            end += block.shape[1]
        if pending:
            self._data = np.concatenate([self._data, *pending], axis=1)

    def chunk(self, start: int, segment: int) -> np.ndarray:
        """(channels, segment) from `start`, zeros where outside the song."""
        out = np.zeros((self._data.shape[0], segment), np.float32)
        lo, hi = max(start, 0), min(start + segment, self.length)
        if hi > lo:
            assert lo >= self.base and hi <= self.end, "window does not hold the chunk"
            out[:, lo - start : hi - start] = self._data[:, lo - self.base : hi - self.base]
        return out

    def drop_before(self, position: int) -> None:
        position = min(max(position, self.base), self.end)
        if position > self.base:
            self._data = self._data[:, position - self.base :].copy()
            self.base = position


class OverlapAdd:
    """Weighted overlap-add of chunk outputs over `length` samples, streamed.

    For each shift pass s: out_s(t) = sum_k w(t - start_k) y_k(t) / sum_k w(t - start_k); the result is the
    mean over passes. Chunks must be added in order of start; `pop(frontier)` returns the finished samples
    before `frontier` (no chunk yet to come covers them). Sums are kept in float64 (with high overlap and
    a sharp weight, many small float32 terms would cost ~1e-6 of accuracy); output is float32. Storage is
    bounded by the span of the chunks in flight.
    """

    def __init__(self, length: int, n_shifts: int, weight: Float[np.ndarray, " segment"], out_shape: tuple[int, ...]):
        self.length, self.weight = length, weight
        self.base = 0  # first sample not yet returned
        self._acc = np.zeros((n_shifts, *out_shape, 0), np.float64)
        self._wsum = np.zeros((n_shifts, 0), np.float64)

    def add(self, shift: int, start: int, chunk: Float[np.ndarray, "*out segment"]) -> None:
        """Accumulate `chunk` (*out_shape, segment) for pass `shift`; only samples inside [0, length) count."""
        segment = chunk.shape[-1]
        lo, hi = max(start, self.base), min(start + segment, self.length)
        if hi <= lo:
            return
        needed = hi - self.base
        if needed > self._acc.shape[-1]:
            grow = needed - self._acc.shape[-1]
            self._acc = np.concatenate([self._acc, np.zeros((*self._acc.shape[:-1], grow), np.float64)], axis=-1)
            self._wsum = np.concatenate([self._wsum, np.zeros((self._wsum.shape[0], grow), np.float64)], axis=-1)
        w = self.weight[lo - start : hi - start]
        self._acc[shift, ..., lo - self.base : hi - self.base] += chunk[..., lo - start : hi - start] * w
        self._wsum[shift, lo - self.base : hi - self.base] += w

    def pop(self, frontier: int) -> Float32[np.ndarray, "*out n"]:
        """Finished output for samples [base, min(frontier, length)): (*out_shape, n) float32."""
        n = max(0, min(frontier, self.length) - self.base)
        assert n <= self._acc.shape[-1], "popping samples no chunk has covered"
        wsum = self._wsum[:, :n]
        assert (wsum > 0).all(), "a sample without weight (chunk plan does not cover the song)"
        acc = self._acc[..., :n]
        out = (acc / wsum.reshape(wsum.shape[0], *([1] * (acc.ndim - 2)), n)).mean(axis=0).astype(np.float32)
        self._acc = self._acc[..., n:].copy()
        self._wsum = self._wsum[:, n:].copy()
        self.base += n
        return out


def overlap_add_stream(
    blocks: Iterable[Float[np.ndarray, "channels n"]],
    length: int,
    forward: Forward,
    *,
    channels: int,
    segment: int,
    stride: int,
    batch_size: int,
    weight: Float[np.ndarray, " segment"],
    delays: tuple[int, ...] = (0,),
    progress: Progress | None = None,
) -> Iterator[Float32[np.ndarray, "sources channels n"]]:
    """Separate a signal streamed as (channels, n) blocks totalling `length` samples.

    `forward` maps float32 (batch_size, channels, segment) to (batch_size, sources, channels, segment); it
    always sees exactly that shape (the last batch is padded with zero rows, whose outputs are dropped).
    Yields float32 (sources, channels, n) blocks that together hold exactly `length` samples.
    """
    chunks = plan_chunks(length, segment, stride, delays)
    window = _Window(iter(blocks), channels, length)
    ola: OverlapAdd | None = None
    if progress is not None:
        progress(0, len(chunks))
    for first in range(0, len(chunks), batch_size):
        batch = chunks[first : first + batch_size]
        window.fill_to(max(c.start for c in batch) + segment)
        inputs = np.zeros((batch_size, channels, segment), np.float32)
        for row, c in enumerate(batch):
            inputs[row] = window.chunk(c.start, segment)
        outputs = np.asarray(forward(inputs), np.float32)
        if ola is None:
            ola = OverlapAdd(length, len(delays), weight, outputs.shape[1:-1])
        for row, c in enumerate(batch):
            ola.add(c.shift, c.start, outputs[row])
        following = chunks[first + batch_size].start if first + batch_size < len(chunks) else length
        window.drop_before(following)
        finished = ola.pop(following)
        if progress is not None:  # before yielding: a consumer may stop once it has the last samples
            progress(min(first + batch_size, len(chunks)), len(chunks))
        if finished.shape[-1]:
            yield finished


# ---------------------------------------------------------------------------------------------------------
# Normalisation, channels and rates


@dataclass(frozen=True)
class MixStats:
    """Mean and unbiased std (ddof=1, as torch's `Tensor.std`) of the mono mix; `frames` samples read."""

    mean: float
    std: float
    frames: int

    def scale(self) -> float:
        """The divisor used for normalisation: std + 1e-8, so silence and DC do not divide by zero."""
        return self.std + STD_EPS


def mix_statistics(blocks: Iterable[Float[np.ndarray, "channels n"]], name: str = "<array>") -> MixStats:
    """Stats of the mono mix (mean over channels) of (channels, n) blocks, one pass, float64 (Chan et al.'s
    pairwise update, which keeps a loud DC offset from cancelling the variance). Non-finite samples raise
    `AudioError` naming `name`."""
    count, mean, m2 = 0, 0.0, 0.0
    for block in blocks:
        if not np.isfinite(block).all():
            bad = count + int(np.argmax(~np.isfinite(block).all(axis=0)))
            raise AudioError(f"{name}: contains NaN or infinite samples (first at sample {bad})")
        mono = block.astype(np.float64).mean(axis=0)
        n = mono.size
        if n == 0:
            continue
        block_mean = float(mono.mean())
        block_m2 = float(((mono - block_mean) ** 2).sum())
        delta = block_mean - mean
        total = count + n
        mean += delta * n / total
        m2 += block_m2 + delta * delta * count * n / total
        count = total
    std = math.sqrt(m2 / (count - 1)) if count > 1 else 0.0
    return MixStats(mean, std, count)


def resampled_length(frames: int, rate_in: int, rate_out: int) -> int:
    """Output length of soxr for `frames` input samples: round half up of frames * rate_out / rate_in."""
    return (2 * frames * rate_out + rate_in) // (2 * rate_in)


def _resample_stream(blocks: Iterable[np.ndarray], rate_in: int, rate_out: int) -> Iterator[np.ndarray]:
    """(channels, n) blocks -> the same signal at `rate_out`, streamed through soxr (HQ quality)."""
    if rate_in == rate_out:
        yield from blocks
        return
    stream = None
    previous = None
    for block in blocks:  # one block of look-ahead so the final one is flagged `last`
        if previous is not None:
            stream = stream or soxr.ResampleStream(rate_in, rate_out, previous.shape[0], dtype="float32", quality="HQ")
            out = stream.resample_chunk(np.ascontiguousarray(previous.T))
            if out.shape[0]:
                yield np.ascontiguousarray(out.T)
        previous = block
    if previous is not None:
        stream = stream or soxr.ResampleStream(rate_in, rate_out, previous.shape[0], dtype="float32", quality="HQ")
        out = stream.resample_chunk(np.ascontiguousarray(previous.T), last=True)
        if out.shape[0]:
            yield np.ascontiguousarray(out.T)


def _exact_length(blocks: Iterable[np.ndarray], length: int, shape: tuple[int, ...]) -> Iterator[np.ndarray]:
    """Trim or zero-pad a block stream to exactly `length` samples (guards resampler rounding)."""
    done = 0
    for block in blocks:
        block = block[..., : length - done]
        if block.shape[-1]:
            done += block.shape[-1]
            yield block
        if done >= length:
            return
    if done < length:
        yield np.zeros((*shape, length - done), np.float32)


# ---------------------------------------------------------------------------------------------------------
# The Separator


def _adapt_channels_in(block: np.ndarray, model_channels: int) -> np.ndarray:
    return np.repeat(block, model_channels, axis=0) if block.shape[0] == 1 and model_channels > 1 else block


def _adapt_channels_out(stems: np.ndarray, channels: int) -> np.ndarray:
    """(sources, model_channels, n) -> (sources, channels, n): mono input gets the mean of the model's channels."""
    return stems.mean(axis=1, keepdims=True) if channels == 1 and stems.shape[1] > 1 else stems


def network_forward(model: FlaxHDemucs) -> Forward:
    """The model's own jitted forward pass (compiled once per shape, in the model's compute dtype) on numpy
    batches, with the parameters the model holds at call time."""

    def forward(
        batch: Float32[np.ndarray, "batch channels segment"],
    ) -> Float32[np.ndarray, "batch sources channels segment"]:
        return np.asarray(model(batch).sources)

    return forward


class Separator:
    """Separates songs of any length with a `FlaxHDemucs`, compiling one forward shape.

    Args:
        model: the network. Its `dtype` is the compute dtype (load it with `dtype=jnp.bfloat16` for bfloat16);
            normalisation, resampling and overlap-add stay float32 whatever it is.
        segment, overlap, shifts, seed, batch_size, weighting, transition_power: the schedule; see
            `SeparationOptions` (validated there).
        progress: default callback (chunks_done, chunks_total) for `separate` / `stream`.
        forward: what runs one batch of chunks, float32 (batch_size, audio_channels, segment samples) ->
            (batch_size, sources, audio_channels, segment samples), always called with exactly that shape.
            None: `network_forward(model)`. Another callable (a stand-in network, a wrapper that records or
            fails) changes the network and nothing else.
    """

    def __init__(
        self,
        model: FlaxHDemucs,
        *,
        segment: float | None = None,
        overlap: float = 0.25,
        shifts: int = 0,
        seed: int = 0,
        batch_size: int = 1,
        weighting: str = "triangle",
        transition_power: float = 1.0,
        progress: Progress | None = None,
        forward: Forward | None = None,
    ):
        self.model = model
        self.sample_rate = int(model.config.sampling_rate)
        self.sources = list(model.config.sources)
        self.audio_channels = int(model.config.audio_channels)
        self.progress = progress
        self.forward = forward or network_forward(model)
        self._set_options(SeparationOptions(segment, overlap, shifts, seed, batch_size, weighting, transition_power))

    def _set_options(self, options: SeparationOptions) -> None:
        self.options = options
        self.segment_samples = options.segment_samples(self.sample_rate)
        self.stride = options.stride(self.sample_rate)
        self.weight = chunk_weight(
            self.segment_samples, self.segment_samples - self.stride, options.weighting, options.transition_power
        )

    @classmethod
    def from_pretrained(
        cls,
        model: str | os.PathLike | None = None,
        *,
        revision: str | None = None,
        dtype: Dtype = jnp.float32,
        **options: Any,
    ) -> Separator:
        """Load `model` (a local folder or Hub repo id; None: the default model) with
        `pretrained.load_model`, computing in `dtype`, and wrap it. Raises `ModelLoadError`."""
        from .pretrained import load_model

        return cls(load_model(model, dtype=jnp.dtype(dtype), revision=revision), **options)

    def with_options(
        self,
        *,
        overlap: float | None = None,
        shifts: int | None = None,
        seed: int | None = None,
        weighting: str | None = None,
        transition_power: float | None = None,
    ) -> Separator:
        """A Separator sharing this one's model and compiled forward pass, with other scheduling options
        (None keeps the current value). The forward pass's shape does not depend on them, so the variant
        compiles nothing: a server can warm up once and still offer per-request overlap and shifts."""
        variant = copy.copy(self)
        variant._set_options(
            self.options.replace(
                overlap=overlap, shifts=shifts, seed=seed, weighting=weighting, transition_power=transition_power
            )
        )
        return variant

    @property
    def overlap(self) -> float:
        return self.options.overlap

    @property
    def shifts(self) -> int:
        return self.options.shifts

    @property
    def seed(self) -> int:
        return self.options.seed

    @property
    def batch_size(self) -> int:
        return self.options.batch_size

    @property
    def dtype(self) -> jnp.dtype:
        """The network's compute dtype (the model's)."""
        return jnp.dtype(self.model.dtype)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """The one shape the forward pass runs at: (batch_size, audio_channels, segment samples)."""
        return (self.batch_size, self.audio_channels, self.segment_samples)

    def warmup(self) -> None:
        """Compile (or load from the persistent cache) the forward pass now rather than on the first chunk."""
        self.forward(np.zeros(self.input_shape, np.float32))

    def check_channels(self, channels: int, name: str) -> None:
        """Raise `AudioError` naming `name` unless audio with `channels` channels can be separated."""
        if channels != self.audio_channels and not (channels == 1 and self.audio_channels > 1):
            wanted = "mono or stereo" if self.audio_channels == 2 else f"mono or {self.audio_channels}-channel"
            raise AudioError(f"{name}: {channels} channels is not supported (this model separates {wanted} audio)")

    def chunks_total(self, frames: int, sample_rate: int) -> int:
        """Forward-pass chunks (before batching) needed for `frames` samples at `sample_rate` Hz."""
        length = resampled_length(frames, sample_rate, self.sample_rate)
        return len(plan_chunks(length, self.segment_samples, self.stride, self._delays()))

    def _delays(self) -> tuple[int, ...]:
        return draw_shift_delays(self.shifts, int(0.5 * self.sample_rate), self.seed)

    def stream(
        self,
        blocks: Callable[[], Iterable[Float[np.ndarray, "channels n"]]],
        channels: int,
        sample_rate: int,
        *,
        name: str = "<stream>",
        progress: Progress | None = None,
    ) -> Iterator[Float32[np.ndarray, "sources channels n"]]:
        """Separate a signal given as a re-iterable source of float (channels, n) blocks at `sample_rate` Hz:
        `blocks()` starts again from the first sample. It is read twice: once for the mix statistics
        (`mix_statistics`), once to separate. `name` is the signal's name in error messages.

        Yields float32 (sources, channels, n) blocks at `sample_rate`, as many samples in total as the input.
        Memory is bounded by the segment and batch size, not by the signal's length.
        """
        self.check_channels(channels, name)
        stats = mix_statistics(blocks(), name)
        frames = stats.frames
        if frames == 0:
            raise AudioError(f"{name}: no audio samples (0 frames)")
        mean, scale = np.float32(stats.mean), np.float32(stats.scale())
        length = resampled_length(frames, sample_rate, self.sample_rate)

        normalised = (_adapt_channels_in((b - mean) / scale, self.audio_channels) for b in blocks())
        at_model_rate = _resample_stream(normalised, sample_rate, self.sample_rate)
        separated = overlap_add_stream(
            _exact_length(at_model_rate, length, (self.audio_channels,)),
            length,
            self.forward,
            channels=self.audio_channels,
            segment=self.segment_samples,
            stride=self.stride,
            batch_size=self.batch_size,
            weight=self.weight,
            delays=self._delays(),
            progress=progress or self.progress,
        )
        sources = len(self.sources)
        flat = (_adapt_channels_out(s, channels).reshape(sources * channels, -1) for s in separated)
        back = _resample_stream(flat, self.sample_rate, sample_rate)
        for block in _exact_length(back, frames, (sources * channels,)):
            # demucs undoes the normalisation on every source, so each one receives the mix's mean.
            yield block.reshape(sources, channels, -1) * scale + mean

    def separate(
        self, audio: Float[np.ndarray, "*channels samples"], sample_rate: int, progress: Progress | None = None
    ) -> dict[str, Float32[np.ndarray, "*channels samples"]]:
        """Separate float audio (channels, samples) — or (samples,) for mono — at `sample_rate` Hz.

        Returns {source: float32 array shaped like `audio`} at the input's rate and channel count. `audio` is
        not modified. Raises `AudioError` for empty, non-finite or more-than-supported-channel input.
        """
        audio = np.asarray(audio)
        squeeze = audio.ndim == 1
        view = audio[None] if squeeze else audio
        if view.ndim != 2:
            raise AudioError(f"<array>: expected (channels, samples), got shape {audio.shape}")
        self.check_channels(view.shape[0], "<array>")
        if view.shape[1] == 0:
            raise AudioError("<array>: no audio samples (0 frames)")
        if sample_rate <= 0:
            raise AudioError(f"<array>: invalid sample rate {sample_rate}")
        frames = view.shape[1]

        def blocks() -> Iterator[np.ndarray]:  # copies: the caller's array is never written to
            for i in range(0, frames, BLOCK):
                yield np.array(view[:, i : i + BLOCK], np.float32)

        out = np.zeros((len(self.sources), view.shape[0], frames), np.float32)
        done = 0
        for block in self.stream(blocks, view.shape[0], sample_rate, name="<array>", progress=progress):
            out[..., done : done + block.shape[-1]] = block
            done += block.shape[-1]
        return {name: (out[i, 0] if squeeze else out[i]) for i, name in enumerate(self.sources)}
