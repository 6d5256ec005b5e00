"""Planning a dataset job: inputs -> tracks with keys, and where each track's stems go.

Inputs are files, folders (searched recursively), globs, fsspec URLs, and list / CSV / parquet catalogues with
a `path` column (optionally `key`). A track's key is its path relative to its root (the folder given, a
glob's fixed part, a file's folder, or the folder a catalogue's paths share) without the extension. Listing
happens here, once per input; no audio file is opened.
"""

from __future__ import annotations

import glob as globlib
import io
import os
import posixpath
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

from ..errors import DatasetError, OptionError, one_line
from ..io.audio_io import AUDIO_EXTENSIONS
from ..io.storage import filesystem, is_local_filesystem, is_url
from ..separation.file_output import OutputOptions

RESERVED = "_hdemucs"  # the output's folder of job records; no key may lie in it
MANIFEST, SUMMARY = "manifest.jsonl", "summary.json"  # this run's rows and totals, beside the stems
# The job's own names at the top of the output: no stem path may begin with one (compared case-insensitively,
# as macOS and Windows file systems compare names).
JOB_FILES = (MANIFEST, SUMMARY, RESERVED)
LIST_EXTENSIONS = (".txt", ".lst", ".csv", ".parquet", ".pq")


@dataclass(frozen=True)
class Track:
    """One input: `key` (its output name, a relative POSIX path without extension) and `source` (an absolute
    local path or a URL). `replaces`: option hashes of completion markers this run may replace (--overwrite)."""

    key: str
    source: str
    replaces: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return self.key.rsplit("/", 1)[-1]


def _has_magic(text: str) -> bool:
    return any(c in text for c in "*?[")


def _strip_ext(rel: str) -> str:
    folder, name = posixpath.split(rel)
    stem, ext = posixpath.splitext(name)
    return posixpath.join(folder, stem if stem else name)


def _is_audio(name: str) -> bool:
    return posixpath.splitext(name)[1].lower() in AUDIO_EXTENSIONS


def _check_key(key: str, source: str) -> str:
    parts = key.split("/")
    if not key or any(part in ("", ".", "..") for part in parts) or key.startswith("/"):
        raise DatasetError(f"{source}: {key!r} is not a usable key (a relative path such as 'album/song')")
    if parts[0] == RESERVED:
        raise DatasetError(f"{source}: its key {key!r} lies in {RESERVED}/, which holds the job's own records")
    return key


def _local_tracks(spec: str) -> list[Track]:
    path = Path(spec).expanduser()
    if _has_magic(spec):
        fixed = Path(*[part for part in _until_magic(Path(spec).expanduser().parts)])
        matches = sorted(Path(p) for p in globlib.glob(str(path), recursive=True))
        files = [p for p in matches if p.is_file() and _is_audio(p.name)]
        if not files:
            raise DatasetError(f"{spec}: the pattern matches no audio files ({', '.join(AUDIO_EXTENSIONS)})")
        root = fixed
    elif path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and _is_audio(p.name))
        if not files:
            raise DatasetError(f"{spec}: no audio files in this folder ({', '.join(AUDIO_EXTENSIONS)})")
        root = path
    elif path.is_file():
        if path.suffix.lower() in LIST_EXTENSIONS:
            return _catalogue_tracks(spec, None)
        files, root = [path], path.parent
    else:
        raise DatasetError(f"{spec}: no such file or directory")
    root = root.absolute()
    return [Track(_strip_ext(p.absolute().relative_to(root).as_posix()), str(p.absolute())) for p in files]


def _until_magic(parts: Sequence[str]) -> list[str]:
    fixed = []
    for part in parts:
        if _has_magic(part):
            break
        fixed.append(part)
    return fixed or ["."]


def _remote_tracks(spec: str, storage_options: dict | None) -> list[Track]:
    fs, path = filesystem(spec, storage_options)
    if is_local_filesystem(fs):
        return _local_tracks(path)
    try:
        return _list_remote(spec, fs, path, storage_options)
    except (DatasetError, FileNotFoundError):
        raise
    except Exception as error:  # whatever the protocol's driver raises (ftplib, botocore, aiohttp): one line
        raise DatasetError(f"{spec}: cannot list it ({type(error).__name__}: {one_line(error)})") from None


