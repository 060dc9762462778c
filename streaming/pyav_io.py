"""PyAV plumbing shared by the file and URL sources.

Opening an input with open/read timeouts and mapping FFmpeg's errors to our typed errors,
picking the video (and audio) stream, describing them, and a packet-by-packet decoder that
demuxes video and audio together and skips bad packets (counting them) instead of giving up
on the whole stream.
"""

from __future__ import annotations

import logging
import os
import time
from fractions import Fraction

import av
import av.error
import numpy as np

from streaming.audio import AudioChunk, AudioDecoder
from streaming.base import SourceCounters
from streaming.errors import (
    AccessDenied,
    AudioOnly,
    CorruptStream,
    NotAVideo,
    SourceError,
    SourceNotFound,
    SourceTimeout,
    SourceUnreachable,
)
from streaming.frame import Frame
from streaming.imageops import fit_size
from streaming.info import SourceInfo

log = logging.getLogger(__name__)

#: Errors of the transport rather than of the data: for a live URL they mean an outage.
NETWORK_ERRORS: tuple[type[BaseException], ...] = (av.error.ExitError, OSError, EOFError)

#: Leading bytes of the containers FFmpeg reads (used to tell a damaged video from a non-video).
_MAGIC_AT_0 = (b"\x1aE\xdf\xa3", b"RIFF", b"OggS", b"FLV", b"\x00\x00\x01\xba", b"\x00\x00\x00\x01",
               b"\x00\x00\x01\xb3", b"0&\xb2u", b"ID3", b"#EXTM3U", b"YUV4MPEG2", b"fLaC")
