"""torchaudio reference models and error reporting shared by the tests.

Parity needs weights under which every branch contributes: torchaudio's default LayerScale of 1e-4 would
hide the DConv branches (BLSTM, LocalState) and unit GroupNorm affines hide their parameters. `redraw_`
re-draws every such tensor from a seeded generator; convolution, LSTM and linear weights keep torch's seeded
initialisation.
"""

from __future__ import annotations

import numpy as np
import torch
import torchaudio

from modeling_hdemucs_flax import HDemucsConfig, synth_song
from modeling_hdemucs_flax.metrics import max_abs_error, relative_error_db


def tiny_config(**overrides) -> HDemucsConfig:
    """The low preset with 4 base channels: reaches every path cheaply — the frequency branch collapsing to
    one bin (an empty time layer injecting into it), a time-axis layer in the frequency branch, GroupNorm
    with 4 groups, BLSTM and LocalState in layers 3 and 4 (inputs over 51,200 samples make the BLSTM see
    more than 200 steps), and the frequency embedding."""
    kwargs = dict(channels=4, norm_starts=2, dconv_lstm=3, dconv_attn=3)
    kwargs.update(overrides)
    return HDemucsConfig.from_preset("low", **kwargs)


@torch.no_grad()
def redraw_(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Re-draw LayerScale scales (U[0.5, 1.5]), norm affines (1 + 0.3 N, 0.3 N) and embeddings from a seeded
    generator, in place."""
    gen = torch.Generator().manual_seed(seed)
    for name, tensor in module.state_dict().items():
        if name.endswith(".scale"):
            tensor.copy_(torch.rand(tensor.shape, generator=gen) + 0.5)
        elif _is_norm(module, name):
            if name.endswith("weight"):
                tensor.copy_(1 + 0.3 * torch.randn(tensor.shape, generator=gen))
            else:
                tensor.copy_(0.3 * torch.randn(tensor.shape, generator=gen))
        elif "freq_emb" in name:
            tensor.copy_(0.3 * torch.randn(tensor.shape, generator=gen))
    return module


@torch.no_grad()
def redraw_all_(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """`redraw_`, and every other tensor (convolution, LSTM and linear weights and biases) re-drawn uniformly within
    its own initial range (+-max-abs of the seeded, rescaled initialisation), in place: every parameter drawn
    from `seed`, none left at a constant such as LocalState's decay bias of -2."""
    redraw_(module, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    for name, tensor in module.state_dict().items():
        if name.endswith(".scale") or _is_norm(module, name) or "freq_emb" in name:
            continue
        bound = tensor.abs().max()
        tensor.copy_((2 * torch.rand(tensor.shape, generator=gen) - 1) * bound)
    return module


@torch.no_grad()
def redraw_htdemucs_(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Re-draw in place what a fresh demucs HTDemucs holds as constants: the transformer's LayerScales U[0.5, 1.5],
    the DConv branches' LayerScales U[0.05, 0.15], norm affines 1 + 0.3 N and 0.3 N, the frequency embedding
    0.3 N, zero-initialised biases (attention projections) 0.1 N. Convolution and linear weights keep torch's
    seeded random initialisation.

    Why the DConv scales are of order 0.1, not 1: a time-branch path crosses 16 residual DConv branches (dconv_mode
    3), each renormalised by its GroupNorms; with scales of order 1 the full-size random model amplifies float32
    rounding so much that demucs's own float32 output is only -97 to -104 dB from its float64 output (no float32
    implementation can then agree to -100 dB), against -132 dB with these. The branches still matter: zeroing all
    of them moves the tiny models' output by -14 dB, zeroing one branch of one layer by -44 to -52 dB, far above
    the -100 dB threshold, so a wrong tap, dilation or index shows."""
    gen = torch.Generator().manual_seed(seed)
    for name, tensor in model.state_dict().items():
        owner = model.get_submodule(name.rsplit(".", 1)[0])
        if name.endswith(".scale") and ".dconv." in name:
            tensor.copy_(0.05 + 0.1 * torch.rand(tensor.shape, generator=gen))
        elif name.endswith(".scale"):
            tensor.copy_(torch.rand(tensor.shape, generator=gen) + 0.5)
        elif isinstance(owner, (torch.nn.GroupNorm, torch.nn.LayerNorm)):
            base = 1.0 if name.endswith("weight") else 0.0
            tensor.copy_(base + 0.3 * torch.randn(tensor.shape, generator=gen))
        elif "freq_emb" in name:
            tensor.copy_(0.3 * torch.randn(tensor.shape, generator=gen))
        elif not tensor.any():
            tensor.copy_(0.1 * torch.randn(tensor.shape, generator=gen))
    constant = [n for n, t in model.state_dict().items() if t.numel() > 1 and float(t.std()) == 0]
    assert constant == [], f"parameters left constant: {constant}"
    return model


def _is_norm(module: torch.nn.Module, name: str) -> bool:
    owner = module.get_submodule(name.rsplit(".", 1)[0])
    return isinstance(owner, torch.nn.GroupNorm)


def torch_model(config: HDemucsConfig, seed: int = 0) -> torchaudio.models.HDemucs:
    """torchaudio's HDemucs for `config`, seeded and re-drawn, in eval mode."""
    torch.manual_seed(seed)
    model = torchaudio.models.HDemucs(**config.torchaudio_kwargs()).eval()
    return redraw_(model, seed + 1)


def music_like(samples: int, channels: int = 2, seed: int = 0, sample_rate: int = 44100) -> np.ndarray:
    """A deterministic synthetic song (`synth_song`: drums, bass, chords, a sung melody) with a DC offset of 0.01,
    float32 (channels, samples), peaking near 0.5."""
    return synth_song(samples, sample_rate, channels, seed=seed, peak=0.5, dc_offset=0.01)


def error_report(name: str, got: np.ndarray, want: np.ndarray, threshold_db: float) -> tuple[float, float]:
    """Print and return (max-abs error, relative L2 error in dB) next to the threshold."""
    assert np.shape(got) == np.shape(want), f"{name}: shape {np.shape(got)} != {np.shape(want)}"
    max_abs, db = max_abs_error(got, want), relative_error_db(got, want)
    print(f"[parity] {name}: max-abs {max_abs:.3e}, relative {db:.1f} dB (threshold {threshold_db:.0f} dB)")
    return max_abs, db
