"""The cached copy of a session's state that readers get without waiting for the model, and the
manager's own counters."""

from __future__ import annotations

import threading
import time

from app.engine.types import Alert, SessionError, WatchRule
from app.serving.limits import RateLimiter
from app.serving.session_stats import FPS_WINDOW_S, SessionCounters, SnapshotCache


class FakeSession:
    """The read-only surface of a Session the cache reads; ``gate`` holds the next stats() call."""

    def __init__(self) -> None:
        self.rule_list: list[WatchRule] = []
        self.alert_list: list[Alert] = []
        self.frames = 0
        self.gate: threading.Event | None = None
        self.reading = threading.Event()
        self.closed = False

    def stats(self) -> dict:
        if self.closed:
            raise SessionError("closed")
        frames = self.frames  # read before waiting: this copy is as of now
        gate, self.gate = self.gate, None
        if gate is not None:
            self.reading.set()
            gate.wait(10)
        return {"frames": frames}

    def kept_history(self) -> list[tuple[float, float]]:
        return [(float(i), 0.5) for i in range(self.frames)]

    def rules(self) -> list[WatchRule]:
        return list(self.rule_list)

    def alerts(self) -> list[Alert]:
        return list(self.alert_list)


def test_a_copy_holds_the_sessions_stats_history_rules_and_alerts():
    session, cache = FakeSession(), SnapshotCache(interval_s=60.0)
    assert cache.current is None
    session.frames = 3
    session.rule_list.append(WatchRule("r1", "a dog"))
    session.alert_list.append(Alert("r1", "a dog", 2.0, "yes", 0.0))
    cache.refresh(session, force=True)
    snap = cache.current
    assert snap.stats == {"frames": 3} and len(snap.kept_history) == 3
    assert [r.rule_id for r in snap.rules] == ["r1"] and snap.alerts[0].pts == 2.0
    session.closed = True
    cache.refresh(session, force=True)  # a closed session keeps the last copy
    assert cache.current is snap


def test_refreshes_after_frames_are_throttled_and_caught_up_later():
    session, cache = FakeSession(), SnapshotCache(interval_s=0.2)
    cache.refresh(session, force=True)
    session.frames = 5
    cache.refresh(session)  # too soon after the last copy: skipped, marked stale
    assert cache.current.stats["frames"] == 0
    assert not cache.take_catch_up(time.monotonic())  # not before the interval is over
    time.sleep(0.25)
    assert cache.take_catch_up(time.monotonic()) and not cache.take_catch_up(time.monotonic())  # once
    cache.refresh(session, force=True)
    assert cache.current.stats["frames"] == 5


def test_an_older_copy_never_replaces_a_newer_one():
    """A refresh on the worker that began reading before a change (a frame, a rule) and ends after the
    caller's own refresh must not put its older copy back."""
    session, cache = FakeSession(), SnapshotCache(interval_s=0.0)
    gate = session.gate = threading.Event()
    slow = threading.Thread(target=cache.refresh, args=(session,), kwargs={"force": True})
    slow.start()
    assert session.reading.wait(10)  # the slow refresh has read the stats as of before the change
    session.frames = 1
    session.rule_list.append(WatchRule("r2", "a cat"))
    cache.refresh(session, force=True)  # begun later: its copy is the newer one
    gate.set()
    slow.join(10)
    assert not slow.is_alive()
    assert [r.rule_id for r in cache.current.rules] == ["r2"] and cache.current.stats["frames"] == 1


def test_counters_measure_the_processed_frame_rate_over_a_window():
    counters = SessionCounters()
    now = time.monotonic()
    for i in range(4):
        counters.frame_processed(pts=float(i), lag_s=0.01 * i, now=now - 0.1 * i)
    view = counters.view(now)
    assert view.counts["frames_processed"] == 4 and view.fps == 4 / FPS_WINDOW_S
    assert view.last_pts == 3.0 and view.lag_s == 0.03
    assert counters.view(now + FPS_WINDOW_S + 1).fps == 0.0  # old frames leave the window


def test_the_rate_limiter_allows_one_seconds_worth_then_refills():
    limiter = RateLimiter(2.0)
    assert [limiter.allow() for _ in range(3)] == [True, True, False]
    time.sleep(0.55)
    assert limiter.allow()
