"""Model-free pixel change per token cell (the cheap check that can skip the vision tower).

A frame, exactly as the vision tower will see it (already resized), is cut into the
same ``rows x cols`` grid of cells as the tower's visual tokens, in row-major order.
Cell boundaries follow :func:`numpy.array_split`: when ``H`` (or ``W``) is not a
multiple of ``rows`` (or ``cols``), the first ``H % rows`` cell rows are one pixel
taller than the rest.

This module imports numpy and torch only.
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = [
    "DropInputError",
    "cell_sizes",
    "cell_pixel_mask",
    "pixel_cell_change",
    "pixel_keep_mask",
]


class DropInputError(ValueError):
    """Bad input to a token dropper: wrong shape, dtype, grid or value, or calls out of order."""


def _check_grid(grid: tuple[int, int], name: str = "grid") -> tuple[int, int]:
    if not isinstance(grid, (tuple, list)) or len(grid) != 2:
        raise DropInputError(f"{name} must be a pair (rows, cols) of positive ints; got {grid!r}")
    rows, cols = grid
    for label, value in (("rows", rows), ("cols", cols)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise DropInputError(f"{name} {label} must be a positive int; got {value!r}")
    return int(rows), int(cols)


def _check_rgb(rgb: object, name: str) -> np.ndarray:
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise DropInputError(
            f"{name} must be a uint8 array of shape (H, W, 3); got "
            f"type={type(rgb).__name__} shape={getattr(rgb, 'shape', None)} dtype={getattr(rgb, 'dtype', None)}"
        )
    return rgb


def cell_sizes(length: int, parts: int) -> np.ndarray:
    """Sizes of ``parts`` consecutive cells covering ``length`` pixels, as :func:`numpy.array_split` cuts them.

    Returns an int64 array of shape ``(parts,)`` summing to ``length``; the first
    ``length % parts`` entries are ``length // parts + 1``, the rest ``length // parts``.
    """
    if parts < 1 or length < parts:
        raise DropInputError(f"cannot cut {length} pixels into {parts} cells (need 1 <= cells <= pixels)")
    base, extra = divmod(int(length), int(parts))
    sizes = np.full(parts, base, dtype=np.int64)
    sizes[:extra] += 1
    return sizes


def _starts(sizes: np.ndarray) -> np.ndarray:
    return np.concatenate(([0], np.cumsum(sizes)[:-1])).astype(np.int64)


def pixel_cell_change(cur_rgb: np.ndarray, ref_rgb: np.ndarray, grid: tuple[int, int]) -> torch.Tensor:
    """Mean absolute pixel difference per grid cell.

    Args:
        cur_rgb: current frame, ``(H, W, 3)`` uint8.
        ref_rgb: reference frame of the same shape, ``(H, W, 3)`` uint8.
        grid: ``(rows, cols)`` token grid; ``1 <= rows <= H`` and ``1 <= cols <= W``.

    Returns:
        FloatTensor ``(rows * cols,)`` (float32), row-major, each value in ``[0, 1]``:
        the mean over the cell's pixels and the 3 channels of ``|cur - ref| / 255``.

    Raises:
        DropInputError: wrong dtype/shape, mismatched frames, or a grid finer than the frame.
    """
    cur = _check_rgb(cur_rgb, "cur_rgb")
    ref = _check_rgb(ref_rgb, "ref_rgb")
    if cur.shape != ref.shape:
        raise DropInputError(f"cur_rgb and ref_rgb must have the same shape; got {cur.shape} and {ref.shape}")
    rows, cols = _check_grid(grid)
    height, width = cur.shape[:2]
    if rows > height or cols > width:
        raise DropInputError(f"grid {rows}x{cols} is finer than the frame {height}x{width}")
    row_sizes = cell_sizes(height, rows)
    col_sizes = cell_sizes(width, cols)
    # (H, W): per-pixel absolute difference summed over the 3 channels (max 765, fits int32 sums).
    diff = np.abs(cur.astype(np.int16) - ref.astype(np.int16)).sum(axis=2, dtype=np.int32)
    # Sum within cell rows, then within cell columns: (rows, W) -> (rows, cols).
    sums = np.add.reduceat(diff, _starts(row_sizes), axis=0, dtype=np.int64)
    sums = np.add.reduceat(sums, _starts(col_sizes), axis=1, dtype=np.int64)
    counts = np.outer(row_sizes, col_sizes) * 3 * 255
    change = (sums / counts).astype(np.float32).reshape(-1)
    return torch.from_numpy(change)


def pixel_keep_mask(change: torch.Tensor, threshold: float) -> torch.Tensor:
    """Keep the cells whose change exceeds ``threshold``.

    Args:
        change: FloatTensor ``(rows * cols,)`` from :func:`pixel_cell_change`, values in ``[0, 1]``.
        threshold: a cell is unchanged (dropped) when its change is ``<= threshold``; in ``[0, 1]``.

    Returns:
        BoolTensor ``(rows * cols,)``, True = keep.
    """
    if not isinstance(change, torch.Tensor) or change.ndim != 1 or not change.is_floating_point():
        raise DropInputError(
            f"change must be a 1-D float tensor; got type={type(change).__name__} "
            f"shape={tuple(getattr(change, 'shape', ()))} dtype={getattr(change, 'dtype', None)}"
        )
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(threshold):
        raise DropInputError(f"threshold must be a finite number in [0, 1]; got {threshold!r}")
    if not 0.0 <= threshold <= 1.0:
        raise DropInputError(f"threshold must be in [0, 1]; got {threshold}")
    if not bool(torch.isfinite(change).all()):
        raise DropInputError("change contains NaN or infinite values")
    return change > threshold


def cell_pixel_mask(cell_mask: torch.Tensor | np.ndarray, shape: tuple[int, int], grid: tuple[int, int]) -> np.ndarray:
    """Expand a per-cell mask to a per-pixel mask.

    Args:
        cell_mask: bool ``(rows * cols,)``, row-major.
        shape: frame size ``(H, W)``.
        grid: ``(rows, cols)``.

    Returns:
        bool ndarray ``(H, W)``: True on every pixel of a True cell (same cell boundaries as
        :func:`pixel_cell_change`).
    """
    rows, cols = _check_grid(grid)
    mask = cell_mask.numpy() if isinstance(cell_mask, torch.Tensor) else np.asarray(cell_mask)
    if mask.shape != (rows * cols,):
        raise DropInputError(f"cell_mask must have shape ({rows * cols},) for grid {rows}x{cols}; got {mask.shape}")
    height, width = int(shape[0]), int(shape[1])
    grid_mask = mask.astype(bool).reshape(rows, cols)
    grid_mask = np.repeat(grid_mask, cell_sizes(height, rows), axis=0)
    return np.repeat(grid_mask, cell_sizes(width, cols), axis=1)
