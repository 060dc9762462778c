"""Local cameras through OpenCV's VideoCapture (by index or device path)."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator

import cv2

from streaming.base import FrameSource, Select
from streaming.checks import check_timeout
from streaming.errors import WebcamUnavailable
from streaming.frame import Frame
from streaming.imageops import resize_rgb
from streaming.info import SourceInfo

log = logging.getLogger(__name__)


def parse_device(device: int | str) -> int | str:
    """``0``, ``"0"``, ``"webcam:0"`` -> 0; ``"webcam:/dev/video2"`` / ``"/dev/video2"`` -> the path.

    Raises:
        ValueError: empty or negative device.
    """
    if isinstance(device, bool):
        raise ValueError(f"device must be a camera index or a device path; got {device!r}")
    if isinstance(device, int):
        if device < 0:
            raise ValueError(f"device index must be >= 0; got {device}")
        return device
    if not isinstance(device, str) or not device.strip():
        raise ValueError(f"device must be a camera index or a device path; got {device!r}")
    text = device.strip()
    if text.lower().startswith("webcam:"):
        text = text[len("webcam:"):]
    if text.isdigit():
        return int(text)
    if not text:
        raise ValueError(f"device must be a camera index or a device path; got {device!r}")
    return text


def _fourcc(value: float) -> str | None:
    code = int(value)
    if code <= 0:
        return None
    text = "".join(chr((code >> (8 * i)) & 0xFF) for i in range(4)).strip("\x00 ")
    return text.lower() or None


class WebcamSource(FrameSource):
    """Frames from a camera through OpenCV (``cv2.VideoCapture``).

    ``pts`` are the capture's own position (``CAP_PROP_POS_MSEC``) while it reports a
    moving one, else seconds of wall time since the first frame. A device that stops
    delivering frames raises :class:`WebcamUnavailable`; a video *file* opened through the
    same path simply ends.

    Args:
        device: camera index (``0``), ``"webcam:0"``, or a device path (``/dev/video0``).
        open_timeout_s: limit for opening the device (backends that support it).
        read_timeout_s: limit for one read (backends that support it).
        width, height, fps: capture settings to ask the camera for (None: its default).

    Raises:
        WebcamUnavailable: no such camera, or it cannot be opened (busy, no permission).
    """

    kind = "webcam"

    def __init__(self, device: int | str = 0, *, open_timeout_s: float | None = 10.0,
                 read_timeout_s: float | None = 10.0, width: int | None = None, height: int | None = None,
                 fps: float | None = None) -> None:
        self.device = parse_device(device)
        name = f"webcam:{self.device}"
        self._is_device = isinstance(self.device, int) or str(self.device).startswith("/dev/")
        super().__init__(name, live=self._is_device)
        self.open_timeout_s = check_timeout("open_timeout_s", open_timeout_s)
        self.read_timeout_s = check_timeout("read_timeout_s", read_timeout_s)
        if isinstance(self.device, str) and not os.path.exists(self.device):
            raise WebcamUnavailable(f"{name}: no such device", name)
        params: list[int] = []
        if self.open_timeout_s is not None:
            params += [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(self.open_timeout_s * 1000)]
        if self.read_timeout_s is not None:
            params += [cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(self.read_timeout_s * 1000)]
        self._cap = cv2.VideoCapture(self.device, cv2.CAP_ANY, params)
        if not self._cap.isOpened():
            self._cap.release()
            raise WebcamUnavailable(f"{name}: camera not available (absent, busy or not permitted)", name)
        for prop, value in ((cv2.CAP_PROP_FRAME_WIDTH, width), (cv2.CAP_PROP_FRAME_HEIGHT, height),
                            (cv2.CAP_PROP_FPS, fps)):
            if value is not None:
                self._cap.set(prop, float(value))
        rate = self._cap.get(cv2.CAP_PROP_FPS)
        count = int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT))
        self._info = SourceInfo(
            source=name,
            kind=self.kind,
            live=self.live,
            container=self._cap.getBackendName(),
            codec=_fourcc(self._cap.get(cv2.CAP_PROP_FOURCC)),
            width=int(self._cap.get(cv2.CAP_PROP_FRAME_WIDTH)) or None,
            height=int(self._cap.get(cv2.CAP_PROP_FRAME_HEIGHT)) or None,
            fps=rate if rate > 0 else None,
            duration_s=count / rate if count > 0 and rate > 0 and not self._is_device else None,
            frame_count=count if count > 0 and not self._is_device else None,
        )

    @property
    def info(self) -> SourceInfo:
        return self._info

    def _produce(self, select: Select | None, max_side: int | None) -> Iterator[Frame]:
        index = 0
        first_wall: float | None = None
        last_pos = -1.0
        try:
            while True:
                with self._io_lock:
                    if self._stop.is_set() or self._released:
                        return
                    ok, bgr = self._cap.read()
                    wall = time.time()
                    pos_ms = self._cap.get(cv2.CAP_PROP_POS_MSEC) if ok else 0.0
                self.counters.received += 1
                if not ok or bgr is None:
                    if self._is_device:
                        raise WebcamUnavailable(f"{self.name}: camera stopped delivering frames", self.name)
                    return
                self.counters.decoded += 1
                first_wall = wall if first_wall is None else first_wall
                if pos_ms > last_pos and (pos_ms > 0 or index == 0):
                    pts = pos_ms / 1000.0
                    last_pos = pos_ms
                else:
                    pts = wall - first_wall
                idx, index = index, index + 1
                if select is not None and not select(pts):
                    continue
                rgb = resize_rgb(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), max_side)
                yield Frame(index=idx, pts=pts, wall=wall, rgb=rgb)
        finally:
            self._release_locked()

    def _release(self) -> None:
        self._cap.release()
