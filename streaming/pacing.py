"""Wall-clock pacing: play a stream's timestamps at real speed (a file as a live camera)."""

from __future__ import annotations

import threading
import time


class RealtimeClock:
    """Maps stream pts to wall-clock due times relative to the first frame, and waits for them.

    The first frame is due at once; a frame with pts ``p`` is due ``(p - p0) / speed`` seconds
    later. When timestamps jump backwards the clock re-anchors on that frame. When they jump
    forwards by more than ``max_gap_s`` (a broken timestamp, or a stream of one frame per hour) the
    frame is due ``max_gap_s`` after the previous one and the clock re-anchors there: a reader never
    waits longer than that for one frame.

    Args:
        speed: playback speed (1.0 = real time, 2.0 = twice as fast).
        stop: when set, :meth:`wait` returns None at once.
        max_gap_s: the longest wall-clock wait between two frames. (0, 3600]
    """

    def __init__(self, speed: float, stop: threading.Event, max_gap_s: float = 10.0) -> None:
        if isinstance(max_gap_s, bool) or not isinstance(max_gap_s, (int, float)) or not 0 < max_gap_s <= 3600:
            raise ValueError(f"max_gap_s must be a number of seconds in (0, 3600]; got {max_gap_s!r}")
        self.speed = speed
        self.max_gap_s = float(max_gap_s)
        self._stop = stop
        self._anchor_pts: float | None = None
        self._anchor_mono = 0.0
        self._anchor_wall = 0.0
        self._last_pts: float | None = None
        self._last_mono = 0.0
        self._last_wall = 0.0
        self.jumps = 0  # forward jumps over max_gap_s

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
        elif self._last_pts is not None and (pts - self._last_pts) / self.speed > self.max_gap_s:
            self.jumps += 1
            self._anchor_pts = pts
            self._anchor_mono = self._last_mono + self.max_gap_s
            self._anchor_wall = self._last_wall + self.max_gap_s
        offset = (pts - self._anchor_pts) / self.speed
        self._last_pts = pts
        self._last_mono = self._anchor_mono + offset
        self._last_wall = self._anchor_wall + offset
        remaining = self._anchor_mono + offset - time.monotonic()
        if remaining > 0 and self._stop.wait(remaining):
            return None
        if self._stop.is_set():
            return None
        return self._anchor_wall + offset
