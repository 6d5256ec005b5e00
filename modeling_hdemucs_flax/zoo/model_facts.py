"""What a model is before it is loaded: the sources, sample rate and channel count an application plans with,
read from the model's config.json alone, without its weights, JAX or transformers.

The command line checks a run against these (the stems' paths, `--two-stems`, finished tracks) in a fraction of
a second, before it spends seconds loading and compiling the network, or minutes downloading it. Where the
config comes from follows `pretrained.load_model`'s reading of a `--model` value: a local folder's config.json
(a bag folder's bag.json), a Hub repo's (from the Hugging Face cache, else fetched alone, in one attempt), or
for the default model its entry in `downloads.BUNDLES`.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from ..models.bag_manifest import is_bag_folder, read_manifest
from ..models.hdemucs.config_rules import ARCHITECTURE_DEFAULTS, DEFAULT_SOURCES, check_source_names, config_from_json
from ..models.htdemucs.layer_plan import exact_segment
from ..weights.locations import looks_like_path
from .demucs_models import is_demucs_name
from .demucs_registry import DEMUCS_MODELS
from .torchaudio_bundles import DEFAULT_BUNDLE

FETCH_SECONDS = 10.0  # a Hub repo's config.json: one attempt, this long at most
MAX_CONFIG_BYTES = 1 << 20  # a config.json is about 1 kB
DEMUCS_SAMPLE_RATE, DEMUCS_AUDIO_CHANNELS = 44100, 2  # every released demucs model (and demucs's defaults)
RELEASED_HTDEMUCS_SEGMENT = 7.8  # every released HTDemucs trains on Fraction(39, 5) s (343,980 samples)


@dataclass(frozen=True)
class ModelFacts:
    """A model's `sources` (the stems it separates, in order), `sample_rate` (Hz, the rate it runs at),
    `audio_channels` (channels it separates; mono input is up-mixed) and `segment`: the chunk length in seconds it
    separates with when none is chosen (`FlaxSeparationModel.default_segment`; None: the schedule's 7.8 s)."""

    sources: tuple[str, ...]
    sample_rate: int
    audio_channels: int
    segment: float | None = None


def _hub_config(repo_id: str, revision: str | None) -> bytes | None:
    """The Hub repo's config.json: the Hugging Face cache's copy, else fetched alone in one attempt (unless
    offline); None when it cannot be had.

    One attempt, bounded by `FETCH_SECONDS`, rather than `hf_hub_download`'s five retries (23 s when the
    connection is refused): whatever fails here makes `load_model`, which tries the same repo next, fail too and
    say what is wrong and what to do, so a retry here would only double the wait."""
    from huggingface_hub import constants, get_session, hf_hub_url, try_to_load_from_cache
    from huggingface_hub.utils import (  # documented (utilities reference), not in the package's export list
        build_hf_headers,  # pyright: ignore[reportPrivateImportUsage]
    )

    try:  # any failure (an invalid repo id, an unknown repo, no network, a server error) is the loader's to word
        cached = try_to_load_from_cache(repo_id, "config.json", revision=revision)
        if isinstance(cached, str):
            return Path(cached).read_bytes()
        if constants.HF_HUB_OFFLINE:
            return None
        url = hf_hub_url(repo_id, "config.json", revision=revision)
        ends = time.monotonic() + FETCH_SECONDS
        with get_session().get(url, headers=build_hf_headers(), timeout=FETCH_SECONDS, stream=True) as response:
            if response.status_code != 200:
                return None
            data = b""
            for chunk in response.iter_content(1 << 16):
                data += chunk
                if len(data) > MAX_CONFIG_BYTES or time.monotonic() > ends:
                    return None
            return data
    except Exception:
        return None


def read_model_facts(model: str | os.PathLike | None, revision: str | None = None) -> ModelFacts | None:
    """The facts of `model` (as `load_model` takes it: a folder, a Hub repo id, a demucs model's name, or None for
    the default model), from its config.json checked by the rules its config class applies (HDemucs:
    `config_rules.check_config`; HTDemucs: its sources), or from the registry for a name.

    Returns None when the config cannot be read here (no such folder, no config.json, not JSON, the Hub out of
    reach): loading the model then says what is wrong. Raises `ConfigError` when the config.json is read and
    describes no usable model (a field out of range, a source name that cannot be a file name)."""
    if model is None:
        bundle = DEFAULT_BUNDLE
        channels = bundle.overrides.get("audio_channels", ARCHITECTURE_DEFAULTS["audio_channels"])
        return ModelFacts(tuple(bundle.sources), bundle.sample_rate, channels)
    if is_demucs_name(model):
        info = DEMUCS_MODELS[str(model)]
        segment = RELEASED_HTDEMUCS_SEGMENT if info.architecture == "htdemucs" else info.segment
        return ModelFacts(info.sources, DEMUCS_SAMPLE_RATE, DEMUCS_AUDIO_CHANNELS, segment)
    spec = str(model)
    if isinstance(model, os.PathLike) or looks_like_path(spec):
        if is_bag_folder(Path(spec).expanduser()):
            return _bag_facts(Path(spec).expanduser())
        config_file = Path(spec).expanduser() / "config.json"
        try:
            data = config_file.read_bytes() if config_file.is_file() else None
        except OSError:
            data = None
    else:
        data = _hub_config(spec, revision)
    if data is None:
        return None
    try:
        fields = json.loads(data.decode("utf-8"))
    except ValueError:  # not UTF-8, not JSON: `load_model` words it
        return None
    if not isinstance(fields, dict):
        return None
    if fields.get("model_type") == "htdemucs":
        return _htdemucs_facts(fields)
    config = config_from_json(fields)
    segment = None if config.segment is None else float(config.segment)
    return ModelFacts(tuple(config.sources), config.sampling_rate, config.audio_channels, segment)


def _htdemucs_facts(fields: dict) -> ModelFacts | None:
    """An HTDemucs config.json's facts (demucs's names: `samplerate`); its source names checked as the config
    checks them. None for values only loading can word (the config class checks every field)."""
    sources = fields.get("sources", list(DEFAULT_SOURCES))
    rate, channels = fields.get("samplerate", DEMUCS_SAMPLE_RATE), fields.get("audio_channels", DEMUCS_AUDIO_CHANNELS)
    if not all(isinstance(value, int) and not isinstance(value, bool) and value > 0 for value in (rate, channels)):
        return None
    check_source_names(sources, "HTDemucsConfig")
    segment = fields.get("segment", 10)
    if fields.get("use_train_segment", True) is False:
        return ModelFacts(tuple(sources), rate, channels)
    if not isinstance(segment, (int, float)) or isinstance(segment, bool) or segment <= 0:
        return None
    length = math.floor(exact_segment(segment, rate) * rate)  # the model's training length, as its plan has it
    return ModelFacts(tuple(sources), rate, channels, length / rate)


def _bag_facts(folder: Path) -> ModelFacts | None:
    """A bag folder's facts from its bag.json (None when it cannot be read; `ConfigError` when it describes no
    usable bag)."""
    try:
        manifest = read_manifest(folder)
    except OSError:
        return None
    except ConfigError as error:
        raise ConfigError(f"{folder}/{error}") from None
    segment = manifest.segment
    if segment is None and manifest.members:  # the members' own (a bag's members share it)
        member = read_model_facts(folder / manifest.members[0])
        segment = None if member is None else member.segment
    return ModelFacts(manifest.sources, manifest.sampling_rate, manifest.audio_channels, segment)
