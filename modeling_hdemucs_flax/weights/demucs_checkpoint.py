"""Read demucs's own checkpoints as data: no torch, and nothing a file names is imported or called.

demucs (4.1.0) keeps a trained model in one of three forms, all read here:

1. A `.th` package, `torch.save` of what `demucs.states.serialize_model` returns (file name
   `<signature>-<first 8 hex digits of the file's sha256>.th`, as `save_with_checksum` names it): a torch zip
   archive whose pickle is a dict
   - `klass`: the model class, pickled by reference (`demucs.htdemucs.HTDemucs`, ...);
   - `args`, `kwargs`: what the model was built with (`capture_init` records them): a tuple (often the source
     names) and a dict of plain values, where HTDemucs's `segment` is a `fractions.Fraction` (39/5 s);
   - `state`: {parameter name: tensor}, float16 when written with `half=True` (the released models);
   - `training_args`: the training configuration as `OmegaConf.to_container(args, resolve=True)` makes it, so
     plain dicts, lists and scalars (checked: its pickle holds no global at all).
   demucs's `load_model` unpickles it with `torch.load(weights_only=False)` and calls `klass(*args, **kwargs)`:
   loading a file runs whatever the file names. This reader instead maps a fixed allowlist of pickle globals to
   data (`_DemucsUnpickler`) and refuses every other global, and every object-building opcode, in one line.
2. demucs 4.1.0's Hub layout (`demucs/hf.py`): one folder per named model with the bag yaml `<name>.yaml` and,
   per member, `<signature>.safetensors` whose metadata (strings) holds `klass` (the class's dotted name),
   `args` and `kwargs` as JSON (a Fraction as `{"_type": "fraction", "numerator": n, "denominator": d}`) and,
   for diffq-quantized models only, `structure`; a `<signature>.json` sidecar carries `training_args`. demucs
   imports the module the metadata names; here the name is checked against the same allowlist, never imported.
3. A bag yaml (`demucs/remote/<name>.yaml`, and in each Hub folder): `models` (member signatures), optional
   `weights` (one row per member, one weight per source) and `segment` (seconds), read with `yaml.safe_load`.

Everything is returned as data (`DemucsPackage`, `BagSpec`, `DemucsHubModel`) with float32 weights; checking the
state against the kwargs is the converter's job (`models.from_demucs.model_from_demucs`). Every failure is one
`CheckpointError` line naming the file. `is_demucs_package(path)` tells a `.th` package from a torchaudio state
dict by the file's content (its pickle's opcodes, followed without unpickling), for `hdemucs-flax convert`.
"""

from __future__ import annotations

import _compat_pickle
import json
import math
import pickle
import pickletools
import re
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, NoReturn, cast

import ml_dtypes
import numpy as np

from ..errors import CheckpointError, one_line
from .downloads import sha256_file
from .torch_checkpoint import (
    CheckpointInvalid,
    TensorUnpickler,
    checkpoint_errors,
    read_torch_archive,
    read_torch_pickle,
)

# The demucs model classes a checkpoint may name, each with what it is and the architecture it converts to here
# (None: read as data so it can be refused by name, never converted). They are names only: the reader keeps the
# dotted name as a string and neither imports the module nor calls the class. They are the three classes demucs's
# own training builds models from (`demucs/train.py` get_model), less the training-only wrapper of torchaudio's.
DEMUCS_CLASSES: Mapping[str, tuple[str, Literal["htdemucs", "hdemucs"] | None]] = MappingProxyType(
    {
        "demucs.htdemucs.HTDemucs": ("Hybrid Transformer Demucs (v4: htdemucs, htdemucs_ft, htdemucs_6s)", "htdemucs"),
        "demucs.hdemucs.HDemucs": ("Hybrid Demucs (v3: hdemucs_mmi)", "hdemucs"),
        "demucs.demucs.Demucs": ("the waveform-only Demucs (v1/v2, still shipped by demucs 4)", None),
    }
)
# Deliberately absent: `demucs.wdemucs.WDemucs`, an alias of HDemucs that demucs keeps "for compat" with files
# from its v3 development (the registry's models were released with demucs 4, whose training builds HDemucs by its
# own name), and whose arguments are not known to match HDemucs's of today, so a file naming it is refused rather
# than guessed at; demucs.train's TorchHDemucsWrapper (training-time only); any class of another package.

