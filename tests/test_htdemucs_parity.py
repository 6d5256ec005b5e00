"""HTDemucs (demucs v4) parity with demucs's own `HTDemucs`, layer by layer and whole, plus its config and converter.

Reference models are demucs 4.1.0's, built from `HTDemucsConfig.demucs_kwargs()` with every parameter re-drawn
from a seeded generator (`reference.redraw_htdemucs_`): default LayerScales of 1e-4 / 1e-3, unit norm affines and
zero attention biases would hide most of the network. The tiny configs keep the released models' structure (nfft
4096, depth 4, dconv_mode 3, 8 frequency bins at the transformer, pre-norm layers with norm_out and LayerScale) and
shrink the widths, the number of transformer layers and the training segment.
"""

from __future__ import annotations

import copy
import json
from fractions import Fraction

import jax
import numpy as np
import pytest
import torch
from demucs.htdemucs import HTDemucs
from demucs.transformer import create_2d_sin_embedding, create_sin_embedding
from flax.core.frozen_dict import unfreeze
from flax.traverse_util import flatten_dict
from transformers import AutoConfig, FlaxAutoModel

from modeling_hdemucs_flax.errors import AudioError, CheckpointError, ConfigError
from modeling_hdemucs_flax.metrics import relative_error_db
from modeling_hdemucs_flax.models.hdemucs.hybrid_layers import HDecLayer, HEncLayer
from modeling_hdemucs_flax.models.htdemucs.configuration_htdemucs import PRESETS, HTDemucsConfig
from modeling_hdemucs_flax.models.htdemucs.convert_demucs import (
    conversion_table,
    htdemucs_params_from_state,
    param_shapes,
)
from modeling_hdemucs_flax.models.htdemucs.layer_plan import plan_htdemucs
from modeling_hdemucs_flax.models.htdemucs.modeling_flax_htdemucs import FlaxHTDemucs, HTDemucsModule
from modeling_hdemucs_flax.models.htdemucs.transformer import (
    CrossTransformerEncoder,
    CrossTransformerEncoderLayer,
    TransformerEncoderLayer,
    sin_embedding,
    sin_embedding_2d,
)

from .reference import error_report, music_like, redraw_htdemucs_

THRESHOLD_DB = -100  # required; measured about -129 to -135 dB whole-model, -121 to -155 dB per layer and embedding
SEGMENT = Fraction(39, 20)  # 1.95 s = 85,995 samples: the released 7.8 s scaled down 4x


def tiny_config(preset: str = "htdemucs", **overrides) -> HTDemucsConfig:
    """A released preset with 16 base channels (DConv hidden widths 2..16), 3 transformer layers (self, cross,
    self), a 1.95 s segment; `htdemucs`'s bottom_channels 512 becomes 96 (the encoders end at 128 channels)."""
    kwargs = dict(channels=16, t_layers=3, segment=SEGMENT)
    if PRESETS[preset]["bottom_channels"]:
        kwargs["bottom_channels"] = 96
    return HTDemucsConfig.from_preset(preset, **{**kwargs, **overrides})


def demucs_model(config: HTDemucsConfig, seed: int = 0) -> HTDemucs:
    """demucs's HTDemucs for `config`, seeded, re-drawn, in eval mode."""
    torch.manual_seed(seed)
    return redraw_htdemucs_(HTDemucs(**config.demucs_kwargs()).eval(), seed + 1)


def numpy_state(model: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy() for k, v in model.state_dict().items()}


def channels_last(t: torch.Tensor) -> np.ndarray:
    """torch (B, C, F, T) -> (B, F, T, C); (B, C, T) -> (B, T, C)."""
    a = t.detach().numpy()
    return a.transpose(0, 2, 3, 1) if a.ndim == 4 else a.transpose(0, 2, 1)


def check(name: str, got, want) -> None:
    _, db = error_report(name, np.asarray(got), np.asarray(want), THRESHOLD_DB)
    assert db < THRESHOLD_DB, name


