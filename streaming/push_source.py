"""Frames (and audio) pushed in by other code (a websocket, the browser webcam), as bytes or arrays."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import numpy as np

from streaming.audio import AUDIO_RATE, AudioChunk, decode_pcm
from streaming.base import FrameSource, Select
from streaming.checks import check_bool, check_int, check_number, check_timeout
from streaming.errors import InvalidAudio, InvalidFrame, SourceClosed, SourceTimeout
from streaming.frame import Frame
from streaming.imageops import as_rgb_array, decode_image, resize_rgb
from streaming.info import SourceInfo
from streaming.newest_queue import NewestWinsQueue, QueueClosed, QueueEmpty


class PushSource(FrameSource):
    """A live source fed by :meth:`push` (and :meth:`push_audio`); thread-safe and bounded
    (the newest frame wins).

    Any number of threads may push encoded images (JPEG, PNG, WebP, BMP bytes) or RGB
    arrays. Images are decoded in the pushing thread, so an undecodable push raises
    :class:`InvalidFrame` for that push alone. When the queue of ``max_queue`` frames is full
    the oldest is dropped and counted in ``counters.dropped``.

    ``pts`` is the pushed one, or seconds of wall time since the source was created when a
    push gives none. :meth:`end` lets the reader drain what is queued and then stop;
    :meth:`close` stops the reader at once.

    With ``audio=True``, :meth:`push_audio` takes PCM (int16 bytes or int16/float32 arrays at
    8-48 kHz), resamples it to 16 kHz mono and hands it as an
    :class:`~streaming.audio.AudioChunk` to the :meth:`on_audio` consumers, on the pushing
    thread; a bad push raises :class:`InvalidAudio` for that push alone.

    Args:
        max_queue: frames held for the reader at most (>= 1).
        open_timeout_s: longest wait for the first frame (None: forever) -> :class:`SourceTimeout`.
        read_timeout_s: longest wait between later frames (None: forever) -> :class:`SourceTimeout`.
            With audio on, audio pushed within the timeout keeps the source alive without frames.
        max_pixels: largest accepted frame (width x height).
        name: how the source is named in messages.
        audio: accept :meth:`push_audio`.
    """

    kind = "push"

    def __init__(self, max_queue: int = 8, *, open_timeout_s: float | None = None,
                 read_timeout_s: float | None = None, max_pixels: int = 8192 * 8192, name: str = "push",
                 audio: bool = False) -> None:
        super().__init__(name, live=True)
        self.audio = check_bool("audio", audio)
        self.max_queue = check_int("max_queue", max_queue, low=1, high=100_000)
        self.open_timeout_s = check_timeout("open_timeout_s", open_timeout_s)
        self.read_timeout_s = check_timeout("read_timeout_s", read_timeout_s)
        self.max_pixels = check_int("max_pixels", max_pixels, low=1, high=2**31)
        self._queue: NewestWinsQueue[Frame] = NewestWinsQueue(self.max_queue)
        self._lock = threading.Lock()
        self._index = 0
        self._t0 = time.time()
        self._size: tuple[int, int] | None = None
        self._audio_lock = threading.Lock()
        self._audio_wall: float | None = None  # when audio was last pushed

    @property
    def info(self) -> SourceInfo:
        size = self._size
        return SourceInfo(source=self.name, kind=self.kind, live=True, width=size[0] if size else None,
                          height=size[1] if size else None, has_audio=self.audio,
                          audio_rate=AUDIO_RATE if self.audio else None)

    def push(self, data: bytes | bytearray | memoryview | np.ndarray, pts: float | None = None) -> Frame:
        """Add one frame.

        Args:
            data: encoded image bytes, or an array (H, W, 3) RGB / (H, W, 4) RGBA / (H, W) grey, uint8.
            pts: its timestamp in seconds (None: wall time since the source was created).

        Returns:
            the queued :class:`Frame`.

        Raises:
            InvalidFrame: undecodable bytes, bad array, bad pts or too many pixels (this push only).
            SourceClosed: :meth:`end` or :meth:`close` was called.
        """
        if self._queue.closed:
            raise SourceClosed(f"{self.name}: source is closed; cannot push", self.name)
        wall = time.time()
        with self._lock:
            self.counters.received += 1
        try:
            rgb = self._to_rgb(data)
            if pts is not None:
                pts = check_number("pts", pts, low=-1e12, high=1e12)
        except (ValueError, TypeError) as exc:
            with self._lock:
                self.counters.decode_errors += 1
            raise InvalidFrame(f"{self.name}: pushed frame rejected: {exc}", self.name) from exc
        with self._lock:  # index order == queue order, even with many pushing threads
            frame = Frame(index=self._index, pts=wall - self._t0 if pts is None else float(pts), wall=wall, rgb=rgb)
            try:
                if self._queue.put(frame):
                    self.counters.dropped += 1
            except QueueClosed:
                raise SourceClosed(f"{self.name}: source is closed; cannot push", self.name) from None
            self._index += 1
            self.counters.decoded += 1
            self._size = (rgb.shape[1], rgb.shape[0])
        return frame

    def push_audio(self, pcm: bytes | bytearray | memoryview | np.ndarray, *, rate: int,
                   pts: float | None = None) -> AudioChunk:
        """Add one buffer of audio and hand it to the :meth:`on_audio` consumers.

        Args:
            pcm: little-endian int16 mono PCM bytes, or a mono int16 / float32 ([-1, 1]) array.
            rate: its sample rate, an integer in [8000, 48000] Hz (resampled to 16 kHz).
            pts: stream time of its first sample in seconds (None: it ends now, on the clock of
                frames pushed without pts, and continues the previous push when that is
                no more than half a second off).

        Returns:
            the :class:`~streaming.audio.AudioChunk` handed out (16 kHz mono float32).

        Raises:
            InvalidAudio: audio is off for this source, or the push is bad (odd byte count,
                wrong rate, empty, over :data:`~streaming.audio.MAX_PUSH_S` s, bad dtype/shape, bad pts);
                this push only.
            SourceClosed: :meth:`end` or :meth:`close` was called.
        """
        if self._queue.closed:
            raise SourceClosed(f"{self.name}: source is closed; cannot push audio", self.name)
        counters = self._audio.counters
        with self._audio_lock:
            counters.packets += 1
            try:
                samples = self._audio_samples(pcm, rate, pts)
            except InvalidAudio as exc:
                counters.decode_errors += 1
                raise InvalidAudio(f"{self.name}: pushed audio rejected: {exc}", self.name) from None
            duration = samples.size / AUDIO_RATE
            if pts is None:
                now = time.time() - self._t0
                start = max(0.0, now - duration)
                last = counters.last_end
                if last is not None and start - last < self._CONTIGUOUS_S:
                    start = last  # a steady stream of pushes: keep it gapless
            else:
                start = float(pts)
            chunk = AudioChunk(pts=start, samples=samples)
            self._audio_wall = time.time()
            self._audio.emit(chunk)  # under the lock: consumers see pushes in order
        return chunk

    #: A push (without pts) starting within this of the previous push's end continues it (seconds).
    _CONTIGUOUS_S = 0.5

    def _audio_samples(self, pcm: object, rate: object, pts: object) -> np.ndarray:
        """Validated 16 kHz float32 samples of one push (raises InvalidAudio naming the problem)."""
        if not self.audio:
            raise InvalidAudio("audio is off for this source (it was created with audio=False)")
        if pts is not None:
            check_number("pts", pts, low=0.0, high=1e12, low_inclusive=True, error=InvalidAudio)
        return decode_pcm(pcm, rate)

    def _to_rgb(self, data: object) -> np.ndarray:
        if isinstance(data, np.ndarray):
            rgb = as_rgb_array(data)
            if np.shares_memory(rgb, data):  # the pusher may reuse its buffer: keep our own copy
                rgb = rgb.copy()
        elif isinstance(data, (bytes, bytearray, memoryview)):
            # the header's size is checked before decoding (a small PNG can declare gigapixels)
            rgb = decode_image(bytes(data), max_pixels=self.max_pixels, names=("max_side", "max_pixels"))
            if rgb is None:
                raise ValueError(f"{len(data)} bytes are not a decodable image (JPEG/PNG/WebP/BMP expected)")
        else:
            raise TypeError(f"expected image bytes or a numpy array, got {type(data).__name__}")
        if rgb.shape[0] * rgb.shape[1] > self.max_pixels:
            raise ValueError(f"frame of {rgb.shape[1]}x{rgb.shape[0]} exceeds max_pixels={self.max_pixels}")
        return rgb

    def end(self) -> None:
        """No more pushes: the reader gets what is queued, then iteration ends."""
        self._queue.close(drain=True)

    def close(self) -> None:
        """Stop at once: pending frames are discarded and iteration ends."""
        self._queue.close(drain=False)
        super().close()

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    def _produce(self, select: Select | None, max_side: int | None) -> Iterator[Frame]:
        first = True
        while True:
            timeout = self.open_timeout_s if first else self.read_timeout_s
            try:
                frame = self._queue.get(timeout=timeout)
            except QueueClosed:
                return
            except QueueEmpty:
                if self._audio_wall is not None and time.time() - self._audio_wall < (timeout or 0.0):
                    continue  # audio is still being pushed: the source is alive without frames
                what = "first frame" if first else "frame"
                raise SourceTimeout(f"{self.name}: no {what} pushed within {timeout:g} s", self.name) from None
            first = False
            if select is not None and not select(frame.pts):
                continue
            if max_side is not None:
                resized = resize_rgb(frame.rgb, max_side)
                if resized is not frame.rgb:
                    frame = Frame(index=frame.index, pts=frame.pts, wall=frame.wall, rgb=resized)
            yield frame
