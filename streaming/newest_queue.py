"""A bounded, thread-safe hand-off queue where the newest item wins.

A producer that runs faster than its consumer never blocks and never grows the queue:
putting into a full queue discards the *oldest* item and counts it as dropped.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


class QueueClosed(Exception):
    """Raised by :meth:`NewestWinsQueue.get` once the queue is closed and (if draining) empty."""


class QueueEmpty(Exception):
    """Raised by :meth:`NewestWinsQueue.get` when the timeout passed with nothing to take."""


class NewestWinsQueue(Generic[T]):
    """Bounded FIFO of at most ``maxsize`` items; a put into a full queue drops the oldest.

    Args:
        maxsize: the bound (>= 1).

    Counters (read them at any time): ``dropped`` (items discarded by puts into a full
    queue), ``max_depth`` (largest length ever seen, never above ``maxsize``).
    """

    def __init__(self, maxsize: int) -> None:
        if isinstance(maxsize, bool) or not isinstance(maxsize, int) or maxsize < 1:
            raise ValueError(f"maxsize must be an integer >= 1; got {maxsize!r}")
        self.maxsize = maxsize
        self._items: deque[T] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._drain = True
        self.dropped = 0
        self.max_depth = 0

    def put(self, item: T) -> bool:
        """Append ``item``; returns True when an older item had to be dropped for it.

        Raises:
            QueueClosed: the queue was closed.
        """
        with self._cond:
            if self._closed:
                raise QueueClosed("queue is closed")
            dropped = False
            if len(self._items) >= self.maxsize:
                self._items.popleft()
                self.dropped += 1
                dropped = True
            self._items.append(item)
            self.max_depth = max(self.max_depth, len(self._items))
            self._cond.notify()
            return dropped

    def get(self, timeout: float | None = None) -> T:
        """Take the oldest item, waiting up to ``timeout`` seconds (None: forever).

        Raises:
            QueueEmpty: nothing arrived within ``timeout``.
            QueueClosed: the queue is closed and has nothing left to hand out.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                if self._items and not (self._closed and not self._drain):
                    return self._items.popleft()
                if self._closed:
                    raise QueueClosed("queue is closed")
                if deadline is None:
                    self._cond.wait()
                else:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise QueueEmpty("no item within timeout")
                    self._cond.wait(remaining)

    def close(self, drain: bool = True) -> None:
        """Refuse further puts. With ``drain`` the items already queued are still handed out;
        without it, pending and future gets raise :class:`QueueClosed` at once."""
        with self._cond:
            self._closed = True
            self._drain = self._drain and drain
            if not self._drain:
                self._items.clear()
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)
