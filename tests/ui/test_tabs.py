"""One session per tab: the registry over a real SessionManager (tiny-smolvlm), webcam frames on
the tab's clock, the alert buffer fed by the manager's events, and answers streamed through a queue."""

from __future__ import annotations

import time

import numpy as np
import pytest

from ui.answers import stream_answer
from ui.tabs import TabRegistry


@pytest.fixture
def manager(ui_backend):
    from app.engine.config import SessionConfig
    from app.serving.limits import ManagerConfig
    from app.serving.manager import SessionManager

    mgr = SessionManager(ui_backend, ManagerConfig(max_sessions=4, max_fps=50.0,
                                                   default_session=SessionConfig(max_new_tokens=16)))
    yield mgr
    mgr.shutdown()


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_one_session_per_hash_recreated_when_closed(manager):
    tabs = TabRegistry(manager, {"top_k": 2})
    a = tabs.resolve(None, "hash-a")
    assert tabs.resolve(None, "hash-a") == a == tabs.resolve(a, "hash-a")
    b = tabs.resolve(None, "hash-b")
    assert b != a and set(manager.sessions()) == {a, b}
    assert manager.session_config(a).top_k == 2  # the page's overrides
    assert tabs.resolve(None, "hash-c", create=False) is None

    manager.close_session(a, reason="expired")  # e.g. the manager's idle TTL
    a2 = tabs.resolve(a, "hash-a")
    assert a2 != a and tabs.sessions()["hash-a"] == a2

    tabs.release_hash("hash-a")                 # the tab went away
    assert a2 not in manager.sessions() and "hash-a" not in tabs.sessions()
    tabs.release_state(b)                       # the gr.State expired
    assert manager.sessions() == []
    tabs.release_state(None)                    # nothing to do, no error
    tabs.release_hash("never-seen")


def test_reset_replaces_the_session_and_bad_settings_keep_the_old_one(manager):
    from app.engine.config import ConfigError

    tabs = TabRegistry(manager)
    old = tabs.resolve(None, "h")
    with pytest.raises(ConfigError, match="kv_bits"):
        tabs.reset(old, "h", {"kv_bits": 3})
    assert manager.sessions() == [old] and tabs.sessions() == {"h": old}
    new = tabs.reset(old, "h", {"kv_bits": 4})
    assert manager.sessions() == [new] and tabs.sessions() == {"h": new}
    assert manager.session_config(new).kv_bits == 4


def test_webcam_frames_use_the_tab_clock(manager):
    tabs = TabRegistry(manager)
    sid = tabs.resolve(None, "cam")
    manager.get(sid)  # build the session now, so the frames find the model ready
    tab = tabs.tab(sid)
    rng = np.random.default_rng(0)
    for i in range(3):
        image = rng.integers(0, 256, (48, 64, 4 if i == 1 else 3), dtype=np.uint8)  # RGBA: alpha dropped
        assert tabs.webcam_frame(tab, image)
        time.sleep(0.15)
    sent = time.monotonic()
    assert tab.frames_sent == 3 and tab.webcam_active(sent)
    assert tab.webcam_fps(sent) == pytest.approx(1.5)  # 3 frames in the last 2 s
    assert not tab.webcam_active(sent + 5) and tab.webcam_fps(sent + 5) is None

    def settled():  # newest wins: a frame the model had no time for is replaced (a backlog drop)
        ingest = manager.stats(sid)["ingest"]
        return ingest["frames_processed"] + ingest["dropped"]["backlog"] == 3

    _wait(settled, 60, "3 frames processed or replaced")
    pts = [p for p, _ in manager.kept_history(sid)]
    assert pts and 0.0 <= pts[0] and pts[-1] < 0.3 * 2 + 0.5           # seconds since the first frame
    assert all(0.1 < b - a < 1.0 for a, b in zip(pts, pts[1:]))

    for bad in (np.zeros((48, 64), np.uint8), np.zeros((48, 64, 3), np.float32), np.zeros((0, 64, 3), np.uint8)):
        with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
            tabs.webcam_frame(tab, bad)
    from app.serving.errors import FrameTooLarge

    with pytest.raises(FrameTooLarge, match="max_frame_side"):
        tabs.webcam_frame(tab, np.zeros((16, manager.config.max_frame_side + 2, 3), np.uint8))
    assert tab.frames_sent == 3


