"""Work ahead in a background thread, a bounded number of items ahead.

The host side of separation is a chain of generators (decode -> normalise -> resample -> chunk). `ahead` runs
one such chain in its own thread, so that decoding and resampling (libsndfile, FFmpeg, soxr and numpy release
the GIL) overlap with the schedule's own work and the network; the queue between them holds at most `depth`
items, so memory stays bounded however far behind the consumer is.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

_POLL = 0.05  # seconds a producer waits on a full queue before it checks whether the consumer has stopped


class _End:
    """What the producer puts last: nothing more (`error` None) or the exception that ended it."""

    def __init__(self, error: BaseException | None = None):
        self.error = error


def ahead(items: Iterable[T], depth: int, name: str) -> Iterator[T]:
    """Iterate `items` in a thread named `name`, at most `depth` items ahead of the caller. The caller gets the
    same items in the same order; an exception raised by `items` is raised to the caller at the same position.
    Closing the returned generator (or letting it go) stops the producer at its next item and closes `items`
    there, in the producer's thread (a generator is closed by the thread that runs it)."""
    ready: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=_POLL)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        source = iter(items)
        try:
            for item in source:
                if not put(item):
                    return
            put(_End())
        except BaseException as error:  # handed to the consumer, raised there
            put(_End(error))
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=produce, name=name, daemon=True)
    thread.start()
    return _Ahead(ready, stop, thread)


class _Ahead(Iterator):
    """The consumer's side of `ahead`: an iterator that stops its producer when closed, exhausted or dropped
    (also when it was never iterated, which a generator's `finally` would miss)."""

    def __init__(self, ready: queue.Queue, stop: threading.Event, thread: threading.Thread):
        self._ready, self._stop, self._thread = ready, stop, thread

    def __next__(self):
        if self._stop.is_set():
            raise StopIteration
        item = self._ready.get()
        if isinstance(item, _End):
            self.close()
            if item.error is not None:
                raise item.error
            raise StopIteration
        return item

    @property
    def running(self) -> bool:
        """Whether the producer thread is still running."""
        return self._thread.is_alive()

    def close(self) -> None:
        """Stop the producer (after the item it is making) and wait for it; idempotent."""
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join()

    def __del__(self) -> None:
        self._stop.set()  # no join here: a finaliser must not block
