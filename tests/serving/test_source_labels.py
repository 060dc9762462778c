"""Evidence names its source (issue 14): each input a session takes (a played file, a second file,
frames pushed over the websocket, notes) is labelled on every frame and memory chunk it produces, the
labels survive a save and a reopen, and the websocket API's answers carry them. A stream whose frame
size changes mid-way keeps working, and a redirect to a denied host is refused over the API. Real
tiny model, real PyAV, real websocket clients on loopback."""

from __future__ import annotations

import http.server
import threading
import time

import numpy as np
import pytest

from app.engine.config import SessionConfig
from app.engine.session import Session
from app.serving.client import encode_jpeg
from app.serving.protocol import pack_frame
from streaming.frame import Frame

from .conftest import WS, run, wait_for

#: Two frames' worth of window (a frame step of the tiny model is 29 tokens): the rest goes to memory.
SMALL = SessionConfig(max_new_tokens=2, window_tokens=64, top_k=64, chunk_frames=1)


@pytest.fixture(scope="module")
def carphone_path(bikes_path):
    return bikes_path.with_name("carphone_pristine.mp4")


def play(m, sid, path, fps):
    m.set_source(sid, str(path), fps=fps, realtime=False)
    return wait_for(lambda: (p := m.source_progress(sid)) and p["finished"] and p, timeout=120)


def caught_up(m, sid):
    wait_for(m.scheduler.idle, timeout=60)
    wait_for(lambda: m.stats(sid)["frames"] >= m.stats(sid)["ingest"]["frames_processed"], timeout=30)


async def processed(ws, n: int, timeout: float = 60.0) -> dict:
    """Wait, reading the connection (a client that stops reading is disconnected), until the session's
    model has taken ``n`` frames; returns its stats."""
    deadline = time.monotonic() + timeout
    while True:
        eid = await ws.send({"type": "session.stats"})
        stats = (await ws.expect("input_video.stats", where=lambda e, eid=eid: e.get("reply_to") == eid))["stats"]
        if stats["ingest"]["frames_processed"] >= n and stats["frames"] >= stats["ingest"]["frames_processed"]:
            return stats
        assert time.monotonic() < deadline, f"only {stats['ingest']['frames_processed']} of {n} frames processed"
        try:  # keep reading while the model works
            ws.unread.append(await ws.recv(0.2))
        except TimeoutError:
            pass


def by_label(evidence):
    out: dict[str | None, list] = {}
    for e in evidence:
        out.setdefault(e.input_source, []).append(e)
    return out


def test_a_session_watching_two_files_then_pushed_frames_names_each_in_its_evidence(make_manager, bikes_path,
                                                                                     carphone_path, bikes_frames):
    m = make_manager(allow_file_sources=True, max_fps=10.0, default_session=SMALL)
    sid = m.create_session()
    first = play(m, sid, bikes_path, fps=1)  # 10 s: frames at 0..9 s
    second = play(m, sid, carphone_path, fps=2)  # its own 0..4 s continue the session's clock after bikes
    assert (first["label"], second["label"]) == ("file bikes.mp4", "file carphone_pristine.mp4")
    caught_up(m, sid)
    t0 = m.stats(sid)["stream_time_s"] + 1.0
    for i in range(3):
        assert m.offer_frame(sid, Frame(i, t0 + i, time.time(), bikes_frames[40 * i].rgb)).accepted
        caught_up(m, sid)
    m.submit_text(sid, t0 + 2.5, "The rider waves.").result(60)
    answer = m.ask(sid, "What did you see?").result(120)

    memory = [e for e in answer.evidence if e.source == "memory"]
    groups = by_label(memory)
    assert set(groups) == {"file bikes.mp4", "file carphone_pristine.mp4", "websocket frames"}
    bikes, car, pushed = groups["file bikes.mp4"], groups["file carphone_pristine.mp4"], groups["websocket frames"]
    assert len(bikes) == 10 and len(car) >= 6
    assert max(e.t_end for e in bikes) < min(e.t_start for e in car) <= max(e.t_end for e in car) < min(e.t_start for e in pushed)
    for group in groups.values():  # within one source, spans never go backwards
        assert all(e.t_start <= e.t_end for e in group)
        assert [e.t_start for e in group] == sorted(e.t_start for e in group)
    window = [e for e in answer.evidence if e.source == "window"]
    assert window and window[-1].input_source == "websocket frames + note" and window[-1].kind == "mixed"
    assert window[-1].t_start <= window[-1].t_end == pytest.approx(t0 + 2.5)
    # the bank's own chunks carry the label (what a save writes)
    session = m.get(sid)
    labels = {meta.extra.get("source") for meta in session.bank.metas()}
    assert labels == {"file bikes.mp4", "file carphone_pristine.mp4", "websocket frames"}


