"""Small pixel helpers shared by the sources: target sizes, resizing, image decoding."""

from __future__ import annotations

import cv2
import numpy as np


def fit_size(width: int, height: int, max_side: int | None) -> tuple[int, int]:
    """The ``(width, height)`` that fits inside ``max_side`` keeping the aspect ratio.

    Frames whose longer side is already at most ``max_side`` (or ``max_side`` None) keep
    their size; the result is never smaller than 1 pixel on either side.
    """
    if max_side is None or max(width, height) <= max_side:
        return width, height
    scale = max_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def resize_rgb(rgb: np.ndarray, max_side: int | None) -> np.ndarray:
    """Resize ``rgb`` (H, W, 3) uint8 so its longer side is at most ``max_side``.

    Returns the input unchanged when no resize is needed, else a new (H', W', 3) uint8 array
    (area interpolation, which is the right filter for shrinking).
    """
    height, width = rgb.shape[:2]
    new_w, new_h = fit_size(width, height, max_side)
    if (new_w, new_h) == (width, height):
        return rgb
    return cv2.resize(rgb, (new_w, new_h), interpolation=cv2.INTER_AREA)


def decode_image(data: bytes) -> np.ndarray | None:
    """Decode JPEG/PNG/WebP/BMP bytes into an RGB (H, W, 3) uint8 array; None if undecodable."""
    buf = np.frombuffer(data, dtype=np.uint8)
    if buf.size == 0:
        return None
    bgr = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if bgr is None or bgr.ndim != 3 or bgr.shape[2] != 3:
        return None
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def as_rgb_array(array: np.ndarray) -> np.ndarray:
    """Validate and normalise a pushed array into RGB (H, W, 3) uint8.

    Accepts (H, W, 3) RGB, (H, W, 4) RGBA (alpha dropped) and (H, W) grey, all uint8.

    Raises:
        ValueError: with the offending shape/dtype in the message.
    """
    if not isinstance(array, np.ndarray):
        raise ValueError(f"expected a numpy array, got {type(array).__name__}")
    if array.dtype != np.uint8:
        raise ValueError(f"expected dtype uint8, got {array.dtype}")
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    elif array.ndim == 3 and array.shape[2] == 4:
        array = array[:, :, :3]
    elif not (array.ndim == 3 and array.shape[2] == 3):
        raise ValueError(f"expected shape (H, W, 3), (H, W, 4) or (H, W); got {array.shape}")
    if array.shape[0] < 1 or array.shape[1] < 1:
        raise ValueError(f"empty image of shape {array.shape}")
    return np.ascontiguousarray(array)
