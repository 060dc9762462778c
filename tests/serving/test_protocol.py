"""The wire format alone: event validation, error codes, the binary frame header."""

from __future__ import annotations

import base64
import json
import struct

import pytest

from app.serving.protocol import (
    ERROR_CODES,
    FRAME_HEADER,
    ProtocolError,
    decode_base64_image,
    dumps,
    error_event,
    pack_frame,
    parse_message,
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
    assert len(set(ERROR_CODES)) == len(ERROR_CODES) == 14
    assert json.loads(dumps({"type": "x", "v": float("nan"), "w": [float("inf"), 1.5]})) == {"type": "x", "v": None,
                                                                                         "w": [None, 1.5]}
