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
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import soxr

from .audio_io import (
    AtomicAudioWriter,
    AudioError,
    check_output_format,
    inspect_audio,
    iter_audio_blocks,
    output_subtype,
)
from .modeling_flax_hdemucs import FlaxHDemucs

DEFAULT_SEGMENT = 7.8  # seconds: demucs's segment for Hybrid Demucs at 44.1 kHz
COMPILATION_CACHE_ENV = "HDEMUCS_FLAX_COMPILATION_CACHE"  # a folder, or "0"/"off"/"false" to disable
STD_EPS = 1e-8  # added to the mix's std (demucs's api.py) so silence normalises to silence, not NaN
BLOCK = 1 << 16  # samples per block read from a file or handed between stages
Progress = Callable[[int, int], None]  # (chunks_done, chunks_total)


# ---------------------------------------------------------------------------------------------------------
# Weights and chunk plan


def chunk_weight(
    segment: int, overlap_samples: int, weighting: str = "triangle", transition_power: float = 1.0
) -> np.ndarray:
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
        raise ValueError(f"weighting must be 'triangle' or 'linear', not {weighting!r}")
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

    def __init__(self, length: int, n_shifts: int, weight: np.ndarray, out_shape: tuple[int, ...]):
        self.length, self.weight = length, weight
        self.base = 0  # first sample not yet returned
        self._acc = np.zeros((n_shifts, *out_shape, 0), np.float64)
        self._wsum = np.zeros((n_shifts, 0), np.float64)

    def add(self, shift: int, start: int, chunk: np.ndarray) -> None:
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

    def pop(self, frontier: int) -> np.ndarray:
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
    blocks: Iterable[np.ndarray],
    length: int,
    forward: Callable[[np.ndarray], np.ndarray],
    *,
    channels: int,
    segment: int,
    stride: int,
    batch_size: int,
    weight: np.ndarray,
    delays: tuple[int, ...] = (0,),
    progress: Progress | None = None,
) -> Iterator[np.ndarray]:
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


def mix_statistics(blocks: Iterable[np.ndarray], name: str = "<array>") -> MixStats:
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
# Compilation


def _default_cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "hdemucs-flax" / "jax-compilation-cache"


def configure_compilation_cache(setting: str | os.PathLike | bool | None = True) -> Path | None:
    """Point JAX's persistent compilation cache at a folder so a later process loads the compiled forward
    pass instead of compiling it again (tens of seconds for the full model on CPU).

    `True`: the folder in `$HDEMUCS_FLAX_COMPILATION_CACHE` (set it to "0"/"off"/"false" to disable), else a
    cache folder the user already gave JAX (`jax_compilation_cache_dir`), else
    `$XDG_CACHE_HOME/hdemucs-flax/jax-compilation-cache` (`~/.cache/...`). A path: that folder. `False`/`None`:
    leave JAX's configuration alone. Returns the folder in use, or None.

    This is process-wide JAX configuration. Compiles of any duration are persisted
    (`jax_persistent_cache_min_compile_time_secs = 0`): JAX's default of 1 s would skip small models.
    """
    if setting is None or setting is False:
        return None
    if setting is True:
        env = os.environ.get(COMPILATION_CACHE_ENV)
        if env is not None and env.strip().lower() in ("", "0", "off", "false", "no"):
            return None
        folder = env or jax.config.jax_compilation_cache_dir or _default_cache_dir()
    else:
        folder = setting
    folder = Path(folder).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None  # an unusable cache must not stop separation: compile every time instead
    from jax.experimental.compilation_cache import compilation_cache

    if jax.config.jax_compilation_cache_dir != str(folder):
        compilation_cache.set_cache_dir(str(folder))
        # JAX decides once per process whether the cache is in use (at its first compile); start over so the
        # folder applies even if something was compiled before this Separator was built.
        compilation_cache.reset_cache()
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    return folder


# ---------------------------------------------------------------------------------------------------------
# The Separator


class _Reader:
    """Hands out the samples of a (channels, n) block stream in pieces of any size."""

    def __init__(self, blocks: Iterable[np.ndarray]):
        self._blocks, self._buffer = iter(blocks), None

    def take(self, n: int) -> np.ndarray:
        """The next `n` samples: (channels, n); fewer only if the stream ends."""
        pieces, have = [], 0
        while have < n:
            block = self._buffer if self._buffer is not None else next(self._blocks, None)
            self._buffer = None
            if block is None:
                break
            if have + block.shape[-1] > n:
                block, self._buffer = block[:, : n - have], block[:, n - have :]
            pieces.append(block)
            have += block.shape[-1]
        return np.concatenate(pieces, axis=1)


