"""A bag folder's manifest, `bag.json`, as data: read, checked and written without JAX or transformers.

A bag folder (written by `FlaxDemucsBag.save_pretrained`) holds `bag.json` and one `save_pretrained` folder per
member. The manifest says what the bag separates and how it combines its members:

    {"format": "hdemucs-flax-bag", "format_version": 1, "model_type": "demucs_bag",
     "sources": ["drums", "bass", "other", "vocals"], "sampling_rate": 44100, "audio_channels": 2,
     "members": ["f7e0c4bc", "d12395a8", ...],          sub-folders, in the bag's order
     "weights": [[1.0, 0.0, 0.0, 0.0], ...],           one row per member, one weight per source
     "segment": null}                                  the chunk length in seconds the bag is applied with (null:
                                                       its members' own)

The command line reads the sources, rate and channels from it before loading anything (`model_facts`), as it
reads a single model's config.json. Every problem is a one-line `ConfigError` naming `bag.json` and the field.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .hdemucs.config_rules import MAX_SOURCES, SAMPLING_RATES, check_source_names

BAG_FILE = "bag.json"
BAG_FORMAT = "hdemucs-flax-bag"
BAG_FORMAT_VERSION = 1
BAG_MODEL_TYPE = "demucs_bag"
MAX_MEMBERS = 64  # demucs's largest bag has 4
MAX_MANIFEST_BYTES = 1 << 20  # a manifest of 4 members is under 1 kB
_MEMBER_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")  # a sub-folder name: no separator, no leading dot


@dataclass(frozen=True)
class BagManifest:
    """What `bag.json` holds (see the module doc): `weights` has one row per member of `members`, each as long as
    `sources`; `segment` is None or positive seconds."""

    sources: tuple[str, ...]
    sampling_rate: int
    audio_channels: int
    members: tuple[str, ...]
    weights: tuple[tuple[float, ...], ...]
    segment: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "format": BAG_FORMAT,
            "format_version": BAG_FORMAT_VERSION,
            "model_type": BAG_MODEL_TYPE,
            "sources": list(self.sources),
            "sampling_rate": self.sampling_rate,
            "audio_channels": self.audio_channels,
            "members": list(self.members),
            "weights": [list(row) for row in self.weights],
            "segment": self.segment,
        }

    def write(self, folder: str | os.PathLike) -> Path:
        """Write `folder/bag.json` (the caller makes the folder appear whole: `FlaxDemucsBag.save_pretrained`)."""
        path = Path(folder) / BAG_FILE
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        return path


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def check_manifest(manifest: BagManifest, where: str = BAG_FILE) -> BagManifest:
    """`manifest` when it describes a usable bag, else a one-line `ConfigError` naming `where` and the field."""

    def refuse(field: str, rule: str) -> None:
        raise ConfigError(f"{where}: {field} {rule}")

    check_source_names(list(manifest.sources), where)
    rate, channels = manifest.sampling_rate, manifest.audio_channels
    if not (isinstance(rate, int) and not isinstance(rate, bool) and SAMPLING_RATES[0] <= rate <= SAMPLING_RATES[1]):
        refuse("sampling_rate", f"is {rate!r}, not an integer in [{SAMPLING_RATES[0]}, {SAMPLING_RATES[1]}] Hz")
    if not (isinstance(channels, int) and not isinstance(channels, bool) and 1 <= channels <= MAX_SOURCES):
        refuse("audio_channels", f"is {channels!r}, not an integer in [1, {MAX_SOURCES}]")
    members = manifest.members
    if not 1 <= len(members) <= MAX_MEMBERS:
        refuse("members", f"has {len(members)} entries; a bag has 1 to {MAX_MEMBERS} members")
    for name in members:
        if not (isinstance(name, str) and _MEMBER_NAME.fullmatch(name)):
            refuse("members", f"holds {str(name)[:70]!r}, not a sub-folder name (letters, digits, '_', '.', '-')")
    if len({name.casefold() for name in members}) != len(members):
        refuse("members", "names a sub-folder twice (ignoring case)")
    weights = manifest.weights
    if len(weights) != len(members) or any(len(row) != len(manifest.sources) for row in weights):
        refuse("weights", f"must be {len(members)} rows (one per member) of {len(manifest.sources)} (one per source)")
    if not all(_is_number(w) for row in weights for w in row):
        refuse("weights", "holds a value that is not a finite number")
    for k, source in enumerate(manifest.sources):
        if sum(row[k] for row in weights) == 0:
            refuse("weights", f"of source {source!r} sum to 0 (demucs divides by their sum)")
    segment = manifest.segment
    if segment is not None and not (_is_number(segment) and segment > 0):
        refuse("segment", f"is {segment!r}, not a positive number of seconds or null")
    return manifest


def manifest_from_json(fields: Any) -> BagManifest:
    """The manifest a parsed `bag.json` describes; `ConfigError` for anything else (a newer format included)."""
    if not isinstance(fields, dict) or fields.get("format") != BAG_FORMAT:
        raise ConfigError(f'{BAG_FILE}: not a bag manifest (no "format": "{BAG_FORMAT}")')
    version = fields.get("format_version")
    if version != BAG_FORMAT_VERSION:
        raise ConfigError(
            f"{BAG_FILE}: format_version {version!r}; this version of hdemucs-flax reads {BAG_FORMAT_VERSION}"
        )
    expected = {"format", "format_version", "model_type", "sources", "sampling_rate", "audio_channels", "members"}
    missing = sorted(expected - set(fields))
    if missing:
        raise ConfigError(f"{BAG_FILE}: missing {', '.join(missing)}")
    unknown = sorted(set(fields) - expected - {"weights", "segment"})
    if unknown:
        raise ConfigError(f"{BAG_FILE}: unknown field {str(unknown[0])[:60]!r}")
    sources, members = fields["sources"], fields["members"]
    if not isinstance(sources, list) or not isinstance(members, list):
        raise ConfigError(f"{BAG_FILE}: sources and members must be lists")
    weights = fields.get("weights")
    if weights is None:  # demucs's default: every member counts for every source
        weights = [[1.0] * len(sources) for _ in members]
    if not (isinstance(weights, list) and all(isinstance(row, list) for row in weights)):
        raise ConfigError(f"{BAG_FILE}: weights must be a list of rows (lists), one per member")
    manifest = BagManifest(
        sources=tuple(sources),
        sampling_rate=fields["sampling_rate"],
        audio_channels=fields["audio_channels"],
        members=tuple(members),
        weights=tuple(tuple(row) for row in weights),
        segment=fields.get("segment"),
    )
    return check_manifest(manifest)


def is_bag_folder(folder: str | os.PathLike) -> bool:
    """Whether `folder` is a bag folder (holds `bag.json`)."""
    return (Path(folder) / BAG_FILE).is_file()


def read_manifest(folder: str | os.PathLike) -> BagManifest:
    """`folder/bag.json`, checked. Raises `ConfigError` (not JSON, a field out of range) or `OSError`."""
    path = Path(folder) / BAG_FILE
    with open(path, "rb") as file:
        data = file.read(MAX_MANIFEST_BYTES + 1)
    if len(data) > MAX_MANIFEST_BYTES:
        raise ConfigError(f"{BAG_FILE}: over {MAX_MANIFEST_BYTES} bytes; not a bag manifest")
    try:
        fields = json.loads(data.decode("utf-8"))
    except ValueError as error:  # not UTF-8, not JSON
        raise ConfigError(f"{BAG_FILE}: not JSON ({error})") from None
    return manifest_from_json(fields)
