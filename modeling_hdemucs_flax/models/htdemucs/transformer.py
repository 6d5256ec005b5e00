"""HTDemucs's cross-domain transformer (demucs `transformer.py`) in Flax, eval mode, channels-last.

Tokens are (batch, tokens, channels) throughout. The frequency branch's map (batch, freq, frames, channels)
becomes frame-major tokens (token = frame * freq + bin), demucs's `b c fr t1 -> b (t1 fr) c`. Module and
parameter names mirror demucs's attribute paths (`layers_0/self_attn/in_proj_kernel` for
`layers.0.self_attn.in_proj_weight`), so conversion is a rename plus the layout changes the converter names.
Dropout is absent: inference only. Each block states the torch default it reproduces where Flax's differs.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Float32

from ..common.layers import ArrayIn, Dtype, GroupNorm, LayerScale, gelu
from .layer_plan import TransformerPlan

# nn.TransformerEncoderLayer / CrossTransformerEncoderLayer's LayerScale start (`init_values`); only a fresh init
# uses it, checkpoints bring their own scales.
LAYER_SCALE_INIT = 1e-4


def _rounded(values: np.ndarray) -> np.ndarray:
    """float64 -> the nearest float32 (correctly rounded)."""
    return values.astype(np.float32)


def sin_embedding(length: int, dim: int, max_period: float) -> Float32[np.ndarray, "length dim"]:
    """demucs `create_sin_embedding(length, dim, max_period=...)` (shift 0), as (length, dim) float32 numpy:
    [cos(phase), sin(phase)] with phase[p, i] = p / max_period ** (i / (dim / 2 - 1)).

    torch computes it in float32, and the phases of the first channels reach `length` radians, so one unit of
    rounding in a divisor moves late positions by ~1e-4: the float32 steps are replayed in order (the exponent
    i / (dim/2 - 1), its power, the division), each correctly rounded. torch's own float32 `pow` is within one
    unit but not always correctly rounded (5 of 256 divisors differ for dim 512), so the two agree to -112 dB at
    (1344, 512), the released htdemucs's time branch (-138 dB at (1344, 384)), not bit for bit; the whole model
    stays within 1 dB of demucs's own float32 error."""
    half = dim // 2
    exponent = np.arange(half, dtype=np.float32) / np.float32(half - 1)
    divisor = _rounded(np.float64(max_period) ** exponent.astype(np.float64))
    phase = np.arange(length, dtype=np.float32)[:, None] / divisor  # float32 division, as torch
    phase = phase.astype(np.float64)
    return _rounded(np.concatenate([np.cos(phase), np.sin(phase)], axis=-1))


def sin_embedding_2d(dim: int, height: int, width: int, max_period: float) -> Float32[np.ndarray, "height width dim"]:
    """demucs `create_2d_sin_embedding(dim, height, width, max_period=...)` moved channels-last: (height, width,
    dim) float32 numpy. The first dim/2 channels encode the width position (sin on even channels, cos on odd),
    the last dim/2 the height position, with frequencies exp(-2k log(max_period) / (dim/2)).

    Replayed as torch's float32 steps (scalar rounded to float32, product, exp correctly rounded, product with
    the position), for the same reason as `sin_embedding`."""
    half = dim // 2
    scale = np.float32(-(math.log(max_period) / half))
    frequency = _rounded(np.exp((np.arange(0, half, 2, dtype=np.float32) * scale).astype(np.float64)))
    pe = np.zeros((height, width, dim), np.float32)
    along_w = (np.arange(width, dtype=np.float32)[:, None] * frequency).astype(np.float64)  # (width, half / 2)
    along_h = (np.arange(height, dtype=np.float32)[:, None] * frequency).astype(np.float64)
    pe[:, :, 0:half:2] = _rounded(np.sin(along_w))[None]
    pe[:, :, 1:half:2] = _rounded(np.cos(along_w))[None]
    pe[:, :, half::2] = _rounded(np.sin(along_h))[:, None]
    pe[:, :, half + 1 :: 2] = _rounded(np.cos(along_h))[:, None]
    return pe


# Queries per block of `attention` on the CPU (see there).
QUERY_BLOCK = 128