@pytest.fixture(scope="module")
def pair():
    """(config, re-drawn demucs HTDemucs, Flax params converted from it) for the 4-source tiny config."""
    config = tiny_config()
    reference = demucs_model(config)
    return config, reference, htdemucs_params_from_state(numpy_state(reference), config)


# --- sinusoidal embeddings -------------------------------------------------------------------------------------


@pytest.mark.parametrize("length, dim", [(135, 96), (1344, 384), (1344, 512), (3000, 512)])
def test_sin_embedding_matches_demucs(length, dim):
    """(1344, 512) is the released htdemucs's time branch: torch's float32 `pow` misrounds 5 of its 256
    divisors by one unit, the worst case here (about -112 dB); the rest agree to float32 rounding."""
    want = create_sin_embedding(length, dim, max_period=10000.0).numpy()[:, 0]
    check(f"sin embedding {length}x{dim}", sin_embedding(length, dim, 10000.0), want)


@pytest.mark.parametrize("dim, height, width", [(96, 8, 84), (384, 8, 336), (512, 8, 336), (512, 8, 1000)])
def test_2d_sin_embedding_matches_demucs(dim, height, width):
    want = create_2d_sin_embedding(dim, height, width, max_period=10000.0).numpy()[0].transpose(1, 2, 0)
    check(f"2-D sin embedding {dim}x{height}x{width}", sin_embedding_2d(dim, height, width, 10000.0), want)


# --- transformer -----------------------------------------------------------------------------------------------

# The released options, then every other transformer option demucs offers and this port runs.
TRANSFORMER_VARIANTS = {
    "released": {},
    "post-norm, group norms, relu, no layer scale, cross first": dict(
        t_norm_first=False, t_group_norm=True, t_gelu=False, t_layer_scale=False, t_cross_first=True
    ),
    "norm_in as group norm, weighted positions": dict(t_norm_in=False, t_norm_in_group=True, t_weight_pos_embed=0.5),
}


def _transformer_inputs(config: HTDemucsConfig, frames: int, steps: int, seed: int):
    dim = plan_htdemucs(config).transformer.dim
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, dim, 8, frames)).astype(np.float32)
    xt = rng.standard_normal((2, dim, steps)).astype(np.float32) * 0.5 + 0.2
    return torch.from_numpy(x), torch.from_numpy(xt)


@pytest.mark.parametrize("variant", sorted(TRANSFORMER_VARIANTS))
def test_cross_transformer_encoder_matches(variant):
    """The whole CrossTransformerEncoder on random (batch 2) inputs: 8 bins x 40 frames against 150 steps."""
    config = tiny_config(**TRANSFORMER_VARIANTS[variant])
    reference = demucs_model(config, seed=3)
    params = htdemucs_params_from_state(numpy_state(reference), config)["crosstransformer"]
    x, xt = _transformer_inputs(config, frames=40, steps=150, seed=4)
    with torch.no_grad():
        want_x, want_xt = reference.crosstransformer(x, xt)
    plan = plan_htdemucs(config).transformer
    got_x, got_xt = CrossTransformerEncoder(plan).apply({"params": params}, channels_last(x), channels_last(xt))
    check(f"crosstransformer ({variant}) x", got_x, channels_last(want_x))
    check(f"crosstransformer ({variant}) xt", got_xt, channels_last(want_xt))


