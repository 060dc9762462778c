"""The wire format alone: event validation, error codes, the binary frame and audio headers."""

from __future__ import annotations

import base64
import json
import struct

import numpy as np
import pytest

from app.serving.protocol import (
    AUDIO_HEADER,
    ERROR_CODES,
    FRAME_HEADER,
    ProtocolError,
    decode_base64_audio,
    decode_base64_image,
    dumps,
    error_event,
    is_audio_message,
    pack_audio,
    pack_frame,
    parse_message,
    unpack_audio,
    unpack_frame,
)
from app.serving.ws_server import CLIENT_EVENTS

#: The server's validators, as the websocket server hands them to parse_message.
VALIDATORS = {type_: spec.validate for type_, spec in CLIENT_EVENTS.items()}


def parse(text: str):
    return parse_message(text, VALIDATORS)


def test_binary_frame_header_round_trip_and_layout():
    data = pack_frame(b"\xff\xd8jpeg", pts=12.5)
    assert data[:4] == b"LSF1"
    assert struct.unpack("<I", data[4:8])[0] == 1  # flag bit 0: pts present
    assert struct.unpack("<d", data[8:16])[0] == 12.5
    assert unpack_frame(data) == (12.5, b"\xff\xd8jpeg")
    no_pts = pack_frame(b"png!")
    assert FRAME_HEADER.size == 16 and unpack_frame(no_pts) == (None, b"png!")


@pytest.mark.parametrize("data, needle", [
    (b"LSF1", "16-byte header"),
    (b"XXXX" + bytes(12) + b"img", "must start with"),
    (struct.pack("<4sId", b"LSF1", 0x6, 0.0) + b"img", "unknown frame flags"),
    (struct.pack("<4sId", b"LSF1", 1, float("nan")) + b"img", "pts"),
    (struct.pack("<4sId", b"LSF1", 1, -3.0) + b"img", "pts"),
])
def test_bad_binary_frames_are_invalid_events(data, needle):
    with pytest.raises(ProtocolError) as info:
        unpack_frame(data)
    assert info.value.code == "invalid_event" and needle in info.value.message


@pytest.mark.parametrize("text, code, needle", [
    ("not json", "invalid_json", "not valid JSON"),
    ("[1, 2]", "invalid_json", "JSON object"),
    ('{"event_id": "x"}', "invalid_event", "'type'"),
    ('{"type": "frobnicate"}', "unknown_event_type", "frobnicate"),
    ('{"type": "input_text.append", "pts": 1}', "invalid_event", "'text'"),
    ('{"type": "input_text.append", "text": "hi", "pts": -1}', "invalid_event", "'pts'"),
    ('{"type": "input_video.append", "image": 5}', "invalid_event", "'image'"),
    ('{"type": "session.update", "session": 3}', "invalid_event", "'session'"),
    ('{"type": "input_source.set", "url": "rtsp://x", "fps": 0}', "invalid_event", "'fps'"),
    ('{"type": "response.create", "response": {"max_output_tokens": 0}}', "invalid_event", "max_output_tokens"),
    ('{"type": "conversation.item.create", "item": {"role": "assistant", "content": []}}', "invalid_event", "item.role"),
    ('{"type": "conversation.item.create", "item": {"role": "user", "content": [{"type": "input_image"}]}}',
     "invalid_event", "input_text"),
    ('{"type": "watch.create"}', "invalid_event", "'rule'"),
    ('{"type": "watch.delete", "rule_id": 7}', "invalid_event", "'rule_id'"),
    ('{"type": "session.stats", "event_id": 5}', "invalid_event", "event_id"),
    ('{"type": "input_audio.append", "rate": 16000}', "invalid_event", "'audio'"),
    ('{"type": "input_audio.append", "audio": "AAAA"}', "invalid_audio", "'rate'"),
    ('{"type": "input_audio.append", "audio": "AAAA", "rate": 7999}', "invalid_audio", "[8000, 48000]"),
    ('{"type": "input_audio.append", "audio": "AAAA", "rate": 96000}', "invalid_audio", "96000"),
    ('{"type": "input_audio.append", "audio": "AAAA", "rate": 16000.5}', "invalid_audio", "'rate'"),
    ('{"type": "input_audio.append", "audio": "AAAA", "rate": 16000, "pts": -2}', "invalid_event", "'pts'"),
])
def test_invalid_messages_get_typed_codes_naming_the_problem(text, code, needle):
    with pytest.raises(ProtocolError) as info:
        parse(text)
    assert info.value.code == code
    assert needle in info.value.message


def test_valid_events_are_normalised():
    ev = parse(json.dumps({"type": "conversation.item.create", "event_id": "e1", "item": {
        "type": "message", "role": "user", "content": [{"type": "input_text", "text": "Who"},
                                                       {"type": "input_text", "text": "came in?"}]}}))
    assert (ev.type, ev.event_id, ev.data) == ("conversation.item.create", "e1", {"text": "Who\ncame in?"})
    ev = parse('{"type": "response.create", "response": {"input": "What?", "max_output_tokens": 9}, "extra": 1}')
    assert ev.data == {"input": "What?", "max_output_tokens": 9, "top_k": None}
    assert parse('{"type": "response.create"}').data["input"] is None
    assert parse('{"type": "watch.create", "rule": {"text": "a dog"}}').data == {"rule": "a dog"}


