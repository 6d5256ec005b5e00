"""torchaudio's official HDemucs checkpoints: which bundles exist, where their files live, how one is fetched
into the cache and where its conversion is kept.

Shared by the default-model chain (`pretrained.py`), `hdemucs-flax models` and the publishing script
(`conversion/convert_torchaudio_hdemucs.py`); the downloading and checking itself is `weights.downloads`.
Torch-free, and light: the bundle's config is built on demand.

Environment variables (read at call time):
- `HDEMUCS_FLAX_TORCHAUDIO_URL`: base URL of torchaudio's asset server (default
  https://download.pytorch.org/torchaudio/, the base torchaudio's own `_download_asset` uses).
- `HDEMUCS_FLAX_CACHE`: this package's cache folder (see `runtime.cache_dir`); downloads go to its
  `torchaudio/` folder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import DownloadError
from ..models.hdemucs.config_rules import DEFAULT_SOURCES
from ..runtime import cache_dir
from ..weights.downloads import check_file, download_file
from ..weights.network import unreachable

if TYPE_CHECKING:
    from ..models.hdemucs.configuration_hdemucs import HDemucsConfig

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
        from ..models.hdemucs.configuration_hdemucs import HDemucsConfig

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
