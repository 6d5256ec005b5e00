"""Where a dataset job's files live: a local folder or an fsspec URI (`s3://`, `gs://`, `file://`, ...).

The only module that talks to fsspec. Audio is never opened here (`audio_io` opens local files only): an
object-store input is copied to a local temporary file for the length of one track (`local_copy`), and
stems are written locally and uploaded. Two kinds of output store, one interface:

- `LocalStore` (a plain path or `file://`): renames are atomic, so a staging folder inside the output and
  `os.replace` publish each file in one step;
- `ObjectStore` (anything else fsspec reaches): each PUT is atomic per object; there are no renames.

One job at a time per output (`Store.lock`): two runs on one output would sweep each other's staging, write the
same stems and count each other's attempts. A folder is locked with `flock` on `_hdemucs/lock` (the kernel
releases it when the process ends, however it ends); an object store holds a lock object `_hdemucs/lock.json`
(owner, host, pid, start, heartbeat), created only where none exists (S3's conditional PUT), refreshed every
minute, removed at the end, and taken over when its owner is a dead process of this host or its heartbeat is
older than five minutes (a run killed on another machine blocks its output that long).

Paths inside a store are relative POSIX strings (`rock/song/drums.flac`). Standard library and fsspec only
(fsspec comes with huggingface_hub); the object-store drivers (s3fs, gcsfs) are optional installs.
"""

from __future__ import annotations

from typing import IO, TYPE_CHECKING, cast

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

import contextlib
import glob
import json
import os
import shutil
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from ..errors import DatasetError, one_line
from ..io import tempfiles


def is_url(spec: str) -> bool:
    return "://" in spec


def filesystem(url: str, storage_options: dict | None = None) -> tuple[AbstractFileSystem, str]:
    """(fsspec filesystem, path inside it) for `url`. A missing driver (s3fs for s3://, gcsfs for gs://) is
    a `DatasetError` saying what to install."""
    import fsspec.core

    try:
        return fsspec.core.url_to_fs(url, **(storage_options or {}))
    except ImportError as error:
        protocol = url.split("://", 1)[0]
        package = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs"}
        hint = package.get(protocol, f"the fsspec driver for {protocol}://")
        raise DatasetError(f"{url}: reading {protocol}:// needs {hint} (pip install {hint})") from error
    except ValueError as error:
        raise DatasetError(f"{url}: not a URL fsspec understands ({error})") from None
    except OSError as error:  # a driver that connects when it is made (ftp://, sftp://) and cannot
        raise DatasetError(f"{url}: cannot reach it ({one_line(error)})") from None


def is_local_filesystem(fs: AbstractFileSystem) -> bool:
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
    return "file" in protocols or "local" in protocols


def unstrip(fs: AbstractFileSystem, path: str) -> str:
    """The full URL of `path` on `fs` (fsspec strips the protocol)."""
    return fs.unstrip_protocol(path)


@contextlib.contextmanager
def local_copy(source: str, folder: Path, name: str, storage_options: dict | None = None) -> Iterator[Path]:
    """A local file holding `source`: the file itself for a local path or `file://` URL, else a streamed
    download into `folder / name`, removed afterwards."""
    if not is_url(source):
        yield Path(source)
        return
    fs, path = filesystem(source, storage_options)
    if is_local_filesystem(fs):
        yield Path(path)
        return
    target = folder / name
    folder.mkdir(parents=True, exist_ok=True)
    try:
        fs.get_file(path, str(target))
    except FileNotFoundError:
        target.unlink(missing_ok=True)
        raise DatasetError(f"{source}: no such file") from None
    try:
        yield target
    finally:
        target.unlink(missing_ok=True)


