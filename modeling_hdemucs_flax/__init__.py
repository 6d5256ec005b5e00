"""The Demucs family of music source separators in JAX/Flax, numerically identical to the references: torchaudio's
and demucs's HDemucs (`FlaxHDemucs`), demucs's HTDemucs (`FlaxHTDemucs`).

The package face is lazy: `import modeling_hdemucs_flax` loads nothing heavy, and each name below imports its
module on first use (as transformers' own `_LazyModule` does), so the command line answers `--help` and usage
errors without loading JAX or transformers. The configs and models register themselves with `AutoConfig` /
`FlaxAutoModel` when first used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# name -> the submodule that defines it
_EXPORTS = {
    "AUDIO_EXTENSIONS": "io.audio_io",
    "AudioInfo": "io.audio_io",
    "inspect_audio": "io.audio_io",
    "read_audio": "io.audio_io",
    "write_audio": "io.audio_io",
    "HDemucsConfig": "models.hdemucs.configuration_hdemucs",
    "AudioError": "errors",
    "AudioFormatError": "errors",
    "AudioTooLongError": "errors",
    "CheckpointError": "errors",
    "ConfigError": "errors",
    "DatasetError": "errors",
    "DownloadError": "errors",
    "Evaluation": "evaluation.evaluate",
    "evaluate": "evaluation.evaluate",
    "BSSEvalScores": "evaluation.bss_eval",
    "bss_eval_v4": "evaluation.bss_eval",
    "new_sdr": "evaluation.bss_eval",
    "HDemucsFlaxError": "errors",
    "ModelLoadError": "errors",
    "ModelOutputError": "errors",
    "OptionError": "errors",
    "one_line": "errors",
    "Report": "apps.dataset",
    "WorkerResources": "apps.dataset_worker",
    "separate_dataset": "apps.dataset",
    "OutputOptions": "separation.file_output",
    "Track": "separation.file_output",
    "find_tracks": "separation.file_output",
    "plan_outputs": "separation.file_output",
    "separate_file": "separation.file_output",
    "plan_layers": "models.hdemucs.layer_plan",
    "relative_error_db": "metrics",
    "FlaxDemucsBag": "models.bag",
    "FlaxHDemucs": "models.hdemucs.modeling_flax_hdemucs",
    "FlaxHDemucsOutput": "models.hdemucs.modeling_flax_hdemucs",
    "HDemucsModule": "models.hdemucs.modeling_flax_hdemucs",
    "HTDemucsConfig": "models.htdemucs.configuration_htdemucs",
    "FlaxHTDemucs": "models.htdemucs.modeling_flax_htdemucs",
    "FlaxSeparationModel": "models.family",
    "load_family_model": "models.auto",
    "SeparationOptions": "options",
    "TrainOptions": "training.trainer",
    "Trainer": "training.trainer",
    "find_multitracks": "io.multitrack",
    "load_model": "zoo.pretrained",
    "cache_dir": "runtime",
    "configure_compilation_cache": "runtime",
    "configure_xla": "runtime",
    "hide_torch_from_transformers": "runtime",
    "Separator": "separation.separator",
    "synth_song": "synthetic",
    "convert_torchaudio_state_dict": "models.hdemucs.convert_torchaudio",
    "to_torchaudio_state_dict": "models.hdemucs.convert_torchaudio",
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
    from .apps.dataset import Report, separate_dataset
    from .apps.dataset_worker import WorkerResources
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
    from .evaluation.bss_eval import BSSEvalScores, bss_eval_v4, new_sdr
    from .evaluation.evaluate import Evaluation, evaluate
    from .io.audio_io import AUDIO_EXTENSIONS, AudioInfo, inspect_audio, read_audio, write_audio
    from .io.multitrack import find_multitracks
    from .metrics import relative_error_db
    from .models.auto import load_family_model
    from .models.bag import FlaxDemucsBag
    from .models.family import FlaxSeparationModel
    from .models.hdemucs.configuration_hdemucs import HDemucsConfig
    from .models.hdemucs.convert_torchaudio import convert_torchaudio_state_dict, to_torchaudio_state_dict
    from .models.hdemucs.layer_plan import plan_layers
    from .models.hdemucs.modeling_flax_hdemucs import FlaxHDemucs, FlaxHDemucsOutput, HDemucsModule
    from .models.htdemucs.configuration_htdemucs import HTDemucsConfig
    from .models.htdemucs.modeling_flax_htdemucs import FlaxHTDemucs
    from .options import SeparationOptions
    from .runtime import cache_dir, configure_compilation_cache, configure_xla, hide_torch_from_transformers
    from .separation.file_output import OutputOptions, Track, find_tracks, plan_outputs, separate_file
    from .separation.separator import Separator
    from .synthetic import synth_song
    from .training.trainer import Trainer, TrainOptions
    from .zoo.pretrained import load_model
