"""`HDemucsConfig`: torchaudio's `HDemucs` constructor arguments as a transformers config."""

from __future__ import annotations

from typing import Any

from transformers import AutoConfig, PretrainedConfig

from .errors import ConfigError

DEFAULT_SOURCES = ("drums", "bass", "other", "vocals")

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
        self.sources = list(sources)
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
        def need(ok: bool, field: str, rule: str) -> None:
            if not ok:
                raise ConfigError(f"HDemucsConfig.{field}={getattr(self, field)!r}: {rule}")

        def is_int(value: Any) -> bool:
            return isinstance(value, int) and not isinstance(value, bool)

        need(
            len(self.sources) > 0 and all(isinstance(s, str) and s for s in self.sources),
            "sources",
            "must be a non-empty list of non-empty source names",
        )
        need(len(set(self.sources)) == len(self.sources), "sources", "source names must be unique")
        need(is_int(self.audio_channels) and self.audio_channels >= 1, "audio_channels", "must be an int >= 1")
        need(is_int(self.channels) and self.channels >= 1, "channels", "must be an int >= 1")
        need(isinstance(self.growth, (int, float)) and self.growth > 0, "growth", "must be a number > 0")
        need(
            is_int(self.nfft) and self.nfft >= 16 and self.nfft & (self.nfft - 1) == 0,
            "nfft",
            "must be a power of two >= 16",
        )
        need(is_int(self.depth) and self.depth >= 1, "depth", "must be an int >= 1")
        need(isinstance(self.freq_emb, (int, float)) and self.freq_emb >= 0, "freq_emb", "must be a number >= 0")
        need(isinstance(self.emb_scale, (int, float)) and self.emb_scale > 0, "emb_scale", "must be a number > 0")
        need(is_int(self.stride) and self.stride >= 1, "stride", "must be an int >= 1")
        need(
            is_int(self.kernel_size) and self.kernel_size >= self.stride and (self.kernel_size - self.stride) % 2 == 0,
            "kernel_size",
            "must be an int >= stride with (kernel_size - stride) even (torchaudio's decoder padding rule)",
        )
        need(is_int(self.time_stride) and self.time_stride >= 1, "time_stride", "must be an int >= 1")
        need(is_int(self.context) and self.context >= 0, "context", "must be an int >= 0")
        need(is_int(self.context_enc) and self.context_enc >= 0, "context_enc", "must be an int >= 0")
        need(is_int(self.norm_starts) and self.norm_starts >= 0, "norm_starts", "must be an int >= 0")
        need(is_int(self.norm_groups) and self.norm_groups >= 1, "norm_groups", "must be an int >= 1")
        need(is_int(self.dconv_depth), "dconv_depth", "must be an int (negative disables dilation)")
        need(isinstance(self.dconv_comp, (int, float)) and self.dconv_comp > 0, "dconv_comp", "must be a number > 0")
        need(is_int(self.dconv_attn), "dconv_attn", "must be an int (first layer index with attention)")
        need(is_int(self.dconv_lstm), "dconv_lstm", "must be an int (first layer index with a BLSTM)")
        need(isinstance(self.dconv_init, (int, float)), "dconv_init", "must be a number")
        need(is_int(self.sampling_rate) and self.sampling_rate > 0, "sampling_rate", "must be an int > 0 (Hz)")
        # The layer plan checks what depends on several fields at once (channel divisibility, frequency
        # bins reaching exactly one, ...), so an impossible architecture fails here and not mid-forward.
        from .layer_plan import plan_layers

        plan_layers(self)


AutoConfig.register(HDemucsConfig.model_type, HDemucsConfig)
