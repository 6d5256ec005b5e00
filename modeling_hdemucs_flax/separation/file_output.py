"""Separating files into stem files: which inputs, which stems, what they are called (planned for every input
before anything is written), how they are kept within full scale, and that a song's stems appear all together
or not at all.

    find_tracks -> plan_outputs (every path, checked) -> per track: read (audio_io) -> Separator.stream
      -> select stems -> StemWriter per stem -> commit all

`Track` is one input file and where it was found; `OutputOptions` is the file-output policy and its one
validation; `plan_outputs` maps tracks to stem paths and refuses plans that would lose data; `separate_file`
runs one track. The schedule itself (normalisation, chunking, overlap-add) is the `Separator`'s; every file
is opened by `audio_io`. Imports only numpy, `audio_io` and other light modules, so the command line can check
these options and plans before JAX is loaded.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import string
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import OptionError
from ..io.audio_io import (
    AUDIO_EXTENSIONS,
    CLIP_MODES,
    DEFAULT_MP3_BITRATE,
    DEFAULT_MP3_PRESET,
    MP3_BITRATES,
    MP3_PRESETS,
    StemWriter,
    check_duration,
    check_output_format,
    costly_to_decode,
    inspect_audio,
    iter_audio_blocks,
    make_folders,
    missing_folders,
    output_subtype,
    remove_empty_folders,
)
from ..io.decoded_cache import DecodedOnce
from ..options import check_io_workers

if TYPE_CHECKING:
    from .separator import Progress, Separator

OTHER_METHODS = ("add", "minus", "none")
# demucs-next style: a folder given as input keeps its structure under the output folder ({folder} is empty
# for files given directly, and empty path segments are dropped, so those land in OUT/track/stem.ext).
DEFAULT_FILENAME = "{folder}/{track}/{stem}.{ext}"
TEMPLATE_VARIABLES = ("track", "trackext", "stem", "ext", "folder")


@dataclass(frozen=True)
class Track:
    """One input file. `root` is the folder given by the user that it was found in (None for a file given
    directly); `relative` is its path below `root` (its name when given directly)."""

    path: Path
    root: Path | None = None

    @property
    def relative(self) -> Path:
        return self.path.relative_to(self.root) if self.root is not None else Path(self.path.name)

    @property
    def folder(self) -> str:
        """The template's {folder}: the folder of the input below `root`, with "/" separators ("" if none)."""
        parent = self.relative.parent
        return "" if parent == Path(".") else parent.as_posix()

    @property
    def name(self) -> str:
        """The template's {track}: the file name without its extension."""
        suffix = self.path.suffix
        return self.path.name[: -len(suffix)] if suffix else self.path.name

    def variables(self) -> dict[str, str]:
        return {"track": self.name, "trackext": self.path.suffix.lstrip("."), "folder": self.folder}


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def find_tracks(
    inputs: Iterable[str | os.PathLike], *, exclude: str | os.PathLike | None = None
) -> tuple[list[Track], list[str]]:
    """The tracks named by `inputs` (files, or folders searched recursively for files with an extension in
    `audio_io.AUDIO_EXTENSIONS`, sorted), and one-line problems (missing paths, folders without audio).

    Hidden files and folders (names starting with ".", such as a writer's temporaries or macOS's `._song.m4a`)
    are skipped in folders, as is the folder `exclude` (the output folder, so stems are never taken as
    input). A file reached twice is kept once, as first found."""
    tracks: list[Track] = []
    problems: list[str] = []
    seen: set[Path] = set()
    skip = Path(exclude).resolve() if exclude is not None else None

    def add(track: Track) -> None:
        key = track.path.resolve()
        if key not in seen:
            seen.add(key)
            tracks.append(track)

    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = []
            for folder, subfolders, files in os.walk(path):
                here = Path(folder)
                subfolders[:] = sorted(
                    d for d in subfolders if not _is_hidden(d) and (skip is None or (here / d).resolve() != skip)
                )
                found += [here / f for f in files if not _is_hidden(f) and Path(f).suffix.lower() in AUDIO_EXTENSIONS]
            if not found:
                problems.append(f"{path}: no audio files in this folder ({', '.join(AUDIO_EXTENSIONS)})")
            for file in sorted(found):
                add(Track(file, path))
        elif path.exists():
            add(Track(path))
        else:
            problems.append(f"{path}: no such file or directory")
    return tracks, problems


