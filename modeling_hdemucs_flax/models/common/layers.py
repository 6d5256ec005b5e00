"""Small torch-faithful building blocks, channels-last: (batch, [freq,] time, channels).

Each one states the torch default it reproduces where Flax's default differs.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jaxtyping import Array, Float

from ...models.hdemucs.layer_plan import ATTN_DECAYS, ATTN_HEADS, DCONV_KERNEL, LSTM_LAYERS, LSTM_MAX_STEPS, DConvPlan

Dtype = Any
# What the layers take: a jax array (a tracer under jit) or a numpy array (eager calls, the parity tests).
ArrayIn = Array | np.ndarray


_SUM_BLOCK = 64


def accurate_sum(x: Float[Array, "*shape"], axis: int) -> Float[Array, "*reduced"]:
    """Sum along `axis` in nested blocks of 64, so float32 rounding grows with log(n), not n.

    XLA:CPU accumulates a strided reduction axis sequentially; over the ~10^4-10^6 positions of a GroupNorm
    or of the input normalisation that costs 1e-6 relative error (about -110 dB), while torch's cascaded
    sums stay near 1e-8. Zero padding to a whole number of blocks leaves the sum unchanged.

    Each level's partial sums pass through `lax.optimization_barrier`: without it, under `jit`, XLA's
    simplifier merges the nested reduces (and the reshapes between them) back into one reduce over the whole
    axis whenever no padding separates them, and the blocking is lost (a jitted GroupNorm over 1344 x 8
    values measured -108 dB against -145 dB eager). The barrier keeps only the small partial sums apart.
    """
    axis %= x.ndim
    while x.shape[axis] > _SUM_BLOCK:
        pad = -x.shape[axis] % _SUM_BLOCK
        if pad:
            x = jnp.pad(x, [(0, pad) if i == axis else (0, 0) for i in range(x.ndim)])
        x = x.reshape(*x.shape[:axis], -1, _SUM_BLOCK, *x.shape[axis + 1 :]).sum(axis=axis + 1)
        x = lax.optimization_barrier(x)
    return x.sum(axis=axis)


def gelu(x: Float[Array, "*shape"]) -> Float[Array, "*shape"]:
    """torch's `F.gelu` / `nn.GELU()`, exact: `0.5 * x * (1 + erf(x / sqrt(2)))`, torch's own formula.

    Flax's `nn.gelu` defaults to the tanh approximation; `jax.nn.gelu(approximate=False)` is exact too but is
    built on `erfc`, which XLA:CPU expands to about 5x the work of `erf`.
    """
    return (0.5 * x * (1 + lax.erf(x * np.float32(0.5**0.5)))).astype(x.dtype)


def mixed_dot(x: ArrayIn, w: ArrayIn, dot_dtype: Dtype) -> Array:
    """x (..., in) @ w (in, out) with both inputs in `dot_dtype` and float32 accumulation and output.

    Always one 2-D dot: XLA:CPU runs bfloat16 x bfloat16 -> float32 fast only there (batched dots with these
    types are unimplemented in its DotThunk).
    """
    y = jnp.dot(x.reshape(-1, x.shape[-1]).astype(dot_dtype), w.astype(dot_dtype), preferred_element_type=jnp.float32)
    return y.reshape(*x.shape[:-1], w.shape[-1])


class Conv1x1(nn.Module):
    """torch `Conv1d(in, features, 1)` as `mixed_dot`; kernel (1, in, out) like `Conv`'s (same parameters)."""

    features: int
    dot_dtype: Dtype

    @nn.compact
    def __call__(self, x: ArrayIn) -> Array:
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (1, x.shape[-1], self.features), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
        return mixed_dot(x, kernel[0], self.dot_dtype) + bias


def glu(x: Float[Array, "*batch channels"]) -> Float[Array, "*batch half"]:
    """torch's `F.glu(x, dim=channels)`: first half times sigmoid of the second half."""
    a, b = jnp.split(x, 2, axis=-1)
    return a * jax.nn.sigmoid(b)


def Conv(
    features: int,
    kernel_size: tuple[int, ...],
    stride: tuple[int, ...] | None = None,
    padding: tuple[int, ...] | None = None,
    dilation: tuple[int, ...] | None = None,
    dtype: Dtype = jnp.float32,
    name: str | None = None,
) -> nn.Conv:
    """torch `Conv1d` / `Conv2d` (symmetric zero `padding` per spatial axis), channels-last.

    kernel: (*kernel_size, in, out), torch's (out, in, *kernel_size) transposed by the converter.
    """
    n = len(kernel_size)
    return nn.Conv(
        features,
        kernel_size,
        strides=stride or (1,) * n,
        padding=[(p, p) for p in (padding or (0,) * n)],
        kernel_dilation=dilation or (1,) * n,
        dtype=dtype,
        param_dtype=jnp.float32,
        name=name,
    )