def attention(
    q: Float[Array, "batch queries heads depth"],
    k: Float[Array, "batch keys heads depth"],
    v: Float[Array, "batch keys heads depth"],
) -> Float[Array, "batch queries heads depth"]:
    """softmax(q k^T / sqrt(depth)) v per head, the softmax in float32 (torch's eval-mode attention).

    Heads are moved in front before the two products: on this project's 2-core CPU (XLA:CPU, float32, exact),
    for one attention of the full-size model's shapes, (1, 2688 | 1344, 8, 64) queries against 2688 | 1344 keys,
    that was 1.7-1.8x faster than the same einsums over (batch, tokens, heads, depth) and than
    `jax.nn.dot_product_attention(..., implementation="xla")`: medians of 10 interleaved runs, 230 / 390 / 412 ms
    at 2688x2688, 162 / 285 / 278 ms at 2688x1344, 171 / 291 / 283 ms at 1344x2688, 84 / 145 / 142 ms at
    1344x1344 (an earlier, busier run gave the same order). All three agree with torch's
    `scaled_dot_product_attention` to -126 dB.

    On the CPU the queries then go `QUERY_BLOCK` at a time (`lax.map`), each block against every key, so the
    (heads, block, keys) logits stay a few MB instead of 230 MB at 2688x2688: the same arithmetic for every
    output row, so bit-identical, and 1.25-1.4x faster on the 2-core Xeon (medians of 5 interleaved runs, whole
    attention vs blocks of 128: 173 -> 125 ms at 2688x2688, 91 -> 63 at 2688x1344, 89 -> 71 at 1344x2688, 48 -> 35
    at 1344x1344; blocks of 64 gain nothing, 192 about the same as 128). Accelerators keep the one batched
    product they are built for."""
    q, k, v = (jnp.swapaxes(a, 1, 2) for a in (q, k, v))  # (batch, heads, tokens, depth)
    scale = np.float32(q.shape[-1] ** -0.5)

    # Rematerialised under differentiation (training): the backward pass recomputes each block's softmax instead
    # of keeping every block's logits and weights, which at the full-size model's shapes would be the whole
    # (heads, tokens, tokens) matrices again (HTDemucs, 4 examples of 7.8 s: 37 GB on the CPU). A forward pass
    # alone (separation) compiles to the same program as without it.
    @functools.partial(jax.checkpoint, prevent_cse=False)
    def attend(queries: Array) -> Array:
        logits = jnp.einsum("bhqd,bhkd->bhqk", queries, k).astype(jnp.float32) * scale
        weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
        return jnp.einsum("bhqk,bhkd->bhqd", weights, v)

    b, h, n, d = q.shape
    if jax.default_backend() != "cpu" or n <= QUERY_BLOCK:
        return jnp.swapaxes(attend(q), 1, 2)
    pad = -n % QUERY_BLOCK
    blocks = jnp.pad(q, ((0, 0), (0, 0), (0, pad), (0, 0))).reshape(b, h, -1, QUERY_BLOCK, d)
    out = jax.lax.map(attend, jnp.moveaxis(blocks, 2, 0))  # (blocks, batch, heads, block, depth)
    out = jnp.moveaxis(out, 0, 2).reshape(b, h, n + pad, d)[:, :, :n]
    return jnp.swapaxes(out, 1, 2)


class MultiheadAttention(nn.Module):
    """torch `nn.MultiheadAttention(dim, heads, batch_first=True)` in eval mode, key = value.

    Parameters: `in_proj_kernel` (dim, 3 dim) and `in_proj_bias` (3 dim,), torch's `in_proj_weight` transposed
    (query, key and value projections side by side), and `out_proj` (a Dense). Channel h * depth + i belongs to
    head h, as in torch's `view(..., heads, depth)`.
    """

    dim: int
    heads: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self, query: Float[ArrayIn, "batch queries dim"], key: Float[ArrayIn, "batch keys dim"] | None = None
    ) -> Float[Array, "batch queries dim"]:
        """Self-attention when `key` is None (one fused projection), else attention from `query` to `key`."""
        d = self.dim
        kernel = self.param("in_proj_kernel", nn.initializers.xavier_uniform(), (d, 3 * d), jnp.float32)
        bias = self.param("in_proj_bias", nn.initializers.zeros, (3 * d,), jnp.float32)
        kernel, bias = kernel.astype(self.dtype), bias.astype(self.dtype)
        query = jnp.asarray(query, self.dtype)
        if key is None:
            q, k, v = jnp.split(query @ kernel + bias, 3, axis=-1)
        else:
            key = jnp.asarray(key, self.dtype)
            q = query @ kernel[:, :d] + bias[:d]
            k, v = jnp.split(key @ kernel[:, d:] + bias[d:], 2, axis=-1)
        b, nq, nk = q.shape[0], q.shape[1], k.shape[1]
        depth = d // self.heads
        heads = self.heads
        out = attention(q.reshape(b, nq, heads, depth), k.reshape(b, nk, heads, depth), v.reshape(b, nk, heads, depth))
        return nn.Dense(d, dtype=self.dtype, param_dtype=jnp.float32, name="out_proj")(out.reshape(b, nq, d))


