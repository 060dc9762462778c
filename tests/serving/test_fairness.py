"""Fairness between sessions under a flood of text events (issue 14, item 4), through the real
websocket server: a session's waiting notes are bounded (one beyond ``max_pending_texts`` is refused
with ``rate_limited`` and not kept) and a long note is prefilled in pieces, so a healthy session's
question is answered between them instead of after the whole note."""

from __future__ import annotations

import asyncio
import threading

import pytest

from app.serving.scheduler import CONTROL
from tests.serving.conftest import WS, run
from tests.serving.test_hostile import ping_s

NOTE = "lorem ipsum " * 330  # about 4000 characters: the largest note, about 1000 tokens


def occupy(manager) -> threading.Event:
    """Hold the model worker (a real task on the real scheduler) until the returned event is set."""
    gate, started = threading.Event(), threading.Event()

    def hold():
        started.set()
        gate.wait(60)

    manager.scheduler.submit(CONTROL, hold, key="test-holder")
    assert started.wait(10)
    return gate


def test_a_sessions_waiting_notes_are_bounded_and_the_rest_refused(make_server):
    srv = make_server(max_pending_texts=4)

    async def go():
        flood = await WS.open(srv.url)
        healthy = await WS.open(srv.url)
        await healthy.ask("Warm up")
        sid = flood.created["session"]["id"]
        gate = occupy(srv.manager)
        try:
            ids = [await flood.send({"type": "input_text.append", "text": f"note {i} {NOTE}", "pts": float(i)})
                   for i in range(10)]
            refused = [await flood.error(timeout=30) for _ in range(6)]
            waiting = srv.manager.scheduler.queued(sid, "text")
            ping = await ping_s(flood)  # the flooding client's connection stays open
        finally:
            gate.set()
        committed = [await flood.expect("input_text.committed", timeout=60) for _ in range(4)]
        answer_deltas, answer = await healthy.ask("And now?", max_output_tokens=3)
        stats = srv.manager.stats(sid)
        await flood.close()
        await healthy.close()
        return ids, refused, waiting, ping, committed, answer, stats

    ids, refused, waiting, ping, committed, answer, stats = run(go())
    assert waiting == 4
    assert {e["code"] for e in refused} == {"rate_limited"}
    assert [e["event_id"] for e in refused] == ids[4:]  # the newest ones, each named by its event id
    assert all("max_pending_texts=4" in e["message"] for e in refused)
    assert ping < 1.0
    assert [c["reply_to"] for c in committed] == ids[:4]
    assert stats["texts"] == 4  # the refused notes were not kept
    assert answer["status"] in ("completed", "incomplete")


def test_the_page_and_library_path_refuses_the_same_way(make_manager):
    from app.serving.errors import WorkBacklog

    manager = make_manager(max_pending_texts=2)
    sid = manager.create_session()
    gate = occupy(manager)
    try:
        futures = [manager.submit_text(sid, 1.0, "one"), manager.submit_text(sid, 2.0, "two")]
        with pytest.raises(WorkBacklog, match="max_pending_texts=2") as refused:
            manager.submit_text(sid, 3.0, "three")
        assert refused.value.code == "rate_limited"
    finally:
        gate.set()
    assert [f.result(30) > 0 for f in futures] == [True, True]
    assert manager.submit_text(sid, 4.0, "four").result(30) > 0  # room again once they ran


@pytest.fixture(scope="module")
def real_backend():
    from app.engine.backends.registry import load_backend

    backend = load_backend("smolvlm2-256m-smollm2", dtype="float32")
    yield backend
    backend.close()


@pytest.mark.slow
@pytest.mark.real_weights
@pytest.mark.parametrize("pieces", [128, None], ids=["in-pieces", "one-prefill"])
def test_a_healthy_question_is_answered_between_the_pieces_of_a_long_note(real_backend, pieces):
    """With real SmolLM2 weights a 4000-character note takes seconds to prefill. In pieces, a question
    another session asks meanwhile is answered before the note is done; in one prefill (the old
    behaviour, kept here to show the test tells them apart) only after it."""
    from app.engine.config import SessionConfig
    from app.serving.limits import ManagerConfig
    from app.serving.manager import SessionManager
    from app.serving.ws_server import ServerConfig, WebSocketServer
    from tests.conftest import wait_until

    manager = SessionManager(real_backend, ManagerConfig(
        prefill_piece_tokens=pieces, default_session=SessionConfig(vision=False, max_new_tokens=4)))
    srv = WebSocketServer(manager, ServerConfig(port=0)).start()

    async def go():
        flood = await WS.open(srv.url)
        healthy = await WS.open(srv.url)
        await healthy.ask("Warm up", max_output_tokens=2, timeout=300)
        await flood.send({"type": "input_text.append", "text": NOTE, "pts": 1.0})
        await asyncio.to_thread(wait_until, lambda: manager.scheduler.stats()["running_label"] == "text", 60,
                                "the note to start", 0.01)
        _, answer = await healthy.ask("What is happening?", max_output_tokens=2, timeout=300)
        notes_done = manager.stats(flood.created["session"]["id"])["texts"]  # when the answer was done
        await flood.expect("input_text.committed", timeout=300)
        await flood.close()
        await healthy.close()
        return answer, notes_done

    try:
        answer, notes_done = run(go())
    finally:
        srv.stop()
        manager.shutdown()
    assert answer["status"] in ("completed", "incomplete")
    usage = answer["usage"]
    assert usage["queued_behind"].get("text", 0.0) > 0  # it did wait behind the note (a piece, or all of it)
    if pieces is None:
        assert notes_done == 1  # one prefill: the question waited for the whole note
    else:
        assert notes_done == 0  # in pieces: answered while the note was still being read
        assert manager.scheduler.stats()["yielded"] >= 1


@pytest.mark.parametrize("field,value", [("max_pending_texts", 0), ("prefill_piece_tokens", 4),
                                         ("short_request_tokens", -1), ("max_pending_texts", 2.5)])
def test_the_fairness_limits_are_checked_by_name(field, value):
    from app.engine.config import ConfigError
    from app.serving.limits import ManagerConfig

    with pytest.raises(ConfigError, match=field):
        ManagerConfig(**{field: value})


def test_serve_help_shows_the_fairness_flags():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "app.cli.main", "serve", "--help"], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    assert "--max-pending-texts" in out and "--prefill-piece-tokens" in out
