"""The sampler: keep frames at a target rate by timestamp, resize, hand off newest-wins."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from types import TracebackType

from streaming.base import FrameSource
from streaming.checks import check_int, check_number
from streaming.frame import Frame
from streaming.info import SourceInfo
from streaming.newest_queue import NewestWinsQueue, QueueClosed, QueueEmpty
from streaming.stats import IngestStats

log = logging.getLogger(__name__)

#: Window over which :attr:`IngestStats.fps` is measured, seconds.
FPS_WINDOW_S = 2.0


@dataclass(frozen=True)
class SamplerConfig:
    """How a :class:`Sampler` thins and shapes a stream.

    Attributes:
        fps: target rate in frames per second of *stream time* (pts), in [0, 1000];
            None or 0 keeps every frame.
        max_side: shrink frames so the longer side is at most this many pixels, aspect kept,
            in [8, 16384]; None keeps the source size.
        queue_size: bound of the newest-wins hand-off queue in live mode, in [1, 10000].
    """

    fps: float | None = None
    max_side: int | None = None
    queue_size: int = 4

    def __post_init__(self) -> None:
        check_number("fps", self.fps, low=0.0, high=1000.0, allow_none=True, low_inclusive=True)
        check_int("max_side", self.max_side, low=8, high=16384, allow_none=True)
        check_int("queue_size", self.queue_size, low=1, high=10000)

    @property
    def keep_all(self) -> bool:
        """True when no fps thinning applies."""
        return not self.fps


class TimestampSelector:
    """Keeps at most one frame per ``1/fps`` slot of stream time (by pts, not by count).

    Slots are counted from the first frame's pts, so the kept rate does not drift; a frame is
    kept when it is the first to land in a later slot than the last kept one. Variable frame
    rate input therefore keeps its real timing: bursts are thinned, pauses are not filled.
    When pts jump backwards by more than one slot (a timestamp reset) counting restarts there.
    """

    def __init__(self, fps: float) -> None:
        if not fps or fps <= 0:
            raise ValueError(f"fps must be > 0; got {fps!r}")
        self.fps = float(fps)
        self.interval = 1.0 / self.fps
        self._origin: float | None = None
        self._last_slot = 0
        self._last_pts = 0.0

    def __call__(self, pts: float) -> bool:
        if self._origin is None or pts < self._last_pts - self.interval:
            self._origin = pts
            self._last_slot = 0
            self._last_pts = pts
            return True
        slot = math.floor((pts - self._origin) * self.fps + 1e-6)
        if slot > self._last_slot:
            self._last_slot = slot
            self._last_pts = pts
            return True
        return False


class Sampler:
    """Runs a :class:`FrameSource`, keeps frames by timestamp at ``config.fps``, resizes them
    to ``config.max_side`` and hands them to one consumer.

    Two modes:

    * **live** (default for live sources: URLs, webcams, pushes, files played in real time):
      the source runs in a background thread and hands frames through a bounded queue of
      ``config.queue_size`` where the newest frame wins; each frame pushed out is counted in
      :attr:`IngestStats.dropped`. A slow consumer never builds a backlog.
    * **synchronous** (default for files read as fast as possible): the consumer's own thread
      pulls frames from the source; nothing is ever dropped, which is what offline use and
      benchmarks want.

    The fps rule and the resize are pushed down into the source, so frames the rule rejects
    are decoded but never converted to RGB.

    Args:
        source: the frame source (the sampler reads it once).
        config: sampling settings (default: every frame, source size).
        live: force the mode (None: ``source.live``).
        close_source: close the source when the sampler is closed.
    """

    def __init__(self, source: FrameSource, config: SamplerConfig | None = None, *, live: bool | None = None,
                 close_source: bool = True) -> None:
        self.source = source
        self.config = config if config is not None else SamplerConfig()
        if not isinstance(self.config, SamplerConfig):
            raise ValueError(f"config must be a SamplerConfig; got {type(config).__name__}")
        self.live = source.live if live is None else bool(live)
        self._close_source = close_source
        self._selector = None if self.config.keep_all else TimestampSelector(float(self.config.fps or 0))
        self._queue: NewestWinsQueue[Frame] | None = NewestWinsQueue(self.config.queue_size) if self.live else None
        self._frames: Iterator[Frame] | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._started_at: float | None = None
        self._finished = False
        self._closed = False
        self._sampled = 0
        self._delivered = 0
        self._lag = 0.0
        self._last_pts: float | None = None
        self._deliveries: deque[float] = deque()
        self._first_delivery: float | None = None
        self._stats_lock = threading.Lock()
        self._life_lock = threading.Lock()  # start() and close() from different threads

    @property
    def info(self) -> SourceInfo:
        """The source's stream facts."""
        return self.source.info

    @property
    def finished(self) -> bool:
        """True once the stream ended (or the sampler was closed) and all frames were handed out."""
        return self._finished

    def _select(self, pts: float) -> bool:
        keep = self._selector is None or self._selector(pts)
        if keep:
            self._sampled += 1
        return keep

    def start(self) -> Sampler:
        """Start reading (idempotent; iteration and :meth:`poll` start it too; a closed sampler stays closed)."""
        with self._life_lock:
            if self._started_at is not None or self._closed:
                return self
            self._started_at = time.monotonic()
            frames = self.source.frames(self._select, self.config.max_side)
            if self._queue is None:
                self._frames = frames
            else:
                self._thread = threading.Thread(target=self._pump, args=(frames,), daemon=True,
                                                name=f"sampler[{self.source.name}]")
                self._thread.start()
        return self

    def _pump(self, frames: Iterator[Frame]) -> None:
        assert self._queue is not None
        try:
            while True:  # no local keeps the last frame alive while the next is decoded
                self._queue.put(next(frames))
        except (StopIteration, QueueClosed):
            pass
        except Exception as exc:  # noqa: BLE001 - handed to the consumer, raised from poll()
            self._error = exc
        finally:
            close = getattr(frames, "close", None)
            if close is not None:
                close()
            self._queue.close(drain=True)

    def poll(self, timeout: float | None = None) -> Frame | None:
        """The next sampled frame, waiting up to ``timeout`` s in live mode (None: until one comes).

        Returns:
            a :class:`Frame`, or None when the timeout passed or the stream is finished
            (check :attr:`finished`). Synchronous mode ignores the timeout.

        Raises:
            SourceError: the source failed (raised once, then the sampler is finished).
        """
        if self._finished:
            return None
        self.start()
        if self._queue is not None:
            try:
                frame = self._queue.get(timeout=timeout)
            except QueueEmpty:
                return None
            except QueueClosed:
                self._finished = True
                if self._thread is not None and not self._closed:
                    self._thread.join()
                error, self._error = self._error, None
                if error is not None and not self._closed:
                    raise error from None
                return None
        else:
            if self._closed or self._frames is None:  # closed, possibly before it ever started
                self._finished = True
                return None
            try:
                frame = next(self._frames)
            except StopIteration:
                self._finished = True
                return None
            except BaseException:
                self._finished = True
                raise
        self._record(frame)
        return frame

    def _record(self, frame: Frame) -> None:
        now_wall = time.time()
        now = time.monotonic()
        with self._stats_lock:
            self._delivered += 1
            self._lag = max(0.0, now_wall - frame.wall)
            self._last_pts = frame.pts
            if self._first_delivery is None:
                self._first_delivery = now
            self._deliveries.append(now)
            while self._deliveries and self._deliveries[0] < now - FPS_WINDOW_S:
                self._deliveries.popleft()

    def __iter__(self) -> Iterator[Frame]:
        return self

    def __next__(self) -> Frame:
        frame = self.poll(None)
        if frame is None:
            raise StopIteration
        return frame

    def stats(self) -> IngestStats:
        """A snapshot of the pipeline's counters (safe to call from any thread)."""
        counters = self.source.counters
        now = time.monotonic()
        with self._stats_lock:
            while self._deliveries and self._deliveries[0] < now - FPS_WINDOW_S:
                self._deliveries.popleft()
            span = 0.0 if self._first_delivery is None else min(FPS_WINDOW_S, now - self._first_delivery)
            fps = len(self._deliveries) / span if span > 0 else 0.0
            delivered, lag, last_pts = self._delivered, self._lag, self._last_pts
        queue = self._queue
        audio = self.source.audio_stats()
        return IngestStats(
            received=counters.received,
            decoded=counters.decoded,
            sampled=self._sampled,
            delivered=delivered,
            dropped=(queue.dropped if queue is not None else 0) + counters.dropped,
            decode_errors=counters.decode_errors,
            corrupt_frames=counters.corrupt_frames,
            lag_s=lag,
            gaps=tuple(counters.gaps),
            fps=fps,
            reconnects=counters.reconnects,
            reconnecting=counters.reconnecting,
            queue_depth=len(queue) if queue is not None else 0,
            max_queue_depth=queue.max_depth if queue is not None else 0,
            queue_size=queue.maxsize if queue is not None else 0,
            elapsed_s=0.0 if self._started_at is None else now - self._started_at,
            last_pts=last_pts,
            live=self.live,
            finished=self._finished,
            audio_s=float(audio["seconds"]),
            audio_chunks=int(audio["chunks"]),
            audio_decode_errors=int(audio["decode_errors"]),
        )

    def close(self, join_timeout_s: float = 1.0) -> None:
        """Stop: iteration ends at once; the source is closed (unless ``close_source=False``).

        The background thread is given ``join_timeout_s`` to finish; a network read blocked
        inside FFmpeg ends on its own within the source's read timeout.
        """
        with self._life_lock:  # a start() racing this one either finished starting or will not start
            self._closed = True
            thread = self._thread
        if self._queue is not None:
            self._queue.close(drain=False)
        if self._close_source:
            self.source.close()
        if self._frames is not None:
            try:
                self._frames.close()  # type: ignore[attr-defined]
            except ValueError:  # being iterated in another thread: the source's stop flag ends it
                pass
        if thread is not None and thread is not threading.current_thread():
            thread.join(join_timeout_s)
            if thread.is_alive():
                log.info("%s: reader thread still inside a read; it ends within the read timeout", self.source.name)

    def __enter__(self) -> Sampler:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