class SquareConv(nn.Module):
    """torch `Conv2d(in, features, k, padding=k // 2)` (k odd) over (batch, freq, time, channels); kernel
    (k, k, in, out) like `Conv`'s. On a map with a single frequency bin, only the kernel's middle row meets
    anything but zero padding, so only that row is computed (a 1-D convolution over time): the same products,
    without the k - 1 rows that multiply zeros."""

    features: int
    kernel_size: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: ArrayIn) -> Array:
        x = jnp.asarray(x)  # numpy in eager calls; a no-op under jit (and for the type checker: an Array)
        k, pad = self.kernel_size, self.kernel_size // 2
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (k, k, x.shape[-1], self.features), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
        if x.shape[1] == 1:
            lhs, rhs, dims, padding = x[:, 0], kernel[pad], ("NWC", "WIO", "NWC"), [(pad, pad)]
        else:
            lhs, rhs, dims, padding = x, kernel, ("NHWC", "HWIO", "NHWC"), [(pad, pad), (pad, pad)]
        y = lax.conv_general_dilated(
            lhs.astype(self.dtype), rhs.astype(self.dtype), (1,) * rhs[..., 0, 0].ndim, padding, dimension_numbers=dims
        )
        y = y + bias.astype(self.dtype)
        return y[:, None] if x.shape[1] == 1 else y