_MP4_BOXES = (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip", b"pnot")


class StreamInterrupted(Exception):
    """The transport failed mid-stream (connection reset, read timeout): an outage."""

    def __init__(self, reason: str, timed_out: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.timed_out = timed_out


def reason_of(exc: BaseException) -> str:
    """A short human reason for an FFmpeg/OS error (its strerror when it has one)."""
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return str(text)


def looks_like_media(path: str) -> bool:
    """True when the file starts with the signature of a container FFmpeg knows."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(400)
    except OSError:
        return False
    if head.startswith(_MAGIC_AT_0) or head[4:8] in _MP4_BOXES:
        return True
    return len(head) > 188 and head[0] == 0x47 and head[188] == 0x47  # MPEG-TS sync bytes


def open_input(target: str, *, name: str, options: dict[str, str] | None, open_timeout_s: float | None,
               read_timeout_s: float | None, network: bool) -> av.container.InputContainer:
    """``av.open`` with timeouts; FFmpeg errors become typed :class:`SourceError` s.

    Raises:
        SourceNotFound, AccessDenied, NotAVideo, CorruptStream, SourceUnreachable,
        SourceTimeout or SourceError, each naming ``name`` and the problem.
    """
    timeout = None if open_timeout_s is None and read_timeout_s is None else (open_timeout_s, read_timeout_s)
    started = time.monotonic()
    try:
        return av.open(target, mode="r", options=dict(options or {}), timeout=timeout)
    except (av.error.FFmpegError, OSError) as exc:
        elapsed = time.monotonic() - started
        raise map_open_error(exc, name=name, target=target, elapsed=elapsed,
                             open_timeout_s=open_timeout_s, network=network) from exc


def map_open_error(exc: BaseException, *, name: str, target: str, elapsed: float,
                   open_timeout_s: float | None, network: bool) -> SourceError:
    """Translate an error raised by ``av.open`` into the matching typed error."""
    reason = reason_of(exc)
    if isinstance(exc, (FileNotFoundError, av.error.HTTPNotFoundError)):
        return SourceNotFound(f"{name}: not found ({reason})", name)
    if isinstance(exc, (av.error.HTTPUnauthorizedError, av.error.HTTPForbiddenError, PermissionError)):
        return AccessDenied(f"{name}: access denied ({reason})", name)
    if isinstance(exc, IsADirectoryError):
        return NotAVideo(f"{name}: is a directory, not a video", name)
    if isinstance(exc, av.error.ProtocolNotFoundError):
        return SourceError(f"{name}: this FFmpeg build has no protocol for it ({reason})", name)
    near_timeout = open_timeout_s is not None and elapsed >= 0.9 * open_timeout_s
    if network:
        if isinstance(exc, (av.error.ExitError, TimeoutError)) or near_timeout:
            return SourceUnreachable(f"{name}: no answer within the open timeout ({open_timeout_s:g} s)", name)
        if isinstance(exc, ConnectionRefusedError):
            return SourceUnreachable(f"{name}: connection refused", name)
        if isinstance(exc, NETWORK_ERRORS):
            return SourceUnreachable(f"{name}: cannot connect ({reason})", name)
        if isinstance(exc, av.error.InvalidDataError):
            return NotAVideo(f"{name}: the server's answer is not a media stream ({reason})", name)
        return SourceUnreachable(f"{name}: cannot open ({reason})", name)
    if isinstance(exc, av.error.InvalidDataError):
        if os.path.isfile(target) and os.path.getsize(target) == 0:
            return NotAVideo(f"{name}: empty file, not a video", name)
        if looks_like_media(target):
            return CorruptStream(f"{name}: damaged media file, the container cannot be read ({reason})", name)
        return NotAVideo(f"{name}: not a video or media file ({reason})", name)
    if isinstance(exc, (av.error.ExitError, TimeoutError)):
        return SourceTimeout(f"{name}: opening took longer than the open timeout ({open_timeout_s} s)", name)
    return SourceError(f"{name}: cannot open ({reason})", name)


def pick_video_stream(container: av.container.InputContainer, name: str) -> av.video.stream.VideoStream:
    """The first video stream that has a decoder.

    Raises:
        AudioOnly: the input has audio streams but no video.
        NotAVideo: no video stream at all, or no decoder for its codec.
    """
    video, _ = pick_streams(container, name, audio=False)
    assert video is not None
    return video


def _first_decodable(streams: list) -> object | None:
    for stream in streams:
        if stream.codec_context is not None:
            return stream
    return None


def pick_streams(container: av.container.InputContainer, name: str, *, audio: bool
                 ) -> tuple[av.video.stream.VideoStream | None, av.audio.stream.AudioStream | None]:
    """The first decodable video stream and, with ``audio``, the first decodable audio stream.

    With ``audio=True`` an input with audio and no video is valid (``(None, audio_stream)``);
    with ``audio=False`` the audio stream is never picked (``(video, None)``).

    Raises:
        AudioOnly: ``audio=False`` and the input has audio streams but no video.
        NotAVideo: no video stream (and, with ``audio``, no audio stream) that can be decoded.
    """
    videos = list(container.streams.video)
    audios = list(container.streams.audio)
    video = _first_decodable(videos)
    sound = _first_decodable(audios) if audio else None
    if video is None and sound is None:
        if videos:
            raise NotAVideo(f"{name}: no decoder for its video codec", name)
        if audios and not audio:
            codecs = ", ".join(sorted({s.codec_context.name for s in audios if s.codec_context}))
            raise AudioOnly(f"{name}: audio only ({codecs}), no video stream (open it with audio on to hear it)",
                            name)
        if audios:
            raise NotAVideo(f"{name}: no decoder for its audio codec and no video stream", name)
        raise NotAVideo(f"{name}: neither a video nor an audio stream in this {container.format.name} input", name)
    return video, sound  # type: ignore[return-value]


def describe(container: av.container.InputContainer, stream: av.video.stream.VideoStream | None, *, name: str,
             kind: str, live: bool) -> SourceInfo:
    """A :class:`SourceInfo` from what the container and stream headers say (``stream`` None:
    an audio-only input)."""
    audios = list(container.streams.audio)
    sound = audios[0] if audios else None
    audio_codec = sound.codec_context.name if sound is not None and sound.codec_context is not None else None
    audio_rate = (sound.codec_context.sample_rate or None) if sound is not None and sound.codec_context else None
    duration = None
    if stream is not None and stream.duration and stream.time_base:
        duration = float(stream.duration * stream.time_base)
    elif container.duration:
        duration = container.duration / av.time_base
    common = dict(source=name, kind=kind, live=live, container=container.format.name,
                  duration_s=duration if duration and duration > 0 else None, has_audio=bool(audios),
                  audio_codec=audio_codec, audio_rate=audio_rate)
    if stream is None:
        return SourceInfo(**common, has_video=False)
    ctx = stream.codec_context
    rate = stream.average_rate or stream.guessed_rate
    return SourceInfo(
        **common,
        codec=ctx.name,
        width=ctx.width or None,
        height=ctx.height or None,
        fps=float(rate) if rate else None,
        frame_count=stream.frames or None,
        has_video=True,
    )


def frame_to_rgb(frame: av.VideoFrame, max_side: int | None) -> np.ndarray:
    """Convert a decoded frame to RGB (H, W, 3) uint8, scaled in the same swscale pass when
    ``max_side`` asks for a smaller size (aspect ratio kept, area filter)."""
    if max_side is None or max(frame.width, frame.height) <= max_side:
        return frame.to_ndarray(format="rgb24")
    width, height = fit_size(frame.width, frame.height, max_side)
    return frame.to_ndarray(format="rgb24", width=width, height=height, interpolation="AREA")


def make_frame(item: tuple[int, float, np.ndarray], wall: float) -> Frame:
    """A :class:`Frame` from ``(index, pts, rgb)`` (a function, so the caller holds no reference)."""
    return Frame(index=item[0], pts=item[1], wall=wall, rgb=item[2])


class PacketDecoder:
    """Reads one container's video (and audio) stream one packet at a time and decodes it.

    Video and audio are demuxed together, in the container's order, so pacing and outages
    work the same for both. Decoded audio is gathered by the :class:`AudioDecoder` into
    :attr:`audio_ready`, which the source drains and hands to its ``on_audio`` consumers.
    Bad video packets (demux or decode errors) are counted in ``counters.decode_errors`` and
    skipped; bad audio packets are counted in the audio counters and skipped, and never stop
    the video. Transport errors raise :class:`StreamInterrupted`; more than
    ``max_consecutive_errors`` errors in a row without a frame (video frames, or audio for an
    audio-only input) raise :class:`CorruptStream`.

    With ``max_pixels``, every frame over it is refused: the decoder itself refuses pictures of more
    than twice that (FFmpeg's own ``max_pixels``: it never allocates them), so a stream whose frame
    size grows mid-way cannot make it take gigabytes, and a decoded frame over the exact limit is
    dropped. Each refused frame is counted in ``counters.too_large`` with the reason in
    ``counters.last_refusal`` (naming the size); the frames before and after it go on.

    Args:
        container: an open input container.
        stream: its video stream (thread type already set), or None for an audio-only input.
        counters: where to count packets, frames and errors.
        name: the source's name for messages.
        max_consecutive_errors: errors in a row tolerated before giving up.
        audio: the decoder of the audio stream to demux beside the video, or None.
        max_pixels: largest picture (width x height) decoded; None: no limit.
    """

    def __init__(self, container: av.container.InputContainer, stream: av.video.stream.VideoStream | None,
                 counters: SourceCounters, name: str, max_consecutive_errors: int,
                 audio: AudioDecoder | None = None, audio_stream: av.audio.stream.AudioStream | None = None,
                 max_pixels: int | None = None) -> None:
        if stream is None and audio is None:
            raise ValueError("PacketDecoder needs a video stream, an audio decoder, or both")
        self._max_pixels = max_pixels
        if stream is not None and max_pixels is not None:
            # read when the decoder opens (on the first packet): FFmpeg then refuses larger pictures itself,
            # before allocating them. It counts the width padded to its stride alignment, so it gets twice
            # the limit (a frame at the limit must decode); each decoded frame is checked exactly below.
            stream.codec_context.options = {**dict(stream.codec_context.options or {}),
                                            "max_pixels": str(2 * max_pixels)}
        self._container = container
        self._stream = stream
        self._audio = audio if audio_stream is not None else None
        self._audio_stream = audio_stream if audio is not None else None
        self._counters = counters
        self._name = name
        self._max_errors = max_consecutive_errors
        self._consecutive = 0
        self._streams = [s for s in (stream, self._audio_stream) if s is not None]
        self._demux = container.demux(*self._streams)
        self.time_base: Fraction = (stream.time_base if stream is not None else None) or Fraction(1, 90000)
        #: Audio chunks decoded and not yet handed out, oldest first.
        self.audio_ready: list[AudioChunk] = []

    def step(self) -> list[av.VideoFrame] | None:
        """Read and decode one packet.

        Returns:
            the video frames it produced (often one, sometimes none; none for an audio packet,
            whose chunks go to :attr:`audio_ready`), or None at end of stream.

        Raises:
            StreamInterrupted: the transport failed (connection lost, read timeout).
            CorruptStream: too many errors in a row.
        """
        try:
            packet = next(self._demux)
        except StopIteration:
            if self._audio is not None:
                self.audio_ready.extend(self._audio.flush())
            return None
        except NETWORK_ERRORS as exc:
            raise StreamInterrupted(reason_of(exc), timed_out=isinstance(exc, (av.error.ExitError, TimeoutError))) from exc
        except av.error.FFmpegError as exc:
            self._error("demux", exc)
            self._demux = self._container.demux(*self._streams)
            return []
        if self._audio is not None and packet.stream_index == self._audio_stream.index:  # type: ignore[union-attr]
            return self._audio_step(packet)
        if packet.size:
            self._counters.received += 1
        flagged = bool(packet.is_corrupt)  # e.g. a packet cut short by a truncated file
        if flagged:
            self._error("demux", None)
        try:
            frames = packet.decode()
        except av.error.FFmpegError as exc:
            if self._oversized():
                return []
            if not flagged:
                self._error("decode", exc)
            return []
        if self._max_pixels is not None and any(f.width * f.height > self._max_pixels for f in frames):
            for f in frames:
                if f.width * f.height > self._max_pixels:
                    self._refuse(f.width, f.height)
            frames = [f for f in frames if f.width * f.height <= self._max_pixels]
        if frames:
            self._consecutive = 0
        for frame in frames:
            self._counters.decoded += 1
            if frame.is_corrupt:
                self._counters.corrupt_frames += 1
        return frames

    def _oversized(self) -> bool:
        """After a decode error: whether the stream's pictures became larger than ``max_pixels`` (the
        decoder refused them; its context holds the new size). Counts the refusal."""
        if self._max_pixels is None or self._stream is None:
            return False
        ctx = self._stream.codec_context
        width, height = int(ctx.width or 0), int(ctx.height or 0)
        if width * height <= self._max_pixels:
            return False
        self._refuse(width, height)
        return True

    def _refuse(self, width: int, height: int) -> None:
        self._counters.too_large += 1
        message = (f"{self._name}: a frame of {width}x{height} = {width * height} pixels exceeds max_pixels="
                   f"{self._max_pixels}: the frame is refused (the stream's frame size changed)")
        if self._counters.last_refusal != message:
            log.warning("%s", message)
        self._counters.last_refusal = message

    def flush_audio(self) -> None:
        """The session ends early (an outage): move what the audio decoder holds to :attr:`audio_ready`."""
        if self._audio is not None:
            self.audio_ready.extend(self._audio.flush())

    def _audio_step(self, packet: av.Packet) -> list[av.VideoFrame]:
        audio = self._audio
        assert audio is not None
        self.audio_ready.extend(audio.decode(packet))
        if self._stream is None and audio.consecutive_errors > self._max_errors:
            raise CorruptStream(f"{self._name}: {audio.consecutive_errors} audio decode errors in a row, giving up",
                                self._name)
        return []

    def _error(self, stage: str, exc: BaseException | None) -> None:
        self._counters.decode_errors += 1
        self._consecutive += 1
        reason = "packet flagged corrupt" if exc is None else reason_of(exc)
        log.debug("%s: %s error skipped (%s)", self._name, stage, reason)
        if self._consecutive > self._max_errors:
            raise CorruptStream(
                f"{self._name}: {self._consecutive} {stage} errors in a row, giving up ({reason})", self._name
            ) from exc
