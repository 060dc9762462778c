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
