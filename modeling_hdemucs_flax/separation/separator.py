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
import functools
import math
import os
import threading
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import soxr
from jaxtyping import Float, Float32

from ..errors import AudioError, ModelOutputError, OptionError
from ..io.audio_io import check_channels
from ..io.prefetch import ahead
from ..models.common.layers import Dtype
from ..models.family import SeparationModel
from ..options import DEFAULT_MATMUL_PRECISION, WEIGHTINGS, SeparationOptions, check_batch_split, check_io_workers
from ..runtime import default_device, describe_devices

STD_EPS = 1e-8  # added to the mix's std (demucs's api.py) so silence normalises to silence, not NaN
BLOCK = 1 << 16  # samples per block read from a file or handed between stages
# With io workers: model-rate blocks a song's reader thread keeps ready (4 x 1.5 s; 2 MiB for stereo float32).
READ_AHEAD_BLOCKS = 4
Progress = Callable[[int, int], None]  # (chunks_done, chunks_total)
# float32 (batch, channels, segment) -> (batch, sources, channels, segment): one batch through the network. The
# output may be a `jax.Array` still being computed (JAX dispatches asynchronously): the schedule converts it to
# numpy, which waits for it, only once the next batch has been handed to the network.
Forward = Callable[
    [Float32[np.ndarray, "batch channels segment"]], Float[np.ndarray | jax.Array, "batch sources channels segment"]
]


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
    a sharp weight, many small float32 terms would cost ~1e-6 of accuracy); output is float32.

    The sums live in buffers that popped samples leave by an offset, not by a copy, and that grow (doubling) only
    when the chunks in flight span more than they hold: adding a chunk or popping costs time in proportion to the
    samples it touches, not to the span held. Storage is bounded by twice the span of the chunks in flight
    (about one segment when each chunk's finished samples are popped as it is added, as `run_schedule` does).
    """

    def __init__(self, length: int, n_shifts: int, weight: Float[np.ndarray, " segment"], out_shape: tuple[int, ...]):
        self.length, self.weight = length, weight
        self.base = 0  # first sample not yet returned
        self._offset = 0  # where sample `base` is in the buffers
        self._covered = 0  # samples from `base` on that some chunk has reached
        self._acc = np.zeros((n_shifts, *out_shape, 0), np.float64)
        self._wsum = np.zeros((n_shifts, 0), np.float64)
        # each chunk's weighted samples (float32, as `chunk * w` rounds them) go through one reused buffer: no
        # fresh ~10 MB array, and its page faults, per chunk
        self._weighted = np.empty((*out_shape, len(weight)), np.float32)

    def _reserve(self, needed: int) -> None:
        """Room for samples [base, base + needed): the covered samples slide to the buffers' start (into larger,
        zeroed buffers when `needed` is over half their size) and everything after them is zero."""
        capacity = self._wsum.shape[-1]
        if self._offset + needed <= capacity:
            return
        held = slice(self._offset, self._offset + self._covered)
        if 2 * needed > capacity:
            capacity = 2 * needed
            acc = np.zeros((*self._acc.shape[:-1], capacity), np.float64)
            wsum = np.zeros((self._wsum.shape[0], capacity), np.float64)
        else:  # in place (numpy copies overlapping ranges correctly); only popped samples are not zero
            acc, wsum = self._acc, self._wsum
        acc[..., : self._covered] = self._acc[..., held]
        wsum[:, : self._covered] = self._wsum[:, held]
        if acc is self._acc:
            acc[..., self._covered : held.stop] = 0
            wsum[:, self._covered : held.stop] = 0
        self._acc, self._wsum, self._offset = acc, wsum, 0

    def add(self, shift: int, start: int, chunk: Float[np.ndarray, "*out segment"]) -> None:
        """Accumulate `chunk` (*out_shape, segment) for pass `shift`; only samples inside [0, length) count."""
        segment = chunk.shape[-1]
        lo, hi = max(start, self.base), min(start + segment, self.length)
        if hi <= lo:
            return
        self._reserve(hi - self.base)
        self._covered = max(self._covered, hi - self.base)
        w = self.weight[lo - start : hi - start]
        at = slice(self._offset + lo - self.base, self._offset + hi - self.base)
        weighted = np.multiply(chunk[..., lo - start : hi - start], w, out=self._weighted[..., : hi - lo])
        np.add(self._acc[shift, ..., at], weighted, out=self._acc[shift, ..., at])
        self._wsum[shift, at] += w

    def pop(self, frontier: int) -> Float32[np.ndarray, "*out n"]:
        """Finished output for samples [base, min(frontier, length)): (*out_shape, n) float32."""
        n = max(0, min(frontier, self.length) - self.base)
        assert n <= self._covered, "popping samples no chunk has covered"
        done = slice(self._offset, self._offset + n)
        wsum = self._wsum[:, done]
        assert (wsum > 0).all(), "a sample without weight (chunk plan does not cover the song)"
        acc = self._acc[..., done]
        if len(acc) == 1:  # one pass: its mean is itself; divided in float64 and rounded once, with no temporaries
            out = np.divide(acc[0], wsum[0], out=np.empty(acc.shape[1:], np.float32))
        else:
            out = (acc / wsum.reshape(wsum.shape[0], *([1] * (acc.ndim - 2)), n)).mean(axis=0).astype(np.float32)
        self._offset += n
        self._covered -= n
        self.base += n
        return out


class _Song:
    """One signal's way through the schedule: its chunk plan, the window of input the next chunks need, and the
    overlap-add of its outputs. Chunks are handed out (`take`) and their outputs added back (`add`) in plan
    order; `pop` returns the samples no later chunk covers."""

    def __init__(
        self,
        blocks: Iterable[np.ndarray],
        length: int,
        *,
        channels: int,
        segment: int,
        stride: int,
        weight: np.ndarray,
        delays: tuple[int, ...],
        progress: Progress | None = None,
    ):
        self.chunks = plan_chunks(length, segment, stride, delays)
        self.length, self.segment, self.weight, self.shifts = length, segment, weight, len(delays)
        self.window = _Window(iter(blocks), channels, length)
        self.taken = self.added = 0
        self.progress = progress
        self._ola: OverlapAdd | None = None
        if progress is not None:
            progress(0, len(self.chunks))

    @property
    def exhausted(self) -> bool:
        """Every chunk has been handed out."""
        return self.taken == len(self.chunks)

    @property
    def complete(self) -> bool:
        """Every chunk's output has been added."""
        return self.added == len(self.chunks)

    def _start(self, index: int) -> int:
        return self.chunks[index].start if index < len(self.chunks) else self.length

    def take(self) -> tuple[Chunk, np.ndarray]:
        """The next chunk and its input, float32 (channels, segment); reads the signal as far as it needs."""
        chunk = self.chunks[self.taken]
        self.window.fill_to(chunk.start + self.segment)
        data = self.window.chunk(chunk.start, self.segment)
        self.taken += 1
        self.window.drop_before(self._start(self.taken))
        return chunk, data

    def add(self, chunk: Chunk, output: np.ndarray) -> None:
        """Accumulate the network's output (*out_shape, segment) for `chunk` (the next one in plan order)."""
        if self._ola is None:
            self._ola = OverlapAdd(self.length, self.shifts, self.weight, output.shape[:-1])
        self._ola.add(chunk.shift, chunk.start, output)
        self.added += 1

    def pop(self) -> np.ndarray:
        """The finished output since the last pop: (*out_shape, n), n possibly 0."""
        assert self._ola is not None, "pop before any output was added"
        if self.progress is not None:  # before the samples leave: a consumer may stop once it has the last ones
            self.progress(self.added, len(self.chunks))
        return self._ola.pop(self._start(self.added))


