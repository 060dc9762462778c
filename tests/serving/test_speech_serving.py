"""Speech through the server: real espeak-ng speech pushed over a real websocket (base64 JSON and
the binary LSA1 message) or pulled by the server from a real clip's sound track, transcribed by the
real faster-whisper (Whisper tiny.en, offline), prefilled into the session and cited as evidence.
Bad audio messages get clear errors and leave the connection and other sessions working."""

from __future__ import annotations

import base64
import json
import struct

import numpy as np
import pytest

from app.engine.config import SessionConfig
from app.engine.speech import ASRConfig
from app.serving.protocol import pack_audio
from tests import media

from .conftest import WS, run

pytestmark = [pytest.mark.network, pytest.mark.timeout(300)]

#: A small window: spoken facts leave it for the memory bank; top_k large enough to bring all of it back.
SPEECH_SESSION = SessionConfig(window_tokens=32, max_new_tokens=4, top_k=64)


@pytest.fixture
def speech_server(make_server):
    """A server with speech on (the offline Whisper tiny.en) and file sources allowed."""
    return make_server(max_fps=50.0, asr=ASRConfig(), allow_file_sources=True, default_session=SPEECH_SESSION)


@pytest.fixture(scope="module")
def speech_pcm(tmp_path_factory) -> tuple[np.ndarray, int]:
    """The test speech (:data:`tests.media.SPEECH_SCRIPT`) as int16 samples at espeak's rate."""
    wav = media.speech_only(tmp_path_factory.mktemp("pcm") / "talk.wav", [(s.t, s.text) for s in media.SPEECH_SCRIPT])
    return media.read_wav(wav)


def _assert_heard_at_their_times(segments: list[tuple[float, float, str]]) -> None:
    for sentence in media.SPEECH_SCRIPT:
        found = media.find_mention(segments, sentence.key)
        assert found is not None, f"{sentence.key!r} not in the transcript {segments}"
        assert abs(found[0] - sentence.t) <= 1.0, f"{sentence.key!r} heard at {found[0]} s, spoken at {sentence.t} s"


async def _transcripts(ws: WS, n: int) -> list[tuple[float, float, str]]:
    """The next ``n`` ``input_audio.transcript`` events as ``(t_start, t_end, text)``."""
    heard = []
    while len(heard) < n:
        ev = await ws.expect("input_audio.transcript", timeout=60)
        assert ev["tokens"] > 0 and ev["t_end"] >= ev["t_start"]
        heard.append((ev["t_start"], ev["t_end"], ev["text"]))
    return heard


