"""demucs `HTDemucs` state dict -> Flax params for `HTDemucsModule`, numpy only, total and checked.

The table below lists every tensor of the model a config describes, under demucs's key and the Flax path (the
same names: `encoder.0.dconv.layers.1.3.weight` -> `encoder_0/dconv/layers_1/conv_out/kernel`, the DConv's
positional `nn.Sequential` indices named by `convert_torchaudio.dconv_names`). Layout changes, each named once
(`convert_torchaudio.Entry.kind`):
- Conv1d/Conv2d weight (out, in, *k)       -> kernel (*k, in, out)
- ConvTranspose1d/2d weight (in, out, *k)  -> kernel (*k, in, out)   (not flipped: see `layers.ConvTranspose`)
- Linear weight (out, in), and nn.MultiheadAttention's in_proj_weight (3 dim, dim) -> kernel (in, out)
- GroupNorm / LayerNorm weight             -> scale
A key the model holds but never uses is listed in `known_unused` with the reason; anything else that does not
match is a one-line `CheckpointError` naming the keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from flax.traverse_util import unflatten_dict

from ...errors import CheckpointError, ConfigError
from ..hdemucs.convert_torchaudio import Entry, as_numpy, dconv_names, flax_shape, to_flax
from ..hdemucs.layer_plan import DCONV_KERNEL, DecoderPlan, EncoderPlan, flax_name
from .configuration_htdemucs import DEMUCS_ARGUMENTS, HTDemucsConfig
from .layer_plan import HTDemucsPlan, plan_htdemucs


def _layer_entries(plan: HTDemucsPlan, add: Any) -> None:
    """Encoder and decoder layers of both branches (demucs `HEncLayer` / `HDecLayer`)."""

    def conv(key: str, path: tuple[str, ...], cout: int, cin: int, kernel: tuple[int, ...], kind: str = "conv") -> None:
        shape = (cin, cout, *kernel) if kind == "conv_tr" else (cout, cin, *kernel)
        add(f"{key}.weight", (*path, "kernel"), shape, kind, "weight")
        add(f"{key}.bias", (*path, "bias"), (cout,), "same", "bias")

    def norm(key: str, path: tuple[str, ...], channels: int) -> None:
        add(f"{key}.weight", (*path, "scale"), (channels,), "same", "norm")
        add(f"{key}.bias", (*path, "bias"), (channels,), "same", "norm")

    def kernel(layer: EncoderPlan | DecoderPlan, k: int) -> tuple[int, ...]:
        return (k, 1) if layer.freq else (k,)

    def square(layer: EncoderPlan | DecoderPlan) -> tuple[int, ...]:
        k = 1 + 2 * layer.context
        return (k, k) if layer.freq else (k,)

    def dconv(key: str, path: tuple[str, ...], layer: EncoderPlan | DecoderPlan) -> None:
        d = layer.dconv
        if d is None:
            return
        for branch in range(d.depth):
            for index, name in enumerate(dconv_names(d.lstm, d.attn)):
                if name is None:  # parameter-free (GELU, GLU)
                    continue
                sub_key, sub_path = f"{key}.dconv.layers.{branch}.{index}", (*path, "dconv", f"layers_{branch}", name)
                if name == "conv_in":
                    conv(sub_key, sub_path, d.hidden, d.channels, (DCONV_KERNEL,))
                elif name == "norm_in":
                    norm(sub_key, sub_path, d.hidden)
                elif name == "conv_out":
                    conv(sub_key, sub_path, 2 * d.channels, d.hidden, (1,))
                elif name == "norm_out":
                    norm(sub_key, sub_path, 2 * d.channels)
                elif name == "layer_scale":
                    add(f"{sub_key}.scale", (*sub_path, "scale"), (d.channels,), "same", "scale")
                else:  # HTDemucs's DConv has neither BLSTM nor LocalState (see `_dconv_plan`)
                    raise AssertionError(f"{sub_key}: unexpected DConv member {name}")

    for layer in (*plan.encoder, *plan.tencoder):
        key, path = layer.path, (flax_name(layer.path),)
        conv(f"{key}.conv", (*path, "conv"), layer.chout, layer.chin, kernel(layer, layer.kernel_size))
        if layer.norm:
            norm(f"{key}.norm1", (*path, "norm1"), layer.chout)
        conv(f"{key}.rewrite", (*path, "rewrite"), 2 * layer.chout, layer.chout, square(layer))
        if layer.norm:
            norm(f"{key}.norm2", (*path, "norm2"), 2 * layer.chout)
        dconv(key, path, layer)
    for layer in (*plan.decoder, *plan.tdecoder):
        key, path = layer.path, (flax_name(layer.path),)
        conv(f"{key}.rewrite", (*path, "rewrite"), 2 * layer.chin, layer.chin, square(layer))
        if layer.norm:
            norm(f"{key}.norm1", (*path, "norm1"), 2 * layer.chin)
        dconv(key, path, layer)
        conv(f"{key}.conv_tr", (*path, "conv_tr"), layer.chout, layer.chin, kernel(layer, layer.kernel_size), "conv_tr")
        if layer.norm:
            norm(f"{key}.norm2", (*path, "norm2"), layer.chout)
    if plan.bottom_channels:
        for name, cout, cin in (
            ("channel_upsampler", plan.bottom_channels, plan.encoder_channels),
            ("channel_downsampler", plan.encoder_channels, plan.bottom_channels),
            ("channel_upsampler_t", plan.bottom_channels, plan.encoder_channels),
            ("channel_downsampler_t", plan.encoder_channels, plan.bottom_channels),
        ):
            conv(name, (name,), cout, cin, (1,))
    if plan.freq_emb is not None:
        e = plan.freq_emb
        add("freq_emb.embedding.weight", ("freq_emb",), (e.num_embeddings, e.dim), "same", "embedding")


def _transformer_entries(plan: HTDemucsPlan, add: Any, unused: dict[str, str]) -> None:
    """demucs `CrossTransformerEncoder` (its `nn.MultiheadAttention`s, feed-forward Linears, norms, scales)."""
    t = plan.transformer
    root = "crosstransformer"

    def norm(key: str, path: tuple[str, ...]) -> None:  # LayerNorm or GroupNorm: the same two tensors
        add(f"{key}.weight", (*path, "scale"), (t.dim,), "same", "norm")
        add(f"{key}.bias", (*path, "bias"), (t.dim,), "same", "norm")

    def linear(key: str, path: tuple[str, ...], out: int, width: int) -> None:
        add(f"{key}.weight", (*path, "kernel"), (out, width), "linear", "weight")
        add(f"{key}.bias", (*path, "bias"), (out,), "same", "bias")

    if t.norm_in or t.norm_in_groups:
        norm(f"{root}.norm_in", (root, "norm_in"))
        norm(f"{root}.norm_in_t", (root, "norm_in_t"))
    for branch in ("layers", "layers_t"):
        for index in range(t.layers):
            key, path = f"{root}.{branch}.{index}", (root, f"{branch}_{index}")
            cross = t.is_cross(index)
            attn = "cross_attn" if cross else "self_attn"
            add(f"{key}.{attn}.in_proj_weight", (*path, attn, "in_proj_kernel"), (3 * t.dim, t.dim), "linear", "weight")
            add(f"{key}.{attn}.in_proj_bias", (*path, attn, "in_proj_bias"), (3 * t.dim,), "same", "bias")
            linear(f"{key}.{attn}.out_proj", (*path, attn, "out_proj"), t.dim, t.dim)
            linear(f"{key}.linear1", (*path, "linear1"), t.hidden, t.dim)
            linear(f"{key}.linear2", (*path, "linear2"), t.dim, t.hidden)
            norm(f"{key}.norm1", (*path, "norm1"))
            norm(f"{key}.norm2", (*path, "norm2"))
            if cross and t.norm_first:
                norm(f"{key}.norm3", (*path, "norm3"))
            elif cross:
                for suffix in ("weight", "bias"):
                    unused[f"{key}.norm3.{suffix}"] = "built by demucs's post-norm cross layer, never called"
            if t.norm_out:
                norm(f"{key}.norm_out", (*path, "norm_out"))
            if t.layer_scale:
                for gamma in ("gamma_1", "gamma_2"):
                    add(f"{key}.{gamma}.scale", (*path, gamma, "scale"), (t.dim,), "same", "scale")


def conversion_table(config: Any) -> tuple[list[Entry], dict[str, str]]:
    """Every parameter of the HTDemucs `config` describes, in demucs's and Flax's naming, and the demucs keys its
    state dict holds but the model never uses, with the reason: `(entries, {key: reason})`."""
    plan = plan_htdemucs(config)
    entries: list[Entry] = []
    unused: dict[str, str] = {}

    def add(torch_key: str, flax_path: tuple[str, ...], shape: tuple[int, ...], kind: str, role: str) -> None:
        entries.append(Entry(torch_key, flax_path, tuple(shape), kind, role))

    _layer_entries(plan, add)
    _transformer_entries(plan, add, unused)
    return entries, unused


def _listed(keys: list[str], limit: int = 6) -> str:
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def htdemucs_config_from_demucs_kwargs(kwargs: Mapping[str, Any]) -> HTDemucsConfig:
    """The `HTDemucsConfig` of `demucs.htdemucs.HTDemucs(**kwargs)` (a checkpoint's "kwargs", with its positional
    "args" named in the constructor's order, `DEMUCS_ARGUMENTS`). An argument left out takes demucs's default,
    which is the config's. Raises `ConfigError` naming an argument HTDemucs does not take (demucs's `load_model`
    drops such an argument with a warning; here it may be another model's, so it is refused), a missing `sources`,
    and (from the config's own checks) a value or an option this package does not compute."""
    unknown = sorted(set(kwargs) - set(DEMUCS_ARGUMENTS))
    if unknown:
        raise ConfigError(f"demucs HTDemucs kwargs: {unknown[0]!r} is not an argument of demucs's HTDemucs (v4)")
    if "sources" not in kwargs:
        raise ConfigError("demucs HTDemucs kwargs: 'sources' is missing (demucs's HTDemucs requires it)")
    return HTDemucsConfig(**kwargs)  # a Fraction segment is kept exactly (`HTDemucsConfig.segment_fraction`)


def htdemucs_params_from_state(state: Mapping[str, Any], config: Any) -> dict:
    """demucs `HTDemucs.state_dict()` (numpy arrays or torch tensors, any float dtype: demucs's .th files hold
    float16) -> nested Flax params of float32 numpy arrays for `HTDemucsModule`.

    Total: every key is consumed or listed as known-unused (`conversion_table`), every Flax leaf is filled and
    every shape is checked. Raises one-line `CheckpointError` naming the offending keys otherwise.
    """
    table, unused = conversion_table(config)
    expected = {e.torch_key: e for e in table}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected) - set(unused))
    if missing or unexpected:
        parts = [f"missing {_listed(missing)}"] if missing else []
        parts += [f"unexpected {_listed(unexpected)}"] if unexpected else []
        raise CheckpointError(f"HTDemucs state dict does not match its config: {'; '.join(parts)}")
    arrays = {key: as_numpy(state[key]) for key in expected}
    for key, array in arrays.items():
        if tuple(array.shape) != expected[key].torch_shape:
            raise CheckpointError(
                f"HTDemucs state dict: {key} has shape {tuple(array.shape)}, the config needs "
                f"{expected[key].torch_shape}"
            )
        if not np.issubdtype(array.dtype, np.floating):
            raise CheckpointError(f"HTDemucs state dict: {key} holds {array.dtype}, not floating-point values")
        if not np.isfinite(array).all():
            raise CheckpointError(f"HTDemucs state dict: {key} holds NaN or infinite values")
    flat = {e.flax_path: to_flax(arrays[e.torch_key].astype(np.float32), e.kind) for e in table}
    return unflatten_dict(flat)


