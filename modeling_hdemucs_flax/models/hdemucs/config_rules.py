"""What makes an HDemucs config valid, without transformers: the field defaults and one check shared by
`HDemucsConfig` (which runs it when built) and the command line (which runs it on a model's config.json before
loading any weights, so a broken model or an unusable option is told in a fraction of a second).

Standard library and the package's light modules only: importing transformers costs seconds (and torch, unless
hidden), which a usage error must not wait for.
"""

from __future__ import annotations

import json
import math
import unicodedata
from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any

from ...errors import ConfigError

DEFAULT_SOURCES = ("drums", "bass", "other", "vocals")  # torchaudio's bundles' sources, HDemucsConfig's default

MAX_SOURCES = 64
MAX_SOURCE_NAME = 64  # characters: a source name becomes a file name (vocals.wav, no_vocals.wav)
MAX_WIDTH = 16_384  # channels of the deepest layer (high: 48 * 2**5 = 1536)
SAMPLING_RATES = (1_000, 768_000)  # Hz
TWO_STEMS_PREFIX = "no_"  # --two-stems vocals writes vocals and no_vocals (see `OutputOptions.stem_names`)

# HDemucsConfig's fields and their defaults (torchaudio's `HDemucs` arguments, `hdemucs_high`'s values, plus
# the weights' sampling rate, then demucs's `HDemucs` options at the values torchaudio's port fixes). HDemucsConfig's
# signature states them again for readers of its API; a test keeps the two equal.
ARCHITECTURE_DEFAULTS: dict[str, Any] = {
    "sources": list(DEFAULT_SOURCES),
    "audio_channels": 2,
    "channels": 48,
    "growth": 2,
    "nfft": 4096,
    "depth": 6,
    "freq_emb": 0.2,
    "emb_scale": 10,
    "emb_smooth": True,
    "kernel_size": 8,
    "time_stride": 2,
    "stride": 4,
    "context": 1,
    "context_enc": 0,
    "norm_starts": 4,
    "norm_groups": 4,
    "dconv_depth": 2,
    "dconv_comp": 4,
    "dconv_attn": 4,
    "dconv_lstm": 4,
    "dconv_init": 1e-4,
    "sampling_rate": 44100,
    "channels_time": None,
    "rewrite": True,
    "dconv_mode": 1,
    "cac": True,
    "hybrid": True,
    "hybrid_old": False,
    "multi_freqs": None,
    "wiener_iters": 0,
    "end_iters": 0,
    "wiener_residual": False,
    "segment": None,
}

# demucs `HDemucs` options this package does not compute, with the one value it supports and what that value
# means. Refused by name when a config is built, never ignored: each changes the model's output.
UNSUPPORTED_DEMUCS_OPTIONS: dict[str, tuple[Any, str]] = {
    "cac": (True, "complex-as-channels spectrogram; the magnitude-mask output is not implemented"),
    "hybrid": (True, "the time branch; frequency-only models are not implemented"),
    "hybrid_old": (False, "the padding of the 2021 MDX models is not implemented"),
    "wiener_iters": (0, "Wiener filtering is not implemented"),
    "end_iters": (0, "Wiener filtering is not implemented"),
    "wiener_residual": (False, "Wiener filtering is not implemented"),
}


def _name_problem(name: str, others: set[str]) -> str | None:
    """Why `name` cannot be a source name (it becomes a stem's file name), or None."""
    if any(ch in name for ch in "/\\"):
        return "contains a path separator"
    if any(unicodedata.category(ch) == "Cc" for ch in name):  # NUL, newline, escape, DEL, ...
        return "contains a control character"
    if name.startswith("."):
        return "starts with a dot (a hidden file, or '.' or '..')"
    if name != name.strip():
        return "starts or ends with white space"
    if name.startswith(TWO_STEMS_PREFIX) and name[len(TWO_STEMS_PREFIX) :] in others:
        other = name[len(TWO_STEMS_PREFIX) :]
        return f"is the name --two-stems {other} gives the accompaniment of {other!r}"
    return None


