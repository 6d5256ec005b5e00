"""One network of the family from a folder or Hub repo: its `config.json`'s `model_type` picks the class.

`load_network(name, **kwargs)` is `FlaxHDemucs.from_pretrained` / `FlaxHTDemucs.from_pretrained` (strict,
one-line errors: see `FlaxSeparationModel`) for whichever network the folder holds. The classes are imported only
when a config (or a demucs package, `from_demucs`) names them.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

from ..errors import CheckpointError
from ..weights.hub import load_pretrained
from .family import FlaxSeparationModel

# model_type -> (module, class): every architecture of the family this package runs.
MODEL_CLASSES: dict[str, tuple[str, str]] = {
    "hdemucs": ("modeling_hdemucs_flax.models.hdemucs.modeling_flax_hdemucs", "FlaxHDemucs"),
    "htdemucs": ("modeling_hdemucs_flax.models.htdemucs.modeling_flax_htdemucs", "FlaxHTDemucs"),
}
# What transformers' config reader takes from `from_pretrained`'s keyword arguments (the rest is the model's).
_HUB_ARGUMENTS = ("revision", "local_files_only", "cache_dir", "token", "force_download", "proxies")


def model_class(model_type: Any, where: str = "config.json") -> type[FlaxSeparationModel]:
    """The class of `model_type`; `CheckpointError` naming `where` for a type this package does not run."""
    if model_type not in MODEL_CLASSES:
        known = ", ".join(MODEL_CLASSES)
        raise CheckpointError(f"{where}: model_type {model_type!r} is not a model of the Demucs family ({known})")
    module, name = MODEL_CLASSES[model_type]
    return getattr(importlib.import_module(module), name)


def _family_from_pretrained(name: str | os.PathLike, *model_args: Any, **kwargs: Any) -> FlaxSeparationModel:
    from transformers import PretrainedConfig

    hub = {key: kwargs[key] for key in _HUB_ARGUMENTS if key in kwargs}
    config, _ = PretrainedConfig.get_config_dict(name, **hub)
    cls = model_class(config.get("model_type"), f"{name}: config.json")
    return cls._from_pretrained_strict(name, *model_args, **kwargs)


def load_network(name: str | os.PathLike, *model_args: Any, **kwargs: Any) -> FlaxSeparationModel:
    """The network `name` (a `save_pretrained` folder or Hub repo id) holds, as its own class's `from_pretrained`
    loads it (`kwargs`: `dtype`, `matmul_precision`, `revision`, `local_files_only`, ...). Raises
    `ModelLoadError`, or `CheckpointError` / `ConfigError` for the folder's own problems."""
    return load_pretrained(_family_from_pretrained, name, *model_args, **kwargs)