def test_window_evidence_splits_where_the_input_changes_and_labels_survive_save_and_reopen(backend, bikes_frames,
                                                                                            tmp_path):
    cfg = SessionConfig(max_new_tokens=2, window_tokens=120, top_k=64, memory_dir=str(tmp_path / "mem"), persist=True)
    with Session(backend, cfg) as s:
        s.set_input_source("webcam")
        for i in range(4):
            s.ingest(bikes_frames[10 * i])
        s.set_input_source("file bikes.mp4")
        for i in range(4, 6):
            s.ingest(Frame(i, float(i), 0.0, bikes_frames[10 * i].rgb))
        s.ingest_text(5.5, "A note.")
        live = s.answer("What now?")
        s.save()
    memory = [e.input_source for e in live.evidence if e.source == "memory"]
    window = [(e.input_source, e.kind, e.t_start, e.t_end) for e in live.evidence if e.source == "window"]
    assert memory and set(memory) == {"webcam"}
    assert [w[0] for w in window] in (["webcam", "file bikes.mp4 + note"], ["file bikes.mp4 + note"])
    assert window[-1][1:] == ("mixed", 4.0, 5.5)
    with Session.open_memory(backend, tmp_path / "mem", SessionConfig(max_new_tokens=2, top_k=64)) as reopened:
        again = reopened.answer("What was there?")
    labels = [(e.input_source, e.kind) for e in again.evidence if e.source == "memory"]
    assert ("webcam", "frame") in labels and ("file bikes.mp4", "frame") in labels and ("note", "text") in labels
    assert all(e.t_start <= e.t_end for e in again.evidence)


def test_the_websocket_api_names_the_source_of_each_evidence_item(make_server, bikes_path, bikes_frames):
    srv = make_server(max_fps=20.0, allow_file_sources=True, default_session=SMALL)

    async def main():
        ws = await WS.open(srv.url)
        await ws.send({"type": "session.update", "session": {"evidence_thumbnails": False}})
        await ws.expect("session.updated")
        eid = await ws.send({"type": "input_source.set", "url": str(bikes_path), "fps": 1, "realtime": False})
        await ws.expect("input_source.started", where=lambda e: e.get("reply_to") == eid)
        ended = await ws.expect("input_source.ended", timeout=120)
        assert ended["frames"] == 10
        for i in range(3):  # then the client's own camera
            await ws.send(pack_frame(encode_jpeg(bikes_frames[100 + i].rgb), 20.0 + i))
            await processed(ws, 11 + i)
        _, resp = await ws.ask("What did you see?", max_output_tokens=2)
        await ws.close()
        return resp

    resp = run(main())
    sources = {(e["source"], e["input_source"]) for e in resp["evidence"]}
    assert ("memory", "file bikes.mp4") in sources and ("window", "websocket frames") in sources
    assert all(e["t_start"] <= e["t_end"] for e in resp["evidence"])
    assert all("input_source" in e for e in resp["evidence"])


def test_pushed_frames_that_change_size_mid_stream_are_ingested_or_refused_one_by_one(make_server, bikes_frames):
    srv = make_server(max_fps=50.0, max_frame_side=320)

    async def main():
        ws = await WS.open(srv.url)
        small = bikes_frames[0].rgb  # 160x68
        portrait = np.ascontiguousarray(np.transpose(bikes_frames[50].rgb, (1, 0, 2)))  # 68x160
        too_big = np.zeros((200, 400, 3), np.uint8)  # wider than max_frame_side
        errors, taken = [], 0
        for i, img in enumerate([small, small, portrait, too_big, portrait, too_big, small]):
            await ws.send(pack_frame(encode_jpeg(img), float(i)))
            if img is too_big:
                errors.append(await ws.error(timeout=30))
            else:
                taken += 1
                await processed(ws, taken)
        _, resp = await ws.ask("Still there?", max_output_tokens=2)
        await ws.close()
        return errors, resp

    errors, resp = run(main())
    assert [e["code"] for e in errors] == ["frame_too_large"] * 2
    assert all("400x200" in e["message"] and "max_frame_side=320" in e["message"] for e in errors)
    assert resp["status"] in ("completed", "incomplete")


