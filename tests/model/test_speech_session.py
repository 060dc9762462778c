"""Speech in the session (tiny model): ``ingest_speech`` prefills "Heard at MM:SS: ...", leaves the window as a
chunk of kind "speech" that is retrieved, cited with its words and time range, saved and reopened; and the
``vision`` setting: frames off the vision tower still advance the clock and are cited as the picture on screen."""

from __future__ import annotations

import pytest

from app.engine.config import ConfigError, SessionConfig
from app.engine.session import Session
from app.engine.types import SessionError
from streaming.frame import Frame

from .conftest import random_frames, step_length

SAID = "The licence plate is KL4 7XQ."


def _speech_then_notes(s: Session, n: int = 12) -> None:
    s.ingest_speech(2.0, 4.5, SAID)
    for i in range(n):
        s.ingest_text(5.0 + i, f"note number {i}")


def test_speech_leaves_the_window_and_is_retrieved_with_its_words(tiny_backend):
    cfg = SessionConfig(window_tokens=64, top_k=64, max_new_tokens=2)
    with Session(tiny_backend, cfg) as s:
        n = s.ingest_speech(2.0, 4.5, SAID)
        # what the model read: the words after their stream time
        assert n == tiny_backend.text_segment(SAID, 0, prefix="Heard at 00:02: ", suffix="\n").length
        for i in range(12):
            s.ingest_text(5.0 + i, f"note number {i}")
        speech = [m for m in s.bank.metas() if m.kind == "speech"]
        assert len(speech) == 1 and (speech[0].t_start, speech[0].t_end, speech[0].text) == (2.0, 4.5, SAID)
        assert all(it.kind == "text" for it in s._window)  # it left the window
        st = s.stats()
        ans = s.answer("What was the licence plate?")
    assert st["speech_events"] == 1 and st["text_events"] == 12 and st["stream_time_s"] == 16.0
    heard = [e for e in ans.evidence if e.kind == "speech"]
    assert len(heard) == 1
    e = heard[0]
    assert (e.source, e.t_start, e.t_end, e.text) == ("memory", 2.0, 4.5, SAID)
    d = ans.to_dict()["evidence"]
    assert any(x["kind"] == "speech" and x["text"] == SAID and x["t_end"] == 4.5 for x in d)


def test_speech_in_the_window_is_cited_as_speech(tiny_backend):
    with Session(tiny_backend, SessionConfig(top_k=0, max_new_tokens=1)) as s:
        s.ingest_speech(1.0, 2.0, "hello there")
        ans = s.answer("What was said?")
    (window,) = ans.evidence
    assert (window.source, window.kind, window.t_start, window.t_end) == ("window", "speech", 1.0, 2.0)


def test_bad_speech_segments_are_refused(tiny_backend):
    with Session(tiny_backend, SessionConfig()) as s:
        with pytest.raises(SessionError, match="non-empty text"):
            s.ingest_speech(1.0, 2.0, "  ")
        with pytest.raises(SessionError, match="end at or after its start"):
            s.ingest_speech(3.0, 2.0, "backwards")
        with pytest.raises(SessionError, match="finite stream time"):
            s.ingest_speech(float("inf"), 2.0, "never")
        with pytest.raises(SessionError, match="limited to 4000"):
            s.ingest_speech(1.0, 2.0, "x" * 4001)
        assert s.stats()["speech_events"] == 0
        s.ingest_speech(1.0, 2.0, "still works")
        assert s.stats()["speech_events"] == 1


def test_saved_memory_keeps_speech_chunks(tiny_backend, tmp_path):
    cfg = SessionConfig(window_tokens=64, top_k=64, max_new_tokens=1, memory_dir=str(tmp_path / "mem"), persist=True)
    with Session(tiny_backend, cfg) as s:
        _speech_then_notes(s)
        s.ingest_speech(20.0, 21.0, "the last words")  # still in the window: banked by the save
        s.save()
    with Session.open_memory(tiny_backend, tmp_path / "mem", SessionConfig(top_k=64, max_new_tokens=1)) as s:
        speech = sorted((m.t_start, m.t_end, m.text) for m in s.bank.metas() if m.kind == "speech")
        ans = s.answer("What was the licence plate?")
    assert speech == [(2.0, 4.5, SAID), (20.0, 21.0, "the last words")]
    assert {(e.t_start, e.text) for e in ans.evidence if e.kind == "speech"} == {(2.0, SAID), (20.0, "the last words")}


def test_vision_off_adds_no_visual_tokens_but_frames_are_stamped_and_cited(tiny_backend):
    frames = random_frames(6, seed=3)
    with Session(tiny_backend, SessionConfig(vision=False, top_k=64, window_tokens=64, max_new_tokens=1)) as s:
        before = s.stats()
        results = [s.ingest(f) for f in frames[:3]]
        mid = s.stats()
        s.ingest_speech(2.2, 2.8, SAID)  # heard while frame 2 is on screen
        for f in frames[3:]:
            s.ingest(f)
        for i in range(12):  # push the speech into memory
            s.ingest_text(6.0 + i, f"note {i}")
        s.ingest(Frame(9, 30.0, 0.0, frames[5].rgb))
        st = s.stats()
        ans = s.answer("What was the licence plate?")
    assert all(not r.encoded and r.kept == 0 and r.tokens == 0 for r in results)
    assert mid["window_tokens"] == before["window_tokens"] == 0 and mid["next_position"] == before["next_position"]
    assert st["encoder_calls"] == 0 and st["tokens_seen"] == 0 and st["frames"] == 7 and st["frames_unseen"] == 7
    assert st["vision"] is False and st["stream_time_s"] == 30.0
    heard = next(e for e in ans.evidence if e.kind == "speech")
    assert heard.frame_indices == (2,) and heard.thumbnail and heard.thumbnail[:2] == b"\xff\xd8"
    window = next(e for e in ans.evidence if e.source == "window")
    assert window.t_end == 30.0 and window.frame_indices[-1] == 9 and window.thumbnail[:2] == b"\xff\xd8"


def test_vision_off_with_no_speech_cites_the_latest_frame(tiny_backend):
    with Session(tiny_backend, SessionConfig(vision=False, max_new_tokens=1)) as s:
        for f in random_frames(3, seed=4):
            s.ingest(f)
        ans = s.answer("What is on screen?")
    (window,) = ans.evidence
    assert (window.source, window.kind, window.t_start, window.frame_indices) == ("window", "frame", 2.0, (2,))


def test_vision_on_still_encodes_frames(tiny_backend):
    with Session(tiny_backend, SessionConfig(window_tokens=step_length(tiny_backend) * 2)) as s:
        for f in random_frames(2, seed=5):
            s.ingest(f)
        assert s.stats()["encoder_calls"] == 2 and s.stats()["vision"] is True


def test_vision_setting_is_validated():
    with pytest.raises(ConfigError, match="vision must be true or false; got 'no'"):
        SessionConfig(vision="no")