@dataclass(frozen=True)
class OutputOptions:
    """How stems are written.

    filename: each stem's path inside the output folder, a `str.format` template over {track} (the input's name
        without extension), {trackext} (its extension), {folder} (the input's folder below the folder given as
        input; empty for files given directly), {stem} and {ext}. Empty path segments are dropped; every path
        must stay inside the output folder (see `plan_outputs`).
    ext: output format, one of `audio_io.OUTPUT_FORMATS` (wav, flac, mp3, ogg).
    subtype: libsndfile sample format (PCM_16, PCM_24, FLOAT, ...); None keeps the input's bit depth where
        `ext` can hold it (see `audio_io.output_subtype`).
    two_stems: write only this source and `no_<source>` (the accompaniment, for karaoke).
    other_method: `no_<source>` is the sum of the other sources ("add"), the mix minus the source ("minus"),
        or not written ("none").
    clip_mode: "rescale", "clamp" or "none" (see `audio_io.StemWriter`).
    mp3_bitrate: MP3 stems' constant bitrate in kbps (demucs's default, 320).
    mp3_preset: LAME's quality preset for MP3 stems, 2 (best, demucs's default) to 7 (fastest).
    """

    filename: str = DEFAULT_FILENAME
    ext: str = "wav"
    subtype: str | None = None
    two_stems: str | None = None
    other_method: str = "add"
    clip_mode: str = "rescale"
    mp3_bitrate: int = DEFAULT_MP3_BITRATE
    mp3_preset: int = DEFAULT_MP3_PRESET

    def __post_init__(self) -> None:
        output_subtype(self.ext, requested=self.subtype)  # the format exists and can hold the subtype
        if self.other_method not in OTHER_METHODS:
            raise OptionError("other_method", self.other_method, f"must be one of {', '.join(OTHER_METHODS)}")
        if self.clip_mode not in CLIP_MODES:
            raise OptionError("clip_mode", self.clip_mode, f"must be one of {', '.join(CLIP_MODES)}")
        for option, (low, high) in (("mp3_bitrate", MP3_BITRATES), ("mp3_preset", MP3_PRESETS)):
            value = getattr(self, option)
            if not (isinstance(value, int) and not isinstance(value, bool) and low <= value <= high):
                raise OptionError(option, value, f"must be an integer in [{low}, {high}]")
        try:
            self.filename.format(**dict.fromkeys(TEMPLATE_VARIABLES, "x"))
        except (KeyError, IndexError, ValueError, AttributeError) as error:
            variables = ", ".join(f"{{{name}}}" for name in TEMPLATE_VARIABLES)
            raise OptionError(
                "filename", self.filename, f"unknown variable or bad format ({error}); the variables are {variables}"
            ) from None
        if os.path.isabs(self.filename):
            raise OptionError("filename", self.filename, "must be a path inside the output folder, not an absolute one")

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

    def read_sources(self, sources: Sequence[str]) -> list[str]:
        """The separated sources `select` reads, in order: every one, or with `two_stems` and `other_method`
        "minus" or "none" that source alone ("add" sums the others). A bag of models then runs only the members
        those need (`Separator.restricted_to`)."""
        if self.two_stems is None or self.other_method == "add":
            return list(sources)
        return [self.two_stems]

    def paths(
        self, track: Track | str | os.PathLike, output_dir: str | os.PathLike, names: Iterable[str]
    ) -> dict[str, Path]:
        """{stem: output path} for `track` (a `Track`, or a file given directly). Raises `OptionError` when a
        path would not lie inside `output_dir` (a file named `...wav` has the track name "..")."""
        track = track if isinstance(track, Track) else Track(Path(track))
        variables = {**track.variables(), "ext": self.ext}
        root = Path(output_dir)
        inside = root.resolve()
        out = {}
        for stem in names:
            parts = [p for p in re.split(r"[/\\]", self.filename.format(**variables, stem=stem)) if p not in ("", ".")]
            path = root.joinpath(*parts)
            resolved = path.resolve()
            if not parts or resolved == inside or not resolved.is_relative_to(inside):
                raise OptionError(
                    "filename",
                    self.filename,
                    f"{track.path} would be written to {path}, outside the output folder {root}; "
                    "rename the file or choose another template",
                )
            out[stem] = path
        return out


def _template_variables(template: str) -> set[str]:
    return {field for _, field, _, _ in string.Formatter().parse(template) if field}