def _adapt_channels_in(block: np.ndarray, model_channels: int) -> np.ndarray:
    return np.repeat(block, model_channels, axis=0) if block.shape[0] == 1 and model_channels > 1 else block


def _adapt_channels_out(stems: np.ndarray, channels: int) -> np.ndarray:
    """(sources, model_channels, n) -> (sources, channels, n): mono input gets the mean of the model's channels."""
    return stems.mean(axis=1, keepdims=True) if channels == 1 and stems.shape[1] > 1 else stems


class Separator:
    """Separates songs of any length with a `FlaxHDemucs`, compiling one forward shape.

    Args:
        model: the network.
        segment: chunk length in seconds (None: 7.8 s, demucs's choice for Hybrid Demucs).
        overlap: fraction of a chunk shared with the next one, in [0, 1).
        shifts: demucs's random-shift averaging: run this many passes, each on the song delayed by a random
            0..0.5 s, and average (0: one pass, no delay). Deterministic given `seed`.
        seed: seed of the shift delays.
        batch_size: chunks per forward pass.
        dtype: compute dtype of the network (None: the model's); normalisation, resampling and overlap-add stay
            float32.
        weighting: "triangle" (demucs) or "linear" (torchaudio tutorial's linear fade).
        transition_power: exponent applied to the weight; larger values give sharper transitions.
        progress: default callback (chunks_done, chunks_total) for `separate` / `separate_file`.
        compilation_cache: see `configure_compilation_cache` (True: on, in the user's cache folder).
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
        dtype=None,
        weighting: str = "triangle",
        transition_power: float = 1.0,
        progress: Progress | None = None,
        compilation_cache: str | os.PathLike | bool | None = True,
    ):
        self.model = model
        self.sample_rate = int(model.config.sampling_rate)
        self.sources = list(model.config.sources)
        self.audio_channels = int(model.config.audio_channels)
        segment = DEFAULT_SEGMENT if segment is None else float(segment)
        self.segment_samples = int(round(segment * self.sample_rate))
        if not 0 <= overlap < 1:
            raise ValueError(f"overlap must be in [0, 1), got {overlap}")
        if self.segment_samples < 1:
            raise ValueError(f"segment of {segment} s is shorter than one sample at {self.sample_rate} Hz")
        self.overlap = float(overlap)
        self.stride = max(1, int((1 - overlap) * self.segment_samples))
        if shifts < 0 or batch_size < 1 or transition_power <= 0:
            raise ValueError("need shifts >= 0, batch_size >= 1 and transition_power > 0")
        self.shifts, self.seed, self.batch_size = int(shifts), int(seed), int(batch_size)
        self.weighting, self.transition_power = weighting, float(transition_power)
        self.weight = chunk_weight(
            self.segment_samples, self.segment_samples - self.stride, weighting, transition_power
        )
        self.progress = progress
        self.compilation_cache_dir = configure_compilation_cache(compilation_cache)

        module = (
            model.module
            if dtype is None or jnp.dtype(dtype) == jnp.dtype(model.dtype)
            else model.module.clone(dtype=dtype)
        )
        self.dtype = jnp.dtype(module.dtype)

        def hdemucs_separate_batch(params, waveform):  # the name shows in JAX's compile logs and events
            return module.apply({"params": params}, waveform)

        self._forward = jax.jit(hdemucs_separate_batch)

    @classmethod
    def from_pretrained(
        cls, model: str | os.PathLike | None = None, *, revision: str | None = None, **options
    ) -> Separator:
        """Load `model` (a local folder or Hub repo id; None: the default model) with
        `pretrained.load_model` and wrap it. `dtype` in `options` is also the dtype the model is built with.
        Raises `pretrained.ModelLoadError`."""
        from .pretrained import load_model

        dtype = options.get("dtype") or jnp.float32
        return cls(load_model(model, dtype=dtype, revision=revision), **options)

    def with_options(
        self, *, overlap: float | None = None, shifts: int | None = None, seed: int | None = None
    ) -> Separator:
        """A Separator sharing this one's model and compiled forward pass, with other scheduling options
        (None keeps the current value). The forward pass's shape does not depend on them, so the variant
        compiles nothing: a server can warm up once and still offer per-request overlap and shifts."""
        overlap = self.overlap if overlap is None else float(overlap)
        shifts = self.shifts if shifts is None else int(shifts)
        if not 0 <= overlap < 1 or shifts < 0:
            raise ValueError(f"need 0 <= overlap < 1 and shifts >= 0 (got {overlap}, {shifts})")
        variant = copy.copy(self)
        variant.overlap, variant.shifts = overlap, shifts
        variant.seed = self.seed if seed is None else int(seed)
        variant.stride = max(1, int((1 - overlap) * self.segment_samples))
        variant.weight = chunk_weight(
            self.segment_samples, self.segment_samples - variant.stride, self.weighting, self.transition_power
        )
        return variant

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """The one shape the forward pass is compiled for: (batch_size, audio_channels, segment samples)."""
        return (self.batch_size, self.audio_channels, self.segment_samples)

    def warmup(self) -> None:
        """Compile (or load from the persistent cache) the forward pass now rather than on the first chunk."""
        self._forward(self.model.params, jnp.zeros(self.input_shape, jnp.float32)).block_until_ready()

    def _forward_numpy(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(self._forward(self.model.params, jnp.asarray(batch)))

    def _check_channels(self, channels: int, name: str) -> None:
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
        blocks: Callable[[], Iterable[np.ndarray]],
        frames: int,
        channels: int,
        sample_rate: int,
        stats: MixStats,
        progress: Progress | None = None,
    ) -> Iterator[np.ndarray]:
        """Separate a signal given as a re-iterable source of float (channels, n) blocks (`blocks()` starts
        again from the first sample), `frames` samples at `sample_rate` Hz, with mix statistics `stats` (see
        `mix_statistics`).

        Yields float32 (sources, channels, n) blocks at `sample_rate`, totalling `frames` samples. Memory is
        bounded by the segment and batch size, not by `frames`.
        """
        self._check_channels(channels, "<stream>")
        mean, scale = np.float32(stats.mean), np.float32(stats.scale())
        length = resampled_length(frames, sample_rate, self.sample_rate)

        normalised = (_adapt_channels_in((b - mean) / scale, self.audio_channels) for b in blocks())
        at_model_rate = _resample_stream(normalised, sample_rate, self.sample_rate)
        separated = overlap_add_stream(
            _exact_length(at_model_rate, length, (self.audio_channels,)),
            length,
            self._forward_numpy,
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

    def separate(self, audio: np.ndarray, sample_rate: int, progress: Progress | None = None) -> dict[str, np.ndarray]:
        """Separate float audio (channels, samples) — or (samples,) for mono — at `sample_rate` Hz.

        Returns {source: float32 array shaped like `audio`} at the input's rate and channel count. `audio` is
        not modified. Raises `AudioError` for empty, non-finite or more-than-supported-channel input.
        """
        audio = np.asarray(audio)
        squeeze = audio.ndim == 1
        view = audio[None] if squeeze else audio
        if view.ndim != 2:
            raise AudioError(f"<array>: expected (channels, samples), got shape {audio.shape}")
        self._check_channels(view.shape[0], "<array>")
        if view.shape[1] == 0:
            raise AudioError("<array>: no audio samples (0 frames)")
        if sample_rate <= 0:
            raise AudioError(f"<array>: invalid sample rate {sample_rate}")
        frames = view.shape[1]

        def blocks() -> Iterator[np.ndarray]:  # copies: the caller's array is never written to
            for i in range(0, frames, BLOCK):
                yield np.array(view[:, i : i + BLOCK], np.float32)

        stats = mix_statistics(blocks())
        out = np.zeros((len(self.sources), view.shape[0], frames), np.float32)
        done = 0
        for block in self.stream(blocks, frames, view.shape[0], sample_rate, stats, progress):
            out[..., done : done + block.shape[-1]] = block
            done += block.shape[-1]
        return {name: (out[i, 0] if squeeze else out[i]) for i, name in enumerate(self.sources)}

    def separate_file(
        self,
        path: str | os.PathLike,
        output_dir: str | os.PathLike = "separated",
        *,
        filename: str = "{track}/{stem}.{ext}",
        ext: str = "wav",
        subtype: str | None = None,
        two_stems: str | None = None,
        other_method: str = "add",
        clip_mode: str = "rescale",
        progress: Progress | None = None,
    ) -> dict[str, Path]:
        """Separate an audio file into stem files, streaming (memory does not grow with the song's length).

        Stems are written to `output_dir / filename.format(track=<input name without extension>,
        trackext=<its extension>, stem=<stem name>, ext=ext)` at the input's sample rate and channel count.
        `subtype=None` keeps the input's bit depth where `ext` can hold it (see `audio_io.output_subtype`).
        `two_stems=STEM` writes STEM and `no_STEM`, the latter the sum of the other sources
        (`other_method="add"`), the mix minus STEM ("minus"), or nothing ("none").
        `clip_mode`: "rescale" divides a stem by 1.01 x its peak when that exceeds 1, "clamp" clips to ±0.99,
        "none" leaves samples alone (integer formats then saturate at full scale).

        Files appear only when complete (atomic rename); on any error none of this call's stems are left.
        Returns {stem: path}. Raises `AudioError` for unusable input or output.
        """
        if clip_mode not in ("rescale", "clamp", "none"):
            raise ValueError(f"clip_mode must be rescale, clamp or none, not {clip_mode!r}")
        if other_method not in ("add", "minus", "none"):
            raise ValueError(f"other_method must be add, minus or none, not {other_method!r}")
        if two_stems is not None and two_stems not in self.sources:
            raise ValueError(f"unknown stem {two_stems!r}; this model has {', '.join(self.sources)}")
        info = inspect_audio(path)
        self._check_channels(info.channels, str(info.path))
        stats = mix_statistics(iter_audio_blocks(info, BLOCK), str(info.path))
        frames = stats.frames  # what decoding yields (an MP3 header's estimate may be slightly off)
        subtype = output_subtype(ext, info.subtype, subtype)
        names = self._output_names(two_stems, other_method)
        track = info.path.name[: -len(info.path.suffix)] if info.path.suffix else info.path.name
        paths = {
            name: Path(output_dir)
            / filename.format(track=track, trackext=info.path.suffix.lstrip("."), stem=name, ext=ext)
            for name in names
        }
        for target in paths.values():
            check_output_format(target, ext, subtype, info.sample_rate, info.channels)

        # rescale needs each stem's peak before its first sample is written: stems go to float32 temporaries
        # first, then are converted. Other modes write the final format directly.
        staged = clip_mode == "rescale"
        writers: dict[str, AtomicAudioWriter] = {}
        finals: list[AtomicAudioWriter] = []
        try:
            for name, target in paths.items():
                staging = target.with_name(f".{target.name}.float.wav") if staged else target
                writers[name] = AtomicAudioWriter(
                    staging, info.sample_rate, info.channels, "FLOAT" if staged else subtype, "wav" if staged else ext
                )
            peaks = dict.fromkeys(paths, 0.0)
            # "minus" needs the mix beside each output block: a second reader follows the output.
            mix_reader = _Reader(iter_audio_blocks(info, BLOCK)) if other_method == "minus" and two_stems else None
            blocks = self.stream(
                lambda: iter_audio_blocks(info, BLOCK), frames, info.channels, info.sample_rate, stats, progress
            )
            for block in blocks:
                mix = mix_reader.take(block.shape[-1]) if mix_reader is not None else None
                for name, stem in self._select(block, two_stems, other_method, mix).items():
                    if staged:
                        peaks[name] = max(peaks[name], float(np.abs(stem).max(initial=0.0)))
                    elif clip_mode == "clamp":
                        stem = np.clip(stem, -0.99, 0.99)
                    writers[name].write(stem)
            if not staged:
                return self._commit_all(list(writers.values()), paths)
            for name, target in paths.items():
                staged_info = inspect_audio(writers[name].close_temporary())  # read back, never renamed
                final = AtomicAudioWriter(target, info.sample_rate, info.channels, subtype, ext)
                finals.append(final)
                gain = np.float32(1.0 / max(1.01 * peaks[name], 1.0))
                for block in iter_audio_blocks(staged_info, BLOCK):
                    final.write(block * gain)
            return self._commit_all(finals, paths)
        except BaseException:
            for writer in [*writers.values(), *finals]:
                writer.abort()
            raise
        finally:
            if staged:
                for writer in writers.values():
                    writer.abort()

    @staticmethod
    def _commit_all(writers: list[AtomicAudioWriter], paths: Mapping[str, Path]) -> dict[str, Path]:
        committed = []
        try:
            for writer in writers:
                committed.append(writer.commit())
        except AudioError:
            for done in committed:  # all stems or none
                done.unlink(missing_ok=True)
            raise
        return dict(paths)

    def _output_names(self, two_stems: str | None, other_method: str) -> list[str]:
        if two_stems is None:
            return list(self.sources)
        return [two_stems] + ([f"no_{two_stems}"] if other_method != "none" else [])

    def _select(
        self, block: np.ndarray, two_stems: str | None, other_method: str, mix: np.ndarray | None
    ) -> dict[str, np.ndarray]:
        """{output name: (channels, n)} from a (sources, channels, n) block."""
        if two_stems is None:
            return {name: block[i] for i, name in enumerate(self.sources)}
        index = self.sources.index(two_stems)
        out = {two_stems: block[index]}
        if other_method == "add":
            out[f"no_{two_stems}"] = block.sum(axis=0) - block[index]
        elif other_method == "minus":
            out[f"no_{two_stems}"] = mix - block[index]
        return out
