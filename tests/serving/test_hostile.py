"""Hostile and unlucky clients against a real server on 127.0.0.1 (issue 14, part): nothing a client
sends blocks the event loop for other sessions, source opening has its own bounded pool, huge JSON
integers are ``invalid_json``, wrong tokens are rate-limited per address, and the CLIs fail cleanly
(a websocket port in use, a server that goes away).

The websocket cases measure a second, healthy session alongside: its ping round trip stays under 1 s
while the other client's action is pending. The tiny random model makes long answers cheap (a few
thousand tokens take seconds on a CPU), which is what the blocking cases need.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.serving.conftest import WS, run

ROOT = Path(__file__).resolve().parents[2]
#: A long answer of the tiny model: seconds of model work, so a loop blocked by it shows in a ping.
LONG_ANSWER_TOKENS = 3000


async def ping_s(ws: WS) -> float:
    """The websocket ping round trip of ``ws`` in seconds (fails the test beyond 10 s)."""
    t0 = time.monotonic()
    pong = await ws.conn.ping()
    await asyncio.wait_for(pong, 10.0)
    return time.monotonic() - t0


# --------------------------------------------------------------------------- item 1: no blocked loop

def test_watch_delete_during_a_long_answer_blocks_no_other_session(ws_server):
    async def go():
        a = await WS.open(ws_server.url)
        b = await WS.open(ws_server.url)
        await a.send({"type": "watch.create", "rule": "a rider falls"})
        rule = (await a.expect("watch.created"))["rule"]
        await a.send({"type": "response.create", "response": {"input": "Describe everything at length.",
                                                               "max_output_tokens": LONG_ANSWER_TOKENS}})
        await a.expect("response.output_text.delta")  # the answer runs on the model worker now
        # a rule id that does not exist answers at once, before the answer ends
        missing = await a.send({"type": "watch.delete", "rule_id": "rule_nope"})
        reply = await a.expect("error", "response.done", timeout=60)
        assert reply["type"] == "error", "the unknown rule waited for the answer"
        assert reply["error"]["code"] == "invalid_event" and reply["error"]["event_id"] == missing
        assert "rule_nope" in reply["error"]["message"]
        # deleting the real rule must wait for the session: it does so off the loop
        await a.send({"type": "watch.delete", "rule_id": rule["rule_id"]})
        pings = [await ping_s(b) for _ in range(3)]
        await b.send({"type": "watch.delete", "rule_id": "rule_nope"})
        assert (await b.error())["code"] == "invalid_event"
        await b.send({"type": "session.stats"})
        stats = (await b.expect("input_video.stats", timeout=1.0))["stats"]
        pings.append(await ping_s(b))
        assert not stats["answering"]
        a_stats_id = await a.send({"type": "session.stats"})
        done = await a.expect("response.done", timeout=600)  # the whole long answer: minutes on a loaded machine
        assert done["response"]["status"] in ("completed", "incomplete")  # incomplete: the token limit
        deleted = await a.expect("watch.deleted", timeout=30)
        assert deleted["rule_id"] == rule["rule_id"]
        a_stats = await a.expect("input_video.stats", where=lambda e: e.get("reply_to") == a_stats_id)
        assert a_stats["stats"]["watch"]["rules"] == 0
        _, answer = await b.ask("And here?")  # b's answers keep coming
        assert answer["status"] in ("completed", "incomplete")
        await a.close()
        await b.close()
        return pings

    pings = run(go())
    assert max(pings) < 1.0, pings


# --------------------------------------------------------------------------- item 5: source opening pool

def test_slow_source_opens_neither_freeze_others_nor_exceed_their_cap(make_server, silent_server):
    # more slow opens than asyncio's default thread pool has threads
    n = min(32, (os.cpu_count() or 1) + 4) + 1
    srv = make_server(max_sessions=n + 4, source_open_timeout_s=3.0, server={"max_source_opens": 2})
    url = f"http://127.0.0.1:{silent_server}/camera.mp4"

    async def go():
        openers = [await WS.open(srv.url) for _ in range(n)]
        ids = [await ws.send({"type": "input_source.set", "url": url}) for ws in openers]
        busy = []
        for ws, event_id in zip(openers[2:], ids[2:]):  # beyond the cap: refused at once
            busy.append(await ws.error(event_id, timeout=1.0))
        t0 = time.monotonic()
        c = await WS.open(srv.url)  # a new connection's handshake and session while two opens hang
        connect_s = time.monotonic() - t0
        pings = [await ping_s(c) for _ in range(3)]
        _, answer = await c.ask("Anything?")
        first = await openers[0].error(ids[0], timeout=30)  # the slow opens end with their own error
        for ws in [*openers, c]:
            await ws.close()
        return busy, connect_s, pings, answer, first

    busy, connect_s, pings, answer, first = run(go())
    assert {e["code"] for e in busy} == {"source_busy"}
    assert "2 sources" in busy[0]["message"] and "try again" in busy[0]["message"]
    assert connect_s < 1.0 and max(pings) < 1.0, (connect_s, pings)
    assert answer["status"] in ("completed", "incomplete")
    assert first["code"] == "source_error" and first["source_error"] == "SourceUnreachable"


# --------------------------------------------------------------------------- item 12: small ones

def test_a_5000_digit_integer_is_invalid_json_and_the_connection_stays(ws_server):
    async def go():
        ws = await WS.open(ws_server.url)
        await ws.send('{"type": "session.stats", "event_id": "big", "n": ' + "7" * 5000 + "}")
        err = await ws.error()
        await ws.send({"type": "session.stats"})
        stats = await ws.expect("input_video.stats")
        await ws.close()
        return err, stats

    err, stats = run(go())
    assert err["code"] == "invalid_json" and "digits" in err["message"]
    assert stats["stats"]["ingest"]["frames_submitted"] == 0


def _handshake_statuses(url: str, tokens: list[str]) -> list[int]:
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidStatus

    async def go():
        out = []
        for token in tokens:
            try:
                ws = await connect(url, additional_headers={"Authorization": f"Bearer {token}"})
            except InvalidStatus as exc:
                out.append(exc.response.status_code)
            else:
                out.append(101)
                await ws.close()
        return out

    return run(go())


def test_wrong_tokens_are_rate_limited_per_address(make_server):
    srv = make_server(token="right-token-123", server={"auth_max_failures": 3, "auth_block_s": 30.0})
    statuses = _handshake_statuses(srv.url, [f"wrong-{i:04d}-token" for i in range(40)] + ["right-token-123"])
    # three wrong tokens are tried; then every handshake from this address (the right token too) is 429
    assert statuses == [401] * 3 + [429] * 38
    assert srv.stats()["rejected_auth"] == 3 and srv.stats()["rate_limited_auth"] == 38


def test_the_token_block_ends_and_a_right_token_resets_the_count(make_server):
    srv = make_server(token="right-token-123", server={"auth_max_failures": 2, "auth_block_s": 0.5})
    assert _handshake_statuses(srv.url, ["wrong-token-1", "right-token-123", "wrong-token-2", "right-token-123"]) \
        == [401, 101, 401, 101]  # a success forgets the failures before it
    assert _handshake_statuses(srv.url, ["wrong-token-1", "wrong-token-2", "right-token-123"]) == [401, 401, 429]
    time.sleep(0.6)
    assert _handshake_statuses(srv.url, ["right-token-123"]) == [101]


# --------------------------------------------------------------------------- items 15 and 16: the CLIs

def test_serve_with_its_websocket_port_taken_says_so_and_exits(tmp_path):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    try:
        proc = subprocess.run([sys.executable, "-m", "app.cli.main", "serve", "--model", "tiny-smolvlm", "--no-ui",
                               "--asr", "off", "--offline", "--ws-port", str(port)], cwd=ROOT, capture_output=True,
                              text=True, timeout=180, env={**os.environ, "HF_HOME": str(tmp_path / "hf")})
    finally:
        taken.close()
    assert proc.returncode == 1, proc.stderr
    assert f"error: cannot listen on 127.0.0.1:{port}: address already in use" in proc.stderr.splitlines()
    assert "Traceback" not in proc.stderr and "never awaited" not in proc.stderr
    assert "ready" not in proc.stdout


def test_client_says_the_server_closed_the_connection(make_server, bikes_path):
    srv = make_server(max_fps=10.0)
    proc = subprocess.Popen([sys.executable, "-m", "app.cli.main", "client", str(bikes_path), "--url", srv.url,
                             "--fps", "2", "--no-audio"], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not srv.manager.sessions() or srv.manager.stats(srv.manager.sessions()[0])["ingest"]["frames_submitted"] < 2:
            assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read() if proc.poll() else "no frames"
            time.sleep(0.05)
        srv.stop()  # the server goes away while the client streams (stdin stays open)
        proc.wait(timeout=60)
        out, err = proc.stdout.read(), proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdin.close()
    assert proc.returncode == 1, err
    assert "Traceback" not in err and "ConnectionClosed" not in err + out
    lines = [line for line in err.splitlines() if "server closed the connection" in line]
    assert lines == ["error: server closed the connection (1001 server shutting down)"], err
    assert "; bye" in out



@pytest.mark.parametrize(("field", "value"), [("max_source_opens", 0), ("max_source_opens", 65),
                                              ("auth_max_failures", 0), ("auth_block_s", 0.0)])
def test_the_new_server_limits_are_checked_by_name(field, value):
    from app.serving.ws_server import ServerConfig, ServerConfigError

    with pytest.raises(ServerConfigError, match=field):
        ServerConfig(**{field: value})
