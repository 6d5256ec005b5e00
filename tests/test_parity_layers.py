"""Layer-by-layer parity with torchaudio: STFT/iSTFT, every encoder and decoder layer of both branches,
DConv with a BLSTM over more than 200 steps, and LocalState. Inputs of each layer are captured from a full
torchaudio forward pass, so every layer sees realistic activations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchaudio.models._hdemucs import _ispectro, _spectro

from modeling_hdemucs_flax.models.common.layers import BLSTM, DConv, LocalState
from modeling_hdemucs_flax.models.common.spectral import hdemucs_ispec, hdemucs_spec, istft, stft
from modeling_hdemucs_flax.models.hdemucs.hybrid_layers import HDecLayer, HEncLayer
from modeling_hdemucs_flax.models.hdemucs.layer_plan import ATTN_HEADS, LSTM_MAX_STEPS, plan_layers

from .reference import error_report, music_like

LAYER_DB = -110  # measured -125 to -140 dB per layer; float32 rounding order is the only difference


def channels_last(t: torch.Tensor) -> np.ndarray:
    """torch (B, C, F, T) -> (B, F, T, C); (B, C, T) -> (B, T, C)."""
    a = t.detach().numpy()
    return a.transpose(0, 2, 3, 1) if a.ndim == 4 else a.transpose(0, 2, 1)


@pytest.mark.parametrize("nfft", [256, 1024, 4096])
@pytest.mark.parametrize("length", [5000, 44100, 44101])
def test_stft_istft_match_torch(nfft, length):
    hop = nfft // 4
    x = torch.from_numpy(music_like(length, seed=length))
    want = _spectro(x, nfft, hop).numpy()  # (C, F, T)
    got = np.asarray(stft(x.numpy(), nfft, hop)).transpose(0, 2, 1)
    _, db = error_report(f"stft nfft={nfft} L={length}", got, want, -120)
    assert db < -120
    back = _ispectro(torch.from_numpy(want), hop, length).numpy()
    got_back = np.asarray(istft(np.asarray(got).transpose(0, 2, 1), hop, length))
    _, db = error_report(f"istft nfft={nfft} L={length}", got_back, back, -120)
    assert db < -120


@pytest.mark.parametrize("length", [3000, 44100, 70001])
def test_hdemucs_spec_and_ispec_match_torchaudio(tiny_pair, length):
    _, reference, _ = tiny_pair
    x = torch.from_numpy(music_like(length, seed=1))[None]
    want = reference._spec(x).numpy()  # (B, C, F, T)
    got = np.asarray(hdemucs_spec(x.numpy(), reference.nfft)).transpose(0, 1, 3, 2)
    _, db = error_report(f"_spec L={length}", got, want, -120)
    assert db < -120
    back = reference._ispec(torch.from_numpy(want), length).numpy()
    got_back = np.asarray(hdemucs_ispec(want.transpose(0, 1, 3, 2), reference.nfft, length))
    _, db = error_report(f"_ispec L={length}", got_back, back, -120)
    assert db < -120


def _capture(reference: torch.nn.Module, x: np.ndarray) -> dict[str, tuple]:
    """{torchaudio path: (args, output)} for every encoder and decoder layer during one forward."""
    seen: dict[str, tuple] = {}
    handles = []
    for branch in ("freq_encoder", "time_encoder", "freq_decoder", "time_decoder"):
        for index, layer in enumerate(getattr(reference, branch)):
            path = f"{branch}.{index}"
            handles.append(
                layer.register_forward_hook(lambda m, args, out, path=path: seen.__setitem__(path, (args, out)))
            )
    with torch.no_grad():
        reference(torch.from_numpy(x))
    for handle in handles:
        handle.remove()
    return seen


@pytest.mark.parametrize("length", [60001, 100000])
def test_every_encoder_and_decoder_layer_matches(tiny_pair, length):
    config, reference, model = tiny_pair
    plan = plan_layers(config)
    seen = _capture(reference, music_like(length, seed=2)[None])
    layers = {l.path: l for l in (*plan.freq_encoder, *plan.time_encoder, *plan.freq_decoder, *plan.time_decoder)}
    assert set(seen) == set(layers)
    for path, (args, out) in sorted(seen.items()):
        layer = layers[path]
        params = {"params": model.params[path.replace(".", "_")]}
        if "encoder" in path:
            inject = channels_last(args[1]) if len(args) > 1 and args[1] is not None else None
            got = HEncLayer(layer).apply(params, channels_last(args[0]), inject)
            want = out
        else:
            skip = channels_last(args[1]) if args[1] is not None else None
            got, _ = HDecLayer(layer).apply(params, channels_last(args[0]), skip, args[2])
            want = out[0]
        _, db = error_report(f"{path} L={length}", np.asarray(got), channels_last(want), LAYER_DB)
        assert db < LAYER_DB, path


def test_dconv_with_blstm_framing_and_local_state(tiny_pair):
    """freq_encoder.3's DConv has a BLSTM and LocalState; 450 steps make the BLSTM cut 5 windows of 200."""
    config, reference, model = tiny_pair
    plan = plan_layers(config).freq_encoder[3]
    assert plan.dconv.lstm and plan.dconv.attn
    torch_dconv = reference.freq_encoder[3].dconv
    params = model.params["freq_encoder_3"]["dconv"]
    steps = 450
    assert steps > LSTM_MAX_STEPS
    x = torch.from_numpy(np.random.default_rng(3).standard_normal((2, plan.chout, steps)).astype(np.float32))
    with torch.no_grad():
        want = torch_dconv(x)
    got = DConv(plan.dconv).apply({"params": params}, channels_last(x))
    _, db = error_report("dconv (BLSTM framed, LocalState)", np.asarray(got), channels_last(want), LAYER_DB)
    assert db < LAYER_DB

    branch = torch_dconv.layers[0]
    hidden = torch.from_numpy(
        np.random.default_rng(4).standard_normal((2, plan.dconv.hidden, steps)).astype(np.float32)
    )
    with torch.no_grad():
        want_lstm, want_attn = branch[3](hidden), branch[4](hidden)
    got_lstm = BLSTM(plan.dconv.hidden).apply({"params": params["layers_0"]["lstm"]}, channels_last(hidden))
    _, db = error_report("BLSTM 450 steps", np.asarray(got_lstm), channels_last(want_lstm), LAYER_DB)
    assert db < LAYER_DB
    assert plan.dconv.hidden % ATTN_HEADS == 0
    got_attn = LocalState(plan.dconv.hidden).apply({"params": params["layers_0"]["attn"]}, channels_last(hidden))
    _, db = error_report("LocalState 450 steps", np.asarray(got_attn), channels_last(want_attn), LAYER_DB)
    assert db < LAYER_DB


@pytest.mark.parametrize("steps", [1, 7, 200, 201, 299, 300, 301])
def test_blstm_framing_boundaries(tiny_pair, steps):
    """Around the 200-step window (single pass up to 200, windows of 200 with hop 100 beyond)."""
    config, reference, model = tiny_pair
    plan = plan_layers(config).freq_encoder[3]
    blstm = reference.freq_encoder[3].dconv.layers[1][3]
    x = torch.from_numpy(np.random.default_rng(steps).standard_normal((1, plan.dconv.hidden, steps)).astype(np.float32))
    with torch.no_grad():
        want = blstm(x)
    got = BLSTM(plan.dconv.hidden).apply(
        {"params": model.params["freq_encoder_3"]["dconv"]["layers_1"]["lstm"]}, channels_last(x)
    )
    _, db = error_report(f"BLSTM {steps} steps", np.asarray(got), channels_last(want), LAYER_DB)
    assert db < LAYER_DB
