"""Typed errors of the ingestion layer.

Every error a source raises is a :class:`SourceError` that names the source (``source``)
and the problem in its message, so callers can show it to a user as one line. URLs are
named with their password redacted.
"""

from __future__ import annotations


class SourceError(Exception):
    """Base class: something is wrong with a video source.

    Attributes:
        source: the source as the user named it (path, redacted URL, device), or ``""``.
        code: the websocket API's error code for this failure.
    """

    code = "source_error"

    def __init__(self, message: str, source: str = "") -> None:
        super().__init__(message)
        self.source = source


class SourceNotFound(SourceError):
    """The file (or the remote resource, HTTP/RTSP 404) does not exist."""


class NotAVideo(SourceError):
    """The input is not a media file, or it has no decodable video stream."""


class AudioOnly(NotAVideo):
    """The input is a media file with audio but no video stream."""


class CorruptStream(SourceError):
    """The input looks like media but cannot be decoded (broken container, only errors)."""


class SourceUnreachable(SourceError):
    """A network source refused the connection or did not answer within the open timeout."""


class AccessDenied(SourceError):
    """A network source answered but refused access (HTTP/RTSP 401 or 403)."""


class SchemeNotAllowed(SourceError):
    """The URL scheme (or a local path / ``file:`` URL) is not in the operator's allow-list.

    Attributes:
        scheme: the refused scheme (``"file"`` for local paths).
        allowed: the schemes that are allowed, sorted.
    """

    code = "scheme_not_allowed"

    def __init__(self, message: str, source: str = "", scheme: str = "", allowed: tuple[str, ...] = ()) -> None:
        super().__init__(message, source)
        self.scheme = scheme
        self.allowed = allowed


class WebcamUnavailable(SourceError):
    """The webcam device does not exist, is busy, or stopped delivering frames."""


class SourceTimeout(SourceError):
    """No data arrived within the read timeout (or no first frame within the open timeout)."""


class SourceClosed(SourceError):
    """The source was closed (or already read) and cannot deliver or accept frames."""


class InvalidFrame(SourceError):
    """One pushed frame could not be used (undecodable bytes, bad array); only that push fails."""


class InvalidAudio(SourceError):
    """One pushed audio buffer could not be used (odd byte count, bad rate, empty, too long,
    bad array); only that push fails."""

    code = "invalid_audio"