class Event(NamedTuple):
    """What `run_schedule` reports about the signal at position `index` of its input: `kind` "block" (`value`:
    float32 (*out_shape, n) finished output, in order), "done" (its last block was reported) or "failed"
    (`value`: the exception raised while opening or reading it; nothing more comes for it)."""

    index: int
    kind: str
    value: Any = None


def run_schedule(
    songs: Iterable[Callable[[], _Song]], forward: Forward, *, batch_size: int, channels: int, segment: int
) -> Generator[Event, None, None]:
    """Separate a sequence of signals with batches of exactly (batch_size, channels, segment), filled with the
    next chunks whatever signal they belong to: a batch spans a song's end and the next song's start, so short
    songs still fill a batch (rows past the last chunk are zeros, their outputs dropped).

    `songs` opens each signal when its first chunk is needed (an exception there, or while reading it, fails
    that signal only: an "failed" event). The network runs in a worker thread, one batch at a time, while this
    thread reads and chunks the next batch's input and overlap-adds and hands on the previous batch's output:
    decoding, resampling, blending and the consumer's own work (writing stems) overlap with the network. Two
    batches are in flight: batch n + 1 is handed to the network before batch n's output is converted to numpy,
    so an asynchronous network (JAX's dispatch) has the next batch queued on its device while the previous
    output is downloaded and blended. An exception from `forward` ends the whole schedule.
    """
    openers = enumerate(songs)
    current: tuple[int, _Song] | None = None
    failed: set[int] = set()
    in_flight: tuple[list[tuple[int, _Song, Chunk]], Future] | None = None
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="hdemucs-network") as network:
        while True:
            rows: list[tuple[int, _Song, Chunk]] = []
            inputs = np.zeros((batch_size, channels, segment), np.float32)
            pending: list[Event] = []
            while len(rows) < batch_size:
                if current is None or current[1].exhausted:
                    following = next(openers, None)
                    if following is None:
                        current = None
                        break
                    index, opener = following
                    try:
                        current = (index, opener())
                    except Exception as error:  # this signal only: the others go on
                        current = None
                        pending.append(Event(index, "failed", error))
                        continue
                index, song = current
                try:
                    chunk, inputs[len(rows)] = song.take()
                except Exception as error:
                    failed.add(index)
                    current = None
                    pending.append(Event(index, "failed", error))
                    continue
                rows.append((index, song, chunk))
            future = network.submit(forward, inputs) if rows else None
            if in_flight is not None:  # the previous batch, while this one runs
                yield from _finish_batch(*in_flight, failed, following=future)
            yield from pending
            if future is None:
                return
            in_flight = (rows, future)


