"""`HDemucsConfig`: torchaudio's `HDemucs` constructor arguments, plus the options of demucs's own `HDemucs` that
torchaudio's port lacks, as a transformers config."""

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

    The options after `sampling_rate` are demucs's `HDemucs` arguments (demucs/hdemucs.py) that torchaudio's port
    fixes; their defaults are the values torchaudio's port fixes them to, so a torchaudio config is unchanged:
    `channels_time` (time-branch channels; None: `channels`), `rewrite` (the 1x1 "rewrite" convolution and its
    GLU in every layer), `dconv_mode` (DConv branches in the encoders: 1, the decoders: 2, both: 3, none: 0).
    Options this package cannot compute are refused by name when the config is built: `cac` (only true),
    `hybrid` (only true), `hybrid_old` (only false), `multi_freqs` (only empty), `wiener_iters`, `end_iters`
    (only 0) and `wiener_residual` (only false). `segment` (seconds) is metadata: the chunk length demucs's
    `apply_model` uses for the model by default; None where not stated (the separation options set their own).
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
        channels_time: int | None = None,
        rewrite: bool = True,
        dconv_mode: int = 1,
        cac: bool = True,
        hybrid: bool = True,
        hybrid_old: bool = False,
        multi_freqs: list[float] | tuple[float, ...] | None = None,
        wiener_iters: int = 0,
        end_iters: int = 0,
        wiener_residual: bool = False,
        segment: float | None = None,
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
        self.channels_time = channels_time
        self.rewrite = rewrite
        self.dconv_mode = dconv_mode
        self.cac = cac
        self.hybrid = hybrid
        self.hybrid_old = hybrid_old
        self.multi_freqs = list(multi_freqs) if isinstance(multi_freqs, tuple) else multi_freqs  # JSON has lists
        self.wiener_iters = wiener_iters
        self.end_iters = end_iters
        self.wiener_residual = wiener_residual
        self.segment = segment
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
        """Keyword arguments that build the same architecture with `torchaudio.models.HDemucs`. Raises
        `ConfigError` naming the first demucs-only option torchaudio's port cannot express (it fixes
        `dconv_mode` to 1, `rewrite` to true and the time branch's channels to `channels`)."""
        # torchaudio's fixed value of each, and how to say it
        fixed = {
            "dconv_mode": (1, "1 there: DConv in the encoders only"),
            "rewrite": (True, "true there"),
            "channels_time": (self.channels, "`channels` there"),
        }
        for name, (value, there) in fixed.items():
            given = getattr(self, name)
            if not (given == value or (name == "channels_time" and given is None)):
                raise ConfigError(
                    f"HDemucsConfig.{name}={given!r}: torchaudio's HDemucs has no such option (it is always "
                    f"{there}); this architecture exists in demucs's HDemucs only"
                )
        names = (
            "sources audio_channels channels growth nfft depth freq_emb emb_scale emb_smooth kernel_size "
            "time_stride stride context context_enc norm_starts norm_groups dconv_depth dconv_comp "
            "dconv_attn dconv_lstm dconv_init"
        ).split()
        return {name: getattr(self, name) for name in names}


AutoConfig.register(HDemucsConfig.model_type, HDemucsConfig)