def test_alert_events_are_buffered_for_the_feed(manager):
    tabs = TabRegistry(manager)
    sid = tabs.resolve(None, "h")
    tab = tabs.tab(sid)
    tabs._on_event(tab, {"type": "alert.triggered", "rule_id": "r1", "rule": "a person enters", "pts": 4.5,
                         "answer": "Yes", "wall": 1.0, "session_id": sid})
    tabs._on_event(tab, {"type": "input_video.stats", "stats": {}})
    tabs._on_event(tab, {"type": "alert.triggered", "rule": "missing id"})  # malformed: ignored
    assert [a.rule for a in tabs.alerts(tab)] == ["a person enters"] and tabs.alerts(tab)[0].pts == 4.5
    assert [a.rule_id for a in tabs.new_alerts(tab)] == ["r1"]
    assert tabs.new_alerts(tab) == []
    tabs._on_event(tab, {"type": "input_source.error", "source": "rtsp://x", "error": {"message": "gone"}})
    assert tab.events[-1]["error"]["message"] == "gone"


def test_stream_answer_yields_growing_text_then_the_answer(manager):
    from app.engine.types import Answer
    from app.serving.errors import ResponseInProgress
    from streaming.frame import Frame

    sid = manager.create_session()
    manager.submit_frame(sid, Frame(0, 0.0, time.time(), np.full((64, 64, 3), 90, np.uint8)))
    steps = list(stream_answer(manager, sid, "What is there?", min_interval_s=0.0))
    texts, answer = steps[:-1], steps[-1]
    assert isinstance(answer, Answer) and texts and all(isinstance(t, str) for t in texts)
    assert all(len(a) < len(b) for a, b in zip(texts, texts[1:]))
    assert " ".join(answer.text.split()).startswith(" ".join(texts[0].split()))
    assert answer.usage["completion_tokens"] == 16

    # closing the generator early cancels the answer in the manager
    gen = stream_answer(manager, sid, "Again?", max_new_tokens=4000, min_interval_s=0.0)
    next(gen)
    assert manager.answering(sid)
    gen.close()
    _wait(lambda: not manager.answering(sid), 30, "the cancelled answer to stop")
    assert manager.stats(sid)["answers"] == 2  # the cancelled one finished early (stop_reason "cancelled")

    # one answer at a time per session: the manager's refusal reaches the caller
    first = stream_answer(manager, sid, "Long one?", max_new_tokens=4000, min_interval_s=0.0)
    next(first)
    with pytest.raises(ResponseInProgress):
        next(stream_answer(manager, sid, "Second?"))
    first.close()


def test_microphone_pieces_continue_the_tab_clock_as_mono(ui_backend):
    from app.engine.speech import ASRConfig
    from app.serving.errors import SpeechOff
    from app.serving.limits import ManagerConfig
    from app.serving.manager import SessionManager
    from streaming.errors import InvalidAudio

    mgr = SessionManager(ui_backend, ManagerConfig(asr=ASRConfig()))
    try:
        tabs = TabRegistry(mgr)
        tab = tabs.tab(tabs.resolve(None, "mic"))
        stereo = np.zeros((24000, 2), np.int16)  # 0.5 s at 48 kHz, as the browser records
        first = tabs.mic_audio(tab, 48000, stereo)
        second = tabs.mic_audio(tab, 48000, stereo)
        assert first == 0.0 and second == pytest.approx(0.5)  # back to back on the tab's clock
        audio = mgr.stats(tab.sid)["audio"]
        assert audio["pushed"]["chunks"] == 2 and audio["audio_s"] == pytest.approx(1.0, abs=0.01)
        # a piece that arrives long after the last one ended starts at its arrival
        tab.clock_start -= 5.0
        assert tabs.mic_audio(tab, 16000, np.zeros(8000, np.float32)) == pytest.approx(5.0, abs=0.5)
        with pytest.raises(ValueError, match="microphone piece"):
            tabs.mic_audio(tab, 16000, np.zeros((2, 3, 4), np.int16))
        with pytest.raises(InvalidAudio, match="rate"):
            tabs.mic_audio(tab, 4000, np.zeros(800, np.int16))
        assert tab.mic_pieces == 3 and tab.mic_refused == 1
    finally:
        mgr.shutdown()
    off = SessionManager(ui_backend, ManagerConfig())
    try:
        tabs = TabRegistry(off)
        tab = tabs.tab(tabs.resolve(None, "no-mic"))
        with pytest.raises(SpeechOff):
            tabs.mic_audio(tab, 16000, np.zeros(800, np.int16))
    finally:
        off.shutdown()
