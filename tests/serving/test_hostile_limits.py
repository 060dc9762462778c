"""Hostile clients against a real server on 127.0.0.1 (issue 14: image bombs, per-connection bounds,
fairness between sessions). Each websocket case measures a second, healthy session alongside: its
pings stay under 1 s and its answers keep coming while the hostile client does its worst."""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import resource
import socket
import struct
import time
import zlib

import pytest

from tests.serving.conftest import WS, run
from tests.serving.test_hostile import LONG_ANSWER_TOKENS, ping_s


@functools.lru_cache(maxsize=None)
def png_bomb(side: int) -> bytes:
    """A valid greyscale PNG of ``side`` x ``side`` black pixels: tiny on the wire (zlib squeezes the
    zero rows), ``side``**2 * 3 bytes once decoded to RGB."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    comp = zlib.compressobj(9)
    row = b"\0" * (side + 1)  # filter byte + pixels
    body = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --------------------------------------------------------------------------- item 2: image bombs

def test_an_image_bomb_is_refused_from_its_header_before_decoding(make_server):
    srv = make_server(max_fps=50.0, max_frame_side=1920)
    bomb = png_bomb(16000)  # about 250 KB; 768 MB as RGB
    assert len(bomb) < 1_000_000

    async def go():
        a = await WS.open(srv.url)
        b = await WS.open(srv.url)
        rss0 = max_rss_mb()
        ids = [await a.send({"type": "input_video.append", "image": base64.b64encode(bomb).decode()}) for _ in range(3)]
        errors = [await a.error(i, timeout=30) for i in ids]
        pings = [await ping_s(b) for _ in range(3)]
        _, answer = await b.ask("Anything?")
        grew = max_rss_mb() - rss0
        stats = srv.manager.stats(a.created["session"]["id"])
        await a.close()
        await b.close()
        return errors, pings, answer, grew, stats

    errors, pings, answer, grew, stats = run(go())
    assert [e["code"] for e in errors] == ["frame_too_large"] * 3
    assert "16000x16000" in errors[0]["message"] and "before decoding" in errors[0]["message"]
    assert grew < 300, f"the server's peak memory grew {grew:.0f} MB: the bomb was decoded"
    assert stats["ingest"]["frames_submitted"] == 0
    assert max(pings) < 1.0 and answer["status"] in ("completed", "incomplete")


def test_an_image_over_the_pixel_limit_is_refused_even_within_the_side_limit(make_server, bikes_frames):
    import cv2

    srv = make_server(max_fps=50.0, max_frame_side=1920, max_frame_pixels=100_000)
    rgb = bikes_frames[0].rgb
    big = cv2.resize(rgb, (480, 480))  # 230400 pixels, each side under 1920
    ok, jpeg = cv2.imencode(".jpg", big)
    assert ok

    async def go():
        a = await WS.open(srv.url)
        assert a.created["limits"]["max_frame_pixels"] == 100_000
        eid = await a.send({"type": "input_video.append", "image": base64.b64encode(jpeg.tobytes()).decode()})
        err = await a.error(eid)
        await a.close()
        return err

    err = run(go())
    assert err["code"] == "frame_too_large" and "max_frame_pixels=100000" in err["message"]


def test_a_pulled_source_over_the_pixel_limit_is_refused_when_it_opens(make_server, bikes_path):
    srv = make_server(max_frame_pixels=100_000, allow_file_sources=True)  # bikes.mp4 is 640x272

    async def go():
        a = await WS.open(srv.url)
        eid = await a.send({"type": "input_source.set", "url": str(bikes_path)})
        err = await a.error(eid)
        _, answer = await a.ask("Still here?")
        await a.close()
        return err, answer

    err, answer = run(go())
    assert err["code"] == "frame_too_large" and "640x272" in err["message"]
    assert answer["status"] in ("completed", "incomplete")


def test_the_push_source_checks_the_header_before_decoding():
    from streaming.errors import InvalidFrame
    from streaming.imageops import ImageTooLarge, decode_image, image_size
    from streaming.push_source import PushSource

    bomb = png_bomb(16000)
    assert image_size(bomb) == (16000, 16000)
    with pytest.raises(ImageTooLarge, match="16000x16000"):
        decode_image(bomb, max_side=4096)
    src = PushSource(max_pixels=1920 * 1080)
    try:
        rss0 = max_rss_mb()
        with pytest.raises(InvalidFrame, match="16000x16000.*max_pixels=2073600"):
            src.push(bomb)
        assert max_rss_mb() - rss0 < 300
    finally:
        src.close()


# --------------------------------------------------------------------------- item 3: per-connection bounds

def test_a_client_that_never_reads_is_disconnected_by_bytes(make_server):
    srv = make_server(max_fps=50.0, server={"send_queue_bytes": 256 * 1024, "send_queue": 1_000_000,
                                            "max_messages_per_s": 100_000})

    async def go():
        from websockets.asyncio.client import connect
        from websockets.exceptions import ConnectionClosed

        b = await WS.open(srv.url)
        # the library stops reading the socket once one message waits unread: a client that never reads
        hostile = await connect(srv.url, max_size=None, compression=None, max_queue=1)
        sid = json.loads(await hostile.recv())["session"]["id"]
        item = {"type": "conversation.item.create",
                "item": {"role": "user", "content": [{"type": "input_text", "text": "x" * 3000}]}}
        sent = 0
        try:
            for i in range(20000):  # each reply (not merged: it answers an event id) is a few hundred bytes
                await asyncio.wait_for(hostile.send(json.dumps({"type": "session.stats", "event_id": f"s{i}"})), 5)
                sent += 1
                if sent % 50 == 0:
                    await asyncio.wait_for(hostile.send(json.dumps(item)), 5)
                    if sid not in srv.manager.sessions():
                        break
        except (ConnectionClosed, asyncio.TimeoutError, OSError):
            pass
        deadline = time.monotonic() + 20
        while sid in srv.manager.sessions() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        gone = sid not in srv.manager.sessions()
        pings = [await ping_s(b) for _ in range(3)]
        _, answer = await b.ask("Anything?")
        await b.close()
        try:
            await asyncio.wait_for(hostile.close(), 3)
        except Exception:  # noqa: BLE001 - it was cut off
            pass
        return gone, sent, pings, answer

    gone, sent, pings, answer = run(go())
    assert gone, "the never-reading client is still connected"
    assert srv.stats()["slow_clients"] >= 1
    assert max(pings) < 1.0 and answer["status"] in ("completed", "incomplete")


def test_user_items_are_bounded_in_count_and_size_and_not_kept_after_refusal(make_server):
    from app.engine.session import MAX_QUESTION_CHARS

    srv = make_server(server={"max_items": 3})

    def item(text: str) -> dict:
        return {"type": "conversation.item.create", "item": {"role": "user", "content": [{"type": "input_text",
                                                                                          "text": text}]}}

    async def go():
        a = await WS.open(srv.url)
        assert a.created["limits"]["max_items"] == 3
        for _ in range(3):
            await a.send(item("Is anyone there?"))
            await a.expect("conversation.item.created")
        fourth = await a.error(await a.send(item("one more")))
        _, answer = await a.ask("Plain question")  # response.input: the items still wait
        await a.send({"type": "response.create"})
        done = await a.expect("response.done")
        # the items were used up: a bare response.create has nothing to ask
        empty = await a.error(await a.send({"type": "response.create"}))
        huge = await a.error(await a.send(item("y" * (MAX_QUESTION_CHARS + 1))))
        await a.send(item("z" * (MAX_QUESTION_CHARS - 10)))
        await a.expect("conversation.item.created")
        over = await a.error(await a.send(item("w" * 20)))  # together over one question's limit
        await a.close()
        return fourth, answer, done, empty, huge, over

    fourth, answer, done, empty, huge, over = run(go())
    assert fourth["code"] == "invalid_event" and "max_items" in fourth["message"]
    assert answer["status"] in ("completed", "incomplete")
    assert done["response"]["question"] == "Is anyone there?\nIs anyone there?\nIs anyone there?"
    assert empty["code"] == "invalid_event" and "needs a question" in empty["message"]
    assert {huge["code"], over["code"]} == {"invalid_event"}
    assert str(MAX_QUESTION_CHARS) in over["message"]


# --------------------------------------------------------------------------- item 4: fairness

def test_a_long_answer_elsewhere_does_not_hold_up_a_healthy_sessions_answers_and_frames(make_server, bikes_frames):
    from app.serving.protocol import pack_frame

    srv = make_server(max_fps=50.0)
    import cv2

    jpegs = [cv2.imencode(".jpg", cv2.cvtColor(f.rgb, cv2.COLOR_RGB2BGR))[1].tobytes() for f in bikes_frames[:40]]

    async def go():
        a = await WS.open(srv.url)
        b = await WS.open(srv.url)
        await b.send(pack_frame(jpegs[0], 0.0))  # b's session is built before the long answer starts
        await b.ask("Warm up")
        await a.send({"type": "response.create", "response": {"input": "Describe everything at length.",
                                                               "max_output_tokens": LONG_ANSWER_TOKENS}})
        await a.expect("response.output_text.delta")
        sid_b = b.created["session"]["id"]
        before = srv.manager.stats(sid_b)["ingest"]["frames_processed"]
        pings, answers = [], []
        for i, jpeg in enumerate(jpegs[1:21]):
            await b.send(pack_frame(jpeg, 0.1 * (i + 1)))
            await asyncio.sleep(0.05)
        for _ in range(3):
            pings.append(await ping_s(b))
            _, answer = await b.ask("What now?", max_output_tokens=4)
            answers.append(answer)
        processed = srv.manager.stats(sid_b)["ingest"]["frames_processed"] - before
        a_answering = srv.manager.answering(a.created["session"]["id"])
        await a.send({"type": "response.cancel"})
        await a.expect("response.done", timeout=120)
        await a.close()
        await b.close()
        return pings, answers, processed, a_answering

    pings, answers, processed, a_answering = run(go())
    assert a_answering, "the long answer ended before the healthy session was served: the test proves nothing"
    assert [x["status"] in ("completed", "incomplete") for x in answers] == [True] * 3
    assert processed >= 1, "no frame of the healthy session ran during the long answer"
    assert max(pings) < 1.0, pings
    assert srv.manager.scheduler.stats()["yielded"] >= 3


def test_a_flood_of_text_events_does_not_starve_another_session(make_server, bikes_frames):
    import cv2

    from app.serving.protocol import pack_frame

    srv = make_server(max_fps=50.0)
    jpegs = [cv2.imencode(".jpg", cv2.cvtColor(f.rgb, cv2.COLOR_RGB2BGR))[1].tobytes() for f in bikes_frames[:10]]

    async def go():
        a = await WS.open(srv.url)
        b = await WS.open(srv.url)
        await b.send(pack_frame(jpegs[0], 0.0))
        await b.ask("Warm up")
        for i in range(300):
            await a.send({"type": "input_text.append", "text": f"note {i} " + "lorem ipsum " * 300, "pts": float(i)})
        sid_a, sid_b = a.created["session"]["id"], b.created["session"]["id"]
        before = srv.manager.stats(sid_b)["ingest"]["frames_processed"]
        answers = []
        for i, jpeg in enumerate(jpegs[1:4]):
            await b.send(pack_frame(jpeg, 0.5 * (i + 1)))
            _, answer = await b.ask("And now?", max_output_tokens=3, timeout=60)
            answers.append(answer)
        processed = srv.manager.stats(sid_b)["ingest"]["frames_processed"] - before
        left = srv.manager.stats(sid_a)["scheduler"]
        pings = [await ping_s(b) for _ in range(3)]
        await a.close()
        await b.close()
        return answers, processed, left, pings

    answers, processed, left, pings = run(go())
    assert len(answers) == 3
    assert processed >= 1
    assert left["pending"]["answer"] > 0, "the flood was over before the healthy session was served"
    assert max(pings) < 1.0, pings


# --------------------------------------------------------------------------- item 10: source hosts

def test_the_metadata_address_is_refused_at_once_and_others_are_not_held_up(ws_server):
    async def go():
        a = await WS.open(ws_server.url)
        b = await WS.open(ws_server.url)
        t0 = time.monotonic()
        eid = await a.send({"type": "input_source.set", "url": "http://169.254.169.254/latest/meta-data/"})
        err = await a.error(eid, timeout=5)
        took = time.monotonic() - t0
        pings = [await ping_s(b) for _ in range(2)]
        await a.close()
        await b.close()
        return err, took, pings

    err, took, pings = run(go())
    assert err["code"] == "host_not_allowed" and "169.254.169.254" in err["message"]
    assert took < 5 and max(pings) < 1.0


def test_a_narrowed_host_list_refuses_other_hosts(make_server, http_folder, bikes_path):
    from streaming.hosts import HostPolicy

    base = http_folder(bikes_path.parent)
    srv = make_server(source_hosts=HostPolicy(allow=("cams.example.com",)))

    async def go():
        a = await WS.open(srv.url)
        eid = await a.send({"type": "input_source.set", "url": f"{base}/bikes.mp4"})
        err = await a.error(eid, timeout=10)
        await a.close()
        return err

    err = run(go())
    assert err["code"] == "host_not_allowed" and "--source-hosts" in err["message"]


def remote_ip() -> str | None:
    """An address of this machine beyond loopback (a client from it is not local), or None."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the outgoing interface
        ip = s.getsockname()[0]
    except OSError:
        return None
    finally:
        s.close()
    return None if ip.startswith("127.") else ip


