"""JAX's persistent compilation cache with entries written atomically (for the folder `runtime` configures).

JAX 0.10's file cache (`jax/_src/lru_cache.py`, `LRUCache.put`) writes an entry with `Path.write_bytes` under
its final name and never replaces an entry that exists. A process killed while writing (the out-of-memory
killer, SIGKILL of a Ray actor, a full disk) leaves a truncated entry; every later process that compiles the
same program reads it, fails ("Error reading persistent compilation cache entry ..."), compiles again and, the
entry existing, never writes its good copy: a warning and a full compile per process, forever.

`AtomicFileCache` keeps JAX's file layout and rules, and changes two things:
- an entry (and its access-time file) is written under a temporary name beside it (`tempfiles.new_name`,
  named after the writing process) and renamed into place, so a reader finds a whole entry or none; the
  temporaries a killed writer leaves are swept when the cache is next configured (`sweep_stale`);
- an entry this process read and then compiled again anyway (JAX calls `put` after a read only when the entry
  failed to load) is replaced, so one process repairs a bad entry and the next ones load it. An entry another
  process wrote meanwhile is still left alone, as JAX does.

It is installed into JAX's cache module state (`install`), which is private: the layout is pinned to jax 0.10
(`pyproject.toml`), and `tests/test_compilation_cache.py` pins the JAX sources this copies, so a change of JAX's
internals fails loudly there. With another JAX, `install` leaves JAX's own cache in place (compiles are still
cached, just not written atomically).
"""

from __future__ import annotations

import functools
import os
import time
import warnings
from pathlib import Path
from typing import Any

from .io import tempfiles

PARTIAL = ".partial"  # the suffix of an entry being written (`tempfiles.new_name`)
SUPPORTED_JAX = "0.10."


def _write_atomically(destination: Path, data: bytes) -> None:
    """`data` into `destination`, whole or not at all: written under a temporary name, then renamed over it."""
    temp = tempfiles.new_name(destination, PARTIAL)
    try:
        descriptor = tempfiles.create(temp)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
        tempfiles.finish(temp, destination)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


@functools.cache
def cache_class() -> type[Any]:
    """`AtomicFileCache`, a subclass of JAX's `LRUCache` (made on first use: JAX is imported only then)."""
    from jax._src.lru_cache import _ATIME_SUFFIX, _CACHE_SUFFIX, LRUCache

    class AtomicFileCache(LRUCache):
        """JAX's `LRUCache` with atomic writes that replace an entry this process could not load (see the
        module's docstring). `put` follows `LRUCache.put` of jax 0.10 line by line otherwise."""

        def __init__(self, path: str, *, max_size: int):
            super().__init__(path, max_size=max_size)
            self.read_keys: set[str] = set()  # keys whose entry `get` returned in this process

        def get(self, key: str) -> bytes | None:
            value = super().get(key)
            if value is not None:
                self.read_keys.add(key)
            return value

        def put(self, key: str, value: bytes) -> None:
            if not key:
                raise ValueError("key cannot be empty")
            if self.eviction_enabled and len(value) > self.max_size:
                warnings.warn(
                    f"Cache value for key {key!r} of size {len(value)} bytes exceeds "
                    f"the maximum cache size of {self.max_size} bytes",
                    stacklevel=2,
                )
                return
            cache_path = self.path / f"{key}{_CACHE_SUFFIX}"
            if self.eviction_enabled:
                self.lock.acquire(timeout=self.lock_timeout_secs)
            try:
                # Read here and compiled again: the entry failed to load, so this write replaces it. Otherwise
                # an existing entry is another process's whole one (JAX's rule: first writer wins).
                if cache_path.exists() and key not in self.read_keys:
                    return
                self._evict_if_needed(additional_size=len(value))
                if self.eviction_enabled:  # first: eviction reads the access time of every entry it lists
                    timestamp = time.time_ns().to_bytes(8, "little")
                    _write_atomically(self.path / f"{key}{_ATIME_SUFFIX}", timestamp)
                _write_atomically(Path(cache_path), value)
                self.read_keys.discard(key)
            finally:
                if self.eviction_enabled:
                    self.lock.release()

    return AtomicFileCache


def install(folder: Path) -> bool:
    """Make JAX's persistent compilation cache, already pointed at `folder` (`jax_compilation_cache_dir`), an
    `AtomicFileCache` there, after sweeping the temporaries killed writers left in it. Process-wide, like the
    cache setting itself. Returns True when installed; False (JAX's own cache stays) when the cache is disabled
    or this JAX is not the version whose internals this mirrors."""
    import jax

    tempfiles.sweep_stale(folder, PARTIAL, time.time())
    if not jax.__version__.startswith(SUPPORTED_JAX):
        return False
    try:
        from jax._src import compilation_cache as jax_cache
        from jax._src import config

        atomic = cache_class()
        if not config.enable_compilation_cache.value:
            return False
        with jax_cache._cache_initialized_mutex:
            base: Any = installed_cache()
            if isinstance(base, atomic) and Path(base.path) == folder:
                return True
            cache = atomic(str(folder), max_size=config.compilation_cache_max_size.value)
            if config.compilation_cache_check_contents.value:  # as JAX's `get_file_cache` builds it
                cache = jax_cache.VerificationCache(cache)
            jax_cache._cache = cache
            jax_cache._cache_initialized = True  # JAX's lazy initialisation would build its own cache
    except (ImportError, AttributeError):
        return False
    return True


def installed_cache() -> object | None:
    """The file cache JAX uses in this process, or None (none yet). A `VerificationCache`
    (`jax_compilation_cache_check_contents`) is unwrapped."""
    from jax._src import compilation_cache as jax_cache

    current = jax_cache._cache
    return getattr(current, "_base_cache", current)
