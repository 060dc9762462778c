"""One worker thread runs all model work, by priority.

The model is not re-entrant and torch already uses every core, so every piece of model work of
every session (answers, watch-rule checks, text events, frame encoding and prefill, building a
session's sink) runs on this one thread, one task at a time:

* **control** tasks (:data:`ANSWER`, :data:`CONTROL`, :data:`ALERT`) run in priority order and are
  never dropped (an :data:`ALERT` task may be *coalesced* with a pending one of the same key: the
  pending one evaluates the newest state anyway);
* **frame** tasks come after them. Each session (``key``) holds at most one pending frame: a newer
  frame replaces it (newest wins) and the replaced one is counted as dropped (``backlog``).

Fairness between sessions: within every priority, sessions are served round-robin (FIFO within a
session, so a session's text events stay in order with its questions): a session that queues
hundreds of tasks gets one turn per round like every other. A lower priority is not starved by a
flood of higher ones either: after ``share`` tasks of higher priorities ran while it waited, it gets
the next turn. And a long task yields: :meth:`Scheduler.yield_point`, called by a running task
between steps (an answer calls it between tokens), runs one pending task of *another* session once
the running one has held the worker for ``slice_s``, so other sessions' frames and answers proceed
during a long answer (and during a long text event, whose prefill runs in pieces with a yield point
between them).

Short requests first: a session's account (the worker time the fair share compares) counts the
first ``burst_s`` of each task at ``burst_weight`` and the rest in full (least attained service, as a
multilevel feedback queue), so a session asking short questions is served ahead of sessions busy with
long work (a long answer, a flood of long notes), which still get their share past their burst.

Back-pressure: :meth:`Scheduler.submit` takes a ``limit``: a session that already has that many tasks
of the same ``label`` waiting gets :class:`SchedulerBacklog` instead of a queued task, so one session
cannot queue unbounded work (or memory) however fast it sends.

Accounting: each task carries a ``label`` (what it is: ``"text"``, ``"answer"``, ``"frame"``, ...).
The worker seconds of every label are counted (``stats()["worker_s"]``), and a running task can ask
:meth:`Scheduler.current` how long it was queued, which other sessions' work (by label) ran while
it waited, and how long other sessions' tasks ran inside its own yield points. With the module's
logger at DEBUG, every task that waited longer than a slice is logged with that breakdown.

Futures are :class:`concurrent.futures.Future`; a task's exception goes to its future only.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from dataclasses import dataclass
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


class SchedulerBacklog(RuntimeError):
    """A session already has ``limit`` tasks of this label waiting (``Scheduler.submit(limit=...)``).

    Attributes:
        key, label: whose work, and what kind.
        pending: how many of its tasks of that label wait.
    """

    def __init__(self, key: Hashable, label: str, pending: int) -> None:
        super().__init__(f"{pending} {label} tasks of {key!r} are waiting already")
        self.key, self.label, self.pending = key, label, pending


@dataclass(frozen=True)
class TaskInfo:
    """What the running task's wait looked like (:meth:`Scheduler.current`).

    Attributes:
        key, label, priority: the task's session, kind and priority.
        queued_s: seconds from its submission to its start.
        behind: worker seconds of *other* sessions' work that ran while it was queued, by label
            (what it waited behind; its own session's earlier tasks are in ``own_before_s``).
        own_before_s: worker seconds of its own session's earlier tasks that ran while it was queued.
        started: ``time.monotonic()`` when it started.
        long: it was submitted as known-long work (charged in full from its start).
    """

    key: Hashable
    label: str
    priority: int
    queued_s: float
    behind: dict
    own_before_s: float
    started: float
    long: bool = False


@dataclass
class _Task:
    priority: int
    seq: int
    fn: Callable[[], Any]
    future: Future
    key: Hashable = None
    coalesce: Hashable = None
    label: str = ""
    submitted: float = 0.0
    work_then: tuple = ()  # (worker seconds by label, of this key) when it was submitted
    long: bool = False


@dataclass
class _FrameSlot:
    fn: Callable[[], Any]
    future: Future
    on_drop: Callable[[], None] | None
    label: str = "frame"
    submitted: float = 0.0
    work_then: tuple = ()


@dataclass
class _Running:
    """A task on the worker's stack (the outer one first, then tasks nested in its yield points)."""

    priority: int
    key: Hashable
    started: float
    nested: float = 0.0  # seconds of tasks run inside this one's yield points
    info: TaskInfo | None = None


class _Level:
    """The pending control tasks of one priority: a FIFO per session, sessions in round-robin order."""

    def __init__(self) -> None:
        self.queues: OrderedDict[Hashable, deque[_Task]] = OrderedDict()

    def __len__(self) -> int:
        return sum(len(q) for q in self.queues.values())

    def __bool__(self) -> bool:
        return bool(self.queues)

    def push(self, task: _Task) -> None:
        self.queues.setdefault(task.key, deque()).append(task)

    def pop(self, exclude: frozenset | set = frozenset()) -> _Task | None:
        """The first task of the first session in the rotation not in ``exclude``; that session goes
        to the back of the rotation."""
        key = next((k for k in self.queues if k not in exclude), None)
        return None if key is None else self.pop_key(key)

    def pop_key(self, key: Hashable) -> _Task:
        """The first task of session ``key`` (which has one); the session goes to the back."""
        queue = self.queues[key]
        task = queue.popleft()
        if queue:
            self.queues.move_to_end(key)
        else:
            del self.queues[key]
        return task

    def has(self, exclude: frozenset | set) -> bool:
        return any(key not in exclude for key in self.queues)

    def remove_key(self, key: Hashable) -> list[_Task]:
        return list(self.queues.pop(key, ()))

    def drain(self) -> list[_Task]:
        tasks = [t for q in self.queues.values() for t in q]
        self.queues.clear()
        return tasks

    def count(self, key: Hashable, label: str | None = None) -> int:
        queue = self.queues.get(key, ())
        return len(queue) if label is None else sum(t.label == label for t in queue)


class Scheduler:
    """A fair priority scheduler with one worker thread (see the module docstring).

    Args:
        name: the worker thread's name.
        share: a priority level (frames included) that waits gets a turn after this many tasks of
            higher priorities ran meanwhile. [1, 1000]
        slice_s: how long a running task may hold the worker before :meth:`yield_point` runs another
            session's pending task. (0, 60]
        burst_s, burst_weight: the first ``burst_s`` worker seconds of each task count at
            ``burst_weight`` in its session's account, the rest in full (least attained service, as a
            multilevel feedback queue does): a short request (a question of a few tokens, a frame, a
            short note) goes ahead of sessions busy with long ones (a 1200-token answer, a flood of
            long notes), which are charged in full past their first burst (from their start when
            submitted as ``long``) and still get their share.
            burst_s [0, 3600]; burst_weight (0, 1] (1: plain fair share).
    """

    def __init__(self, name: str = "livesight-model", *, share: int = 4, slice_s: float = 0.1,
                 burst_s: float = 2.0, burst_weight: float = 0.1) -> None:
        if isinstance(share, bool) or not isinstance(share, int) or not 1 <= share <= 1000:
            raise ValueError(f"share must be an integer in [1, 1000]; got {share!r}")
        if isinstance(slice_s, bool) or not isinstance(slice_s, (int, float)) or not 0 < slice_s <= 60:
            raise ValueError(f"slice_s must be a number of seconds in (0, 60]; got {slice_s!r}")
        if isinstance(burst_s, bool) or not isinstance(burst_s, (int, float)) or not 0 <= burst_s <= 3600:
            raise ValueError(f"burst_s must be a number of seconds in [0, 3600]; got {burst_s!r}")
        if (isinstance(burst_weight, bool) or not isinstance(burst_weight, (int, float))
                or not 0 < burst_weight <= 1):
            raise ValueError(f"burst_weight must be a number in (0, 1]; got {burst_weight!r}")
        self.share = share
        self.slice_s = float(slice_s)
        self.burst_s = float(burst_s)
        self.burst_weight = float(burst_weight)
        self._cond = threading.Condition()
        self._levels = {p: _Level() for p in (ANSWER, CONTROL, ALERT)}
        self._skipped = {p: 0 for p in PRIORITY_NAMES}  # tasks of higher priorities run while p waited
        self._coalesce: dict[Hashable, _Task] = {}
        self._frames: OrderedDict[Hashable, _FrameSlot] = OrderedDict()  # order = round-robin order
        self._seq = itertools.count()
        self._closed = False
        self._stack: list[_Running] = []  # running tasks: the outer one, then nested ones
        self._vtime: dict[Hashable, float] = {}  # worker seconds each session has used (its own tasks only)
        self._work: dict[str, float] = {}  # worker seconds by label, every session (own time of each task)
        self._slice_t0 = 0.0
        self._own: dict[Hashable, dict[str, float]] = {}  # worker seconds of each session's tasks, by label
        self._counters = {"executed": {n: 0 for n in PRIORITY_NAMES.values()}, "frames_replaced": 0, "coalesced": 0,
                          "failed": 0, "cancelled": 0, "yielded": 0, "refused": 0}
        self._busy_s = 0.0
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # ---- submission -------------------------------------------------------------------------------
    def submit(self, priority: int, fn: Callable[[], Any], *, key: Hashable = None, coalesce: Hashable = None,
               label: str | None = None, limit: int | None = None, long: bool = False) -> Future:
        """Queue control work (never dropped) and return its future.

        Args:
            priority: :data:`ANSWER`, :data:`CONTROL` or :data:`ALERT`.
            fn: the work; its return value (or exception) completes the future.
            key: the session the work belongs to (round-robin between keys; :meth:`cancel_key`).
            coalesce: when a task with the same ``coalesce`` key is still pending, return its future
                instead of queueing another.
            label: what the work is, for the accounting (default: the priority's name).
            limit: refuse the task when session ``key`` already has this many tasks of ``label``
                waiting (back-pressure; None: no limit).
            long: the work is known to be long (a long answer, a long note): it is charged in full
                from its start, without the discount of a short request's first burst.

        Raises:
            SchedulerClosed: after :meth:`shutdown`.
            SchedulerBacklog: ``limit`` tasks of ``label`` of ``key`` are waiting already.
            ValueError: an unknown priority.
        """
        if priority not in (ANSWER, CONTROL, ALERT):
            raise ValueError(f"priority must be ANSWER, CONTROL or ALERT ({ANSWER}, {CONTROL}, {ALERT}); got {priority!r}")
        label = PRIORITY_NAMES[priority] if label is None else str(label)
        with self._cond:
            if self._closed:
                raise SchedulerClosed("the model scheduler is shut down")
            if coalesce is not None:
                pending = self._coalesce.get(coalesce)
                if pending is not None and not pending.future.done():
                    self._counters["coalesced"] += 1
                    return pending.future
            if limit is not None:
                waiting = sum(level.count(key, label) for level in self._levels.values())
                if waiting >= limit:
                    self._counters["refused"] += 1
                    raise SchedulerBacklog(key, label, waiting)
            now = time.monotonic()
            task = _Task(priority, next(self._seq), fn, Future(), key, coalesce, label, now, self._work_now(key, now),
                         bool(long))
            self._join(key)
            self._levels[priority].push(task)
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
            now = time.monotonic()
            slot = _FrameSlot(fn, Future(), on_drop, "frame", now, self._work_now(key, now))
            self._join(key)
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
            dropped = [t for level in self._levels.values() for t in level.remove_key(key)]
            for task in dropped:
                if task.coalesce is not None and self._coalesce.get(task.coalesce) is task:
                    del self._coalesce[task.coalesce]
            slot = self._frames.pop(key, None)
            if not any(r.key == key for r in self._stack):
                self._vtime.pop(key, None)  # a closed session's account goes with it
                self._own.pop(key, None)
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
            out = {PRIORITY_NAMES[p]: (len(level) if key is None else level.count(key))
                   for p, level in self._levels.items()}
            out["frame"] = len(self._frames) if key is None else int(key in self._frames)
            return out

    def queued(self, key: Hashable, label: str | None = None) -> int:
        """Tasks of session ``key`` waiting (of ``label`` only when given; a pending frame counts as ``"frame"``)."""
        with self._cond:
            n = sum(level.count(key, label) for level in self._levels.values())
            if key in self._frames and label in (None, "frame"):
                n += 1
            return n

    def current(self) -> TaskInfo | None:
        """The running task's :class:`TaskInfo` (on the worker; None elsewhere or when none runs)."""
        if not self.in_worker():
            return None
        with self._cond:
            return self._stack[-1].info if self._stack else None

    def nested_s(self) -> float:
        """Seconds other sessions' tasks have run inside the running task's yield points so far (on
        the worker; 0 elsewhere)."""
        if not self.in_worker():
            return 0.0
        with self._cond:
            return self._stack[-1].nested if self._stack else 0.0

    def stats(self) -> dict[str, Any]:
        """Counters: executed tasks by kind, replaced frames, coalesced alert checks, failures,
        yields of long tasks to other sessions, tasks refused by a ``limit`` (``refused``), worker
        seconds by label (``worker_s``), pending work, what runs now (``running``: its priority,
        ``running_label``: its label) and the worker's busy fraction."""
        with self._cond:
            elapsed = max(1e-9, time.monotonic() - self._t0)
            return {
                "executed": dict(self._counters["executed"]),
                "frames_replaced": self._counters["frames_replaced"],
                "coalesced": self._counters["coalesced"],
                "failed": self._counters["failed"],
                "cancelled": self._counters["cancelled"],
                "yielded": self._counters["yielded"],
                "refused": self._counters["refused"],
                "worker_s": {label: round(s, 3) for label, s in sorted(self._work.items())},
                "pending": self.pending(),
                "running": None if not self._stack else PRIORITY_NAMES[self._stack[-1].priority],
                "running_label": None if not self._stack or self._stack[-1].info is None else self._stack[-1].info.label,
                "busy_fraction": round(min(1.0, self._busy_s / elapsed), 4),
            }

    @property
    def closed(self) -> bool:
        return self._closed

    def idle(self) -> bool:
        """True when nothing runs and nothing waits (a snapshot)."""
        with self._cond:
            return not self._stack and not any(self._levels.values()) and not self._frames

    def in_worker(self) -> bool:
        """True when called from the worker thread (waiting on a future there would deadlock)."""
        return threading.current_thread() is self._thread

    # ---- worker -----------------------------------------------------------------------------------
    def _pick(self, exclude: frozenset | set = frozenset(), *,
              below: float | None = None) -> tuple[int, Hashable, Callable[[], Any], Future, TaskInfo] | None:
        """The next task (caller holds ``_cond``).

        Sessions are served by the worker time they have used (least first, as a fair-share
        scheduler does): only sessions within ``slice_s`` of the least-used waiting one are eligible,
        so a session that floods the worker waits while a light one is served at once. Among the
        eligible, the highest waiting priority runs, unless a lower one has waited ``share`` turns;
        within a priority the eligible session that used least runs (ties: round-robin order).
        ``exclude``: sessions that may not run now (their task is running). ``below``: only sessions
        that used less than this may run (a yield point's running session's time)."""
        candidates: dict[Hashable, int] = {}
        for p in (ANSWER, CONTROL, ALERT):
            for k in self._levels[p].queues:
                if k not in exclude and k not in candidates:
                    candidates[k] = p
        for k in self._frames:
            if k not in exclude and k not in candidates:
                candidates[k] = FRAME
        if not candidates:
            return None
        vmin = min(self._vtime.get(k, 0.0) for k in candidates)
        if below is not None and vmin >= below:
            return None
        eligible = {k for k in candidates if self._vtime.get(k, 0.0) <= vmin + self.slice_s}
        waiting = [p for p in (ANSWER, CONTROL, ALERT) if self._levels[p].has(exclude | (candidates.keys() - eligible))]
        if any(k in eligible for k in self._frames):
            waiting.append(FRAME)
        starved = [p for p in waiting if self._skipped[p] >= self.share]
        chosen = starved[-1] if starved else waiting[0]  # the lowest starved level: it waited behind all others
        for p in waiting:
            self._skipped[p] = 0 if p == chosen else self._skipped[p] + (p > chosen)
        keys = self._frames if chosen == FRAME else self._levels[chosen].queues
        key = min((k for k in keys if k in eligible), key=lambda k: self._vtime.get(k, 0.0))
        if chosen == FRAME:
            slot = self._frames.pop(key)
            return FRAME, key, slot.fn, slot.future, self._info(FRAME, key, slot)
        task = self._levels[chosen].pop_key(key)
        if task.coalesce is not None and self._coalesce.get(task.coalesce) is task:
            del self._coalesce[task.coalesce]
        return task.priority, task.key, task.fn, task.future, self._info(task.priority, task.key, task)

    def _work_now(self, key: Hashable, now: float) -> tuple[dict[str, float], dict[str, float]]:
        """(worker seconds by label of every session, of session ``key``), the running tasks' time
        so far included (caller holds ``_cond``)."""
        work = dict(self._work)
        own = dict(self._own.get(key, {}))
        for r, spent in zip(self._stack, self._running_own(now)):
            if r.info is None:
                continue
            work[r.info.label] = work.get(r.info.label, 0.0) + spent
            if r.key == key:
                own[r.info.label] = own.get(r.info.label, 0.0) + spent
        return work, own

    def _info(self, priority: int, key: Hashable, item: _Task | _FrameSlot) -> TaskInfo:
        """The picked task's wait: how long, and whose work ran meanwhile (caller holds ``_cond``)."""
        now = time.monotonic()
        then_work, then_own = item.work_then or ({}, {})
        work, own = self._work_now(key, now)
        own_diff = {label: s - then_own.get(label, 0.0) for label, s in own.items()}
        behind = {}
        for label, s in work.items():
            others = s - then_work.get(label, 0.0) - own_diff.get(label, 0.0)
            if others > 1e-4:
                behind[label] = round(others, 4)
        own_before = round(max(0.0, sum(own_diff.values())), 4)
        return TaskInfo(key, item.label, priority, now - item.submitted, behind, own_before, now,
                        bool(getattr(item, "long", False)))

    def _account(self, key: Hashable, label: str, seconds: float, long: bool = False) -> None:
        """Count ``seconds`` of worker time of ``key``'s ``label`` work (caller holds ``_cond``)."""
        self._vtime[key] = self._vtime.get(key, 0.0) + self._charge(seconds, long)
        self._work[label] = self._work.get(label, 0.0) + seconds
        own = self._own.setdefault(key, {})
        own[label] = own.get(label, 0.0) + seconds

    def _running_own(self, now: float) -> list[float]:
        """Each running task's own time so far: its time minus the tasks nested in its yield points,
        finished ones and the one running now (caller holds ``_cond``)."""
        own = []
        for i, r in enumerate(self._stack):
            child = self._stack[i + 1].started if i + 1 < len(self._stack) else now
            own.append(max(0.0, child - r.started - r.nested))
        return own

    def _charge(self, own: float, long: bool = False) -> float:
        """What ``own`` worker seconds of one task count in its session's account: the first
        ``burst_s`` at ``burst_weight``, the rest in full; all of it for a task submitted as ``long``
        (see the class docstring)."""
        if long:
            return own
        burst = min(own, self.burst_s)
        return self.burst_weight * burst + (own - burst)

    def _used(self, key: Hashable) -> float:
        """Worker time session ``key`` has used (as charged), including its running task's time so far."""
        used = self._vtime.get(key, 0.0)
        for r, spent in zip(self._stack, self._running_own(time.monotonic())):
            if r.key == key:
                used += self._charge(spent, r.info is not None and r.info.long)
        return used

    def _join(self, key: Hashable) -> None:
        """A session with nothing pending or running becomes runnable: it starts level with the
        least-used active session (a session returning after a pause, or reconnecting, gets no hoard
        of credit, and a new one is not put behind sessions that used more). Caller holds ``_cond``."""
        active = set(self._frames) | {k for level in self._levels.values() for k in level.queues}
        active |= {r.key for r in self._stack}
        if key in active:
            return
        active.discard(key)
        if active:  # level with the least-used active session (as a fair-share scheduler's minimum)
            floor = min(self._used(k) for k in active)
            self._vtime[key] = max(self._vtime.get(key, 0.0), floor - self.slice_s)

    def _push(self, item: tuple) -> None:
        """Put a picked task on the stack (caller holds ``_cond``)."""
        priority, key, _fn, _future, info = item
        self._stack.append(_Running(priority, key, time.monotonic(), 0.0, info))

    def _next(self) -> tuple | None:
        with self._cond:
            while True:
                item = self._pick()
                if item is not None:
                    self._push(item)
                    return item
                if self._closed:
                    return None
                self._cond.wait()

    def _execute(self, priority: int, key: Hashable, fn: Callable[[], Any], future: Future, info: TaskInfo) -> None:
        """Run one picked task (already on ``_stack``) and complete its future."""
        if not future.set_running_or_notify_cancel():
            with self._cond:
                self._stack.pop()
            return
        t0 = self._stack[-1].started = time.monotonic()
        try:
            result = fn()
        except BaseException as exc:  # noqa: BLE001 - the failure belongs to this task alone
            with self._cond:
                self._counters["failed"] += 1
            logger.debug("scheduler task (%s, %r) failed: %s", info.label, key, exc)
            future.set_exception(exc)
        else:
            future.set_result(result)
        finally:
            with self._cond:
                nested = self._stack.pop().nested
                elapsed = time.monotonic() - t0
                self._account(key, info.label, max(0.0, elapsed - nested), info.long)
                if self._stack:
                    self._stack[-1].nested += elapsed  # the outer task's own time excludes this one
                else:
                    self._busy_s += elapsed
                self._counters["executed"][PRIORITY_NAMES[priority]] += 1
            if info.queued_s > self.slice_s and logger.isEnabledFor(logging.DEBUG):
                logger.debug("%s of %r queued %.3f s (behind other sessions' %s; its own earlier work %.3f s), "
                             "ran %.3f s (%.3f s of it other sessions' work in its yield points)", info.label, key,
                             info.queued_s, _seconds(info.behind), info.own_before_s, elapsed, nested)

    def yield_point(self) -> bool:
        """Called by a running task between its steps (on the worker; elsewhere it does nothing):
        once the running task has held the worker for ``slice_s``, run the pending tasks of other
        sessions that have used less worker time than the running one, one after another while
        that holds (never one of a session whose task is running: its state is mid-step), then
        start a new slice.

        Returns:
            True when another task ran.
        """
        if not self.in_worker():
            return False
        ran = False
        with self._cond:
            if not self._stack or time.monotonic() - self._slice_t0 < self.slice_s:
                return False
        while True:
            now = time.monotonic()
            with self._cond:
                if self._closed:
                    break
                running = self._stack[-1].key
                # only a session that has used less of the worker than the running one gets in, and
                # it goes on (its question, then its frame) while it still has used less
                item = self._pick(exclude={r.key for r in self._stack}, below=self._used(running))
                if item is None:
                    break
                self._push(item)
                self._counters["yielded"] += 1
                self._slice_t0 = now  # the nested task gets a slice of its own before it yields in turn
            self._execute(*item)
            ran = True
        self._slice_t0 = time.monotonic()
        return ran

    def _run(self) -> None:
        while True:
            item = self._next()
            if item is None:
                return
            self._slice_t0 = time.monotonic()
            self._execute(*item)

    def shutdown(self, timeout: float | None = 10.0) -> bool:
        """Stop taking work, cancel everything pending and wait ``timeout`` s for the running task.

        Returns:
            True when the worker thread has ended.
        """
        with self._cond:
            self._closed = True
            tasks = [t for level in self._levels.values() for t in level.drain()]
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


def _seconds(by_label: dict) -> str:
    """``{"text": 1.2, "answer": 0.3}`` -> ``"text 1.200 s, answer 0.300 s"`` (largest first; "nothing" when empty)."""
    if not by_label:
        return "nothing"
    return ", ".join(f"{label} {s:.3f} s" for label, s in sorted(by_label.items(), key=lambda kv: -kv[1]))


def _safe(fn: Callable[[], None]) -> None:
    try:
        fn()
    except Exception:  # a callback's failure must not break the scheduler
        logger.exception("scheduler callback failed")
