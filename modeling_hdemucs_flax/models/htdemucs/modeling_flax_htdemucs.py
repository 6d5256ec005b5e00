"""The HTDemucs linen module and its thin `FlaxPreTrainedModel` wrapper, `FlaxHTDemucs`.

Array shapes are jaxtyping annotations (documentation the test suite checks; nothing is checked at run time).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Float32, Real
from transformers import FlaxAutoModel

from ...errors import AudioError
from ...options import DEFAULT_MATMUL_PRECISION, check_matmul_precision
from ..common.layers import Conv, Dtype
from ..common.spectral import hdemucs_ispec, hdemucs_spec
from ..family import FlaxSeparationModel
from ..hdemucs.hybrid_layers import HDecLayer, HEncLayer
from ..hdemucs.layer_plan import flax_name
from ..hdemucs.modeling_flax_hdemucs import FlaxHDemucsOutput, embedding_init, normalize
from .configuration_htdemucs import HTDemucsConfig
from .convert_demucs import htdemucs_params_from_state, param_shapes, random_htdemucs_state
from .layer_plan import HTDemucsPlan, plan_htdemucs
from .transformer import CrossTransformerEncoder


def _pointwise(features: int, name: str, dtype: Dtype, x: Array) -> Array:
    """demucs's channel up/downsamplers, `nn.Conv1d(in, features, 1)` over every position of `x` (..., in)."""
    flat = x.reshape(x.shape[0], -1, x.shape[-1])
    return Conv(features, (1,), dtype=dtype, name=name)(flat).reshape(*x.shape[:-1], features)


class HTDemucsModule(nn.Module):
    """Hybrid Transformer Demucs (demucs v4): a spectrogram U-Net and a waveform U-Net whose deepest features
    meet in a cross-domain transformer; eval mode of demucs's `HTDemucs.forward`.

    __call__: waveform float (batch, audio_channels, samples) -> float32 (batch, sources, audio_channels,
    samples). torch layout at this boundary only; channels-last inside. With a training length in the plan
    (`use_train_segment`), shorter inputs are zero-padded to it and the output cropped back, and longer ones
    are refused (demucs fails on them too).
    """

    plan: HTDemucsPlan
    dtype: Dtype = jnp.float32
    # How convolutions and matrix products on float32 values are computed (`options.MATMUL_PRECISIONS`).
    matmul_precision: str = DEFAULT_MATMUL_PRECISION

    def __call__(
        self, waveform: Float[Array, "batch channels samples"]
    ) -> Float32[Array, "batch sources channels samples"]:
        # Scoped here so an accelerator does not round float32 products (TF32 / bfloat16 passes) by default.
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
        waveform = jnp.asarray(waveform, jnp.float32)
        batch, channels, length = waveform.shape
        samples = length
        if p.training_length is not None:
            if length > p.training_length:
                raise AudioError(
                    f"<waveform>: {length} samples is longer than the model's training segment "
                    f"({p.training_length} samples); split the audio (the Separator does) or build the model with "
                    "use_train_segment=False"
                )
            samples = p.training_length
            waveform = jnp.pad(waveform, [(0, 0), (0, 0), (0, samples - length)])

        z = hdemucs_spec(waveform, p.nfft)  # (B, C, T, F) complex
        # complex as channels, torch's view_as_real layout: channel 2 * audio_channel + (0 real, 1 imaginary)
        mag = jnp.stack([z.real, z.imag], axis=-1)  # (B, C, T, F, 2)
        mag = mag.transpose(0, 3, 2, 1, 4).reshape(batch, z.shape[3], z.shape[2], 2 * channels)  # (B, F, T, 2C)
        x, mean, std = normalize(mag)
        xt, meant, stdt = normalize(waveform.transpose(0, 2, 1))  # (B, L, C)
        x, xt = x.astype(self.dtype), xt.astype(self.dtype)

        saved, saved_t, lengths, lengths_t = [], [], [], []
        for idx, (enc, tenc) in enumerate(zip(p.encoder, p.tencoder, strict=True)):
            lengths.append(x.shape[2])
            lengths_t.append(xt.shape[1])
            xt = HEncLayer(tenc, dtype=self.dtype, name=flax_name(tenc.path))(xt)
            saved_t.append(xt)
            x = HEncLayer(enc, dtype=self.dtype, name=flax_name(enc.path))(x)
            if idx == 0 and p.freq_emb is not None:
                # a learned embedding per frequency bin, so convolutions over frequency can tell the bins apart
                e = p.freq_emb
                init = embedding_init(e.num_embeddings, e.smooth, e.scale)
                table = self.param("freq_emb", init, (e.num_embeddings, e.dim), jnp.float32)
                # demucs's ScaledEmbedding stores weight / scale and multiplies back by scale
                emb = table[: x.shape[1]] * np.float32(e.scale)
                x = x + (np.float32(e.weight) * emb)[None, :, None, :].astype(x.dtype)
            saved.append(x)

        if p.bottom_channels:
            x = _pointwise(p.bottom_channels, "channel_upsampler", self.dtype, x)
            xt = _pointwise(p.bottom_channels, "channel_upsampler_t", self.dtype, xt)
        x, xt = CrossTransformerEncoder(p.transformer, dtype=self.dtype, name="crosstransformer")(x, xt)
        if p.bottom_channels:
            x = _pointwise(p.encoder_channels, "channel_downsampler", self.dtype, x)
            xt = _pointwise(p.encoder_channels, "channel_downsampler_t", self.dtype, xt)

        # Unlike torchaudio's HDemucs, the decoders start from the transformer's output (plus the skips).
        for dec, tdec in zip(p.decoder, p.tdecoder, strict=True):
            x, _ = HDecLayer(dec, dtype=self.dtype, name=flax_name(dec.path))(x, saved.pop(), lengths.pop())
            xt, _ = HDecLayer(tdec, dtype=self.dtype, name=flax_name(tdec.path))(xt, saved_t.pop(), lengths_t.pop())

        sources = p.num_sources
        # Frequency branch: (B, F, T, S * C * 2) -> complex (B, S, C, T, F), denormalised in float32.
        x = x.astype(jnp.float32) * std + mean
        bins, frames = x.shape[1], x.shape[2]
        x = x.reshape(batch, bins, frames, sources, channels, 2).transpose(0, 3, 4, 2, 1, 5)
        spec_out = hdemucs_ispec(jax.lax.complex(x[..., 0], x[..., 1]), p.nfft, samples)  # (B, S, C, L)
        # Time branch: (B, L, S * C) -> (B, S, C, L).
        xt = xt.astype(jnp.float32) * stdt + meant
        xt = xt.reshape(batch, samples, sources, channels).transpose(0, 2, 3, 1)
        return (xt + spec_out)[..., :length]


