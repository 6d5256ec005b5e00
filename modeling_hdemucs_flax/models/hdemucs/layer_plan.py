"""The one place that derives HDemucs's architecture from its config.

`plan_layers(config)` replays the layer loop of `torchaudio.models.HDemucs.__init__` and returns a frozen,
hashable plan: every layer's channels, kernel, stride, padding, branch and flags as plain ints and bools.
Modules and the weight converters read the plan; nothing else re-derives the architecture.

The same loop is demucs's own `HDemucs.__init__` (demucs/hdemucs.py), of which torchaudio's is a port with three
options fixed: `channels_time` (None there), `rewrite` (true) and `dconv_mode` (1, encoders only). The plan
follows demucs where the config sets them otherwise. Two differences the plan keeps torchaudio's side of are
refused for demucs configs by `models.hdemucs.convert_demucs` instead: torchaudio's special time layer for
nfft 2048, and its decoder crop (kernel - stride) // 2 where demucs crops kernel // 4 (equal when
kernel = 2 * stride).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ...errors import ConfigError

# Fixed by torchaudio (not constructor arguments): `_DConv` kernel 3, `_LocalState` 4 heads and 4 decay
# rates, `_BLSTM` 2 layers framed into windows of 200 steps.
DCONV_KERNEL = 3
ATTN_HEADS = 4
ATTN_DECAYS = 4
LSTM_LAYERS = 2
LSTM_MAX_STEPS = 200


@dataclass(frozen=True)
class DConvPlan:
    channels: int
    hidden: int  # int(channels / dconv_comp), torchaudio's rounding
    depth: int  # number of residual branches (abs of dconv_depth)
    dilate: bool  # dilation 2**d in branch d (dconv_depth > 0)
    lstm: bool
    attn: bool
    init: float  # LayerScale initial value


@dataclass(frozen=True)
class EncoderPlan:
    path: str  # torchaudio attribute path, e.g. "freq_encoder.3"
    chin: int
    chout: int
    kernel_size: int
    stride: int
    pad: int
    freq: bool  # convolves over frequency bins (Conv2d with kernel (k, 1)); else over time (Conv1d)
    empty: bool  # only `conv`: its output is injected into the frequency branch
    norm: bool  # GroupNorm (else identity)
    norm_groups: int
    context: int  # `rewrite` kernel is 1 + 2 * context
    rewrite: bool  # the `rewrite` convolution, `norm2` and GLU after the DConv (else the layer ends at the DConv)
    dconv: DConvPlan | None  # None: no DConv branch (an empty layer, or `dconv_mode` without bit 1)


@dataclass(frozen=True)
class DecoderPlan:
    path: str
    chin: int
    chout: int
    kernel_size: int
    stride: int
    pad: int  # cropped from both ends of the transposed convolution's output
    freq: bool
    empty: bool  # no skip connection and no `rewrite`
    last: bool  # the outermost layer: no GELU on its output
    norm: bool
    norm_groups: int
    context: int
    rewrite: bool  # the `rewrite` convolution, `norm1` and GLU on input + skip (never in an empty layer)
    dconv: DConvPlan | None  # after the rewrite, before the transposed convolution (`dconv_mode` bit 2, demucs only)


@dataclass(frozen=True)
class FreqEmbPlan:
    num_embeddings: int
    dim: int
    scale: float  # `_ScaledEmbedding.scale` (config.emb_scale)
    weight: float  # how much of the embedding is added (config.freq_emb)
    smooth: bool


@dataclass(frozen=True)
class HDemucsPlan:
    num_sources: int
    audio_channels: int
    nfft: int
    hop_length: int
    freq_encoder: tuple[EncoderPlan, ...]
    time_encoder: tuple[EncoderPlan, ...]
    freq_decoder: tuple[DecoderPlan, ...]  # in execution order, deepest first (torchaudio's order)
    time_decoder: tuple[DecoderPlan, ...]
    freq_emb: FreqEmbPlan | None

    @property
    def depth(self) -> int:
        return len(self.freq_encoder)


def flax_name(path: str) -> str:
    """Flax module name for a torchaudio path: "freq_encoder.3" -> "freq_encoder_3"."""
    return path.replace(".", "_")


def _dconv_plan(config: Any, channels: int, *, lstm: bool, attn: bool) -> DConvPlan:
    """The `_DConv` of a layer with `channels` channels (torchaudio rounds the hidden width down)."""
    hidden = int(channels / config.dconv_comp)
    if abs(config.dconv_depth) and hidden < 1:
        raise ConfigError(f"HDemucsConfig.dconv_comp={config.dconv_comp!r}: leaves {channels} channels no hidden unit")
    if abs(config.dconv_depth) and attn and hidden % ATTN_HEADS:
        raise ConfigError(
            f"HDemucsConfig.dconv_comp={config.dconv_comp!r}: attention needs hidden channels "
            f"int({channels} / dconv_comp) = {hidden} divisible by {ATTN_HEADS} heads"
        )
    return DConvPlan(
        channels=channels,
        hidden=hidden,
        depth=abs(config.dconv_depth),
        dilate=config.dconv_depth > 0,
        lstm=lstm,
        attn=attn,
        init=float(config.dconv_init),
    )


def plan_layers(config: Any) -> HDemucsPlan:
    """Derive the per-layer plan of `torchaudio.models.HDemucs(**config.torchaudio_kwargs())`, or of demucs's
    `HDemucs` for a config with demucs-only options (see the module docstring).

    Raises `ConfigError` naming the config field when torchaudio would build a model that cannot run (or
    would fail to build it at all).
    """
    c = config
    freq_enc: list[EncoderPlan] = []
    time_enc: list[EncoderPlan] = []
    freq_dec: list[DecoderPlan] = []  # built outermost first; torchaudio inserts each at the front
    time_dec: list[dict[str, Any]] = []  # the same, numbered once the count is known
    freq_emb = None

    # demucs's `dconv_mode` is a bit set: 1 puts DConv branches in the encoder layers, 2 in the decoder layers.
    enc_dconv, dec_dconv = bool(c.dconv_mode & 1), bool(c.dconv_mode & 2)
    chin, chout = c.audio_channels, c.channels_time or c.channels
    chin_z, chout_z = 2 * chin, c.channels  # the frequency branch carries real and imaginary parts
    freqs = c.nfft // 2
    time_downsampling = 1  # product of the time branch's strides so far
    for index in range(c.depth):
        lstm = index >= c.dconv_lstm
        attn = index >= c.dconv_attn
        norm = index >= c.norm_starts
        freq = freqs > 1
        stride, ker = c.stride, c.kernel_size
        if not freq:  # below one frequency bin the branch convolves over STFT frames
            ker, stride = 2 * c.time_stride, c.time_stride
        pad = True
        last_freq = freq and freqs <= c.kernel_size
        if last_freq:  # collapse the remaining bins with one full-height kernel
            ker, pad = freqs, False
        t_ker, t_stride = c.kernel_size, c.stride
        if last_freq and c.nfft == 2048:  # torchaudio's special case so time strides multiply to the hop
            t_ker, t_stride = 4, 2
        if last_freq:
            chout_z = max(chout, chout_z)
            chout = chout_z

        enc_pad = ker // 4 if pad else 0
        freq_enc.append(
            EncoderPlan(
                path=f"freq_encoder.{index}",
                chin=chin_z,
                chout=chout_z,
                kernel_size=ker,
                stride=stride,
                pad=enc_pad,
                freq=freq,
                empty=False,
                norm=norm,
                norm_groups=c.norm_groups,
                context=c.context_enc,
                rewrite=c.rewrite,
                dconv=_dconv_plan(c, chout_z, lstm=lstm, attn=attn) if enc_dconv else None,
            )
        )
        if freq:
            time_enc.append(
                EncoderPlan(
                    path=f"time_encoder.{index}",
                    chin=chin,
                    chout=chout,
                    kernel_size=t_ker,
                    stride=t_stride,
                    pad=t_ker // 4,
                    freq=False,
                    empty=last_freq,
                    norm=norm,
                    norm_groups=c.norm_groups,
                    context=c.context_enc,
                    rewrite=c.rewrite and not last_freq,
                    dconv=_dconv_plan(c, chout, lstm=lstm, attn=attn) if enc_dconv and not last_freq else None,
                )
            )
            time_downsampling *= t_stride
            if last_freq and time_downsampling != c.nfft // 4:
                raise ConfigError(
                    f"HDemucsConfig.nfft={c.nfft!r}/stride={c.stride!r}: the time branch downsamples by "
                    f"{time_downsampling} where it joins the frequency branch, but the STFT hop is "
                    f"nfft // 4 = {c.nfft // 4}"
                )
        if index == 0:
            chin = c.audio_channels * len(c.sources)
            chin_z = 2 * chin
        dec_pad = (ker - stride) // 2 if pad else 0
        freq_dec.insert(
            0,
            DecoderPlan(
                path=f"freq_decoder.{c.depth - 1 - index}",
                chin=chout_z,
                chout=chin_z,
                kernel_size=ker,
                stride=stride,
                pad=dec_pad,
                freq=freq,
                empty=False,
                last=index == 0,
                norm=norm,
                norm_groups=c.norm_groups,
                context=c.context,
                rewrite=c.rewrite,
                dconv=_dconv_plan(c, chout_z, lstm=lstm, attn=attn) if dec_dconv else None,
            ),
        )
        if freq:
            time_dec.insert(
                0,
                dict(
                    chin=chout,
                    chout=chin,
                    kernel_size=t_ker,
                    stride=t_stride,
                    pad=(t_ker - t_stride) // 2,
                    freq=False,
                    empty=last_freq,
                    last=index == 0,
                    norm=norm,
                    norm_groups=c.norm_groups,
                    context=c.context,
                    rewrite=c.rewrite and not last_freq,
                    dconv=_dconv_plan(c, chout, lstm=lstm, attn=attn) if dec_dconv and not last_freq else None,
                ),
            )
        chin, chin_z = chout, chout_z
        chout, chout_z = int(c.growth * chout), int(c.growth * chout_z)
        if freq:
            new_freqs = 1 if freqs <= c.kernel_size else freqs // stride
            enc_out = (freqs + 2 * enc_pad - ker) // stride + 1
            if not last_freq and (enc_out != new_freqs or (new_freqs - 1) * stride + ker - 2 * dec_pad != freqs):
                raise ConfigError(
                    f"HDemucsConfig.kernel_size={c.kernel_size!r}/stride={stride}: the layers cannot map {freqs} "
                    f"frequency bins to {new_freqs} and back (use kernel_size = 2 * stride)"
                )
            freqs = new_freqs
        if index == 0 and c.freq_emb:
            freq_emb = FreqEmbPlan(
                num_embeddings=freqs,
                dim=chin_z,
                scale=float(c.emb_scale),
                weight=float(c.freq_emb),
                smooth=bool(c.emb_smooth),
            )

    plan = HDemucsPlan(
        num_sources=len(c.sources),
        audio_channels=c.audio_channels,
        nfft=c.nfft,
        hop_length=c.nfft // 4,
        freq_encoder=tuple(freq_enc),
        time_encoder=tuple(time_enc),
        freq_decoder=tuple(freq_dec),
        # Numbered in execution order, like torchaudio's ModuleList after its inserts.
        time_decoder=tuple(DecoderPlan(path=f"time_decoder.{i}", **layer) for i, layer in enumerate(time_dec)),
        freq_emb=freq_emb,
    )
    _check_layers(plan)
    return plan


def _check_layers(plan: HDemucsPlan) -> None:
    for layer in (*plan.freq_encoder, *plan.time_encoder, *plan.freq_decoder, *plan.time_decoder):
        # The GroupNorms' widths: after the convolution (encoder `norm1`, decoder `norm2`) and after the rewrite
        # (encoder `norm2`, decoder `norm1`, 2x the channels, absent without a rewrite).
        if isinstance(layer, EncoderPlan):
            widths = (layer.chout, 2 * layer.chout) if layer.rewrite else (layer.chout,)
        else:
            widths = (2 * layer.chin, layer.chout) if layer.rewrite else (layer.chout,)
        if layer.norm and any(w % layer.norm_groups for w in widths):
            raise ConfigError(
                f"HDemucsConfig.norm_groups={layer.norm_groups!r}: does not divide the {widths} channels "
                f"of {layer.path}"
            )
        if (
            isinstance(layer, EncoderPlan)
            and not layer.freq
            and not -layer.stride <= 2 * layer.pad - layer.kernel_size < 0
        ):
            raise ConfigError(
                f"HDemucsConfig.time_stride/kernel_size: {layer.path} (kernel {layer.kernel_size}, stride "
                f"{layer.stride}) would not shorten its input exactly by its stride"
            )
        if not layer.freq and not layer.empty and (layer.kernel_size - layer.stride) % 2:
            raise ConfigError(
                f"HDemucsConfig.time_stride: {layer.path} has kernel {layer.kernel_size} and stride "
                f"{layer.stride}, whose difference must be even"
            )


def encoder_output_length(layer: EncoderPlan, length: int) -> int:
    """Frames out of a time-axis encoder layer (the input is right-padded to a multiple of the stride)."""
    padded = layer.stride * math.ceil(length / layer.stride)
    return (padded + 2 * layer.pad - layer.kernel_size) // layer.stride + 1
