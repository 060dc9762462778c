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


class ImageTooLarge(ValueError):
    """An encoded image's header declares more pixels than allowed (refused before decoding).

    Attributes:
        width, height: the declared size.
    """

    def __init__(self, message: str, width: int, height: int) -> None:
        super().__init__(message)
        self.width, self.height = width, height


def image_size(data: bytes) -> tuple[int, int] | None:
    """``(width, height)`` declared by an encoded image's header, read without decoding its pixels
    (PIL's lazy open parses the header only); None when no format PIL knows matches.

    Raises:
        ImageTooLarge: the header declares more pixels than PIL's decompression-bomb limit.
    """
    import io

    from PIL import Image, UnidentifiedImageError

    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR" and len(data) >= 24:
        # the IHDR chunk comes first and holds the size; read it here, since PIL refuses to report
        # a size beyond its own decompression-bomb limit
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    try:
        with Image.open(io.BytesIO(data)) as img:
            return int(img.width), int(img.height)
    except Image.DecompressionBombError as exc:  # PIL's own guard fired on the declared size
        raise ImageTooLarge(f"the image declares more pixels than any frame may have ({exc})", 0, 0) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return None


def check_image_size(width: int, height: int, max_side: int | None, max_pixels: int | None, *,
                     names: tuple[str, str] = ("max_frame_side", "max_frame_pixels")) -> None:
    """Raise :class:`ImageTooLarge` when ``width``x``height`` exceeds ``max_side`` or ``max_pixels``
    (``names``: the settings the message names for them)."""
    if max_side is not None and (width > max_side or height > max_side):
        raise ImageTooLarge(f"image of {width}x{height} exceeds {names[0]}={max_side} pixels "
                            "(refused before decoding)", width, height)
    if max_pixels is not None and width * height > max_pixels:
        raise ImageTooLarge(f"image of {width}x{height} = {width * height} pixels exceeds {names[1]}="
                            f"{max_pixels} (refused before decoding)", width, height)


def decode_image(data: bytes, *, max_side: int | None = None, max_pixels: int | None = None,
                 names: tuple[str, str] = ("max_frame_side", "max_frame_pixels")) -> np.ndarray | None:
    """Decode JPEG/PNG/WebP/BMP bytes into an RGB (H, W, 3) uint8 array; None if undecodable.

    With ``max_side`` or ``max_pixels``, the size in the image's header is checked first and an image
    over either is refused without decoding its pixels (a small PNG can declare 30000x30000: decoding
    it would take gigabytes). A header PIL cannot read is refused too (None) rather than decoded
    blind; OpenCV is then also bounded by its own pixel limit.

    Raises:
        ImageTooLarge: the header declares more than ``max_side``/``max_pixels``.
    """
    buf = np.frombuffer(data, dtype=np.uint8)
    if buf.size == 0:
        return None
    if max_side is not None or max_pixels is not None:
        size = image_size(data)
        if size is None:
            return None
        check_image_size(size[0], size[1], max_side, max_pixels, names=names)
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
