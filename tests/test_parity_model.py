"""Whole-model parity with torchaudio (CPU, float32, every parameter re-drawn)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from modeling_hdemucs_flax import FlaxHDemucs, HDemucsConfig

from .reference import error_report, music_like, tiny_config, torch_model

# Required: -80 dB for the high model; measured about -122 dB for every preset (float32 rounding only).
MODEL_DB = -110


def _compare(name: str, config: HDemucsConfig, lengths: list[int], seed: int = 0) -> None:
    reference = torch_model(config, seed=seed)
    model = FlaxHDemucs.from_torchaudio(reference.state_dict(), config)
    for length in lengths:
        x = music_like(length, channels=config.audio_channels, seed=length)[None]
        with torch.no_grad():
            want = reference(torch.from_numpy(x)).numpy()
        got = np.asarray(model(x).sources)
        _, db = error_report(f"{name} L={length}", got, want, MODEL_DB)
        assert db < MODEL_DB


# Lengths: multiples of the hop, off by one, and not multiples of any stride; >51,200 samples make the
# tiny model's BLSTM frame its input.
@pytest.mark.parametrize("lengths", [[2300, 25600, 25601, 70001, 123457]])
def test_tiny_config_all_paths(lengths):
    _compare("tiny", tiny_config(), lengths)


def test_tiny_config_variants():
    """Non-default arguments: mono, 2 sources, context 0/2, context_enc 1, negative dconv_depth (no
    dilation), no frequency embedding, growth 1.5, norm everywhere."""
    variants = {
        "mono-2src": tiny_config(audio_channels=1, sources=["a", "b"]),
        "contexts": tiny_config(context=2, context_enc=1),
        "no-dilation-no-emb": tiny_config(dconv_depth=-2, freq_emb=0.0, norm_starts=0, norm_groups=2),
        "growth-1.5": tiny_config(channels=8, growth=1.5, dconv_lstm=9, dconv_attn=9, norm_starts=5),
        "stride-2": HDemucsConfig(nfft=256, depth=7, stride=2, kernel_size=4, channels=4, dconv_lstm=5, dconv_attn=5),
    }
    for name, config in variants.items():
        _compare(name, config, [30001])


def test_low_preset():
    _compare("low", HDemucsConfig.from_preset("low"), [44100, 100003])


def test_medium_preset():
    """nfft 2048: torchaudio's special time-branch layer (kernel 4, stride 2)."""
    _compare("medium", HDemucsConfig.from_preset("medium"), [44100, 100003])


@pytest.mark.slow
def test_high_preset_including_over_30_seconds():
    _compare("high", HDemucsConfig(), [44100, 441001, 31 * 44100 + 17])


def test_shorter_than_torchaudio_accepts():
    """torchaudio's `_spec` raises for inputs shorter than about 1.5 hops; demucs's padding rule (see
    `pad1d_reflect`) makes every length down to one sample valid, with the same output shape."""
    config = tiny_config()
    reference = torch_model(config)
    model = FlaxHDemucs.from_torchaudio(reference.state_dict(), config)
    for length in (1, 2, 100, 383):
        out = np.asarray(model(music_like(length)[None]).sources)
        assert out.shape == (1, 4, 2, length)
        assert np.all(np.isfinite(out))
    with pytest.raises(ValueError), torch.no_grad():
        reference(torch.from_numpy(music_like(100)[None]))
