"""One worker thread runs all model work, by priority.

The model is not re-entrant and torch already uses every core, so every piece of model work of
every session (answers, watch-rule checks, text events, frame encoding and prefill, building a
session's sink) runs on this one thread, one task at a time:

* **control** tasks (:data:`ANSWER`, :data:`CONTROL`, :data:`ALERT`) run in priority order, FIFO
  within a priority, and are never dropped (an :data:`ALERT` task may be *coalesced* with a pending
  one of the same key: the pending one evaluates the newest state anyway);
* **frame** tasks run only when no control task waits. Each session (``key``) holds at most one
  pending frame: a newer frame replaces it (newest wins) and the replaced one is counted as dropped
  (``backlog``). Sessions with pending frames are served round-robin.

Futures are :class:`concurrent.futures.Future`; a task's exception goes to its future only.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

#: Priorities (lower runs first). Frames come after all of them.
ANSWER = 0
CONTROL = 1
ALERT = 2
FRAME = 3

PRIORITY_NAMES = {ANSWER: "answer", CONTROL: "control", ALERT: "alert", FRAME: "frame"}


class SchedulerClosed(RuntimeError):
    """The scheduler was shut down; it takes no more work."""


@dataclass(order=True)
class _Task:
    priority: int
    seq: int
    fn: Callable[[], Any] = field(compare=False)
    future: Future = field(compare=False)
    key: Hashable = field(compare=False, default=None)
    coalesce: Hashable = field(compare=False, default=None)


@dataclass
class _FrameSlot:
    fn: Callable[[], Any]
    future: Future
    on_drop: Callable[[], None] | None


class Scheduler:
    """A priority scheduler with one worker thread (see the module docstring).

    Args:
        name: the worker thread's name.
    """

    def __init__(self, name: str = "livesight-model") -> None:
        self._cond = threading.Condition()
        self._heap: list[_Task] = []
        self._coalesce: dict[Hashable, _Task] = {}
        self._frames: OrderedDict[Hashable, _FrameSlot] = OrderedDict()  # order = round-robin order
        self._seq = itertools.count()
        self._closed = False
        self._running: tuple[int, Hashable] | None = None
        self._counters = {"executed": {n: 0 for n in PRIORITY_NAMES.values()}, "frames_replaced": 0, "coalesced": 0,
                          "failed": 0, "cancelled": 0}
        self._busy_s = 0.0
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # ---- submission -------------------------------------------------------------------------------
    def submit(self, priority: int, fn: Callable[[], Any], *, key: Hashable = None, coalesce: Hashable = None) -> Future:
        """Queue control work (never dropped) and return its future.

        Args:
            priority: :data:`ANSWER`, :data:`CONTROL` or :data:`ALERT`.
            fn: the work; its return value (or exception) completes the future.
            key: the session the work belongs to (for :meth:`cancel_key`).
            coalesce: when a task with the same ``coalesce`` key is still pending, return its future
                instead of queueing another.

        Raises:
            SchedulerClosed: after :meth:`shutdown`.
            ValueError: an unknown priority.
        """
        if priority not in (ANSWER, CONTROL, ALERT):
            raise ValueError(f"priority must be ANSWER, CONTROL or ALERT ({ANSWER}, {CONTROL}, {ALERT}); got {priority!r}")
        with self._cond:
            if self._closed:
                raise SchedulerClosed("the model scheduler is shut down")
            if coalesce is not None:
                pending = self._coalesce.get(coalesce)
                if pending is not None and not pending.future.done():
                    self._counters["coalesced"] += 1
                    return pending.future
            task = _Task(priority, next(self._seq), fn, Future(), key, coalesce)
            heapq.heappush(self._heap, task)
            if coalesce is not None:
                self._coalesce[coalesce] = task
            self._cond.notify()
            return task.future

    def submit_frame(self, key: Hashable, fn: Callable[[], Any], *,
                     on_drop: Callable[[], None] | None = None) -> tuple[Future, bool]:
        """Queue frame work for session ``key``; a pending frame of that session is replaced.

        Returns:
            ``(future, replaced)``: ``replaced`` is True when an older pending frame was dropped
            (its future is cancelled and its ``on_drop`` called).

        Raises:
            SchedulerClosed: after :meth:`shutdown`.
        """
        with self._cond:
            if self._closed:
                raise SchedulerClosed("the model scheduler is shut down")
            slot = _FrameSlot(fn, Future(), on_drop)
            old = self._frames.get(key)
            self._frames[key] = slot  # replacing keeps the session's place in the round-robin order
            if old is not None:
                self._counters["frames_replaced"] += 1
            self._cond.notify()
        if old is not None:
            old.future.cancel()
            if old.on_drop is not None:
                _safe(old.on_drop)
        return slot.future, old is not None

    def cancel_key(self, key: Hashable) -> int:
        """Cancel every pending task of session ``key`` (the running one is not touched).

        Returns:
            how many pending tasks were cancelled.
        """
        with self._cond:
            keep, dropped = [], []
            for task in self._heap:
                (dropped if task.key == key else keep).append(task)
            if dropped:
                self._heap = keep
                heapq.heapify(self._heap)
                for task in dropped:
                    if task.coalesce is not None and self._coalesce.get(task.coalesce) is task:
                        del self._coalesce[task.coalesce]
            slot = self._frames.pop(key, None)
            self._counters["cancelled"] += len(dropped) + (slot is not None)
        for task in dropped:
            task.future.cancel()
        if slot is not None:
            slot.future.cancel()
        return len(dropped) + (slot is not None)

    # ---- introspection ----------------------------------------------------------------------------
    def pending(self, key: Hashable = None) -> dict[str, int]:
        """Pending tasks by kind (of one session when ``key`` is given)."""
        with self._cond:
            out = {n: 0 for n in PRIORITY_NAMES.values()}
            for task in self._heap:
                if key is None or task.key == key:
                    out[PRIORITY_NAMES[task.priority]] += 1
            out["frame"] = len(self._frames) if key is None else int(key in self._frames)
            return out

    def stats(self) -> dict[str, Any]:
        """Counters: executed tasks by kind, replaced frames, coalesced alert checks, failures,
        pending work, and the worker's busy fraction since start."""
        with self._cond:
            elapsed = max(1e-9, time.monotonic() - self._t0)
            return {
                "executed": dict(self._counters["executed"]),
                "frames_replaced": self._counters["frames_replaced"],
                "coalesced": self._counters["coalesced"],
                "failed": self._counters["failed"],
                "cancelled": self._counters["cancelled"],
                "pending": self.pending(),
                "running": None if self._running is None else PRIORITY_NAMES[self._running[0]],
                "busy_fraction": round(min(1.0, self._busy_s / elapsed), 4),
            }

    @property
    def closed(self) -> bool:
        return self._closed

    def idle(self) -> bool:
        """True when nothing runs and nothing waits (a snapshot)."""
        with self._cond:
            return self._running is None and not self._heap and not self._frames

    def in_worker(self) -> bool:
        """True when called from the worker thread (waiting on a future there would deadlock)."""
        return threading.current_thread() is self._thread

    # ---- worker -----------------------------------------------------------------------------------
    def _next(self) -> tuple[int, Hashable, Callable[[], Any], Future] | None:
        with self._cond:
            while True:
                if self._heap:
                    task = heapq.heappop(self._heap)
                    if task.coalesce is not None and self._coalesce.get(task.coalesce) is task:
                        del self._coalesce[task.coalesce]
                    self._running = (task.priority, task.key)
                    return task.priority, task.key, task.fn, task.future
                if self._frames:
                    key, slot = self._frames.popitem(last=False)  # the longest-waiting session first
                    self._running = (FRAME, key)
                    return FRAME, key, slot.fn, slot.future
                if self._closed:
                    return None
                self._cond.wait()

    def _run(self) -> None:
        while True:
            item = self._next()
            if item is None:
                return
            priority, key, fn, future = item
            if not future.set_running_or_notify_cancel():
                with self._cond:
                    self._running = None
                continue
            t0 = time.monotonic()
            try:
                result = fn()
            except BaseException as exc:  # noqa: BLE001 - the failure belongs to this task alone
                with self._cond:
                    self._counters["failed"] += 1
                logger.debug("scheduler task (%s, %r) failed: %s", PRIORITY_NAMES[priority], key, exc)
                future.set_exception(exc)
            else:
                future.set_result(result)
            finally:
                with self._cond:
                    self._running = None
                    self._busy_s += time.monotonic() - t0
                    self._counters["executed"][PRIORITY_NAMES[priority]] += 1

    def shutdown(self, timeout: float | None = 10.0) -> bool:
        """Stop taking work, cancel everything pending and wait ``timeout`` s for the running task.

        Returns:
            True when the worker thread has ended.
        """
        with self._cond:
            self._closed = True
            tasks, self._heap = self._heap, []
            slots = list(self._frames.values())
            self._frames.clear()
            self._coalesce.clear()
            self._cond.notify_all()
        for task in tasks:
            task.future.cancel()
        for slot in slots:
            slot.future.cancel()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)
        return not self._thread.is_alive()


def _safe(fn: Callable[[], None]) -> None:
    try:
        fn()
    except Exception:  # a callback's failure must not break the scheduler
        logger.exception("scheduler callback failed")
