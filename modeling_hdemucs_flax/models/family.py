"""What every model of the family is to the rest of the package: `SeparationModel`, the interface, and
`FlaxSeparationModel`, the base of `FlaxHDemucs` and `FlaxHTDemucs`.

The separation schedule, file output, the CLI, the Space, `serve` and the dataset engine use a model only through
this interface: `config.sampling_rate`, `config.sources`, `config.audio_channels`, `max_segment` (the longest
chunk in seconds the network accepts; None: any), `default_segment`, `dtype`, `matmul_precision`, `params`,
`placed_params(where)`, `restricted_to(sources)` and the forward pass `model(waveform, params=..., prepared=...)`
returning `FlaxHDemucsOutput`-like objects with `.sources`. A bag of models (`bag.FlaxDemucsBag`) is the other
`SeparationModel`. `FlaxSeparationModel` also holds what the two `FlaxPreTrainedModel`s share: strict
`from_pretrained` with one-line errors, parameters drawn without a forward pass, and copies of the parameters
placed on chosen devices once.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar, TypeVar

import jax
import numpy as np
from flax.core.frozen_dict import FrozenDict, freeze, unfreeze
from flax.traverse_util import flatten_dict, unflatten_dict
from jax.core import Tracer
from transformers.modeling_flax_utils import FlaxPreTrainedModel

from ..errors import CheckpointError
from ..options import DEFAULT_SEGMENT
from ..weights.hub import load_pretrained

_Model = TypeVar("_Model", bound="FlaxSeparationModel")  # what a class's own from_pretrained returns


class SeparationModel:
    """The interface the rest of the package separates with (see the module doc); a nominal base, so that the
    Separator's annotations hold for a single network and a bag alike. Subclasses provide `config` (with
    `sampling_rate`, `sources`, `audio_channels`, `_name_or_path`), `dtype`, `matmul_precision`, `params`,
    `placed_params(where)` and `__call__`."""

    config: Any
    dtype: Any  # the compute dtype
    matmul_precision: str  # `options.MATMUL_PRECISIONS`
    params: Any  # a tree of arrays (`jax.tree.leaves` gives every parameter)

    @property
    def max_segment(self) -> float | None:
        """The longest chunk, in seconds, the network accepts (None: any length)."""
        return None

    @property
    def default_segment(self) -> float:
        """The chunk length the Separator uses unless told otherwise: the model's own limit, else 7.8 s."""
        return DEFAULT_SEGMENT if self.max_segment is None else self.max_segment

    @property
    def sources(self) -> list[str]:
        """Source names in output order."""
        return list(self.config.sources)

    def restricted_to(self, sources: Iterable[str]) -> SeparationModel:
        """A model whose output is this one's for `sources` (names of `config.sources`); its other sources may be
        zeros, so only a caller that reads nothing else may use it (`file_output` with `--two-stems X
        --other-method minus`). A network computes all its sources at once: a single model is its own
        restriction; a bag runs only the members `sources` need."""
        return self

    def placed_params(self, where: Any) -> tuple[Any, Any]:
        raise NotImplementedError

    def __call__(self, waveform: Any, params: Any = None, return_dict: bool = True, *, prepared: Any = None) -> Any:
        raise NotImplementedError


