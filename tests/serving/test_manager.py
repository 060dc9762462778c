"""The session manager with the real tiny model: priorities, limits, settings, expiry, shutdown."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from app.engine.config import ConfigError, SessionConfig
from app.serving.errors import (
    FrameTooLarge,
    InvalidRequest,
    LiveUpdateRefused,
    ResponseInProgress,
    SessionLimit,
    UnknownSession,
)
from app.serving.limits import LIVE_FIELDS, ManagerConfig
from app.serving.scheduler import CONTROL
from streaming.frame import Frame
from tests.conftest import wait_until

from .conftest import wait_for


def hold_worker(manager) -> threading.Event:
    """Occupy the model worker (as a long model step would) until the returned event is set."""
    gate, started = threading.Event(), threading.Event()

    def hold():
        started.set()
        gate.wait(30)

    manager.scheduler.submit(CONTROL, hold)
    assert started.wait(10)
    return gate


def test_manager_config_is_validated_naming_the_field():
    with pytest.raises(ConfigError, match=r"max_fps must be a number in \(0, 1000\]"):
        ManagerConfig(max_fps=0)
    with pytest.raises(ConfigError, match="max_sessions"):
        ManagerConfig(max_sessions=0)
    with pytest.raises(ConfigError, match="session_ram_budget_mb"):
        ManagerConfig(session_ram_budget_mb=-1.0)
    with pytest.raises(ConfigError, match="snapshot_interval_s"):
        ManagerConfig(snapshot_interval_s=0)
    with pytest.raises(ConfigError, match="unknown manager setting"):
        ManagerConfig().updated(max_fsp=3)


def test_an_answer_asked_after_many_frames_runs_before_them(make_manager, bikes_frames):
    m = make_manager(max_fps=100.0)
    sids = [m.create_session() for _ in range(4)]
    gate = hold_worker(m)
    for i, frame in enumerate(bikes_frames[:40]):  # 10 frames per session queue up behind the busy worker
        m.submit_frame(sids[i % 4], frame)
    processed_when_answering = []

    def on_delta(_text):
        if not processed_when_answering:
            processed_when_answering.append(sum(m.stats(s)["ingest"]["frames_processed"] for s in sids))

    fut = m.ask(sids[0], "What happened?", on_delta=on_delta, max_new_tokens=4)
    gate.set()
    answer = fut.result(60)
    assert processed_when_answering == [0]  # no frame ran before the answer
    assert answer.usage["completion_tokens"] == 4
    wait_for(lambda: all(m.stats(s)["ingest"]["frames_processed"] == 1 for s in sids))
    for s in sids:  # newest wins: one frame per session survived; the other nine were dropped as backlog
        ing = m.stats(s)["ingest"]
        assert ing["frames_accepted"] == 10 and ing["dropped"]["backlog"] == 9
        assert ing["last_pts"] == pytest.approx(bikes_frames[36 + sids.index(s)].pts)


def test_a_question_sees_the_text_sent_before_it(make_manager):
    m = make_manager()
    sid = m.create_session()
    gate = hold_worker(m)
    text = m.submit_text(sid, 4.0, "The delivery van is red.")
    answer = m.ask(sid, "What colour is the van?", max_new_tokens=2)
    gate.set()
    assert text.result(30) > 0
    window = [e for e in answer.result(30).evidence if e.source == "window"]
    assert window and window[0].kind == "text" and window[0].t_end == 4.0


def test_rate_limit_drops_and_counts(make_manager, bikes_frames):
    m = make_manager(max_fps=2.0)
    sid = m.create_session()
    verdicts = [m.offer_frame(sid, f) for f in bikes_frames[:6]]
    accepted = [v.accepted for v in verdicts]
    assert accepted[:2] == [True, True]  # a burst of one second's worth
    assert accepted.count(False) >= 3
    assert all(v.reason == "rate_limit" for v in verdicts if not v.accepted)
    assert m.stats(sid)["ingest"]["dropped"]["rate_limit"] == accepted.count(False)


def test_frame_size_and_bad_requests_are_refused(make_manager):
    m = make_manager(max_frame_side=64)
    sid = m.create_session()
    big = Frame(0, 0.0, time.time(), np.zeros((48, 80, 3), np.uint8))
    with pytest.raises(FrameTooLarge, match="80x48 exceeds max_frame_side=64"):
        m.submit_frame(sid, big)
    with pytest.raises(InvalidRequest, match="streaming.Frame"):
        m.submit_frame(sid, np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(InvalidRequest, match="pts"):
        m.submit_text(sid, -1.0, "hello")
    with pytest.raises(InvalidRequest, match="non-empty"):
        m.ask(sid, "   ")
    with pytest.raises(UnknownSession):
        m.stats("sess_nope")


def test_settings_before_and_after_input(make_manager, bikes_frames):
    m = make_manager(session_ram_budget_mb=64.0)
    sid = m.create_session({"top_k": 3})
    cfg = m.session_config(sid)
    assert cfg.top_k == 3 and cfg.ram_budget_mb == 64.0  # the manager's budget fills in the unset one
    with pytest.raises(ConfigError, match="window_tokens must be an integer"):
        m.update_session(sid, {"window_tokens": 3})
    with pytest.raises(ConfigError, match="unknown setting"):
        m.update_session(sid, {"windw": 64})
    session = m.get(sid)  # built now, before any input: everything may still change (session rebuilt)
    new = m.update_session(sid, {"drop": "pixel", "system_prompt": "Be brief."})
    assert new.drop == "pixel" and m.get(sid) is not session and m.get(sid).config.system_prompt == "Be brief."
    m.submit_frame(sid, bikes_frames[0])
    with pytest.raises(LiveUpdateRefused, match="window_tokens cannot change after the session's input has started"):
        m.update_session(sid, {"window_tokens": 64})
    assert "max_new_tokens" in LIVE_FIELDS
    m.update_session(sid, {"max_new_tokens": 3, "top_k": 1})
    assert m.get(sid).config.max_new_tokens == 3
    answer = m.ask(sid, "What is here?").result(60)
    assert answer.usage["completion_tokens"] == 3


def test_one_answer_at_a_time_and_cancel(make_manager):
    m = make_manager()
    sid = m.create_session()
    gate = hold_worker(m)
    fut = m.ask(sid, "Describe everything.", max_new_tokens=50)
    with pytest.raises(ResponseInProgress):
        m.ask(sid, "And then?")
    assert m.cancel(sid)  # cancelled before it started
    gate.set()
    assert fut.cancelled()
    got_first = threading.Event()
    fut = m.ask(sid, "Describe everything.", max_new_tokens=400, on_delta=lambda _t: got_first.set())
    assert got_first.wait(60)
    assert m.cancel(sid)  # cancelled while generating
    answer = fut.result(60)
    assert answer.stop_reason == "cancelled" and answer.usage["completion_tokens"] < 400
    assert not m.cancel(sid)


def test_session_limit_ttl_expiry_and_close(make_manager, bikes_frames):
    m = make_manager(max_sessions=2, session_ttl_s=0.5)
    a = m.create_session()
    b = m.create_session()
    with pytest.raises(SessionLimit, match="max_sessions"):
        m.create_session()
    events = []
    m.subscribe(a, events.append)
    m.submit_frame(a, bikes_frames[0])
    session = m.get(a)
    wait_for(lambda: a not in m.sessions() and b not in m.sessions(), timeout=30)
    assert {"type": "session.closed", "reason": "expired", "session_id": a} in events
    assert session.closed
    with pytest.raises(UnknownSession):
        m.submit_frame(a, bikes_frames[1])
    assert m.manager_stats()["sessions_expired"] == 2
    c = m.create_session()  # room again
    m.close_session(c)
    m.close_session(c)  # idempotent
    assert m.sessions() == []


def test_text_errors_stay_in_their_session(make_manager, bikes_frames):
    m = make_manager()
    a, b = m.create_session(), m.create_session()
    bad = m.submit_text(a, 1.0, "x" * 5000)  # over the session's text limit: fails in the worker
    good = m.submit_text(b, 1.0, "The van is red.")
    with pytest.raises(Exception, match="limited to 4000 characters"):
        bad.result(30)
    assert good.result(30) > 0
    assert m.stats(a)["ingest"]["frame_errors"] == 0
    assert m.submit_text(a, 2.0, "Fine now.").result(30) > 0
    assert m.stats(b)["texts"] == 1 and m.stats(a)["texts"] == 1


def test_watch_rules_are_evaluated_on_scene_changes_only(make_manager, bikes_frames):
    """The tiny model's yes/no answers are meaningless, so this checks that the evaluation runs
    exactly when the pixel drop rule sees a hard cut; tests/serving/test_watch_alerts.py checks that a
    real language model's "yes" arrives as an alert."""
    m = make_manager(max_fps=100.0, default_session=SessionConfig(drop="pixel", pixel_threshold=0.05, max_new_tokens=4))
    sid = m.create_session()
    rule = m.watch(sid, "a person rides a bike")
    assert [r.rule_id for r in m.rules(sid)] == [rule.rule_id]
    still = bikes_frames[10]
    for i in range(4):  # the first frame counts as a scene change (DropPolicy), identical repeats do not
        m.submit_frame(sid, Frame(i, i * 0.5, time.time(), still.rgb))
        wait_for(lambda i=i: m.stats(sid)["ingest"]["frames_processed"] == i + 1)
    wait_for(m.scheduler.idle)  # a check queued by the last frame has run
    assert m.stats(sid)["watch"]["checks"] == 1
    cut = bikes_frames[30]  # a hard cut in bikes.mp4
    m.submit_frame(sid, Frame(4, 2.0, time.time(), cut.rgb))
    wait_for(lambda: m.stats(sid)["watch"]["checks"] == 2)
    m.submit_frame(sid, Frame(5, 2.5, time.time(), cut.rgb))
    wait_for(lambda: m.stats(sid)["ingest"]["frames_processed"] == 6)
    wait_for(m.scheduler.idle)
    assert m.stats(sid)["watch"]["checks"] == 2
    assert m.unwatch(sid, rule.rule_id) and not m.unwatch(sid, rule.rule_id)
    assert m.rules(sid) == [] and m.stats(sid)["watch"]["rules"] == 0  # readers see the removal at once
    assert m.alerts(sid) == m.get(sid).alerts()  # read from the session (the tiny model's answers are noise)


