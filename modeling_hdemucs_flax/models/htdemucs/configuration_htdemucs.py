"""`HTDemucsConfig`: demucs's `HTDemucs` constructor arguments as a transformers config, and the released presets."""

from __future__ import annotations

from fractions import Fraction
from typing import Any

from transformers import AutoConfig, PretrainedConfig

from ...errors import ConfigError
from ..hdemucs.config_rules import DEFAULT_SOURCES
from .layer_plan import CAPE_DEFAULTS, check_config, exact_segment

SIX_SOURCES = ("drums", "bass", "other", "vocals", "guitar", "piano")

# What the released models set beyond `HTDemucs.__init__`'s defaults. Sources of each value:
# - demucs's training config (`conf/config.yaml`, section `htdemucs:`, github.com/adefossez/demucs at b9ab48c)
#   equals the constructor defaults except `t_sparse_attn_window: 400` (inert: sparse attention is off) and
#   `multi_freqs: []` (same as None); its other values (channels 48, depth 4, nfft 4096, dconv_comp 8,
#   dconv_init 1e-3, t_layers 5, t_heads 8, t_hidden_scale 4.0, t_norm_in/t_norm_first/t_norm_out/t_layer_scale/
#   t_gelu true, t_group_norm false, t_emb sin, t_cross_first false, freq_emb 0.2, emb_scale 10) are the defaults.
# - the v4 training grid (`demucs/grids/mmi.py`): dconv_mode 3, depth 4, t_layers 5, t_dropout 0.02 (inert at
#   inference), bottom_channels 0 or 512; `grids/mmi_ft.py` fine-tunes htdemucs (955717e8) per source with
#   t_weight_decay 0.05 (training only): htdemucs_ft's members share htdemucs's architecture.
# - which bottom_channels each release uses: the released checkpoints' tensor shapes, as a third-party reader of
#   those files records them (sevagh/demucs.cpp `src/model.hpp`): htdemucs has channel_upsampler (384 -> 512) and
#   a 512-wide transformer with 2048 feed-forward units; htdemucs_6s has no channel_upsampler and a 384-wide
#   transformer (bottom_channels 0); both have DConv branches in encoders and decoders (dconv_mode 3) and a
#   343,980-sample segment.
# - segment: the v4 checkpoints carry Fraction(39, 5) seconds (7.8 s, 343,980 samples at 44.1 kHz), which
#   `use_train_segment` pads every input to (checked on the published files, see the project's NOTES.md).
# Model names: `demucs/remote/htdemucs.yaml` (955717e8), `htdemucs_6s.yaml` (5c90dfd2), `htdemucs_ft.yaml`
# (f7e0c4bc d12395a8 92cfc3b6 04573f0d, one-hot weights: one member per source).
_RELEASED: dict[str, Any] = {
    "dconv_mode": 3,
    "t_dropout": 0.02,
    "t_sparse_attn_window": 400,
    "segment": Fraction(39, 5),
}
PRESETS: dict[str, dict[str, Any]] = {
    "htdemucs": {**_RELEASED, "sources": list(DEFAULT_SOURCES), "bottom_channels": 512},
    "htdemucs_ft": {**_RELEASED, "sources": list(DEFAULT_SOURCES), "bottom_channels": 512, "t_weight_decay": 0.05},
    "htdemucs_6s": {**_RELEASED, "sources": list(SIX_SOURCES), "bottom_channels": 0},
}

# The constructor's argument names, in demucs's order: `demucs_kwargs` passes exactly these.
DEMUCS_ARGUMENTS = (
    "sources audio_channels channels channels_time growth nfft wiener_iters end_iters wiener_residual cac depth "
    "rewrite multi_freqs multi_freqs_depth freq_emb emb_scale emb_smooth kernel_size time_stride stride context "
    "context_enc norm_starts norm_groups dconv_mode dconv_depth dconv_comp dconv_init bottom_channels t_layers t_emb "
    "t_hidden_scale t_heads t_dropout t_max_positions t_norm_in t_norm_in_group t_group_norm t_norm_first t_norm_out "
    "t_max_period t_weight_decay t_lr t_layer_scale t_gelu t_weight_pos_embed t_sin_random_shift "
    "t_cape_mean_normalize t_cape_augment t_cape_glob_loc_scale t_sparse_self_attn t_sparse_cross_attn t_mask_type "
    "t_mask_random_seed t_sparse_attn_window t_global_window t_sparsity t_auto_sparsity t_cross_first rescale "
    "samplerate segment use_train_segment"
).split()