def test_pushed_speech_json_and_binary_is_heard_remembered_and_cited(speech_server, speech_pcm):
    samples, rate = speech_pcm
    half = len(samples) // 2 // rate * rate

    async def go():
        ws = await WS.open(speech_server.url)
        limits = ws.created["limits"]
        assert limits["speech"] and limits["asr_model"] == "tiny.en-offline" and limits["audio_rates"] == [8000, 48000]
        # the first half as base64 JSON pieces of one second with their pts, the rest as binary messages
        # without a pts: they continue the session's audio clock
        for i in range(0, half, rate):
            piece = samples[i:i + rate].astype("<i2").tobytes()
            await ws.send({"type": "input_audio.append", "audio": base64.b64encode(piece).decode(), "rate": rate,
                           "pts": i / rate})
        for i in range(half, len(samples), rate):
            await ws.send(pack_audio(samples[i:i + rate], rate))
        eid = await ws.send({"type": "input_audio.commit"})
        committed = await ws.expect("input_audio.committed", timeout=120)
        assert committed["reply_to"] == eid
        _assert_heard_at_their_times(await _transcripts(ws, len(media.SPEECH_SCRIPT)))

        await ws.send({"type": "session.stats"})
        audio = (await ws.expect("input_video.stats", where=lambda e: e.get("reply_to") is not None))["stats"]["audio"]
        assert audio["speech"] and audio["started"] and audio["source"] is None
        assert audio["audio_s"] == pytest.approx(len(samples) / rate, abs=0.05)
        assert audio["pushed"]["chunks"] == -(-len(samples) // rate) and audio["pushed"]["errors"] == 0
        assert 3.0 < audio["speech_s"] < audio["audio_s"]  # VAD: the silences are not speech
        assert audio["segments"] >= 3 and audio["committed"] >= 3 and audio["dropped_s"] == 0
        assert audio["rtf"] > 0 and not audio["behind"]

        # a question: the spoken licence plate left the small window and comes back from memory as speech
        _, response = await ws.ask("What was the licence plate?")
        speech = [e for e in response["evidence"] if e["kind"] == "speech"]
        plate = [e for e in speech if e["source"] == "memory" and media.mentions(e["text"] or "", "KL47XQ")]
        assert plate, response["evidence"]
        assert abs(plate[0]["t_start"] - 2.0) <= 1.0 and plate[0]["t_end"] > plate[0]["t_start"]
        await ws.close()

    run(go())


def test_bad_audio_messages_get_clear_errors_and_nothing_else_breaks(speech_server, make_server, speech_pcm):
    samples, rate = speech_pcm
    second = samples[rate * 2:rate * 3]  # one second of the licence plate
    off = make_server(max_fps=50.0)  # speech off

    async def go():
        ws = await WS.open(speech_server.url)
        other = await WS.open(speech_server.url)

        def b64(data: bytes) -> str:
            return base64.b64encode(data).decode()

        cases = [
            ({"type": "input_audio.append", "audio": b64(second.tobytes()), "rate": 7000}, "invalid_audio", "rate"),
            ({"type": "input_audio.append", "audio": b64(second.tobytes()[:-1]), "rate": rate}, "invalid_audio",
             "even number of bytes"),
            ({"type": "input_audio.append", "audio": "@@@ not base64 @@@", "rate": rate}, "invalid_audio", "base64"),
            ({"type": "input_audio.append", "audio": b64(bytes(2 * 8000 * 11)), "rate": 8000}, "invalid_audio",
             "limit is 10 s"),
            ({"type": "input_audio.append", "audio": b64(bytes(2 * 48000 * 11)), "rate": 48000}, "message_too_large",
             "bytes per message"),
            ({"type": "input_audio.append", "audio": "", "rate": rate}, "invalid_event", "'audio'"),
        ]
        for event, code, needle in cases:
            eid = await ws.send(event)
            err = await ws.error(eid)
            assert err["code"] == code and needle in err["message"], (event["rate"], err)
        binary = [
            (struct.pack("<4sIdII", b"LSA1", 0, 0.0, 96000, 0) + second.tobytes(), "invalid_audio", "[8000, 48000]"),
            (struct.pack("<4sIdII", b"LSA1", 0, 0.0, rate, 0) + second.tobytes()[:-1], "invalid_audio", "even number"),
            (struct.pack("<4sIdII", b"LSA1", 0, 0.0, rate, 9) + second.tobytes(), "invalid_audio", "reserved"),
            (pack_audio(np.zeros(8000 * 11, np.int16), 8000), "invalid_audio", "limit is 10 s"),
            (pack_audio(np.zeros(48000 * 11, np.int16), 48000), "message_too_large", "binary audio message"),
        ]
        for data, code, needle in binary:
            await ws.send(data)
            err = await ws.error()
            assert err["code"] == code and needle in err["message"], err
        # the connection still works, and audio after the bad messages is taken as usual
        await ws.send(pack_audio(second, rate, pts=2.0))
        await ws.send({"type": "session.stats"})
        stats = (await ws.expect("input_video.stats", where=lambda e: e.get("reply_to") is not None))["stats"]
        assert stats["audio"]["pushed"]["chunks"] == 1
        assert stats["audio"]["audio_s"] == pytest.approx(1.0, abs=0.01)
        # the other session saw none of it
        await other.send({"type": "session.stats"})
        theirs = (await other.expect("input_video.stats", where=lambda e: e.get("reply_to") is not None))["stats"]
        assert theirs["audio"]["started"] is False and theirs["audio"]["audio_s"] == 0.0
        assert not [e for e in other.unread + other.seen if e["type"] == "error"]
        await ws.close()
        await other.close()

        # a server with speech off says so for every kind of audio message, and goes on serving
        ws = await WS.open(off.url)
        assert ws.created["limits"]["speech"] is False
        eid = await ws.send({"type": "input_audio.append", "audio": b64(second.tobytes()), "rate": rate})
        err = await ws.error(eid)
        assert err["code"] == "speech_off" and "--asr" in err["message"]
        await ws.send(pack_audio(second, rate))
        assert (await ws.error())["code"] == "speech_off"
        eid = await ws.send({"type": "input_audio.commit"})
        assert (await ws.error(eid))["code"] == "speech_off"
        await ws.send({"type": "session.stats"})
        stats = (await ws.expect("input_video.stats", where=lambda e: e.get("reply_to") is not None))["stats"]
        assert stats["audio"] == {"speech": False, "source": None}
        await ws.close()

    run(go())


def test_server_pulled_clip_and_audio_only_file_are_heard(speech_server, speech_media):
    async def pull(ws: WS, path, *, video: bool) -> tuple[dict, list[tuple[float, float, str]]]:
        eid = await ws.send({"type": "input_source.set", "url": str(path), "fps": 2, "realtime": False})
        started = await ws.expect("input_source.started", "error", timeout=60)
        assert started["type"] == "input_source.started", started
        assert started["reply_to"] == eid and started["source"]["has_audio"] is True
        assert started["source"]["has_video"] is video
        ended = await ws.expect("input_source.ended", "input_source.error", timeout=180)
        assert ended["type"] == "input_source.ended" and ended["reason"] == "end of stream", ended
        # the end of the stream is announced after its last words were transcribed and queued as model work
        heard = await _transcripts(ws, len(media.SPEECH_SCRIPT))
        await ws.send({"type": "session.stats"})
        stats = (await ws.expect("input_video.stats", where=lambda e: e.get("reply_to") is not None))["stats"]
        return {"ended": ended, **stats}, heard

    async def go():
        ws = await WS.open(speech_server.url)
        stats, heard = await pull(ws, speech_media.clip, video=True)
        _assert_heard_at_their_times(heard)
        duration = media.media_duration(speech_media.clip)
        audio = stats["audio"]
        assert audio["source"]["chunks"] > 0 and audio["source"]["decode_errors"] == 0
        assert audio["source"]["seconds"] == pytest.approx(duration, abs=0.5)
        assert audio["audio_s"] == pytest.approx(audio["source"]["seconds"], abs=0.05)
        assert stats["ended"]["frames"] >= 2 * int(duration) - 1 and stats["frames"] >= 1
        _, response = await ws.ask("What was the code?")
        assert any(e["kind"] == "speech" and media.mentions(e["text"] or "", "5028") for e in response["evidence"]), \
            response["evidence"]
        await ws.close()

        # an audio-only file is a valid source with speech on: no frames, every sentence heard
        ws = await WS.open(speech_server.url)
        stats, heard = await pull(ws, speech_media.audio_only, video=False)
        _assert_heard_at_their_times(heard)
        assert stats["ended"]["frames"] == 0 and stats["ingest"]["frames_submitted"] == 0
        assert stats["source"]["pts"] == pytest.approx(media.media_duration(speech_media.audio_only), abs=0.5)
        await ws.close()

    run(go())


def test_transcript_events_are_json_and_follow_the_session(speech_server, speech_pcm):
    """input_audio.transcript events carry plain JSON; a second commit with nothing new adds nothing."""
    samples, rate = speech_pcm

    async def go():
        ws = await WS.open(speech_server.url)
        plate = samples[int(1.5 * rate):int(5.5 * rate)]
        await ws.send(pack_audio(plate, rate, pts=1.5))
        await ws.send({"type": "input_audio.commit"})
        await ws.expect("input_audio.committed", timeout=120)
        ev = await ws.expect("input_audio.transcript", timeout=60)
        assert json.loads(json.dumps(ev)) == ev and media.mentions(ev["text"], "KL47XQ")
        await ws.send({"type": "input_audio.commit"})
        again = await ws.expect("input_audio.committed", timeout=60)
        assert again["audio"]["committed"] == 1
        await ws.close()

    run(go())


def test_each_session_has_its_own_transcriber_closed_with_it(make_manager, speech_pcm):
    import threading

    from app.engine.speech import SpeechSegment
    from app.serving.errors import InvalidRequest, UnknownSession
    from streaming.errors import InvalidAudio

    samples, rate = speech_pcm
    manager = make_manager(asr=ASRConfig(), default_session=SPEECH_SESSION)
    a, b = manager.create_session(), manager.create_session()

    def threads(sid: str) -> list[str]:
        return [t.name for t in threading.enumerate() if sid in t.name and "asr" in t.name]

    assert threads(a) == [] and manager.stats(a)["audio"]["started"] is False  # created on the first audio
    chunk = manager.push_audio(a, samples[:rate], rate=rate, pts=5.0)
    assert chunk.rate == 16000 and chunk.pts == 5.0 and chunk.duration == pytest.approx(1.0, abs=1e-3)
    assert manager.push_audio(a, samples[rate:2 * rate], rate=rate).pts == pytest.approx(6.0, abs=1e-3)  # continues
    assert manager.audio_clock(a) == pytest.approx(7.0, abs=1e-3) and manager.audio_clock(b) is None
    assert len(threads(a)) == 1 and threads(b) == []
    with pytest.raises(InvalidAudio, match="at most 10 s"):
        manager.push_audio(a, np.zeros(16000 * 11, np.int16), rate=16000)
    assert manager.stats(a)["audio"]["pushed"]["errors"] == 1
    with pytest.raises(InvalidRequest, match="non-empty text"):
        manager.submit_speech(a, SpeechSegment(1.0, 2.0, "  "))
    with pytest.raises(InvalidRequest, match="ends"):
        manager.submit_speech(a, SpeechSegment(3.0, 2.0, "backwards"))
    # a segment submitted by hand enters like a heard one
    assert manager.submit_speech(b, SpeechSegment(1.0, 2.5, "The gate code is 7 7 1")).result(60) > 0
    assert [s.text for s in manager.transcript(b)] == ["The gate code is 7 7 1"]
    assert manager.stats(b)["speech_events"] == 1

    manager.close_session(a)
    assert threads(a) == []  # the transcriber stopped with its session
    with pytest.raises(UnknownSession):
        manager.push_audio(a, samples[:rate], rate=rate)
    assert manager.stats(b)["audio"]["committed"] == 1  # the other session is untouched
