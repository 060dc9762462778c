"""Wall-clock pacing: play a stream's timestamps at real speed (a file as a live camera)."""

from __future__ import annotations

import threading
import time


class RealtimeClock:
    """Maps stream pts to wall-clock due times relative to the first frame, and waits for them.

    The first frame is due at once; a frame with pts ``p`` is due ``(p - p0) / speed`` seconds
    later. When timestamps jump backwards the clock re-anchors on that frame.

    Args:
        speed: playback speed (1.0 = real time, 2.0 = twice as fast).
        stop: when set, :meth:`wait` returns None at once.
    """

    def __init__(self, speed: float, stop: threading.Event) -> None:
        self.speed = speed
        self._stop = stop
        self._anchor_pts: float | None = None
        self._anchor_mono = 0.0
        self._anchor_wall = 0.0

    def wait(self, pts: float) -> float | None:
        """Sleep until the frame with this pts is due.

        Returns:
            the frame's due time as ``time.time()`` seconds (the arrival time of a camera
            that captured it on schedule; earlier than now when the reader is late), or None
            when ``stop`` was set while waiting.
        """
        if self._anchor_pts is None or pts < self._anchor_pts:
            self._anchor_pts = pts
            self._anchor_mono = time.monotonic()
            self._anchor_wall = time.time()
        offset = (pts - self._anchor_pts) / self.speed
        remaining = self._anchor_mono + offset - time.monotonic()
        if remaining > 0 and self._stop.wait(remaining):
            return None
        if self._stop.is_set():
            return None
        return self._anchor_wall + offset
