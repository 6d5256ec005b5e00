"""The one place that derives HTDemucs's architecture from its config, and the checks that refuse the rest.

`plan_htdemucs(config)` replays the layer loop of demucs's `HTDemucs.__init__` (demucs 4.1.0, `htdemucs.py`) and
returns a frozen, hashable plan: every encoder/decoder layer as the shared `EncoderPlan` / `DecoderPlan` (so the
HDemucs layers run them), the transformer as a `TransformerPlan`, and the training length. The modules and the
weight converter read the plan; nothing else re-derives the architecture. Standard library only (the command
line can check a config.json before JAX or transformers load).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from ...errors import ConfigError
from ..hdemucs.config_rules import SAMPLING_RATES, check_source_names
from ..hdemucs.layer_plan import DConvPlan, DecoderPlan, EncoderPlan, FreqEmbPlan

CONFIG_NAME = "HTDemucsConfig"

# demucs's defaults for the CAPE positional embedding (HTDemucs.__init__); they matter only for t_emb="cape",
# which is not supported, so anything else is refused rather than silently ignored.
CAPE_DEFAULTS: dict[str, Any] = {
    "t_cape_mean_normalize": True,
    "t_cape_augment": True,
    "t_cape_glob_loc_scale": [5000.0, 1.0, 1.4],
}


@dataclass(frozen=True)
class TransformerPlan:
    """demucs `CrossTransformerEncoder` (eval mode), with the layer options resolved to plain values."""

    dim: int  # channels of the tokens (bottom_channels, or the deepest encoder's width)
    hidden: int  # feed-forward width, int(dim * t_hidden_scale)
    heads: int
    layers: int  # per branch; the frequency and time branches have one stack each
    cross_first: bool  # layer 0 is a cross-attention layer (else layers alternate self, cross, self, ...)
    norm_in: bool  # LayerNorm on the tokens before the positional embedding ...
    norm_in_groups: int  # ... else GroupNorm with this many groups over (tokens, channels); 0: none
    group_norm: int  # the layers' norms: GroupNorm with this many groups over (tokens, channels); 0: LayerNorm
    norm_first: bool  # pre-norm layers (else post-norm)
    norm_out: int  # GroupNorm with this many groups at the end of every pre-norm layer; 0: none
    layer_scale: bool  # LayerScale on both residual branches
    gelu: bool  # exact GELU in the feed-forward block (else ReLU)
    weight_pos_embed: float  # the positional embeddings are added times this
    max_period: float  # of the sinusoidal embeddings

    def is_cross(self, index: int) -> bool:
        """Whether layer `index` is a cross-attention layer (demucs: `idx % 2 != classic_parity`)."""
        return index % 2 != (1 if self.cross_first else 0)


@dataclass(frozen=True)
class HTDemucsPlan:
    num_sources: int
    audio_channels: int
    nfft: int
    hop_length: int
    encoder: tuple[EncoderPlan, ...]  # frequency branch, demucs paths "encoder.N"
    tencoder: tuple[EncoderPlan, ...]  # time branch, "tencoder.N"
    decoder: tuple[DecoderPlan, ...]  # in execution order, deepest first (demucs's order)
    tdecoder: tuple[DecoderPlan, ...]
    freq_emb: FreqEmbPlan | None
    bottom_channels: int  # 0: no channel up/downsampler around the transformer
    encoder_channels: int  # width of the deepest encoder layers (both branches)
    transformer: TransformerPlan
    training_length: int | None  # samples every input is padded to (use_train_segment); None: as given

    @property
    def depth(self) -> int:
        return len(self.encoder)


def exact_segment(segment: float | Fraction, samplerate: int) -> Fraction:
    """`segment` (seconds) as the exact rational demucs holds. A `Fraction` is kept; a float (what a config.json
    stores) is taken as the fraction with denominator <= `samplerate` it is the nearest float to, when there is
    one (a released model's Fraction(39, 5) comes back as 7.8 and leaves as 39/5), else as its exact binary
    value."""
    if isinstance(segment, Fraction):
        return segment
    value = Fraction(segment)
    nearest = value.limit_denominator(samplerate)
    return nearest if float(nearest) == float(segment) else value


def training_length(config: Any) -> int | None:
    """demucs's `int(segment * samplerate)` (exact: see `exact_segment`), or None without `use_train_segment`."""
    if not config.use_train_segment:
        return None
    return math.floor(exact_segment(config.segment, config.samplerate) * config.samplerate)


def _is_int(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _is_number(value: Any, low: float, high: float) -> bool:
    if not isinstance(value, (int, float, Fraction)) or isinstance(value, bool):
        return False
    return math.isfinite(value) and low <= value <= high


def _is_bool_or_int(value: Any, high: int) -> bool:
    """demucs passes some switches through `int(...)` as a group count: False/True or 0..high."""
    return isinstance(value, bool) or _is_int(value, 0, high)


def check_config(config: Any) -> None:
    """Raise `ConfigError` (one line naming the field) unless `config` describes an HTDemucs this port runs.

    First the options released models do not use, refused by name with the supported value; then every field's
    type and range; then the layer plan (which refuses what depends on several fields at once)."""

    def need(ok: bool, field: str, rule: str) -> None:
        if not ok:
            raise ConfigError(f"{CONFIG_NAME}.{field}={getattr(config, field)!r}: {rule}")

    def supported(ok: bool, field: str, what: str) -> None:
        need(ok, field, f"not supported ({what})")

    supported(config.cac is True, "cac", "only complex-as-channels spectrograms, cac=True")
    supported(config.wiener_iters == 0, "wiener_iters", "no Wiener filtering: wiener_iters=0")
    supported(config.end_iters == 0, "end_iters", "no Wiener filtering: end_iters=0")
    supported(not config.multi_freqs, "multi_freqs", "no frequency-band split: multi_freqs=None or []")
    supported(config.t_emb == "sin", "t_emb", 'only the sinusoidal positional embedding, t_emb="sin"')
    supported(config.t_sparse_self_attn is False, "t_sparse_self_attn", "dense attention only: false")
    supported(config.t_sparse_cross_attn is False, "t_sparse_cross_attn", "dense attention only: false")
    for field, default in CAPE_DEFAULTS.items():
        value = getattr(config, field)
        value = list(value) if isinstance(value, (list, tuple)) else value
        supported(value == default, field, f"CAPE embeddings are not supported; keep the default {default!r}")
    supported(
        config.t_sin_random_shift == 0,
        "t_sin_random_shift",
        "demucs shifts the positional embedding at random even at inference; only 0 is deterministic",
    )
    supported(
        config.channels_time is None or config.channels_time == config.channels,
        "channels_time",
        "the time branch has `channels` channels: None",
    )
    supported(config.rewrite is True, "rewrite", "every layer has its rewrite convolution: true")
    need(_is_int(config.t_layers, 1, 64), "t_layers", "must be an int in [1, 64] (the transformer is required)")
    need(config.dconv_mode in (0, 1, 2, 3), "dconv_mode", "must be 0, 1 (encoder), 2 (decoder) or 3 (both)")

    check_source_names(config.sources, CONFIG_NAME)
    need(_is_int(config.audio_channels, 1, 8), "audio_channels", "must be an int in [1, 8]")
    need(_is_int(config.channels, 1, 1024), "channels", "must be an int in [1, 1024]")
    need(_is_number(config.growth, 1e-3, 16), "growth", "must be a number in (0, 16]")
    need(_is_int(config.depth, 1, 16), "depth", "must be an int in [1, 16]")
    need(
        _is_int(config.nfft, 16, 1 << 16) and config.nfft & (config.nfft - 1) == 0,
        "nfft",
        "must be a power of two in [16, 65536]",
    )
    need(_is_number(config.freq_emb, 0, 1e3), "freq_emb", "must be a finite number in [0, 1000]")
    need(_is_number(config.emb_scale, 1e-6, 1e6), "emb_scale", "must be a finite number > 0")
    need(isinstance(config.emb_smooth, bool), "emb_smooth", "must be true or false")
    need(_is_int(config.stride, 1, 64), "stride", "must be an int in [1, 64]")
    need(_is_int(config.kernel_size, 1, 256), "kernel_size", "must be an int in [1, 256]")
    need(_is_int(config.time_stride, 1, 64), "time_stride", "must be an int in [1, 64]")
    need(_is_int(config.context, 0, 64), "context", "must be an int in [0, 64]")
    need(_is_int(config.context_enc, 0, 64), "context_enc", "must be an int in [0, 64]")
    need(_is_int(config.norm_starts, 0, 64), "norm_starts", "must be an int in [0, 64]")
    need(_is_int(config.norm_groups, 1, 1024), "norm_groups", "must be an int in [1, 1024]")
    need(_is_int(config.dconv_depth, -16, 16), "dconv_depth", "must be an int in [-16, 16] (negative: no dilation)")
    need(_is_number(config.dconv_comp, 1e-3, 1024), "dconv_comp", "must be a number in (0, 1024]")
    need(_is_number(config.dconv_init, -1e3, 1e3), "dconv_init", "must be a finite number")
    need(_is_int(config.bottom_channels, 0, 16384), "bottom_channels", "must be an int in [0, 16384] (0: none)")
    need(_is_number(config.t_hidden_scale, 1e-3, 64), "t_hidden_scale", "must be a number in (0, 64]")
    need(_is_int(config.t_heads, 1, 1024), "t_heads", "must be an int in [1, 1024]")
    need(_is_number(config.t_dropout, 0, 1), "t_dropout", "must be a number in [0, 1] (unused at inference)")
    for field in ("t_norm_in", "t_norm_first", "t_layer_scale", "t_gelu", "t_cross_first", "use_train_segment"):
        need(isinstance(getattr(config, field), bool), field, "must be true or false")
    for field in ("t_norm_in_group", "t_group_norm", "t_norm_out"):
        need(_is_bool_or_int(getattr(config, field), 1024), field, "must be true, false or a group count")
    need(_is_number(config.t_max_period, 1e-6, 1e12), "t_max_period", "must be a finite number > 0")
    need(_is_number(config.t_weight_pos_embed, -1e6, 1e6), "t_weight_pos_embed", "must be a finite number")
    need(_is_int(config.samplerate, *SAMPLING_RATES), "samplerate", f"must be an int in {list(SAMPLING_RATES)} (Hz)")
    need(_is_number(config.segment, 1e-3, 3600), "segment", "must be a number of seconds in (0, 3600]")
    plan_htdemucs(config)


def _dconv_plan(config: Any, channels: int) -> DConvPlan:
    """demucs `DConv(channels, depth=dconv_depth, compress=dconv_comp, init=dconv_init, gelu=True)`: HTDemucs
    passes neither `lstm` nor `attn`, so its branches are conv -> norm -> GELU -> 1x1 conv -> norm -> GLU -> scale."""
    hidden = int(channels / config.dconv_comp)
    if config.dconv_depth and hidden < 1:
        raise ConfigError(f"{CONFIG_NAME}.dconv_comp={config.dconv_comp!r}: leaves {channels} channels no hidden unit")
    return DConvPlan(
        channels=channels,
        hidden=hidden,
        depth=abs(config.dconv_depth),
        dilate=config.dconv_depth > 0,
        lstm=False,
        attn=False,
        init=float(config.dconv_init),
    )


def plan_htdemucs(config: Any) -> HTDemucsPlan:
    """Derive the plan of `demucs.htdemucs.HTDemucs(**config.demucs_kwargs())`.

    Raises `ConfigError` naming a field when demucs would build a model that cannot run, or one whose frequency
    branch collapses to a single bin and merges into the time branch (demucs builds those, but no released model
    does, and its transformer then sees no frequency axis): released models keep nfft / 2 / stride**depth bins
    (4096 / 2 / 4**4 = 8).
    """
    c = config
    enc: list[EncoderPlan] = []
    tenc: list[EncoderPlan] = []
    dec: list[dict[str, Any]] = []  # built outermost first, numbered once all are known (demucs inserts at 0)
    tdec: list[dict[str, Any]] = []
    freq_emb = None
    chin, chout = c.audio_channels, c.channels
    chin_z, chout_z = 2 * chin, c.channels  # complex as channels: real and imaginary parts
    freqs = c.nfft // 2
    enc_dconv, dec_dconv = bool(c.dconv_mode & 1), bool(c.dconv_mode & 2)
    for index in range(c.depth):
        if freqs <= c.kernel_size:
            raise ConfigError(
                f"{CONFIG_NAME}.depth={c.depth!r}: layer {index} would collapse the remaining {freqs} frequency bins "
                f"(nfft={c.nfft}, stride={c.stride}, kernel_size={c.kernel_size}) and merge the branches; "
                "not supported (released models keep 8 bins: nfft 4096, depth 4)"
            )
        pad = c.kernel_size // 4
        new_freqs = (freqs + 2 * pad - c.kernel_size) // c.stride + 1
        if new_freqs * c.stride != freqs or (new_freqs - 1) * c.stride + c.kernel_size - 2 * pad != freqs:
            raise ConfigError(
                f"{CONFIG_NAME}.kernel_size={c.kernel_size!r}/stride={c.stride!r}: the layers cannot map {freqs} "
                f"frequency bins to {freqs // c.stride} and back (use kernel_size = 2 * stride)"
            )
        norm = index >= c.norm_starts
        common = dict(kernel_size=c.kernel_size, stride=c.stride, pad=pad, empty=False, norm=norm, rewrite=True)
        common.update(norm_groups=c.norm_groups)
        enc.append(
            EncoderPlan(
                path=f"encoder.{index}",
                chin=chin_z,
                chout=chout_z,
                freq=True,
                context=c.context_enc,
                dconv=_dconv_plan(c, chout_z) if enc_dconv else None,
                **common,
            )
        )
        tenc.append(
            EncoderPlan(
                path=f"tencoder.{index}",
                chin=chin,
                chout=chout,
                freq=False,
                context=c.context_enc,
                dconv=_dconv_plan(c, chout) if enc_dconv else None,
                **common,
            )
        )
        if index == 0:
            chin = c.audio_channels * len(c.sources)
            chin_z = 2 * chin
        last = index == 0
        dec.insert(
            0,
            dict(chin=chout_z, chout=chin_z, freq=True, last=last, context=c.context, **common)
            | {"dconv": _dconv_plan(c, chout_z) if dec_dconv else None},
        )
        tdec.insert(
            0,
            dict(chin=chout, chout=chin, freq=False, last=last, context=c.context, **common)
            | {"dconv": _dconv_plan(c, chout) if dec_dconv else None},
        )
        chin, chin_z = chout, chout_z
        chout, chout_z = int(c.growth * chout), int(c.growth * chout_z)
        freqs = new_freqs
        if index == 0 and c.freq_emb:
            freq_emb = FreqEmbPlan(
                num_embeddings=freqs,
                dim=chin_z,
                scale=float(c.emb_scale),
                weight=float(c.freq_emb),
                smooth=bool(c.emb_smooth),
            )

    # demucs sizes the transformer from the arguments, not from the layers it built: they must agree.
    declared = c.channels * c.growth ** (c.depth - 1)
    if declared != chin_z:
        raise ConfigError(
            f"{CONFIG_NAME}.growth={c.growth!r}: the deepest layers have {chin_z} channels but demucs sizes its "
            f"transformer for channels * growth ** (depth - 1) = {declared}"
        )
    dim = c.bottom_channels or chin_z
    transformer = TransformerPlan(
        dim=dim,
        hidden=int(dim * c.t_hidden_scale),
        heads=c.t_heads,
        layers=c.t_layers,
        cross_first=c.t_cross_first,
        norm_in=c.t_norm_in,
        norm_in_groups=0 if c.t_norm_in else int(c.t_norm_in_group),
        group_norm=int(c.t_group_norm),
        norm_first=c.t_norm_first,
        # demucs tests `norm_first & norm_out` bitwise: a group count of 2 with norm_first=True gives no norm_out.
        norm_out=int(c.t_norm_out) if int(c.t_norm_first) & int(c.t_norm_out) else 0,
        layer_scale=c.t_layer_scale,
        gelu=c.t_gelu,
        weight_pos_embed=float(c.t_weight_pos_embed),
        max_period=float(c.t_max_period),
    )
    if dim % c.t_heads:
        raise ConfigError(f"{CONFIG_NAME}.t_heads={c.t_heads!r}: does not divide the transformer's {dim} channels")
    if dim % 4:
        field = "bottom_channels" if c.bottom_channels else "channels"
        raise ConfigError(
            f"{CONFIG_NAME}.{field}={getattr(c, field)!r}: the transformer's {dim} channels must be a multiple of 4 "
            "(its 2-D sinusoidal embedding)"
        )
    if transformer.hidden < 1:
        raise ConfigError(f"{CONFIG_NAME}.t_hidden_scale={c.t_hidden_scale!r}: leaves no feed-forward unit")
    for groups, field in (
        (transformer.group_norm, "t_group_norm"),
        (transformer.norm_out, "t_norm_out"),
        (transformer.norm_in_groups, "t_norm_in_group"),
    ):
        if groups and dim % groups:
            raise ConfigError(f"{CONFIG_NAME}.{field}={groups!r}: does not divide the transformer's {dim} channels")

    plan = HTDemucsPlan(
        num_sources=len(c.sources),
        audio_channels=c.audio_channels,
        nfft=c.nfft,
        hop_length=c.nfft // 4,
        encoder=tuple(enc),
        tencoder=tuple(tenc),
        decoder=tuple(DecoderPlan(path=f"decoder.{i}", **layer) for i, layer in enumerate(dec)),
        tdecoder=tuple(DecoderPlan(path=f"tdecoder.{i}", **layer) for i, layer in enumerate(tdec)),
        freq_emb=freq_emb,
        bottom_channels=c.bottom_channels,
        encoder_channels=chin_z,
        transformer=transformer,
        training_length=training_length(c),
    )
    _check_layers(plan)
    return plan


def _check_layers(plan: HTDemucsPlan) -> None:
    for layer in (*plan.encoder, *plan.tencoder, *plan.decoder, *plan.tdecoder):
        widths = (layer.chout, 2 * layer.chout) if isinstance(layer, EncoderPlan) else (2 * layer.chin, layer.chout)
        if layer.norm and any(w % layer.norm_groups for w in widths):
            raise ConfigError(
                f"{CONFIG_NAME}.norm_groups={layer.norm_groups!r}: does not divide the {widths} channels of "
                f"{layer.path}"
            )
        if not layer.freq and not -layer.stride <= 2 * layer.pad - layer.kernel_size < 0:
            raise ConfigError(
                f"{CONFIG_NAME}.kernel_size/stride: {layer.path} (kernel {layer.kernel_size}, stride {layer.stride}) "
                "would not shorten its input exactly by its stride"
            )
