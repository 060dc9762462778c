"""The scheduler's back-pressure (a per-session limit of waiting tasks of one kind) and its
accounting (how long a task was queued, behind whose work, and worker seconds by label)."""

from __future__ import annotations

import threading
import time

import pytest

from app.serving.scheduler import ANSWER, CONTROL, Scheduler, SchedulerBacklog


@pytest.fixture
def sched():
    s = Scheduler()
    yield s
    s.shutdown()


def hold(sched: Scheduler, key: str = "holder") -> threading.Event:
    gate, started = threading.Event(), threading.Event()

    def run():
        started.set()
        gate.wait(30)

    sched.submit(CONTROL, run, key=key, label="hold")
    assert started.wait(10)
    return gate


def test_a_session_cannot_queue_more_than_its_limit_of_one_kind(sched):
    gate = hold(sched)
    queued = [sched.submit(ANSWER, lambda i=i: i, key="flood", label="text", limit=3) for i in range(3)]
    with pytest.raises(SchedulerBacklog) as refused:
        sched.submit(ANSWER, lambda: None, key="flood", label="text", limit=3)
    assert (refused.value.key, refused.value.label, refused.value.pending) == ("flood", "text", 3)
    # other kinds of the same session and other sessions are not limited by it
    question = sched.submit(ANSWER, lambda: "q", key="flood", label="answer", limit=3)
    other = sched.submit(ANSWER, lambda: "other", key="healthy", label="text", limit=3)
    assert sched.queued("flood", "text") == 3 and sched.queued("flood") == 4
    gate.set()
    assert [f.result(10) for f in queued] == [0, 1, 2]
    assert question.result(10) == "q" and other.result(10) == "other"
    # once the queue drained, the session may queue again
    assert sched.submit(ANSWER, lambda: "again", key="flood", label="text", limit=3).result(10) == "again"
    assert sched.stats()["refused"] == 1


def test_a_task_knows_how_long_it_waited_and_behind_whose_work(sched):
    infos = {}

    def long_text():
        time.sleep(0.3)

    def record(name):
        infos[name] = sched.current()
        return name

    gate = hold(sched)
    sched.submit(ANSWER, long_text, key="flood", label="text")
    sched.submit(ANSWER, lambda: time.sleep(0.1), key="healthy", label="frame-ish")
    question = sched.submit(ANSWER, lambda: record("q"), key="healthy", label="answer")
    time.sleep(0.05)  # the holder keeps the worker a while after they were queued
    gate.set()
    assert question.result(10) == "q"
    info = infos["q"]
    assert (info.key, info.label, info.priority) == ("healthy", "answer", ANSWER)
    # it waited behind the holder and the flood's text (other sessions), and its own earlier task
    assert info.queued_s >= 0.05 + 0.3 + 0.1
    assert info.behind["text"] >= 0.3 and "hold" in info.behind
    assert "frame-ish" not in info.behind and info.own_before_s >= 0.1
    worker = sched.stats()["worker_s"]
    assert worker["text"] >= 0.3 and worker["frame-ish"] >= 0.1
    assert sched.current() is None and sched.nested_s() == 0.0  # off the worker


def test_other_sessions_work_in_a_yield_point_is_counted_as_nested():
    sched = Scheduler(slice_s=0.01)
    try:
        seen = {}
        started = threading.Event()

        def long_answer():
            started.set()
            while "other" not in seen:
                time.sleep(0.005)
                sched.yield_point()
            seen["nested"] = sched.nested_s()

        long = sched.submit(ANSWER, long_answer, key="a", label="answer")
        assert started.wait(10)
        sched.submit(ANSWER, lambda: (time.sleep(0.05), seen.setdefault("other", sched.current())), key="b",
                     label="text").result(10)
        long.result(10)
        assert seen["other"].key == "b" and seen["nested"] >= 0.05
        assert sched.stats()["running_label"] is None
    finally:
        sched.shutdown()


def test_work_submitted_as_long_is_charged_in_full_from_its_start():
    sched = Scheduler(burst_s=10.0, burst_weight=0.1)
    try:
        sched.submit(ANSWER, lambda: time.sleep(0.2), key="short").result(10)
        sched.submit(ANSWER, lambda: time.sleep(0.2), key="long", long=True).result(10)
        used = {k: sched._used(k) for k in ("short", "long")}
        assert used["short"] == pytest.approx(0.02, abs=0.01)  # a tenth: within its burst
        assert used["long"] == pytest.approx(0.2, abs=0.05)
    finally:
        sched.shutdown()