def _finish_batch(
    rows: list[tuple[int, _Song, Chunk]], future: Future, failed: set[int], following: Future | None
) -> Iterator[Event]:
    """Blend a batch's outputs into their songs, chunk by chunk, handing on each chunk's finished samples at once
    (the samples held for blending stay about one segment, whatever the batch size). An output still being
    computed is waited for only once the `following` batch has been handed to the network."""
    output = future.result()
    if following is not None and _still_computing(output):
        wait([following])  # not `.result()`: an error of the next batch is raised once this one is handed on
    outputs = np.asarray(output, np.float32)
    for row, (index, song, chunk) in enumerate(rows):
        if index in failed:
            continue
        song.add(chunk, outputs[row])
        block = song.pop()
        if block.shape[-1]:
            yield Event(index, "block", block)
        if song.complete:
            yield Event(index, "done")


def _still_computing(output: Any) -> bool:
    """Whether converting a network's output to numpy would wait for it: a `jax.Array` that is not ready, or any
    other array-like but numpy's."""
    if isinstance(output, np.ndarray):
        return False
    is_ready = getattr(output, "is_ready", None)
    return not is_ready() if callable(is_ready) else True


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
    """Separate one signal streamed as (channels, n) blocks totalling `length` samples (`run_schedule` with a
    single song).

    `forward` maps float32 (batch_size, channels, segment) to (batch_size, sources, channels, segment); it
    always sees exactly that shape (the last batch is padded with zero rows, whose outputs are dropped).
    Yields float32 (sources, channels, n) blocks that together hold exactly `length` samples.
    """

    def song() -> _Song:
        return _Song(
            blocks,
            length,
            channels=channels,
            segment=segment,
            stride=stride,
            weight=weight,
            delays=delays,
            progress=progress,
        )

    for event in run_schedule([song], forward, batch_size=batch_size, channels=channels, segment=segment):
        if event.kind == "failed":
            raise event.value
        if event.kind == "block":
            yield event.value


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


