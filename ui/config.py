"""Settings of the page: one frozen, validated dataclass."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any


class PageConfigError(ValueError):
    """An invalid page setting; the message names the field and the allowed range."""


def _number(name: str, value: Any, lo: float, hi: float) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and lo <= value <= hi
    if not ok:
        raise PageConfigError(f"{name} must be a number in [{lo:g}, {hi:g}]; got {value!r}")


@dataclass(frozen=True)
class PageConfig:
    """How the page behaves.

    Attributes:
        title: the browser tab's title (1 to 200 characters).
        stream_every_s: seconds between webcam frames the browser sends. [0.05, 10]
        stats_every_s: seconds between live-statistics refreshes. [0.2, 60]
        source_fps: frames per second of stream time that an uploaded video or a camera URL feeds
            the model; capped at the manager's ``max_fps``. [0.05, 1000]
        session_overrides: settings of every tab's session on top of the manager's defaults
            (SessionConfig field names; the manager validates them when a session is created).
    """

    title: str = "LiveSight"
    stream_every_s: float = 0.5
    stats_every_s: float = 1.0
    source_fps: float = 1.0
    session_overrides: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.title, str) or not 1 <= len(self.title) <= 200:
            raise PageConfigError(f"title must be a string of 1 to 200 characters; got {self.title!r}")
        _number("stream_every_s", self.stream_every_s, 0.05, 10)
        _number("stats_every_s", self.stats_every_s, 0.2, 60)
        _number("source_fps", self.source_fps, 0.05, 1000)
        if not isinstance(self.session_overrides, dict):
            raise PageConfigError(
                f"session_overrides must be a dict of SessionConfig field names; got {type(self.session_overrides).__name__}")
