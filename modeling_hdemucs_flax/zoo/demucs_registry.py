"""demucs's released models as data: where each member checkpoint lives, how to check it, how the bag combines
the members, and what the authors published about it. Torch-free; imports nothing heavy.

Sources of the facts (demucs 4.1.0 as installed from PyPI, read December 2026):
- member file names and URL folders: `demucs/remote/files.txt` (`root: hybrid_transformer/` above the v4 lines),
  with `demucs/pretrained.py`'s `ROOT_URL` in front, as its `_parse_remote_files` joins them;
- members, weights and segment: `demucs/remote/<name>.yaml` (a test reads the installed package's yamls with
  `read_bag_yaml` and compares them with this table);
- Hub repositories: `demucs/hf.py` (`DEFAULT_NAMESPACE` "adefossez", `hf_repo_name`), one `<signature>.safetensors`
  per member and `<name>.yaml` in each;
- descriptions, training data and the SDR figure: the demucs README (the package's long description);
- licence: the package's metadata (`License: MIT License`, its LICENSE file: MIT, Copyright Meta Platforms), the
  README's "Demucs is released under the MIT license", and the model card demucs 4.1.0's `tools/export_hf.py`
  writes for the Hub repositories (`license: mit`);
- sources: 4-source models use demucs's `SOURCES` (`pretrained.py`), the order the README lists the output files
  in; the 6-source set is from the 4.0.0 release notes (`docs/release.md`), and its order (guitar before piano)
  from programs that index the model's output, not from the checkpoint itself. A checkpoint's own
  `kwargs["sources"]` is the authority; these are what a converter should expect to find.

A checkpoint's file name is `<signature>-<first 8 hex digits of its sha256>.th` (`save_with_checksum`); demucs
checks the digest's prefix after downloading, and so does `check_sha_prefix`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

from ..errors import DownloadError, ModelLoadError
from ..weights.downloads import sha256_file

ROOT_URL = "https://dl.fbaipublicfiles.com/demucs/"  # demucs/pretrained.py ROOT_URL
HYBRID_TRANSFORMER_ROOT = ROOT_URL + "hybrid_transformer/"  # files.txt: the v4 models and hdemucs_mmi
MDX_FINAL_ROOT = ROOT_URL + "mdx_final/"  # files.txt: the v3 mdx bags' members (not in this registry)
HUB_NAMESPACE = "adefossez"  # demucs/hf.py DEFAULT_NAMESPACE
LICENCE = "MIT"
LICENCE_SOURCE = (
    "demucs 4.1.0 package metadata (License: MIT License; LICENSE: MIT, Copyright Meta Platforms), its README "
    "('Demucs is released under the MIT license'), and the Hub model card its tools/export_hf.py writes "
    "(license: mit)"
)
NOT_STATED = "not stated"
FOUR_SOURCES = ("drums", "bass", "other", "vocals")  # demucs/pretrained.py SOURCES
SIX_SOURCES = ("drums", "bass", "other", "vocals", "guitar", "piano")
_CHECKPOINT_NAME = re.compile(r"([A-Za-z0-9_]+)-([0-9a-f]{8,64})\.th")
_HEX_PREFIX = re.compile(r"[0-9a-f]{8,64}")


@dataclass(frozen=True)
class DemucsCheckpointFile:
    """One member checkpoint: its signature, the sha256 prefix its file name carries, and the URL folder."""

    signature: str
    sha256_prefix: str
    root: str

    @property
    def file_name(self) -> str:
        """`<signature>-<sha256 prefix>.th`, the name demucs downloads it as."""
        return f"{self.signature}-{self.sha256_prefix}.th"

    @property
    def url(self) -> str:
        """The official download URL."""
        return self.root + self.file_name

    @property
    def hub_file(self) -> str:
        """The member's file in the model's Hub repository (demucs 4.1.0's layout)."""
        return f"{self.signature}.safetensors"


@dataclass(frozen=True)
class DemucsModelInfo:
    """A named demucs model (a bag of one or more members) as its authors released it.

    `weights`: per member, per source (None: equal weights); `segment`: the bag's segment in seconds (None: the
    models' own; HTDemucs carries 39/5 s in its kwargs). `sdr_db` is the published MUSDB-HQ test SDR (mean over
    the four sources) or None, `sdr_source` where it is published or "not stated". `parameters` counts one member's
    weights (demucs ships them as float16: 2 bytes each)."""

    name: str
    architecture: Literal["htdemucs", "hdemucs"]
    members: tuple[DemucsCheckpointFile, ...]
    weights: tuple[tuple[float, ...], ...] | None
    segment: float | None
    sources: tuple[str, ...]
    description: str
    hub_repo: str
    licence: str
    licence_source: str
    sdr_db: float | None
    sdr_source: str
    parameters: int  # per member; a test counts them in demucs's own model built with the release's arguments

    @property
    def hub_yaml(self) -> str:
        """The bag's file in the model's Hub repository."""
        return f"{self.name}.yaml"


def _member(signature: str, prefix: str) -> DemucsCheckpointFile:
    return DemucsCheckpointFile(signature=signature, sha256_prefix=prefix, root=HYBRID_TRANSFORMER_ROOT)


_README = "demucs README (package long description)"
DEMUCS_MODELS: Mapping[str, DemucsModelInfo] = MappingProxyType(
    {
        "htdemucs": DemucsModelInfo(
            name="htdemucs",
            parameters=41_984_456,
            architecture="htdemucs",
            members=(_member("955717e8", "8726e21a"),),
            weights=None,
            segment=None,
            sources=FOUR_SOURCES,
            description="Hybrid Transformer Demucs (v4), trained on MusDB + 800 songs; demucs's default model",
            hub_repo=f"{HUB_NAMESPACE}/HTDemucs",
            licence=LICENCE,
            licence_source=LICENCE_SOURCE,
            sdr_db=None,
            sdr_source=(
                f"{NOT_STATED}: the README's '9.00 dB on the MUSDB HQ test set' does not say which release it is, "
                "and its table gives 9.0 to the fine-tuned model (htdemucs_ft)"
            ),
        ),
        "htdemucs_ft": DemucsModelInfo(
            name="htdemucs_ft",
            parameters=41_984_456,
            architecture="htdemucs",
            members=(
                _member("f7e0c4bc", "ba3fe64a"),
                _member("d12395a8", "e57c48e6"),
                _member("92cfc3b6", "ef3bcb9c"),
                _member("04573f0d", "f3cf25b2"),
            ),
            # One member per source (drums, bass, other, vocals): each one's own source only.
            weights=(
                (1.0, 0.0, 0.0, 0.0),
                (0.0, 1.0, 0.0, 0.0),
                (0.0, 0.0, 1.0, 0.0),
                (0.0, 0.0, 0.0, 1.0),
            ),
            segment=None,
            sources=FOUR_SOURCES,
            description="htdemucs fine-tuned per source (four models, 4x the time), same training set",
            hub_repo=f"{HUB_NAMESPACE}/HTDemucs-ft",
            licence=LICENCE,
            licence_source=LICENCE_SOURCE,
            sdr_db=9.0,
            sdr_source=(
                f"{_README}, 'Comparison of accuracy' table: 'HT Demucs f.t. (v4)', hybrid, 800 songs extra "
                "data, overall SDR 9.0 (MUSDB HQ test). The paper's 9.20 dB is the sparse-attention model, "
                "which was not released"
            ),
        ),
        "htdemucs_6s": DemucsModelInfo(
            name="htdemucs_6s",
            parameters=27_414_996,
            architecture="htdemucs",
            members=(_member("5c90dfd2", "34c22ccb"),),
            weights=None,
            segment=None,
            sources=SIX_SOURCES,
            description=(
                "experimental 6-source htdemucs (adds guitar and piano; the README: 'the piano source is not "
                "working great at the moment')"
            ),
            hub_repo=f"{HUB_NAMESPACE}/HTDemucs-6s",
            licence=LICENCE,
            licence_source=LICENCE_SOURCE,
            sdr_db=None,
            sdr_source=NOT_STATED,
        ),
        "hdemucs_mmi": DemucsModelInfo(
            name="hdemucs_mmi",
            parameters=83_637_832,
            architecture="hdemucs",
            members=(_member("75fc33f5", "1941ce65"),),
            weights=None,
            segment=44.0,
            sources=FOUR_SOURCES,
            description="Hybrid Demucs (v3) retrained on MusDB + 800 songs",
            hub_repo=f"{HUB_NAMESPACE}/Demucs-hdemucs_mmi",
            licence=LICENCE,
            licence_source=LICENCE_SOURCE,
            sdr_db=None,
            sdr_source=(
                f"{NOT_STATED}: the README's 7.7 dB for Hybrid Demucs (v3) is the model trained without extra "
                "data, not this retrained one"
            ),
        ),
    }
)


def demucs_model(name: str) -> DemucsModelInfo:
    """The registry's entry for `name`; an unknown name is a one-line `ModelLoadError` listing the known ones."""
    info = DEMUCS_MODELS.get(name)
    if info is None:
        raise ModelLoadError(f"unknown demucs model {name!r}", f"choose one of {', '.join(DEMUCS_MODELS)}")
    return info


def split_checkpoint_name(file_name: str) -> tuple[str, str]:
    """(signature, sha256 prefix) of a demucs checkpoint name, `<signature>-<hex prefix>.th`; a `ValueError`
    for any other name."""
    match = _CHECKPOINT_NAME.fullmatch(file_name)
    if match is None:
        raise ValueError(f"{file_name!r} is not a demucs checkpoint name (<signature>-<sha256 prefix>.th)")
    return match.group(1), match.group(2)


def check_sha_prefix(path: str | os.PathLike, expected_prefix: str) -> str:
    """Check that the file at `path` has a sha256 starting with `expected_prefix` (8 to 64 hex digits, as demucs
    names its checkpoints: `split_checkpoint_name` gives it) and return the whole digest; a mismatch is a one-line
    `DownloadError`. A prefix shorter than 8 digits is refused rather than checked (an empty one matches all)."""
    want = expected_prefix.lower()
    if not _HEX_PREFIX.fullmatch(want):
        raise ValueError(f"expected_prefix={expected_prefix!r}: not 8 to 64 hexadecimal digits of a sha256")
    got = sha256_file(path)
    if not got.startswith(want):
        raise DownloadError(
            f"{path}: sha256 {got[: len(want)]}... does not start with {want}, the prefix its name promises; the "
            "file is damaged or not the published one"
        )
    return got
