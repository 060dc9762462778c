"""The model scheduler: priorities, newest-wins frames, round-robin, isolation, cancellation."""

from __future__ import annotations

import threading
from concurrent.futures import CancelledError

import pytest

from app.serving.scheduler import ALERT, ANSWER, CONTROL, Scheduler, SchedulerClosed


@pytest.fixture
def sched():
    s = Scheduler()
    yield s
    s.shutdown()


def blocked(sched: Scheduler) -> threading.Event:
    """Occupy the worker until the returned event is set."""
    gate, started = threading.Event(), threading.Event()

    def hold():
        started.set()
        gate.wait(30)

    sched.submit(CONTROL, hold)
    assert started.wait(10)
    return gate


def test_priorities_then_round_robin_frames(sched):
    order: list[str] = []
    gate = blocked(sched)
    futures = [sched.submit_frame("a", lambda: order.append("frame-a"))[0],
               sched.submit_frame("b", lambda: order.append("frame-b"))[0],
               sched.submit(ALERT, lambda: order.append("alert")),
               sched.submit(CONTROL, lambda: order.append("text")),
               sched.submit(ANSWER, lambda: order.append("answer")),
               sched.submit_frame("c", lambda: order.append("frame-c"))[0]]
    gate.set()
    for f in futures:
        f.result(10)
    assert order == ["answer", "text", "alert", "frame-a", "frame-b", "frame-c"]
    assert sched.stats()["executed"] == {"answer": 1, "control": 2, "alert": 1, "frame": 3}


def test_newest_frame_wins_and_the_replaced_one_is_counted(sched):
    ran, dropped = [], []
    gate = blocked(sched)
    f1, r1 = sched.submit_frame("s", lambda: ran.append(1), on_drop=lambda: dropped.append(1))
    f2, r2 = sched.submit_frame("s", lambda: ran.append(2), on_drop=lambda: dropped.append(2))
    f3, r3 = sched.submit_frame("s", lambda: ran.append(3))
    assert (r1, r2, r3) == (False, True, True)
    assert f1.cancelled() and f2.cancelled() and dropped == [1, 2]
    gate.set()
    f3.result(10)
    assert ran == [3] and sched.stats()["frames_replaced"] == 2


def test_a_replaced_frame_keeps_its_session_place_in_the_rotation(sched):
    order = []
    gate = blocked(sched)
    sched.submit_frame("a", lambda: order.append("a1"))
    sched.submit_frame("b", lambda: order.append("b1"))
    last, _ = sched.submit_frame("a", lambda: order.append("a2"))
    gate.set()
    last.result(10)
    sched.submit(CONTROL, lambda: None).result(10)
    assert order == ["a2", "b1"]


def test_a_failing_task_fails_alone(sched):
    def boom():
        raise RuntimeError("bad frame")

    bad = sched.submit(CONTROL, boom)
    good = sched.submit(CONTROL, lambda: 42)
    with pytest.raises(RuntimeError, match="bad frame"):
        bad.result(10)
    assert good.result(10) == 42 and sched.stats()["failed"] == 1


def test_cancel_key_coalesce_and_shutdown(sched):
    gate = blocked(sched)
    mine = sched.submit(CONTROL, lambda: "x", key="s1")
    frame, _ = sched.submit_frame("s1", lambda: "f")
    other = sched.submit(CONTROL, lambda: "y", key="s2")
    c1 = sched.submit(ALERT, lambda: "check", key="s2", coalesce=("watch", "s2"))
    c2 = sched.submit(ALERT, lambda: "check", key="s2", coalesce=("watch", "s2"))
    assert c1 is c2 and sched.stats()["coalesced"] == 1
    assert sched.cancel_key("s1") == 2
    assert mine.cancelled() and frame.cancelled()
    gate.set()
    assert other.result(10) == "y" and c1.result(10) == "check"
    gate2 = blocked(sched)
    pending = sched.submit(ANSWER, lambda: "late")
    gate2.set()
    assert sched.shutdown(timeout=10)
    assert pending.done()
    with pytest.raises(SchedulerClosed):
        sched.submit(CONTROL, lambda: None)
    if pending.cancelled():
        with pytest.raises(CancelledError):
            pending.result()


