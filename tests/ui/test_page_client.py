"""The page through ``gradio_client`` over real HTTP on 127.0.0.1: a real video file is uploaded
and played into the caller's session, answers stream and carry evidence (time ranges and JPEG
thumbnails), and every client gets its own session, closed when the client goes.
"""

from __future__ import annotations

import base64
import io
import socket

import pytest

from ui.render import MAX_EVIDENCE_CARDS, format_span

from .conftest import wait_until

pytestmark = [pytest.mark.network, pytest.mark.timeout(240)]


def _client(url: str):
    from gradio_client import Client

    return Client(url, verbose=False)


def _play(client, path) -> dict:
    """Upload ``path`` through the page and wait until the server has played all of it."""
    from gradio_client import handle_file

    status = client.predict(handle_file(str(path)), api_name="/play_video")
    assert "ls-error" not in status, status
    assert path.name in status

    def finished():  # the file ended, every frame it sent was processed (or replaced by a newer one),
        # and the session's cached stats (refreshed at most every snapshot interval) caught up with them
        stats = client.predict(api_name="/stats")
        progress, ingest = stats["source_progress"], stats["ingest"]
        settled = ingest["frames_processed"] + ingest["dropped"]["backlog"] + ingest["frame_errors"]
        caught_up = stats.get("frames", -1) >= ingest["frames_processed"]
        return stats if progress and progress["finished"] and settled == ingest["frames_accepted"] and caught_up else None

    return wait_until(finished, 60, "the uploaded video to finish playing")


