"""The websocket API's wire format: event schema, validation, error codes and the binary frame and
audio headers.

Every JSON message is one event object ``{"type": ..., "event_id": ...}``. Each client event type
has a validator here (``validate_*``, a :data:`Validator`) that turns a message into the fields of
a :class:`ClientEvent` (unknown extra fields are ignored, so clients may send more than this
version reads); the server's event table pairs each type with its validator and its handler and
hands the validators to :func:`parse_message`. Server events are built with :func:`server_event`.
This module does no I/O and knows nothing of sessions or sockets.

Binary frame messages (a video frame without base64)::

    offset  size  field
    0       4     magic b"LSF1"
    4       4     flags, uint32 little-endian (bit 0: the pts field is set; other bits must be 0)
    8       8     pts, float64 little-endian, seconds of stream time (ignored without flag bit 0)
    16      ...   the image: JPEG or PNG bytes (WebP and BMP also decode)

Binary audio messages (a piece of sound without base64; the same audio as ``input_audio.append``)::

    offset  size  field
    0       4     magic b"LSA1"
    4       4     flags, uint32 little-endian (bit 0: the pts field is set; other bits must be 0)
    8       8     pts, float64 little-endian, stream time of the first sample (ignored without flag bit 0)
    16      4     rate, uint32 little-endian, samples per second, in [8000, 48000]
    20      4     reserved, uint32, must be 0
    24      ...   the samples: PCM16 little-endian mono (an even number of bytes)
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import struct
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

#: Magic bytes that open a binary frame message.
FRAME_MAGIC = b"LSF1"
#: magic, flags (uint32), pts (float64), little-endian: 16 bytes.
FRAME_HEADER = struct.Struct("<4sId")
#: Flag bit 0: the header's pts is set.
FLAG_PTS = 0x1
KNOWN_FLAGS = FLAG_PTS

#: Magic bytes that open a binary audio message.
AUDIO_MAGIC = b"LSA1"
#: magic, flags (uint32), pts (float64), rate (uint32), reserved (uint32), little-endian: 24 bytes.
AUDIO_HEADER = struct.Struct("<4sIdII")
#: Sample rates pushed audio may have (samples per second, inclusive).
AUDIO_RATES = (8000, 48000)

#: Every error code an ``error`` event may carry.
ERROR_CODES = (
    "invalid_json",          # a text message that is not a JSON object
    "invalid_event",         # a known event with missing/wrong fields, or a request the session cannot take
    "unknown_event_type",    # a "type" this server does not know
    "message_too_large",     # a text message over the message limit (the connection stays open)
    "frame_too_large",       # an image over max_frame_bytes, or wider/taller than max_frame_side
    "bad_image",             # image bytes (or base64) that do not decode
    "invalid_audio",         # pushed audio with a bad rate, an odd byte count, bad base64, no samples, or too long
    "speech_off",            # audio sent to a server whose speech recognition is off (livesight serve --asr off)
    "rate_limited",          # frames over the per-session fps limit were dropped, or a note over max_pending_texts refused
    "invalid_config",        # a session setting that is unknown, out of range, or fixed once input started
    "source_error",          # a server-pulled source failed (error.source_error names its class)
    "scheme_not_allowed",    # input_source.set with a scheme (or local file) the server does not admit
    "host_not_allowed",      # input_source.set with a host outside the server's source-host policy
    "source_busy",           # input_source.set while max_source_opens other sources are being opened: try again
    "response_in_progress",  # response.create while an answer is still running
    "unauthorized",          # (handshake) a missing or wrong bearer token: HTTP 401
    "session_limit",         # the server holds max_sessions sessions already
    "internal_error",        # a server fault; the message says what failed
)

MAX_EVENT_ID_CHARS = 128


class ProtocolError(Exception):
    """A client message that breaks the protocol; becomes an ``error`` event with ``code``.

    Attributes:
        code: one of :data:`ERROR_CODES`.
        event_id: the offending client event's id, when known.
        extra: more fields for the error object (e.g. ``param``).
    """

    def __init__(self, code: str, message: str, event_id: str | None = None, **extra: Any) -> None:
        if code not in ERROR_CODES:
            raise ValueError(f"unknown error code {code!r}")
        super().__init__(message)
        self.code = code
        self.message = message
        self.event_id = event_id
        self.extra = extra


@dataclass(frozen=True)
class ClientEvent:
    """A validated client event: its ``type``, optional ``event_id`` and normalised fields."""

    type: str
    event_id: str | None
    data: dict[str, Any]


# --------------------------------------------------------------------------- server events

def new_id(prefix: str) -> str:
    """A fresh id such as ``evt_3f2a...`` (prefix + 16 hex digits)."""
    return f"{prefix}_{uuid.uuid4().hex[:16]}"


def server_event(type_: str, *, reply_to: str | None = None, **fields: Any) -> dict[str, Any]:
    """``{"type": type_, "event_id": "evt_...", **fields}`` (+ ``reply_to`` when answering a client event)."""
    event = {"type": type_, "event_id": new_id("evt")}
    if reply_to is not None:
        event["reply_to"] = reply_to
    event.update(fields)
    return event


def error_event(code: str, message: str, event_id: str | None = None, **extra: Any) -> dict[str, Any]:
    """An ``error`` event; ``event_id`` is the client event it concerns (None for binary frames)."""
    if code not in ERROR_CODES:
        raise ValueError(f"unknown error code {code!r}")
    return server_event("error", error={"code": code, "message": message, "event_id": event_id, **extra})


def dumps(event: dict[str, Any]) -> str:
    """Serialise a server event (NaN/inf become null, as JSON has neither)."""
    return json.dumps(_finite(event), separators=(",", ":"), allow_nan=False)


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


# --------------------------------------------------------------------------- client events

#: ``validator(message object, event_id) -> the event's normalised fields``; raises :class:`ProtocolError`.
Validator = Callable[[dict, str | None], dict]


def parse_message(text: str, validators: Mapping[str, Validator]) -> ClientEvent:
    """Parse one JSON text message and validate it with the validator of its ``type``.

    Args:
        validators: the validator of every client event type the server takes (type -> validator).

    Raises:
        ProtocolError: ``invalid_json``, ``unknown_event_type`` or ``invalid_event`` (naming the field).
    """
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError) as exc:  # ValueError: bad JSON, bad UTF-8, an integer over Python's digit limit
        raise ProtocolError("invalid_json", f"the message is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ProtocolError("invalid_json", f"a message must be a JSON object, got {type(obj).__name__}")
    event_id = obj.get("event_id")
    if event_id is not None and (not isinstance(event_id, str) or len(event_id) > MAX_EVENT_ID_CHARS):
        raise ProtocolError("invalid_event", f"event_id must be a string of at most {MAX_EVENT_ID_CHARS} characters",
                            None, param="event_id")
    type_ = obj.get("type")
    if not isinstance(type_, str) or not type_:
        raise ProtocolError("invalid_event", "a message needs a string field 'type'", event_id, param="type")
    validator = validators.get(type_)
    if validator is None:
        raise ProtocolError("unknown_event_type", f"unknown event type {type_[:80]!r}; known: {', '.join(validators)}",
                            event_id)
    return ClientEvent(type_, event_id, validator(obj, event_id))


def _bad(event_id: str | None, param: str, message: str) -> ProtocolError:
    return ProtocolError("invalid_event", message, event_id, param=param)


def _str(obj: dict, key: str, event_id: str | None, *, required: bool = True, max_len: int | None = None,
         where: str = "") -> str | None:
    value = obj.get(key)
    name = f"{where}{key}"
    if value is None:
        if required:
            raise _bad(event_id, name, f"missing required field '{name}' (a string)")
        return None
    if not isinstance(value, str):
        raise _bad(event_id, name, f"field '{name}' must be a string, got {type(value).__name__}")
    if required and not value.strip():
        raise _bad(event_id, name, f"field '{name}' must not be empty")
    if max_len is not None and len(value) > max_len:
        raise _bad(event_id, name, f"field '{name}' is limited to {max_len} characters, got {len(value)}")
    return value


def _num(obj: dict, key: str, event_id: str | None, *, lo: float, hi: float, where: str = "",
         integer: bool = False, lo_open: bool = False) -> float | int | None:
    value = obj.get(key)
    name = f"{where}{key}"
    if value is None:
        return None
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and integer:
        ok = isinstance(value, int)
    if ok:
        ok = (value > lo if lo_open else value >= lo) and value <= hi
    if not ok:
        kind = "an integer" if integer else "a number"
        raise _bad(event_id, name, f"field '{name}' must be {kind} in {'(' if lo_open else '['}{lo:g}, {hi:g}]; got {value!r}")
    return value


def _bool(obj: dict, key: str, event_id: str | None, where: str = "") -> bool | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, bool):
        raise _bad(event_id, f"{where}{key}", f"field '{where}{key}' must be true or false, got {value!r}")
    return value


def content_text(content: Any, event_id: str | None, where: str) -> str:
    """The text of a content list ``[{"type": "input_text", "text": ...}, ...]`` (joined by newlines)."""
    if isinstance(content, str):
        if not content.strip():
            raise _bad(event_id, where, f"field '{where}' must not be empty")
        return content
    if not isinstance(content, list) or not content:
        raise _bad(event_id, where,
                   f"field '{where}' must be a non-empty list of {{\"type\": \"input_text\", \"text\": ...}} parts")
    texts = []
    for i, part in enumerate(content):
        name = f"{where}[{i}]"
        if not isinstance(part, dict) or part.get("type") != "input_text":
            raise _bad(event_id, f"{name}.type", f"'{name}' must be an object with type \"input_text\"")
        texts.append(_str(part, "text", event_id, where=f"{name}."))
    return "\n".join(texts)


def validate_session_update(obj: dict, eid: str | None) -> dict:
    """``session.update``: ``{"session": {setting: value}}`` (the server checks the settings)."""
    session = obj.get("session")
    if not isinstance(session, dict):
        raise _bad(eid, "session", "session.update needs an object field 'session' with the settings to change")
    return {"session": dict(session)}


def validate_empty(obj: dict, eid: str | None) -> dict:
    """An event without fields (``session.stats``, ``input_source.stop``, ``response.cancel``)."""
    return {}


def validate_source_set(obj: dict, eid: str | None) -> dict:
    """``input_source.set``: ``{"url", "fps" (None: 1), "realtime" (None: true)}``."""
    return {"url": _str(obj, "url", eid, max_len=4096),
            "fps": _num(obj, "fps", eid, lo=0, hi=1000, lo_open=True),
            "realtime": _bool(obj, "realtime", eid)}


def validate_video_append(obj: dict, eid: str | None) -> dict:
    """``input_video.append``: ``{"image" (base64 JPEG/PNG), "pts" (None: arrival time)}``."""
    return {"image": _str(obj, "image", eid), "pts": _num(obj, "pts", eid, lo=0, hi=1e12)}


def validate_audio_append(obj: dict, eid: str | None) -> dict:
    """``input_audio.append``: ``{"audio" (base64 PCM16 LE mono), "rate" (samples/s), "pts" (None: continue)}``.

    Raises:
        ProtocolError: ``invalid_event`` for a missing or non-string ``audio``; ``invalid_audio`` for
            a missing rate or one outside :data:`AUDIO_RATES`.
    """
    audio = _str(obj, "audio", eid)
    rate = obj.get("rate")
    lo, hi = AUDIO_RATES
    if isinstance(rate, bool) or not isinstance(rate, int) or not lo <= rate <= hi:
        raise ProtocolError("invalid_audio", f"field 'rate' must be an integer number of samples per second in "
                                             f"[{lo}, {hi}]; got {rate!r}", eid, param="rate")
    return {"audio": audio, "rate": rate, "pts": _num(obj, "pts", eid, lo=0, hi=1e12)}


def validate_text_append(obj: dict, eid: str | None) -> dict:
    """``input_text.append``: ``{"text", "pts" (None: the last frame's)}``."""
    return {"text": _str(obj, "text", eid, max_len=4000), "pts": _num(obj, "pts", eid, lo=0, hi=1e12)}


def validate_item_create(obj: dict, eid: str | None) -> dict:
    """``conversation.item.create``: ``{"text"}`` of a user message."""
    item = obj.get("item")
    if not isinstance(item, dict):
        raise _bad(eid, "item", "conversation.item.create needs an object field 'item'")
    if item.get("type", "message") != "message":
        raise _bad(eid, "item.type", "only items of type \"message\" are supported")
    if item.get("role") != "user":
        raise _bad(eid, "item.role", "item.role must be \"user\"")
    return {"text": content_text(item.get("content"), eid, "item.content")}


def validate_response_create(obj: dict, eid: str | None) -> dict:
    """``response.create``: ``{"input" (None: the pending items), "max_output_tokens", "top_k"}``."""
    response = obj.get("response", {})
    if response is None:
        response = {}
    if not isinstance(response, dict):
        raise _bad(eid, "response", "field 'response' must be an object")
    text = None
    if response.get("input") is not None:
        text = content_text(response["input"], eid, "response.input")
    return {"input": text,
            "max_output_tokens": _num(response, "max_output_tokens", eid, lo=1, hi=4096, integer=True, where="response."),
            "top_k": _num(response, "top_k", eid, lo=0, hi=4096, integer=True, where="response.")}


def validate_watch_create(obj: dict, eid: str | None) -> dict:
    """``watch.create``: ``{"rule"}`` (``rule`` as a string or ``{"text": ...}``)."""
    rule = obj.get("rule")
    if isinstance(rule, dict):
        return {"rule": _str(rule, "text", eid, max_len=500, where="rule.")}
    return {"rule": _str(obj, "rule", eid, max_len=500)}


def validate_watch_delete(obj: dict, eid: str | None) -> dict:
    """``watch.delete``: ``{"rule_id"}``."""
    return {"rule_id": _str(obj, "rule_id", eid, max_len=64)}


# --------------------------------------------------------------------------- frames

def pack_frame(image: bytes, pts: float | None = None) -> bytes:
    """A binary frame message: the 16-byte header, then ``image`` (JPEG/PNG bytes)."""
    if not isinstance(image, (bytes, bytearray, memoryview)):
        raise TypeError(f"image must be bytes, got {type(image).__name__}")
    if pts is not None and (not math.isfinite(pts) or pts < 0):
        raise ValueError(f"pts must be a finite number of seconds >= 0; got {pts!r}")
    flags = FLAG_PTS if pts is not None else 0
    return FRAME_HEADER.pack(FRAME_MAGIC, flags, float(pts or 0.0)) + bytes(image)


def unpack_frame(data: bytes) -> tuple[float | None, bytes]:
    """``(pts or None, image bytes)`` of a binary frame message.

    Raises:
        ProtocolError: ``invalid_event`` for a short message, a wrong magic, unknown flags or a bad pts.
    """
    if len(data) <= FRAME_HEADER.size:
        raise ProtocolError("invalid_event", f"a binary frame message needs the {FRAME_HEADER.size}-byte header "
                                             f"and image bytes; got {len(data)} bytes")
    magic, flags, pts = FRAME_HEADER.unpack_from(data)
    if magic != FRAME_MAGIC:
        raise ProtocolError("invalid_event", f"a binary message must start with {FRAME_MAGIC!r} (a frame) or "
                                             f"{AUDIO_MAGIC!r} (audio); got {bytes(magic)!r}")
    if flags & ~KNOWN_FLAGS:
        raise ProtocolError("invalid_event", f"unknown frame flags 0x{flags:x} (known: 0x{KNOWN_FLAGS:x})")
    if flags & FLAG_PTS:
        if not math.isfinite(pts) or pts < 0 or pts > 1e12:
            raise ProtocolError("invalid_event", f"frame pts must be a finite number of seconds in [0, 1e12]; got {pts!r}")
        return float(pts), bytes(data[FRAME_HEADER.size:])
    return None, bytes(data[FRAME_HEADER.size:])


def decode_base64_image(text: str, max_bytes: int, event_id: str | None = None) -> bytes:
    """The bytes of a base64 image (a ``data:image/...;base64,`` prefix is allowed).

    Raises:
        ProtocolError: ``frame_too_large`` beyond ``max_bytes`` decoded bytes; ``bad_image`` for bad base64.
    """
    if text.startswith("data:"):
        head, _, text = text.partition(",")
        if ";base64" not in head:
            raise ProtocolError("bad_image", "a data: URL image must be base64-encoded", event_id)
    return _decode_base64(text, "image", max_bytes, event_id, too_large="frame_too_large", bad="bad_image",
                          limit="(max_frame_bytes)")


def _decode_base64(text: str, field: str, max_bytes: int, event_id: str | None, *, too_large: str, bad: str,
                   limit: str, **extra: Any) -> bytes:
    """``text`` base64-decoded, refused before decoding when it cannot fit in ``max_bytes``.

    Raises:
        ProtocolError: ``too_large`` beyond ``max_bytes`` decoded bytes; ``bad`` for invalid base64.
    """
    if len(text) // 4 * 3 > max_bytes + 3:
        raise ProtocolError(too_large, f"the {field} is about {len(text) // 4 * 3} bytes; the limit is "
                                       f"{max_bytes} bytes {limit}", event_id)
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ProtocolError(bad, f"field '{field}' is not valid base64: {exc}", event_id, **extra) from None
    if len(data) > max_bytes:
        raise ProtocolError(too_large, f"the {field} is {len(data)} bytes; the limit is {max_bytes} bytes {limit}",
                            event_id)
    return data


# --------------------------------------------------------------------------- audio

def _check_pcm(pcm: bytes, rate: int, max_seconds: float | None, event_id: str | None) -> None:
    """Raise ``invalid_audio`` for an empty or odd-sized PCM16 payload, a bad rate, or too many seconds."""
    lo, hi = AUDIO_RATES
    if isinstance(rate, bool) or not isinstance(rate, int) or not lo <= rate <= hi:
        raise ProtocolError("invalid_audio", f"the audio rate must be an integer in [{lo}, {hi}] samples per second; "
                                             f"got {rate!r}", event_id, param="rate")
    if not pcm:
        raise ProtocolError("invalid_audio", "the audio has no samples", event_id)
    if len(pcm) % 2:
        raise ProtocolError("invalid_audio", f"PCM16 audio needs an even number of bytes (2 per sample); got {len(pcm)}",
                            event_id)
    seconds = len(pcm) / 2 / rate
    if max_seconds is not None and seconds > max_seconds:
        raise ProtocolError("invalid_audio", f"{seconds:.2f} s of audio in one message; the limit is {max_seconds:g} s "
                                             "(send shorter pieces)", event_id)


def pcm16_bytes(pcm: Any) -> bytes:
    """Little-endian PCM16 bytes of ``pcm``: bytes as they are, an int16 array, or a float array in
    [-1, 1] (clipped, scaled by 32767). Arrays must be mono ``(N,)``.

    Raises:
        TypeError / ValueError: anything else (a stereo or empty array, another dtype).
    """
    import numpy as np

    if isinstance(pcm, (bytes, bytearray, memoryview)):
        return bytes(pcm)
    if not isinstance(pcm, np.ndarray):
        raise TypeError(f"audio must be PCM16 bytes or a mono numpy array; got {type(pcm).__name__}")
    if pcm.ndim != 1:
        raise ValueError(f"audio must be mono, shape (N,); got shape {pcm.shape}")
    if pcm.dtype == np.int16:
        return pcm.astype("<i2", copy=False).tobytes()
    if np.issubdtype(pcm.dtype, np.floating):
        return (np.clip(pcm, -1.0, 1.0) * 32767.0).round().astype("<i2").tobytes()
    raise ValueError(f"audio arrays must be int16 or float; got {pcm.dtype}")


def pack_audio(pcm: Any, rate: int, pts: float | None = None) -> bytes:
    """A binary audio message: the 24-byte header, then PCM16 LE mono samples.

    Args:
        pcm: PCM16 LE bytes, an int16 ``(N,)`` array, or a float ``(N,)`` array in [-1, 1].
        rate: samples per second, in :data:`AUDIO_RATES`.
        pts: stream time of the first sample (None: the server continues the session's audio clock).
    """
    data = pcm16_bytes(pcm)
    lo, hi = AUDIO_RATES
    if isinstance(rate, bool) or not isinstance(rate, int) or not lo <= rate <= hi:
        raise ValueError(f"rate must be an integer in [{lo}, {hi}]; got {rate!r}")
    if pts is not None and (not math.isfinite(pts) or pts < 0):
        raise ValueError(f"pts must be a finite number of seconds >= 0; got {pts!r}")
    flags = FLAG_PTS if pts is not None else 0
    return AUDIO_HEADER.pack(AUDIO_MAGIC, flags, float(pts or 0.0), rate, 0) + data


def is_audio_message(data: bytes) -> bool:
    """True when a binary message opens with :data:`AUDIO_MAGIC`."""
    return bytes(data[:4]) == AUDIO_MAGIC


def unpack_audio(data: bytes, max_seconds: float | None = None) -> tuple[float | None, int, bytes]:
    """``(pts or None, rate, PCM16 bytes)`` of a binary audio message.

    Raises:
        ProtocolError: ``invalid_audio`` for a short message, a wrong magic, unknown flags, a nonzero
            reserved field, a bad pts or rate, an odd or empty payload, or more than ``max_seconds``.
    """
    if len(data) < AUDIO_HEADER.size:
        raise ProtocolError("invalid_audio", f"a binary audio message needs the {AUDIO_HEADER.size}-byte header "
                                             f"and samples; got {len(data)} bytes")
    magic, flags, pts, rate, reserved = AUDIO_HEADER.unpack_from(data)
    if magic != AUDIO_MAGIC:
        raise ProtocolError("invalid_audio", f"a binary audio message must start with {AUDIO_MAGIC!r}; got {bytes(magic)!r}")
    if flags & ~KNOWN_FLAGS:
        raise ProtocolError("invalid_audio", f"unknown audio flags 0x{flags:x} (known: 0x{KNOWN_FLAGS:x})")
    if reserved != 0:
        raise ProtocolError("invalid_audio", f"the audio header's reserved field must be 0; got {reserved}")
    pcm = bytes(data[AUDIO_HEADER.size:])
    _check_pcm(pcm, rate, max_seconds, None)
    if flags & FLAG_PTS:
        if not math.isfinite(pts) or pts < 0 or pts > 1e12:
            raise ProtocolError("invalid_audio", f"audio pts must be a finite number of seconds in [0, 1e12]; got {pts!r}")
        return float(pts), rate, pcm
    return None, rate, pcm


def decode_base64_audio(text: str, rate: int, *, max_bytes: int, max_seconds: float | None = None,
                        event_id: str | None = None) -> bytes:
    """The PCM16 bytes of ``input_audio.append``'s base64 ``audio`` field, checked.

    Raises:
        ProtocolError: ``message_too_large`` beyond ``max_bytes`` decoded bytes; ``invalid_audio`` for
            bad base64, an odd or empty payload, or more than ``max_seconds`` of audio.
    """
    pcm = _decode_base64(text, "audio", max_bytes, event_id, too_large="message_too_large", bad="invalid_audio",
                         limit="per message", param="audio")
    _check_pcm(pcm, rate, max_seconds, event_id)
    return pcm


# --------------------------------------------------------------------------- answers

def response_status(stop_reason: str) -> str:
    """``eos`` -> ``completed``, ``max_tokens`` -> ``incomplete``, ``cancelled`` -> ``cancelled``."""
    return {"eos": "completed", "max_tokens": "incomplete", "cancelled": "cancelled"}.get(stop_reason, "completed")


def response_object(response_id: str, answer, *, with_thumbnails: bool = False) -> dict[str, Any]:
    """The ``response`` object of ``response.done`` for a finished :class:`~app.engine.types.Answer`."""
    status = response_status(answer.stop_reason)
    out = {
        "id": response_id,
        "object": "response",
        "status": status,
        "stop_reason": answer.stop_reason,
        "question": answer.question,
        "output_text": answer.text,
        "asked_at": answer.asked_at,
        "evidence": [e.to_dict(with_thumbnails) for e in answer.evidence],
        "usage": dict(answer.usage),
    }
    if status == "incomplete":
        out["status_details"] = {"reason": "max_output_tokens"}
    return out