class _Resampler:
    """soxr's streamed resampling (HQ quality) of (channels, n) float32 blocks pushed one at a time; `flush()`
    returns the tail once the input has ended. The identity when the rates are equal."""

    def __init__(self, rate_in: int, rate_out: int, channels: int):
        self._stream = None
        if rate_in != rate_out:
            self._stream = soxr.ResampleStream(rate_in, rate_out, channels, dtype="float32", quality="HQ")
        self._channels = channels

    def push(self, block: np.ndarray) -> np.ndarray:
        if self._stream is None:
            return block
        return np.ascontiguousarray(self._stream.resample_chunk(np.ascontiguousarray(block.T)).T)

    def flush(self) -> np.ndarray:
        if self._stream is None:
            return np.zeros((self._channels, 0), np.float32)
        # An empty final chunk drains soxr exactly as flagging the last block would (checked: identical output).
        tail = self._stream.resample_chunk(np.zeros((0, self._channels), np.float32), last=True)
        return np.ascontiguousarray(tail.T)


def _bounded_pieces(blocks: Iterable[np.ndarray], rate_in: int, rate_out: int) -> Iterator[np.ndarray]:
    """Split blocks so that none resamples to more than about `BLOCK` output samples: memory is bounded by
    model-rate samples, whatever the input rate (a 65,536-frame block of a 1 Hz file would otherwise ask
    soxr for 2.9e9 samples, 23 GB, in one call)."""
    most = max(1, BLOCK * rate_in // rate_out)
    for block in blocks:
        for start in range(0, block.shape[-1], most):
            yield block[..., start : start + most]


def _resample_stream(blocks: Iterable[np.ndarray], rate_in: int, rate_out: int, channels: int) -> Iterator[np.ndarray]:
    """(channels, n) blocks -> the same signal at `rate_out`, streamed (see `_Resampler`); every output block
    holds at most about `BLOCK` samples."""
    resampler = _Resampler(rate_in, rate_out, channels)
    for block in _bounded_pieces(blocks, rate_in, rate_out):
        out = resampler.push(block)
        if out.shape[-1]:
            yield out
    tail = resampler.flush()
    if tail.shape[-1]:
        yield tail


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


def network_forward(model: SeparationModel, devices: Sequence[Any] | None = None) -> Forward:
    """The model's own jitted forward pass (compiled once per shape, in the model's compute dtype) on numpy
    batches, with the parameters the model holds at call time. It returns the output as JAX dispatched it, without
    waiting for the device (`np.asarray` of it waits).

    `devices` None: JAX's default device at each call (where the model's uncommitted parameters go). One device:
    the parameters and their prepared copy are committed there once (`placed_params`) and every batch
    is sent there. Several: each batch is split over them along its first axis (`NamedSharding` over a one-axis
    mesh "batch"; the batch size must be a multiple of their number) and the parameters and their prepared copy
    are replicated on every one, once. XLA partitions the same program with no communication between the
    devices, so the results equal one device's (float32 round-off aside) and the program is compiled once.
    """
    if not devices:

        def forward(batch: np.ndarray) -> jax.Array:
            return _sources(model(batch))

        return forward

    if len(devices) == 1:
        rows = weights = devices[0]
    else:
        from jax.sharding import Mesh, NamedSharding, PartitionSpec

        mesh = Mesh(np.asarray(devices), ("batch",))
        rows, weights = NamedSharding(mesh, PartitionSpec("batch")), NamedSharding(mesh, PartitionSpec())

    def placed(batch: np.ndarray) -> jax.Array:
        params, prepared = model.placed_params(weights)  # placed at the first call (and after new params)
        return _sources(model(jax.device_put(batch, rows), params=params, prepared=prepared))

    return placed


def check_segment_limit(segment_samples: int, model: SeparationModel, name: str) -> None:
    """Raise `OptionError` when chunks of `segment_samples` are longer than `model` (named `name`) accepts."""
    limit = model.max_segment
    if limit is not None and segment_samples > round(limit * model.config.sampling_rate):
        seconds = segment_samples / model.config.sampling_rate
        raise OptionError("segment", round(seconds, 6), f"is longer than {name} accepts: at most {limit:g} s")


def _sources(output: Any) -> jax.Array:
    """The separated sources of a model output (`FlaxHDemucsOutput.sources`, typed optional, never None here)."""
    return output.sources


@dataclass(frozen=True)
class Signal:
    """A signal to separate: `blocks()` yields its float (channels, n) blocks at `sample_rate` Hz and starts again
    from the first sample at every call (it is read twice: once for the mix statistics, once to separate);
    `name` names it in error messages; `progress(done, total)` follows its chunks."""

    blocks: Callable[[], Iterable[np.ndarray]]
    channels: int
    sample_rate: int
    name: str = "<stream>"
    progress: Progress | None = None


class _SongOutput:
    """The output side of one signal, fed its network-rate (sources, model_channels, n) blocks in order: back to
    the input's channels and rate, exactly `frames` samples, the normalisation undone (demucs adds the mix's
    mean to every source)."""

    def __init__(self, sources: int, channels: int, rates: tuple[int, int], frames: int, mean, scale, name: str):
        self.sources, self.channels, self.remaining, self.name = sources, channels, frames, name
        self.mean, self.scale = mean, scale
        self._resampler = _Resampler(*rates, sources * channels)

    def _finish(self, flat: np.ndarray) -> np.ndarray:
        flat = flat[:, : self.remaining]
        self.remaining -= flat.shape[-1]
        return flat.reshape(self.sources, self.channels, -1) * self.scale + self.mean

    def push(self, block: np.ndarray) -> np.ndarray:
        flat = _adapt_channels_out(block, self.channels).reshape(self.sources * self.channels, -1)
        return self._finish(self._resampler.push(flat))

    def close(self) -> np.ndarray:
        """The rest: the resampler's tail, then zeros for what rounding left short."""
        tail = self._finish(self._resampler.flush())
        short = np.zeros((self.sources, self.channels, self.remaining), np.float32) + self.mean
        self.remaining = 0
        return np.concatenate([tail, short], axis=-1)


class Cancelled(Exception):
    """A signal's opening stopped midway because the separation ended (never reaches a caller as a result)."""


def _until(stop: threading.Event, blocks: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
    for block in blocks:
        if stop.is_set():
            raise Cancelled()
        yield block


class Separator:
    """Separates songs of any length with a model of the family (`FlaxHDemucs`, `FlaxHTDemucs`, a bag of them:
    `FlaxDemucsBag`), compiling one forward shape.

    Args:
        model: the network. Its `dtype` is the compute dtype (load it with `dtype=jnp.bfloat16` for bfloat16);
            normalisation, resampling and overlap-add stay float32 whatever it is.
        segment, overlap, shifts, seed, batch_size, weighting, transition_power: the schedule; see
            `SeparationOptions` (validated there). `segment` None: the model's own (`default_segment`); one
            longer than the model accepts (`max_segment`, HTDemucs's training segment) is an `OptionError`.
        progress: default callback (chunks_done, chunks_total) for `separate` / `stream`.
        forward: what runs one batch of chunks, float32 (batch_size, audio_channels, segment samples) ->
            (batch_size, sources, audio_channels, segment samples) as numpy or a `jax.Array` (which may still
            be computing), always called with exactly that shape. None: `network_forward(model, devices)`.
            Another callable (a stand-in network, a wrapper that records or fails) changes the network and
            nothing else.
        devices: JAX devices (`jax.Device`) the network runs on: one (e.g. `[jax.devices()[1]]`, one Separator
            per GPU), or several to split every batch over (e.g. `jax.local_devices()`; `batch_size` must be a
            multiple of their number). The parameters are placed there once. None: JAX's default device.
    """

    def __init__(
        self,
        model: SeparationModel,
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
        devices: Sequence[Any] | None = None,
    ):
        self.model = model
        # how errors name the model: the folder or repo it was loaded from (transformers records it)
        self.model_name = str(getattr(model.config, "_name_or_path", "") or "the model")
        self.sample_rate = int(model.config.sampling_rate)
        self.sources = list(model.config.sources)
        self.audio_channels = int(model.config.audio_channels)
        self.progress = progress
        segment = model.default_segment if segment is None else segment
        self._set_options(SeparationOptions(segment, overlap, shifts, seed, batch_size, weighting, transition_power))
        check_segment_limit(self.segment_samples, model, self.model_name)
        self.devices = tuple(devices) if devices else None
        if self.devices:
            check_batch_split(batch_size, len(self.devices))
        self._own_forward = forward is None  # the model's network: a restriction of the model may replace it
        self.forward = forward or network_forward(model, self.devices)

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
        matmul_precision: str = DEFAULT_MATMUL_PRECISION,
        **options: Any,
    ) -> Separator:
        """Load `model` (a local folder or Hub repo id; None: the default model) with
        `pretrained.load_model`, computing in `dtype` at `matmul_precision` (see `FlaxHDemucs`), and wrap it;
        `options` are the Separator's (`devices` included). Raises `ModelLoadError`, or `OptionError` for an
        unknown `matmul_precision`."""
        from ..zoo.pretrained import load_model

        loaded = load_model(model, dtype=jnp.dtype(dtype), revision=revision, matmul_precision=matmul_precision)
        return cls(loaded, **options)

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

    def restricted_to(self, sources: Sequence[str]) -> Separator:
        """A Separator for a caller that reads only `sources` of the stems (file output with `--two-stems X
        --other-method minus` reads X alone): its network may compute only those, the other stems then coming out
        as the mix's mean (zeros, denormalised). With a bag this runs only the members those sources need (the
        compiled programs and placed parameters are shared); a single network, or a `forward` given to the
        constructor, computes everything anyway and this Separator is returned as it is."""
        if not self._own_forward:
            return self
        model = self.model.restricted_to(sources)
        if model is self.model:
            return self
        variant = copy.copy(self)
        variant.model, variant.forward = model, network_forward(model, self.devices)
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
    def device(self) -> str:
        """Every device the network runs on: "cpu:0", "NVIDIA H200 (gpu:0)", "2 x NVIDIA H200 (gpu:0, gpu:1)".
        Without `devices`: where the model's parameters are committed if they are, else JAX's default device
        (`jax_default_device` honoured), which is where its jitted forward pass then runs."""
        if self.devices:
            return describe_devices(self.devices)
        leaves = jax.tree.leaves(self.model.params)
        committed = set().union(*(leaf.devices() for leaf in leaves if getattr(leaf, "committed", False)))
        return describe_devices(list(committed) or [default_device()])

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """The one shape the forward pass runs at: (batch_size, audio_channels, segment samples)."""
        return (self.batch_size, self.audio_channels, self.segment_samples)

    def warmup(self) -> None:
        """Compile (or load from the persistent cache) the forward pass now rather than on the first chunk, and
        run it once (waiting for its output)."""
        np.asarray(self.forward(np.zeros(self.input_shape, np.float32)))

    def check_channels(self, channels: int, name: str) -> None:
        """Raise `AudioError` naming `name` unless audio with `channels` channels can be separated."""
        check_channels(channels, self.audio_channels, name)

    def chunks_total(self, frames: int, sample_rate: int) -> int:
        """Forward-pass chunks (before batching) needed for `frames` samples at `sample_rate` Hz."""
        length = max(1, resampled_length(frames, sample_rate, self.sample_rate))
        return len(plan_chunks(length, self.segment_samples, self.stride, self._delays()))

    def _delays(self) -> tuple[int, ...]:
        return draw_shift_delays(self.shifts, int(0.5 * self.sample_rate), self.seed)

    def _open(
        self,
        signal: Signal | Callable[[], Signal],
        outputs: dict[int, _SongOutput],
        index: int,
        readers: list[Any] | None,
        stop: threading.Event | None = None,
    ) -> _Song:
        """Check `signal` (made now if it is a function), take its mix statistics (its first pass) and set up both
        sides of its schedule. With `readers` (a list), its second pass (decoding, normalising, resampling) runs
        in a thread of its own, `READ_AHEAD_BLOCKS` ahead of the schedule, and its reader joins `readers` (to be
        closed: a thread left inside a C library when the process exits aborts it). `stop`, once set, ends the
        statistics pass at its next block (`Cancelled`)."""
        if not isinstance(signal, Signal):
            signal = signal()
        self.check_channels(signal.channels, signal.name)
        blocks = signal.blocks() if stop is None else _until(stop, signal.blocks())
        stats = mix_statistics(blocks, signal.name)
        if stats.frames == 0:
            raise AudioError(f"{signal.name}: no audio samples (0 frames)")
        mean, scale = np.float32(stats.mean), np.float32(stats.scale())
        # at least one model-rate sample: 1 sample at 96 kHz rounds to 0 at 44.1 kHz, and comes back as 1
        length = max(1, resampled_length(stats.frames, signal.sample_rate, self.sample_rate))
        normalised = (_adapt_channels_in((b - mean) / scale, self.audio_channels) for b in signal.blocks())
        at_model_rate = _resample_stream(normalised, signal.sample_rate, self.sample_rate, self.audio_channels)
        rates = (self.sample_rate, signal.sample_rate)
        outputs[index] = _SongOutput(len(self.sources), signal.channels, rates, stats.frames, mean, scale, signal.name)
        blocks = _exact_length(at_model_rate, length, (self.audio_channels,))
        if readers is not None:
            blocks = ahead(blocks, READ_AHEAD_BLOCKS, f"hdemucs-read-{index}")
            readers[:] = [reader for reader in readers if reader.running]  # finished songs' threads have ended
            readers.append(blocks)
        return _Song(
            blocks,
            length,
            channels=self.audio_channels,
            segment=self.segment_samples,
            stride=self.stride,
            weight=self.weight,
            delays=self._delays(),
            progress=signal.progress or self.progress,
        )

    def stream_many(
        self, signals: Iterable[Signal | Callable[[], Signal]], *, io_workers: int | None = None
    ) -> Generator[Event, None, None]:
        """Separate several signals through one schedule whose batches span song boundaries (`run_schedule`):
        the next song's first chunks fill the batch in which the previous one ends, so many short songs keep a
        large batch (many devices) full. Signals are opened one after another, when their chunks are needed;
        a function in place of a `Signal` is called then, and what it raises fails that signal only.

        Yields `Event`s: ("block", float32 (sources, channels, n) at the signal's own rate, in order), then
        ("done") after a signal's last block — its blocks total exactly its length — or ("failed", error) for a
        signal that could not be read (its earlier blocks are then void). Memory is bounded by the segment and
        batch size (and the songs a batch spans), not by the songs' lengths.

        `io_workers` (None: `runtime.available_cores()`): 1 runs the host side on the calling thread (the network
        in a thread of its own); more open the next signal (its mix statistics) in a background thread while this
        one is separated, and decode, normalise and resample each signal in a thread of its own, a bounded number
        of blocks ahead. The events are the same, bit for bit, either way.
        """
        workers = check_io_workers(io_workers)
        outputs: dict[int, _SongOutput] = {}
        readers: list[Any] = []  # the songs' read-ahead threads, stopped and joined at the end
        if workers == 1:
            openers: Iterator[Callable[[], _Song]] = (
                functools.partial(self._open, signal, outputs, index, None) for index, signal in enumerate(signals)
            )
        else:
            openers = self._opened_ahead(signals, outputs, readers)
        schedule = run_schedule(
            openers,
            self.forward,
            batch_size=self.batch_size,
            channels=self.audio_channels,
            segment=self.segment_samples,
        )
        try:
            yield from self._finish_events(schedule, outputs)
        finally:
            schedule.close()
            close = getattr(openers, "close", None)
            if close is not None:
                close()  # first: no song is opened after this
            for reader in readers:
                reader.close()

    def _opened_ahead(
        self, signals: Iterable[Signal | Callable[[], Signal]], outputs: dict[int, _SongOutput], readers: list[Any]
    ) -> Iterator[Callable[[], _Song]]:
        """`stream_many`'s openers with each signal opened in a background thread while the one before it is
        separated (one signal ahead): the schedule taking signal n starts opening signal n + 1. What opening one
        raises is raised when the schedule takes it (it fails that signal only). Closing stops an opening midway
        (between two blocks of its statistics pass) and waits for it."""
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hdemucs-open")
        stop = threading.Event()
        items = enumerate(signals)

        def submit(item: tuple[int, Signal | Callable[[], Signal]] | None) -> Future | None:
            if item is None:
                return None
            index, signal = item
            return pool.submit(self._open, signal, outputs, index, readers, stop)

        try:
            upcoming = submit(next(items, None))
            while upcoming is not None:
                current, following, started = upcoming, next(items, None), []

                def take(current: Future = current, following=following, started: list = started) -> _Song:
                    started.append(submit(following))  # the next signal opens while this one is separated
                    return current.result()

                yield take
                upcoming = started[0] if started else submit(following)
        finally:
            stop.set()
            pool.shutdown(wait=True, cancel_futures=True)

    def _finish_events(self, schedule: Iterator[Event], outputs: dict[int, _SongOutput]) -> Iterator[Event]:
        """The schedule's events at the signals' own rates and channels, denormalised (`_SongOutput`)."""
        for event in schedule:
            if event.kind == "block":
                self._check_finite(event.value, outputs[event.index].name)
                block = outputs[event.index].push(event.value)
                if block.shape[-1]:
                    yield Event(event.index, "block", block)
                continue
            output = outputs.pop(event.index, None)
            if event.kind == "done" and output is not None:
                tail = output.close()
                if tail.shape[-1]:
                    yield Event(event.index, "block", tail)
            yield event

    def _check_finite(self, block: np.ndarray, name: str) -> None:
        """The network's (blended) output, checked once: NaN or infinity means broken weights or config, never
        audio to write (a rescale would turn it into full-scale DC). Ends the whole run: every song would fail."""
        if not np.isfinite(block).all():
            raise ModelOutputError(
                f"{name}: the model {self.model_name} produced NaN or infinite output; its weights or config are "
                "broken (re-download or re-convert it)"
            )

    def stream(
        self,
        blocks: Callable[[], Iterable[Float[np.ndarray, "channels n"]]],
        channels: int,
        sample_rate: int,
        *,
        name: str = "<stream>",
        progress: Progress | None = None,
    ) -> Iterator[Float32[np.ndarray, "sources channels n"]]:
        """Separate one signal given as a re-iterable source of float (channels, n) blocks at `sample_rate` Hz
        (see `Signal`). Yields float32 (sources, channels, n) blocks at `sample_rate`, as many samples in total as
        the input; raises what reading it raised. Memory is bounded by the segment and batch size, not by the
        signal's length.
        """
        for event in self.stream_many([Signal(blocks, channels, sample_rate, name, progress)]):
            if event.kind == "failed":
                raise event.value
            if event.kind == "block":
                yield event.value

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