def _collision_hint(first: Track, second: Track, template: str) -> str:
    """What keeps two tracks' stems apart: the first template variable that tells them apart and is missing from
    `template`; for tracks that no variable tells apart (the same name in different folders, each given as a
    file or as its own folder), the folder that holds both, given as the input so that {folder} differs."""
    differing = {name for name, value in first.variables().items() if second.variables()[name] != value}
    present = _template_variables(template)
    for name in ("track", "trackext", "folder"):
        if name in differing and name not in present:
            example = "{folder}/{track}.{trackext}/{stem}.{ext}" if name == "trackext" else DEFAULT_FILENAME
            return f"add {{{name}}} to the template (e.g. '{example}')"
    if differing:  # every variable that differs is in the template, yet the paths meet (e.g. names differing in case)
        return "choose another template, or separate them in two runs with different output folders"
    parents = [str(track.path.parent) for track in (first, second)]
    try:
        common = os.path.commonpath(parents) or "."
    except ValueError:  # one path relative, the other absolute
        common = os.path.commonpath([os.path.abspath(p) for p in parents])
    folder = "" if "folder" in present else " and add {folder} to the template"
    return (
        f"give the folder that holds both ({common}) as the input{folder}, so each keeps its subfolder, or "
        "separate them in two runs with different output folders"
    )


def plan_outputs(
    tracks: Sequence[Track], output_dir: str | os.PathLike, options: OutputOptions, sources: Sequence[str]
) -> dict[Track, dict[str, Path]]:
    """Every stem path of every track, planned before anything is written: {track: {stem: path}}.

    Raises `OptionError` (option "filename") naming both parties when the plan would lose data: two tracks
    (or two stems of one track) mapped to one file, a path outside `output_dir`, or a stem path that is one of
    the input files. `sources` are the model's source names (see `OutputOptions.stem_names`)."""
    names = options.stem_names(sources)
    inputs = {track.path.resolve(): track for track in tracks}
    taken: dict[Path, tuple[Track, str]] = {}
    plan: dict[Track, dict[str, Path]] = {}
    for track in tracks:
        plan[track] = options.paths(track, output_dir, names)
        for stem, path in plan[track].items():
            key = path.resolve()
            source = inputs.get(key)
            if source is None and path.exists():  # another name for an input (a hard link)
                source = next((t for k, t in inputs.items() if os.path.samefile(k, key)), None)
            if source is not None:
                raise OptionError(
                    "filename",
                    options.filename,
                    f"the {stem} stem of {track.path} would replace the input file {source.path}; "
                    "choose another output folder or template",
                )
            if key in taken:
                other, other_stem = taken[key]
                if other is track:
                    rule = (
                        f"stems {other_stem} and {stem} of {track.path} would both be written to {path}; add {{stem}}"
                    )
                else:
                    rule = f"{other.path} and {track.path} would both be written to {path}; " + _collision_hint(
                        other, track, options.filename
                    )
                raise OptionError("filename", options.filename, rule)
            taken[key] = (track, stem)
    return plan


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


