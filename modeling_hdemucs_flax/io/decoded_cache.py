"""A song that is read twice (the mix statistics, then the separation) but decoded once.

Separating a song needs its mean and standard deviation before its first chunk (demucs normalises by the whole
mix), so it is read twice. For a WAV file a second read is a copy from the page cache; for a compressed file
(MP3, AAC, Ogg, FLAC) it is a second decode, a third of the host's work per audio-second. `DecodedOnce` keeps the
first pass's float32 blocks and replays them, bit for bit and block for block, so what follows is unchanged:
in memory up to `memory_limit` bytes, the rest in an unlinked temporary file (nothing is left behind, whatever
ends the process), so memory stays bounded whatever the song's length.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator

import numpy as np

# Per song: 64 MiB holds 6 minutes of 44.1 kHz stereo float32; a longer song spills the rest to a temporary file.
DEFAULT_MEMORY_LIMIT = 64 << 20


class DecodedOnce:
    """`blocks()` with the decode done once: the first call iterates `decode()` and keeps its blocks; every
    later call replays them (several replays may run at once, e.g. the separation and the mix a "minus" stem
    subtracts from). A first pass that did not reach the end (an error, a reader that stopped) keeps nothing:
    the next call decodes again from the start, and raises what the decoder raises. The kept blocks are
    read-only arrays (a reader that wrote into one would change the next reader's input). `close()` releases
    the memory and the temporary file."""

    def __init__(
        self,
        decode: Callable[[], Iterable[np.ndarray]],
        memory_limit: int = DEFAULT_MEMORY_LIMIT,
        spill_dir: str | os.PathLike | None = None,
    ):
        self._decode, self._limit, self._spill_dir = decode, memory_limit, spill_dir
        self._spill = None
        self.close()  # sets the empty state

    @property
    def spilled_bytes(self) -> int:
        """Bytes kept in the temporary file (0 while everything fits in memory)."""
        return self._spill_bytes

    def __call__(self) -> Iterator[np.ndarray]:
        return self._replay() if self._complete else self._record()

    def _record(self) -> Iterator[np.ndarray]:
        self.close()  # what an earlier, unfinished pass kept
        for block in self._decode():
            block = np.ascontiguousarray(block, np.float32)
            block.flags.writeable = False
            self._keep(block)
            yield block
        self._complete = True

    def _keep(self, block: np.ndarray) -> None:
        if self._spill is None and self._memory_bytes + block.nbytes <= self._limit:
            self._in_memory.append(block)
            self._memory_bytes += block.nbytes
            return
        if self._spill is None:
            self._spill = tempfile.TemporaryFile(prefix="hdemucs-flax-pcm-", dir=self._spill_dir)
        self._spilled.append((self._spill_bytes, block.shape))
        os.pwrite(self._spill.fileno(), block.tobytes(), self._spill_bytes)
        self._spill_bytes += block.nbytes

    def _replay(self) -> Iterator[np.ndarray]:
        yield from self._in_memory
        for offset, shape in self._spilled:
            assert self._spill is not None
            data = os.pread(self._spill.fileno(), math.prod(shape) * 4, offset)  # float32: 4 bytes a sample
            yield np.frombuffer(data, np.float32).reshape(shape)  # read-only: a view of immutable bytes

    def close(self) -> None:
        """Drop the kept blocks and remove the temporary file (idempotent; a later call decodes again)."""
        if self._spill is not None:
            self._spill.close()
        self._spill = None
        self._in_memory: list[np.ndarray] = []
        self._memory_bytes = self._spill_bytes = 0
        self._spilled: list[tuple[int, tuple[int, ...]]] = []  # (offset in the file, block shape), in order
        self._complete = False
