"""``livesight ask`` hearing real speech (tiny model, real Whisper tiny.en): speech evidence lines, questions at
stream times, an audio-only file, --asr off and a speech model that cannot be had."""

from __future__ import annotations

import re

from app.cli.main import main
from tests.media import mentions

TINY = ["--model", "tiny-smolvlm", "--max-new-tokens", "2"]


def _ask(capsys, *args) -> tuple[int, str, str]:
    rc = main(["ask", *map(str, args)])
    out, err = capsys.readouterr()
    return rc, out, err


def _speech_lines(out: str) -> list[tuple[float, str]]:
    """``(start seconds, words)`` of every speech item in the evidence lines."""
    found = []
    for m, s, words in re.findall(r'(\d\d):(\d\d(?:\.\d)?)-[\d:.]+ \(speech "([^"]*)", memory, score', out):
        found.append((int(m) * 60 + float(s), words))
    return found


def test_clip_speech_is_cited_in_evidence(speech_media, capsys):
    # a small window and a last note: every speech segment has left the window for memory
    rc, out, err = _ask(capsys, speech_media.clip, "What was the licence plate?", *TINY, "--window", "16",
                        "--top-k", "64", "--asr", "tiny.en-offline", "--text", "30s=the end")
    assert rc == 0, err
    assert "speech: tiny.en-offline" in out and "heard 3 speech segments" in out
    heard = _speech_lines(out)
    for s in speech_media.sentences:
        hits = [t for t, words in heard if mentions(words, s.key)]
        assert hits and abs(hits[0] - s.t) <= 1.0, (s, heard)


def test_audio_only_file_runs_with_vision_off_and_questions_hear_only_the_past(speech_media, capsys):
    # asked at 9 s: the plate (2 s) and the code (7 s) were said, the name (12 s) not yet
    assert [s.t for s in speech_media.sentences] == [2.0, 7.0, 12.0]
    rc, out, err = _ask(capsys, speech_media.audio_only, "What was said?", "What was said at the end?", "--at", "9s",
                        *TINY, "--window", "16", "--top-k", "64",
                        "--text", "30s=the end")  # default --asr auto: the source has audio
    assert rc == 0, err
    assert "audio only" in out and "vision off" in out
    plate, _, name = speech_media.sentences
    first, second = out.split("Q: What was said at the end?")
    assert any(mentions(w, plate.key) for _, w in _speech_lines(first))
    assert not any(mentions(w, name.key) for _, w in _speech_lines(first))
    assert any(mentions(w, name.key) for _, w in _speech_lines(second)), second


def test_asr_off_hears_nothing(speech_media, capsys):
    rc, out, err = _ask(capsys, speech_media.clip, "What was said?", *TINY, "--asr", "off", "--top-k", "64")
    assert rc == 0, err
    assert "speech off" in out and "(speech" not in out and "heard" not in out


def test_audio_only_file_with_asr_off_is_refused_clearly(speech_media, capsys):
    rc, _, err = _ask(capsys, speech_media.audio_only, "What was said?", *TINY, "--asr", "off")
    assert rc == 2 and "audio" in err.lower()


def test_a_speech_model_that_cannot_be_had_is_named(speech_media, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rc, _, err = _ask(capsys, speech_media.clip, "What was said?", *TINY, "--asr", "distil-large-v3")
    assert rc == 2 and "speech model 'distil-large-v3' is not in the local cache" in err