ALLOWED_TEXT = (
    "only the demucs model classes "
    + ", ".join(DEMUCS_CLASSES)
    + " (as names), fractions.Fraction, collections.OrderedDict and torch tensors are read"
)

MAX_VALUES = 100_000  # values walked in args, kwargs or training_args (HTDemucs's kwargs: ~60; a training config
# ~300); shared references in a pickle could otherwise make a few bytes expand into 2**60 visits
MAX_FRACTION_BITS = 64  # a Fraction's numerator and denominator (a segment of 39/5 s needs 6 bits)
_FRACTION_TEXT = re.compile(r"-?[0-9]{1,20}(/[0-9]{1,20})?")  # str(Fraction): what older Pythons pickled
MAX_BAG_YAML_BYTES = 1 << 20  # demucs's own bag yamls are under 200 bytes
MAX_SIDECAR_BYTES = 16 << 20  # a Hub member's <signature>.json (training args and metrics)
MAX_BAG_MODELS = 64  # members of one bag (demucs's largest has 4)
MAX_SOURCES = 64  # weights per member
# A member signature becomes a file name (`<signature>.safetensors`): letters, digits and underscores only, so a
# yaml cannot point outside its folder. demucs's signatures are 8 hex digits.
_SIGNATURE = re.compile(r"[A-Za-z0-9_]{1,64}")
_STATE_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(ml_dtypes.bfloat16))


@dataclass(frozen=True, eq=False)
class DemucsPackage:
    """One demucs model as data.

    `klass` is the model class's dotted name (a key of `DEMUCS_CLASSES`, e.g. "demucs.htdemucs.HTDemucs"),
    `args`/`kwargs` what demucs would build it with (plain values: None, bool, int, float, str, Fraction and
    lists, tuples and str-keyed dicts of them), `state` {parameter name: float32 array} (float16 and bfloat16
    states widened exactly), `training_args` the training configuration as plain data (None when the file has
    none, or holds anything else), `sha256` the hex digest of the file read."""

    klass: str
    args: tuple
    kwargs: dict[str, Any]
    state: dict[str, np.ndarray]
    training_args: dict[str, Any] | None
    sha256: str

    @property
    def sources(self) -> tuple[str, ...] | None:
        """The source names the model was built with (`kwargs["sources"]`, or its first positional argument as
        demucs's own constructors take it), or None when neither is a list of names."""
        value = self.kwargs["sources"] if "sources" in self.kwargs else (self.args[0] if self.args else None)
        if isinstance(value, list | tuple) and value and all(isinstance(name, str) for name in value):
            return tuple(value)
        return None


@dataclass(frozen=True)
class BagSpec:
    """A demucs bag of models (`<name>.yaml`): the member signatures in order, the per-member per-source weights
    (one row per member, all rows as long as the models have sources) or None for equal weights, and the segment
    length in seconds demucs applies the bag with, or None for the models' own."""

    models: tuple[str, ...]
    weights: tuple[tuple[float, ...], ...] | None
    segment: float | None


@dataclass(frozen=True)
class DemucsHubModel:
    """A named model in demucs 4.1.0's Hub layout: its name (the yaml's stem), its bag and one package per member,
    in the bag's order."""

    name: str
    bag: BagSpec
    members: tuple[DemucsPackage, ...]


