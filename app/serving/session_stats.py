"""A session's statistics as the manager reports them, without ever waiting for the model.

Three parts meet here:

* :class:`SessionCounters`: what the manager itself counts for a session (frames submitted,
  accepted, processed and dropped, texts, answers, watch checks, the processed-frame rate);
* :class:`SnapshotCache`: the last copy of the session's own state (its ``stats()``, kept-ratio
  history, watch rules and alerts), taken after model work so that readers never take the
  session's lock, which a model step holds for its whole length;
* :func:`compose_stats`: the stats dict of :meth:`~app.serving.manager.SessionManager.stats`.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from app.engine.types import Alert, SessionError, WatchRule

__all__ = ["FPS_WINDOW_S", "CountersView", "SessionCounters", "SessionSnapshot", "SnapshotCache", "compose_stats"]

#: Seconds over which the processed-frame rate is measured.
FPS_WINDOW_S = 2.0
#: Kept-ratio points a snapshot holds (the newest).
KEPT_HISTORY_POINTS = 2000
#: Alerts a snapshot holds (the newest).
ALERTS_KEPT = 200

_COUNTS = ("frames_submitted", "frames_accepted", "frames_processed", "frame_errors", "texts", "text_errors",
           "answers", "answer_errors", "watch_checks", "alerts", "speech_segments", "speech_errors")


@dataclass(frozen=True)
class CountersView:
    """A consistent copy of :class:`SessionCounters` (see there for the names)."""

    counts: dict[str, int]
    dropped: dict[str, int]
    fps: float
    lag_s: float
    last_pts: float | None


class SessionCounters:
    """What the manager counts for one session. Not thread-safe: the manager holds the session
    record's lock around every call.

    Attributes:
        counts: ``frames_submitted``, ``frames_accepted``, ``frames_processed``, ``frame_errors``,
            ``texts``, ``text_errors``, ``answers``, ``answer_errors``, ``watch_checks``, ``alerts``,
            ``speech_segments`` (heard segments prefilled), ``speech_errors``.
        dropped: frames dropped before the model, by reason: ``rate_limit`` (over ``max_fps``) and
            ``backlog`` (replaced by a newer frame while waiting).
        lag_s: processing start minus arrival of the last processed frame.
        last_pts: stream time of the last processed frame.
    """

    def __init__(self) -> None:
        self.counts = dict.fromkeys(_COUNTS, 0)
        self.dropped = {"rate_limit": 0, "backlog": 0}
        self.lag_s = 0.0
        self.last_pts: float | None = None
        self._processed_at: deque[float] = deque()  # monotonic times of recently processed frames

    def frame_processed(self, pts: float, lag_s: float, now: float) -> None:
        """Count a processed frame (``now``: ``time.monotonic()``)."""
        self.counts["frames_processed"] += 1
        self.lag_s = lag_s
        self.last_pts = pts
        self._processed_at.append(now)
        self._prune(now)

    def _prune(self, now: float) -> None:
        while self._processed_at and self._processed_at[0] < now - FPS_WINDOW_S:
            self._processed_at.popleft()

    def view(self, now: float) -> CountersView:
        """The counters now, with ``fps`` = frames processed per second over the last
        :data:`FPS_WINDOW_S` seconds."""
        self._prune(now)
        return CountersView(dict(self.counts), dict(self.dropped), len(self._processed_at) / FPS_WINDOW_S,
                            self.lag_s, self.last_pts)


@dataclass(frozen=True)
class SessionSnapshot:
    """A copy of a session's own state, read from the :class:`~app.engine.session.Session`.

    Attributes:
        stats: ``Session.stats()``.
        kept_history: the newest :data:`KEPT_HISTORY_POINTS` ``(pts, kept_ratio)`` points.
        rules: the session's watch rules, oldest first.
        alerts: the newest :data:`ALERTS_KEPT` alerts, oldest first.
    """

    stats: dict[str, Any]
    kept_history: tuple[tuple[float, float], ...]
    rules: tuple[WatchRule, ...]
    alerts: tuple[Alert, ...]


class SnapshotCache:
    """The latest :class:`SessionSnapshot` of one session (thread-safe).

    After a frame the copy is refreshed at most every ``interval_s`` (a refresh skipped that way
    marks the cache stale, and :meth:`take_catch_up` tells the housekeeper to refresh it later);
    after a question, a text event, a watch check or a rule change it is refreshed at once
    (``force``). Refreshes can run on different threads: the copy whose reading began last wins, so
    an older copy never replaces a newer one.
    """

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._lock = threading.Lock()
        self._current: SessionSnapshot | None = None
        self._at = 0.0  # monotonic time the current copy was read
        self._stale = False
        self._begun = 0  # refreshes begun
        self._written = 0  # number of the refresh whose copy is current

    @property
    def current(self) -> SessionSnapshot | None:
        """The latest copy, or None before the session was built."""
        return self._current

    def refresh(self, session, *, force: bool = False) -> None:
        """Copy ``session``'s state (unless throttled; ``force`` skips the throttle).

        Call it where waiting for the session's lock is fine: on the model worker, or after the
        caller already waited for the session (a watch rule change)."""
        now = time.monotonic()
        with self._lock:
            if not force and now - self._at < self.interval_s:
                self._stale = True
                return
            self._begun += 1
            number = self._begun
        try:
            snapshot = SessionSnapshot(
                stats=session.stats(),
                kept_history=tuple(session.kept_history()[-KEPT_HISTORY_POINTS:]),
                rules=tuple(session.rules()),
                alerts=tuple(session.alerts()[-ALERTS_KEPT:]),
            )
        except SessionError:  # closed meanwhile: keep the last copy
            return
        with self._lock:
            if number > self._written:
                self._current, self._at, self._written = snapshot, now, number
                self._stale = False

    def take_catch_up(self, now: float) -> bool:
        """True (once) when frames were left out of the copy and the throttle allows a refresh now."""
        with self._lock:
            if self._stale and now - self._at >= self.interval_s:
                self._stale = False
                return True
            return False


def compose_stats(sid: str, counters: CountersView, snapshot: SessionSnapshot | None, source, *,
                  answering: bool, scheduler, audio: dict[str, Any] | None = None) -> dict[str, Any]:
    """The stats dict of one session (see :meth:`~app.serving.manager.SessionManager.stats`).

    Args:
        source: the session's :class:`~app.serving.source_runner.SourceRunner`, or None.
        scheduler: the manager's :class:`~app.serving.scheduler.Scheduler`.
        audio: the session's audio stats (:meth:`~app.serving.session_audio.SessionAudio.stats`), or
            None with speech off.
    """
    dropped = dict(counters.dropped)
    progress = None
    if source is not None:
        progress = source.progress()
        progress["ingest"] = source.ingest_stats()
        dropped["source"] = progress["ingest"]["dropped"]
    else:
        dropped["source"] = 0
    c = counters.counts
    sched = scheduler.stats()
    return {
        "session_id": sid,
        **(snapshot.stats if snapshot is not None else {}),
        "ingest": {
            "frames_submitted": c["frames_submitted"],
            "frames_accepted": c["frames_accepted"],
            "frames_processed": c["frames_processed"],
            "frame_errors": c["frame_errors"],
            "fps": round(counters.fps, 3),
            "lag_s": round(counters.lag_s, 4),
            "last_pts": counters.last_pts,
            "dropped": dropped,
            "dropped_total": sum(dropped.values()),
        },
        "texts": c["texts"],
        "audio": {"speech": audio is not None, **(audio or {}),
                  "source": source.audio_stats() if source is not None else None},
        "answers": c["answers"],
        "answering": answering,
        "watch": {"rules": len(snapshot.rules) if snapshot is not None else 0, "checks": c["watch_checks"],
                  "alerts": c["alerts"]},
        "source": progress,
        "scheduler": {"pending": scheduler.pending(sid), "busy_fraction": sched["busy_fraction"],
                      "running": sched["running"]},
    }
