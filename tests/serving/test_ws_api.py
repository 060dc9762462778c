"""The websocket API end to end: a real ``websockets`` client against the real server on 127.0.0.1,
the tiny model, real frames (bikes.mp4 decoded by PyAV, sent as JPEG)."""

from __future__ import annotations

import asyncio
import base64
import json

import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from app.engine.config import ConfigError
from app.serving.client import LiveSightClient, LiveSightError, encode_jpeg
from app.serving.protocol import pack_frame
from app.serving.ws_server import ServerConfig, ServerConfigError, WebSocketServer

from .conftest import WS, run, wait_for

pytestmark = pytest.mark.network


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def test_session_frames_question_streamed_answer_evidence_and_stats(ws_server, bikes_frames):
    async def main():
        ws = await WS.open(ws_server.url)
        session = ws.created["session"]
        assert session["id"] in ws_server.manager.sessions()
        assert session["window_tokens"] == 1024 and session["evidence_thumbnails"] is False
        assert ws.created["model"]["name"] == "tiny-smolvlm" and ws.created["model"]["random_weights"] is True
        assert ws.created["limits"]["max_frame_bytes"] == 8 * 2**20
        eid = await ws.send({"type": "session.update", "session": {"evidence_thumbnails": True, "window_tokens": 48,
                                                                   "top_k": 4}})
        upd = await ws.expect("session.updated")
        assert upd["reply_to"] == eid and upd["session"]["window_tokens"] == 48 and upd["session"]["evidence_thumbnails"]
        for i in range(0, 60, 10):  # 6 frames over 2.4 s of bikes.mp4, binary and base64 alternately
            f = bikes_frames[i]
            if i % 20 == 0:
                await ws.send(pack_frame(encode_jpeg(f.rgb), f.pts))
            else:
                await ws.send({"type": "input_video.append", "image": b64(encode_jpeg(f.rgb)), "pts": f.pts})
            await asyncio.sleep(0.15)  # below the rate limit; the tiny model keeps up
        eid = await ws.send({"type": "input_text.append", "text": "A red van parks by the road.", "pts": 2.5})
        committed = await ws.expect("input_text.committed")
        assert committed["reply_to"] == eid and committed["tokens"] > 5
        stats = await ws.expect("input_video.stats", timeout=10)  # periodic, while frames flow
        assert stats["stats"]["session_id"] == session["id"]
        sid = session["id"]

        def settled() -> bool:  # every frame processed or replaced by a newer one (questions go before frames)
            ingest = ws_server.manager.stats(sid)["ingest"]
            return ingest["frames_processed"] + ingest["dropped"]["backlog"] == 6

        await asyncio.to_thread(wait_for, settled)
        await ws.send({"type": "conversation.item.create",
                       "item": {"type": "message", "role": "user",
                                "content": [{"type": "input_text", "text": "What is parked?"}]}})
        item = await ws.expect("conversation.item.created")
        assert item["item"]["content"][0]["text"] == "What is parked?"
        await ws.send({"type": "response.create", "response": {"max_output_tokens": 5}})
        created = await ws.expect("response.created")
        rid = created["response"]["id"]
        assert created["response"]["question"] == "What is parked?"
        deltas = []
        while True:
            ev = await ws.expect("response.output_text.delta", "response.output_text.done", "response.done")
            if ev["type"] == "response.output_text.delta":
                assert ev["response_id"] == rid
                deltas.append(ev["delta"])
            elif ev["type"] == "response.output_text.done":
                done_text = ev["text"]
            else:
                resp = ev["response"]
                break
        assert len(deltas) >= 2 and "".join(deltas).strip() == done_text == resp["output_text"]
        assert resp["id"] == rid and resp["status"] == "incomplete" and resp["stop_reason"] == "max_tokens"
        assert resp["usage"]["completion_tokens"] == 5 and resp["usage"]["question_tokens"] > 0
        ev_list = resp["evidence"]
        assert ev_list and {e["source"] for e in ev_list} <= {"memory", "window"}
        memory = [e for e in ev_list if e["source"] == "memory"]
        assert memory, "a 48-token window pushes early frames into memory, which the question retrieves"
        for e in ev_list:
            assert 0.0 <= e["t_start"] <= e["t_end"] <= 2.5
            assert {"t_start", "t_end", "source", "kind", "score", "chunk_id", "text"} <= set(e)
        assert all(e["chunk_id"] is not None and e["score"] is not None for e in memory)
        assert [e["t_start"] for e in memory] == sorted(e["t_start"] for e in memory)  # time order
        thumbs = [e["thumbnail_jpeg_b64"] for e in ev_list if "thumbnail_jpeg_b64" in e]
        assert thumbs and base64.b64decode(thumbs[0])[:2] == b"\xff\xd8"  # JPEG
        eid = await ws.send({"type": "session.stats"})
        reply = await ws.expect("input_video.stats", where=lambda e: e.get("reply_to") == eid)
        st = reply["stats"]
        assert st["ingest"]["frames_submitted"] == 6 and st["answers"] == 1 and st["texts"] == 1
        assert st["frames"] == st["ingest"]["frames_processed"] >= 1
        assert st["ingest"]["frames_processed"] + st["ingest"]["dropped"]["backlog"] == 6
        assert st["memory_bytes"]["window"] > 0 and st["bank_chunks"] >= 1
        await ws.close()

    run(main())
    wait_for(lambda: ws_server.manager.sessions() == [])  # disconnect closes the session


