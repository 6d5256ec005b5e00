"""The HDemucs linen module and its thin `FlaxPreTrainedModel` wrapper, `FlaxHDemucs`.

Array shapes are jaxtyping annotations: documentation that the test suite checks (see tests/shape_checks.py);
nothing is checked when a user runs the model.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from typing import Any, Literal, overload

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from flax.core.frozen_dict import unfreeze
from jaxtyping import Array, Float, Float32, Real
from transformers import FlaxAutoModel
from transformers.utils.generic import ModelOutput

from ...errors import AudioError
from ...models.common.layers import LSTM, ConvTranspose, Dtype, accurate_sum
from ...models.common.spectral import hdemucs_ispec, hdemucs_spec
from ...models.hdemucs.configuration_hdemucs import HDemucsConfig
from ...models.hdemucs.convert_torchaudio import (
    convert_torchaudio_state_dict,
    param_shapes,
    random_torchaudio_state_dict,
    to_torchaudio_state_dict,
)
from ...models.hdemucs.hybrid_layers import HDecLayer, HEncLayer
from ...models.hdemucs.layer_plan import LSTM_LAYERS, HDemucsPlan, flax_name, plan_layers
from ...options import DEFAULT_MATMUL_PRECISION, DEFAULT_SEGMENT, check_matmul_precision
from ...weights.torch_checkpoint import load_torch_state_dict
from ..family import FlaxSeparationModel


class _DropFlaxDeprecation(logging.Filter):
    """transformers 4.57 logs a deprecation notice for every Flax model it builds; it says nothing about
    this model (transformers 4.57 is the pinned, last Flax-capable release), so it is filtered out."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        # FlaxHDemucs.from_pretrained upcasts bfloat16 checkpoints to float32 itself (see there).
        deprecation = "TensorFlow and JAX classes are deprecated"
        upcast = "of FlaxHDemucs were initialized in bfloat16 precision"
        return deprecation not in message and upcast not in message


logging.getLogger("transformers.modeling_flax_utils").addFilter(_DropFlaxDeprecation())


