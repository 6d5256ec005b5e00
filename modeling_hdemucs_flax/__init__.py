"""Hybrid Demucs music source separation in JAX/Flax, numerically identical to torchaudio's HDemucs."""

from transformers import AutoConfig, FlaxAutoModel

from .audio_io import AudioError, read_audio, write_audio
from .configuration_hdemucs import HDemucsConfig
from .modeling_flax_hdemucs import FlaxHDemucs, FlaxHDemucsOutput, HDemucsModule
from .separation import Separator
from .weight_conversion import convert_torchaudio_state_dict, to_torchaudio_state_dict

AutoConfig.register(HDemucsConfig.model_type, HDemucsConfig)
FlaxAutoModel.register(HDemucsConfig, FlaxHDemucs)

__all__ = [
    "AudioError",
    "FlaxHDemucs",
    "FlaxHDemucsOutput",
    "HDemucsConfig",
    "HDemucsModule",
    "Separator",
    "convert_torchaudio_state_dict",
    "read_audio",
    "to_torchaudio_state_dict",
    "write_audio",
]