def test_errors_get_typed_codes_and_the_connection_stays_usable(make_server, bikes_frames):
    srv = make_server(max_frame_bytes=64 * 1024, max_frame_side=320, max_fps=50.0)
    limit = srv.limits.max_message_bytes
    frame = bikes_frames[5]

    async def main():
        ws = await WS.open(srv.url)
        await ws.send("{not json")
        assert (await ws.error())["code"] == "invalid_json"
        eid = await ws.send({"type": "teleport"})
        err = await ws.error(eid)
        assert err["code"] == "unknown_event_type" and "teleport" in err["message"]
        eid = await ws.send({"type": "input_text.append", "pts": 1.0})
        err = await ws.error(eid)
        assert err["code"] == "invalid_event" and "'text'" in err["message"] and err["param"] == "text"
        await ws.send(json.dumps({"type": "input_text.append", "text": "x" * (limit + 10), "pts": 0}))
        err = await ws.error()
        assert err["code"] == "message_too_large" and str(limit) in err["message"]
        big = bytes(70 * 1024)
        await ws.send(pack_frame(big, 1.0))
        assert (await ws.error())["code"] == "frame_too_large"
        eid = await ws.send({"type": "input_video.append", "image": b64(big)})
        err = await ws.error(eid)
        assert err["code"] == "frame_too_large" and "65536" in err["message"]
        wide = np.zeros((200, 400, 3), np.uint8)
        eid = await ws.send({"type": "input_video.append", "image": b64(encode_jpeg(wide))})
        err = await ws.error(eid)
        assert err["code"] == "frame_too_large" and "400x200" in err["message"]
        await ws.send(pack_frame(b"\x89PNG but not really an image", 1.0))
        assert (await ws.error())["code"] == "bad_image"
        eid = await ws.send({"type": "input_video.append", "image": "@@@"})
        assert (await ws.error(eid))["code"] == "bad_image"
        await ws.send(b"JUNK" + bytes(40))
        err = await ws.error()
        assert err["code"] == "invalid_event" and "LSF1" in err["message"]
        eid = await ws.send({"type": "session.update", "session": {"top_k": -1}})
        err = await ws.error(eid)
        assert err["code"] == "invalid_config" and "top_k" in err["message"]
        eid = await ws.send({"type": "session.update", "session": {"kv_bitz": 4}})
        err = await ws.error(eid)
        assert err["code"] == "invalid_config" and "kv_bitz" in err["message"]
        eid = await ws.send({"type": "session.update", "session": {"memory_dir": "/tmp/elsewhere"}})
        err = await ws.error(eid)
        assert err["code"] == "invalid_config" and "memory_dir" in err["message"]
        await ws.send(pack_frame(encode_jpeg(frame.rgb), frame.pts))  # a good frame: input has started
        eid = await ws.send({"type": "session.update", "session": {"drop": "pixel"}})
        err = await ws.error(eid)
        assert err["code"] == "invalid_config" and "drop cannot change after" in err["message"]
        eid = await ws.send({"type": "watch.delete", "rule_id": "nope"})
        assert (await ws.error(eid))["code"] == "invalid_event"
        eid = await ws.send({"type": "response.create"})
        err = await ws.error(eid)
        assert err["code"] == "invalid_event" and "conversation.item.create" in err["message"]
        # after all that, the same connection still works
        eid = await ws.send({"type": "session.update", "session": {"max_new_tokens": 3}})
        assert (await ws.expect("session.updated"))["session"]["max_new_tokens"] == 3
        deltas, resp = await ws.ask("What is in the frame?", max_output_tokens=3)
        assert resp["status"] in ("completed", "incomplete") and resp["usage"]["completion_tokens"] <= 3
        st = srv.manager.stats(ws.created["session"]["id"])
        assert st["ingest"]["frames_submitted"] == 1  # only the good frame reached the session
        # a message beyond the hard cap closes the connection with 1009 (message too big)
        await ws.conn.send("y" * (srv.limits.hard_max_bytes + 1))
        with pytest.raises(ConnectionClosed) as info:
            while True:
                await ws.recv(10)
        assert info.value.rcvd is not None and info.value.rcvd.code == 1009

    run(main())


