"""Hybrid Demucs music source separation in JAX/Flax, numerically identical to torchaudio's HDemucs."""

from transformers import AutoConfig, FlaxAutoModel

from .configuration_hdemucs import HDemucsConfig
from .modeling_flax_hdemucs import FlaxHDemucs, FlaxHDemucsOutput, HDemucsModule

AutoConfig.register(HDemucsConfig.model_type, HDemucsConfig)
FlaxAutoModel.register(HDemucsConfig, FlaxHDemucs)

__all__ = ["FlaxHDemucs", "FlaxHDemucsOutput", "HDemucsConfig", "HDemucsModule"]
