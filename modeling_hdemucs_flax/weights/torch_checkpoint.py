"""Read a `torch.save`d state dict (zip format) into numpy arrays without importing torch.

A checkpoint is untrusted input (it may come from anywhere), so the reader is defensive throughout:
- only the pickle globals a plain tensor state dict needs are allowed (an allowlist, so a checkpoint cannot
  run code);
- every tensor's size, stride and offset are checked against its storage and the element count the
  checkpoint declares for that storage before any memory is touched, and a tensor may not hold more
  elements than its storage (a stride-0 tensor cannot blow 519 bytes up into 1 GiB);
- the tensors together may not copy out more than a few times the bytes of the storages read (4,096 tensors
  each viewing the whole of one 4 MB storage would otherwise ask for 16 GiB);
- sizes are capped: the pickle, each storage and their total, whose uncompressed size may not exceed the
  file's own by much (torch stores storages uncompressed, so a zip bomb is refused before it is inflated);
  storages are read with bounds, never whole on the archive's word;
- a name that occurs twice in the archive resolves to its first entry, as torch's reader does;
- dict keys must be strings before they are hashed, so a crafted key cannot take exponential time;
- every failure is one `CheckpointError` line naming the file.

`load_torch_state_dict` reads plain state dicts. The pieces are public for readers of other torch.save files
built on the same bounds: `read_torch_archive(path, unpickler)` unpickles the archive with a subclass of
`TensorUnpickler` (which keeps the tensor globals and widens or narrows `find_class`'s allowlist), inside
`checkpoint_errors(path)`, which turns every failure, `CheckpointInvalid` included, into one line
(`weights/demucs_checkpoint.py` reads demucs's `.th` packages so).
"""

from __future__ import annotations

import io
import os
import pickle
import zipfile
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import ml_dtypes
import numpy as np

from ..errors import CheckpointError

_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}

MAX_PICKLE_BYTES = 64 << 20  # the state dict's structure; HDemucs-high's data.pkl is about 40 kB
MAX_TOTAL_BYTES = 8 << 30  # all storages together; HDemucs-high's are 335 MB
MAX_DIMS = 16
# Deflated storages may expand to at most this multiple of the archive's size (float weights barely
# compress; torch writes them uncompressed).
MAX_EXPANSION = 4
# The tensors' copies may total at most this multiple of the storage bytes read, plus COPY_SLACK. A state dict
# copies each storage about once (torchaudio's HDemucs: 397 tensors, each its own storage: exactly once); tied
# weights or a few views of one storage stay far below.
MAX_COPIES = 4
COPY_SLACK = 1 << 20


class CheckpointInvalid(Exception):
    """A reason the checkpoint is unusable; `checkpoint_errors` turns it into `CheckpointError("<path>: ...")`.
    Readers built on this module (`weights.demucs_checkpoint`) raise it for their own checks."""


class _StorageType:
    def __init__(self, name: str):
        self.name = name
        self.dtype = np.dtype(_STORAGE_DTYPES[name])


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int_tuple(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list)) or len(value) > MAX_DIMS or not all(_is_int(v) for v in value):
        raise CheckpointInvalid(f"a tensor's {what} is not a tuple of at most {MAX_DIMS} integers")
    return tuple(value)