def test_response_in_progress_and_cancel(ws_server):
    async def main():
        ws = await WS.open(ws_server.url)
        await ws.send({"type": "response.create", "response": {"input": "Tell me everything.", "max_output_tokens": 2000}})
        await ws.expect("response.output_text.delta")
        eid = await ws.send({"type": "response.create", "response": {"input": "And more?"}})
        assert (await ws.error(eid))["code"] == "response_in_progress"
        await ws.send({"type": "response.cancel"})
        done = await ws.expect("response.done")
        assert done["response"]["status"] == "cancelled" and done["response"]["usage"]["completion_tokens"] < 2000
        eid = await ws.send({"type": "response.cancel"})
        assert (await ws.error(eid))["code"] == "invalid_event"
        await ws.close()

    run(main())


def test_auth_token_is_checked_at_the_handshake(make_server):
    srv = make_server(token="s3cret-token")

    async def refused(**kw):
        with pytest.raises(InvalidStatus) as info:
            await WS.open(srv.url, **kw)
        return info.value.response.status_code

    async def main():
        assert await refused() == 401
        assert await refused(additional_headers={"Authorization": "Bearer wrong-token"}) == 401
        ws = await WS.open(srv.url, additional_headers={"Authorization": "Bearer s3cret-token"})
        await ws.close()
        ws = await WS.open(srv.url + "/?token=s3cret-token")  # for browsers, which cannot set headers
        await ws.close()
        async with LiveSightClient(srv.url, token="s3cret-token") as client:
            assert client.session_id.startswith("sess_")
        with pytest.raises(InvalidStatus):
            await LiveSightClient(srv.url, token="nope-nope-nope").connect()

    run(main())
    assert srv.stats()["rejected_auth"] == 3


def test_listening_beyond_loopback_needs_a_token(make_manager):
    with pytest.raises(ServerConfigError, match="needs a token"):
        ServerConfig(host="0.0.0.0")
    with pytest.raises(ConfigError, match="needs a token"):
        WebSocketServer(make_manager(), ServerConfig(host="::", port=0))
    assert ServerConfig(host="0.0.0.0", token="long-enough-token").token
    assert ServerConfig(host="::1").token is None and ServerConfig(host="localhost").token is None