@pytest.mark.parametrize("variant", ["released", "post-norm, group norms, relu, no layer scale, cross first"])
def test_transformer_layers_self_and_cross_match(variant):
    """One self-attention layer and one cross-attention layer of each branch, alone, on tokens of another scale."""
    config = tiny_config(**TRANSFORMER_VARIANTS[variant])
    plan = plan_htdemucs(config).transformer
    reference = demucs_model(config, seed=5)
    params = htdemucs_params_from_state(numpy_state(reference), config)["crosstransformer"]
    rng = np.random.default_rng(6)
    q = torch.from_numpy(2 * rng.standard_normal((2, 300, plan.dim)).astype(np.float32))
    k = torch.from_numpy(rng.standard_normal((2, 120, plan.dim)).astype(np.float32) - 0.3)
    self_index, cross_index = (1, 0) if plan.cross_first else (0, 1)
    for branch in ("layers", "layers_t"):
        layer_self = getattr(reference.crosstransformer, branch)[self_index]
        layer_cross = getattr(reference.crosstransformer, branch)[cross_index]
        with torch.no_grad():
            want_self, want_cross = layer_self(q), layer_cross(q, k)
        got_self = TransformerEncoderLayer(plan).apply({"params": params[f"{branch}_{self_index}"]}, q.numpy())
        got_cross = CrossTransformerEncoderLayer(plan).apply(
            {"params": params[f"{branch}_{cross_index}"]}, q.numpy(), k.numpy()
        )
        check(f"{branch}.{self_index} self-attention ({variant})", got_self, want_self.numpy())
        check(f"{branch}.{cross_index} cross-attention ({variant})", got_cross, want_cross.numpy())


# --- encoder and decoder layers --------------------------------------------------------------------------------


def test_every_encoder_and_decoder_layer_matches(pair):
    """Each layer of both branches (DConv in encoders and decoders: dconv_mode 3) on the inputs it receives in a
    demucs forward pass of music; decoders also compare `pre` (the input of the transposed convolution, after
    the decoder's DConv)."""
    config, reference, params = pair
    plan = plan_htdemucs(config)
    seen: dict[str, tuple] = {}
    handles = []
    for branch in ("encoder", "tencoder", "decoder", "tdecoder"):
        for index, layer in enumerate(getattr(reference, branch)):
            path = f"{branch}.{index}"
            handles.append(layer.register_forward_hook(lambda m, a, o, path=path: seen.__setitem__(path, (a, o))))
    with torch.no_grad():
        reference(torch.from_numpy(music_like(70001, seed=7)[None]))
    for handle in handles:
        handle.remove()
    layers = {layer.path: layer for layer in (*plan.encoder, *plan.tencoder, *plan.decoder, *plan.tdecoder)}
    assert set(seen) == set(layers)
    assert all(layer.dconv is not None for layer in layers.values())
    for path, (args, out) in sorted(seen.items()):
        variables = {"params": params[path.replace(".", "_")]}
        if "encoder" in path:
            check(path, HEncLayer(layers[path]).apply(variables, channels_last(args[0])), channels_last(out))
        else:
            got, pre = HDecLayer(layers[path]).apply(variables, channels_last(args[0]), channels_last(args[1]), args[2])
            check(path, got, channels_last(out[0]))
            check(f"{path} pre", pre, channels_last(out[1]))


# --- whole model -----------------------------------------------------------------------------------------------


def _compare(name: str, config: HTDemucsConfig, reference: HTDemucs, model: FlaxHTDemucs, x: np.ndarray) -> None:
    """Ours against demucs in float32 (the required figure), and both against demucs in float64: ours must be no
    further from float64 than demucs's own float32 output is, give or take 6 dB (measured -1.4 to +0.6 dB; a
    GroupNorm whose blocked sums XLA had merged back into one long reduce was 8 dB off)."""
    with torch.no_grad():
        want = reference(torch.from_numpy(x)).numpy()
        exact = copy.deepcopy(reference).double()(torch.from_numpy(x).double()).numpy()
    got = np.asarray(model(x).sources)
    assert got.shape == (x.shape[0], len(config.sources), config.audio_channels, x.shape[-1])
    theirs, ours = relative_error_db(want, exact), relative_error_db(got, exact)
    print(f"[parity] {name} L={x.shape[-1]} against float64 demucs: demucs float32 {theirs:.1f} dB, ours {ours:.1f} dB")
    check(f"{name} L={x.shape[-1]}", got, want)
    assert ours < theirs + 6, name