class FlaxSeparationModel(FlaxPreTrainedModel, SeparationModel):
    """A source separation network of the Demucs family (see the module docstring).

    Subclasses set transformers' class attributes and implement `random_params(seed)` (a full parameter tree drawn
    like the reference's initialisation, numpy, no forward pass), `param_shapes()` and, when the forward pass
    takes a prepared copy of the parameters (re-laid-out weights computed once), `prepare_host(params)`.
    Constructors pass `params=` through `self._given_params` (set before `super().__init__`, cleared after).
    """

    main_input_name = "waveform"
    _given_params: dict | None = None
    _prepared: Any = None
    # Extra constructor keyword arguments to rebuild the same module (e.g. FlaxHDemucs's `dot_dtype`).
    module_options: ClassVar[tuple[str, ...]] = ()

    # -- what subclasses provide

    def random_params(self, seed: int) -> dict:
        raise NotImplementedError

    def param_shapes(self) -> dict:
        raise NotImplementedError

    def prepare_host(self, params: Mapping[str, Any]) -> dict:
        """The prepared collection of host (numpy) `params`; {} for a model that needs none."""
        return {}

    # -- the interface the rest of the package uses (with `SeparationModel`'s)

    @property
    def matmul_precision(self) -> str:
        """How convolutions and matrix products on float32 values are computed (`options.MATMUL_PRECISIONS`)."""
        return self.module.matmul_precision

    @property
    def params(self) -> dict | FrozenDict:
        """The parameters in the stored (checkpoint) layout; assigning new ones drops the prepared copies."""
        getter = FlaxPreTrainedModel.params.fget
        assert getter is not None
        return getter(self)

    @params.setter
    def params(self, params: dict | FrozenDict) -> None:
        setter = FlaxPreTrainedModel.params.fset
        assert setter is not None
        setter(self, params)
        self._prepared = None
        self._placed = {}

    def prepared_params(self, params: Mapping[str, Any] | None = None) -> dict:
        """`prepare_host` of `params` (default: `self.params`, prepared once in numpy and kept until the
        parameters are replaced by assignment; a tree changed in place must be assigned again). Other trees are
        prepared by `prepare_traced`, which also traces (for `jax.jit(lambda p, x: model(x, params=p))`)."""
        if params is None or params is getattr(self, "_params", None):
            if self._prepared is None:
                host = jax.tree.map(np.asarray, unfreeze(self._params))
                self._prepared = jax.device_put(self.prepare_host(host))  # uncommitted, like the params
            return self._prepared
        return self.prepare_traced(params)

    def prepare_traced(self, params: Mapping[str, Any]) -> dict:
        """The prepared collection of any `params` tree, traceable; {} for a model that needs none."""
        return {}

    def placed_params(self, where: Any) -> tuple[Any, dict]:  # a jax.Device or a Sharding (Device is no type here)
        """`(params, prepared)`: `self.params` and `prepared_params()` committed to `where`, one device or a sharding
        (a replicated `NamedSharding` over several devices). Placed once and kept until the parameters are replaced
        by assignment, so running on chosen devices costs no copy per call: `model(x, params=p, prepared=q)`."""
        placed = self.__dict__.setdefault("_placed", {}).get(where)
        if placed is None:
            placed = self._placed[where] = jax.device_put((self.params, self.prepared_params()), where)
        return placed

    # -- transformers' hooks

    def init_weights(
        self, rng: jax.Array, input_shape: tuple[int, ...], params: FrozenDict | None = None
    ) -> FrozenDict:
        """Parameters drawn like the reference's initialisation (numpy; no forward pass is run), or the ones given
        to the constructor. `input_shape` is unused: parameter shapes do not depend on the input length."""
        if self._given_params is not None:
            return freeze(self._given_params)
        if isinstance(rng, Tracer):  # under jax.eval_shape (`_do_init=False`) only shapes matter
            zeros = jax.tree.map(
                lambda shape: jax.numpy.zeros(shape, jax.numpy.float32),
                self.param_shapes(),
                is_leaf=lambda x: isinstance(x, tuple),
            )
            return freeze(zeros)
        seed = int(jax.random.randint(rng, (), 0, 2**31 - 1))
        random_params = self.random_params(seed)
        if params is None:
            return freeze(jax.device_put(random_params))
        random_flat = flatten_dict(random_params)
        given: dict = flatten_dict(unfreeze(params))
        for key in self._missing_keys:
            given[key] = jax.numpy.asarray(random_flat[key])
        self._missing_keys = set()
        return freeze(unflatten_dict(given))

    @classmethod
    def from_pretrained(
        cls: type[_Model], pretrained_model_name_or_path: str | os.PathLike, *model_args: Any, **kwargs: Any
    ) -> _Model:
        """transformers' `from_pretrained`, strict, with one-line errors: a checkpoint whose parameters do not
        exactly match the config (missing, unexpected or wrongly shaped) is a `CheckpointError`, never silently
        re-initialised; a model that cannot be had (offline and not cached, the Hub unreachable, no such
        repository, no weights, unreadable files) is a `ModelLoadError` (also an `OSError`, as transformers'
        errors are). A Hub repo id is fetched only after a short probe of the endpoint (see `hub`)."""
        if kwargs.get("_do_init", True) is False:
            # transformers returns a (model, params) pair here
            return super().from_pretrained(  # pyright: ignore[reportReturnType]
                pretrained_model_name_or_path, *model_args, **kwargs
            )
        kwargs.pop("_do_init", None)
        return load_pretrained(cls._from_pretrained_strict, pretrained_model_name_or_path, *model_args, **kwargs)

    @classmethod
    def _from_pretrained_strict(
        cls: type[_Model], pretrained_model_name_or_path: str | os.PathLike, *model_args: Any, **kwargs: Any
    ) -> _Model:
        """transformers' `from_pretrained` with its errors as they are, then the strictness check."""
        cls._missing_keys = set()
        cls._loaded_keys = None
        loaded: Any = super().from_pretrained(pretrained_model_name_or_path, *model_args, _do_init=False, **kwargs)
        model, params = loaded  # with _do_init=False: (model without parameters, parameters)
        missing = sorted("/".join(k) for k in cls._missing_keys)
        unexpected = sorted("/".join(k) for k in (cls._loaded_keys or set()) - model.required_params)
        cls._missing_keys, cls._loaded_keys = set(), None
        if missing or unexpected:
            raise CheckpointError(
                f"{pretrained_model_name_or_path}: checkpoint does not match its config "
                f"(missing {missing}, unexpected {unexpected})"
            )
        # Parameters are always float32 (a checkpoint may store bfloat16 to halve its size); `dtype` is the
        # compute dtype and is applied per layer. transformers leaves them committed to the host CPU, where a
        # jitted call would follow them (and run on the CPU whatever the default device): they go through host
        # memory to the default device, uncommitted.
        params = jax.device_put(jax.tree.map(lambda a: np.asarray(a, np.float32), params))
        model.config.name_or_path = str(pretrained_model_name_or_path)  # how errors name the model
        module = model.module
        options = {name: getattr(module, name) for name in cls.module_options}
        options.update(params=params, matmul_precision=module.matmul_precision)  # the subclasses' own arguments
        return cls(model.config, dtype=model.dtype, **options)

    @classmethod
    def load_flax_weights(cls, resolved_archive_file: str) -> dict:
        state = super().load_flax_weights(resolved_archive_file)
        cls._loaded_keys = set(flatten_dict(state).keys())  # read by `from_pretrained` to reject extra keys
        return state