def test_two_sessions_stay_isolated(make_server, bikes_frames):
    srv = make_server(max_fps=50.0)

    async def main():
        a = await WS.open(srv.url)
        b = await WS.open(srv.url)
        assert a.created["session"]["id"] != b.created["session"]["id"]
        for ws in (a, b):  # a small window sends every text event to memory, where evidence names its text
            await ws.send({"type": "session.update", "session": {"window_tokens": 16, "top_k": 16}})
            await ws.expect("session.updated")
        for i, word in enumerate(["apple", "anchor", "arrow"]):
            await a.send({"type": "input_text.append", "text": f"Note {i}: the password is {word}.", "pts": float(i)})
            await a.expect("input_text.committed")
        await a.send(pack_frame(encode_jpeg(bikes_frames[0].rgb), 0.5))
        for i, word in enumerate(["banana", "bucket"]):
            await b.send({"type": "input_text.append", "text": f"Note {i}: the password is {word}.", "pts": float(i)})
            await b.expect("input_text.committed")
        await b.send(pack_frame(encode_jpeg(bikes_frames[100].rgb), 0.5))
        for ws in (a, b):  # the frames push the last notes out of the window (questions go before frames)
            sid = ws.created["session"]["id"]
            await asyncio.to_thread(wait_for, lambda sid=sid: srv.manager.stats(sid)["ingest"]["frames_processed"] == 1)
        await a.send("{broken")  # an error in A ...
        assert (await a.error())["code"] == "invalid_json"
        _, resp_b = await b.ask("What is the password?", max_output_tokens=3)  # ... leaves B alone
        texts_b = [e["text"] for e in resp_b["evidence"] if e["source"] == "memory" and e["kind"] == "text"]
        assert texts_b and all("banana" in t or "bucket" in t for t in texts_b)
        _, resp_a = await a.ask("What is the password?", max_output_tokens=3)
        texts_a = [e["text"] for e in resp_a["evidence"] if e["source"] == "memory" and e["kind"] == "text"]
        assert len(texts_a) == 3 and not any("banana" in t or "bucket" in t for t in texts_a)
        assert not [e for e in b.seen if e["type"] == "error"]
        sa = srv.manager.stats(a.created["session"]["id"])
        sb = srv.manager.stats(b.created["session"]["id"])
        assert (sa["texts"], sb["texts"]) == (3, 2)
        assert sa["ingest"]["frames_submitted"] == sb["ingest"]["frames_submitted"] == 1
        await a.close()
        await b.close()

    run(main())


def test_flooding_frames_drops_frames_never_control(make_server, bikes_frames):
    srv = make_server(max_fps=1000.0)
    jpegs = [encode_jpeg(f.rgb) for f in bikes_frames[:120]]

    async def main():
        ws = await WS.open(srv.url)
        sid = ws.created["session"]["id"]
        for i, data in enumerate(jpegs):
            await ws.send(pack_frame(data, i * 0.04))
            if i == 60:  # a question and a text event in the middle of the flood
                await ws.send({"type": "input_text.append", "text": "Halfway through.", "pts": 2.4})
                await ws.send({"type": "response.create", "response": {"input": "What happened?", "max_output_tokens": 3}})
        committed = await ws.expect("input_text.committed")
        assert committed["tokens"] > 0
        done = await ws.expect("response.done")
        assert done["response"]["usage"]["completion_tokens"] == 3
        wait_for(srv.manager.scheduler.idle)
        st = srv.manager.stats(sid)["ingest"]
        assert st["frames_accepted"] == 120
        assert st["dropped"]["backlog"] > 0 and st["frames_processed"] < 120
        assert st["frames_processed"] + st["dropped"]["backlog"] == 120
        ev = await ws.expect("input_video.stats", where=lambda e: e["stats"]["ingest"]["dropped"]["backlog"] > 0)
        assert ev["stats"]["ingest"]["dropped_total"] >= ev["stats"]["ingest"]["dropped"]["backlog"]
        await ws.close()

    run(main())


def test_rate_limited_frames_get_an_error_and_are_counted(make_server, bikes_frames):
    srv = make_server(max_fps=0.1)  # one frame, then one every 10 s
    data = encode_jpeg(bikes_frames[0].rgb)

    async def main():
        ws = await WS.open(srv.url)
        for i in range(5):
            await ws.send(pack_frame(data, float(i)))
        err = await ws.error()
        assert err["code"] == "rate_limited" and err["max_fps"] == 0.1
        eid = await ws.send({"type": "session.stats"})
        st = (await ws.expect("input_video.stats", where=lambda e: e.get("reply_to") == eid))["stats"]
        assert st["ingest"]["dropped"]["rate_limit"] == 4 and st["ingest"]["frames_accepted"] == 1
        assert len([e for e in ws.seen if e["type"] == "error"]) == 1  # one error per interval, not one per frame
        await ws.close()

    run(main())