def test_base64_images_limits_and_errors():
    raw = bytes(range(256)) * 4
    assert decode_base64_image(base64.b64encode(raw).decode(), 2048) == raw
    assert decode_base64_image("data:image/jpeg;base64," + base64.b64encode(raw).decode(), 2048) == raw
    with pytest.raises(ProtocolError) as info:
        decode_base64_image(base64.b64encode(raw).decode(), 1000)
    assert info.value.code == "frame_too_large" and "1000" in info.value.message
    with pytest.raises(ProtocolError) as info:
        decode_base64_image("@@not base64@@", 2048)
    assert info.value.code == "bad_image"


def test_error_events_and_serialisation():
    ev = error_event("rate_limited", "slow down", "e7", max_fps=4.0)
    assert ev["type"] == "error" and ev["error"] == {"code": "rate_limited", "message": "slow down", "event_id": "e7",
                                                   "max_fps": 4.0}
    assert ev["event_id"].startswith("evt_")
    with pytest.raises(ValueError):
        error_event("no_such_code", "x")
    assert len(set(ERROR_CODES)) == len(ERROR_CODES) == 18
    assert {"invalid_audio", "speech_off", "host_not_allowed"} <= set(ERROR_CODES)
    assert json.loads(dumps({"type": "x", "v": float("nan"), "w": [float("inf"), 1.5]})) == {"type": "x", "v": None,
                                                                                         "w": [None, 1.5]}


def test_binary_audio_header_round_trip_and_layout():
    pcm = np.array([0, 1000, -1000, 32767, -32768], dtype=np.int16)
    data = pack_audio(pcm, 22050, pts=3.25)
    assert AUDIO_HEADER.size == 24 and data[:4] == b"LSA1" and is_audio_message(data)
    assert struct.unpack("<IdII", data[4:24]) == (1, 3.25, 22050, 0)  # flags (bit 0: pts), pts, rate, reserved
    assert data[24:] == pcm.astype("<i2").tobytes()
    assert unpack_audio(data) == (3.25, 22050, pcm.tobytes())
    assert unpack_audio(pack_audio(pcm.tobytes(), 8000)) == (None, 8000, pcm.tobytes())
    # float samples in [-1, 1] become PCM16; a frame message is not audio
    floats = unpack_audio(pack_audio(np.array([0.0, 0.5, -1.0, 2.0], dtype=np.float32), 16000))[2]
    assert np.frombuffer(floats, "<i2").tolist() == [0, 16384, -32767, 32767]
    assert not is_audio_message(pack_frame(b"jpeg"))
    with pytest.raises(ValueError, match="mono"):
        pack_audio(np.zeros((10, 2), np.int16), 16000)
    with pytest.raises(ValueError, match="rate"):
        pack_audio(pcm, 100)


@pytest.mark.parametrize("data, needle", [
    (b"LSA1" + bytes(10), "24-byte header"),
    (struct.pack("<4sIdII", b"LSA1", 0x4, 0.0, 16000, 0) + bytes(4), "unknown audio flags"),
    (struct.pack("<4sIdII", b"LSA1", 0, 0.0, 16000, 7) + bytes(4), "reserved"),
    (struct.pack("<4sIdII", b"LSA1", 0, 0.0, 4000, 0) + bytes(4), "[8000, 48000]"),
    (struct.pack("<4sIdII", b"LSA1", 0, 0.0, 16000, 0) + bytes(5), "even number of bytes"),
    (struct.pack("<4sIdII", b"LSA1", 0, 0.0, 16000, 0), "no samples"),
    (struct.pack("<4sIdII", b"LSA1", 1, float("inf"), 16000, 0) + bytes(4), "pts"),
    (struct.pack("<4sIdII", b"LSA1", 0, 0.0, 8000, 0) + bytes(2 * 8000 * 3), "3.00 s of audio"),
])
def test_bad_binary_audio_is_invalid_audio(data, needle):
    with pytest.raises(ProtocolError) as info:
        unpack_audio(data, max_seconds=2.0)
    assert info.value.code == "invalid_audio" and needle in info.value.message


def test_base64_audio_limits_and_errors():
    pcm = np.arange(-800, 800, dtype=np.int16).tobytes()
    text = base64.b64encode(pcm).decode()
    assert decode_base64_audio(text, 16000, max_bytes=4096) == pcm
    for text_, kw, code, needle in [
        (text, {"max_bytes": 1000}, "message_too_large", "1000 bytes"),
        ("@@not base64@@", {"max_bytes": 4096}, "invalid_audio", "not valid base64"),
        (base64.b64encode(b"abc").decode(), {"max_bytes": 4096}, "invalid_audio", "even number of bytes"),
        (text, {"max_bytes": 4096, "max_seconds": 0.05}, "invalid_audio", "0.10 s of audio"),
    ]:
        with pytest.raises(ProtocolError) as info:
            decode_base64_audio(text_, 16000, event_id="a1", **kw)
        assert info.value.code == code and needle in info.value.message and info.value.event_id == "a1"
