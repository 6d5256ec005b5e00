"""A model of the family from one of demucs's own checkpoints, read as data (`weights.demucs_checkpoint`).

`model_from_demucs(package)` builds the config from the package's constructor arguments (its `args` named in the
constructor's order, as Python would bind `klass(*args, **kwargs)`, and its `kwargs`; demucs's names) and converts
its state: `demucs.htdemucs.HTDemucs` -> `FlaxHTDemucs`, `demucs.hdemucs.HDemucs` -> `FlaxHDemucs`. Nothing from the
file is imported or called; every problem is one `CheckpointError` / `ConfigError` line.
"""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError
from ..weights.demucs_checkpoint import DemucsPackage, expected_class
from .family import FlaxSeparationModel
from .networks import model_class


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


def model_from_demucs(package: DemucsPackage, *, segment: float | None = None, **kwargs: Any) -> FlaxSeparationModel:
    """The model of the family a demucs package holds (`weights.demucs_checkpoint.read_demucs_package`):
    `demucs.htdemucs.HTDemucs` becomes a `FlaxHTDemucs`, `demucs.hdemucs.HDemucs` a `FlaxHDemucs`, with the config
    its args and kwargs describe and its state converted (float32). `segment` (seconds) is a bag's segment, which
    replaces an HDemucs's own as demucs's `BagOfModels` does (an HTDemucs keeps its training segment). `kwargs` go
    to the model's constructor (`dtype`, `matmul_precision`). Raises `CheckpointError` for another class or a
    state that does not match the arguments (keys, shapes), `ConfigError` for arguments that describe no model
    this package runs."""
    import jax

    kind = expected_class(package)
    if kind == "htdemucs":
        from .htdemucs.configuration_htdemucs import DEMUCS_ARGUMENTS
        from .htdemucs.convert_demucs import htdemucs_config_from_demucs_kwargs, htdemucs_params_from_state

        config = htdemucs_config_from_demucs_kwargs(_named_arguments(package, list(DEMUCS_ARGUMENTS)))
        params = htdemucs_params_from_state(package.state, config)
    else:
        from .hdemucs.convert_demucs import (
            DEMUCS_HDEMUCS_DEFAULTS,
            hdemucs_config_from_demucs_kwargs,
            hdemucs_params_from_demucs_state,
        )

        names = ["sources", *DEMUCS_HDEMUCS_DEFAULTS]  # demucs's HDemucs.__init__ order
        arguments = _named_arguments(package, names)
        if segment is not None:
            arguments["segment"] = segment
        config = hdemucs_config_from_demucs_kwargs(arguments)
        params = hdemucs_params_from_demucs_state(package.state, config)
    kwargs["params"] = jax.device_put(params)  # FlaxHDemucs's and FlaxHTDemucs's own argument
    return model_class(kind, package.klass)(config, **kwargs)