def check_source_names(sources: Any, config_name: str = "HDemucsConfig") -> None:
    """Raise `ConfigError` unless `sources` is a list of usable source names: 1 to `MAX_SOURCES` strings of 1 to
    `MAX_SOURCE_NAME` characters, each usable as a file name on every system (no path separator, control
    character, leading dot or surrounding white space), unique ignoring case (case-insensitive file systems),
    and none `no_<another source>` (the stem `--two-stems` writes beside that source). `config_name` is the config
    class the message names."""

    def refuse(rule: str) -> None:
        raise ConfigError(f"{config_name}.sources={sources!r}: {rule}")

    if not (
        isinstance(sources, list)
        and 0 < len(sources) <= MAX_SOURCES
        and all(isinstance(s, str) and 0 < len(s) <= MAX_SOURCE_NAME for s in sources)
    ):
        refuse(
            f"must be a list of 1 to {MAX_SOURCES} source names (non-empty strings of at most {MAX_SOURCE_NAME} "
            "characters)"
        )
    if len(set(sources)) != len(sources):
        refuse("source names must be unique")
    if len({s.casefold() for s in sources}) != len(sources):
        refuse("source names must be unique ignoring case (they become file names)")
    names = set(sources)
    for name in sources:
        problem = _name_problem(name, names - {name})
        if problem is not None:
            refuse(f"source {name!r} {problem}; source names become stem file names")


