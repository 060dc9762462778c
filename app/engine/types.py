"""Plain result types a session hands out (no model objects inside)."""

from __future__ import annotations

import base64
from dataclasses import asdict, dataclass, field
from typing import Any


class SessionError(RuntimeError):
    """A session-level failure that concerns one input or one request only."""

    #: the websocket API's error code for this failure (subclasses may narrow it).
    code = "invalid_event"


class SessionClosed(SessionError):
    """The session was closed; it takes no more input."""


@dataclass(frozen=True)
class FrameResult:
    """What ingesting one frame did.

    Attributes:
        index, pts: the frame's index and stream time.
        encoded: whether the vision tower ran (pixel drop skips unchanged frames).
        tokens: visual tokens the frame had; kept: how many entered the model.
        scene_change: the drop ratio says the scene changed (watch rules are evaluated then).
        attention_length: KV entries the frame's prefill attended to (sink + window + itself).
        alerts: watch-rule alerts fired by this frame (when the session evaluates them itself).
        pending: the frame waits for the rest of its step (backends whose frames enter in groups).
    """

    index: int
    pts: float
    encoded: bool
    tokens: int
    kept: int
    scene_change: bool
    attention_length: int
    alerts: tuple["Alert", ...] = ()
    pending: bool = False  # buffered until the backend's step is complete (frames enter in pairs for Qwen2.5-VL)

    @property
    def kept_ratio(self) -> float:
        return self.kept / self.tokens if self.tokens else 0.0


@dataclass(frozen=True)
class Evidence:
    """A moment an answer relied on.

    ``source`` is ``"memory"`` for a chunk retrieved from the bank (with its score) or
    ``"window"`` for the recent stream still in the attention window. ``kind`` is ``"frame"``,
    ``"text"`` (a note), ``"speech"`` (words heard in the audio: ``text`` holds them, ``t_start`` and
    ``t_end`` the segment's time range) or, for a window holding several kinds, ``"mixed"``. With the
    session's vision off, a note's or speech's ``thumbnail`` is the frame on screen when it came.

    ``input_source`` names the input the moment came from, as a person would (``webcam``,
    ``websocket frames``, ``file bikes.mp4``, ``rtsp://cam/live``, ``note``, ``speech``: see
    :mod:`streaming.labels`); None when the session was never told. A memory chunk comes from one input;
    the recent window gives one item per video input it holds (split where the input changed), whose
    ``input_source`` lists every input of that stretch, joined by ``" + "`` (``webcam + note``).
    ``t_start <= t_end`` always.
    """

    t_start: float
    t_end: float
    source: str
    kind: str = "frame"
    score: float | None = None
    chunk_id: int | None = None
    frame_indices: tuple[int, ...] = ()
    text: str | None = None
    thumbnail: bytes | None = field(default=None, repr=False)
    input_source: str | None = None

    def to_dict(self, with_thumbnail: bool = False) -> dict[str, Any]:
        d = asdict(self)
        d["frame_indices"] = list(self.frame_indices)
        d.pop("thumbnail")
        if with_thumbnail and self.thumbnail is not None:
            d["thumbnail_jpeg_b64"] = base64.b64encode(self.thumbnail).decode("ascii")
        return d


@dataclass(frozen=True)
class AnswerDelta:
    """A piece of answer text, streamed as it is generated."""

    text: str


@dataclass(frozen=True)
class Answer:
    """A finished answer with the moments it relied on.

    ``usage``: prompt tokens (context + question), completion tokens, retrieved chunks, timings.
    """

    question: str
    text: str
    evidence: tuple[Evidence, ...]
    stop_reason: str
    asked_at: float
    usage: dict[str, Any] = field(default_factory=dict)
    token_ids: tuple[int, ...] = ()

    def to_dict(self, with_thumbnails: bool = False) -> dict[str, Any]:
        return {
            "question": self.question,
            "text": self.text,
            "evidence": [e.to_dict(with_thumbnails) for e in self.evidence],
            "stop_reason": self.stop_reason,
            "asked_at": self.asked_at,
            "usage": dict(self.usage),
        }


@dataclass(frozen=True)
class WatchRule:
    """A standing question evaluated when the scene changes."""

    rule_id: str
    text: str


@dataclass(frozen=True)
class Alert:
    """A watch rule matched at stream time ``pts``."""

    rule_id: str
    rule: str
    pts: float
    answer: str
    wall: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