def normalize(x: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """torch's `(x - x.mean()) / (1e-5 + x.std())` over every axis but the batch: unbiased std (ddof=1), eps
    added to the std (not the variance). float32."""
    flat = x.reshape(x.shape[0], -1)
    count = flat.shape[1]
    mean = accurate_sum(flat, axis=1) / count
    std = jnp.sqrt(accurate_sum(jnp.square(flat - mean[:, None]), axis=1) / (count - 1))
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    mean, std = mean.reshape(shape), std.reshape(shape)
    return (x - mean) / (1e-5 + std), mean, std


class HDemucsModule(nn.Module):
    """Hybrid Demucs: a spectrogram U-Net and a waveform U-Net that meet in the middle.

    __call__: waveform float (batch, audio_channels, samples) -> float32 (batch, sources, audio_channels,
    samples). torch layout at this boundary only; channels-last inside.
    """

    plan: HDemucsPlan
    dtype: Dtype = jnp.float32
    # Mixed precision: the matmul-shaped layers (LSTMs, transposed and 1x1 convolutions) take their inputs in
    # this dtype and accumulate in float32; everything else computes in `dtype`. None: `dtype` everywhere.
    dot_dtype: Dtype | None = None
    # How every convolution and matrix product on float32 values is computed (`options.MATMUL_PRECISIONS`).
    matmul_precision: str = DEFAULT_MATMUL_PRECISION

    def __call__(
        self, waveform: Float[Array, "batch channels samples"]
    ) -> Float32[Array, "batch sources channels samples"]:
        # Scoped here, so it holds whatever the caller's (or JAX's global) default is: left to JAX, an accelerator
        # rounds float32 products (TF32 on NVIDIA GPUs from Ampere on, one bfloat16 pass on TPU).
        with jax.default_matmul_precision(self.matmul_precision):
            return self.network(waveform)

    @nn.compact
    def network(
        self, waveform: Float[Array, "batch channels samples"]
    ) -> Float32[Array, "batch sources channels samples"]:
        """`__call__` without the precision scope."""
        p = self.plan
        if waveform.ndim != 3 or waveform.shape[1] != p.audio_channels:
            raise AudioError(
                f"<waveform>: expected shape (batch, {p.audio_channels}, samples), got {tuple(waveform.shape)}"
            )
        waveform = waveform.astype(jnp.float32)
        batch, channels, length = waveform.shape

        z = hdemucs_spec(waveform, p.nfft)  # (B, C, T, F) complex
        # torch's view_as_real layout: channel index = 2 * audio_channel + (0 real, 1 imaginary)
        mag = jnp.stack([z.real, z.imag], axis=-1)  # (B, C, T, F, 2)
        mag = mag.transpose(0, 3, 2, 1, 4).reshape(batch, z.shape[3], z.shape[2], 2 * channels)  # (B, F, T, 2C)
        x, mean, std = normalize(mag)
        xt, meant, stdt = normalize(waveform.transpose(0, 2, 1))  # (B, L, C)
        x, xt = x.astype(self.dtype), xt.astype(self.dtype)

        saved, saved_t, lengths, lengths_t = [], [], [], []
        for idx, enc_plan in enumerate(p.freq_encoder):
            lengths.append(x.shape[2] if x.ndim == 4 else x.shape[1])
            inject = None
            if idx < len(p.time_encoder):  # the branches have not merged yet
                tenc_plan = p.time_encoder[idx]
                lengths_t.append(xt.shape[1])
                xt = HEncLayer(tenc_plan, dtype=self.dtype, dot_dtype=self.dot_dtype, name=flax_name(tenc_plan.path))(
                    xt
                )
                if tenc_plan.empty:
                    # The empty time layer is only its first convolution, which brings the time branch to the
                    # frequency branch's shape: it is added into the frequency encoder, and the branches merge.
                    inject = xt
                else:
                    saved_t.append(xt)  # for the skip connection
            x = HEncLayer(enc_plan, dtype=self.dtype, dot_dtype=self.dot_dtype, name=flax_name(enc_plan.path))(
                x, inject
            )
            if idx == 0 and p.freq_emb is not None:
                e = p.freq_emb
                table = self.param(
                    "freq_emb",
                    embedding_init(e.num_embeddings, e.smooth, e.scale),
                    (e.num_embeddings, e.dim),
                    jnp.float32,
                )
                # `_ScaledEmbedding` stores weight / scale and multiplies back by scale.
                emb = table[: x.shape[1]] * e.scale
                x = x + (e.weight * emb)[None, :, None, :].astype(x.dtype)
            saved.append(x)

        # Both decoders start from zeros: the signal reaches them through the U-Net skips. The time state starts
        # with the frequency branch's shape because the branches are still merged in the deepest layers; the
        # time decoder takes over only where they split again (its empty layer below), from `pre`.
        x = jnp.zeros_like(x)
        xt = jnp.zeros_like(x)
        offset = p.depth - len(p.time_decoder)
        for idx, dec_plan in enumerate(p.freq_decoder):
            # `pre` is the decoder layer's output just before its transposed convolution: where the branches
            # split, the time branch continues from it.
            x, pre = HDecLayer(dec_plan, dtype=self.dtype, dot_dtype=self.dot_dtype, name=flax_name(dec_plan.path))(
                x, saved.pop(), lengths.pop()
            )
            if idx >= offset:
                tdec_plan = p.time_decoder[idx - offset]
                if tdec_plan.empty:  # takes the frequency branch's last single-bin features
                    xt, _ = HDecLayer(
                        tdec_plan, dtype=self.dtype, dot_dtype=self.dot_dtype, name=flax_name(tdec_plan.path)
                    )(pre[:, 0], None, lengths_t.pop())
                else:
                    xt, _ = HDecLayer(
                        tdec_plan, dtype=self.dtype, dot_dtype=self.dot_dtype, name=flax_name(tdec_plan.path)
                    )(xt, saved_t.pop(), lengths_t.pop())

        sources = p.num_sources
        # Frequency branch: (B, F, T, S * C * 2) -> complex (B, S, C, T, F), denormalised in float32.
        x = x.astype(jnp.float32) * std + mean
        frames, bins = x.shape[2], x.shape[1]
        x = x.reshape(batch, bins, frames, sources, channels, 2).transpose(0, 3, 4, 2, 1, 5)
        spec_out = hdemucs_ispec(jax.lax.complex(x[..., 0], x[..., 1]), p.nfft, length)  # (B, S, C, L)
        # Time branch: (B, L, S * C) -> (B, S, C, L).
        xt = xt.astype(jnp.float32) * stdt + meant
        xt = xt.reshape(batch, length, sources, channels).transpose(0, 2, 3, 1)
        return xt + spec_out


def prepare_params(params: Mapping[str, Any], plan: HDemucsPlan, dtype: Dtype = jnp.float32, xp: Any = jnp) -> dict:
    """The "prepared" collection of `HDemucsModule`: weights re-laid out once instead of in every forward pass.

    params: the stored parameter tree (torchaudio-mirrored names, the checkpoint format). Returns a tree with
    the modules' paths holding each LSTM layer's stacked directions (`LSTM.prepare`) and each transposed
    convolution's matmul weight (`ConvTranspose.prepare`), in the compute dtype. Pure data movement (the one
    sum, bias_ih + bias_hh, is the one the module performs otherwise), so a forward pass gives the same
    result with or without it. `xp`: numpy for concrete arrays (no compilation), jax.numpy under a trace.
    """
    prepared: dict = {}

    def put(path: tuple[str, ...], value: Any) -> None:
        node = prepared
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value

    for layer in (*plan.freq_encoder, *plan.time_encoder, *plan.freq_decoder, *plan.time_decoder):
        d = layer.dconv  # decoders have DConv branches in demucs's dconv_mode 2 and 3
        if layer.empty or d is None or not d.lstm:
            continue
        for branch in range(d.depth):
            path = (flax_name(layer.path), "dconv", f"layers_{branch}", "lstm", "lstm")
            node = params
            for key in path:
                node = node[key]
            for index in range(LSTM_LAYERS):
                put((*path, f"l{index}"), LSTM.prepare(node, index, dtype, xp))
    for layer in (*plan.freq_decoder, *plan.time_decoder):
        name = flax_name(layer.path)
        kernel = params[name]["conv_tr"]["kernel"]
        put((name, "conv_tr", "matrix"), ConvTranspose.prepare(kernel, layer.stride, dtype, xp))
    return prepared


def embedding_init(num: int, smooth: bool, scale: float) -> Callable[..., jnp.ndarray]:
    """torchaudio `_ScaledEmbedding` initialisation: N(0, 1), optionally smoothed along frequency by a
    cumulative sum / sqrt(n), divided by `scale`."""

    def init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jnp.ndarray:
        weight = jax.random.normal(key, shape, dtype)
        if smooth:
            weight = jnp.cumsum(weight, axis=0) / jnp.sqrt(jnp.arange(1, num + 1, dtype=dtype))[:, None]
        return weight / scale

    return init


@struct.dataclass
class FlaxHDemucsOutput(ModelOutput):
    """Output of `FlaxHDemucs`.

    sources: float32 (batch, num_sources, audio_channels, samples), in the order of `config.sources`.
    """

    sources: Float32[Array, "batch sources channels samples"] | None = None


class FlaxHDemucs(FlaxSeparationModel):
    """Hybrid Demucs music source separation (torchaudio's `HDemucs`, numerically identical) in Flax.

    `model(waveform)` takes float (batch, audio_channels, samples) at `config.sampling_rate`, of any length,
    and returns `FlaxHDemucsOutput(sources=(batch, num_sources, audio_channels, samples))`. The forward pass
    is jit-compiled once per input shape and reused. `dtype=jnp.bfloat16` computes the network in bfloat16;
    the STFT/iSTFT, normalisation statistics and outputs stay float32. Parameters are float32.
    `dot_dtype=jnp.bfloat16` (with float32 `dtype`) is mixed precision: only the LSTMs, transposed and 1x1
    convolutions take bfloat16 inputs, accumulating in float32 (its speed and error: docs/performance.md).
    `matmul_precision` says how convolutions and matrix products on float32 values are computed on a GPU or TPU
    (`options.MATMUL_PRECISIONS`): "float32" (the default) computes them in float32, not at JAX's default.

    Parameters live uncommitted on JAX's default device (`jax_default_device`), so the network runs there;
    `placed_params` gives copies committed to chosen devices (what `Separator(devices=...)` uses).
    """

    config_class = HDemucsConfig
    base_model_prefix = "hdemucs"
    module_class = HDemucsModule
    module_options = ("dot_dtype",)

    def __init__(
        self,
        config: HDemucsConfig,
        input_shape: tuple[int, ...] | None = None,
        seed: int = 0,
        dtype: Dtype = jnp.float32,
        _do_init: bool = True,
        params: dict | None = None,
        matmul_precision: str = DEFAULT_MATMUL_PRECISION,
        **kwargs: Any,
    ):
        precision = check_matmul_precision(matmul_precision)
        module = self.module_class(plan=plan_layers(config), dtype=dtype, matmul_precision=precision, **kwargs)
        if input_shape is None:
            input_shape = (1, config.audio_channels, config.nfft)
        self._given_params = params

        def hdemucs_forward(params, prepared, waveform):  # the name JAX's compile logs, events and cache entries show
            return module.apply({"params": params, "prepared": prepared}, waveform)

        def hdemucs_prepare(params):
            return prepare_params(params, module.plan, module.dot_dtype or dtype)

        self._forward = jax.jit(hdemucs_forward)
        self._prepare = jax.jit(hdemucs_prepare)
        super().__init__(config, module, input_shape=input_shape, seed=seed, dtype=dtype, _do_init=_do_init)
        self._given_params = None

    @classmethod
    def from_torchaudio(
        cls,
        state_dict_or_checkpoint_path: Mapping[str, Any] | str | os.PathLike,
        config: HDemucsConfig | None = None,
        dtype: Dtype = jnp.float32,
        **kwargs: Any,
    ) -> FlaxHDemucs:
        """Build a model from torchaudio HDemucs weights: a state dict (torch tensors or numpy arrays) or a
        checkpoint file written by `torch.save(model.state_dict(), path)` (read without torch).
        `config=None` means the high preset (`HDemucsConfig()`), the architecture of torchaudio's bundles.
        """
        config = HDemucsConfig() if config is None else config
        state_dict = state_dict_or_checkpoint_path
        if isinstance(state_dict, (str, os.PathLike)):
            state_dict = load_torch_state_dict(state_dict)
        params = convert_torchaudio_state_dict(state_dict, config)
        return cls(config, dtype=dtype, params=jax.device_put(params), **kwargs)

    @property
    def default_segment(self) -> float:
        """`config.segment` (the chunk length demucs's `apply_model` uses for this model), else 7.8 s."""
        return DEFAULT_SEGMENT if self.config.segment is None else float(self.config.segment)

    def random_params(self, seed: int) -> dict:
        return convert_torchaudio_state_dict(random_torchaudio_state_dict(self.config, seed), self.config)

    def param_shapes(self) -> dict:
        return param_shapes(self.config)

    def prepare_host(self, params: Mapping[str, Any]) -> dict:
        return prepare_params(params, self.module.plan, self.module.dot_dtype or self.dtype, xp=np)

    def prepare_traced(self, params: Mapping[str, Any]) -> dict:
        return self._prepare(params)

    def to_torchaudio(self) -> dict[str, np.ndarray]:
        """The weights as a torchaudio `HDemucs` state dict of float32 numpy arrays."""
        return to_torchaudio_state_dict(unfreeze(self.params), self.config)

    @overload
    def __call__(
        self,
        waveform: Real[np.ndarray | Array, "batch channels samples"],
        params: Mapping[str, Any] | None = None,
        return_dict: Literal[True] = True,
        *,
        prepared: Mapping[str, Any] | None = None,
    ) -> FlaxHDemucsOutput: ...

    @overload
    def __call__(
        self,
        waveform: Real[np.ndarray | Array, "batch channels samples"],
        params: Mapping[str, Any] | None = None,
        *,
        return_dict: Literal[False],
        prepared: Mapping[str, Any] | None = None,
    ) -> tuple[Float32[Array, "batch sources channels samples"]]: ...

    def __call__(
        self,
        waveform: Real[np.ndarray | Array, "batch channels samples"],
        params: Mapping[str, Any] | None = None,
        return_dict: bool = True,
        *,
        prepared: Mapping[str, Any] | None = None,
    ) -> FlaxHDemucsOutput | tuple[Float32[Array, "batch sources channels samples"]]:
        """Separate `waveform` (batch, audio_channels, samples), any real dtype (computed as float32 in, the
        model's dtype inside): `FlaxHDemucsOutput(sources=...)`, or `(sources,)` with `return_dict=False`.
        `prepared`: `params`' prepared collection when the caller has it (see `placed_params`); None: made here
        (`prepared_params(params)`, which runs a jitted preparation for parameters other than `self.params`)."""
        params = self.params if params is None else params
        prepared = self.prepared_params(params) if prepared is None else prepared
        sources = self._forward(params, prepared, jnp.asarray(waveform, jnp.float32))
        return FlaxHDemucsOutput(sources=sources) if return_dict else (sources,)


FlaxAutoModel.register(HDemucsConfig, FlaxHDemucs)
