"""torchaudio HDemucs state dict <-> Flax params, numpy only, total and checked.

Every torchaudio key has exactly one Flax leaf (even `norm1` of an empty encoder layer, which torchaudio
builds and never uses, so a round trip is exact). Layout changes, each named once:
- Conv1d/Conv2d weight (out, in, *k)       -> kernel (*k, in, out)
- ConvTranspose1d/2d weight (in, out, *k)  -> kernel (*k, in, out)   (not flipped: see `ConvTranspose`)
- Linear / LSTM weight (out, in)           -> kernel (in, out)
- GroupNorm weight                         -> scale
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

from ...errors import CheckpointError
from ...models.hdemucs.layer_plan import (
    ATTN_DECAYS,
    ATTN_HEADS,
    DCONV_KERNEL,
    LSTM_LAYERS,
    DConvPlan,
    DecoderPlan,
    EncoderPlan,
    flax_name,
    plan_layers,
)

# The tensors of one layer and direction of a torch `nn.LSTM` with `hidden` units reading `width` features:
# torch name, Flax name, layout change, torch shape. Gates i, f, g, o are stacked along the first axis.
_LSTM_TENSORS = (
    ("weight_ih", "kernel_ih", "linear", lambda hidden, width: (4 * hidden, width)),
    ("weight_hh", "kernel_hh", "linear", lambda hidden, width: (4 * hidden, hidden)),
    ("bias_ih", "bias_ih", "same", lambda hidden, width: (4 * hidden,)),
    ("bias_hh", "bias_hh", "same", lambda hidden, width: (4 * hidden,)),
)


@dataclass(frozen=True)
class Entry:
    torch_key: str
    flax_path: tuple[str, ...]
    torch_shape: tuple[int, ...]
    kind: str  # layout change: "conv" | "conv_tr" | "linear" | "same"
    role: str  # what the tensor is: "weight" | "bias" (conv/linear), "lstm", "norm", "scale", "embedding"


def dconv_names(lstm: bool, attn: bool) -> list[str | None]:
    """Positional indices of one `_DConv` branch (an `nn.Sequential` in torchaudio).

    torchaudio builds [conv, norm, GELU, conv, norm, GLU, LayerScale] and then inserts LocalState at index 3
    and the BLSTM at index 3, so both shift what follows. None marks parameter-free modules.
    """
    names: list[str | None] = ["conv_in", "norm_in", None, "conv_out", "norm_out", None, "layer_scale"]
    if attn:
        names.insert(3, "attn")
    if lstm:
        names.insert(3, "lstm")
    return names


def conversion_table(config: Any) -> list[Entry]:
    """Every parameter of the model described by `config`, in torchaudio's and Flax's naming. Parameters that
    exist in demucs's `HDemucs` only (a decoder layer's DConv, `dconv_mode` 2 and 3) are named as torchaudio would
    name them (`freq_decoder.N.dconv.layers.B.I...`, like the encoders')."""
    plan = plan_layers(config)
    entries: list[Entry] = []

    def add(torch_key: str, flax_path: tuple[str, ...], shape: tuple[int, ...], kind: str, role: str) -> None:
        entries.append(Entry(torch_key, flax_path, tuple(shape), kind, role))

    def conv(key: str, path: tuple[str, ...], cout: int, cin: int, kernel: tuple[int, ...], kind: str = "conv") -> None:
        shape = (cin, cout, *kernel) if kind == "conv_tr" else (cout, cin, *kernel)
        add(f"{key}.weight", (*path, "kernel"), shape, kind, "weight")
        add(f"{key}.bias", (*path, "bias"), (cout,), "same", "bias")

    def norm(key: str, path: tuple[str, ...], channels: int) -> None:
        add(f"{key}.weight", (*path, "scale"), (channels,), "same", "norm")
        add(f"{key}.bias", (*path, "bias"), (channels,), "same", "norm")

    def lstm(key: str, path: tuple[str, ...], hidden: int) -> None:
        """torchaudio `_BLSTM`: a 2-layer bidirectional `nn.LSTM` (gates i, f, g, o stacked) and a `Linear`."""
        for layer in range(LSTM_LAYERS):
            width = hidden if layer == 0 else 2 * hidden  # layer 1 reads both directions of layer 0
            for direction in ("", "_reverse"):
                for torch_name, flax_leaf, kind, shape in _LSTM_TENSORS:
                    add(
                        f"{key}.lstm.{torch_name}_l{layer}{direction}",
                        (*path, "lstm", f"{flax_leaf}_l{layer}{direction}"),
                        shape(hidden, width),
                        kind,
                        "lstm",
                    )
        add(f"{key}.linear.weight", (*path, "linear", "kernel"), (hidden, 2 * hidden), "linear", "weight")
        add(f"{key}.linear.bias", (*path, "linear", "bias"), (hidden,), "same", "bias")

    def kernel(layer: EncoderPlan | DecoderPlan, k: int) -> tuple[int, ...]:
        return (k, 1) if layer.freq else (k,)

    def square(layer: EncoderPlan | DecoderPlan) -> tuple[int, ...]:
        k = 1 + 2 * layer.context
        return (k, k) if layer.freq else (k,)

    def dconv(key: str, path: tuple[str, ...], d: DConvPlan) -> None:
        for branch in range(d.depth):
            for index, name in enumerate(dconv_names(d.lstm, d.attn)):
                if name is None:  # parameter-free (GELU, GLU)
                    continue
                sub_key, sub_path = f"{key}.dconv.layers.{branch}.{index}", (*path, "dconv", f"layers_{branch}", name)
                hidden, channels = d.hidden, d.channels
                if name == "conv_in":
                    conv(sub_key, sub_path, hidden, channels, (DCONV_KERNEL,))
                elif name == "conv_out":
                    conv(sub_key, sub_path, 2 * channels, hidden, (1,))
                elif name == "norm_in":
                    norm(sub_key, sub_path, hidden)
                elif name == "norm_out":
                    norm(sub_key, sub_path, 2 * channels)
                elif name == "layer_scale":
                    add(f"{sub_key}.scale", (*sub_path, "scale"), (channels,), "same", "scale")
                elif name == "attn":
                    for proj in ("content", "query", "key", "proj"):
                        conv(f"{sub_key}.{proj}", (*sub_path, proj), hidden, hidden, (1,))
                    conv(f"{sub_key}.query_decay", (*sub_path, "query_decay"), ATTN_HEADS * ATTN_DECAYS, hidden, (1,))
                elif name == "lstm":
                    lstm(sub_key, sub_path, hidden)

    for layer in (*plan.freq_encoder, *plan.time_encoder):
        key, path = layer.path, (flax_name(layer.path),)
        conv(f"{key}.conv", (*path, "conv"), layer.chout, layer.chin, kernel(layer, layer.kernel_size))
        if layer.norm:
            norm(f"{key}.norm1", (*path, "norm1"), layer.chout)
        if layer.empty:
            continue
        if layer.rewrite:
            conv(f"{key}.rewrite", (*path, "rewrite"), 2 * layer.chout, layer.chout, square(layer))
            if layer.norm:
                norm(f"{key}.norm2", (*path, "norm2"), 2 * layer.chout)
        if layer.dconv is not None:
            dconv(key, path, layer.dconv)

    for layer in (*plan.freq_decoder, *plan.time_decoder):
        key, path = layer.path, (flax_name(layer.path),)
        if layer.rewrite:
            conv(f"{key}.rewrite", (*path, "rewrite"), 2 * layer.chin, layer.chin, square(layer))
            if layer.norm:
                norm(f"{key}.norm1", (*path, "norm1"), 2 * layer.chin)
        if layer.dconv is not None:  # demucs's dconv_mode 2 and 3; the keys follow the encoders' pattern
            dconv(key, path, layer.dconv)
        conv(f"{key}.conv_tr", (*path, "conv_tr"), layer.chout, layer.chin, kernel(layer, layer.kernel_size), "conv_tr")
        if layer.norm:
            norm(f"{key}.norm2", (*path, "norm2"), layer.chout)

    if plan.freq_emb is not None:
        add(
            "freq_emb.embedding.weight",
            ("freq_emb",),
            (plan.freq_emb.num_embeddings, plan.freq_emb.dim),
            "same",
            "embedding",
        )
    return entries


def to_flax(value: np.ndarray, kind: str) -> np.ndarray:
    nd = value.ndim
    if kind == "conv":  # (out, in, *k) -> (*k, in, out)
        return np.ascontiguousarray(value.transpose(*range(2, nd), 1, 0))
    if kind == "conv_tr":  # (in, out, *k) -> (*k, in, out)
        return np.ascontiguousarray(value.transpose(*range(2, nd), 0, 1))
    if kind == "linear":
        return np.ascontiguousarray(value.T)
    return np.array(value)


def flax_shape(entry: Entry) -> tuple[int, ...]:
    """Shape of the Flax leaf for `entry`: `to_flax`'s layout change applied to the shape alone."""
    shape = entry.torch_shape
    if entry.kind == "conv":
        return (*shape[2:], shape[1], shape[0])
    if entry.kind == "conv_tr":
        return (*shape[2:], shape[0], shape[1])
    if entry.kind == "linear":
        return shape[::-1]
    return shape


def to_torch(value: np.ndarray, kind: str) -> np.ndarray:
    nd = value.ndim
    if kind == "conv":  # (*k, in, out) -> (out, in, *k)
        return np.ascontiguousarray(value.transpose(nd - 1, nd - 2, *range(nd - 2)))
    if kind == "conv_tr":  # (*k, in, out) -> (in, out, *k)
        return np.ascontiguousarray(value.transpose(nd - 2, nd - 1, *range(nd - 2)))
    if kind == "linear":
        return np.ascontiguousarray(value.T)
    return np.array(value)


def as_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor, without importing torch
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _mismatch_error(what: str, missing: list[str], unexpected: list[str], wrong: list[str]) -> CheckpointError:
    def listed(items: list[str], limit: int = 8) -> str:
        more = f" and {len(items) - limit} more" if len(items) > limit else ""
        return f"{items[:limit]}{more}"

    parts = []
    if missing:
        parts.append(f"missing keys {listed(missing)}")
    if unexpected:
        parts.append(f"unexpected keys {listed(unexpected)}")
    if wrong:
        parts.append(f"wrong shapes {listed(wrong)}")
    return CheckpointError(f"{what} does not match the HDemucs config: " + "; ".join(parts))


def convert_torchaudio_state_dict(
    state_dict: Mapping[str, Any],
    config: Any,
    *,
    what: str = "torchaudio state dict",
    key_name: Callable[[str], str] | None = None,
) -> dict:
    """torchaudio `HDemucs.state_dict()` (tensors or arrays) -> nested Flax params dict of float32 numpy.

    Raises `CheckpointError` naming every missing key, unexpected key and wrongly shaped tensor. `what` names the
    source in messages and `key_name` spells a key as that source does (another converter that renames its keys
    to torchaudio's first, `models.hdemucs.convert_demucs`, names them as its checkpoint does).
    """
    name = key_name or (lambda key: key)
    table = conversion_table(config)
    expected = {e.torch_key: e for e in table}
    missing = sorted(name(k) for k in set(expected) - set(state_dict))
    unexpected = sorted(name(k) for k in set(state_dict) - set(expected))
    arrays = {k: as_numpy(v) for k, v in state_dict.items() if k in expected}
    wrong = sorted(
        f"{name(k)}: {tuple(a.shape)} (expected {expected[k].torch_shape})"
        for k, a in arrays.items()
        if tuple(a.shape) != expected[k].torch_shape
    )
    if missing or unexpected or wrong:
        raise _mismatch_error(what, missing, unexpected, wrong)
    bad_dtype = sorted(name(k) for k, a in arrays.items() if not np.issubdtype(a.dtype, np.floating))
    if bad_dtype:
        raise CheckpointError(f"{what}: non-float tensors {bad_dtype}")
    flat = {e.flax_path: to_flax(arrays[e.torch_key].astype(np.float32), e.kind) for e in table}
    return unflatten_dict(flat)


def to_torchaudio_state_dict(params: Mapping[str, Any], config: Any) -> dict[str, np.ndarray]:
    """Inverse of `convert_torchaudio_state_dict`: Flax params -> {torchaudio key: float32 numpy array}."""
    table = conversion_table(config)
    flat = {k: np.asarray(v) for k, v in flatten_dict(dict(params)).items()}
    expected = {e.flax_path: e for e in table}
    missing = sorted("/".join(p) for p in set(expected) - set(flat))
    unexpected = sorted("/".join(p) for p in set(flat) - set(expected))
    wrong = []
    for path, e in expected.items():
        if path in flat:
            want = flax_shape(e)
            if flat[path].shape != want:
                wrong.append(f"{'/'.join(path)}: {flat[path].shape} (expected {want})")
    if missing or unexpected or wrong:
        raise _mismatch_error("Flax params", missing, unexpected, sorted(wrong))
    return {e.torch_key: to_torch(flat[e.flax_path].astype(np.float32), e.kind) for e in table}


def random_torchaudio_state_dict(config: Any, seed: int = 0) -> dict[str, np.ndarray]:
    """A state dict drawn like torchaudio's initialisation of `HDemucs(**config.torchaudio_kwargs())` (demucs's for
    a config with demucs-only options: the same rules, its `rescale` 0.1 included).

    torch's defaults: conv/linear weights and biases U(-1/sqrt(fan_in), 1/sqrt(fan_in)), LSTM tensors
    U(-1/sqrt(hidden), 1/sqrt(hidden)), GroupNorm 1 and 0, LayerScale `dconv_init`, LocalState's decay query
    weight x0.01 and bias -2, the smoothed scaled embedding, then `_rescale_module` (every convolution's weight
    and bias divided by sqrt(std(weight) / 0.1)). Numpy only: building a model never runs its forward pass.
    """
    rng = np.random.default_rng(seed)
    emb = plan_layers(config).freq_emb
    table = conversion_table(config)
    weights = {e.torch_key: e for e in table if e.role == "weight"}
    out: dict[str, np.ndarray] = {}
    for e in table:
        if e.role in ("weight", "bias"):
            w = weights[e.torch_key[: -len("bias")] + "weight"] if e.role == "bias" else e
            fan_in = w.torch_shape[0 if w.kind == "conv_tr" else 1] * int(np.prod(w.torch_shape[2:]))
            out[e.torch_key] = rng.uniform(-(fan_in**-0.5), fan_in**-0.5, e.torch_shape)
        elif e.role == "lstm":
            hidden = e.torch_shape[0] // 4
            out[e.torch_key] = rng.uniform(-(hidden**-0.5), hidden**-0.5, e.torch_shape)
        elif e.role == "norm":
            out[e.torch_key] = np.ones(e.torch_shape) if e.torch_key.endswith(".weight") else np.zeros(e.torch_shape)
        elif e.role == "scale":
            out[e.torch_key] = np.full(e.torch_shape, float(config.dconv_init))
        elif e.role == "embedding":
            assert emb is not None, "an embedding weight without a frequency embedding in the plan"
            w = rng.standard_normal(e.torch_shape)
            if emb.smooth:
                w = np.cumsum(w, axis=0) / np.sqrt(np.arange(1, e.torch_shape[0] + 1))[:, None]
            out[e.torch_key] = w / emb.scale
    for e in table:
        if e.torch_key.endswith("query_decay.weight"):
            out[e.torch_key] *= 0.01
        elif e.torch_key.endswith("query_decay.bias"):
            out[e.torch_key][:] = -2
    for e in table:
        if e.role == "weight" and e.kind in ("conv", "conv_tr"):
            scale = np.sqrt(out[e.torch_key].std(ddof=1) / 0.1)
            out[e.torch_key] /= scale
            out[e.torch_key[: -len("weight")] + "bias"] /= scale
    return {k: v.astype(np.float32) for k, v in out.items()}


def param_shapes(config: Any) -> dict:
    """Nested dict of the Flax parameter shapes (no arrays are built)."""
    table = conversion_table(config)
    return unflatten_dict({e.flax_path: flax_shape(e) for e in table})
