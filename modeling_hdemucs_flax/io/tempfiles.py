"""Temporary files beside their destination: created with the mode the umask allows, named after the process
that owns them, and swept when an earlier process died before removing its own.

Every writer of the package (stems in `audio_io`, downloads in `downloads`, model folders in `pretrained`)
writes under a hidden temporary name in the destination folder and renames it into place when complete. A
process killed by SIGKILL (or by a signal nobody handles) cannot remove its temporaries; the next run sweeps
them (`sweep_stale`), recognising them by the owner's process id in the name:

    .<destination name>.<pid>-<8 random characters><suffix>      e.g.  .vocals.wav.4711-k2j5x_0a.partial

A process's working folder (the HTTP server's uploads and results) is named the same way (`new_folder`) and
swept the same way (`sweep_stale_folders`).

Standard library only.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

_UMASK_LOCK = threading.Lock()
# `new_name`'s random part: 8 characters of [a-z0-9_] (as `tempfile`'s) after the owner's process id.
_NAME_CHARACTERS = "abcdefghijklmnopqrstuvwxyz0123456789_"


def umask() -> int:
    """The process's umask, read without changing it where the kernel tells it (Linux's /proc/self/status);
    elsewhere set and restored under a lock, so threads of this package never race on it."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode a plain `open(path, "w")` would give a new file (0o666 less the umask)."""
    return 0o666 & ~umask()


def folder_mode() -> int:
    """The mode `mkdir` would give a new folder (0o777 less the umask)."""
    return 0o777 & ~umask()


def new_name(destination: str | os.PathLike, suffix: str) -> Path:
    """A fresh temporary name beside `destination` (same folder, so a rename replaces it atomically), named after
    this process; no file is made yet. The caller keeps the name *before* `create` makes the file, so an
    interrupt arriving at any moment (Ctrl-C, or SIGTERM as `runtime.Terminated`) leaves nothing it cannot
    remove: `Path.unlink(missing_ok=True)` on the name is always the whole clean-up."""
    destination = Path(destination)
    random = "".join(secrets.choice(_NAME_CHARACTERS) for _ in range(8))
    return destination.with_name(f".{destination.name}.{os.getpid()}-{random}{suffix}")


def create(temp: str | os.PathLike) -> int:
    """Create the file `temp` (a `new_name`), which must not exist, readable and writable by its owner only
    (as `mkstemp`; `finish` gives it the usual mode before it is renamed). Returns the open file descriptor.
    Raises OSError when the folder cannot be written (FileExistsError should the name be taken)."""
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    return os.open(temp, flags, 0o600)


def finish(temp: str | os.PathLike, destination: str | os.PathLike) -> Path:
    """Give the temporary file `temp` the mode the umask allows and rename it over `destination`."""
    os.chmod(temp, file_mode())
    os.replace(temp, destination)
    return Path(destination)


# `new_name`'s names (the suffix starts with a dot).
_OWNED = re.compile(r"^\..+\.(?P<pid>\d+)-[a-z0-9_]{8}(?P<suffix>\.[A-Za-z0-9_.]+)$")


def process_alive(pid: int) -> bool:
    """Whether process `pid` runs on this machine (this process counts as running; so does a pid this system
    cannot hold, to be safe: callers remove what belongs to dead processes only)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True  # someone else's live process (or a pid this system cannot hold: keep, to be safe)
    return True


def new_folder(destination: str | os.PathLike, suffix: str) -> Path:
    """Make a fresh folder named like `new_name(destination, suffix)`, readable by its owner only (as
    `tempfile.mkdtemp`), and return it. Raises OSError when the parent folder cannot be written."""
    while True:
        path = new_name(destination, suffix)
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:  # the random part was taken: draw again
            continue
        return path


def _left_behind(folder: str | os.PathLike, suffix: str, older_than: float, folders: bool) -> Iterator[os.DirEntry]:
    """The entries of `folder` (not below it) named by `new_name` with `suffix`, files or (`folders`) folders,
    last modified before `older_than` and owned by a process that is no longer running. A name of this very
    process counts for folders, as old as that: the id belonged to an earlier process (a restarted container's
    process 1). An entry that cannot be examined is passed over; a folder that cannot be read yields nothing."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for entry in entries:
        match = _OWNED.match(entry.name)
        if match is None or match.group("suffix") != suffix:
            continue
        try:
            kind = entry.is_dir(follow_symlinks=False) if folders else entry.is_file(follow_symlinks=False)
            if not kind or entry.stat(follow_symlinks=False).st_mtime >= older_than:
                continue
        except OSError:
            continue
        pid = int(match.group("pid"))
        if folders and pid == os.getpid() or not process_alive(pid):
            yield entry


def sweep_stale(folder: str | os.PathLike, suffix: str, older_than: float) -> list[Path]:
    """Remove temporaries named by `create` with `suffix` in `folder` (not below it) that an earlier process
    left: last modified before `older_than` (a `time.time()` value, e.g. when this run started) and owned by a
    process id that is no longer running on this machine. Anything else is left alone. Returns what was
    removed; a folder that does not exist or cannot be read is not an error."""
    removed = []
    for entry in _left_behind(folder, suffix, older_than, folders=False):
        try:
            os.unlink(entry.path)
        except OSError:
            continue
        removed.append(Path(entry.path))
    return removed


def sweep_stale_folders(folder: str | os.PathLike, suffix: str, older_than: float) -> list[Path]:
    """Remove the folders made by `new_folder` with `suffix` in `folder` (with everything in them) that an
    earlier process left: last modified before `older_than` (a `time.time()` value before this process made
    any such folder, e.g. when it started) and owned by a process id that is no longer running. A folder named
    after this very process is swept too when it is that old: the id belonged to an earlier process (a
    restarted container's process 1). Anything else is left alone; returns what was removed."""
    removed = []
    for entry in _left_behind(folder, suffix, older_than, folders=True):
        shutil.rmtree(entry.path, ignore_errors=True)
        if not os.path.lexists(entry.path):
            removed.append(Path(entry.path))
    return removed
