"""Downloading a weight file and checking it: one downloader and one sha256 check for every model's files (the
torchaudio bundles of `zoo.torchaudio_bundles`, the publishing script). Torch-free.

Downloads are capped at the file's known size (`MAX_DOWNLOAD_BYTES` when it is unknown), have an overall
deadline besides the per-read timeout, and every failure (HTTP errors, cut connections, lying
`Content-Length`s) is one `DownloadError` line. A file already in place that is not the expected one is
reported, never deleted: it may be a copy the user made by hand.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import DownloadError
from ..io import tempfiles

if TYPE_CHECKING:
    pass

DOWNLOAD_DEADLINE = 3600.0  # seconds for a whole download (335 MB at 100 kB/s); each read also times out
READ_TIMEOUT = 60.0
# Cap of a download whose size is not known in advance (HDEMUCS_HIGH_MUSDB's file, ~335 MB like the PLUS one,
# or a server's unannounced length): far above any HDemucs checkpoint, far below filling a disk.
MAX_DOWNLOAD_BYTES = 2 * 1024**3
PART_SUFFIX = ".part"


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 digest of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def _check_digest(name: str, got: str, want: str | None) -> None:
    if want is not None and got.lower() != want.lower():
        raise DownloadError(f"{name}: sha256 mismatch (got {got}, expected {want.lower()}); the file was rejected")


def _expected_length(header: str | None, url: str, size: int | None, cap: int) -> int | None:
    """The response's Content-Length as an int (None when absent); a malformed or oversized one is refused."""
    if header is None:
        return None
    try:
        length = int(header)
    except ValueError:
        raise DownloadError(f"cannot download {url}: the server sent a malformed Content-Length {header!r}") from None
    if length < 0:
        raise DownloadError(f"cannot download {url}: the server sent a negative Content-Length {length}")
    if size is not None and length != size:
        raise DownloadError(f"cannot download {url}: the server offers {length} bytes, the file has {size}")
    if length > cap:
        raise DownloadError(f"cannot download {url}: the server offers {length} bytes, more than the {cap}-byte cap")
    return length


def check_file(path: str | os.PathLike, sha256: str | None, size: int | None) -> tuple[str, str | None]:
    """(the file's sha256, None) when the file at `path` has the expected `size` and `sha256` (each checked when
    given); otherwise (its sha256, what it has against what was expected, as a phrase: "sha256 1f2e..., 12
    bytes; expected sha256 a004..., 334697255 bytes")."""
    have, got = os.path.getsize(path), sha256_file(path)
    if (size is None or have == size) and (sha256 is None or got == sha256.lower()):
        return got, None
    expected = [f"sha256 {sha256.lower()}"] if sha256 else []
    expected += [f"{size} bytes"] if size is not None else []
    return got, f"sha256 {got}, {have} bytes; expected {', '.join(expected)}"


def download_file(
    url: str,
    destination: str | os.PathLike,
    *,
    sha256: str | None = None,
    size: int | None = None,
    progress: bool = True,
    deadline: float = DOWNLOAD_DEADLINE,
    read_timeout: float = READ_TIMEOUT,
    max_size: int | None = None,
) -> str:
    """Download `url` to `destination` and return the file's sha256.

    The file is written under a temporary name beside `destination` and renamed only once complete and (when
    `sha256` is given) verified, so an interrupted or rejected download leaves nothing behind; temporaries a
    killed earlier process left there are swept first. `size` (bytes, when known) is the exact length
    accepted; without it, at most `max_size` bytes are (default `MAX_DOWNLOAD_BYTES`, read at call time).
    `deadline` bounds the whole transfer in seconds, `read_timeout` each read. Raises `DownloadError` (one
    line) on network errors, cut or oversized transfers, timeouts and digest mismatches.
    """
    from tqdm.auto import tqdm  # imported here: only a download needs it

    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    tempfiles.sweep_stale(destination.parent, PART_SUFFIX, time.time())
    partial = tempfiles.new_name(destination, PART_SUFFIX)  # known before the file exists (see `finally`)
    digest = hashlib.sha256()
    ends = time.monotonic() + deadline
    cap = MAX_DOWNLOAD_BYTES if max_size is None else max_size
    try:
        with os.fdopen(tempfiles.create(partial), "wb") as out:
            try:
                response = urllib.request.urlopen(url, timeout=min(read_timeout, deadline))
            except urllib.error.HTTPError as error:
                raise DownloadError(f"cannot download {url}: HTTP {error.code} {error.reason}") from None
            except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as error:
                reason = getattr(error, "reason", error)
                raise DownloadError(f"cannot download {url}: {reason}") from None
            with response:
                total = _expected_length(response.headers.get("Content-Length"), url, size, cap)
                limit = size if size is not None else total  # the exact length expected, when known
                bar = tqdm(
                    total=limit,
                    unit="B",
                    unit_scale=True,
                    unit_divisor=1024,
                    desc=destination.name,
                    disable=not progress,
                )
                received = 0
                with bar:
                    try:
                        # read1: whatever has arrived (at most one socket read), so the deadline is checked
                        # even when a server trickles a byte at a time.
                        while chunk := response.read1(1 << 20):
                            received += len(chunk)
                            if received > (limit if limit is not None else cap):
                                what = f"{limit} bytes" if limit is not None else f"the {cap}-byte cap"
                                raise DownloadError(f"cannot download {url}: the server sent more than {what}")
                            out.write(chunk)
                            digest.update(chunk)
                            bar.update(len(chunk))
                            if time.monotonic() > ends:
                                raise DownloadError(
                                    f"cannot download {url}: not finished after {deadline:g} s "
                                    f"({received} bytes received); check the network"
                                )
                    except (OSError, http.client.HTTPException) as error:
                        reason = type(error).__name__ if isinstance(error, http.client.IncompleteRead) else error
                        raise DownloadError(f"cannot download {url}: connection lost ({reason})") from None
                if limit is not None and received != limit:
                    raise DownloadError(f"cannot download {url}: got {received} of {limit} bytes")
        got = digest.hexdigest()
        _check_digest(url, got, sha256)
        tempfiles.finish(partial, destination)  # created 0600; the file gets the user's usual mode
        return got
    finally:
        if os.path.exists(partial):
            os.remove(partial)


def replace_directory(source: str | os.PathLike, destination: str | os.PathLike) -> None:
    """Move the finished folder `source` to `destination`, replacing what is there, so a reader never sees a
    half-written folder (the swap is two renames on the same file system)."""
    source, destination = Path(source), Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    # mkdtemp/mkstemp create 0700/0600 entries; the finished folder gets the user's usual modes.
    os.chmod(source, tempfiles.folder_mode())
    for entry in source.iterdir():
        if entry.is_file():
            os.chmod(entry, tempfiles.file_mode())
    if destination.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{destination.name}.old.", dir=destination.parent))
        os.replace(destination, old / "previous")
        os.replace(source, destination)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(source, destination)