def commit_all(writers: Mapping[str, StemWriter], workers: int = 1) -> dict[str, Path]:
    """Finish every stem, then rename them all into place: all stems or none. On any failure every temporary
    and every stem already renamed is removed and the error is raised. `workers` > 1 finishes (encodes) that
    many stems at once, in threads (libsndfile and FFmpeg release the GIL while they encode)."""
    committed: list[Path] = []
    try:
        # the work that can fail (conversion, encoding, flushing) happens before any rename
        if workers > 1 and len(writers) > 1:
            with ThreadPoolExecutor(min(workers, len(writers)), thread_name_prefix="hdemucs-encode") as pool:
                for finished in [pool.submit(writer.close) for writer in writers.values()]:
                    finished.result()
        else:
            for writer in writers.values():
                writer.close()
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
        track: Track,
        paths: dict[str, Path],
        options: OutputOptions,
        progress: Progress | None,
        max_seconds: float | None = None,
        workers: int = 1,
    ):
        from .separator import Signal  # the schedule's type; imported here so this module stays light

        self.info = info = inspect_audio(track.path)
        separator.check_channels(info.channels, str(info.path))
        self.sources, self.options = list(separator.sources), options
        self.subtype = output_subtype(options.ext, info.subtype, options.subtype)
        self.paths = paths  # planned by `plan_outputs` with every other track's
        for target in self.paths.values():
            check_output_format(target, options.ext, self.subtype, info.sample_rate, info.channels)
        self.writers: dict[str, StemWriter] = {}
        self.workers = workers  # stems encoded at once when committed
        self._created: list[Path] = []  # folders made for these stems, removed again if they fail
        # "minus" needs the mix beside each output block: a second reader follows the output.
        if max_seconds is not None:
            check_duration(info, max_seconds)  # from the header, before anything is decoded
        read = functools.partial(iter_audio_blocks, info, max_seconds=max_seconds)
        # read twice (the mix statistics, then the separation) and a third time for "minus": a compressed file is
        # decoded once, its samples kept (bounded memory, the rest in a temporary file) and replayed
        self._decoded = DecodedOnce(read) if costly_to_decode(info) else None
        read = self._decoded or read
        self._mix = _Reader(read()) if options.needs_mix else None
        self.signal = Signal(read, info.channels, info.sample_rate, str(info.path), progress)

    def write(self, block: np.ndarray) -> None:
        """Append separated (sources, channels, n) samples to every stem."""
        if not self.writers:
            info, options = self.info, self.options
            for folder in dict.fromkeys(target.parent for target in self.paths.values()):
                self._created += missing_folders(folder)  # listed before they exist: an interrupt leaves none
                make_folders(folder)
            for name, target in self.paths.items():
                self.writers[name] = StemWriter(
                    target,
                    info.sample_rate,
                    info.channels,
                    self.subtype,
                    options.ext,
                    options.clip_mode,
                    mp3_bitrate=options.mp3_bitrate,
                    mp3_preset=options.mp3_preset,
                )
        piece = self._mix.take(block.shape[-1]) if self._mix is not None else None
        for name, stem in self.options.select(block, self.sources, piece).items():
            self.writers[name].write(stem)

    def commit(self) -> dict[str, Path]:
        self._release()
        return commit_all(self.writers, self.workers)

    def abort(self) -> None:
        """Remove every temporary, and the folders made for this track (an interrupted track leaves no empty
        track folder behind)."""
        self._release()
        for writer in self.writers.values():
            writer.abort()
        remove_empty_folders(self._created)

    def _release(self) -> None:
        """Drop the decoded samples kept for the second read (once the separation has read them)."""
        self._mix = None
        if self._decoded is not None:
            self._decoded.close()


@dataclass(frozen=True)
class FileResult:
    """What became of one input of `separate_files`: its stems ({stem: path}) or the error that stopped it."""

    path: Path
    stems: dict[str, Path] | None = None
    error: BaseException | None = None


def separate_files(
    separator: Separator,
    paths: Iterable[Track | str | os.PathLike],
    output_dir: str | os.PathLike = "separated",
    options: OutputOptions | None = None,
    *,
    progress: Callable[[Path, int, int], None] | None = None,
    max_seconds: float | None = None,
    io_workers: int | None = None,
) -> Generator[FileResult, None, None]:
    """Separate audio files into stem files through one schedule (`Separator.stream_many`): a batch of chunks
    spans the end of one file and the start of the next, so short files still fill large batches.

    `paths` are files or `Track`s; every stem path is planned (`plan_outputs`) before anything is written, so a
    plan that would lose data raises `OptionError` first. Yields a `FileResult` per file, in order, as soon as
    its stems are committed (all together, atomically) or it failed; a file that fails leaves no stem file and
    does not stop the others. An error of the network itself (not of a file) ends the whole run, leaving no
    partial stems. `progress(path, done, total)` follows each file's chunks. `max_seconds` fails (with
    `AudioTooLongError`) a file longer than that, told by its header or by counting its decoded samples (a
    server's limit; see `iter_audio_blocks`).

    `io_workers` (None: the cores this process may use, `runtime.available_cores`): 1 does every step on the
    calling thread (the network on its own); more open and decode the next file while this one is separated,
    and finish (encode) a file's stems in the background, that many at once, while the next file is separated.
    The stems are the same, bit for bit, whatever the number. Only the sources the stems are made of are separated
    (`OutputOptions.read_sources`): with a bag of models and `two_stems` with `other_method` "minus" or "none",
    only the members that source needs run.
    """
    options = options or OutputOptions()
    workers = check_io_workers(io_workers)
    tracks = [p if isinstance(p, Track) else Track(Path(p)) for p in paths]
    plan = plan_outputs(tracks, output_dir, options, separator.sources)
    # only the stems `select` reads are computed (a bag runs only the members they need); nothing reads the others
    separator = separator.restricted_to(options.read_sources(separator.sources))
    paths = [track.path for track in tracks]
    jobs: dict[int, _FileJob] = {}

    def opener(index: int):
        def open_signal():
            follow = functools.partial(progress, paths[index]) if progress is not None else None
            job = _FileJob(separator, tracks[index], plan[tracks[index]], options, follow, max_seconds, workers)
            jobs[index] = job
            return job.signal

        return open_signal

    events = separator.stream_many((opener(index) for index in range(len(paths))), io_workers=workers)
    committing = _Commits(workers)
    unwritable: dict[int, Exception] = {}  # files whose stems could not be written: the rest of them is dropped
    try:
        for event in events:
            if event.kind == "block":
                if event.index not in unwritable:
                    try:
                        jobs[event.index].write(event.value)
                    except Exception as error:  # this file's output (a full disk, ...): the others go on
                        unwritable[event.index] = error
                        jobs.pop(event.index).abort()
                continue
            job = jobs.pop(event.index, None)  # None: the file failed before its job was made, or writing it
            if event.kind == "failed" or job is None:
                if job is not None:
                    job.abort()
                error = unwritable.pop(event.index, None) or event.value
                committing.add(paths[event.index], FileResult(paths[event.index], error=error))
            else:
                committing.add(paths[event.index], job)
            yield from committing.finished()
        yield from committing.finished(wait=True)
    finally:
        events.close()  # first: the threads opening files ahead stop adding to `jobs`
        committing.close()
        for job in jobs.values():  # a network failure, or the consumer stopped early: nothing half-written
            job.abort()


