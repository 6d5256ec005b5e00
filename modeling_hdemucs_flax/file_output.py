"""Separating a file into stem files: which stems, what they are called, how they are kept within full scale,
and that a song's stems appear all together or not at all.

    read (audio_io) -> schedule (Separator.stream) -> select stems -> StemWriter per stem -> commit all

`OutputOptions` is the file-output policy and its one validation; `separate_file` runs it. The schedule
itself (normalisation, chunking, overlap-add) is the `Separator`'s; every file is opened by `audio_io`.
Imports only numpy and `audio_io`, so the command line can check these options before JAX is loaded.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .audio_io import (
    CLIP_MODES,
    StemWriter,
    check_output_format,
    inspect_audio,
    iter_audio_blocks,
    output_subtype,
)
from .errors import HDemucsFlaxError, OptionError

if TYPE_CHECKING:
    from .separation import Progress, Separator

OTHER_METHODS = ("add", "minus", "none")
DEFAULT_FILENAME = "{track}/{stem}.{ext}"
TEMPLATE_VARIABLES = ("track", "trackext", "stem", "ext")


@dataclass(frozen=True)
class OutputOptions:
    """How stems are written.

    filename: each stem's path inside the output folder, a `str.format` template over {track} (the input's name
        without extension), {trackext} (its extension), {stem} and {ext}.
    ext: output format, one of `audio_io.OUTPUT_FORMATS` (wav, flac, mp3, ogg).
    subtype: libsndfile sample format (PCM_16, PCM_24, FLOAT, ...); None keeps the input's bit depth where
        `ext` can hold it (see `audio_io.output_subtype`).
    two_stems: write only this source and `no_<source>` (the accompaniment, for karaoke).
    other_method: `no_<source>` is the sum of the other sources ("add"), the mix minus the source ("minus"),
        or not written ("none").
    clip_mode: "rescale", "clamp" or "none" (see `audio_io.StemWriter`).
    """

    filename: str = DEFAULT_FILENAME
    ext: str = "wav"
    subtype: str | None = None
    two_stems: str | None = None
    other_method: str = "add"
    clip_mode: str = "rescale"

    def __post_init__(self) -> None:
        output_subtype(self.ext, requested=self.subtype)  # the format exists and can hold the subtype
        if self.other_method not in OTHER_METHODS:
            raise OptionError("other_method", self.other_method, f"must be one of {', '.join(OTHER_METHODS)}")
        if self.clip_mode not in CLIP_MODES:
            raise OptionError("clip_mode", self.clip_mode, f"must be one of {', '.join(CLIP_MODES)}")
        try:
            self.filename.format(**dict.fromkeys(TEMPLATE_VARIABLES, "x"))
        except (KeyError, IndexError, ValueError) as error:
            variables = ", ".join(f"{{{name}}}" for name in TEMPLATE_VARIABLES)
            raise OptionError(
                "filename", self.filename, f"unknown variable or bad format ({error}); the variables are {variables}"
            ) from None

    def replace(self, **changes: object) -> OutputOptions:
        """A copy with `changes` applied (and validated)."""
        return dataclasses.replace(self, **changes)

    def stem_names(self, sources: Sequence[str]) -> list[str]:
        """The stems written for a model with `sources`, in order."""
        if self.two_stems is None:
            return list(sources)
        if self.two_stems not in sources:
            raise OptionError("two_stems", self.two_stems, f"the model has no such stem (it has {', '.join(sources)})")
        return [self.two_stems] + ([f"no_{self.two_stems}"] if self.other_method != "none" else [])

    def select(self, block: np.ndarray, sources: Sequence[str], mix: np.ndarray | None) -> dict[str, np.ndarray]:
        """{stem: (channels, n)} from a (sources, channels, n) block of separated audio; `mix` is the same
        samples of the input, needed only by `other_method="minus"` (see `needs_mix`)."""
        if self.two_stems is None:
            return {name: block[i] for i, name in enumerate(sources)}
        index = list(sources).index(self.two_stems)
        out = {self.two_stems: block[index]}
        if self.other_method == "add":
            out[f"no_{self.two_stems}"] = block.sum(axis=0) - block[index]
        elif self.other_method == "minus":
            assert mix is not None, "other_method='minus' needs the mix"
            out[f"no_{self.two_stems}"] = mix - block[index]
        return out

    @property
    def needs_mix(self) -> bool:
        return self.two_stems is not None and self.other_method == "minus"

    def paths(self, track: str | os.PathLike, output_dir: str | os.PathLike, names: Iterable[str]) -> dict[str, Path]:
        """{stem: output path} for the input file `track`."""
        track = Path(track)
        name = track.name[: -len(track.suffix)] if track.suffix else track.name
        variables = {"track": name, "trackext": track.suffix.lstrip("."), "ext": self.ext}
        return {stem: Path(output_dir) / self.filename.format(**variables, stem=stem) for stem in names}


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


def commit_all(writers: Mapping[str, StemWriter]) -> dict[str, Path]:
    """Finish every stem, then rename them all into place: all stems or none. On any failure every temporary
    and every stem already renamed is removed and the error is raised."""
    committed: list[Path] = []
    try:
        for writer in writers.values():
            writer.close()  # the work that can fail (conversion, flushing) happens before any rename
        for writer in writers.values():
            committed.append(writer.commit())
    except BaseException:
        for done in committed:
            done.unlink(missing_ok=True)
        for writer in writers.values():
            writer.abort()
        raise
    return {name: writer.path for name, writer in writers.items()}


class _FileJob:
    """One input file's stems: what they are called and how they are written. The checks that need no
    separation (the file's header, its channels, the stems' names and formats) run when the job is made; the
    stem files are created when the first separated samples arrive, and committed all together."""

    def __init__(
        self,
        separator: Separator,
        path: str | os.PathLike,
        output_dir: str | os.PathLike,
        options: OutputOptions,
        progress: Progress | None,
    ):
        from .separation import Signal  # the schedule's type; imported here so this module stays light

        self.info = info = inspect_audio(path)
        separator.check_channels(info.channels, str(info.path))
        self.sources, self.options = list(separator.sources), options
        self.subtype = output_subtype(options.ext, info.subtype, options.subtype)
        self.paths = options.paths(info.path, output_dir, options.stem_names(self.sources))
        for target in self.paths.values():
            check_output_format(target, options.ext, self.subtype, info.sample_rate, info.channels)
        self.writers: dict[str, StemWriter] = {}
        # "minus" needs the mix beside each output block: a second reader follows the output.
        self._mix = _Reader(iter_audio_blocks(info)) if options.needs_mix else None
        self.signal = Signal(lambda: iter_audio_blocks(info), info.channels, info.sample_rate, str(info.path), progress)

    def write(self, block: np.ndarray) -> None:
        """Append separated (sources, channels, n) samples to every stem."""
        if not self.writers:
            info, options = self.info, self.options
            for name, target in self.paths.items():
                self.writers[name] = StemWriter(
                    target, info.sample_rate, info.channels, self.subtype, options.ext, options.clip_mode
                )
        piece = self._mix.take(block.shape[-1]) if self._mix is not None else None
        for name, stem in self.options.select(block, self.sources, piece).items():
            self.writers[name].write(stem)

    def commit(self) -> dict[str, Path]:
        return commit_all(self.writers)

    def abort(self) -> None:
        for writer in self.writers.values():
            writer.abort()


@dataclass(frozen=True)
class FileResult:
    """What became of one input of `separate_files`: its stems ({stem: path}) or the error that stopped it."""

    path: Path
    stems: dict[str, Path] | None = None
    error: BaseException | None = None


def separate_files(
    separator: Separator,
    paths: Iterable[str | os.PathLike],
    output_dir: str | os.PathLike = "separated",
    options: OutputOptions | None = None,
    *,
    progress: Callable[[Path, int, int], None] | None = None,
) -> Iterator[FileResult]:
    """Separate audio files into stem files through one schedule (`Separator.stream_many`): a batch of chunks
    spans the end of one file and the start of the next, so short files still fill large batches.

    Yields a `FileResult` per file, in order, as soon as its stems are committed (all together, atomically) or
    it failed; a file that fails leaves no stem file and does not stop the others. An error of the network
    itself (not of a file) ends the whole run, leaving no partial stems. `progress(path, done, total)` follows
    each file's chunks. Files are opened one after another, as the schedule reaches them.
    """
    options = options or OutputOptions()
    paths = [Path(p) for p in paths]
    jobs: dict[int, _FileJob] = {}

    def opener(index: int):
        def open_signal():
            follow = functools.partial(progress, paths[index]) if progress is not None else None
            jobs[index] = _FileJob(separator, paths[index], output_dir, options, follow)
            return jobs[index].signal

        return open_signal

    try:
        for event in separator.stream_many(opener(index) for index in range(len(paths))):
            if event.kind == "block":
                jobs[event.index].write(event.value)
                continue
            job = jobs.pop(event.index, None)  # None: the file failed before its job was made
            if event.kind == "failed" or job is None:
                if job is not None:
                    job.abort()
                yield FileResult(paths[event.index], error=event.value)
                continue
            try:
                stems = job.commit()
            except HDemucsFlaxError as error:  # committing failed: commit_all removed every stem
                yield FileResult(paths[event.index], error=error)
            else:
                yield FileResult(paths[event.index], stems=stems)
    finally:
        for job in jobs.values():  # a network failure, or the consumer stopped early: nothing half-written
            job.abort()


def separate_file(
    separator: Separator,
    path: str | os.PathLike,
    output_dir: str | os.PathLike = "separated",
    options: OutputOptions | None = None,
    *,
    progress: Progress | None = None,
    **changes: object,
) -> dict[str, Path]:
    """Separate an audio file into stem files with `separator`, streaming (memory does not grow with the song).

    Stems are written to `output_dir / options.filename` at the input's sample rate and channel count (see
    `OutputOptions`; keyword `changes` override single fields, e.g. `two_stems="vocals"`). Files appear only
    when complete (atomic rename); on any error none of this call's stems are left. Returns {stem: path}.
    Raises `AudioError` for unusable input or output, `OptionError` for options this model cannot honour.
    """
    options = options or OutputOptions()
    if changes:
        options = options.replace(**changes)
    follow = (lambda _path, done, total: progress(done, total)) if progress is not None else None
    [result] = separate_files(separator, [path], output_dir, options, progress=follow)
    if result.error is not None:
        raise result.error
    assert result.stems is not None
    return result.stems
