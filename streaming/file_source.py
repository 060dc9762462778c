"""Video (and audio) files, any container/codec FFmpeg decodes, read through PyAV."""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Iterator

import av
import numpy as np

from streaming.audio import AudioChunk, AudioDecoder
from streaming.base import FrameSource, Select
from streaming.checks import check_bool, check_int, check_number, check_timeout
from streaming.errors import CorruptStream, NotAVideo, SourceNotFound
from streaming.frame import Frame
from streaming.info import SourceInfo
from streaming.pacing import RealtimeClock
from streaming.pyav_io import PacketDecoder, describe, frame_to_rgb, make_frame, open_input, pick_streams

log = logging.getLogger(__name__)

THREAD_TYPES = ("AUTO", "FRAME", "SLICE", "NONE")


def check_thread_type(value: object) -> str:
    if not isinstance(value, str) or value.upper() not in THREAD_TYPES:
        raise ValueError(f"thread_type must be one of {', '.join(THREAD_TYPES)}; got {value!r}")
    return value.upper()


class FrameClock:
    """Stream timestamps in seconds, with a best-effort pts for frames that carry none.

    A frame without pts is placed one frame duration after the previous one (its own
    duration, else ``1 / fps``, else 1/25 s).
    """

    def __init__(self, name: str, fps: float | None, start_s: float = 0.0) -> None:
        self._name = name
        self._step = 1.0 / fps if fps else 1.0 / 25.0
        self._last: float | None = None
        self._start = start_s
        self._warned = False

    def pts(self, frame: av.VideoFrame) -> float:
        if frame.pts is not None and frame.time_base is not None:
            value = float(frame.pts * frame.time_base)
        else:
            if not self._warned:
                log.info("%s: frames without timestamps; using best-effort pts", self._name)
                self._warned = True
            step = float(frame.duration * frame.time_base) if frame.duration and frame.time_base else self._step
            value = self._start if self._last is None else self._last + step
        self._last = value
        return value


