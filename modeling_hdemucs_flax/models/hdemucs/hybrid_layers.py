"""Encoder and decoder layers of both branches (torchaudio `_HEncLayer` / `_HDecLayer`), channels-last.

Frequency-branch tensors are (batch, freq, frames, channels); time-branch tensors (batch, samples,
channels). Layers take their `EncoderPlan` / `DecoderPlan`, never the config.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
from jaxtyping import Array, Float

from ...errors import ConfigError
from ..common.layers import ArrayIn, Conv, ConvTranspose, DConv, Dtype, GroupNorm, SquareConv, gelu, glu
from .layer_plan import DConvPlan, DecoderPlan, EncoderPlan


def _norm(enabled: bool, groups: int, dtype: Dtype, name: str):
    return GroupNorm(groups, dtype=dtype, name=name) if enabled else (lambda x: x)


def _dconv(plan: DConvPlan, freq: bool, dtype: Dtype, dot_dtype: Dtype | None):
    """The layer's `DConv` as a function of (batch, [freq,] time, channels): over time, for every frequency bin
    of a frequency layer."""
    dconv = DConv(plan, dtype=dtype, dot_dtype=dot_dtype, name="dconv")

    def apply(y: ArrayIn) -> Array:
        if not freq:
            return dconv(y)
        b, f, t, c = y.shape
        return dconv(y.reshape(b * f, t, c)).reshape(b, f, t, c)

    return apply


class HEncLayer(nn.Module):
    """conv (stride) -> [+ injected time features] -> norm1 -> GELU -> [DConv] -> [rewrite -> norm2 -> GLU]."""

    plan: EncoderPlan
    dtype: Dtype = jnp.float32
    dot_dtype: Dtype | None = None  # mixed precision (see `layers.mixed_dot`): LSTMs and 1x1 convolutions

    @nn.compact
    def __call__(
        self, x: Float[ArrayIn, " batch *rest"], inject: Float[ArrayIn, " batch *inject"] | None = None
    ) -> Float[Array, " batch *out"]:
        p = self.plan
        if p.freq:
            conv = Conv(p.chout, (p.kernel_size, 1), (p.stride, 1), (p.pad, 0), dtype=self.dtype, name="conv")
        else:
            if x.ndim == 4:  # a time-axis layer of the frequency branch: (B, 1, T, C) -> (B, T, C)
                x = x[:, 0]
            if x.shape[1] % p.stride:  # torchaudio right-pads the time axis to a multiple of the stride
                x = jnp.pad(x, [(0, 0), (0, p.stride - x.shape[1] % p.stride), (0, 0)])
            conv = Conv(p.chout, (p.kernel_size,), (p.stride,), (p.pad,), dtype=self.dtype, name="conv")
        y = conv(x)
        if p.empty:
            # torchaudio builds `norm1` for empty layers too and never calls it; its parameters are kept
            # (unused) so that torchaudio -> Flax -> torchaudio conversion is exact.
            if p.norm and self.is_initializing():
                GroupNorm(p.norm_groups, name="norm1")(y)
            return y
        if inject is not None:
            if inject.shape[1] != y.shape[2]:
                raise ConfigError(
                    f"{p.path}: injected time features have {inject.shape[1]} frames, expected {y.shape[2]}"
                )
            y = y + inject[:, None]
        y = gelu(_norm(p.norm, p.norm_groups, self.dtype, "norm1")(y))
        if p.dconv is not None:
            y = _dconv(p.dconv, p.freq, self.dtype, self.dot_dtype)(y)
        if not p.rewrite:  # demucs's rewrite=False: the layer ends at the DConv
            return y
        k = 1 + 2 * p.context
        if p.freq:
            rewrite = SquareConv(2 * p.chout, k, dtype=self.dtype, name="rewrite")
        else:
            rewrite = Conv(2 * p.chout, (k,), padding=(p.context,), dtype=self.dtype, name="rewrite")
        return glu(_norm(p.norm, p.norm_groups, self.dtype, "norm2")(rewrite(y)))


class HDecLayer(nn.Module):
    """[+ skip -> [rewrite -> norm1 -> GLU] -> [DConv]] -> transposed conv -> norm2 -> crop -> GELU (except the
    last).

    Returns (output, pre) where `pre` is the input of the transposed convolution (torchaudio's `y`).
    """

    plan: DecoderPlan
    dtype: Dtype = jnp.float32
    dot_dtype: Dtype | None = None  # mixed precision (see `layers.mixed_dot`): the transposed convolution

    @nn.compact
    def __call__(
        self, x: Float[ArrayIn, " batch *rest"], skip: Float[ArrayIn, " batch *skip"] | None, length: int
    ) -> tuple[Float[Array, " batch *out"], Float[ArrayIn, " batch *pre"]]:  # pre: x itself in an empty layer
        p = self.plan
        if p.freq and x.ndim == 3:  # output of a time-axis layer of the frequency branch: (B, T, C) -> (B, 1, T, C)
            x = x[:, None]
        if p.empty:
            if skip is not None:
                raise ConfigError(f"{p.path}: an empty decoder layer takes no skip connection")
            y = x
        else:
            assert skip is not None, f"{p.path}: a decoder layer needs its skip connection"
            y = x + skip
            if p.rewrite:
                k = 1 + 2 * p.context
                if p.freq:
                    rewrite = SquareConv(2 * p.chin, k, dtype=self.dtype, name="rewrite")
                else:
                    rewrite = Conv(2 * p.chin, (k,), padding=(p.context,), dtype=self.dtype, name="rewrite")
                y = glu(_norm(p.norm, p.norm_groups, self.dtype, "norm1")(rewrite(y)))
            if p.dconv is not None:  # demucs's dconv_mode 2 and 3
                y = _dconv(p.dconv, p.freq, self.dtype, self.dot_dtype)(y)
        z = ConvTranspose(
            p.chout, p.kernel_size, p.stride, two_d=p.freq, dtype=self.dtype, dot_dtype=self.dot_dtype, name="conv_tr"
        )(y)
        z = _norm(p.norm, p.norm_groups, self.dtype, "norm2")(z)
        if p.freq:
            if p.pad:
                z = z[:, p.pad : -p.pad]
        else:
            z = z[:, p.pad : p.pad + length]
            if z.shape[1] != length:
                raise ConfigError(f"{p.path}: output has {z.shape[1]} steps, expected {length}")
        if not p.last:
            z = gelu(z)
        return z, y
