"""The unit of video that flows through LiveSight."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Frame:
    """One decoded video frame.

    Attributes:
        index: position of the frame in its source's decoded sequence (0-based).
        pts: presentation time in seconds, from the stream's own timestamps.
        wall: wall-clock arrival time (``time.time()``) when the frame was decoded/received.
        rgb: pixels, shape ``(H, W, 3)``, dtype ``uint8``, RGB order; read-only.
        label: the source it came from, as a person would name it (``webcam``, ``file bikes.mp4``,
            ``rtsp://cam.example/live``: see :mod:`streaming.labels`); None when nobody said.
            A session records it on what the frame becomes, so evidence names its source.
    """

    index: int
    pts: float
    wall: float
    rgb: np.ndarray = field(repr=False)
    label: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.rgb, np.ndarray) or self.rgb.dtype != np.uint8 or self.rgb.ndim != 3 or self.rgb.shape[2] != 3:
            shape = getattr(self.rgb, "shape", None)
            dtype = getattr(self.rgb, "dtype", None)
            raise ValueError(f"Frame.rgb must be a uint8 array of shape (H, W, 3); got shape={shape} dtype={dtype}")
        if self.rgb.flags.writeable:
            arr = self.rgb if self.rgb.flags.c_contiguous else np.ascontiguousarray(self.rgb)
            if arr is self.rgb:
                arr = arr.view()
            arr.flags.writeable = False
            object.__setattr__(self, "rgb", arr)

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])