def _norm(groups: int, dtype: Dtype, name: str) -> Callable[[Array], Array]:
    """torch `nn.LayerNorm(dim)` (eps 1e-5, Flax's default is 1e-6; two-pass variance, as torch) when `groups`
    is 0, else demucs `MyGroupNorm(groups, dim)`: GroupNorm over every token and the group's channels."""
    if groups:
        return GroupNorm(groups, dtype=dtype, name=name)
    return nn.LayerNorm(epsilon=1e-5, use_fast_variance=False, dtype=dtype, param_dtype=jnp.float32, name=name)


def _feed_forward(x: Array, plan: TransformerPlan, dtype: Dtype) -> Array:
    """demucs `_ff_block`, `linear2(activation(linear1(x)))` with GELU (torch's exact erf form) or ReLU. Call it
    inside a layer's compact method: the Dense layers take demucs's names `linear1` / `linear2` in that layer."""
    y = nn.Dense(plan.hidden, dtype=dtype, param_dtype=jnp.float32, name="linear1")(x)
    y = gelu(y) if plan.gelu else jax.nn.relu(y)
    return nn.Dense(plan.dim, dtype=dtype, param_dtype=jnp.float32, name="linear2")(y)


def _identity(x: Array) -> Array:
    return x


def _scale(plan: TransformerPlan, name: str) -> Callable[[Array], Array]:
    """LayerScale `name` (demucs `LayerScale(dim, 1e-4, channel_last=True)`) or the identity."""
    return LayerScale(LAYER_SCALE_INIT, name=name) if plan.layer_scale else _identity


class TransformerEncoderLayer(nn.Module):
    """demucs `MyTransformerEncoderLayer` (self-attention), eval mode, on (batch, tokens, dim).

    Pre-norm (`norm_first`): x += gamma_1(attn(norm1(x))); x += gamma_2(ff(norm2(x))); x = norm_out(x).
    Post-norm: x = norm1(x + gamma_1(attn(x))); x = norm2(x + gamma_2(ff(x))).
    """

    plan: TransformerPlan
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Float[ArrayIn, "batch tokens dim"]) -> Float[Array, "batch tokens dim"]:
        p = self.plan
        x = jnp.asarray(x, self.dtype)
        norm1, norm2 = _norm(p.group_norm, self.dtype, "norm1"), _norm(p.group_norm, self.dtype, "norm2")
        attn = MultiheadAttention(p.dim, p.heads, dtype=self.dtype, name="self_attn")
        gamma_1, gamma_2 = _scale(p, "gamma_1"), _scale(p, "gamma_2")
        if p.norm_first:
            x = x + gamma_1(attn(norm1(x)))
            x = x + gamma_2(_feed_forward(norm2(x), p, self.dtype))
            if p.norm_out:
                x = GroupNorm(p.norm_out, dtype=self.dtype, name="norm_out")(x)
        else:
            x = norm1(x + gamma_1(attn(x)))
            x = norm2(x + gamma_2(_feed_forward(x, p, self.dtype)))
        return x