class _Commits:
    """Files whose stems are being finished (encoded and renamed into place), in a background thread when
    `workers` > 1, and their results handed on in the files' order. At most two files wait to be finished: the
    schedule pauses rather than keep the staged stems of more."""

    def __init__(self, workers: int):
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="hdemucs-commit") if workers > 1 else None
        self._queue: deque[tuple[_FileJob | None, FileResult | Future]] = deque()

    def add(self, path: Path, work: _FileJob | FileResult) -> None:
        if isinstance(work, FileResult):
            self._queue.append((None, work))
        elif self._pool is None:
            self._queue.append((work, _commit(path, work)))
        else:
            self._queue.append((work, self._pool.submit(_commit, path, work)))

    def finished(self, wait: bool = False) -> Iterator[FileResult]:
        """The results ready at the head of the queue (every one with `wait`; at least enough that no more than
        two files are being finished)."""
        while self._queue:
            _, result = self._queue[0]
            pending = sum(isinstance(r, Future) and not r.done() for _, r in self._queue)
            if isinstance(result, Future) and not result.done() and not wait and pending <= 2:
                return
            self._queue.popleft()
            yield result.result() if isinstance(result, Future) else result

    def close(self) -> None:
        """Cancel the commits not started (their jobs aborted) and wait for the one running: a file is either
        committed whole or leaves nothing."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        for job, result in self._queue:
            if job is not None and isinstance(result, Future) and result.cancelled():
                job.abort()
        self._queue.clear()


def _commit(path: Path, job: _FileJob) -> FileResult:
    """Commit `job`'s stems; a failure is the file's result (commit_all has removed every stem)."""
    try:
        return FileResult(path, stems=job.commit())
    except Exception as error:  # encoding or renaming this file's stems (commit_all removed every one)
        job.abort()
        return FileResult(path, error=error)
    except BaseException:
        job.abort()
        raise


def separate_file(
    separator: Separator,
    path: Track | str | os.PathLike,
    output_dir: str | os.PathLike = "separated",
    options: OutputOptions | None = None,
    *,
    progress: Progress | None = None,
    max_seconds: float | None = None,
    io_workers: int | None = None,
    **changes: object,
) -> dict[str, Path]:
    """Separate an audio file into stem files with `separator`, streaming (memory does not grow with the song).

    `path` is a file, or a `Track` (whose `root` gives the template's {folder}). Stems are written to the paths
    `plan_outputs` gives (`output_dir / options.filename`) at the input's sample rate and channel count (see
    `OutputOptions`; keyword `changes` override single fields, e.g. `two_stems="vocals"`). Files appear only
    when complete (atomic rename); on any error none of this call's stems, temporaries or new folders are
    left. Returns {stem: path}. Raises `AudioError` for unusable input or output (`AudioTooLongError` past
    `max_seconds`, see `separate_files`), `OptionError` for options this model cannot honour or paths that would
    lose data. `io_workers`: host threads (see `separate_files`).
    """
    options = options or OutputOptions()
    if changes:
        options = options.replace(**changes)
    follow = (lambda _path, done, total: progress(done, total)) if progress is not None else None
    [result] = separate_files(
        separator, [path], output_dir, options, progress=follow, max_seconds=max_seconds, io_workers=io_workers
    )
    if result.error is not None:
        raise result.error
    assert result.stems is not None
    return result.stems