def _list_remote(spec: str, fs: Any, path: str, storage_options: dict | None) -> list[Track]:
    path = path.rstrip("/")
    if _has_magic(path):
        root = "/".join(_until_magic(path.split("/")))
        found = cast(dict[str, dict[str, Any]], fs.glob(path, detail=True))
        files = sorted(p for p, info in found.items() if info.get("type") == "file" and _is_audio(p))
        if not files:
            raise DatasetError(f"{spec}: the pattern matches no audio files ({', '.join(AUDIO_EXTENSIONS)})")
    else:
        try:
            kind = fs.info(path).get("type")
        except FileNotFoundError:
            raise DatasetError(f"{spec}: no such file or folder") from None
        if kind == "directory":
            files = sorted(p for p in cast(list[str], fs.find(path)) if _is_audio(p))
            if not files:
                raise DatasetError(f"{spec}: no audio files under this prefix ({', '.join(AUDIO_EXTENSIONS)})")
            root = path
        elif posixpath.splitext(path)[1].lower() in LIST_EXTENSIONS:
            return _catalogue_tracks(spec, storage_options)
        else:
            files, root = [path], posixpath.dirname(path)
    return [Track(_strip_ext(posixpath.relpath(p, root)), fs.unstrip_protocol(p)) for p in files]


def _catalogue_rows(spec: str, storage_options: dict | None) -> list[tuple[str, str | None]]:
    """(path, key or None) for each row of a list file (.txt/.lst: one path a line, # comments), a CSV file
    or a parquet file with a `path` column (and optionally a `key` column). Text is UTF-8 (a byte-order mark, as
    spreadsheet programs write, is allowed)."""
    import fsspec

    ext = posixpath.splitext(spec)[1].lower()
    try:
        with fsspec.open(spec, "rb", **(storage_options or {})) as handle:
            if ext in (".txt", ".lst", ".csv"):
                return _text_rows(
                    spec, ext, io.TextIOWrapper(cast(IO[bytes], handle), encoding="utf-8-sig", newline="")
                )
            return _parquet_rows(spec, handle)
    except UnicodeDecodeError as error:
        raise DatasetError(
            f"{spec}: not UTF-8 text (it holds the byte {error.object[error.start]:#04x}); save the list as UTF-8"
        ) from None


def _text_rows(spec: str, ext: str, text: IO[str]) -> list[tuple[str, str | None]]:
    if ext in (".txt", ".lst"):
        lines = (line.strip() for line in text)
        return [(line, None) for line in lines if line and not line.startswith("#")]
    import csv

    reader = csv.DictReader(text)
    _need_path_column(spec, reader.fieldnames or [])
    return [(row["path"].strip(), (row.get("key") or "").strip() or None) for row in reader if row["path"]]


def _parquet_rows(spec: str, handle: Any) -> list[tuple[str, str | None]]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise DatasetError(f"{spec}: reading parquet needs pyarrow (pip install pyarrow)") from None
    try:
        table = pq.ParquetFile(handle)
        columns = table.schema_arrow.names
        _need_path_column(spec, columns)
        data = table.read(columns=[c for c in ("path", "key") if c in columns]).to_pydict()
    except (pa.ArrowException, OSError) as error:  # not parquet, truncated, or corrupt pages
        raise DatasetError(f"{spec}: not a readable parquet file ({one_line(error)})") from None
    keys = data.get("key") or [None] * len(data["path"])
    pairs = zip(data["path"], keys, strict=True)
    return [(str(p).strip(), (str(k).strip() or None) if k else None) for p, k in pairs if p]


def _need_path_column(spec: str, columns: Sequence[str]) -> None:
    if "path" not in columns:
        raise DatasetError(f"{spec}: no 'path' column (columns: {', '.join(columns) or 'none'})")


def _catalogue_tracks(spec: str, storage_options: dict | None) -> list[Track]:
    rows = _catalogue_rows(spec, storage_options)
    if not rows:
        raise DatasetError(f"{spec}: lists no inputs")
    if is_url(spec):
        fs, path = filesystem(spec, storage_options)
        base = fs.unstrip_protocol(posixpath.dirname(path)) if not is_local_filesystem(fs) else posixpath.dirname(path)
    else:
        base = str(Path(spec).expanduser().absolute().parent)
    sources = []
    for row, _ in rows:
        if is_url(row) or os.path.isabs(row):
            sources.append(row)
        elif is_url(base):
            protocol, _, rest = base.partition("://")
            sources.append(f"{protocol}://{posixpath.normpath(f'{rest}/{row}')}")
        else:
            sources.append(os.path.normpath(os.path.join(base, os.path.expanduser(row))))
    # keys: the `key` column, else each path relative to the folder all the listed paths share
    split = [[part for part in source.split("/") if part] for source in sources]
    common = 0
    shortest = min(len(parts) for parts in split) - 1  # never the file name itself
    while common < shortest and all(parts[common] == split[0][common] for parts in split):
        common += 1
    tracks = []
    for (_, key), source, parts in zip(rows, sources, split, strict=True):
        tracks.append(Track(key.strip("/") if key else _strip_ext("/".join(parts[common:])), source))
    return tracks