def test_whole_model_4_sources_with_bottom_channels(pair):
    """htdemucs's structure (channel up/downsamplers around the transformer): an input shorter than the training
    segment (padded to it, cropped back) and one exactly as long."""
    config, reference, params = pair
    model = FlaxHTDemucs(config, params=params)
    segment = plan_htdemucs(config).training_length
    assert segment == 85995
    for length in (60001, segment):
        _compare(
            "htdemucs-like (4 sources, bottom 96)", config, reference, model, music_like(length, seed=length)[None]
        )


def test_whole_model_6_sources_without_bottom_channels():
    """htdemucs_6s's structure (no channel up/downsamplers), batch of two different songs."""
    config = tiny_config("htdemucs_6s")
    reference = demucs_model(config, seed=10)
    model = FlaxHTDemucs.from_demucs(reference.state_dict(), config)
    x = np.stack([music_like(44100, seed=11), 0.5 * music_like(44100, seed=12)])
    _compare("htdemucs_6s-like (6 sources, no bottom)", config, reference, model, x)


def test_longer_than_the_training_segment(pair):
    """demucs fails on inputs longer than the segment when `use_train_segment` (the model refuses them in one
    line); without it, both run at the input's own length."""
    config, reference, params = pair
    x = music_like(136711, seed=13)[None]  # 3.1 s, over the 1.95 s segment
    with pytest.raises(AudioError, match="longer than the model's training segment"):
        FlaxHTDemucs(config, params=params)(x)
    with pytest.raises(RuntimeError), torch.no_grad():
        reference(torch.from_numpy(x))
    free = HTDemucsConfig(**{**config.demucs_kwargs(), "use_train_segment": False})
    reference.use_train_segment = False
    try:
        _compare("use_train_segment=False", free, reference, FlaxHTDemucs(free, params=params), x)
    finally:
        reference.use_train_segment = True


@pytest.mark.slow
def test_full_size_htdemucs_preset():
    """The released htdemucs's sizes (48 channels, bottom_channels 512, a 512-wide transformer of 5 layers, 8
    heads of 64, 7.8 s segment), random re-drawn weights; two lengths that share the one padded shape."""
    config = HTDemucsConfig.from_preset("htdemucs")
    reference = demucs_model(config, seed=20)
    model = FlaxHTDemucs.from_demucs(reference.state_dict(), config)
    for length in (343980, 200000):
        x = music_like(length, seed=21)[None]
        _compare("htdemucs full size", config, reference, model, x)


# --- config and conversion -------------------------------------------------------------------------------------


def test_converter_and_modules_agree_on_every_parameter():
    """The conversion table (what the converter fills) is exactly the module's parameter tree, for both presets
    and a post-norm variant (whose cross layers' norm3 is known-unused)."""
    for config in (tiny_config(), tiny_config("htdemucs_6s"), tiny_config(t_norm_first=False)):
        module = HTDemucsModule(plan_htdemucs(config))
        shapes = jax.eval_shape(module.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 2, 4096), np.float32))
        tree = jax.tree.map(lambda s: tuple(s.shape), shapes["params"])
        assert tree == param_shapes(config)
        table, unused = conversion_table(config)
        assert len(table) + len(unused) == len(HTDemucs(**config.demucs_kwargs()).state_dict())


def test_converter_is_total_and_names_the_key(pair):
    config, reference, _ = pair
    state = numpy_state(reference)
    half = {k: v.astype(np.float16) for k, v in state.items()}  # demucs's .th files hold float16
    assert (
        htdemucs_params_from_state(half, config)["crosstransformer"]["layers_0"]["norm1"]["scale"].dtype == np.float32
    )
    key = "crosstransformer.layers_t.1.cross_attn.in_proj_weight"
    with pytest.raises(CheckpointError, match=f"missing {key}"):
        htdemucs_params_from_state({k: v for k, v in state.items() if k != key}, config)
    with pytest.raises(CheckpointError, match="unexpected extra.weight"):
        htdemucs_params_from_state({**state, "extra.weight": np.zeros(3, np.float32)}, config)
    with pytest.raises(CheckpointError, match="tdecoder.3.conv_tr.weight has shape"):
        htdemucs_params_from_state({**state, "tdecoder.3.conv_tr.weight": np.zeros((1, 2, 3), np.float32)}, config)
    post_norm = tiny_config(t_norm_first=False)
    table, unused = conversion_table(post_norm)
    assert set(unused) == {
        f"crosstransformer.{b}.1.norm3.{s}" for b in ("layers", "layers_t") for s in ("weight", "bias")
    }
    htdemucs_params_from_state(numpy_state(HTDemucs(**post_norm.demucs_kwargs())), post_norm)