def test_server_pulls_an_http_video_and_refuses_files(make_server, http_folder, bikes_path, tmp_path):
    from tests import media

    media.remux(bikes_path, tmp_path / "bikes.mp4", {"movflags": "faststart"})  # the stdlib server has no Range
    base = http_folder(tmp_path)
    srv = make_server(max_fps=10.0)

    async def main():
        ws = await WS.open(srv.url)
        eid = await ws.send({"type": "input_source.set", "url": "file:///etc/passwd"})
        err = await ws.error(eid)
        assert err["code"] == "scheme_not_allowed" and err["scheme"] == "file"
        eid = await ws.send({"type": "input_source.set", "url": str(bikes_path)})
        assert (await ws.error(eid))["code"] == "scheme_not_allowed"
        eid = await ws.send({"type": "input_source.set", "url": "ftp://127.0.0.1/x.mp4"})
        err = await ws.error(eid)
        assert err["code"] == "scheme_not_allowed" and "ftp" in err["message"]
        eid = await ws.send({"type": "input_source.set", "url": f"{base}/missing.mp4"})
        err = await ws.error(eid)
        assert err["code"] == "source_error" and err["source_error"] == "SourceNotFound"
        eid = await ws.send({"type": "input_source.set", "url": f"{base}/bikes.mp4", "fps": 5, "realtime": False})
        started = await ws.expect("input_source.started")
        assert started["reply_to"] == eid and started["source"]["duration_s"] == pytest.approx(10.0)
        ended = await ws.expect("input_source.ended", timeout=120)
        assert ended["reason"] == "end of stream" and ended["frames"] == 50
        sid = ws.created["session"]["id"]
        wait_for(srv.manager.scheduler.idle)
        st = srv.manager.stats(sid)
        assert st["ingest"]["frames_processed"] == 50 and st["ingest"]["dropped_total"] == 0  # realtime=False: no drops
        assert st["source"]["finished"] and st["source"]["fraction"] == 1.0 and st["source"]["error"] is None
        _, resp = await ws.ask("What did you see?", max_output_tokens=2)
        assert max(e["t_end"] for e in resp["evidence"]) == pytest.approx(9.8)
        eid = await ws.send({"type": "input_source.stop"})
        assert (await ws.error(eid))["code"] == "invalid_event"  # nothing runs any more
        await ws.close()

    run(main())


def test_python_client_round_trip(ws_server, bikes_frames):
    async def main():
        async with LiveSightClient(ws_server.url) as client:
            session = await client.update(max_new_tokens=4, evidence_thumbnails=False)
            assert session["max_new_tokens"] == 4
            await client.send_frame(bikes_frames[0].rgb, pts=0.0)
            await client.send_frame_base64(encode_jpeg(bikes_frames[12].rgb), pts=0.5)
            committed = await client.send_text("The rider wears a helmet.", pts=0.6)
            assert committed["tokens"] > 0
            pieces = [p async for p in client.ask("What does the rider wear?")]
            assert all(isinstance(p, str) for p in pieces[:-1]) and isinstance(pieces[-1], dict)
            final = pieces[-1]
            assert final["output_text"] == "".join(pieces[:-1]).strip() and final["evidence"]
            rule = await client.watch("a rider falls")
            assert rule["rule_id"] and rule["text"] == "a rider falls"
            await client.unwatch(rule["rule_id"])
            with pytest.raises(LiveSightError) as info:
                await client.unwatch(rule["rule_id"])
            assert info.value.code == "invalid_event"
            with pytest.raises(LiveSightError) as info:
                await client.update(window_tokens=-5)
            assert info.value.code == "invalid_config"
            stats = await client.stats()
            assert stats["answers"] == 1 and stats["ingest"]["frames_submitted"] == 2

    run(main())


def test_an_idle_session_expires_and_its_connection_closes(make_server):
    srv = make_server(session_ttl_s=0.5)

    async def main():
        ws = await WS.open(srv.url)
        closed = await ws.expect("session.closed", timeout=30)
        assert closed["reason"] == "expired"
        with pytest.raises(ConnectionClosed) as info:
            await ws.recv(10)
        assert info.value.rcvd.code == 1000 and "expired" in info.value.rcvd.reason

    run(main())
    assert srv.manager.sessions() == []