class FlaxHTDemucs(FlaxSeparationModel):
    """Hybrid Transformer Demucs (demucs v4's `HTDemucs`, numerically identical) in Flax.

    `model(waveform)` takes float (batch, audio_channels, samples) at `config.sampling_rate`, at most the training
    segment long when `config.use_train_segment` (the released models: 7.8 s), and returns
    `FlaxHDemucsOutput(sources=(batch, num_sources, audio_channels, samples))` in the order of `config.sources`.
    Inputs shorter than the segment are padded before the jitted forward pass, so every one of them reuses the
    one compiled shape. `from_demucs(state, config)` builds it from demucs weights.
    """

    config_class = HTDemucsConfig
    base_model_prefix = "htdemucs"
    module_class = HTDemucsModule

    def __init__(
        self,
        config: HTDemucsConfig,
        input_shape: tuple[int, ...] | None = None,
        seed: int = 0,
        dtype: Dtype = jnp.float32,
        _do_init: bool = True,
        params: dict | None = None,
        matmul_precision: str = DEFAULT_MATMUL_PRECISION,
        **kwargs: Any,
    ):
        precision = check_matmul_precision(matmul_precision)
        module = self.module_class(plan=plan_htdemucs(config), dtype=dtype, matmul_precision=precision, **kwargs)
        if input_shape is None:
            input_shape = (1, config.audio_channels, config.nfft)
        self._given_params = params

        def htdemucs_forward(params, waveform):  # the name JAX's compile logs and cache entries show
            return module.apply({"params": params}, waveform)

        self._forward = jax.jit(htdemucs_forward)
        super().__init__(config, module, input_shape=input_shape, seed=seed, dtype=dtype, _do_init=_do_init)
        self._given_params = None

    @property
    def max_segment(self) -> float | None:
        """The training segment in seconds when `config.use_train_segment` (longer inputs are refused), else None."""
        length = self.module.plan.training_length
        return None if length is None else length / self.config.samplerate

    def random_params(self, seed: int) -> dict:
        return htdemucs_params_from_state(random_htdemucs_state(self.config, seed), self.config)

    def param_shapes(self) -> dict:
        return param_shapes(self.config)

    @classmethod
    def from_demucs(
        cls, state: Mapping[str, Any], config: HTDemucsConfig, dtype: Dtype = jnp.float32, **kwargs: Any
    ) -> FlaxHTDemucs:
        """Build a model from demucs `HTDemucs` weights (`state_dict()`: torch tensors or numpy arrays) and the
        config of that model (`HTDemucsConfig(**kwargs the checkpoint was built with)` or a preset)."""
        params = htdemucs_params_from_state(state, config)
        return cls(config, dtype=dtype, params=jax.device_put(params), **kwargs)

    def __call__(
        self,
        waveform: Real[np.ndarray | Array, "batch channels samples"],
        params: Mapping[str, Any] | None = None,
        return_dict: bool = True,
        *,
        prepared: Mapping[str, Any] | None = None,
    ) -> FlaxHDemucsOutput | tuple[Float32[Array, "batch sources channels samples"]]:
        """Separate `waveform` (batch, audio_channels, samples), any real dtype (computed in float32 at the
        boundary): `FlaxHDemucsOutput(sources=...)`, or `(sources,)` with `return_dict=False`. `prepared` is
        accepted for the family's interface (`placed_params`) and unused: this model needs no prepared copy."""
        params = self.params if params is None else params
        waveform = jnp.asarray(waveform, jnp.float32)
        length = waveform.shape[-1]
        target = self.module.plan.training_length
        if target is not None and length < target:
            # The module pads the same zeros itself; padding here first keeps one compiled shape for all lengths.
            waveform = jnp.pad(waveform, [(0, 0)] * (waveform.ndim - 1) + [(0, target - length)])
        sources = self._forward(params, waveform)[..., :length]
        return FlaxHDemucsOutput(sources=sources) if return_dict else (sources,)


FlaxAutoModel.register(HTDemucsConfig, FlaxHTDemucs)
