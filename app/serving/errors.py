"""Errors of the session manager; each names its websocket API error code in ``code``.

The websocket layer turns an exception into an ``error`` event by this ``code`` alone, so a new
error class says here how a client sees it.
"""

from __future__ import annotations

from app.engine.config import ConfigError
from app.engine.types import SessionError

__all__ = [
    "FrameTooLarge",
    "InvalidRequest",
    "LiveUpdateRefused",
    "ManagerError",
    "ResponseInProgress",
    "SessionLimit",
    "SpeechOff",
    "UnknownSession",
    "WorkBacklog",
]


class ManagerError(SessionError):
    """A request to the session manager that cannot be served."""

    code = "invalid_event"


class UnknownSession(ManagerError):
    """No open session has that id (never created, closed, or expired)."""

    code = "invalid_event"


class SessionLimit(ManagerError):
    """``max_sessions`` sessions are open already."""

    code = "session_limit"


class FrameTooLarge(ManagerError):
    """A frame is larger than ``max_frame_side`` pixels on a side (or ``max_frame_bytes`` encoded)."""

    code = "frame_too_large"


class ResponseInProgress(ManagerError):
    """The session is already answering a question (one answer at a time per session)."""

    code = "response_in_progress"


class InvalidRequest(ManagerError):
    """A request argument is out of range or of the wrong type; the message names it."""

    code = "invalid_event"


class LiveUpdateRefused(ConfigError):
    """A setting that is fixed once a session's input has started was asked to change."""

    code = "invalid_config"


class SpeechOff(ManagerError):
    """Audio was sent, but the server's speech recognition is off (``livesight serve --asr off``)."""

    code = "speech_off"

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or "speech recognition is off on this server (livesight serve --asr off): audio is "
                                    "not accepted; start it with --asr MODEL to hear the stream")


class SourceBusy(ManagerError):
    """Too many server-pulled sources are being opened at once (``max_source_opens``); the client
    may try again once one has opened or failed."""

    code = "source_busy"


class WorkBacklog(ManagerError):
    """A session has ``max_pending_texts`` text events waiting for the model already; this one is
    refused (not queued). The client should send more slowly, or wait for ``input_text.committed``."""

    code = "rate_limited"