class Store:
    """An output location. `url(rel)` names a file for people; the other methods take relative paths."""

    root: str  # the output as the user gave it, without a trailing slash

    def url(self, rel: str) -> str:
        return f"{self.root}/{rel}" if rel else self.root

    # One job per method, implemented by both kinds of store.
    def exists(self, rel: str) -> bool:
        raise NotImplementedError

    def read_bytes(self, rel: str) -> bytes | None:
        """The file's content, or None when it does not exist."""
        raise NotImplementedError

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Write a whole file so that readers see the old content or the new one, never a part."""
        raise NotImplementedError

    def remove(self, rel: str) -> None:
        """Delete a file; no error when it does not exist."""
        raise NotImplementedError

    def remove_tree(self, rel: str) -> None:
        """Delete a folder (prefix) and everything under it; no error when there is none."""
        raise NotImplementedError

    def find(self, rel: str) -> list[str]:
        """Every file under the folder `rel`, as paths relative to it (one recursive listing)."""
        raise NotImplementedError

    def move(self, rel: str, to: str) -> None:
        """Rename a file inside the store (a copy and a delete on an object store)."""
        raise NotImplementedError

    def publish(self, local: Path, rel: str) -> None:
        """Move (file system) or upload (object store) the finished local file `local` to `rel` in one step:
        readers see no file or the whole file."""
        raise NotImplementedError

    def staging_dir(self, token: str, scratch: Path) -> Path:
        """A local folder where a track's stems are written before `publish`: inside the output on a file
        system (so publishing is a rename), in the worker's scratch folder for an object store."""
        raise NotImplementedError

    def sweep_staging(self, prefix: str = "") -> None:
        """Remove the staging folders (those whose token starts with `prefix`) a killed worker left in the
        output. An object store keeps none: its stems are staged in the worker's scratch folder."""

    def append_lines(self, rel: str) -> LineSink:
        """A sink for the manifest: lines are visible as they are written (file system) or uploaded at
        growing intervals and at `close()` (object store)."""
        raise NotImplementedError

    def lock(self) -> contextlib.AbstractContextManager[None]:
        """Hold the output for this process for the `with` block (see the module doc). Raises `DatasetError`
        when another run holds it (naming that run) or the output cannot be written."""
        raise NotImplementedError

    def _unwritable(self, error: OSError) -> DatasetError:
        reason = error.strerror or one_line(error)
        return DatasetError(f"{self.root}: cannot write to this output ({reason}); choose one you can write to")

    def _in_use(self, holder: dict | None, note: str = "") -> DatasetError:
        who = "another run"
        if holder:
            who = f"another run (pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')})"
        return DatasetError(f"{self.root} is in use by {who}{note}; wait for it to finish, or choose another output")


STAGING = "_hdemucs/staging"
LOCK, LOCK_OBJECT = "_hdemucs/lock", "_hdemucs/lock.json"
LOCK_HEARTBEAT_S, LOCK_STALE_S = 60.0, 300.0


def _lock_owner() -> dict:
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return {"id": uuid.uuid4().hex, "host": socket.gethostname(), "pid": os.getpid(), "started": started}