def test_remote_clients_cannot_tell_a_closed_port_from_a_silent_host(make_server, silent_server):
    ip = remote_ip()
    if ip is None:
        pytest.skip("this machine has no address beyond loopback")
    srv = make_server(source_open_timeout_s=1.5, token="s3cret-token",
                      server={"host": ip, "max_source_opens": 4})
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    closed_port = closed.getsockname()[1]  # bound, never listening: connections are refused
    urls = [f"http://127.0.0.1:{closed_port}/cam.mp4", f"http://127.0.0.1:{silent_server}/cam.mp4"]

    async def go():
        out = []
        for url in urls:
            a = await WS.open(srv.url, additional_headers={"Authorization": "Bearer s3cret-token"})
            t0 = time.monotonic()
            err = await a.error(await a.send({"type": "input_source.set", "url": url}), timeout=30)
            out.append((err, time.monotonic() - t0))
            await a.close()
        return out

    try:
        (refused, t_refused), (silent, t_silent) = run(go())
    finally:
        closed.close()
    assert refused["source_error"] == silent["source_error"] == "SourceUnreachable"
    strip = lambda m: m.split(": ", 1)[-1]  # noqa: E731 - the messages differ only in the URL
    assert strip(refused["message"]) == strip(silent["message"]), (refused, silent)
    assert "refused" not in refused["message"]
    assert t_refused >= 1.4, "a refused port answers faster than a silent host"


