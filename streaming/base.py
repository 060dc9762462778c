"""The :class:`FrameSource` contract every source implements, and its counters."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import TracebackType

from streaming.audio import AudioCallback, AudioDispatch
from streaming.errors import SourceClosed
from streaming.frame import Frame
from streaming.info import Gap, SourceInfo

#: A predicate on a frame's pts (seconds): True keeps the frame. Sources call it *before*
#: converting pixels, so frames a sampler does not want cost only their decode.
Select = Callable[[float], bool]


@dataclass
class SourceCounters:
    """Live counters a source updates as it reads (single writer: the reading thread).

    Attributes:
        received: input units taken in (demuxed video packets, pushes, capture reads).
        decoded: frames decoded successfully (before any sampling).
        decode_errors: packets/pushes that failed to decode and were skipped.
        corrupt_frames: frames the decoder produced but flagged as corrupt (concealed errors).
        dropped: frames the source itself discarded because its consumer was slow (push queue).
        reconnects: successful reconnections after an outage.
        gaps: one :class:`Gap` per outage that ended in a reconnection.
        reconnecting: True while an outage is in progress.
        too_large: frames refused because their size (it may change mid-stream) exceeds the source's
            ``max_pixels``; the decoder refuses them before allocating their pictures.
        last_refusal: why the latest of those was refused (names the size and the limit).
    """

    received: int = 0
    decoded: int = 0
    decode_errors: int = 0
    corrupt_frames: int = 0
    dropped: int = 0
    reconnects: int = 0
    gaps: list[Gap] = field(default_factory=list)
    reconnecting: bool = False
    too_large: int = 0
    last_refusal: str | None = None


class FrameSource(ABC):
    """An iterable of :class:`Frame` with ``close()`` and context-manager support.

    A source opened with ``audio=True`` (file, URL, push) also hands its audio, as
    :class:`~streaming.audio.AudioChunk` s on the frames' clock, to the consumers registered
    with :meth:`on_audio`; :meth:`audio_stats` counts what it did.

    A source is read once: iterate it directly (every frame, full size) or call
    :meth:`frames` with a ``select`` predicate and ``max_side`` so it converts only the frames
    wanted, at the wanted size. ``close()`` may be called from any thread; it stops the reading
    promptly (network reads blocked inside FFmpeg return within the read timeout).

    Subclasses implement :attr:`info`, :meth:`_produce` and, if they hold resources,
    :meth:`_release` (called once, under ``_io_lock``, from the reading thread or ``close()``).
    """

    kind: str = "source"

    def __init__(self, name: str, *, live: bool) -> None:
        self.name = name
        self.live = live
        self.counters = SourceCounters()
        self._stop = threading.Event()
        self._io_lock = threading.Lock()
        self._released = False
        self._started = False
        #: True when the source decodes (or accepts) audio for its :meth:`on_audio` consumers.
        self.audio = False
        self._audio = AudioDispatch(name)

    @property
    @abstractmethod
    def info(self) -> SourceInfo:
        """Facts about the video stream."""

    def frames(self, select: Select | None = None, max_side: int | None = None) -> Iterator[Frame]:
        """Iterate the source's frames.

        Args:
            select: keep only frames whose pts it accepts (None keeps all). Rejected frames
                are decoded and counted but never converted to RGB.
            max_side: shrink frames so their longer side is at most this (None: full size).

        Returns:
            an iterator of :class:`Frame` with ``rgb`` of shape (H, W, 3) uint8.

        Raises:
            SourceClosed: the source is closed or is already being read.
        """
        if self._stop.is_set():
            raise SourceClosed(f"{self.name}: source is closed", self.name)
        if self._started:
            raise SourceClosed(f"{self.name}: source is already being read (a source is read once)", self.name)
        self._started = True
        return self._produce(select, max_side)

    def __iter__(self) -> Iterator[Frame]:
        return self.frames()

    def on_audio(self, callback: AudioCallback) -> None:
        """Register a consumer of the source's audio; call it before iterating.

        ``callback(chunk)`` runs on the thread that demuxes (or pushes) once per
        :class:`~streaming.audio.AudioChunk`, in stream order; it must be quick and must not
        block (queue the work). An exception it raises is logged and counted in
        :meth:`audio_stats` (``callback_errors``) and never stops the stream. A source opened
        with ``audio=False`` (or one that carries no audio) never calls it.
        """
        self._audio.add(callback)

    def audio_stats(self) -> dict[str, object]:
        """What the audio path did: ``enabled`` (opened with audio), ``packets``, ``chunks``,
        ``seconds`` (decoded audio), ``decode_errors``, ``callback_errors``, ``last_end``."""
        return {"enabled": self.audio, **self._audio.counters.as_dict()}

    def _emit_audio(self, chunks: list) -> None:
        """Hand decoded chunks (oldest first) to the consumers; empties ``chunks``."""
        for chunk in chunks:
            self._audio.emit(chunk)
        chunks.clear()

    @abstractmethod
    def _produce(self, select: Select | None, max_side: int | None) -> Iterator[Frame]:
        """Generator of frames; must stop soon after ``self._stop`` is set and call
        :meth:`_release_locked` when it ends."""

    def _release(self) -> None:  # noqa: B027 - an optional hook: a source with nothing to free keeps it
        """Free held resources (container, capture). Called at most once, under ``_io_lock``."""

    def _release_locked(self) -> None:
        with self._io_lock:
            if not self._released:
                self._released = True
                self._release()

    def close(self) -> None:
        """Stop reading and free resources. Idempotent, callable from any thread."""
        self._stop.set()
        if self._io_lock.acquire(blocking=False):
            try:
                if not self._released:
                    self._released = True
                    self._release()
            finally:
                self._io_lock.release()
        # else: the reading thread is inside I/O; it sees the stop flag and releases when it returns.

    @property
    def closed(self) -> bool:
        return self._stop.is_set()

    def __enter__(self) -> FrameSource:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"