def check_config(config: Any) -> None:
    """Every field's type and a sane range (`config` is an `HDemucsConfig` or any object with its fields as
    attributes): a config.json from anywhere (a download, a user's edit) either describes a model this machine
    can build or fails here, in one `ConfigError` line naming the field, never later as an OverflowError or a
    multi-terabyte allocation. The bounds are generous: several times the largest torchaudio preset (high: 48
    channels, growth 2, depth 6, nfft 4096, 44.1 kHz)."""

    def need(ok: bool, field: str, rule: str) -> None:
        if not ok:
            raise ConfigError(f"HDemucsConfig.{field}={getattr(config, field)!r}: {rule}")

    def is_int(value: Any, low: int, high: int) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high

    def is_number(value: Any, low: float, high: float) -> bool:
        return (
            isinstance(value, (int, float))
            and not isinstance(value, bool)
            and math.isfinite(value)
            and low <= value <= high
        )

    check_source_names(config.sources)
    need(is_int(config.audio_channels, 1, 8), "audio_channels", "must be an int in [1, 8]")
    need(is_int(config.channels, 1, 1024), "channels", "must be an int in [1, 1024]")
    need(is_number(config.growth, 1e-3, 16), "growth", "must be a number in (0, 16]")
    need(is_int(config.depth, 1, 16), "depth", "must be an int in [1, 16]")
    need(
        is_int(config.nfft, 16, 1 << 16) and config.nfft & (config.nfft - 1) == 0,
        "nfft",
        "must be a power of two in [16, 65536]",
    )
    widest = config.channels * config.growth ** (config.depth - 1)  # bounded by the checks above: no overflow
    need(widest <= MAX_WIDTH, "channels", f"with growth**(depth - 1) gives {widest:g} channels (at most {MAX_WIDTH})")
    need(is_number(config.freq_emb, 0, 1e3), "freq_emb", "must be a finite number in [0, 1000]")
    need(is_number(config.emb_scale, 1e-6, 1e6) and config.emb_scale > 0, "emb_scale", "must be a finite number > 0")
    need(isinstance(config.emb_smooth, bool), "emb_smooth", "must be true or false")
    need(is_int(config.stride, 1, 64), "stride", "must be an int in [1, 64]")
    need(
        is_int(config.kernel_size, config.stride, 256) and (config.kernel_size - config.stride) % 2 == 0,
        "kernel_size",
        "must be an int in [stride, 256] with (kernel_size - stride) even (torchaudio's decoder padding rule)",
    )
    need(is_int(config.time_stride, 1, 64), "time_stride", "must be an int in [1, 64]")
    need(is_int(config.context, 0, 64), "context", "must be an int in [0, 64]")
    need(is_int(config.context_enc, 0, 64), "context_enc", "must be an int in [0, 64]")
    need(is_int(config.norm_starts, 0, 64), "norm_starts", "must be an int in [0, 64]")
    need(is_int(config.norm_groups, 1, 1024), "norm_groups", "must be an int in [1, 1024]")
    need(is_int(config.dconv_depth, -16, 16), "dconv_depth", "must be an int in [-16, 16] (negative: no dilation)")
    need(is_number(config.dconv_comp, 1e-3, 1024) and config.dconv_comp > 0, "dconv_comp", "must be a number > 0")
    need(is_int(config.dconv_attn, -64, 64), "dconv_attn", "must be an int (first layer index with attention)")
    need(is_int(config.dconv_lstm, -64, 64), "dconv_lstm", "must be an int (first layer index with a BLSTM)")
    need(is_number(config.dconv_init, -1e3, 1e3), "dconv_init", "must be a finite number")
    need(
        is_int(config.sampling_rate, *SAMPLING_RATES),
        "sampling_rate",
        f"must be an int in [{SAMPLING_RATES[0]}, {SAMPLING_RATES[1]}] (Hz)",
    )
    for name, (supported, why) in UNSUPPORTED_DEMUCS_OPTIONS.items():
        value = getattr(config, name)
        # `is` for the booleans: 1 == True would pass a number where demucs's flag is meant
        same = value is supported if isinstance(supported, bool) else is_int(value, supported, supported)
        need(same, name, f"unsupported; only {json.dumps(supported)} is supported ({why})")
    need(
        config.multi_freqs is None or (isinstance(config.multi_freqs, list) and not config.multi_freqs),
        "multi_freqs",
        "unsupported; only [] (or null) is supported (frequency bands split by MultiWrap are not implemented)",
    )
    need(
        config.channels_time is None or is_int(config.channels_time, 1, 1024),
        "channels_time",
        "must be null (the time branch has `channels` channels) or an int in [1, 1024]",
    )
    if config.channels_time is not None:
        widest_t = config.channels_time * config.growth ** (config.depth - 1)
        need(
            widest_t <= MAX_WIDTH,
            "channels_time",
            f"with growth**(depth - 1) gives {widest_t:g} channels (at most {MAX_WIDTH})",
        )
    need(isinstance(config.rewrite, bool), "rewrite", "must be true or false")
    need(
        is_int(config.dconv_mode, 0, 3),
        "dconv_mode",
        "must be 0 (no DConv), 1 (in the encoders), 2 (in the decoders) or 3 (both)",
    )
    need(
        config.segment is None or is_number(config.segment, 1e-3, 86_400),
        "segment",
        "must be null or a number of seconds in (0, 86400]",
    )
    # The layer plan checks what depends on several fields at once (channel divisibility, frequency bins
    # reaching exactly one, ...), so an impossible architecture fails here and not mid-forward.
    from ...models.hdemucs.layer_plan import plan_layers

    plan_layers(config)


def config_from_json(fields: Mapping[str, Any]) -> SimpleNamespace:
    """The architecture a config.json's `fields` describe, as HDemucsConfig would hold it (missing fields take
    their defaults; keys that are not architecture fields are ignored), checked by `check_config`. Raises
    `ConfigError`."""
    values = {name: fields.get(name, default) for name, default in ARCHITECTURE_DEFAULTS.items()}
    sources = values["sources"]
    values["sources"] = list(sources) if isinstance(sources, (list, tuple)) else sources  # as HDemucsConfig
    config = SimpleNamespace(**values)
    check_config(config)
    return config
