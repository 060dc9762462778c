"""Settings of the page: one frozen, validated dataclass."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from streaming.checks import check_number


class PageConfigError(ValueError):
    """An invalid page setting; the message names the field and the allowed range."""


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
        check_number("stream_every_s", self.stream_every_s, low=0.05, high=10, low_inclusive=True, error=PageConfigError)
        check_number("stats_every_s", self.stats_every_s, low=0.2, high=60, low_inclusive=True, error=PageConfigError)
        check_number("source_fps", self.source_fps, low=0.05, high=1000, low_inclusive=True, error=PageConfigError)
        if not isinstance(self.session_overrides, dict):
            raise PageConfigError(
                f"session_overrides must be a dict of SessionConfig field names; got {type(self.session_overrides).__name__}")
