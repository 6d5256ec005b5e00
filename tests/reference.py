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
