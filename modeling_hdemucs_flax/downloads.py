"""torchaudio's official HDemucs checkpoints: where they live, how to fetch one, how to check it.

Shared by the default-model chain (`pretrained.py`) and the publishing script
(`conversion/convert_torchaudio_hdemucs.py`), so there is one downloader and one sha256 check. Torch-free.

Environment variables (read at call time):
- `HDEMUCS_FLAX_TORCHAUDIO_URL`: base URL of torchaudio's asset server (default
  https://download.pytorch.org/torchaudio/, the base torchaudio's own `_download_asset` uses).
- `HDEMUCS_FLAX_CACHE`: this package's cache folder (see `runtime.cache_dir`); downloads go to its
  `torchaudio/` folder.

Downloads are capped at the file's known size (`MAX_DOWNLOAD_BYTES` when it is unknown), have an overall
deadline besides the per-read timeout, start only once a short probe found the server (`network.unreachable`),
and every failure (HTTP errors, cut connections, lying `Content-Length`s) is one `DownloadError` line. A file
already in place that is not the expected one is reported, never deleted: it may be a copy the user made by
hand. Imports nothing heavy (the bundle's config is built on demand), so `hdemucs-flax models` answers fast.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import tempfiles
from .errors import DownloadError
from .network import unreachable
from .runtime import cache_dir

if TYPE_CHECKING:
    from .configuration_hdemucs import HDemucsConfig

DEFAULT_SOURCES = ("drums", "bass", "other", "vocals")  # torchaudio's bundles' sources, HDemucsConfig's default
DOWNLOAD_DEADLINE = 3600.0  # seconds for a whole download (335 MB at 100 kB/s); each read also times out
READ_TIMEOUT = 60.0
# Cap of a download whose size is not known in advance (HDEMUCS_HIGH_MUSDB's file, ~335 MB like the PLUS one,
# or a server's unannounced length): far above any HDemucs checkpoint, far below filling a disk.
MAX_DOWNLOAD_BYTES = 2 * 1024**3
PART_SUFFIX = ".part"

TORCHAUDIO_BASE_URL = "https://download.pytorch.org/torchaudio/"
ENV_TORCHAUDIO_URL = "HDEMUCS_FLAX_TORCHAUDIO_URL"


@dataclass(frozen=True)
class TorchaudioBundle:
    """One of torchaudio's pretrained HDemucs bundles (`torchaudio.pipelines.<name>`).

    `key` is the file's path under torchaudio's asset server; `sha256` is the published digest of that
    file, or None when no digest is published (the file can then only be checked against a digest the user
    supplies); `size` its length in bytes when known (downloads are capped at it). The architecture is
    `HDemucsConfig.from_preset(preset, sources=sources, **overrides)`. `hub_repo` is the Hub repo of its
    converted copy; `licence` the weights' licence.
    """

    name: str
    key: str
    sha256: str | None
    training_data: str
    preset: str = "high"
    sources: tuple[str, ...] = DEFAULT_SOURCES
    overrides: dict[str, Any] = field(default_factory=dict)
    sample_rate: int = 44100
    size: int | None = None
    hub_repo: str | None = None
    licence: str = "CC BY-NC-SA 4.0"

    def config(self) -> HDemucsConfig:
        from .configuration_hdemucs import HDemucsConfig

        return HDemucsConfig.from_preset(
            self.preset, sources=list(self.sources), sampling_rate=self.sample_rate, **self.overrides
        )

    @property
    def filename(self) -> str:
        return self.key.rsplit("/", 1)[-1]


# File names and architecture: torchaudio/pipelines/_source_separation_pipeline.py (torchaudio 2.11).
# torchaudio publishes no digests for them; the PLUS digest is of the file download.pytorch.org serves
# (334,697,255 bytes), checked when this table was written. No digest is known for the MUSDB-only file.
BUNDLES: dict[str, TorchaudioBundle] = {
    "HDEMUCS_HIGH_MUSDB_PLUS": TorchaudioBundle(
        name="HDEMUCS_HIGH_MUSDB_PLUS",
        key="models/hdemucs_high_trained.pt",
        sha256="a004b2790d73ffeaa535db458a1a79b539dfdbafbccc31f275d07e632ebd7816",
        size=334_697_255,
        hub_repo="hdemucs-flax/hdemucs-high-musdb-plus",
        training_data=(
            "MUSDB-HQ train and test sets plus 150 extra songs from an internal database produced for Meta. "
            "The model has seen MUSDB18's test set, so MUSDB18 test scores are not a fair measure of it."
        ),
    ),
    "HDEMUCS_HIGH_MUSDB": TorchaudioBundle(
        name="HDEMUCS_HIGH_MUSDB",
        key="models/hdemucs_high_musdbhq_only.pt",
        sha256=None,
        hub_repo="hdemucs-flax/hdemucs-high-musdb",
        training_data="MUSDB-HQ training set only (MUSDB18 test scores are a fair measure of it).",
    ),
}


# The default model of `pretrained.load_model` (its first Hub copy, its torchaudio file).
DEFAULT_BUNDLE = BUNDLES["HDEMUCS_HIGH_MUSDB_PLUS"]


def torchaudio_url(key: str) -> str:
    """Download URL of a torchaudio asset (`HDEMUCS_FLAX_TORCHAUDIO_URL` overrides the base)."""
    base = os.environ.get(ENV_TORCHAUDIO_URL) or TORCHAUDIO_BASE_URL
    return base.rstrip("/") + "/" + key.lstrip("/")


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


def fetch_torchaudio_checkpoint(
    bundle: TorchaudioBundle,
    *,
    sha256: str | None = None,
    directory: str | os.PathLike | None = None,
    progress: bool = True,
) -> tuple[Path, str]:
    """The bundle's checkpoint file, downloaded once into `directory` (default `cache_dir()/torchaudio`,
    keeping torchaudio's key layout) and verified. Returns (path, its sha256).

    `sha256` (a digest the caller trusts) overrides the bundle's. A file already there (downloaded earlier, or
    copied there by hand) is re-checked on every call and used when it matches; one that does not is left
    where it is and reported (its sha256 and size against the expected ones): it may be the user's own copy,
    so it is never deleted or overwritten. Raises `DownloadError`.
    """
    want = sha256 or bundle.sha256
    path = torchaudio_checkpoint_path(bundle, directory)
    url = torchaudio_url(bundle.key)
    if path.is_file():
        got, mismatch = check_file(path, want, bundle.size)
        if mismatch is not None:
            raise DownloadError(
                f"{path} is not the expected {bundle.filename} ({mismatch}); it was left in place: replace it with "
                f"the file from {url}, or delete it to download that"
            )
        return path, got
    reason = unreachable(url)
    if reason is not None:
        raise DownloadError(f"cannot download {url}: {reason}")
    got = download_file(url, path, sha256=want, size=bundle.size, progress=progress)
    return path, got


def torchaudio_checkpoint_path(bundle: TorchaudioBundle, directory: str | os.PathLike | None = None) -> Path:
    """Where `fetch_torchaudio_checkpoint` keeps (and looks for) `bundle`'s file: `directory` (default
    `cache_dir()/torchaudio`) / the key. A copy placed there by hand is used, offline too, once its sha256
    matches."""
    root = Path(directory) if directory is not None else cache_dir() / "torchaudio"
    return root / bundle.key


def converted_model_dir(bundle: TorchaudioBundle = DEFAULT_BUNDLE) -> Path:
    """Where the default-model chain keeps its own conversion of `bundle`'s torchaudio checkpoint."""
    return cache_dir() / "converted" / bundle.name.lower()


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
