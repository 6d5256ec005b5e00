"""Crafting torch-format checkpoints without torch: the zip layout `torch.save` writes (`archive/data.pkl`,
`archive/data/<key>`, `archive/byteorder`) around a pickle written opcode by opcode, so a test can state any
size, stride, offset or element count it likes — including the lies a hostile file would tell.

    tensor("w", key="0", size=(2, 3), stride=(3, 1))            # one entry of the state dict
    write_checkpoint(path, [tensor(...)], {"0": raw_bytes})      # the file

demucs packages (a dict of klass/args/kwargs/state/...) are crafted the same way, each value as opcodes:

    package_pickle({"klass": pickled_global("os", "system"), "kwargs": pickled({}), ...})
"""

from __future__ import annotations

import io
import pickle
import struct
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Tensor:
    """One state-dict entry: `name` -> torch._utils._rebuild_tensor_v2(storage `key` of `numel` elements of
    `storage`, offset, size, stride)."""

    name: str
    key: str
    size: tuple[int, ...]
    stride: tuple[int, ...]
    offset: int = 0
    numel: int | None = None  # the storage's declared element count (default: what size/stride need)
    storage: str = "FloatStorage"


def tensor(name: str, key: str, size, stride=None, offset: int = 0, numel: int | None = None, storage="FloatStorage"):
    size = tuple(size)
    if stride is None:  # contiguous
        stride, step = [], 1
        for n in reversed(size):
            stride.insert(0, step)
            step *= n
    return Tensor(name, key, size, tuple(stride), offset, numel, storage)


def _global(module: str, name: str) -> bytes:
    return pickle.GLOBAL + f"{module}\n{name}\n".encode()


def _string(text: str) -> bytes:
    data = text.encode()
    return pickle.BINUNICODE + struct.pack("<I", len(data)) + data


def _int(value: int) -> bytes:
    if -(2**31) <= value < 2**31:
        return pickle.BININT + struct.pack("<i", value)
    data = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
    return pickle.LONG1 + bytes([len(data)]) + data


def _tuple(items: list[bytes]) -> bytes:
    return pickle.MARK + b"".join(items) + pickle.TUPLE


def state_dict_pickle(tensors: list[Tensor], *, extra: bytes = b"") -> bytes:
    """The data.pkl of an OrderedDict of `tensors` (protocol 2, as torch writes it); `extra` opcodes are placed
    before the dict is closed (to smuggle in other objects)."""
    out = io.BytesIO()
    out.write(pickle.PROTO + bytes([2]))
    out.write(_global("collections", "OrderedDict") + pickle.EMPTY_TUPLE + pickle.REDUCE)
    out.write(pickle.MARK)
    for t in tensors:
        numel = t.numel
        if numel is None:
            numel = (
                t.offset + sum((n - 1) * s for n, s in zip(t.size, t.stride, strict=False)) + 1 if all(t.size) else 0
            )
        pid = _tuple([_string("storage"), _global("torch", t.storage), _string(t.key), _string("cpu"), _int(numel)])
        out.write(_string(t.name))
        out.write(_global("torch._utils", "_rebuild_tensor_v2"))
        out.write(pickle.MARK)
        out.write(pid + pickle.BINPERSID)
        out.write(_int(t.offset))
        out.write(_tuple([_int(n) for n in t.size]))
        out.write(_tuple([_int(s) for s in t.stride]))
        out.write(pickle.NEWFALSE)
        out.write(_global("collections", "OrderedDict") + pickle.EMPTY_TUPLE + pickle.REDUCE)
        out.write(pickle.TUPLE + pickle.REDUCE)
    out.write(extra)
    out.write(pickle.SETITEMS + pickle.STOP)
    return out.getvalue()


def write_checkpoint(
    path: Path,
    data_pkl: bytes,
    storages: dict[str, bytes],
    *,
    compress: bool = False,
    extra_members: list[tuple[str, bytes]] = (),
) -> Path:
    """A torch-format zip: archive/data.pkl, archive/data/<key> for each storage, byteorder and version; then
    `extra_members` (which may repeat a name: zip allows it)."""
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w", method) as archive:
        archive.writestr("archive/data.pkl", data_pkl)
        archive.writestr("archive/byteorder", b"little")
        archive.writestr("archive/version", b"3\n")
        for key, raw in storages.items():
            archive.writestr(f"archive/data/{key}", raw)
        for name, raw in extra_members:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "Duplicate name" is the point
                archive.writestr(name, raw)
    return path


def write_copy_amplifier(path: Path, views: int = 4096, elements: int = 1 << 20) -> Path:
    """One storage of `elements` floats (4 MiB) and `views` tensors that each view all of it: a file of about
    4.5 MB whose tensors, each copied out on its own, would take `views` x 4 MiB (16 GiB)."""
    tensors = [tensor(f"w{i}", "0", (elements,)) for i in range(views)]
    return write_checkpoint(path, state_dict_pickle(tensors), {"0": bytes(4 * elements)})


class Call:
    """Pickles as `function(*args)`: the payload a hostile checkpoint hides in one of its values."""

    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


# --- demucs packages (a dict whose values are written opcode by opcode) ---------------------------------------------


def pickled(value) -> bytes:
    """`value`'s own protocol-2 opcodes, header and STOP removed, to splice into a crafted pickle (plain values)."""
    return pickle.dumps(value, protocol=2)[2:-1]


def pickled_global(module: str, name: str) -> bytes:
    """A reference to `module.name`, as a pickle names a class or function."""
    return _global(module, name)


def pickled_call(module: str, name: str, *args: bytes) -> bytes:
    """`module.name(*args)` through REDUCE: what a pickle runs while it is loaded."""
    return _global(module, name) + _tuple(list(args)) + pickle.REDUCE


def pickled_dict(items: dict[str, bytes]) -> bytes:
    """A dict {key: value} whose values are given as opcodes."""
    return pickle.EMPTY_DICT + pickle.MARK + b"".join(_string(k) + v for k, v in items.items()) + pickle.SETITEMS


def package_pickle(items: dict[str, bytes]) -> bytes:
    """The data.pkl of a demucs package (`serialize_model`'s dict) whose values are given as opcodes."""
    return pickle.PROTO + bytes([2]) + pickled_dict(items) + pickle.STOP


def shared_lists(levels: int = 60) -> bytes:
    """A list nested `levels` deep, each level holding the one below twice (shared through the memo): tiny on disk,
    2**levels values for whoever walks it."""
    out = [pickle.EMPTY_LIST, pickle.LONG_BINPUT + struct.pack("<I", 1000), pickle.POP]
    for level in range(1, levels + 1):
        below, this = pickle.LONG_BINGET + struct.pack("<I", 999 + level), struct.pack("<I", 1000 + level)
        out += [pickle.MARK, below, below, pickle.LIST, pickle.LONG_BINPUT + this, pickle.POP]
    out.append(pickle.LONG_BINGET + struct.pack("<I", 1000 + levels))
    return b"".join(out)


def deep_lists(depth: int = 100_000) -> bytes:
    """[[[...]]] nested `depth` deep, built without recursion (marks first, then one LIST per level)."""
    return pickle.MARK * depth + pickle.EMPTY_LIST + pickle.LIST * depth
