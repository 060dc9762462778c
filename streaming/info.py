"""Plain records that describe a source: its stream facts and its outages."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SourceInfo:
    """Facts about a source's video (and audio) stream, as far as the container tells them.

    Attributes:
        source: the source as named by the user (URLs with the password redacted).
        kind: ``"file"``, ``"url"``, ``"webcam"`` or ``"push"``.
        live: True when frames arrive in real time (camera, live URL, file played as live).
        container: demuxer name (e.g. ``"mov,mp4,m4a,3gp,3g2,mj2"``), or None.
        codec: video codec name (e.g. ``"h264"``), or None when unknown.
        width: coded frame width in pixels, or None when unknown.
        height: coded frame height in pixels, or None when unknown.
        fps: average frame rate, or None when unknown.
        duration_s: duration in seconds when the container knows it, else None.
        frame_count: number of frames when the container knows it, else None.
        has_audio: True when the input carries an audio stream (decoded only when the source
            was opened with ``audio=True``).
        has_video: True when the input has a video stream (False for an audio-only source).
        audio_codec: the first audio stream's codec name (e.g. ``"aac"``), or None.
        audio_rate: its sample rate in Hz as the container states it, or None.
    """

    source: str
    kind: str
    live: bool
    container: str | None = None
    codec: str | None = None
    width: int | None = None
    height: int | None = None
    fps: float | None = None
    duration_s: float | None = None
    frame_count: int | None = None
    has_audio: bool = False
    has_video: bool = True
    audio_codec: str | None = None
    audio_rate: int | None = None

    @property
    def size(self) -> str | None:
        """``"WxH"`` or None when the size is unknown."""
        if self.width is None or self.height is None:
            return None
        return f"{self.width}x{self.height}"


@dataclass(frozen=True)
class Gap:
    """One outage of a live source, from detection to reconnection.

    Attributes:
        start_wall: ``time.time()`` when the outage was detected (end of stream, error, timeout).
        end_wall: ``time.time()`` when a new session was open again.
        duration_s: ``end_wall - start_wall``.
        reason: why the stream was lost (e.g. ``"end of stream"``, ``"read timeout"``).
        attempts: connection attempts it took to come back.
    """

    start_wall: float
    end_wall: float
    duration_s: float
    reason: str
    attempts: int = 1