class LocalStore(Store):
    def __init__(self, root: str | os.PathLike):
        self.path = Path(root).expanduser().absolute()
        self.root = str(root).rstrip("/") or "/"

    def _p(self, rel: str) -> Path:
        return self.path / rel

    def exists(self, rel: str) -> bool:
        return self._p(rel).is_file()

    def read_bytes(self, rel: str) -> bytes | None:
        try:
            return self._p(rel).read_bytes()
        except FileNotFoundError:
            return None

    def write_bytes(self, rel: str, data: bytes) -> None:
        target = self._p(rel)
        target.parent.mkdir(parents=True, exist_ok=True)
        temp = tempfiles.new_name(target, ".partial")  # known before it exists: an interrupt leaves none
        try:
            with os.fdopen(tempfiles.create(temp), "wb") as out:
                out.write(data)
            tempfiles.finish(temp, target)  # the mode the umask allows, as the stems have
        except BaseException:
            temp.unlink(missing_ok=True)
            raise

    def remove(self, rel: str) -> None:
        self._p(rel).unlink(missing_ok=True)

    def remove_tree(self, rel: str) -> None:
        shutil.rmtree(self._p(rel), ignore_errors=True)

    def find(self, rel: str) -> list[str]:
        base = self._p(rel)
        found = []
        for folder, _, names in os.walk(base):
            prefix = PurePosixPath(Path(folder).relative_to(base).as_posix())
            found.extend(str(prefix / name) if str(prefix) != "." else name for name in names)
        return found

    def move(self, rel: str, to: str) -> None:
        self._p(to).parent.mkdir(parents=True, exist_ok=True)
        os.replace(self._p(rel), self._p(to))

    def publish(self, local: Path, rel: str) -> None:
        target = self._p(rel)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(local, target)

    def staging_dir(self, token: str, scratch: Path) -> Path:
        return self._p(f"{STAGING}/{token}")

    def sweep_staging(self, prefix: str = "") -> None:
        folder = self._p(STAGING)
        if not prefix:
            shutil.rmtree(folder, ignore_errors=True)
        elif folder.is_dir():
            for stale in folder.glob(f"{glob.escape(prefix)}*"):
                shutil.rmtree(stale, ignore_errors=True)

    def append_lines(self, rel: str) -> LineSink:
        target = self._p(rel)
        target.parent.mkdir(parents=True, exist_ok=True)
        return LineSink(open(target, "w", encoding="utf-8"))

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        import fcntl

        path = self._p(LOCK)
        while True:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                handle = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), tempfiles.file_mode())
            except OSError as error:
                raise self._unwritable(error) from None
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as error:
                holder = _read_json(os.read(handle, 4096)) if isinstance(error, BlockingIOError) else None
                os.close(handle)
                if isinstance(error, BlockingIOError):
                    raise self._in_use(holder) from None
                raise DatasetError(f"{self.root}: cannot lock this output ({one_line(error)})") from None
            # The run before this one removes the file before it unlocks: lock the file now at the path, not one
            # that was removed between this process's open and its flock.
            with contextlib.suppress(FileNotFoundError):
                if os.path.samestat(os.fstat(handle), os.stat(path)):
                    break
            os.close(handle)
        try:
            os.ftruncate(handle, 0)
            os.write(handle, json.dumps(_lock_owner()).encode())  # names this run to one that is refused
            yield
        finally:
            path.unlink(missing_ok=True)
            os.close(handle)


class ObjectStore(Store):
    def __init__(self, root: str, storage_options: dict | None = None):
        self.root = root.rstrip("/")
        self.fs, self.base = filesystem(self.root, storage_options)
        self.base = self.base.rstrip("/")

    def _p(self, rel: str) -> str:
        return f"{self.base}/{rel}"

    def exists(self, rel: str) -> bool:
        self.fs.invalidate_cache(self._p(rel))
        return self.fs.isfile(self._p(rel))

    def read_bytes(self, rel: str) -> bytes | None:
        try:
            return cast(bytes, self.fs.cat_file(self._p(rel)))
        except FileNotFoundError:
            return None

    def write_bytes(self, rel: str, data: bytes) -> None:
        self.fs.pipe_file(self._p(rel), data)

    def remove(self, rel: str) -> None:
        try:
            self.fs.rm_file(self._p(rel))
        except FileNotFoundError:
            pass

    def remove_tree(self, rel: str) -> None:
        paths = [self._p(f"{rel}/{name}") for name in self.find(rel)]
        if paths:
            self.fs.rm(paths)

    def find(self, rel: str) -> list[str]:
        base = self._p(rel).rstrip("/")
        self.fs.invalidate_cache(base)  # another process may have written since this one last listed
        try:
            paths = self.fs.find(base)
        except FileNotFoundError:
            return []
        return [p[len(base) + 1 :] for p in paths if p.startswith(base + "/")]

    def move(self, rel: str, to: str) -> None:
        self.fs.mv(self._p(rel), self._p(to))

    def publish(self, local: Path, rel: str) -> None:
        self.fs.put_file(str(local), self._p(rel))

    def staging_dir(self, token: str, scratch: Path) -> Path:
        return scratch / "staging" / token

    def append_lines(self, rel: str) -> LineSink:
        return UploadingLineSink(self, rel)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        owner = _lock_owner()
        self._take_lock(owner)
        stop = threading.Event()
        beat = threading.Thread(target=self._heartbeat, args=(owner, stop), name="hdemucs-lock", daemon=True)
        beat.start()
        try:
            yield
        finally:
            stop.set()
            beat.join()
            holder = _read_json(self.read_bytes(LOCK_OBJECT))
            if holder is None or holder.get("id") == owner["id"]:
                self.remove(LOCK_OBJECT)

    def _take_lock(self, owner: dict) -> None:
        for _ in range(3):  # a stale lock removed, or a lock released while this process looked at it
            data = json.dumps({**owner, "heartbeat": time.time()}).encode()
            try:
                self._create(LOCK_OBJECT, data)
            except FileExistsError:
                holder = _read_json(self.read_bytes(LOCK_OBJECT))
                if holder is not None and not _abandoned(holder):
                    age = time.time() - float(holder.get("heartbeat") or 0)
                    note = f" (its lock {self.url(LOCK_OBJECT)} was renewed {age:.0f} s ago)"
                    raise self._in_use(holder, note) from None
                self.remove(LOCK_OBJECT)
                continue
            except OSError as error:
                raise self._unwritable(error) from None
            holder = _read_json(self.read_bytes(LOCK_OBJECT))  # a store without conditional writes: last one wins
            if holder is None or holder.get("id") != owner["id"]:
                raise self._in_use(holder) from None
            return
        raise self._in_use(None)

    def _create(self, rel: str, data: bytes) -> None:
        """Write `rel` only if it does not exist (FileExistsError otherwise); where the driver has no exclusive
        write, a check before an ordinary write."""
        try:
            self.fs.pipe_file(self._p(rel), data, mode="create")
        except TypeError:  # this driver's pipe_file takes no mode
            if self.exists(rel):
                raise FileExistsError(self.url(rel)) from None
            self.write_bytes(rel, data)

    def _heartbeat(self, owner: dict, stop: threading.Event) -> None:
        while not stop.wait(LOCK_HEARTBEAT_S):
            with contextlib.suppress(Exception):  # a missed beat is made up by the next one
                self.write_bytes(LOCK_OBJECT, json.dumps({**owner, "heartbeat": time.time()}).encode())


