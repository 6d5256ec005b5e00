"""`HDemucsConfig`: torchaudio's `HDemucs` constructor arguments as a transformers config."""

from __future__ import annotations

from typing import Any

from transformers import AutoConfig, PretrainedConfig

from ...errors import ConfigError
from ...models.hdemucs.config_rules import check_config
from .config_rules import DEFAULT_SOURCES

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
        check_config(self)  # one `ConfigError` line naming the field (shared with the command line's pre-check)

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


AutoConfig.register(HDemucsConfig.model_type, HDemucsConfig)