# --------------------------------------------------------------------------- fairness (issue 14, item 4)

def test_sessions_take_turns_within_a_priority(sched):
    order: list[str] = []
    gate = blocked(sched)
    futures = [sched.submit(ANSWER, lambda i=i: order.append(f"flood{i}"), key="flood") for i in range(5)]
    futures.append(sched.submit(ANSWER, lambda: order.append("healthy"), key="healthy"))
    gate.set()
    for f in futures:
        f.result(10)
    # the healthy session's question runs second, not after the whole flood (FIFO within the flood)
    assert order == ["flood0", "healthy", "flood1", "flood2", "flood3", "flood4"]


def test_frames_get_a_turn_during_a_flood_of_higher_priority_work(sched):
    order: list[str] = []
    gate = blocked(sched)
    flood = [sched.submit(ANSWER, lambda i=i: order.append("text"), key="flood") for i in range(20)]
    frame, _ = sched.submit_frame("healthy", lambda: order.append("frame"))
    gate.set()
    frame.result(10)
    for f in flood:
        f.result(10)
    assert order.index("frame") <= sched.share, order


def test_a_long_task_yields_to_other_sessions_between_steps():
    sched = Scheduler(slice_s=0.01)
    try:
        ran: list[str] = []
        other_during: list[bool] = []
        started = threading.Event()

        def long_answer():
            started.set()
            for _ in range(200):
                # one "token"; then let others in
                threading.Event().wait(0.002)
                sched.yield_point()
                if "other" in ran:
                    other_during.append(True)
                    break
            ran.append("long")

        long = sched.submit(ANSWER, long_answer, key="a")
        assert started.wait(10)
        own_frame, _ = sched.submit_frame("a", lambda: ran.append("own-frame"))
        other = sched.submit(ANSWER, lambda: ran.append("other"), key="b")
        other.result(10)
        long.result(10)
        own_frame.result(10)
        assert other_during == [True]
        # the running session's own frame never ran inside its answer (its state is mid-step)
        assert ran == ["other", "long", "own-frame"]
        assert sched.stats()["yielded"] == 1
        assert sched.yield_point() is False  # off the worker it does nothing
    finally:
        sched.shutdown()


def test_the_session_that_used_less_of_the_worker_goes_first():
    sched = Scheduler(burst_weight=1.0)  # plain fair share: every second counts in full
    try:
        _less_used_first(sched)
    finally:
        sched.shutdown()


def _less_used_first(sched):
    import time

    sched.submit(ANSWER, lambda: time.sleep(0.3), key="heavy").result(10)  # heavy has used 0.3 s
    order: list[str] = []
    gate = blocked(sched)
    futures = [sched.submit(ANSWER, lambda: order.append("heavy"), key="heavy"),
               sched.submit(ALERT, lambda: order.append("light"), key="light")]
    gate.set()
    for f in futures:
        f.result(10)
    # the light session's task runs first although the heavy one's was queued first at a higher priority
    assert order == ["light", "heavy"]


def test_short_tasks_are_charged_less_than_long_ones():
    """Least attained service: a session of many short tasks goes ahead of one whose single long task
    used less wall time in all, because only a task's first burst counts at the lower weight."""
    import time

    for weight, first in ((0.1, "short"), (1.0, "long")):
        sched = Scheduler(burst_s=0.05, burst_weight=weight)
        try:
            sched.submit(ANSWER, lambda: time.sleep(0.3), key="long").result(10)
            for _ in range(10):
                sched.submit(ANSWER, lambda: time.sleep(0.04), key="short").result(10)  # 0.4 s in all
            order: list[str] = []
            gate = blocked(sched)
            futures = [sched.submit(ANSWER, lambda o=order: o.append("long"), key="long"),
                       sched.submit(ANSWER, lambda o=order: o.append("short"), key="short")]
            gate.set()
            for f in futures:
                f.result(10)
            assert order[0] == first, (weight, order)
        finally:
            sched.shutdown()


@pytest.mark.parametrize("kw", [{"burst_s": -1}, {"burst_weight": 0}, {"burst_weight": 1.5}, {"burst_s": True}])
def test_bad_burst_settings_are_refused_by_name(kw):
    with pytest.raises(ValueError, match=next(iter(kw))):
        Scheduler(**kw)