def _shown(text: str, limit: int = 120) -> str:
    """A name a file chose, safe to put in a one-line message (whitespace collapsed, length capped)."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[:limit] + "..."


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass(frozen=True)
class _ClassName:
    """A demucs model class as a pickle names it: its dotted name, nothing more. Calling it (a pickle's REDUCE
    would, to build the model while the file is read) is refused."""

    qualname: str

    def __call__(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise CheckpointInvalid(
            f"the demucs checkpoint calls {self.qualname} while it is read, which is not allowed: a model class "
            "may only be named"
        )


def _fraction(*args: Any) -> Fraction:
    """`fractions.Fraction` as a pickle's REDUCE calls it: (numerator, denominator) integers, as Python 3.11 pickles
    one, one integer, or the text "n/d" older Pythons pickled; each bounded (Fraction also parses exponents:
    "1e999999999" would compute a number of a billion digits)."""
    if 1 <= len(args) <= 2 and all(_is_int(a) and a.bit_length() <= MAX_FRACTION_BITS for a in args):
        numerator, denominator = args[0], args[1] if len(args) == 2 else 1
    elif len(args) == 1 and isinstance(args[0], str) and _FRACTION_TEXT.fullmatch(args[0]):
        numerator, _, denominator = args[0].partition("/")
        numerator, denominator = int(numerator), int(denominator or 1)
    else:
        shown = ", ".join(repr(_shown(a, 40)) if isinstance(a, str) else type(a).__name__ for a in args[:4])
        raise CheckpointInvalid(
            f"a fractions.Fraction in the demucs checkpoint is built from ({shown}); only one or two integers "
            f"below 2**{MAX_FRACTION_BITS} or a text 'n/d' are read"
        )
    if denominator == 0:
        raise CheckpointInvalid("a fractions.Fraction in the demucs checkpoint has a zero denominator")
    return Fraction(numerator, denominator)


def _empty_ordered_dict(*args: Any) -> OrderedDict:
    """`collections.OrderedDict()`: torch pickles state dicts and each tensor's (empty) backward hooks as one built
    empty and then filled item by item (whose keys the unpickler checks); one built from pairs is refused (its keys
    would be hashed unchecked)."""
    if args:
        raise CheckpointInvalid("an OrderedDict in the demucs checkpoint is built from arguments (torch writes none)")
    return OrderedDict()


def _refuse_opcode(what: str) -> Any:
    def refuse(self: Any) -> NoReturn:
        raise CheckpointInvalid(
            f"the demucs checkpoint {what}, which is not allowed (serialize_model's pickle needs no such step)"
        )

    return refuse


_REFUSED_OPCODES = (
    (pickle.NEWOBJ, "builds an object from a class (NEWOBJ)"),
    (pickle.NEWOBJ_EX, "builds an object from a class (NEWOBJ_EX)"),
    (pickle.INST, "builds an object from a class (INST)"),
    (pickle.OBJ, "builds an object from a class (OBJ)"),
    (pickle.EXT1, "uses the extension registry (EXT1)"),
    (pickle.EXT2, "uses the extension registry (EXT2)"),
    (pickle.EXT4, "uses the extension registry (EXT4)"),
)


class _DemucsUnpickler(TensorUnpickler):
    """The tensor unpickler (bounded storages, string dict keys, no sets) with demucs's allowlist:

    - the demucs model classes of `DEMUCS_CLASSES`, as `_ClassName`s: `klass` is pickled by reference, and the
      reader needs its name only;
    - `fractions.Fraction`, through `_fraction`: HTDemucs's `segment` keyword (39/5 s) is one;
    - `collections.OrderedDict`, empty only: torch's pickles of state dicts and tensors use it;
    - torch's tensor rebuild functions and storage types (`TensorUnpickler.tensor_global`): the state.

    Every other global (os.system, builtins.eval, any other class) is refused when the pickle names it, before
    anything could call it. Opcodes that build objects from a class (NEWOBJ, NEWOBJ_EX, INST, OBJ) and the extension
    registry (EXT1/2/4) are refused too (serialize_model's pickle uses none), BUILD is allowed only to give an
    OrderedDict its (ignored) attributes, and REDUCE reaches only the callables above."""

    dispatch = dict(TensorUnpickler.dispatch)
    # The pure-Python unpickler's state, which typeshed does not declare.
    proto: int
    fix_imports: bool
    for _opcode, _what in _REFUSED_OPCODES:
        dispatch[_opcode[0]] = _refuse_opcode(_what)
    del _opcode, _what

    def _load_build(self) -> None:
        """BUILD, for one case only: `module.state_dict()` is an OrderedDict whose `_metadata` attribute (layer
        versions) pickles as its state. That state is dropped; any other object's BUILD is refused."""
        state = self.stack.pop()
        target = self.stack[-1]
        if not isinstance(target, OrderedDict) or not isinstance(state, dict):
            raise CheckpointInvalid(
                f"the demucs checkpoint sets the state of a {type(target).__name__} (BUILD), which is not allowed "
                "(only a state dict's OrderedDict carries one, and it is ignored)"
            )

    dispatch[pickle.BUILD[0]] = _load_build

    def find_class(self, module: str, name: str) -> Any:
        if self.proto < 3 and self.fix_imports:
            # Python 2 names, as protocol 2 (torch.save's) writes some globals (builtins.eval as __builtin__.eval,
            # subprocess.Popen as commands.Popen): mapped as pickle maps them, so a refusal names the real global.
            if (module, name) in _compat_pickle.NAME_MAPPING:
                module, name = _compat_pickle.NAME_MAPPING[(module, name)]
            else:
                module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        qualname = f"{module}.{name}"
        if qualname in DEMUCS_CLASSES:
            return _ClassName(qualname)
        if qualname == "fractions.Fraction":
            return _fraction
        if qualname == "collections.OrderedDict":
            return _empty_ordered_dict
        found = self.tensor_global(module, name)
        if found is None:
            raise CheckpointInvalid(
                f"the demucs checkpoint refers to {_shown(qualname)}, which is not allowed: {ALLOWED_TEXT}"
            )
        return found


class _NotPlain(Exception):
    """A value that is not plain data (or too many of them); the message says which."""


def _plain(value: Any, where: str, budget: list[int]) -> Any:
    """A copy of `value` as plain data: None, bool, int, float, str and Fraction, in lists, tuples and dicts with
    string keys (OrderedDicts become dicts). `budget` ([values left]) bounds the walk."""
    budget[0] -= 1
    if budget[0] < 0:
        raise _NotPlain(f"{where} holds more than {MAX_VALUES} values")
    if value is None or isinstance(value, bool | int | float | str | Fraction):
        return value
    if isinstance(value, list | tuple):
        items = [_plain(item, where, budget) for item in value]
        return items if isinstance(value, list) else tuple(items)
    if isinstance(value, dict):
        if not all(isinstance(key, str) for key in value):
            raise _NotPlain(f"{where} has a key that is not a string")
        return {key: _plain(item, where, budget) for key, item in value.items()}
    if isinstance(value, _ClassName):
        raise _NotPlain(f"{where} names the class {value.qualname}")
    if isinstance(value, np.ndarray):
        raise _NotPlain(f"{where} holds a tensor")
    raise _NotPlain(f"{where} holds a {type(value).__name__}")


def _plain_or_refuse(value: Any, where: str) -> Any:
    try:
        return _plain(value, where, [MAX_VALUES])
    except _NotPlain as error:
        raise CheckpointInvalid(f"{error} (only plain values are read)") from None
    except RecursionError:
        raise CheckpointInvalid(f"{where} is nested too deeply") from None


def _training_args(value: Any) -> dict[str, Any] | None:
    """The training configuration as plain data, or None when there is none or it holds anything else: it documents
    how the model was trained and nothing here depends on it, so an odd one is dropped rather than refused."""
    if not isinstance(value, dict):
        return None
    try:
        return _plain(value, "training_args", [MAX_VALUES])
    except (_NotPlain, RecursionError):
        return None


def _klass(value: Any) -> str:
    if isinstance(value, _ClassName):
        return value.qualname
    if isinstance(value, str) and value in DEMUCS_CLASSES:  # the Hub's metadata: a dotted name
        return value
    if isinstance(value, str):
        raise CheckpointInvalid(f"klass names {_shown(value)}, which is not allowed: {ALLOWED_TEXT}")
    raise CheckpointInvalid(f"klass is of type {type(value).__name__}, not a demucs model class")


def _float32_state(state: Any) -> dict[str, np.ndarray]:
    """{name: float32 array}: float16 (demucs's `half=True`) and bfloat16 widen exactly; anything else is refused."""
    if not isinstance(state, dict):
        raise CheckpointInvalid(f"state is a {type(state).__name__}, not a dict of tensors")
    if "__quantized" in state:
        raise CheckpointInvalid(
            "state is diffq-quantized (it holds '__quantized'; demucs's mdx_q and mdx_extra_q are), which this "
            "reader does not unpack: use the model's unquantized release"
        )
    out = {}
    for key, value in state.items():
        if not isinstance(value, np.ndarray):
            raise CheckpointInvalid(f"state entry {_shown(key, 80)!r} is a {type(value).__name__}, not a tensor")
        if value.dtype not in _STATE_DTYPES:
            raise CheckpointInvalid(
                f"state entry {_shown(key, 80)!r} is {value.dtype}; a demucs state is float16, bfloat16 or float32"
            )
        out[key] = np.asarray(value, dtype=np.float32)
    return out


def _package(root: Any, sha256: str, training_args: Any) -> DemucsPackage:
    """Validate the parts of a package (a .th file's dict, or the Hub's metadata decoded) and assemble it."""
    klass = _klass(root["klass"])
    args = root["args"]
    if isinstance(args, list):
        args = tuple(args)
    if not isinstance(args, tuple):
        raise CheckpointInvalid(f"args is a {type(args).__name__}, not a tuple")
    kwargs = root["kwargs"]
    if not isinstance(kwargs, dict):
        raise CheckpointInvalid(f"kwargs is a {type(kwargs).__name__}, not a dict")
    return DemucsPackage(
        klass=klass,
        args=_plain_or_refuse(args, "args"),
        kwargs=_plain_or_refuse(kwargs, "kwargs"),
        state=_float32_state(root["state"]),
        training_args=_training_args(training_args),
        sha256=sha256,
    )


def _required(root: Mapping[str, Any], keys: tuple[str, ...], what: str) -> None:
    missing = [key for key in keys if key not in root]
    if missing:
        raise CheckpointInvalid(f"{what} lacks {', '.join(missing)} (demucs writes {', '.join(keys)})")


def read_demucs_package(path: str | Path) -> DemucsPackage:
    """Read a demucs `.th` checkpoint (what `demucs.states.serialize_model` returns, saved by `torch.save`) as
    data: nothing it names is imported or called, and anything outside the allowlist (see `_DemucsUnpickler`)
    is a one-line `CheckpointError` naming it. Keys of the package other than klass, args, kwargs, state and
    training_args are read (through the same allowlist) and not kept."""
    path = Path(path)
    with checkpoint_errors(path):
        sha256 = sha256_file(path)
        root = read_torch_archive(path, _DemucsUnpickler)
        if not isinstance(root, dict):
            raise CheckpointInvalid(f"not a demucs checkpoint (it holds a {type(root).__name__}, not a dict)")
        _required(root, ("klass", "args", "kwargs", "state"), "the demucs checkpoint")
        return _package(root, sha256, root.get("training_args"))


def expected_class(package: DemucsPackage) -> Literal["htdemucs", "hdemucs"]:
    """The architecture of this project that `package`'s class converts to: "htdemucs" for
    demucs.htdemucs.HTDemucs, "hdemucs" for demucs.hdemucs.HDemucs; any other class is refused by name."""
    known = DEMUCS_CLASSES.get(package.klass)
    if known is None or known[1] is None:
        what = f", {known[0]}," if known else ""
        raise CheckpointError(
            f"the demucs model class {_shown(package.klass)}{what} has no architecture in hdemucs-flax (only "
            "demucs.htdemucs.HTDemucs and demucs.hdemucs.HDemucs convert)"
        )
    return known[1]


# The keys of `serialize_model`'s dict; a torch file whose top-level object is a dict holding any of them is a demucs
# package (a state dict's keys are parameter names: "encoder.0.conv.weight", ...).
PACKAGE_KEYS = frozenset(("klass", "args", "kwargs", "state", "training_args"))


class _DictSeen:
    """A dict that a pickle builds (EMPTY_DICT or DICT), as `_top_level_keys` follows it: its string keys."""

    def __init__(self, keys: Iterable[Any] = ()):
        self.keys = {key for key in keys if isinstance(key, str)}


_OTHER = object()  # any other value on the simulated stack
_STRING_OPCODES = frozenset(("UNICODE", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8"))


def _top_level_keys(data: bytes) -> frozenset[str] | None:
    """The string keys of the plain dict a pickle's top-level object is, or None when it is something else (an
    OrderedDict, a list, a call's result) or the pickle is malformed. Found by following the stack through the
    opcodes as `pickletools.genops` parses them: only dicts and strings are tracked, nothing is built, imported or
    called, and the work is linear in the pickle's length."""
    stack: list[Any] = []
    marks: list[int] = []
    memo: dict[int, Any] = {}
    try:
        for opcode, arg, _ in pickletools.genops(data):
            name = opcode.name
            if name == "MARK":
                marks.append(len(stack))
            elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
                memo[cast(int, arg)] = stack[-1]  # these opcodes' argument is the memo index
            elif name == "MEMOIZE":
                memo[len(memo)] = stack[-1]
            elif name in ("GET", "BINGET", "LONG_BINGET"):
                stack.append(memo[cast(int, arg)])
            elif name == "DUP":
                stack.append(stack[-1])
            elif name == "POP" and marks and len(stack) == marks[-1]:
                marks.pop()  # POP of a mark, as pickle's own load_pop does
            elif name == "STOP":
                top = stack.pop()
                return frozenset(top.keys) if isinstance(top, _DictSeen) else None
            elif name == "EMPTY_DICT":
                stack.append(_DictSeen())
            elif name in _STRING_OPCODES:
                stack.append(arg)
            else:
                before = opcode.stack_before
                items: list[Any] = []
                if pickletools.markobject in before:  # the items above the last mark, then the mark
                    start = marks.pop()
                    items, stack[start:] = stack[start:], []
                    before = before[: before.index(pickletools.markobject)]
                if len(stack) < len(before):
                    return None
                popped = stack[len(stack) - len(before) :]
                del stack[len(stack) - len(before) :]
                if name == "DICT":
                    stack.append(_DictSeen(items[0::2]))
                elif name in ("SETITEM", "SETITEMS"):  # (dict, key, value) or (dict) + (mark, key, value, ...)
                    target, keys = popped[0], popped[1:2] if name == "SETITEM" else items[0::2]
                    if isinstance(target, _DictSeen):
                        target.keys.update(key for key in keys if isinstance(key, str))
                    stack.append(target)
                else:
                    stack.extend(_OTHER for _ in opcode.stack_after)
    except Exception:  # malformed (pickletools' ValueError, a missing memo entry or mark): not for this sniff to say
        return None
    return None


def is_demucs_package(path: str | Path) -> bool:
    """Whether `path` is a torch.save zip file whose top-level object is a dict holding any of `PACKAGE_KEYS`: a
    demucs `.th` package (`read_demucs_package` reads it) rather than a state dict (`load_torch_state_dict`).
    Decided from the pickle's opcodes, whatever the file's name; nothing is unpickled. False for everything else,
    unreadable files included: the reader of the other kind then says what is wrong with them."""
    try:
        keys = _top_level_keys(read_torch_pickle(Path(path)))
    except Exception:  # not a torch zip, too large, unreadable: the state-dict reader's one-line error says which
        return False
    return keys is not None and not keys.isdisjoint(PACKAGE_KEYS)


# --- demucs 4.1.0's Hub layout -----------------------------------------------------------------------------------


@contextmanager
def _file_errors(path: Path, what: str) -> Iterator[None]:
    """Every failure reading `path` as one `CheckpointError` line: `CheckpointInvalid` as it is, the rest (the
    safetensors library's errors, JSON errors, OS errors) as "not a readable <what> (<the error>)"."""
    try:
        yield
    except CheckpointInvalid as error:
        raise CheckpointError(f"{path}: {error}") from None
    except CheckpointError:
        raise
    except RecursionError:
        raise CheckpointError(f"{path}: not a readable {what} (nested too deeply)") from None
    except Exception as error:
        text = f"{type(error).__name__}: {one_line(error)}"[:200]
        raise CheckpointError(f"{path}: not a readable {what} ({text})") from None


def _decode_json(value: Any) -> Any:
    """JSON from the Hub's metadata with demucs's Fraction encoding decoded (bounded as in a pickle)."""
    if isinstance(value, dict):
        if value.get("_type") == "fraction":
            if set(value) != {"_type", "numerator", "denominator"}:
                raise CheckpointInvalid("a fraction in the metadata has other keys than numerator and denominator")
            return _fraction(value["numerator"], value["denominator"])
        return {key: _decode_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_decode_json(item) for item in value]
    return value


def _read_text(path: Path, limit: int) -> str:
    """A small text file, refused above `limit` bytes before it is read."""
    size = path.stat().st_size
    if size > limit:
        raise CheckpointInvalid(f"the file is {size} bytes; this reader stops at {limit}")
    return path.read_text(encoding="utf-8")


def read_demucs_safetensors(path: str | Path) -> DemucsPackage:
    """Read one member of demucs 4.1.0's Hub layout, `<signature>.safetensors` (weights, with `klass`, `args` and
    `kwargs` in its metadata), plus `training_args` from its `<signature>.json` sidecar when there is one. The
    class is a name checked against `DEMUCS_CLASSES`, never imported; diffq-quantized members are refused."""
    from safetensors import safe_open  # the library validates the header's offsets against the file

    path = Path(path)
    with _file_errors(path, "demucs safetensors file"):
        sha256 = sha256_file(path)
        with safe_open(str(path), framework="numpy") as handle:
            metadata = handle.metadata() or {}
            _required(metadata, ("klass", "args", "kwargs"), "its metadata")
            if "structure" in metadata:
                raise CheckpointInvalid(
                    "is diffq-quantized (its metadata holds a 'structure'), which this reader does not unpack"
                )
            _klass(metadata["klass"])  # refused by name before any tensor is read
            state = {key: handle.get_tensor(key) for key in handle.keys()}
        root = {
            "klass": metadata["klass"],
            "args": _decode_json(json.loads(metadata["args"])),
            "kwargs": _decode_json(json.loads(metadata["kwargs"])),
            "state": state,
        }
    sidecar, training_args = path.with_suffix(".json"), None
    if sidecar.is_file():
        with _file_errors(sidecar, "demucs sidecar (JSON)"):
            extra = json.loads(_read_text(sidecar, MAX_SIDECAR_BYTES))
        try:
            training_args = _decode_json(extra.get("training_args")) if isinstance(extra, dict) else None
        except (CheckpointInvalid, RecursionError):  # an odd training configuration is dropped (_training_args)
            training_args = None
    with _file_errors(path, "demucs safetensors file"):
        return _package(root, sha256, training_args)


def read_bag_yaml(path: str | Path) -> BagSpec:
    """Read a demucs bag yaml (`models`, optional `weights` and `segment`) with `yaml.safe_load`, which builds
    only plain YAML values (a `!!python/object` tag is an error, not an object), and check every field."""
    import yaml

    path = Path(path)
    with _file_errors(path, "demucs bag yaml"):
        try:
            bag = yaml.safe_load(_read_text(path, MAX_BAG_YAML_BYTES))
        except yaml.YAMLError as error:
            problem = getattr(error, "problem", None) or str(error)
            mark = getattr(error, "problem_mark", None)
            where = f" (line {mark.line + 1})" if mark is not None else ""
            raise CheckpointInvalid(f"not a demucs bag yaml: {_shown(problem, 200)}{where}") from None
        return _bag(bag)


def _bag(bag: Any) -> BagSpec:
    if not isinstance(bag, dict):
        raise CheckpointInvalid(f"a demucs bag yaml is a mapping with 'models'; this holds a {type(bag).__name__}")
    unknown = [str(key) for key in bag if key not in ("models", "weights", "segment")]
    if unknown:
        raise CheckpointInvalid(
            f"unknown key {_shown(unknown[0], 60)!r} in a demucs bag yaml (it has models, weights and segment)"
        )
    models = bag.get("models")
    if not isinstance(models, list) or not 1 <= len(models) <= MAX_BAG_MODELS:
        raise CheckpointInvalid(f"'models' is not a list of 1 to {MAX_BAG_MODELS} signatures")
    for signature in models:
        if not isinstance(signature, str) or not _SIGNATURE.fullmatch(signature):
            shown = repr(_shown(signature, 60)) if isinstance(signature, str) else type(signature).__name__
            raise CheckpointInvalid(f"'models' holds {shown}, not a signature (letters, digits, underscores)")
    weights = bag.get("weights")
    if weights is not None:
        if not isinstance(weights, list) or len(weights) != len(models):
            raise CheckpointInvalid(f"'weights' is not a list of {len(models)} rows, one per model")
        if not all(isinstance(row, list) and 1 <= len(row) <= MAX_SOURCES for row in weights):
            raise CheckpointInvalid(f"a row of 'weights' is not a list of 1 to {MAX_SOURCES} weights")
        if len({len(row) for row in weights}) != 1:
            raise CheckpointInvalid("the rows of 'weights' differ in length (one weight per source each)")
        if not all(_is_number(w) and math.isfinite(w) for row in weights for w in row):
            raise CheckpointInvalid("'weights' holds a value that is not a finite number")
        weights = tuple(tuple(float(w) for w in row) for row in weights)
    segment = bag.get("segment")
    if segment is not None:
        if not _is_number(segment) or not math.isfinite(segment) or segment <= 0:
            raise CheckpointInvalid(f"'segment' is {_shown(repr(segment), 40)}, not a positive number of seconds")
        segment = float(segment)
    return BagSpec(models=tuple(models), weights=weights, segment=segment)


def read_demucs_hub_model(folder: str | Path, name: str | None = None) -> DemucsHubModel:
    """Read a named model in demucs 4.1.0's Hub layout from a local folder (a downloaded snapshot): the bag
    `<name>.yaml` (the folder's only yaml when `name` is None) and each member's `<signature>.safetensors`.
    The members must agree on their sources, and the bag's weights must have one per source."""
    folder = Path(folder)
    if name is None:
        yamls = sorted(folder.glob("*.yaml"))
        if len(yamls) != 1:
            raise CheckpointError(
                f"{folder}: expected one bag yaml (<name>.yaml) in a demucs Hub folder, found {len(yamls)}"
            )
        name = yamls[0].stem
    bag = read_bag_yaml(folder / f"{name}.yaml")
    members = []
    for signature in bag.models:
        member = folder / f"{signature}.safetensors"
        if not member.is_file():
            raise CheckpointError(f"{folder}: the bag {name}.yaml lists {signature}, but {member.name} is missing")
        members.append(read_demucs_safetensors(member))
    sources = {member.sources for member in members}
    if len(sources) != 1:
        raise CheckpointError(f"{folder}: the members of {name} differ in their sources ({sorted(map(str, sources))})")
    (common,) = sources
    if bag.weights is not None and common is not None and len(bag.weights[0]) != len(common):
        raise CheckpointError(
            f"{folder}: {name}.yaml has {len(bag.weights[0])} weights per model, its models {len(common)} sources"
        )
    return DemucsHubModel(name=name, bag=bag, members=tuple(members))