# --------------------------------------------------------------------------- item 8: persisted memories

def test_a_websocket_sessions_memory_is_reopenable_and_a_second_session_gets_a_clear_error(make_server, bikes_frames,
                                                                                           tmp_path, backend):
    import cv2

    from app.engine.persistence import SESSION_FILE
    from app.engine.session import Session
    from app.serving.protocol import pack_frame

    srv = make_server(max_fps=50.0, allow_file_sources=True)
    memory = tmp_path / "memory"
    jpegs = [cv2.imencode(".jpg", cv2.cvtColor(f.rgb, cv2.COLOR_RGB2BGR))[1].tobytes() for f in bikes_frames[:6]]

    async def go():
        a = await WS.open(srv.url)
        await a.send({"type": "session.update", "session": {"memory_dir": str(memory), "persist": True}})
        await a.expect("session.updated")
        for i, jpeg in enumerate(jpegs):
            await a.send(pack_frame(jpeg, 0.5 * i))
        sid = a.created["session"]["id"]
        deadline = time.monotonic() + 60
        while srv.manager.stats(sid)["ingest"]["frames_processed"] < 1 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await a.close()
        deadline = time.monotonic() + 60
        while not (memory / SESSION_FILE).is_file() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)  # the memory is saved as the session closes, off the event loop
        b = await WS.open(srv.url)
        eid = await b.send({"type": "session.update", "session": {"memory_dir": str(memory), "persist": True}})
        err = await b.error(eid)
        _, answer = await b.ask("Still fine?")
        await b.close()
        return err, answer

    err, answer = run(go())
    assert (memory / SESSION_FILE).is_file(), "the memory was not saved with session.json on disconnect"
    reopened = Session.open_memory(backend, memory)
    try:
        assert reopened.stats()["bank_chunks"] >= 1  # the window's last frames were banked
        assert reopened.answer("What was there?", max_new_tokens=3).text is not None
    finally:
        reopened.close()
    assert err["code"] == "invalid_config" and "holds a saved memory" in err["message"]
    assert "livesight ask --memory" in err["message"]
    assert answer["status"] in ("completed", "incomplete")


def test_a_message_flood_is_paced_for_that_client_only(make_server):
    srv = make_server(server={"max_messages_per_s": 50})

    async def go():
        a = await WS.open(srv.url)
        b = await WS.open(srv.url)
        assert a.created["limits"]["max_messages_per_s"] == 50
        ids = [await a.send({"type": "session.stats"}) for _ in range(150)]
        pings = [await ping_s(b) for _ in range(3)]
        await b.send({"type": "session.stats"})
        await b.expect("input_video.stats", timeout=5)  # b is not paced behind a's flood
        replies = [await a.expect("input_video.stats", where=lambda e, i=i: e.get("reply_to") == i) for i in ids]
        await a.close()
        await b.close()
        return pings, replies

    pings, replies = run(go())
    assert len(replies) == 150  # every message is served, later
    assert srv.stats()["paced"] >= 50
    assert max(pings) < 1.0
