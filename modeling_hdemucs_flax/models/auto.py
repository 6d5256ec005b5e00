"""Any model of the family from a folder or Hub repo (its `config.json`'s `model_type` picks the class), or from a
demucs package (its `klass` does).

`load_family_model(name, **kwargs)` is `FlaxHDemucs.from_pretrained` / `FlaxHTDemucs.from_pretrained` (strict,
one-line errors: see `FlaxSeparationModel`) for whichever model the folder holds. `model_from_demucs(package)`
converts what `weights.demucs_checkpoint` read from a demucs `.th` file. The classes are imported only when a
config or a package names them.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

from ..errors import CheckpointError, ConfigError
from ..weights.demucs_checkpoint import DemucsPackage, expected_class
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


def load_family_model(name: str | os.PathLike, *model_args: Any, **kwargs: Any) -> FlaxSeparationModel:
    """The model `name` (a `save_pretrained` folder or Hub repo id) holds, as its own class's `from_pretrained`
    loads it (`kwargs`: `dtype`, `matmul_precision`, `revision`, `local_files_only`, ...). Raises
    `ModelLoadError`, or `CheckpointError` / `ConfigError` for the folder's own problems."""
    return load_pretrained(_family_from_pretrained, name, *model_args, **kwargs)


def _named_arguments(package: DemucsPackage, names: list[str]) -> dict[str, Any]:
    """The package's args and kwargs as one dict of keyword arguments: `args` named in the constructor's order
    `names`, as Python would bind `klass(*args, **kwargs)`."""
    if len(package.args) > len(names):
        raise ConfigError(
            f"{package.klass} takes at most {len(names)} positional arguments; the checkpoint gives {len(package.args)}"
        )
    positional = dict(zip(names, package.args, strict=False))
    both = [name for name in positional if name in package.kwargs]
    if both:
        raise ConfigError(f"{package.klass}: the checkpoint gives {both[0]!r} both in args and in kwargs")
    return {**positional, **package.kwargs}


def model_from_demucs(package: DemucsPackage, **kwargs: Any) -> FlaxSeparationModel:
    """The model of the family a demucs package holds (`weights.demucs_checkpoint.read_demucs_package`):
    `demucs.htdemucs.HTDemucs` becomes a `FlaxHTDemucs`, `demucs.hdemucs.HDemucs` a `FlaxHDemucs`, with the config
    its args and kwargs describe and its state converted (float32). `kwargs` go to the model's constructor
    (`dtype`, `matmul_precision`). Raises `CheckpointError` for another class or a state that does not match the
    arguments (keys, shapes), `ConfigError` for arguments that describe no model this package runs."""
    import jax

    kind = expected_class(package)
    if kind == "htdemucs":
        from .htdemucs.configuration_htdemucs import DEMUCS_ARGUMENTS
        from .htdemucs.convert_demucs import htdemucs_config_from_demucs_kwargs, htdemucs_params_from_state

        config = htdemucs_config_from_demucs_kwargs(_named_arguments(package, DEMUCS_ARGUMENTS))
        params = htdemucs_params_from_state(package.state, config)
    else:
        from .hdemucs.convert_demucs import (
            DEMUCS_HDEMUCS_DEFAULTS,
            hdemucs_config_from_demucs_kwargs,
            hdemucs_params_from_demucs_state,
        )

        names = ["sources", *DEMUCS_HDEMUCS_DEFAULTS]  # demucs's HDemucs.__init__ order
        config = hdemucs_config_from_demucs_kwargs(_named_arguments(package, names))
        params = hdemucs_params_from_demucs_state(package.state, config)
    return model_class(kind, package.klass)(config, params=jax.device_put(params), **kwargs)
