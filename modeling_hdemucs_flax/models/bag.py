"""A bag of models: several models of the family run on the same chunks, their outputs combined per source with
fixed weights, as demucs's `BagOfModels` and `apply_model` combine them (htdemucs_ft: four fine-tuned HTDemucs,
each its own source's specialist, with one-hot weights).

demucs runs `apply_model` once per member and combines the separated songs: for source k,

    out[k] = sum_m w[m, k] * out_m[k] / sum_m w[m, k]          (each member's output scaled, summed, divided)

The weights are constants per source and overlap-add is linear, so combining the members' outputs chunk by chunk
inside the forward pass, as `FlaxDemucsBag` does, gives the same song as combining whole songs when every member is
run on the same chunks. Hence one rule: the members must accept the same longest chunk (`max_segment`; HTDemucs's
training segment). A bag whose members differ in it is refused in one line (`ConfigError`): running each member
with its own segment, as demucs does, is not supported yet. (demucs's released bags, htdemucs_ft among them,
share one segment.) With random shifts the Separator draws one set of delays for the whole bag where demucs draws
one per member: equal in expectation, not sample for sample.

`bag.restricted_to(sources)` is a bag that runs only the members whose weights for those sources are not all
zero, its other sources zeros: `--two-stems vocals --other-method minus` with htdemucs_ft runs the vocals
specialist alone (`file_output.separate_files` asks for it; nothing reads the zero stems). Members of one
architecture (same class, config, dtype and precision) run through one member's jitted forward pass with their
own parameters as arguments: each distinct architecture compiles once.

A bag folder (`save_pretrained`) is `bag.json` (`bag_manifest`) and one `save_pretrained` folder per member;
`auto.load_family_model` and `pretrained.load_model` read it back (each member through the strict loader).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Float32, Real

from ..errors import CheckpointError, ConfigError
from .bag_manifest import BAG_MODEL_TYPE, BagManifest, check_manifest, is_bag_folder, read_manifest
from .family import FlaxSeparationModel, SeparationModel
from .hdemucs.modeling_flax_hdemucs import FlaxHDemucsOutput
from .networks import load_network


@dataclass
class DemucsBagConfig:
    """What a bag separates, as a single model's config says it (`sampling_rate`, `sources`, `audio_channels`,
    `name_or_path`), and how: the members' names and configs, the weights (one row per member, one weight per
    source), the segment in seconds (None: the members' own) and the sources it `computes` (all of them, or those
    of a `restricted_to` bag)."""

    sources: list[str]
    sampling_rate: int
    audio_channels: int
    members: list[str]
    weights: list[list[float]]
    segment: float | None
    member_configs: list[dict[str, Any]]
    computes: list[str]
    _name_or_path: str = field(default="", repr=False)
    model_type: str = BAG_MODEL_TYPE

    @property
    def name_or_path(self) -> str:
        return self._name_or_path

    @name_or_path.setter
    def name_or_path(self, value: str) -> None:
        self._name_or_path = str(value)

    def to_dict(self) -> dict[str, Any]:
        """Every field (as transformers' configs give theirs: for digests of what the bag computes)."""
        return dataclasses.asdict(self)


def _config_fields(model: SeparationModel) -> dict[str, Any]:
    """A member's config fields that decide what it computes: not where it was loaded from, nor what transformers'
    `save_pretrained` adds to the config it saves (its version, the class name as `architectures`)."""
    return {
        key: value
        for key, value in model.config.to_dict().items()
        if not key.startswith("_") and key not in ("transformers_version", "architectures")
    }


def _architecture(model: SeparationModel) -> str:
    """What decides a member's compiled program: its class, config, compute dtype, precision and module options."""
    module = getattr(model, "module", None)
    options = {name: str(getattr(module, name)) for name in getattr(model, "module_options", ())}
    key = [type(model).__qualname__, _config_fields(model), str(np.dtype(model.dtype)), model.matmul_precision, options]
    return json.dumps(key, sort_keys=True, default=str)


def _member_name(name: str, model: SeparationModel) -> str:
    """How messages name a member: its name in the bag, and the folder it was loaded from when there is one."""
    where = str(getattr(model.config, "_name_or_path", "") or "")
    return f"{name} ({where})" if where else name


def _segment_text(seconds: float | None) -> str:
    return "any length" if seconds is None else f"at most {seconds:g} s"


@jax.jit
def bag_combine(
    outputs: tuple[Float[Array, "batch sources channels samples"], ...],
    weights: Float32[Array, "members sources"],
    totals: Float32[Array, " sources"],
) -> Float32[Array, "batch sources channels samples"]:
    """demucs's combination in its order: each member's output scaled by its weights, summed in member order,
    divided by the sources' total weights (float32, as demucs's `out[:, k] *= w` and `estimates[:, k] /= total`)."""
    combined = None
    for m, output in enumerate(outputs):
        term = output.astype(jnp.float32) * weights[m][None, :, None, None]
        combined = term if combined is None else combined + term
    assert combined is not None, "a bag runs at least one member"
    return combined / totals[None, :, None, None]


class FlaxDemucsBag(SeparationModel):
    """Models of the family (`FlaxHDemucs`, `FlaxHTDemucs`) applied together, their outputs combined per source
    (see the module doc). Usable wherever a single model is: the Separator, file output, the command line, serve,
    the dataset engine and the Space.

    Args:
        members: the models, in the bag's order. They must agree on sources (in order), sampling rate, audio
            channels, compute dtype, matmul precision and longest chunk (`max_segment`); anything else is a
            one-line `ConfigError` naming the member.
        weights: one row per member, one weight per source (None: all ones, demucs's default). The weights of each
            source must not sum to 0.
        segment: the chunk length in seconds the Separator uses by default (None: the members' own
            `default_segment`); at most their `max_segment`. (demucs's bag yaml `segment` also shortens an
            HTDemucs member's training segment, the length its network runs at; here a shorter chunk is padded to
            the training segment, as for a single model given a shorter segment. No released HTDemucs bag sets
            one.)
        names: the members' names (sub-folders of a saved bag; keys of `params`). None: member_0, member_1, ...
        name_or_path: how errors name the bag (set by `from_pretrained` to its folder).
    """

    def __init__(
        self,
        members: Sequence[FlaxSeparationModel],
        weights: Sequence[Sequence[float]] | None = None,
        *,
        segment: float | None = None,
        names: Sequence[str] | None = None,
        name_or_path: str = "",
    ):
        members = tuple(members)
        where = name_or_path or "bag"
        if not members:
            raise ConfigError(f"{where}: a bag needs at least one member")
        names = tuple(names) if names is not None else tuple(f"member_{i}" for i in range(len(members)))
        if len(names) != len(members):
            raise ConfigError(f"{where}: {len(names)} names for {len(members)} members")
        first, first_name = members[0], _member_name(names[0], members[0])
        for name, member in zip(names, members, strict=True):
            if not isinstance(member, FlaxSeparationModel):  # a bag among them included: bags do not nest
                raise ConfigError(f"{where}: member {name} is a {type(member).__name__}, not a network of the family")
        for name, member in zip(names[1:], members[1:], strict=True):
            shown = _member_name(name, member)
            config, reference = member.config, first.config
            facts = (
                ("sources", list(config.sources), list(reference.sources)),
                ("sampling_rate", int(config.sampling_rate), int(reference.sampling_rate)),
                ("audio_channels", int(config.audio_channels), int(reference.audio_channels)),
                ("dtype", str(np.dtype(member.dtype)), str(np.dtype(first.dtype))),
                ("matmul_precision", member.matmul_precision, first.matmul_precision),
            )
            for fact, mine, theirs in facts:
                if mine != theirs:
                    raise ConfigError(
                        f"{where}: member {shown} has {fact} {mine!r}, member {first_name} {theirs!r}; "
                        "the members of a bag must agree"
                    )
            if member.max_segment != first.max_segment:
                raise ConfigError(
                    f"{where}: member {shown} accepts chunks of {_segment_text(member.max_segment)}, member "
                    f"{first_name} of {_segment_text(first.max_segment)}; a bag whose members differ in segment is "
                    "not supported yet"
                )
        sources = list(first.config.sources)
        if weights is None:
            weights = [[1.0] * len(sources) for _ in members]
        rows = [tuple(float(w) for w in row) for row in weights]
        manifest = BagManifest(
            sources=tuple(sources),
            sampling_rate=int(first.config.sampling_rate),
            audio_channels=int(first.config.audio_channels),
            members=names,
            weights=tuple(rows),
            segment=None if segment is None else float(segment),
        )
        check_manifest(manifest, where)
        limit = first.max_segment
        if segment is not None and limit is not None and segment > limit:
            raise ConfigError(f"{where}: segment {segment:g} s is longer than its members accept ({limit:g} s)")
        self.manifest = manifest
        self._members = dict(zip(names, members, strict=True))
        # Each member runs through the first member of its architecture: one compiled program per architecture.
        firsts: dict[str, FlaxSeparationModel] = {}
        self._runners = {name: firsts.setdefault(_architecture(m), m) for name, m in self._members.items()}
        self.config = DemucsBagConfig(
            sources=sources,
            sampling_rate=manifest.sampling_rate,
            audio_channels=manifest.audio_channels,
            members=list(names),
            weights=[list(row) for row in manifest.weights],
            segment=manifest.segment,
            member_configs=[_config_fields(m) for m in members],
            computes=sources,
            _name_or_path=name_or_path,
        )
        self._compute(tuple(sources))

    def _compute(self, computed: tuple[str, ...]) -> None:
        """Run the members `computed` needs, with weights for those sources only (the others come out zero)."""
        weights = np.asarray(self.manifest.weights, np.float64)  # (members, sources)
        wanted = np.asarray([source in computed for source in self.sources])
        self._active = tuple(name for name, row in zip(self._members, weights, strict=True) if np.any(row[wanted] != 0))
        rows = [weights[list(self._members).index(name)] * wanted for name in self._active]
        # demucs sums the weights as Python floats (float64) and divides the float32 estimates by the sum
        totals = np.where(wanted, weights.sum(axis=0), 1.0)
        self._weights = jnp.asarray(np.asarray(rows, np.float32))
        self._totals = jnp.asarray(totals.astype(np.float32))
        self._computed = computed

    # -- what the bag is

    @property
    def members(self) -> dict[str, FlaxSeparationModel]:
        """{name: model}, in the bag's order."""
        return dict(self._members)

    @property
    def weights(self) -> np.ndarray:
        """float64 (members, sources): each member's weight for each source."""
        return np.asarray(self.manifest.weights, np.float64)

    @property
    def active_members(self) -> tuple[str, ...]:
        """The members a forward pass runs: those with a non-zero weight for a source the bag computes."""
        return self._active

    @property
    def computed_sources(self) -> tuple[str, ...]:
        """The sources the forward pass computes (every source but for a `restricted_to` bag: the rest are zeros)."""
        return self._computed

    @property
    def name_or_path(self) -> str:
        return self.config.name_or_path

    @property
    def dtype(self) -> Any:
        """The members' compute dtype."""
        return next(iter(self._members.values())).dtype

    @property
    def matmul_precision(self) -> str:
        return next(iter(self._members.values())).matmul_precision

    @property
    def max_segment(self) -> float | None:
        """The longest chunk, in seconds, every member accepts (they agree on it)."""
        return next(iter(self._members.values())).max_segment

    @property
    def default_segment(self) -> float:
        """The bag's own segment when it has one, else its members' default."""
        segment = self.manifest.segment
        return next(iter(self._members.values())).default_segment if segment is None else segment

    @property
    def params(self) -> dict[str, Any]:
        """{member name: its parameters}, every member's (the bag's identity, whatever it computes)."""
        return {name: member.params for name, member in self._members.items()}

    def placed_params(self, where: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        """`(params, prepared)` of the members the forward pass runs, committed to `where` (see
        `FlaxSeparationModel.placed_params`; each member places its own copy once)."""
        placed = {name: self._members[name].placed_params(where) for name in self._active}
        return {name: p for name, (p, _) in placed.items()}, {name: q for name, (_, q) in placed.items()}

    def restricted_to(self, sources: Iterable[str]) -> FlaxDemucsBag:
        """This bag computing only `sources` (names of `config.sources`; the others come out zero): only members
        with a non-zero weight for one of them run. Shares the members, their placed parameters and compiled
        programs. `ConfigError` for a name the bag does not separate."""
        wanted = list(sources)
        unknown = [name for name in wanted if name not in self.sources]
        if unknown:
            raise ConfigError(
                f"{self.name_or_path or 'bag'}: no source {unknown[0]!r} (it has {', '.join(self.sources)})"
            )
        computed = tuple(source for source in self.sources if source in wanted)
        if not computed:
            raise ConfigError(f"{self.name_or_path or 'bag'}: restricted to no source; name at least one")
        if computed == self._computed:
            return self
        variant = copy.copy(self)
        variant.config = dataclasses.replace(self.config, computes=list(computed))
        variant._compute(computed)
        return variant

    # -- the forward pass

    def __call__(
        self,
        waveform: Real[np.ndarray | Array, "batch channels samples"],
        params: dict[str, Any] | None = None,
        return_dict: bool = True,
        *,
        prepared: dict[str, Any] | None = None,
    ) -> FlaxHDemucsOutput | tuple[Float32[Array, "batch sources channels samples"]]:
        """Separate `waveform` (batch, audio_channels, samples) with every active member and combine their outputs
        per source (demucs's formula): `FlaxHDemucsOutput(sources=(batch, sources, audio_channels, samples))`,
        or `(sources,)` with `return_dict=False`. `params` / `prepared`: {member name: its tree} (as
        `placed_params` gives them); None: the members' own."""
        outputs = []
        for name in self._active:
            member = self._members[name]
            if params is None:
                own, ready = member.params, member.prepared_params()
            else:
                own, ready = params[name], None if prepared is None else prepared[name]
            outputs.append(self._runners[name](waveform, params=own, prepared=ready).sources)
        sources = bag_combine(tuple(outputs), self._weights, self._totals)
        return FlaxHDemucsOutput(sources=sources) if return_dict else (sources,)

    # -- folders

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> Path:
        """Write the bag as a folder: `bag.json` and one `save_pretrained` folder per member (every member, whatever
        the bag computes), `kwargs` passed to each (`safe_serialization` defaults to True). The folder appears
        whole or not at all: it is written beside `save_directory` and renamed into place, replacing what was
        there. Returns the folder."""
        from ..weights.downloads import replace_directory

        kwargs.setdefault("safe_serialization", True)
        destination = Path(save_directory).resolve()
        destination.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{destination.name}.", dir=destination.parent))
        try:
            for name, member in self._members.items():
                member.save_pretrained(staging / name, **kwargs)
            self.manifest.write(staging)
            replace_directory(staging, destination)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return destination

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, **kwargs: Any) -> FlaxDemucsBag:
        """The bag saved in `folder` (`save_pretrained`), each member loaded by `networks.load_network` (strict;
        `kwargs`: `dtype`, `matmul_precision`). `ConfigError` for a bad `bag.json` or members that disagree with
        it or each other, `CheckpointError` for a member folder that is missing, or the members' own errors."""
        folder = Path(folder).expanduser()
        try:
            manifest = read_manifest(folder)
        except ConfigError as error:
            raise ConfigError(f"{folder}/{error}") from None
        members = []
        for name in manifest.members:
            path = folder / name
            if is_bag_folder(path):
                raise ConfigError(f"{folder}: member {name} is itself a bag; bags do not nest")
            if not (path / "config.json").is_file():
                raise CheckpointError(f"{folder}: bag.json lists member {name}, but {name}/config.json is missing")
            members.append(load_network(path, **kwargs))
        for name, member in zip(manifest.members, members, strict=True):
            facts = (
                ("sources", tuple(member.config.sources), manifest.sources),
                ("sampling_rate", int(member.config.sampling_rate), manifest.sampling_rate),
                ("audio_channels", int(member.config.audio_channels), manifest.audio_channels),
            )
            for fact, mine, listed in facts:
                if mine != listed:
                    raise ConfigError(
                        f"{folder}: member {name} has {fact} {mine!r}, bag.json {listed!r}; the members of a bag "
                        "must agree"
                    )
        return cls(
            members, manifest.weights, segment=manifest.segment, names=manifest.members, name_or_path=str(folder)
        )