def plan_tracks(inputs: Iterable[str | os.PathLike], storage_options: dict | None = None) -> list[Track]:
    """Every track of `inputs` (files, folders searched recursively, globs, fsspec URLs, list / CSV / parquet
    files), sorted by key. Raises `DatasetError` for an input that yields nothing and for two inputs with one
    key (naming both); the same file reached twice with one key is kept once."""
    by_key: dict[str, Track] = {}
    clashes: list[str] = []
    for item in inputs:
        spec = os.fspath(item)
        for track in _remote_tracks(spec, storage_options) if is_url(spec) else _local_tracks(spec):
            _check_key(track.key, track.source)
            other = by_key.setdefault(track.key, track)
            if other.source != track.source:
                clashes.append(f"{track.key!r} ({other.source} and {track.source})")
    if clashes:
        more = f" (and {len(clashes) - 1} more)" if len(clashes) > 1 else ""
        raise DatasetError(
            f"two inputs have the key {clashes[0]}{more}: a key is the path relative to its input folder without "
            "the extension; rename one, or separate them into different outputs"
        )
    if not by_key:
        raise DatasetError("no inputs given")
    return sorted(by_key.values(), key=lambda t: t.key)


def _escape(text: str) -> str:
    return text.replace("{", "{{").replace("}", "}}")


def stem_pattern(track: Track, output: OutputOptions) -> str:
    """The relative path of `track`'s stems with `{stem}` and `{ext}` left to fill: the key's folder, then
    `output.filename` with {track} = the key's last part and {trackext} = the source's extension. Already
    escaped as a `str.format` template (it is `separate_file`'s filename)."""
    folder, name = posixpath.split(track.key)
    ext = posixpath.splitext(track.source.rsplit("/", 1)[-1])[1].lstrip(".")
    # {folder} (the default template's first part) is the key's folder; a template without it still gets the
    # key's folder in front. Empty segments are dropped, as `OutputOptions.paths` drops them.
    rendered = output.filename.format(
        track=_escape(name), trackext=_escape(ext), folder=_escape(folder), stem="{stem}", ext="{ext}"
    )
    if folder and "{folder}" not in output.filename:
        rendered = f"{_escape(folder)}/{rendered}"
    return "/".join(part for part in rendered.split("/") if part not in ("", "."))


def check_output_paths(tracks: Sequence[Track], output: OutputOptions) -> None:
    """Raise `OptionError` unless every track's stems get their own files inside the output (the template
    holds {stem}, stays inside the folder, and no two tracks share a path), and `DatasetError` naming the input
    whose stems would take one of the job's own names (`JOB_FILES`: e.g. `summary.json.wav`, whose stems would
    go to the folder `summary.json/`)."""
    if "{stem}" not in output.filename:
        raise OptionError("filename", output.filename, "must contain {stem} (each stem needs its own file)")
    reserved = {name.casefold() for name in JOB_FILES}
    seen: dict[str, str] = {}
    for track in tracks:
        pattern = stem_pattern(track, output)
        normal = posixpath.normpath(pattern)
        if normal.startswith(("../", "/")) or normal == "..":
            raise OptionError("filename", output.filename, f"puts {track.key!r} outside the output folder")
        first = normal.split("/")[0]
        if first.casefold() in reserved:
            raise DatasetError(
                f"{track.source}: its stems would go to {first}/, a name the job keeps for its own records "
                f"({', '.join(JOB_FILES)}); rename the file, give it another key (a CSV 'key' column), or put "
                "every track's stems in a subfolder with --filename (e.g. 'stems/{folder}/{track}/{stem}.{ext}')"
            )
        other = seen.setdefault(pattern, track.key)
        if other != track.key:
            raise OptionError(
                "filename", output.filename, f"gives {other!r} and {track.key!r} the same files; add {{track}}"
            )