def test_shutdown_is_clean(make_manager, bikes_path, bikes_frames):
    m = make_manager(allow_file_sources=True, max_fps=10.0)
    sids = [m.create_session() for _ in range(3)]
    sessions = [m.get(s) for s in sids]
    m.set_source(sids[0], str(bikes_path), fps=5.0, realtime=True)
    m.submit_frame(sids[1], bikes_frames[0])
    answer = m.ask(sids[2], "Anything?", max_new_tokens=400)
    runner = m._entry(sids[0]).source
    m.shutdown()
    assert m.sessions() == [] and all(s.closed for s in sessions)
    assert not m.scheduler._thread.is_alive() and not runner._thread.is_alive()
    assert not m._housekeeper.is_alive()
    assert answer.cancelled() or answer.result().stop_reason == "cancelled"
    with pytest.raises(Exception, match="shut down"):
        m.create_session()


def test_cached_stats_catch_up_with_frames_that_came_in_a_burst(make_manager, bikes_frames):
    """Frames processed in quick succession skip the (throttled) stats refresh; the cached stats still
    reach the last frame once the burst is over, with no further input."""
    m = make_manager(max_fps=1000.0, stats_interval_s=0.1, snapshot_interval_s=10.0)
    sid = m.create_session({"drop": "off"})
    for frame in bikes_frames[:4]:
        m.submit_frame(sid, frame)
        wait_for(lambda f=frame: m.stats(sid)["ingest"]["last_pts"] == f.pts)  # each one processed, none dropped
    assert m.stats(sid)["ingest"]["frames_processed"] == 4
    assert m.stats(sid).get("frames", 0) < 4  # the burst outran the snapshot interval ...
    wait_for(lambda: m.stats(sid).get("frames") == 4, timeout=25)  # ... and the cached stats caught up
    assert m.stats(sid)["tokens_seen"] == 4 * m.backend.spec.tokens_per_frame