class FileSource(FrameSource):
    """Frames (and, with ``audio=True``, audio) of a local media file, decoded with PyAV.

    ``pts`` come from the stream's own timestamps (variable frame rate keeps them); frames
    without one get a best-effort pts. Corrupt packets are skipped and counted in
    ``counters.decode_errors``; the stream goes on. With ``realtime=True`` frames are paced at
    wall-clock speed relative to the first pts (the file plays as a live camera, ``live`` is
    True) and each frame's ``wall`` is its due time on that clock.

    With ``audio=True`` the first audio stream is demuxed in the same loop as the video,
    resampled to 16 kHz mono and handed, as :class:`~streaming.audio.AudioChunk` s on the
    container's clock (the frames' clock), to the :meth:`on_audio` consumers, paced like the
    frames in realtime mode. An audio-only file is then valid: iterating yields no frames and
    the audio goes to the consumers until the end. Bad audio packets are skipped and counted in
    :meth:`audio_stats`; an audio track that ends early leaves the video going.

    Args:
        path: the file.
        realtime: pace frames at ``speed`` times real time.
        speed: playback speed for ``realtime`` (0, 100].
        open_timeout_s: limit for opening (None: no limit).
        read_timeout_s: limit for each read (None: no limit).
        thread_type: FFmpeg decoder threading, ``AUTO`` (default), ``FRAME``, ``SLICE`` or ``NONE``.
        max_consecutive_errors: bad packets in a row tolerated before :class:`CorruptStream`.
        options: extra FFmpeg demuxer options.
        audio: also decode the audio stream for :meth:`on_audio` consumers.
        max_pixels: largest frame (width x height) decoded, checked on every frame (a file's frame
            size may change mid-way): the decoder refuses larger ones without allocating them, and
            they are counted in ``counters.too_large``; None: no limit.

    Raises:
        SourceNotFound: no such file.
        NotAVideo: not a media file, or no video stream (:class:`AudioOnly` for audio only with
            ``audio=False``; with ``audio=True``, neither video nor audio).
        CorruptStream: looks like media but its container cannot be read.
    """

    kind = "file"

    def __init__(self, path: str | os.PathLike[str], *, realtime: bool = False, speed: float = 1.0,
                 open_timeout_s: float | None = 10.0, read_timeout_s: float | None = 10.0,
                 thread_type: str = "AUTO", max_consecutive_errors: int = 1000,
                 options: dict[str, str] | None = None, audio: bool = False, max_pixels: int | None = None) -> None:
        name = os.fspath(path)
        super().__init__(name, live=bool(realtime))
        self.speed = check_number("speed", speed, low=0.0, high=100.0)
        self.open_timeout_s = check_timeout("open_timeout_s", open_timeout_s)
        self.read_timeout_s = check_timeout("read_timeout_s", read_timeout_s)
        thread_type = check_thread_type(thread_type)
        self._max_errors = check_int("max_consecutive_errors", max_consecutive_errors, low=1, high=10**7)
        self.audio = check_bool("audio", audio)
        self.max_pixels = check_int("max_pixels", max_pixels, low=1, high=2**31, allow_none=True)
        if not os.path.exists(name):
            raise SourceNotFound(f"{name}: no such file", name)
        if os.path.isdir(name):
            raise NotAVideo(f"{name}: is a directory, not a video file", name)
        self._container = open_input(name, name=name, options=options, open_timeout_s=self.open_timeout_s,
                                     read_timeout_s=self.read_timeout_s, network=False)
        try:
            self._stream, audio_stream = pick_streams(self._container, name, audio=self.audio)
            if self._stream is not None:
                self._stream.thread_type = thread_type
            self._info = describe(self._container, self._stream, name=name, kind=self.kind, live=self.live)
            audio_decoder = (AudioDecoder(audio_stream, name, self._audio.counters)
                             if audio_stream is not None else None)
        except BaseException:
            self._container.close()
            raise
        self._decoder = PacketDecoder(self._container, self._stream, self.counters, name, self._max_errors,
                                      audio=audio_decoder, audio_stream=audio_stream, max_pixels=self.max_pixels)
        stream = self._stream
        start = float(stream.start_time * stream.time_base) if stream is not None and stream.start_time else 0.0
        self._clock = FrameClock(name, self._info.fps, start)

    @property
    def info(self) -> SourceInfo:
        return self._info

    def _produce(self, select: Select | None, max_side: int | None) -> Iterator[Frame]:
        # No local variable keeps a frame's pixels across a yield: a consumer that drops its
        # frame frees it before the next one is converted (glibc then reuses the memory).
        pacer = RealtimeClock(self.speed, self._stop) if self.live else None
        pending: deque[tuple[int, float, np.ndarray]] = deque()
        sound: deque[AudioChunk] = deque()
        index = 0
        ended = False
        try:
            while not ended:
                with self._io_lock:
                    if self._stop.is_set() or self._released:
                        return
                    decoded = self._decoder.step()
                    if decoded is None:
                        ended = True
                    else:
                        index = self._convert(decoded, select, max_side, index, pending)
                    del decoded
                    sound.extend(self._decoder.audio_ready)
                    self._decoder.audio_ready.clear()
                while pending or sound:  # in stream order, both paced on the same clock
                    if sound and (not pending or sound[0].pts <= pending[0][1]):
                        if pacer is not None and pacer.wait(sound[0].pts) is None:
                            return
                        self._audio.emit(sound.popleft())
                        continue
                    if pacer is None:
                        wall = time.time()
                    else:
                        due = pacer.wait(pending[0][1])
                        if due is None:
                            return
                        wall = due
                    yield make_frame(pending.popleft(), wall)
            self._check_decoded()
        finally:
            self._release_locked()

    def _check_decoded(self) -> None:
        """At the end: an input that gave nothing but errors is corrupt."""
        if self._stream is not None and self.counters.decoded == 0 and self.counters.decode_errors > 0:
            raise CorruptStream(
                f"{self.name}: no decodable video frame ({self.counters.decode_errors} decode errors)", self.name
            )
        audio = self._audio.counters
        if self._stream is None and audio.chunks == 0 and audio.decode_errors > 0:
            raise CorruptStream(f"{self.name}: no decodable audio ({audio.decode_errors} decode errors)", self.name)

    def _convert(self, decoded: list[av.VideoFrame], select: Select | None, max_side: int | None, index: int,
                 pending: deque[tuple[int, float, np.ndarray]]) -> int:
        """Timestamp the decoded frames, convert the selected ones into ``pending``; next index."""
        for vf in decoded:
            pts = self._clock.pts(vf)
            if select is None or select(pts):
                pending.append((index, pts, frame_to_rgb(vf, max_side)))
            index += 1
        return index

    def _release(self) -> None:
        self._container.close()