class CrossTransformerEncoderLayer(nn.Module):
    """demucs `CrossTransformerEncoderLayer`, eval mode: tokens `q` (batch, n, dim) attend to `k` (batch, m, dim).

    Pre-norm: x = q + gamma_1(attn(norm1(q), norm2(k))); x += gamma_2(ff(norm3(x))); x = norm_out(x).
    Post-norm: x = norm1(q + gamma_1(attn(q, k))); x = norm2(x + gamma_2(ff(x))) (demucs builds `norm3` there
    too and never calls it: the converter lists it as unused).
    """

    plan: TransformerPlan
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self, q: Float[ArrayIn, "batch n dim"], k: Float[ArrayIn, "batch m dim"]
    ) -> Float[Array, "batch n dim"]:
        p = self.plan
        q, k = jnp.asarray(q, self.dtype), jnp.asarray(k, self.dtype)
        norm1, norm2 = _norm(p.group_norm, self.dtype, "norm1"), _norm(p.group_norm, self.dtype, "norm2")
        attn = MultiheadAttention(p.dim, p.heads, dtype=self.dtype, name="cross_attn")
        gamma_1, gamma_2 = _scale(p, "gamma_1"), _scale(p, "gamma_2")
        if p.norm_first:
            x = q + gamma_1(attn(norm1(q), norm2(k)))
            x = x + gamma_2(_feed_forward(_norm(p.group_norm, self.dtype, "norm3")(x), p, self.dtype))
            if p.norm_out:
                x = GroupNorm(p.norm_out, dtype=self.dtype, name="norm_out")(x)
        else:
            x = norm1(q + gamma_1(attn(q, k)))
            x = norm2(x + gamma_2(_feed_forward(x, p, self.dtype)))
        return x


def frequency_tokens(x: Float[Array, "batch freq frames dim"]) -> Float[Array, "batch tokens dim"]:
    """(batch, freq, frames, dim) -> frame-major tokens (batch, frames * freq, dim): demucs's
    `b c fr t1 -> b (t1 fr) c` in channels-last layout."""
    b, f, t, c = x.shape
    return jnp.swapaxes(x, 1, 2).reshape(b, t * f, c)


class CrossTransformerEncoder(nn.Module):
    """demucs `CrossTransformerEncoder` (eval mode, t_emb="sin"): two stacks of layers, `layers_N` over the
    frequency branch's tokens and `layers_t_N` over the time branch's, alternating self-attention layers with
    cross-attention layers in which each branch attends to the other's tokens as they were before the layer.

    x: (batch, freq, frames, dim); xt: (batch, steps, dim). Returns both, same shapes. Before the layers each
    branch is normalised (`norm_in` / `norm_in_t`) and gets `weight_pos_embed` times its sinusoidal embedding:
    2-D (bin, frame) for x, 1-D (step) for xt.
    """

    plan: TransformerPlan
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self, x: Float[ArrayIn, "batch freq frames dim"], xt: Float[ArrayIn, "batch steps dim"]
    ) -> tuple[Float[Array, "batch freq frames dim"], Float[Array, "batch steps dim"]]:
        p = self.plan
        x, xt = jnp.asarray(x, self.dtype), jnp.asarray(xt, self.dtype)
        b, f, t1, c = x.shape
        t2 = xt.shape[1]

        def norm_in(name: str) -> Callable[[Array], Array]:
            if p.norm_in:
                return _norm(0, self.dtype, name)
            return GroupNorm(p.norm_in_groups, dtype=self.dtype, name=name) if p.norm_in_groups else _identity

        weight = np.float32(p.weight_pos_embed)
        pos_2d = frequency_tokens(jnp.asarray(sin_embedding_2d(c, f, t1, p.max_period))[None])
        x = norm_in("norm_in")(frequency_tokens(x)) + (weight * pos_2d).astype(self.dtype)
        pos_1d = sin_embedding(t2, c, p.max_period)
        xt = norm_in("norm_in_t")(xt) + jnp.asarray(weight * pos_1d, self.dtype)[None]

        for index in range(p.layers):
            if p.is_cross(index):
                old_x = x
                x = CrossTransformerEncoderLayer(p, dtype=self.dtype, name=f"layers_{index}")(x, xt)
                xt = CrossTransformerEncoderLayer(p, dtype=self.dtype, name=f"layers_t_{index}")(xt, old_x)
            else:
                x = TransformerEncoderLayer(p, dtype=self.dtype, name=f"layers_{index}")(x)
                xt = TransformerEncoderLayer(p, dtype=self.dtype, name=f"layers_t_{index}")(xt)
        # tokens back to (batch, freq, frames, dim): demucs's `b (t1 fr) c -> b c fr t1`
        return jnp.swapaxes(x.reshape(b, t1, f, c), 1, 2), xt