def _tensor_view(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    """torch._utils._rebuild_tensor_v2's tensor as a read-only view of `storage`, every bound checked first."""
    if not isinstance(storage, np.ndarray) or storage.ndim != 1:
        raise CheckpointInvalid("a tensor does not refer to a storage")
    size, stride = _int_tuple(size, "size"), _int_tuple(stride, "stride")
    if len(size) != len(stride):
        raise CheckpointInvalid(f"a tensor has {len(size)} sizes but {len(stride)} strides")
    if not _is_int(storage_offset) or storage_offset < 0 or any(n < 0 for n in size) or any(s < 0 for s in stride):
        raise CheckpointInvalid("a tensor has a negative size, stride or offset")
    numel = 1
    for n in size:
        numel *= n
    if numel == 0:
        return np.zeros(size, storage.dtype)
    last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
    if last >= storage.size:
        raise CheckpointInvalid(
            f"a tensor of size {list(size)}, stride {list(stride)} at offset {storage_offset} reaches element "
            f"{last} of a storage of {storage.size}"
        )
    if numel > storage.size:  # only overlapping strides (e.g. 0) can make a view larger than its storage
        raise CheckpointInvalid(
            f"a tensor of size {list(size)} holds {numel} elements, more than its storage's {storage.size}"
        )
    itemsize = storage.dtype.itemsize
    return np.lib.stride_tricks.as_strided(
        storage[storage_offset:], shape=size, strides=tuple(s * itemsize for s in stride), writeable=False
    )


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *args):
    if not isinstance(data, np.ndarray):
        raise CheckpointInvalid("a parameter does not wrap a tensor")
    return data


class _Archive:
    """The members of a zip file, first entry winning for a repeated name (as torch's miniz-based reader)."""

    def __init__(self, archive: zipfile.ZipFile, file_size: int):
        self._archive = archive
        self.members: dict[str, zipfile.ZipInfo] = {}
        for info in archive.infolist():
            self.members.setdefault(info.filename, info)
        self._budget = min(MAX_TOTAL_BYTES, MAX_EXPANSION * file_size + (1 << 20))

    def read(self, name: str, expected: int | None = None, limit: int = MAX_TOTAL_BYTES) -> bytes:
        """The member's bytes, at most `limit` (and the archive's remaining budget); exactly `expected` if given."""
        info = self.members.get(name)
        if info is None:
            raise CheckpointInvalid(f"member {name} is missing")
        declared = info.file_size
        if expected is not None and declared != expected:
            raise CheckpointInvalid(f"member {name} holds {declared} bytes, its tensor declares {expected}")
        if declared > limit or declared > self._budget:
            raise CheckpointInvalid(
                f"member {name} is too large ({declared} bytes; this reader stops at {min(limit, self._budget)})"
            )
        self._budget -= declared
        with self._archive.open(info) as handle:
            data = handle.read(declared + 1)  # bounded: a member longer than its header says is refused
        if len(data) != declared:
            raise CheckpointInvalid(f"member {name} holds {len(data)} bytes, its header says {declared}")
        return data


def _string_keys(items: list) -> None:
    """Refuse dict keys other than strings before they are hashed: a tuple nested with shared parts (through the
    pickle memo) is a few bytes on disk and takes 2**depth steps to hash or print."""
    for key in items:
        if not isinstance(key, str):
            raise CheckpointInvalid(
                f"a dict key is a {type(key).__name__}, not a string (a state dict's keys are names)"
            )


def _refuse_sets(self: Any) -> None:
    raise CheckpointInvalid("the checkpoint holds a set (a state dict has none)")