def _read_json(data: bytes | None) -> dict | None:
    try:
        value = json.loads(data) if data else None
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _abandoned(holder: dict) -> bool:
    """Whether a lock object's owner is gone: a dead process of this host, or no heartbeat for `LOCK_STALE_S`."""
    pid = holder.get("pid")
    if holder.get("host") == socket.gethostname() and isinstance(pid, int) and not tempfiles.process_alive(pid):
        return True
    try:
        return time.time() - float(holder.get("heartbeat") or 0) > LOCK_STALE_S
    except (TypeError, ValueError):
        return True


def open_store(output: str | os.PathLike, storage_options: dict | None = None) -> Store:
    """The store for an output location given as a path or URL."""
    text = os.fspath(output)
    if is_url(text):
        fs, path = filesystem(text, storage_options)
        if is_local_filesystem(fs):
            return LocalStore(path)
        return ObjectStore(text, storage_options)
    return LocalStore(text)


class LineSink:
    """Lines written to a local file, flushed one by one (a reader sees every finished line)."""

    def __init__(self, handle: IO[str]) -> None:
        self._handle = handle

    def write(self, line: str) -> None:
        self._handle.write(line + "\n")
        self._handle.flush()

    def close(self) -> None:
        self._handle.close()


class UploadingLineSink(LineSink):
    """Lines kept in a local temporary file and uploaded whole to the store: at most every `interval`
    seconds, and never more often than ten times the last upload's duration (so re-uploading a growing
    manifest costs at most ~10 % of the time), and at `close()`."""

    def __init__(self, store: ObjectStore, rel: str, interval: float = 30.0):
        import time

        self._time = time.monotonic
        self._store, self._rel, self._interval = store, rel, interval
        handle, self._temp = tempfile.mkstemp(prefix="hdemucs-manifest-", suffix=".jsonl")
        super().__init__(os.fdopen(handle, "w", encoding="utf-8"))
        self._last, self._cost = self._time(), 0.0
        self._upload()

    def _upload(self) -> None:
        started = self._time()
        self._store.fs.put_file(self._temp, self._store._p(self._rel))
        self._last, self._cost = self._time(), self._time() - started

    def write(self, line: str) -> None:
        super().write(line)
        if self._time() - self._last >= max(self._interval, 10 * self._cost):
            self._upload()

    def close(self) -> None:
        super().close()
        try:
            self._upload()
        finally:
            os.unlink(self._temp)
