"""Hybrid Demucs music source separation in JAX/Flax, numerically identical to torchaudio's HDemucs.

The package face is lazy: `import modeling_hdemucs_flax` loads nothing heavy, and each name below imports its
module on first use (as transformers' own `_LazyModule` does), so the command line answers `--help` and usage
errors without loading JAX or transformers. `HDemucsConfig` and `FlaxHDemucs` register themselves with
`AutoConfig` / `FlaxAutoModel` when first used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# name -> the submodule that defines it
_EXPORTS = {
    "AUDIO_EXTENSIONS": "audio_io",
    "AudioInfo": "audio_io",
    "inspect_audio": "audio_io",
    "read_audio": "audio_io",
    "write_audio": "audio_io",
    "HDemucsConfig": "configuration_hdemucs",
    "AudioError": "errors",
    "AudioFormatError": "errors",
    "AudioTooLongError": "errors",
    "CheckpointError": "errors",
    "ConfigError": "errors",
    "DatasetError": "errors",
    "DownloadError": "errors",
    "HDemucsFlaxError": "errors",
    "ModelLoadError": "errors",
    "ModelOutputError": "errors",
    "OptionError": "errors",
    "one_line": "errors",
    "Report": "dataset",
    "WorkerResources": "dataset",
    "separate_dataset": "dataset",
    "OutputOptions": "file_output",
    "Track": "file_output",
    "find_tracks": "file_output",
    "plan_outputs": "file_output",
    "separate_file": "file_output",
    "plan_layers": "layer_plan",
    "relative_error_db": "metrics",
    "FlaxHDemucs": "modeling_flax_hdemucs",
    "FlaxHDemucsOutput": "modeling_flax_hdemucs",
    "HDemucsModule": "modeling_flax_hdemucs",
    "SeparationOptions": "options",
    "load_model": "pretrained",
    "cache_dir": "runtime",
    "configure_compilation_cache": "runtime",
    "configure_xla": "runtime",
    "hide_torch_from_transformers": "runtime",
    "Separator": "separation",
    "synth_song": "synthetic",
    "convert_torchaudio_state_dict": "weight_conversion",
    "to_torchaudio_state_dict": "weight_conversion",
}

__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


if TYPE_CHECKING:  # what static checkers and IDEs see; at run time the names load lazily
    from .audio_io import AUDIO_EXTENSIONS, AudioInfo, inspect_audio, read_audio, write_audio
    from .configuration_hdemucs import HDemucsConfig
    from .dataset import Report, WorkerResources, separate_dataset
    from .errors import (
        AudioError,
        AudioFormatError,
        AudioTooLongError,
        CheckpointError,
        ConfigError,
        DatasetError,
        DownloadError,
        HDemucsFlaxError,
        ModelLoadError,
        ModelOutputError,
        OptionError,
        one_line,
    )
    from .file_output import OutputOptions, Track, find_tracks, plan_outputs, separate_file
    from .layer_plan import plan_layers
    from .metrics import relative_error_db
    from .modeling_flax_hdemucs import FlaxHDemucs, FlaxHDemucsOutput, HDemucsModule
    from .options import SeparationOptions
    from .pretrained import load_model
    from .runtime import cache_dir, configure_compilation_cache, configure_xla, hide_torch_from_transformers
    from .separation import Separator
    from .synthetic import synth_song
    from .weight_conversion import convert_torchaudio_state_dict, to_torchaudio_state_dict