class TensorUnpickler(pickle._Unpickler):
    """pickle's own Python unpickler (its dispatch table can be amended, unlike the C one's), with dict keys
    checked before hashing and sets refused; `find_class` is an allowlist, `persistent_load` reads storages."""

    dispatch: dict[int, Callable[[Any], None]] = dict(pickle._Unpickler.dispatch)
    # The pure-Python unpickler's working state, which typeshed does not declare.
    stack: list[Any]
    append: Callable[[Any], None]
    pop_mark: Callable[[], list[Any]]

    def _load_dict(self) -> None:
        items = self.pop_mark()
        _string_keys(items[0::2])
        self.append(dict(zip(items[0::2], items[1::2], strict=True)))

    def _load_setitem(self) -> None:
        value, key = self.stack.pop(), self.stack.pop()
        _string_keys([key])
        self.stack[-1][key] = value

    def _load_setitems(self) -> None:
        items = self.pop_mark()
        _string_keys(items[0::2])
        target = self.stack[-1]
        for i in range(0, len(items) - 1, 2):
            target[items[i]] = items[i + 1]

    dispatch[pickle.DICT[0]] = _load_dict
    dispatch[pickle.SETITEM[0]] = _load_setitem
    dispatch[pickle.SETITEMS[0]] = _load_setitems
    for _opcode in (pickle.EMPTY_SET, pickle.ADDITEMS, pickle.FROZENSET):
        dispatch[_opcode[0]] = _refuse_sets
    del _opcode

    def __init__(self, file: IO[bytes], archive: _Archive, prefix: str):
        super().__init__(file)
        self._archive = archive
        self._prefix = prefix
        self._storages: dict[tuple[str, str], np.ndarray] = {}
        self._storage_bytes = 0  # read so far
        self._copied_bytes = 0  # materialised by the tensors so far

    def _rebuild_tensor(self, *args: Any) -> np.ndarray:
        """torch._utils._rebuild_tensor_v2: the tensor as its own array, within the copy budget (see MAX_COPIES).
        Its storage was read before this call (the persistent id comes first in the pickle), so the budget holds
        at every step."""
        view = _tensor_view(*args)
        budget = MAX_COPIES * self._storage_bytes + COPY_SLACK
        if self._copied_bytes + view.nbytes > budget:
            raise CheckpointInvalid(
                f"its tensors would copy out more than {budget} bytes, {MAX_COPIES} times the {self._storage_bytes} "
                "bytes of their storages (many tensors viewing the same storage); a state dict needs no such copies"
            )
        self._copied_bytes += view.nbytes
        return np.array(view, copy=True)

    def tensor_global(self, module: str, name: str) -> Any:
        """What a tensor in a torch.save pickle needs (its rebuild functions and storage types), or None."""
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return self._rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        return None

    def find_class(self, module: str, name: str) -> Any:
        if module == "collections" and name == "OrderedDict":
            return OrderedDict
        found = self.tensor_global(module, name)
        if found is None:
            raise CheckpointInvalid(f"unsupported object {module}.{name} in checkpoint (expected a plain state dict)")
        return found

    def persistent_load(self, pid: Any) -> np.ndarray:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise CheckpointInvalid(f"unsupported persistent id {str(pid)[:80]!r}")
        _, storage_type, key, _location, numel = pid
        if not isinstance(storage_type, _StorageType) or not isinstance(key, str) or not _is_int(numel) or numel < 0:
            raise CheckpointInvalid(f"malformed storage reference {str(pid)[:80]!r}")
        cache_key = (key, storage_type.name)
        if cache_key not in self._storages:
            itemsize = storage_type.dtype.itemsize
            raw = self._archive.read(f"{self._prefix}/data/{key}", expected=numel * itemsize)
            self._storage_bytes += len(raw)
            self._storages[cache_key] = np.frombuffer(raw, dtype=storage_type.dtype)
        return self._storages[cache_key]


def _describe_keys(state: dict) -> str:
    """A few of a dict's keys, cheaply: crafted keys (deeply nested shared objects) could take exponential time
    to turn into text, so only short strings are shown and other keys by their type name."""
    shown = []
    for key in list(state)[:5]:
        shown.append(repr(key[:40]) if isinstance(key, str) else type(key).__name__)
    return f" (top-level keys {', '.join(shown)})" if shown else ""


# How every zip file starts (a local file header): a file that starts so but has no readable zip directory at
# its end was cut short (an interrupted download or copy) or damaged, rather than being another kind of file.
_ZIP_START = b"PK\x03\x04"


