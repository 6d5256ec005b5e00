"""demucs's own `HDemucs` (v3; demucs/hdemucs.py) -> `HDemucsConfig` and Flax params, numpy only.

demucs's HDemucs and torchaudio's port are the same network under other attribute names (`encoder.N` for
`freq_encoder.N`, `decoder.N`, `tencoder.N`, `tdecoder.N`; the DConv, BLSTM, LocalState and embedding keys below
those prefixes are identical, `nn.Sequential` indices included). So a demucs state is renamed to torchaudio's
keys and goes through `convert_torchaudio.convert_torchaudio_state_dict`, which checks every key, shape and dtype.
The one torchaudio parameter demucs lacks, `norm1` of the empty time layer (torchaudio builds it, its forward
never reads it; demucs does not build it), is filled with GroupNorm's identity (weight 1, bias 0).

The options torchaudio's port lacks (`dconv_mode`, `rewrite`, `channels_time`, ...) are `HDemucsConfig` fields,
read by the layer plan; options this package cannot compute are refused by `HDemucsConfig` with their name.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from typing import Any

import numpy as np

from ...errors import ConfigError
from .configuration_hdemucs import HDemucsConfig
from .convert_torchaudio import convert_torchaudio_state_dict
from .layer_plan import plan_layers

# The defaults of `demucs.hdemucs.HDemucs.__init__` (demucs 4.1.0), taken where a checkpoint's kwargs leave an
# argument out: demucs's `capture_init` records only the arguments a model was built with. `sources` has none.
DEMUCS_HDEMUCS_DEFAULTS: dict[str, Any] = {
    "audio_channels": 2,
    "channels": 48,
    "channels_time": None,
    "growth": 2,
    "nfft": 4096,
    "wiener_iters": 0,
    "end_iters": 0,
    "wiener_residual": False,
    "cac": True,
    "depth": 6,
    "rewrite": True,
    "hybrid": True,
    "hybrid_old": False,
    "multi_freqs": None,
    "multi_freqs_depth": 2,
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
    "dconv_mode": 1,
    "dconv_depth": 2,
    "dconv_comp": 4,
    "dconv_attn": 4,
    "dconv_lstm": 4,
    "dconv_init": 1e-4,
    "rescale": 0.1,
    "samplerate": 44100,
    "segment": 4 * 10,
}

# The constructor kwargs of the released `hdemucs_mmi` (signature 75fc33f5, demucs/remote/hdemucs_mmi.yaml), as
# far as they can be known offline: demucs/grids/mmi.py trains it as `{"model": "hdemucs"}` on
# `extra_mmi_goodclean` with `dset.segment` 10 (its other bindings are `htdemucs.*` keys, which an HDemucs does
# not read); `train.get_model` passes the dataset's sources, channels and sample rate, `segment` 4 x 10 s, and the
# `hdemucs:` section of conf/config.yaml, unchanged in every version of that file since v3 (November 2021 to
# February 2023). That is torchaudio's `hdemucs_high` architecture; `dconv_init` and `rescale` only change the
# initial weights. The checkpoint's own kwargs, when read, take precedence.
HDEMUCS_MMI_KWARGS: dict[str, Any] = {
    "sources": ["drums", "bass", "other", "vocals"],
    "audio_channels": 2,
    "samplerate": 44100,
    "segment": 40,
    "channels": 48,
    "channels_time": None,
    "growth": 2,
    "nfft": 4096,
    "wiener_iters": 0,
    "end_iters": 0,
    "wiener_residual": False,
    "cac": True,
    "depth": 6,
    "rewrite": True,
    "hybrid": True,
    "hybrid_old": False,
    "multi_freqs": [],
    "multi_freqs_depth": 3,
    "freq_emb": 0.2,
    "emb_scale": 10,
    "emb_smooth": True,
    "kernel_size": 8,
    "stride": 4,
    "time_stride": 2,
    "context": 1,
    "context_enc": 0,
    "norm_starts": 4,
    "norm_groups": 4,
    "dconv_mode": 1,
    "dconv_depth": 2,
    "dconv_comp": 4,
    "dconv_attn": 4,
    "dconv_lstm": 4,
    "dconv_init": 1e-3,
    "rescale": 0.1,
}

# demucs kwargs with no `HDemucsConfig` field, and why dropping them changes nothing a forward pass computes.
_INERT_KWARGS = {
    "rescale": "scales the initial convolution weights only; a checkpoint's weights replace them",
    "multi_freqs_depth": "how many layers `multi_freqs` wraps; `multi_freqs` itself must be empty here",
}
# demucs kwarg -> HDemucsConfig field, where the names differ.
_FIELD_NAMES = {"samplerate": "sampling_rate"}

# demucs attribute -> torchaudio attribute. Applied as a swap (each prefix turns into the other), the renaming is
# its own inverse: error messages spell keys as the demucs state does, and a torchaudio-named key found in a
# demucs state becomes a demucs-named one the conversion table does not hold, so it is reported as unexpected
# instead of being taken for the parameter it names.
_PREFIX_SWAP = {
    "encoder": "freq_encoder",
    "decoder": "freq_decoder",
    "tencoder": "time_encoder",
    "tdecoder": "time_decoder",
}
_PREFIX_SWAP.update({torchaudio: demucs for demucs, torchaudio in list(_PREFIX_SWAP.items())})


def _swap_prefix(key: str) -> str:
    head, dot, rest = key.partition(".")
    return f"{_PREFIX_SWAP[head]}{dot}{rest}" if head in _PREFIX_SWAP else key


def hdemucs_config_from_demucs_kwargs(kwargs: Mapping[str, Any]) -> HDemucsConfig:
    """The `HDemucsConfig` of `demucs.hdemucs.HDemucs(**kwargs)` (a checkpoint's "kwargs"; missing arguments take
    demucs's defaults, `DEMUCS_HDEMUCS_DEFAULTS`). Raises `ConfigError` naming the option for an argument HDemucs
    does not take (another model's), an option this package does not compute (`cac`, `hybrid`, `hybrid_old`,
    `multi_freqs`, `wiener_iters`, `end_iters`, `wiener_residual`: refused by `HDemucsConfig`), and the two
    architectures on which torchaudio's rules, which the layer plan follows, differ from demucs's."""
    unknown = sorted(set(kwargs) - set(DEMUCS_HDEMUCS_DEFAULTS) - {"sources"})
    if unknown:
        raise ConfigError(f"demucs HDemucs kwargs: {unknown[0]!r} is not an argument of demucs's HDemucs (v3)")
    if "sources" not in kwargs:
        raise ConfigError("demucs HDemucs kwargs: 'sources' is missing (demucs's HDemucs requires it)")
    given = {**DEMUCS_HDEMUCS_DEFAULTS, **kwargs}
    fields = {_FIELD_NAMES.get(k, k): v for k, v in given.items() if k not in _INERT_KWARGS}
    segment = fields["segment"]
    if isinstance(segment, numbers.Real) and not isinstance(segment, bool):
        fields["segment"] = float(segment)  # HTDemucs-era checkpoints store a Fraction, which JSON cannot hold
    if isinstance(fields["multi_freqs"], tuple):
        fields["multi_freqs"] = list(fields["multi_freqs"])
    config = HDemucsConfig(**fields)  # checks every field, refusing unsupported options by name
    if config.kernel_size != 2 * config.stride:
        # demucs's decoders crop kernel_size // 4 where torchaudio's crop (kernel_size - stride) // 2: one rule
        # only where kernel_size = 2 * stride (the only choice with which demucs's frequency layers map back).
        raise ConfigError(
            f"demucs HDemucs kernel_size={config.kernel_size!r}: only kernel_size = 2 * stride "
            f"(stride={config.stride!r}) is supported"
        )
    if config.nfft == 2048 and any(layer.empty for layer in plan_layers(config).time_encoder):
        # torchaudio gives the time layer where the branches merge kernel 4 and stride 2 at nfft 2048 so that the
        # time strides multiply to the hop (512); demucs has no such layer: its branches meet at stride 1024.
        raise ConfigError(
            "demucs HDemucs nfft=2048: demucs's branches cannot merge at this nfft (its time strides reach 1024, "
            "the hop is 512); use nfft 4096, or a depth whose branches do not merge"
        )
    return config


def hdemucs_params_from_demucs_state(state: Mapping[str, Any], config: HDemucsConfig) -> dict:
    """demucs `HDemucs.state_dict()` (numpy arrays or tensors; float16 as demucs's `get_state(half=True)` saves
    them) -> the nested Flax params of `FlaxHDemucs(config)`, float32 numpy.

    Every key is consumed and every leaf filled; the one leaf demucs has no tensor for (`norm1` of the empty time
    layer, never read by the forward pass) gets GroupNorm's identity. Raises `CheckpointError` (one line) naming
    every missing key, unexpected key, wrongly shaped and non-float tensor, spelt as the demucs state spells them.
    """
    renamed = {_swap_prefix(key): value for key, value in state.items()}
    for layer in plan_layers(config).time_encoder:
        if layer.empty and layer.norm:
            for leaf, fill in (("weight", np.ones), ("bias", np.zeros)):
                renamed.setdefault(f"{layer.path}.norm1.{leaf}", fill(layer.chout, np.float32))
    return convert_torchaudio_state_dict(renamed, config, what="demucs HDemucs state", key_name=_swap_prefix)