class HTDemucsConfig(PretrainedConfig):
    """Architecture of a Hybrid Transformer Demucs (demucs v4) model.

    Every argument of `demucs.htdemucs.HTDemucs` keeps its name and demucs's default (`from_preset` gives the
    released models). `samplerate` (Hz, also readable as `sampling_rate`) is the rate the weights were trained
    at. `segment` (seconds; a `Fraction` or a number, stored as a float) is the training length every shorter
    input is zero-padded to when `use_train_segment` is true; longer inputs are refused, as demucs does.
    Options the released models do not use (Wiener filtering, magnitude spectrograms, sparse attention, CAPE or
    learned positional embeddings, frequency-band splits, random positional shifts at inference) are refused
    with a `ConfigError` naming the option; options that only matter for training (dropout, weight decay,
    learning rate, `rescale`) or only with a refused option (the sparse masks' settings) are kept and ignored.
    """

    model_type = "htdemucs"
    attribute_map = {"sampling_rate": "samplerate"}  # the name HDemucsConfig and downstream code read

    def __init__(
        self,
        sources: list[str] | tuple[str, ...] = DEFAULT_SOURCES,
        audio_channels: int = 2,
        channels: int = 48,
        channels_time: int | None = None,
        growth: int = 2,
        nfft: int = 4096,
        wiener_iters: int = 0,
        end_iters: int = 0,
        wiener_residual: bool = False,
        cac: bool = True,
        depth: int = 4,
        rewrite: bool = True,
        multi_freqs: list[float] | None = None,
        multi_freqs_depth: int = 3,
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
        dconv_mode: int = 1,
        dconv_depth: int = 2,
        dconv_comp: float = 8,
        dconv_init: float = 1e-3,
        bottom_channels: int = 0,
        t_layers: int = 5,
        t_emb: str = "sin",
        t_hidden_scale: float = 4.0,
        t_heads: int = 8,
        t_dropout: float = 0.0,
        t_max_positions: int = 10000,
        t_norm_in: bool = True,
        t_norm_in_group: bool | int = False,
        t_group_norm: bool | int = False,
        t_norm_first: bool = True,
        t_norm_out: bool | int = True,
        t_max_period: float = 10000.0,
        t_weight_decay: float = 0.0,
        t_lr: float | None = None,
        t_layer_scale: bool = True,
        t_gelu: bool = True,
        t_weight_pos_embed: float = 1.0,
        t_sin_random_shift: int = 0,
        t_cape_mean_normalize: bool = CAPE_DEFAULTS["t_cape_mean_normalize"],
        t_cape_augment: bool = CAPE_DEFAULTS["t_cape_augment"],
        t_cape_glob_loc_scale: list[float] | tuple[float, ...] = tuple(CAPE_DEFAULTS["t_cape_glob_loc_scale"]),
        t_sparse_self_attn: bool = False,
        t_sparse_cross_attn: bool = False,
        t_mask_type: str = "diag",
        t_mask_random_seed: int = 42,
        t_sparse_attn_window: int = 500,
        t_global_window: int = 100,
        t_sparsity: float = 0.95,
        t_auto_sparsity: bool = False,
        t_cross_first: bool = False,
        rescale: float = 0.1,
        samplerate: int = 44100,
        segment: float | Fraction = 10,
        use_train_segment: bool = True,
        **kwargs: Any,
    ):
        values = dict(locals())
        for name in DEMUCS_ARGUMENTS:
            value = values[name]
            if isinstance(value, tuple):  # JSON has lists only: keep one form
                value = list(value)
            if name == "segment" and isinstance(value, (int, Fraction)) and not isinstance(value, bool):
                value = float(value)  # JSON has no fractions; `exact_segment` recovers the fraction
            setattr(self, name, value)
        super().__init__(**kwargs)
        check_config(self)  # one `ConfigError` line naming the field

    @classmethod
    def from_preset(cls, preset: str, **overrides: Any) -> HTDemucsConfig:
        """The config of a released model ("htdemucs", "htdemucs_ft" (each member), "htdemucs_6s"); `overrides`
        replace single fields (e.g. smaller sizes for tests)."""
        if preset not in PRESETS:
            raise ConfigError(f"preset: unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
        return cls(**{**PRESETS[preset], **overrides})

    @property
    def hop_length(self) -> int:
        """STFT hop in samples (demucs fixes it to nfft // 4)."""
        return self.nfft // 4

    @property
    def segment_fraction(self) -> Fraction:
        """`segment` as the exact number of seconds demucs holds (see `layer_plan.exact_segment`)."""
        return exact_segment(self.segment, self.samplerate)

    def demucs_kwargs(self) -> dict[str, Any]:
        """Keyword arguments that build the same architecture with `demucs.htdemucs.HTDemucs` (segment exact)."""
        kwargs = {name: getattr(self, name) for name in DEMUCS_ARGUMENTS}
        kwargs["segment"] = self.segment_fraction
        return kwargs


AutoConfig.register(HTDemucsConfig.model_type, HTDemucsConfig)