def _words(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture(scope="module")
def played(page, synthetic_media):
    """A client whose session watched ``scene.mp4`` (2.4 s: static, moving square, hard cut)."""
    client = _client(page.url)
    stats = _play(client, synthetic_media.scene_mp4)
    yield client, stats
    client.close()


def test_public_endpoints_and_hidden_handlers(page):
    client = _client(page.url)
    try:
        api = client.view_api(print_info=False, return_format="dict")
        named = set(api["named_endpoints"])
        assert {"/chat", "/ask", "/stats", "/watch", "/unwatch", "/play_video", "/set_source", "/stop_source",
                "/settings", "/new_session"} <= named
        # the webcam stream, the stats timer and the page-load handler are not API endpoints
        assert not any("frame" in name or "tick" in name or "load" in name for name in named), named
        assert len(api["unnamed_endpoints"]) == 0
    finally:
        client.close()


def test_uploaded_video_is_played_as_a_live_stream(played, synthetic_media):
    client, stats = played
    progress = stats["source_progress"]
    assert progress["fraction"] == pytest.approx(1.0) and progress["error"] is None
    assert progress["duration_s"] == pytest.approx(2.4, abs=0.05)
    ingest = stats["ingest"]
    # sampled at the page's 4 fps by stream time over 2.4 s: frames at 0, 0.25, ..., 2.25; played live,
    # so a frame the model had no time for is replaced by the next one (newest wins, counted)
    assert progress["frames"] + ingest["dropped"]["source"] == 10
    assert ingest["frames_processed"] + ingest["dropped"]["backlog"] == progress["frames"]
    assert ingest["frame_errors"] == 0 and ingest["frames_processed"] >= 3
    assert ingest["last_pts"] == pytest.approx(2.24, abs=0.05)  # the last frame is never replaced
    pts = [p[0] for p in stats["kept_history"]]
    assert 3 <= len(pts) <= ingest["frames_processed"] and pts == sorted(pts)
    assert all(0.0 <= t <= 2.3 for t in pts)
    assert stats["memory_bytes"]["window"] > 0 and stats["bank_chunks"] >= 1


def test_ask_streams_and_carries_evidence(played):
    from PIL import Image

    client, stats = played
    job = client.submit("What moved across the scene?", api_name="/ask")
    outputs = [list(out) for out in job]
    final_text, details = job.result()
    partial = [text for text, info in outputs if not info["done"]]
    assert len(partial) >= 2, "the answer did not stream"
    assert all(len(a) <= len(b) for a, b in zip(partial, partial[1:]))
    assert all(_words(final_text).startswith(_words(text)) for text in partial)
    assert details["done"] and details["text"] == final_text and final_text.strip()
    assert details["usage"]["completion_tokens"] >= len(partial)

    evidence = details["evidence"]
    sources = [e["source"] for e in evidence]
    assert "memory" in sources and sources[-1] == "window"
    memory = [e for e in evidence if e["source"] == "memory"]
    assert [e["t_start"] for e in memory] == sorted(e["t_start"] for e in memory)  # time order
    assert all(e["score"] is not None and e["chunk_id"] is not None for e in memory)
    end = stats["stream_time_s"]
    for e in evidence:
        assert 0.0 <= e["t_start"] <= e["t_end"] <= end + 1e-6
        img = Image.open(io.BytesIO(base64.b64decode(e["thumbnail_jpeg_b64"])))
        assert img.format == "JPEG" and max(img.size) <= 96
    assert details["usage"]["retrieved_chunks"] == len(memory)


def test_chat_endpoint_streams_into_history_with_evidence(played):
    client, _ = played
    job = client.submit("What happened before the cut?", [], api_name="/chat")
    steps = [out for out in job]
    history, cleared, details = job.result()
    assert cleared == ""
    shown = [step[0][-1]["content"][0]["text"] for step in steps if step[0][-1]["role"] == "assistant"]
    partial = [text for text in shown if "▍" in text and text.replace("▍", "").strip()]
    assert partial, f"no partial answer was streamed into the chat: {shown}"
    assert [m["role"] for m in history] == ["user", "assistant"]
    bot = history[-1]["content"][0]["text"]
    assert "▍" not in bot and details["text"] and _words(details["text"][:20]) in _words(bot)
    evidence = details["evidence"]
    assert len(evidence) >= 2
    shown = min(len(evidence), MAX_EVIDENCE_CARDS)
    assert bot.count('<img class="ls-thumb" src="data:image/jpeg;base64,') == shown
    if len(evidence) > shown:
        assert f"+{len(evidence) - shown} more" in bot
    # the recent window is always among the cards, with its time range
    window = evidence[-1]
    assert window["source"] == "window" and "recent window" in bot
    assert f'<b class="ls-ts">{format_span(window["t_start"], window["t_end"])}</b>' in bot

    # the second turn hands the history back in Gradio 6's form (content as a list of parts)
    history2, _, details2 = client.predict("And after it?", history, api_name="/chat")
    assert [m["role"] for m in history2] == ["user", "assistant", "user", "assistant"]
    assert history2[0]["content"][0]["text"] == "What happened before the cut?"
    assert details2["question"] == "And after it?" and "ls-thumb" in history2[-1]["content"][0]["text"]


def test_each_client_has_its_own_session_closed_with_the_client(page):
    a, b = _client(page.url), _client(page.url)
    try:
        rule = a.predict("a person enters the room", api_name="/watch")
        assert rule["text"] == "a person enters the room" and [r["rule_id"] for r in rule["rules"]] == [rule["rule_id"]]
        sa, sb = a.predict(api_name="/stats"), b.predict(api_name="/stats")
        assert sa["session_id"] != sb["session_id"]
        assert sa["rules"] == [{"rule_id": rule["rule_id"], "text": "a person enters the room"}]
        assert sb["rules"] == []
        sessions = page.tabs.sessions()
        assert sessions[a.session_hash] == sa["session_id"] and sessions[b.session_hash] == sb["session_id"]
        # the same client keeps its session across calls
        assert a.predict(api_name="/stats")["session_id"] == sa["session_id"]
        removed = a.predict(rule["rule_id"], api_name="/unwatch")
        assert removed == {"removed": True, "rules": []}
    finally:
        a.close()
    # the client's heartbeat ends -> demo.unload closes its session; the other one stays
    wait_until(lambda: sa["session_id"] not in page.manager.sessions(), 20, "the closed client's session to close")
    try:
        assert sb["session_id"] in page.manager.sessions()
        assert b.predict(api_name="/stats")["session_id"] == sb["session_id"]
    finally:
        b.close()


def test_camera_url_errors_are_plain(page):
    client = _client(page.url)
    try:
        refused = client.predict("file:///etc/passwd", api_name="/set_source")
        # the problem in words, never a Python class name
        assert refused["ok"] is False and "local files are not allowed" in refused["message"]
        assert "SchemeNotAllowed" not in refused["message"]
        # the page keeps showing the error until the next source request
        assert "local files are not allowed" in client.predict(api_name="/stats")["page"]["source_error"]
        local = client.predict("/etc/hosts", api_name="/set_source")
        assert local["ok"] is False and "not allowed" in local["message"].lower()
        with socket.socket() as sock:  # a port nobody listens on
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        unreachable = client.predict(f"rtsp://127.0.0.1:{port}/cam", api_name="/set_source")
        assert unreachable["ok"] is False and unreachable["message"].startswith(f"rtsp://127.0.0.1:{port}/cam: ")
        assert "SourceUnreachable" not in unreachable["message"]
        empty = client.predict("  ", api_name="/set_source")
        assert empty["ok"] is False and "camera URL" in empty["message"]
        stats = client.predict(api_name="/stats")
        assert stats["source_progress"] is None and "camera URL" in stats["page"]["source_error"]
        assert client.predict(api_name="/stop_source")["stopped"] is True
        assert client.predict(api_name="/stats")["page"]["source_error"] is None
    finally:
        client.close()


def test_settings_apply_refuse_and_restart(page, synthetic_media):
    from gradio_client.exceptions import AppError

    client = _client(page.url)
    try:
        cfg = client.predict({"drop": "pixel", "kv_bits": 4, "top_k": 3}, api_name="/settings")
        assert (cfg["drop"], cfg["kv_bits"], cfg["top_k"]) == ("pixel", 4, 3)
        with pytest.raises(AppError, match="top_k"):
            client.predict({"top_k": -1}, api_name="/settings")
        with pytest.raises(AppError, match="no_such_setting"):
            client.predict({"no_such_setting": 1}, api_name="/settings")
        with pytest.raises(AppError, match="question"):
            client.predict("   ", api_name="/ask")
        with pytest.raises(AppError, match="watch rule"):
            client.predict("", api_name="/watch")

        first = client.predict(api_name="/stats")["session_id"]
        _play(client, synthetic_media.scene_mp4)
        stats = client.predict(api_name="/stats")
        # pixel drop was applied: the static opening's repeated frames skipped the vision tower
        assert page.manager.session_config(first).drop == "pixel"
        assert stats["frames_skipped"] >= 2 and stats["kept_ratio"] < 1.0
        # once the stream started, the drop mode is fixed; top-k still changes
        with pytest.raises(AppError, match="cannot change after"):
            client.predict({"drop": "off"}, api_name="/settings")
        assert client.predict({"top_k": 5}, api_name="/settings")["top_k"] == 5

        fresh = client.predict({"drop": "off", "window_tokens": 32}, api_name="/new_session")
        assert fresh["session_id"] != first and fresh["settings"]["window_tokens"] == 32
        assert first not in page.manager.sessions()
        assert client.predict(api_name="/stats")["session_id"] == fresh["session_id"]
    finally:
        client.close()


def test_a_client_cannot_make_the_server_play_a_local_file(page, synthetic_media):
    """/play_video takes uploads only: a FileData naming a server path that no one uploaded is
    refused by Gradio before the handler runs, and no source starts."""
    import httpx

    before = set(page.manager.sessions())
    base = page.url.rstrip("/")
    payload = {"data": [{"path": str(synthetic_media.scene_mp4), "meta": {"_type": "gradio.FileData"}}]}
    event = httpx.post(f"{base}/gradio_api/call/play_video", json=payload, timeout=10).json()["event_id"]
    with httpx.stream("GET", f"{base}/gradio_api/call/play_video/{event}", timeout=30) as stream:
        lines = [line for line in stream.iter_lines() if line]
    assert lines[0] == "event: error" and "not uploaded by a user" in lines[1]
    for sid in set(page.manager.sessions()) - before:
        assert page.manager.source_progress(sid) is None
