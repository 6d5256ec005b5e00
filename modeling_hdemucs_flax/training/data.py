"""Training examples from multitrack folders, as demucs's `wav.Wavset` cuts them, and batches made ahead in worker
threads.

An example is `segment + shift` samples of every source of one track, starting every `stride` samples, normalised
by the track's mixture (its mono mean and standard deviation over the whole track, as demucs's metadata does).
A track at another sample rate or in mono is converted as its examples are read, as demucs's `Wavset` does: mono
is duplicated to the model's channels, and each example is resampled (soxr HQ, the resampler `separate` uses) from
a window of the file that starts on the rates' common grid and reaches `RESAMPLE_MARGIN` input samples past
either end, so it equals the whole track resampled in one pass within soxr's round-off (tested).
A batch is a pure function of `(seed, step)`: which examples (a fresh permutation per epoch) and every random draw
of the augmentations. So any worker may make any batch, and a resumed run sees exactly the batches it would have.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from ..errors import AudioError, DatasetError
from ..io.audio_io import check_channels, read_audio
from ..io.multitrack import Multitrack, check_multitrack, read_multitrack
from ..separation.separator import resampled_length
from .augment import demucs_augment

# Input samples read past either end of an example that is resampled: soxr HQ's filter reaches well inside this,
# so the example equals the whole track resampled (measured: -130 dB from 128 samples on; 256 keeps a margin).
RESAMPLE_MARGIN = 256


@dataclass(frozen=True)
class _Track:
    """A track's files (one per source), their sample rate, channel count and length in samples, its length at the
    model's rate, and its mixture's mean and standard deviation."""

    name: str
    files: tuple[Path, ...]
    sample_rate: int
    channels: int
    frames_in: int
    frames: int
    mean: float
    std: float


def _mixture_stats(track: Multitrack, sources: Sequence[str], sample_rate: int) -> tuple[float, float]:
    """The mono mixture's mean and (unbiased) standard deviation over the whole track at `sample_rate` Hz: the
    mixture file's, or the sum of the stems' when the folder has none."""
    audio = read_multitrack(track, sources, with_mixture=True)
    mix = audio.mixture if audio.mixture is not None else audio.stems.sum(0)
    mono = mix.mean(0, dtype=np.float64)
    if audio.sample_rate != sample_rate:
        mono = soxr.resample(mono, audio.sample_rate, sample_rate, quality="HQ")
    std = float(mono.std(ddof=1)) if mono.size > 1 else 0.0
    if not std > 0:
        raise DatasetError(f"track {track.name!r}: its mixture is silent; remove the track")
    return float(mono.mean()), std


class TrainingSet:
    """The examples of `tracks` for a model of `sample_rate` Hz and `channels` channels (see the module doc).

    Args:
        segment: samples the network sees per example.
        shift: extra samples read per example, cut away at a random offset per source (demucs's Shift); 0: none.
        stride: samples between consecutive examples of a track (demucs: the shift, one second; the segment when
            there is no shift).
    A `DatasetError` names a track with a channel count the model cannot take (neither its own nor mono), or one
    too short for one example.
    """

    def __init__(
        self,
        tracks: Sequence[Multitrack],
        sources: Sequence[str],
        sample_rate: int,
        channels: int,
        segment: int,
        shift: int,
        stride: int,
        workers: int = 1,
    ):
        self.sources = list(sources)
        self.segment, self.shift, self.stride = segment, shift, stride
        self.channels = channels
        wanted = segment + shift
        headers = [check_multitrack(t, sources) for t in tracks]
        lengths = [resampled_length(info.frames, info.sample_rate, sample_rate) for info in headers]
        for track, info, frames in zip(tracks, headers, lengths, strict=True):
            try:
                check_channels(info.channels, channels, f"track {track.name!r}")
            except AudioError as error:
                raise DatasetError(str(error)) from None
            if frames < wanted:
                raise DatasetError(
                    f"track {track.name!r} is {frames / sample_rate:.2f} s long, shorter than one example "
                    f"({segment / sample_rate:g} s segment + {shift / sample_rate:g} s shift); use a shorter "
                    "--segment or --shift"
                )
        self.sample_rate = sample_rate
        with ThreadPoolExecutor(max(1, workers)) as pool:
            stats = list(pool.map(lambda t: _mixture_stats(t, sources, sample_rate), tracks))
        self.tracks = [
            _Track(
                t.name,
                tuple(t.stems[s] for s in sources),
                info.sample_rate,
                info.channels,
                info.frames,
                frames,
                mean,
                std,
            )
            for t, info, frames, (mean, std) in zip(tracks, headers, lengths, stats, strict=True)
        ]
        # (track index, first sample) of every example, in track order
        self.examples = [
            (i, k * stride)
            for i, track in enumerate(self.tracks)
            for k in range(1 + (track.frames - wanted) // max(1, stride))
        ]
        self._decoded: dict[Path, np.ndarray] = {}  # files libsndfile cannot seek in, decoded once
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.examples)

    def _read(self, path: Path, start: int, frames: int) -> np.ndarray:
        """float32 (channels, frames) of one file from `start`."""
        try:
            with sf.SoundFile(path) as handle:
                handle.seek(start)
                block = handle.read(frames, dtype="float32", always_2d=True).T
            if block.shape[1] == frames:
                return block
        except (sf.LibsndfileError, RuntimeError, TypeError):
            pass  # a format only PyAV reads: decoded whole, once
        with self._lock:
            audio = self._decoded.get(path)
        if audio is None:
            audio, _ = read_audio(path)
            with self._lock:
                self._decoded[path] = audio
        return np.ascontiguousarray(audio[:, start : start + frames], np.float32)

    def _converted(self, track: _Track, path: Path, start: int, frames: int) -> np.ndarray:
        """float32 (model channels, frames) of one file from `start`, both counted at the model's rate: read at the
        file's rate and resampled from a window on the rates' common grid (see the module doc), mono duplicated."""
        rate_in, rate_out = track.sample_rate, self.sample_rate
        if rate_in == rate_out:
            audio = self._read(path, start, frames)
        else:
            common = math.gcd(rate_in, rate_out)
            grid_in, grid_out = rate_in // common, rate_out // common  # grid_in input samples = grid_out outputs
            first = (start * rate_in // rate_out - RESAMPLE_MARGIN) // grid_in * grid_in  # may be < 0: zeros
            last = -(-(start + frames) * rate_in // rate_out) + RESAMPLE_MARGIN  # one past the window's end
            inside = self._read(path, max(0, first), min(last, track.frames_in) - max(0, first))
            window = np.zeros((inside.shape[0], last - first), np.float32)
            window[:, max(0, -first) : max(0, -first) + inside.shape[1]] = inside
            resampled = soxr.resample(window.T, rate_in, rate_out, quality="HQ").T
            skip = start - first // grid_in * grid_out
            audio = np.ascontiguousarray(resampled[:, skip : skip + frames])
        return np.repeat(audio, self.channels, axis=0) if audio.shape[0] < self.channels else audio

    def example(self, index: int) -> np.ndarray:
        """float32 (sources, channels, segment + shift): example `index`, normalised by its track's mixture."""
        track_index, start = self.examples[index]
        track = self.tracks[track_index]
        stems = np.stack([self._converted(track, path, start, self.segment + self.shift) for path in track.files])
        if not np.isfinite(stems).all():
            raise DatasetError(f"track {track.name!r}: NaN or infinite samples from sample {start}")
        return ((stems - track.mean) / track.std).astype(np.float32, copy=False)

    def indices(self, step: int, batch_size: int, seed: int) -> list[int]:
        """The examples of batch `step`: positions step*batch_size ... in a sequence of epochs, each a fresh
        permutation of every example drawn from (seed, epoch)."""
        chosen = []
        for position in range(step * batch_size, (step + 1) * batch_size):
            epoch, within = divmod(position, len(self))
            chosen.append(int(_permutation(seed, epoch, len(self))[within]))
        return chosen

    def batch(self, step: int, batch_size: int, seed: int, group_size: int) -> tuple[np.ndarray, np.ndarray]:
        """Batch `step`: (mixtures float32 (batch, channels, segment), stems float32 (batch, sources, channels,
        segment)) after demucs's augmentations, the mixtures the sums of the augmented stems."""
        stems = np.stack([self.example(i) for i in self.indices(step, batch_size, seed)])
        rng = np.random.default_rng([seed, 1, step])
        stems = demucs_augment(stems, self.shift, rng, group_size)
        return stems.sum(1), stems


_PERMUTATIONS: dict[tuple[int, int, int], np.ndarray] = {}


def _permutation(seed: int, epoch: int, count: int) -> np.ndarray:
    key = (seed, epoch, count)
    found = _PERMUTATIONS.get(key)
    if found is None:
        if len(_PERMUTATIONS) > 8:
            _PERMUTATIONS.clear()
        found = _PERMUTATIONS[key] = np.random.default_rng([seed, 0, epoch]).permutation(count)
    return found


class BatchLoader:
    """Batches `start, start + 1, ...` of `data`, made `ahead` at a time by `workers` threads (reading, cutting,
    augmenting off the training step's critical path). `waited` is the time `next` spent blocked."""

    def __init__(
        self,
        data: TrainingSet,
        batch_size: int,
        seed: int,
        group_size: int,
        start: int = 0,
        workers: int = 2,
        ahead: int | None = None,
    ):
        self.data, self.batch_size, self.seed, self.group_size = data, batch_size, seed, group_size
        self.pool = ThreadPoolExecutor(max(1, workers), thread_name_prefix="batches")
        self.ahead = ahead or 2 * max(1, workers)
        self.next_step = start
        self.pending: deque[Future] = deque()
        self.waited = 0.0

    def _submit(self) -> None:
        while len(self.pending) < self.ahead:
            step = self.next_step + len(self.pending)
            self.pending.append(self.pool.submit(self.data.batch, step, self.batch_size, self.seed, self.group_size))

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        return self

    def __next__(self) -> tuple[np.ndarray, np.ndarray]:
        self._submit()
        started = time.perf_counter()
        batch = self.pending.popleft().result()
        self.waited += time.perf_counter() - started
        self.next_step += 1
        return batch

    def close(self) -> None:
        for future in self.pending:
            future.cancel()
        self.pending.clear()
        self.pool.shutdown(wait=True, cancel_futures=True)


def examples_per_epoch(data: TrainingSet, batch_size: int) -> int:
    """Steps in one pass over every example (the last batch borrows from the next epoch)."""
    return math.ceil(len(data) / batch_size)
