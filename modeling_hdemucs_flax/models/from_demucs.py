"""A model of the family from one of demucs's own checkpoints, read as data (`weights.demucs_checkpoint`).

`model_from_demucs_package(package)` builds the config from the package's constructor arguments (demucs's names)
and converts its state: `demucs.htdemucs.HTDemucs` -> `FlaxHTDemucs`, `demucs.hdemucs.HDemucs` -> `FlaxHDemucs`.
Nothing from the file is imported or called; every problem is one `CheckpointError` / `ConfigError` line.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from ..errors import CheckpointError, ConfigError, describe
from ..weights.demucs_checkpoint import DemucsPackage, expected_class
from .family import FlaxSeparationModel


def _constructor_kwargs(package: DemucsPackage) -> dict[str, Any]:
    """The keyword arguments demucs would call the class with: `kwargs`, with the sources demucs's constructors
    take as their first positional argument."""
    kwargs = dict(package.kwargs)
    if "sources" not in kwargs and package.args:
        kwargs["sources"] = package.args[0]
    if len(package.args) > 1:
        raise CheckpointError(f"{package.klass}: {len(package.args)} positional arguments; demucs models take one")
    return kwargs


def model_from_demucs_package(
    package: DemucsPackage,
    *,
    name: str = "the checkpoint",
    segment: float | None = None,
    dtype: Any = jnp.float32,
    **model_options: Any,
) -> FlaxSeparationModel:
    """The Flax model `package` holds. `name` names it in errors; `segment` (seconds) is a bag's segment that
    overrides an HDemucs member's own (as demucs's `BagOfModels` does; HTDemucs keeps its training segment).
    `model_options` (e.g. `matmul_precision`) go to the model's constructor."""
    kwargs = _constructor_kwargs(package)
    try:
        architecture = expected_class(package)
        if architecture == "htdemucs":
            from .htdemucs.configuration_htdemucs import DEMUCS_ARGUMENTS, HTDemucsConfig
            from .htdemucs.convert_demucs import htdemucs_params_from_state
            from .htdemucs.modeling_flax_htdemucs import FlaxHTDemucs

            unknown = sorted(set(kwargs) - set(DEMUCS_ARGUMENTS))
            if unknown:  # demucs would fail on them; transformers' config would silently keep them
                raise ConfigError(f"{package.klass} takes no argument {', '.join(map(repr, unknown))}")
            config = HTDemucsConfig(**kwargs)
            params = htdemucs_params_from_state(package.state, config)
            return FlaxHTDemucs(config, dtype=dtype, params=jax.device_put(params), **model_options)
        from .hdemucs.convert_demucs import hdemucs_config_from_demucs_kwargs, hdemucs_params_from_demucs_state
        from .hdemucs.modeling_flax_hdemucs import FlaxHDemucs

        if segment is not None:
            kwargs["segment"] = segment
        config = hdemucs_config_from_demucs_kwargs(kwargs)
        params = hdemucs_params_from_demucs_state(package.state, config)
        return FlaxHDemucs(config, dtype=dtype, params=jax.device_put(params), **model_options)
    except (CheckpointError, ConfigError) as error:
        raise type(error)(f"{name}: {describe(error)}") from None
    except TypeError as error:  # an argument the config class does not take
        raise ConfigError(f"{name}: {package.klass} arguments: {error}") from None