class ConvTranspose(nn.Module):
    """torch `ConvTranspose1d` / `ConvTranspose2d` with kernel (k, 1), stride s, no padding, along axis 1.

    Output length (L - 1) * s + k. kernel: (k, in, out) or (k, 1, in, out), i.e. torch's (in, out, k[, 1])
    moved to Flax's order and *not* flipped: input step l adds `x[l] @ kernel[j]` to output step l * s + j.
    Computed as one 2-D matmul, (positions, in) x (in, m * s * out), followed by an overlap-add of m = k / s
    blocks, which is exact (it performs the same products as the scatter definition) and avoids convolving a
    zero-dilated input. The matmul's weight comes from `prepare` (run once at load time when the model is
    given a "prepared" collection, see `modeling_flax_hdemucs.prepare_params`; else inside the call).
    """

    features: int
    kernel_size: int
    stride: int
    two_d: bool  # kernel (k, 1) over (batch, freq, time, channels) instead of k over (batch, time, channels)
    dtype: Dtype = jnp.float32
    dot_dtype: Dtype | None = None  # mixed precision: matmul inputs in this dtype, float32 accumulation and output

    @staticmethod
    def prepare(kernel: Any, stride: int, dtype: Dtype, xp: Any = jnp) -> Any:
        """kernel (k, [1,] in, out) -> (in, m * s * out) in `dtype`, zero taps appended up to m * s = k rounded
        up to whole strides. `xp`: numpy for concrete arrays at load time, jax.numpy under a trace."""
        k, cin, cout = kernel.shape[0], kernel.shape[-2], kernel.shape[-1]
        m = -(-k // stride)
        kernel = kernel.reshape(k, cin, cout)
        if m * stride != k:
            kernel = xp.pad(kernel, [(0, m * stride - k), (0, 0), (0, 0)])
        return xp.transpose(kernel, (1, 0, 2)).reshape(cin, m * stride * cout).astype(dtype)

    @nn.compact
    def __call__(self, x: Float[ArrayIn, "batch length *rest"]) -> Float[Array, "batch out *rest_out"]:
        k, s = self.kernel_size, self.stride
        shape = (k, 1, x.shape[-1], self.features) if self.two_d else (k, x.shape[-1], self.features)
        kernel = self.param("kernel", nn.initializers.lecun_normal(), shape, jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
        if self.has_variable("prepared", "matrix"):
            matrix = self.get_variable("prepared", "matrix")
        else:
            matrix = self.prepare(kernel, s, self.dot_dtype or self.dtype)
        m = -(-k // s)
        batch, length, rest = x.shape[0], x.shape[1], x.shape[2:-1]
        if self.dot_dtype is None:
            blocks = jnp.dot(x.astype(self.dtype).reshape(-1, x.shape[-1]), matrix)  # (positions, m * s * out)
        else:
            blocks = mixed_dot(x, matrix, self.dot_dtype).astype(self.dtype)
        blocks = blocks.reshape(batch, length, *rest, m, s, self.features)
        # Overlap-add over the input steps: output block q (of s steps) sums piece j of input step q - j.
        pieces = [
            jnp.pad(blocks[..., j, :, :], [(0, 0), (j, m - 1 - j)] + [(0, 0)] * (len(rest) + 2)) for j in range(m)
        ]
        y = sum(pieces[1:], pieces[0])
        if rest:  # (batch, L + m - 1, T, s, out) -> (batch, L + m - 1, s, T, out)
            y = jnp.moveaxis(y, -2, 2)
        y = y.reshape(batch, (length + m - 1) * s, *rest, self.features)
        y = y[:, : (length - 1) * s + k]
        return y + bias.astype(self.dtype)


class GroupNorm(nn.Module):
    """torch `nn.GroupNorm(num_groups, C)` on channels-last input: eps 1e-5 (Flax's default is 1e-6),
    biased variance, statistics over the group's channels and every non-batch position, in float32."""

    num_groups: int
    epsilon: float = 1e-5
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Float[ArrayIn, "*shape"]) -> Float[Array, "*shape"]:
        x = jnp.asarray(x)  # numpy in eager calls; a no-op under jit (and for the type checker: an Array)
        c = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
        g = x.astype(jnp.float32).reshape(x.shape[0], -1, self.num_groups, c // self.num_groups)
        count = g.shape[1] * g.shape[3]
        mean = accurate_sum(g.sum(axis=3, keepdims=True), axis=1)[:, None] / count
        var = accurate_sum(jnp.square(g - mean).sum(axis=3, keepdims=True), axis=1)[:, None] / count
        y = ((g - mean) * lax.rsqrt(var + self.epsilon)).reshape(x.shape)
        return (y * scale + bias).astype(self.dtype)


class LayerScale(nn.Module):
    """torchaudio `_LayerScale`: per-channel scale, initialised to `init`."""

    init: float

    @nn.compact
    def __call__(self, x: Float[ArrayIn, "*shape"]) -> Float[Array, "*shape"]:
        x = jnp.asarray(x)  # numpy in eager calls; a no-op under jit (and for the type checker: an Array)
        scale = self.param("scale", nn.initializers.constant(self.init), (x.shape[-1],), jnp.float32)
        return x * scale.astype(x.dtype)


class LSTM(nn.Module):
    """torch `nn.LSTM(dim, dim, num_layers, bidirectional=True)`, zero initial state, time-major I/O.

    Parameters per layer l and direction (suffix "" or "_reverse", as torch names them):
    `kernel_ih_l{l}` (in, 4H), `kernel_hh_l{l}` (H, 4H), `bias_ih_l{l}`, `bias_hh_l{l}` (4H,). Gates are
    stacked i, f, g, o like torch; both biases are kept (so conversion round-trips) and added together.
    Both directions advance in one `lax.scan`, so a layer costs T sequential steps, not 2T. The directions'
    weights are stacked by `prepare` (once at load time when a "prepared" collection is given).
    """

    hidden: int
    num_layers: int
    dtype: Dtype = jnp.float32
    dot_dtype: Dtype | None = None  # mixed precision: see `mixed_dot`

    @staticmethod
    def prepare(params: Any, layer: int, dtype: Dtype, xp: Any = jnp) -> dict:
        """The stored parameters of `layer` -> {"ih": (2, in, 4H), "hh": (2, H, 4H)} in `dtype` and
        {"bias": (2, 4H)} float32 (bias_ih + bias_hh), directions forward then reverse."""
        suffixes = ("", "_reverse")
        return {
            "ih": xp.stack([params[f"kernel_ih_l{layer}{d}"] for d in suffixes]).astype(dtype),
            "hh": xp.stack([params[f"kernel_hh_l{layer}{d}"] for d in suffixes]).astype(dtype),
            "bias": xp.stack([params[f"bias_ih_l{layer}{d}"] + params[f"bias_hh_l{layer}{d}"] for d in suffixes]),
        }

    @nn.compact
    def __call__(self, x: Float[ArrayIn, "time batch channels"]) -> Float[Array, "time batch features"]:
        x = jnp.asarray(x)  # numpy in eager calls; a no-op under jit (and for the type checker: an Array)
        # x: (T, N, C) -> (T, N, 2H)
        h = self.hidden
        for layer in range(self.num_layers):
            params = {}
            for suffix in ("", "_reverse"):
                for name, init, shape in (
                    ("kernel_ih", nn.initializers.lecun_normal(), (x.shape[-1], 4 * h)),
                    ("kernel_hh", nn.initializers.orthogonal(), (h, 4 * h)),
                    ("bias_ih", nn.initializers.zeros, (4 * h,)),
                    ("bias_hh", nn.initializers.zeros, (4 * h,)),
                ):
                    key = f"{name}_l{layer}{suffix}"
                    params[key] = self.param(key, init, shape, jnp.float32)
            if self.has_variable("prepared", f"l{layer}"):
                weights = self.get_variable("prepared", f"l{layer}")
            else:
                weights = self.prepare(params, layer, self.dot_dtype or self.dtype)
            both = jnp.stack([x, x[::-1]], axis=1).astype(self.dtype)  # (T, 2, N, C): reverse reads backwards
            if self.dot_dtype is None:
                inputs = jnp.einsum("tdnc,dcg->tdng", both, weights["ih"])
            else:
                inputs = jnp.stack([mixed_dot(both[:, d], weights["ih"][d], self.dot_dtype) for d in range(2)], 1)
            inputs = inputs.astype(jnp.float32) + weights["bias"][None, :, None, :]
            zeros = jnp.zeros((2, x.shape[1], h), jnp.float32)
            step = _lstm_step(weights["hh"], self.dtype, self.dot_dtype)
            _, out = lax.scan(step, (zeros, zeros), inputs)  # (T, 2, N, H)
            x = jnp.concatenate([out[:, 0], out[::-1, 1]], axis=-1).astype(self.dtype)
        return x


def _lstm_step(recurrent: jnp.ndarray, dtype: Dtype, dot_dtype: Dtype | None):
    """One time step of both LSTM directions for `lax.scan`: carry (hidden, cell), each (2, N, H) float32;
    input the precomputed input projection plus biases, (2, N, 4H); `recurrent` (2, H, 4H)."""

    def step(carry, gates_in):
        hid, cell = carry
        if dot_dtype is None:
            gates = gates_in + jnp.einsum("dnh,dhg->dng", hid.astype(dtype), recurrent).astype(jnp.float32)
        else:
            gates = gates_in + jnp.stack([mixed_dot(hid[d], recurrent[d], dot_dtype) for d in range(2)])
        i, f, g, o = jnp.split(gates, 4, axis=-1)
        cell = jax.nn.sigmoid(f) * cell + jax.nn.sigmoid(i) * jnp.tanh(g)
        hid = jax.nn.sigmoid(o) * jnp.tanh(cell)
        return (hid, cell), hid

    return step


class BLSTM(nn.Module):
    """torchaudio `_BLSTM(dim, layers=2, skip=True)` on (N, T, C).

    Sequences longer than 200 steps are cut into windows of 200 with hop 100; each window's outer 50 steps
    are dropped when the windows are joined (torchaudio's framing, reproduced exactly).
    """

    dim: int
    dtype: Dtype = jnp.float32
    dot_dtype: Dtype | None = None

    @nn.compact
    def __call__(self, x: Float[ArrayIn, "batch time channels"]) -> Float[Array, "batch time channels"]:
        x = jnp.asarray(x)  # numpy in eager calls; a no-op under jit (and for the type checker: an Array)
        n, t, c = x.shape
        y = x
        width, hop = LSTM_MAX_STEPS, LSTM_MAX_STEPS // 2
        framed = t > width
        if framed:
            nframes = -(-t // hop)
            x = jnp.pad(x, [(0, 0), (0, (nframes - 1) * hop + width - t), (0, 0)])
            index = np.arange(nframes)[:, None] * hop + np.arange(width)[None, :]
            x = x[:, index].reshape(n * nframes, width, c)
        out = LSTM(self.dim, LSTM_LAYERS, dtype=self.dtype, dot_dtype=self.dot_dtype, name="lstm")(
            jnp.swapaxes(x, 0, 1)
        )
        out = nn.Dense(self.dim, dtype=self.dtype, param_dtype=jnp.float32, name="linear")(jnp.swapaxes(out, 0, 1))
        if framed:
            frames = out.reshape(n, nframes, width, c)
            limit = hop // 2
            middle = frames[:, 1:-1, limit:-limit].reshape(n, -1, c)
            out = jnp.concatenate([frames[:, 0, :-limit], middle, frames[:, -1, limit:]], axis=1)[:, :t]
        return out + y


class LocalState(nn.Module):
    """torchaudio `_LocalState(channels, heads=4, ndecay=4)` on (N, T, C): attention over time with a
    learned per-head decay of |t - s|; each step is masked from attending to itself."""

    channels: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Float[ArrayIn, "batch time channels"]) -> Float[Array, "batch time channels"]:
        x = jnp.asarray(x)  # numpy in eager calls; a no-op under jit (and for the type checker: an Array)
        n, t, c = x.shape
        heads, ndecay = ATTN_HEADS, ATTN_DECAYS

        def proj(name: str, features: int) -> jnp.ndarray:
            return Conv(features, (1,), dtype=self.dtype, name=name)(x)

        # torch views (B, heads * d, T) as (B, heads, d, T): channel = head * d + i.
        queries = proj("query", c).reshape(n, t, heads, -1)
        keys = proj("key", c).reshape(n, t, heads, -1)
        dots = jnp.einsum("bthc,bshc->bhts", keys, queries).astype(jnp.float32) / np.float32(np.sqrt(keys.shape[-1]))
        decays = np.arange(1, ndecay + 1, dtype=np.float32)
        delta = np.arange(t, dtype=np.float32)
        delta = np.abs(delta[:, None] - delta[None, :])
        decay_kernel = -decays[:, None, None] * delta / np.float32(np.sqrt(ndecay))  # (f, t, s)
        decay_q = (
            jax.nn.sigmoid(proj("query_decay", heads * ndecay).reshape(n, t, heads, ndecay).astype(jnp.float32)) / 2
        )
        dots = dots + jnp.einsum("fts,bshf->bhts", decay_kernel, decay_q)
        dots = jnp.where(np.eye(t, dtype=bool), np.float32(-100), dots)
        weights = jax.nn.softmax(dots, axis=2)  # over the key step t, for each query step s
        content = proj("content", c).reshape(n, t, heads, -1)
        result = jnp.einsum("bhts,bthc->bshc", weights.astype(self.dtype), content).reshape(n, t, c)
        return x + Conv(c, (1,), dtype=self.dtype, name="proj")(result)


class DConvBranch(nn.Module):
    """One residual branch of torchaudio's `_DConv` (an `nn.Sequential` there; see the converter's index
    table): conv(k=3, dilation) -> GroupNorm(1) -> GELU -> [BLSTM] -> [LocalState] -> conv 1x1 ->
    GroupNorm(1) -> GLU -> LayerScale."""

    plan: DConvPlan
    dilation: int
    dtype: Dtype = jnp.float32
    dot_dtype: Dtype | None = None

    @nn.compact
    def __call__(self, x: Float[ArrayIn, "batch time channels"]) -> Float[Array, "batch time channels"]:
        x = jnp.asarray(x)  # numpy in eager calls; a no-op under jit (and for the type checker: an Array)
        p = self.plan
        pad = self.dilation * (DCONV_KERNEL // 2)
        y = Conv(
            p.hidden, (DCONV_KERNEL,), padding=(pad,), dilation=(self.dilation,), dtype=self.dtype, name="conv_in"
        )(x)
        y = gelu(GroupNorm(1, dtype=self.dtype, name="norm_in")(y))
        if p.lstm:
            y = BLSTM(p.hidden, dtype=self.dtype, dot_dtype=self.dot_dtype, name="lstm")(y)
        if p.attn:
            y = LocalState(p.hidden, dtype=self.dtype, name="attn")(y)
        if self.dot_dtype is None:
            y = Conv(2 * p.channels, (1,), dtype=self.dtype, name="conv_out")(y)
        else:
            y = Conv1x1(2 * p.channels, self.dot_dtype, name="conv_out")(y).astype(self.dtype)
        y = glu(GroupNorm(1, dtype=self.dtype, name="norm_out")(y))
        return LayerScale(p.init, name="layer_scale")(y)


class DConv(nn.Module):
    """torchaudio `_DConv`: residual branches with dilation 2**d, on (N, T, C)."""

    plan: DConvPlan
    dtype: Dtype = jnp.float32
    dot_dtype: Dtype | None = None

    @nn.compact
    def __call__(self, x: Float[ArrayIn, "batch time channels"]) -> Float[Array, "batch time channels"]:
        x = jnp.asarray(x)  # numpy in eager calls; a no-op under jit (and for the type checker: an Array)
        for d in range(self.plan.depth):
            dilation = 2**d if self.plan.dilate else 1
            x = x + DConvBranch(self.plan, dilation, dtype=self.dtype, dot_dtype=self.dot_dtype, name=f"layers_{d}")(x)
        return x
