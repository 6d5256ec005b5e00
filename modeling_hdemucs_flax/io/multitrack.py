"""Multitrack folders in MUSDB18-HQ's layout: what `evaluate` scores against and `train` learns from.

    DATASET/                 (or DATASET/train/ and DATASET/test/, chosen with `dataset_folder`)
      Some Artist - Song/
        mixture.wav          the mix (optional where only the stems are needed)
        drums.wav bass.wav other.wav vocals.wav     one file per source, any format `audio_io` reads

A track is a subfolder holding at least one file named after a source or "mixture"; other subfolders and hidden
names are not tracks. Separated stems to score (`find_estimates`) lie the same way, one folder per track named as
the dataset's: ESTIMATES/Some Artist - Song/drums.wav ... Every problem is a `DatasetError` whose one line names
the track and the fix.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import AudioError, DatasetError
from .audio_io import AUDIO_EXTENSIONS, AudioInfo, inspect_audio, read_audio

MIXTURE = "mixture"


@dataclass(frozen=True)
class Multitrack:
    """One track folder: its name (the folder's), the file of each source, and the mixture's file (None when the
    folder has none)."""

    name: str
    folder: Path
    stems: dict[str, Path]
    mixture: Path | None


@dataclass(frozen=True)
class MultitrackAudio:
    """A track read whole: `stems` float32 (sources, channels, samples) in the order asked for, `mixture` float32
    (channels, samples) or None, and their common sample rate in Hz."""

    stems: np.ndarray
    mixture: np.ndarray | None
    sample_rate: int


def dataset_folder(root: str | os.PathLike, subset: str | None) -> Path:
    """`root/subset` when `subset` is given (a `DatasetError` when it is not a folder); else `root/test` for a
    folder holding MUSDB's `train/` and `test/` and no tracks of its own; else `root`."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: no such folder (expected one folder per track, as in MUSDB18-HQ)")
    if subset is not None:
        if not (root / subset).is_dir():
            raise DatasetError(f"{root}: has no {subset}/ folder (drop --subset to use the folder itself)")
        return root / subset
    if (root / "test").is_dir() and (root / "train").is_dir():
        return root / "test"
    return root


def _audio_files(folder: Path) -> dict[str, list[Path]]:
    """The folder's audio files grouped by their name without extension."""
    found: dict[str, list[Path]] = {}
    for entry in sorted(folder.iterdir()):
        if entry.is_file() and not entry.name.startswith(".") and entry.suffix.lower() in AUDIO_EXTENSIONS:
            found.setdefault(entry.stem, []).append(entry)
    return found


def find_multitracks(
    root: str | os.PathLike, sources: Sequence[str], *, need_mixture: bool = False
) -> list[Multitrack]:
    """Every track under `root` (its subfolders, sorted by name) with a file for each of `sources` (and a mixture
    when `need_mixture`). A `DatasetError` for a folder with no tracks, a track missing a file, or two files
    for one stem (`drums.wav` and `drums.flac`)."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: no such folder (expected one folder per track, as in MUSDB18-HQ)")
    wanted = [*sources, MIXTURE]
    tracks = []
    for folder in _subfolders(root):
        if not _is_track(folder, wanted):
            continue
        files = _audio_files(folder)
        for name in wanted:
            if len(files.get(name, [])) > 1:
                names = ", ".join(p.name for p in files[name])
                raise DatasetError(f"{folder}: two files for {name} ({names}); keep one")
        missing = [s for s in sources if s not in files] + ([MIXTURE] if need_mixture and MIXTURE not in files else [])
        if missing:
            raise DatasetError(
                f"track {folder.name!r} ({folder}) has no {', '.join(missing)} file; every track needs "
                f"{', '.join(f'{s}.wav' for s in [*([MIXTURE] if need_mixture else []), *sources])} (any audio format)"
            )
        mixture = files.get(MIXTURE, [None])[0]
        tracks.append(Multitrack(folder.name, folder, {s: files[s][0] for s in sources}, mixture))
    if not tracks:
        holders = [p.name + "/" for p in _subfolders(root) if any(_is_track(q, wanted) for q in _subfolders(p))]
        if holders:  # MUSDB's root, given where its train/ or test/ was meant
            more = f" and {len(holders) - 3} more" if len(holders) > 3 else ""
            raise DatasetError(
                f"{root}: no tracks of its own, but its folders {', '.join(holders[:3])}{more} hold tracks; give one "
                f"of those (such as {root / holders[0].rstrip('/')})"
            )
        expected = ", ".join(f"{s}.wav" for s in [MIXTURE, *sources])
        raise DatasetError(f"{root}: no tracks (expected one folder per track holding {expected})")
    return tracks


def _subfolders(folder: Path) -> list[Path]:
    """The folder's subfolders but hidden ones, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _is_track(folder: Path, names: Sequence[str]) -> bool:
    """Whether `folder` holds an audio file named after one of `names` (a source or the mixture)."""
    files = _audio_files(folder)
    return any(name in files for name in names)


def find_estimates(root: str | os.PathLike, tracks: Sequence[Multitrack], sources: Sequence[str]) -> list[Multitrack]:
    """The separated stems of each of `tracks` in an estimates folder, `root/<track name>/<source>.<ext>` (the layout
    `separate-dataset 'DATASET/*/mixture.wav' --filename '{folder}/{stem}.{ext}'` and `evaluate --out` write), as
    `Multitrack`s without a mixture, in the order of `tracks`. Folders of `root` that are no track of `tracks` are
    left alone. A `DatasetError` for a track without a folder, a folder missing a source, or two files for one."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: no such folder (expected one folder of estimates per track)")
    found = []
    for track in tracks:
        folder = root / track.name
        if not folder.is_dir():
            raise DatasetError(f"track {track.name!r}: the estimates folder {root} has no {track.name}/ folder")
        files = _audio_files(folder)
        for name in sources:
            if len(files.get(name, [])) > 1:
                raise DatasetError(
                    f"track {track.name!r}: two estimates of {name} ({', '.join(p.name for p in files[name])}); "
                    "keep one"
                )
        missing = [name for name in sources if name not in files]
        if missing:
            raise DatasetError(
                f"track {track.name!r}: {folder} has no estimate of {', '.join(missing)} (expected "
                f"{', '.join(f'{name}.wav' for name in sources)}, any audio format)"
            )
        found.append(Multitrack(track.name, folder, {name: files[name][0] for name in sources}, None))
    return found


def _inspect(track: Multitrack, path: Path) -> AudioInfo:
    try:
        return inspect_audio(path)
    except (AudioError, OSError, ValueError, RuntimeError) as error:
        raise DatasetError(f"track {track.name!r}: {error}") from None


def header_difference(info: AudioInfo, other: AudioInfo) -> tuple[str, int, int] | None:
    """(what, info's value, other's value) for the first of sample rate, channel count and length in which two
    files differ; None when they agree in all three (what the files of a track, and an estimate and its
    reference, must)."""
    for what, got, want in (
        ("sample rate", info.sample_rate, other.sample_rate),
        ("channel count", info.channels, other.channels),
        ("length", info.frames, other.frames),
    ):
        if got != want:
            return what, got, want
    return None


def check_multitrack(track: Multitrack, sources: Sequence[str], *, with_mixture: bool = False) -> AudioInfo:
    """Read the headers of the track's files and check they agree (rate, channels, length); the first stem's
    header, or a `DatasetError` naming the track and the file that differs."""
    paths = [track.stems[s] for s in sources] + ([track.mixture] if with_mixture and track.mixture else [])
    infos = [_inspect(track, p) for p in paths]
    first = infos[0]
    for info in infos[1:]:
        differs = header_difference(info, first)
        if differs is not None:
            what, got, want = differs
            raise DatasetError(
                f"track {track.name!r}: {info.path.name} has {what} {got}, {first.path.name} has {want} (in "
                f"{track.folder}); every file of a track must match"
            )
    if first.frames == 0:
        raise DatasetError(f"track {track.name!r}: {first.path.name} holds no audio")
    return first


def read_multitrack(
    track: Multitrack, sources: Sequence[str], *, with_mixture: bool = False, checked: AudioInfo | None = None
) -> MultitrackAudio:
    """The track's stems (in the order of `sources`) and, when asked and present, its mixture, read whole after
    `check_multitrack` (`checked`: what an earlier `check_multitrack` of the same files returned, so the headers
    are not read again)."""
    info = checked if checked is not None else check_multitrack(track, sources, with_mixture=with_mixture)

    def read(path: Path) -> np.ndarray:
        try:
            audio, _ = read_audio(path)
        except (AudioError, OSError, ValueError, RuntimeError) as error:
            raise DatasetError(f"track {track.name!r}: {error}") from None
        if audio.shape[1] != info.frames:  # a decoder that found fewer frames than the header promised
            raise DatasetError(
                f"track {track.name!r}: {path.name} decodes to {audio.shape[1]} frames, its header says {info.frames}"
            )
        return audio

    stems = np.stack([read(track.stems[s]) for s in sources])
    mixture = read(track.mixture) if with_mixture and track.mixture is not None else None
    return MultitrackAudio(stems, mixture, info.sample_rate)
