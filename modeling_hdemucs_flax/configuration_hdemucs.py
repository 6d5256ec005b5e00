"""`HDemucsConfig`: torchaudio's `HDemucs` constructor arguments as a transformers config."""

from __future__ import annotations

import math
from typing import Any

from transformers import AutoConfig, PretrainedConfig

from .downloads import DEFAULT_SOURCES
from .errors import ConfigError

MAX_SOURCES = 64
MAX_WIDTH = 16_384  # channels of the deepest layer (high: 48 * 2**5 = 1536)
SAMPLING_RATES = (1_000, 768_000)  # Hz

# torchaudio.models.hdemucs_low / hdemucs_medium / hdemucs_high differ only in these two fields.
PRESETS: dict[str, dict[str, int]] = {
    "low": {"nfft": 1024, "depth": 5},
    "medium": {"nfft": 2048, "depth": 6},
    "high": {"nfft": 4096, "depth": 6},
}


class HDemucsConfig(PretrainedConfig):
    """Architecture of a Hybrid Demucs model.

    Every argument of `torchaudio.models.HDemucs` keeps its name and default; the defaults equal
    `torchaudio.models.hdemucs_high(["drums", "bass", "other", "vocals"])`. `sampling_rate` (Hz) is the
    rate the weights were trained at: audio at other rates must be resampled before the forward pass.
    """

    model_type = "hdemucs"

    def __init__(
        self,
        sources: list[str] | tuple[str, ...] = DEFAULT_SOURCES,
        audio_channels: int = 2,
        channels: int = 48,
        growth: int = 2,
        nfft: int = 4096,
        depth: int = 6,
        freq_emb: float = 0.2,
        emb_scale: float = 10,
        emb_smooth: bool = True,
        kernel_size: int = 8,
        time_stride: int = 2,
        stride: int = 4,
        context: int = 1,
        context_enc: int = 0,
        norm_starts: int = 4,
        norm_groups: int = 4,
        dconv_depth: int = 2,
        dconv_comp: int = 4,
        dconv_attn: int = 4,
        dconv_lstm: int = 4,
        dconv_init: float = 1e-4,
        sampling_rate: int = 44100,
        **kwargs: Any,
    ):
        self.sources = list(sources) if isinstance(sources, (list, tuple)) else sources  # else: refused below
        self.audio_channels = audio_channels
        self.channels = channels
        self.growth = growth
        self.nfft = nfft
        self.depth = depth
        self.freq_emb = freq_emb
        self.emb_scale = emb_scale
        self.emb_smooth = emb_smooth
        self.kernel_size = kernel_size
        self.time_stride = time_stride
        self.stride = stride
        self.context = context
        self.context_enc = context_enc
        self.norm_starts = norm_starts
        self.norm_groups = norm_groups
        self.dconv_depth = dconv_depth
        self.dconv_comp = dconv_comp
        self.dconv_attn = dconv_attn
        self.dconv_lstm = dconv_lstm
        self.dconv_init = dconv_init
        self.sampling_rate = sampling_rate
        super().__init__(**kwargs)
        self._validate()

    @classmethod
    def from_preset(cls, preset: str, **overrides: Any) -> HDemucsConfig:
        """The config of `torchaudio.models.hdemucs_{preset}`; `overrides` replace single fields."""
        if preset not in PRESETS:
            raise ConfigError(f"preset: unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
        return cls(**{**PRESETS[preset], **overrides})

    @property
    def hop_length(self) -> int:
        """STFT hop in samples (torchaudio fixes it to nfft // 4)."""
        return self.nfft // 4

    def torchaudio_kwargs(self) -> dict[str, Any]:
        """Keyword arguments that build the same architecture with `torchaudio.models.HDemucs`."""
        names = (
            "sources audio_channels channels growth nfft depth freq_emb emb_scale emb_smooth kernel_size "
            "time_stride stride context context_enc norm_starts norm_groups dconv_depth dconv_comp "
            "dconv_attn dconv_lstm dconv_init"
        ).split()
        return {name: getattr(self, name) for name in names}

    def _validate(self) -> None:
        """Every field's type and a sane range: a config.json from anywhere (a download, a user's edit) either
        describes a model this machine can build or fails here, in one line naming the field, never later as
        an OverflowError or a multi-terabyte allocation. The bounds are generous: several times the largest
        torchaudio preset (high: 48 channels, growth 2, depth 6, nfft 4096, 44.1 kHz)."""

        def need(ok: bool, field: str, rule: str) -> None:
            if not ok:
                raise ConfigError(f"HDemucsConfig.{field}={getattr(self, field)!r}: {rule}")

        def is_int(value: Any, low: int, high: int) -> bool:
            return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high

        def is_number(value: Any, low: float, high: float) -> bool:
            return (
                isinstance(value, (int, float))
                and not isinstance(value, bool)
                and math.isfinite(value)
                and low <= value <= high
            )

        sources = self.sources
        need(
            isinstance(sources, list)
            and 0 < len(sources) <= MAX_SOURCES
            and all(isinstance(s, str) and 0 < len(s) <= 64 for s in sources),
            "sources",
            f"must be a list of 1 to {MAX_SOURCES} source names (non-empty strings of at most 64 characters)",
        )
        need(len(set(sources)) == len(sources), "sources", "source names must be unique")
        need(is_int(self.audio_channels, 1, 8), "audio_channels", "must be an int in [1, 8]")
        need(is_int(self.channels, 1, 1024), "channels", "must be an int in [1, 1024]")
        need(is_number(self.growth, 1e-3, 16), "growth", "must be a number in (0, 16]")
        need(is_int(self.depth, 1, 16), "depth", "must be an int in [1, 16]")
        need(
            is_int(self.nfft, 16, 1 << 16) and self.nfft & (self.nfft - 1) == 0,
            "nfft",
            "must be a power of two in [16, 65536]",
        )
        widest = self.channels * self.growth ** (self.depth - 1)  # bounded by the checks above: no overflow
        need(
            widest <= MAX_WIDTH, "channels", f"with growth**(depth - 1) gives {widest:g} channels (at most {MAX_WIDTH})"
        )
        need(is_number(self.freq_emb, 0, 1e3), "freq_emb", "must be a finite number in [0, 1000]")
        need(is_number(self.emb_scale, 1e-6, 1e6) and self.emb_scale > 0, "emb_scale", "must be a finite number > 0")
        need(isinstance(self.emb_smooth, bool), "emb_smooth", "must be true or false")
        need(is_int(self.stride, 1, 64), "stride", "must be an int in [1, 64]")
        need(
            is_int(self.kernel_size, self.stride, 256) and (self.kernel_size - self.stride) % 2 == 0,
            "kernel_size",
            "must be an int in [stride, 256] with (kernel_size - stride) even (torchaudio's decoder padding rule)",
        )
        need(is_int(self.time_stride, 1, 64), "time_stride", "must be an int in [1, 64]")
        need(is_int(self.context, 0, 64), "context", "must be an int in [0, 64]")
        need(is_int(self.context_enc, 0, 64), "context_enc", "must be an int in [0, 64]")
        need(is_int(self.norm_starts, 0, 64), "norm_starts", "must be an int in [0, 64]")
        need(is_int(self.norm_groups, 1, 1024), "norm_groups", "must be an int in [1, 1024]")
        need(is_int(self.dconv_depth, -16, 16), "dconv_depth", "must be an int in [-16, 16] (negative: no dilation)")
        need(is_number(self.dconv_comp, 1e-3, 1024) and self.dconv_comp > 0, "dconv_comp", "must be a number > 0")
        need(is_int(self.dconv_attn, -64, 64), "dconv_attn", "must be an int (first layer index with attention)")
        need(is_int(self.dconv_lstm, -64, 64), "dconv_lstm", "must be an int (first layer index with a BLSTM)")
        need(is_number(self.dconv_init, -1e3, 1e3), "dconv_init", "must be a finite number")
        need(
            is_int(self.sampling_rate, *SAMPLING_RATES),
            "sampling_rate",
            f"must be an int in [{SAMPLING_RATES[0]}, {SAMPLING_RATES[1]}] (Hz)",
        )
        # The layer plan checks what depends on several fields at once (channel divisibility, frequency
        # bins reaching exactly one, ...), so an impossible architecture fails here and not mid-forward.
        from .layer_plan import plan_layers

        plan_layers(self)


AutoConfig.register(HDemucsConfig.model_type, HDemucsConfig)