def test_presets_build_the_released_shapes():
    """Parameter counts of demucs's own models for the presets (htdemucs: 41,984,456; htdemucs_6s: 27,414,996)."""
    for preset, count in (("htdemucs", 41_984_456), ("htdemucs_6s", 27_414_996)):
        config = HTDemucsConfig.from_preset(preset)
        table, _ = conversion_table(config)
        assert sum(int(np.prod(e.torch_shape)) for e in table) == count
        reference = HTDemucs(**config.demucs_kwargs())
        assert sum(p.numel() for p in reference.parameters()) == count
        assert reference.segment == Fraction(39, 5) and plan_htdemucs(config).training_length == 343980


def test_config_round_trips(tmp_path):
    config = tiny_config("htdemucs_6s")
    config.save_pretrained(tmp_path / "config")
    stored = json.loads((tmp_path / "config" / "config.json").read_text())
    assert stored["model_type"] == "htdemucs" and stored["segment"] == 1.95 and stored["samplerate"] == 44100
    for loaded in (
        HTDemucsConfig.from_pretrained(tmp_path / "config"),
        AutoConfig.from_pretrained(tmp_path / "config"),
    ):
        assert isinstance(loaded, HTDemucsConfig)
        assert loaded.demucs_kwargs() == config.demucs_kwargs()
        assert loaded.segment_fraction == SEGMENT and loaded.sampling_rate == 44100
        assert loaded.sources == list(PRESETS["htdemucs_6s"]["sources"]) and loaded.audio_channels == 2
    assert HTDemucsConfig(segment=7.8).segment_fraction == Fraction(39, 5)


def test_model_round_trips_through_save_pretrained_and_flax_auto_model(pair, tmp_path):
    config, _, params = pair
    FlaxHTDemucs(config, params=params).save_pretrained(tmp_path / "model")
    loaded = FlaxAutoModel.from_pretrained(tmp_path / "model")
    assert isinstance(loaded, FlaxHTDemucs)
    flat_loaded, flat_params = flatten_dict(unfreeze(loaded.params)), flatten_dict(params)
    assert flat_loaded.keys() == flat_params.keys()
    assert all(np.array_equal(np.asarray(value), flat_params[path]) for path, value in flat_loaded.items())
    FlaxHTDemucs(config, _do_init=False)  # shapes only, no weights drawn


REFUSED = {
    "cac": False,
    "wiener_iters": 1,
    "end_iters": 2,
    "multi_freqs": [0.25, 0.5],
    "t_emb": "cape",
    "t_sparse_self_attn": True,
    "t_sparse_cross_attn": True,
    "t_cape_mean_normalize": False,
    "t_cape_augment": False,
    "t_cape_glob_loc_scale": [100.0, 1.0, 1.4],
    "t_sin_random_shift": 3,
    "channels_time": 32,
    "rewrite": False,
    "t_layers": 0,
    "depth": 5,
    "dconv_mode": 4,
}


@pytest.mark.parametrize("option", sorted(REFUSED))
def test_unsupported_options_are_refused_by_name(option):
    with pytest.raises(ConfigError) as caught:
        HTDemucsConfig(**{option: REFUSED[option]})
    message = str(caught.value)
    assert message.startswith(f"HTDemucsConfig.{option}=") and "\n" not in message, message