def test_the_server_wide_disk_budget_is_shared_between_sessions(make_manager):
    m = make_manager(memory_budget_gb=1.0, max_sessions=4)
    small = m.create_session({"disk_budget_mb": 100.0})
    unset = m.create_session()
    large = m.create_session({"disk_budget_mb": 5000.0})
    # each session gets at most its share (1 GiB / 4 sessions), never more than it asked for
    assert m.session_config(small).disk_budget_mb == 100.0
    assert m.session_config(unset).disk_budget_mb == 256.0
    assert m.session_config(large).disk_budget_mb == 256.0
    m.update_session(large, {"disk_budget_mb": 9000.0})
    assert m.session_config(large).disk_budget_mb == 256.0
    with pytest.raises(ConfigError, match="memory_budget_gb"):
        ManagerConfig(memory_budget_gb=0)


def test_a_persisted_session_is_saved_while_it_runs_and_reopens(make_manager, bikes_frames, backend, tmp_path):
    import json

    from app.engine.persistence import SESSION_FILE
    from app.engine.session import Session

    memory = tmp_path / "memory"
    m = make_manager(save_interval_s=0.2, default_session=SessionConfig(max_new_tokens=4, window_tokens=64, drop="off"))
    sid = m.create_session({"memory_dir": str(memory), "persist": True})
    for i, frame in enumerate(bikes_frames[:3]):
        m.submit_frame(sid, frame)
        wait_until(lambda n=i + 1: m.stats(sid)["ingest"]["frames_processed"] == n, 60, f"frame {i + 1}")
    m.submit_text(sid, bikes_frames[3].pts, "The courier left a blue parcel at the door.").result(60)

    def saved_chunks() -> int:
        try:
            return len(json.loads((memory / "manifest.json").read_text())["chunks"])
        except (OSError, ValueError, KeyError):
            return 0

    # saved by the manager on its own, the session still open (a crash now loses nothing banked)
    wait_until(lambda: (memory / SESSION_FILE).is_file() and saved_chunks() >= 4, 60, "a periodic save")
    assert sid in m.sessions()
    first = saved_chunks()
    m.submit_frame(sid, bikes_frames[4])
    wait_until(lambda: saved_chunks() > first, 60, "a save of the new input")
    reopened = Session.open_memory(backend, memory)  # what a crash would leave behind reopens
    try:
        assert any(meta.text and "blue parcel" in meta.text for meta in reopened.bank.metas())
    finally:
        reopened.close()