def param_shapes(config: Any) -> dict:
    """Nested dict of the Flax parameter shapes (no arrays are built)."""
    table, _ = conversion_table(config)
    return unflatten_dict({e.flax_path: flax_shape(e) for e in table})


def random_htdemucs_state(config: Any, seed: int = 0) -> dict[str, np.ndarray]:
    """A demucs-named state dict drawn like a freshly built `HTDemucs`: convolution and linear weights and biases
    U(+-1/sqrt(fan_in)) then demucs's `rescale_module` on every convolution (weight and bias divided by
    sqrt(std(weight) / 0.1)), attention input projections Xavier-uniform with zero biases, norms 1 and 0,
    LayerScales at their initial values, the smoothed scaled frequency embedding. Numpy only: no forward pass."""
    rng = np.random.default_rng(seed)
    plan = plan_htdemucs(config)
    table, _ = conversion_table(config)
    weights = {e.torch_key: e for e in table if e.role == "weight"}
    state: dict[str, np.ndarray] = {}
    for e in table:
        if e.torch_key.endswith("in_proj_weight"):
            bound = np.sqrt(6 / sum(e.torch_shape))  # torch: Xavier over the whole (3 dim, dim) stack
            state[e.torch_key] = rng.uniform(-bound, bound, e.torch_shape)
        elif e.torch_key.endswith(("in_proj_bias", "out_proj.bias")):
            state[e.torch_key] = np.zeros(e.torch_shape)
        elif e.role in ("weight", "bias"):
            w = weights[e.torch_key[: -len("bias")] + "weight"] if e.role == "bias" else e
            fan_in = w.torch_shape[0 if w.kind == "conv_tr" else 1] * int(np.prod(w.torch_shape[2:]))
            state[e.torch_key] = rng.uniform(-(fan_in**-0.5), fan_in**-0.5, e.torch_shape)
        elif e.role == "norm":
            state[e.torch_key] = np.ones(e.torch_shape) if e.torch_key.endswith(".weight") else np.zeros(e.torch_shape)
        elif e.role == "scale":
            init = 1e-4 if e.torch_key.startswith("crosstransformer") else float(config.dconv_init)
            state[e.torch_key] = np.full(e.torch_shape, init)
        elif e.role == "embedding":
            assert plan.freq_emb is not None, "an embedding weight without a frequency embedding in the plan"
            w = rng.standard_normal(e.torch_shape)
            if plan.freq_emb.smooth:
                w = np.cumsum(w, axis=0) / np.sqrt(np.arange(1, e.torch_shape[0] + 1))[:, None]
            state[e.torch_key] = w / plan.freq_emb.scale
    for e in table:
        # demucs rescales the U-Net's convolutions before it builds the channel up/downsamplers and the transformer
        if e.role == "weight" and e.kind in ("conv", "conv_tr") and not e.torch_key.startswith("channel_"):
            scale = np.sqrt(state[e.torch_key].std(ddof=1) / 0.1)
            state[e.torch_key] /= scale
            state[e.torch_key[: -len("weight")] + "bias"] /= scale
    return {k: v.astype(np.float32) for k, v in state.items()}