@contextmanager
def _open_archive(path: Path) -> Iterator[tuple[_Archive, str]]:
    """The torch.save zip file at `path`, open, and the folder its members live in (`<prefix>/data.pkl`), its
    layout checked (one data.pkl, little-endian). Raises `CheckpointInvalid` for anything else."""
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as handle:
            if handle.read(len(_ZIP_START)) == _ZIP_START:
                raise CheckpointInvalid(
                    "truncated or damaged torch checkpoint (a zip archive whose end is missing or unreadable); "
                    "download or copy it again"
                )
        raise CheckpointInvalid("not a torch checkpoint in zip format (torch >= 1.6 writes one by default)")
    with zipfile.ZipFile(path) as handle:
        archive = _Archive(handle, path.stat().st_size)
        pickles = [n for n in archive.members if n.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise CheckpointInvalid("not a torch checkpoint (no single data.pkl inside)")
        prefix = pickles[0][: -len("/data.pkl")]
        if f"{prefix}/byteorder" in archive.members:
            order = archive.read(f"{prefix}/byteorder", limit=16)
            if order != b"little":
                raise CheckpointInvalid("big-endian checkpoints are not supported")
        yield archive, prefix


def read_torch_archive(path: Path, unpickler: type[TensorUnpickler] = TensorUnpickler) -> Any:
    """The object a torch.save zip file holds, unpickled by `unpickler` (whose `find_class` is the allowlist) with
    its storages read within the bounds above. Raises `CheckpointInvalid` and whatever a malformed pickle raises:
    call it inside `checkpoint_errors(path)`."""
    with _open_archive(path) as (archive, prefix):
        data = archive.read(f"{prefix}/data.pkl", limit=MAX_PICKLE_BYTES)
        return unpickler(io.BytesIO(data), archive, prefix).load()


def read_torch_pickle(path: Path) -> bytes:
    """The pickle (`data.pkl`) of a torch.save zip file, as bytes, not unpickled, within the same bounds: for
    readers that look at its opcodes before choosing an unpickler. Raises as `read_torch_archive` does."""
    with _open_archive(path) as (archive, prefix):
        return archive.read(f"{prefix}/data.pkl", limit=MAX_PICKLE_BYTES)


@contextmanager
def checkpoint_errors(path: Path) -> Iterator[None]:
    """Turn every failure while reading the checkpoint at `path` into one `CheckpointError` line naming it: a
    `CheckpointInvalid` as it is, a malformed, truncated, oversized or too deeply nested file as what it means."""
    try:
        yield
    except CheckpointInvalid as error:
        raise CheckpointError(f"{path}: {error}") from None
    except CheckpointError:
        raise
    except RecursionError:
        raise CheckpointError(f"{path}: not a readable torch checkpoint (nested too deeply)") from None
    except MemoryError:
        raise CheckpointError(f"{path}: not a readable torch checkpoint (too large for this machine)") from None
    except (zipfile.BadZipFile, zlib.error) as error:  # a CRC mismatch, a corrupt deflate stream
        text = " ".join(f"{type(error).__name__}: {error}".split())[:200]
        raise CheckpointError(
            f"{path}: truncated or damaged torch checkpoint ({text}); download or copy it again"
        ) from None
    except Exception as error:  # pickle and the rest: UnpicklingError, EOFError, KeyError, ...
        # A KeyError's text is a key the file chose (an unknown opcode or memo entry): say what it means instead.
        text = "malformed pickle data" if isinstance(error, KeyError) else f"{type(error).__name__}: {error}"
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({' '.join(text.split())[:200]})") from None


def load_torch_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Load a state dict written by `torch.save(model.state_dict(), path)` as {key: numpy array}. Raises
    `CheckpointError` (one line) for anything else: a malformed, truncated, hostile or oversized file."""
    path = Path(path)
    with checkpoint_errors(path):
        state = read_torch_archive(path)
        if not isinstance(state, dict):
            raise CheckpointInvalid(
                f"the checkpoint is not a state dict of named tensors (it holds a {type(state).__name__})"
            )
        if not all(isinstance(k, str) and isinstance(v, np.ndarray) for k, v in state.items()):
            raise CheckpointInvalid(f"the checkpoint is not a state dict of named tensors{_describe_keys(state)}")
        return dict(state)