def test_a_pulled_file_that_switches_resolution_keeps_going_and_says_which_frames_it_refused(make_server, tmp_path):
    from tests.streaming.test_resolution_change import encode_segments

    clip = tmp_path / "switch.ts"
    clip.write_bytes(encode_segments((((320, 240), 10), ((640, 480), 10), ((240, 320), 10))))
    srv = make_server(max_fps=20.0, allow_file_sources=True, max_frame_pixels=320 * 240)

    async def main():
        ws = await WS.open(srv.url)
        await ws.send({"type": "input_source.set", "url": str(clip), "fps": 10, "realtime": False})
        ended = await ws.expect("input_source.ended", timeout=120)
        refused = [e for e in ws.seen if e["type"] == "input_source.frame_refused"]
        _, resp = await ws.ask("What changed?", max_output_tokens=2)
        await ws.close()
        return ended, refused, resp

    ended, refused, resp = run(main())
    assert ended["reason"] == "end of stream" and ended["frames"] == 20  # before and after the large stretch
    assert refused and refused[-1]["refused"] == 10 and refused[-1]["code"] == "frame_too_large"
    assert "640x480" in refused[-1]["message"] and "max_pixels=76800" in refused[-1]["message"]
    assert resp["status"] in ("completed", "incomplete")


def test_a_pulled_url_that_redirects_to_a_denied_host_is_refused_over_the_api(make_server):
    class Redirect(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - stdlib name
            self.send_response(302)
            self.send_header("Location", "http://169.254.169.254/latest/meta-data/")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    srv = make_server(max_fps=10.0)
    try:
        async def main():
            ws = await WS.open(srv.url)
            err = await ws.error(await ws.send({"type": "input_source.set",
                                                "url": f"http://127.0.0.1:{httpd.server_address[1]}/cam"}))
            await ws.close()
            return err

        err = run(main())
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert err["code"] == "host_not_allowed"
    assert "redirected to http://169.254.169.254/latest/meta-data/" in err["message"]
    assert "--source-hosts" in err["message"]


def test_ask_prints_the_source_of_each_moment():
    from app.cli.ask import format_evidence
    from app.engine.types import Evidence

    line = format_evidence([
        Evidence(t_start=1.0, t_end=2.0, source="memory", score=0.5, input_source="file bikes.mp4"),
        Evidence(t_start=3.0, t_end=3.0, source="memory", kind="text", score=0.4, text="hi", input_source="note"),
        Evidence(t_start=9.0, t_end=10.0, source="window", input_source="webcam + note"),
    ])
    assert line == ('00:01-00:02 (frame, memory, score 0.50) from file bikes.mp4; 00:03 (text "hi", memory, '
                    'score 0.40); 00:09-00:10 (recent window) from webcam + note')


def test_consolidation_keeps_a_chunks_source_label():
    """What a disk budget does to old memory (requantize, merge static neighbours) keeps the label."""
    import torch

    from memory.chunk import ChunkMeta, KVChunk
    from memory.consolidate import mark_consolidated, merge_chunks

    def chunk(i: int, label: str) -> KVChunk:
        g = torch.Generator().manual_seed(i)
        kv = torch.randn(2, 1, 4, 8, generator=g)
        meta = ChunkMeta(chunk_id=i, t_start=float(i), t_end=float(i), kind="frame", n_tokens=4, frame_indices=(i,),
                         extra={"content": [[0, 4]], "source": label})
        return KVChunk(meta=meta, keys=kv, values=kv.clone(), positions=torch.arange(4 * i, 4 * i + 4),
                       summary=torch.randn(16, generator=g))

    assert mark_consolidated(chunk(0, "webcam")).meta.extra["source"] == "webcam"
    merged = merge_chunks([chunk(1, "file bikes.mp4"), chunk(2, "file bikes.mp4")], token_similarity=0.99)
    assert merged.meta.extra["source"] == "file bikes.mp4" and merged.meta.t_end == 2.0
    assert ChunkMeta.from_json(merged.meta.to_json()).extra["source"] == "file bikes.mp4"
