"""Temporal token droppers: decide which visual tokens of a frame go on to the LLM.

A vision tower turns each frame into visual tokens ``embeds (N, D)`` laid out on a
``rows x cols`` grid in row-major order (``N == rows * cols``). Tokens that did not
change since an earlier frame are dropped before prefill (TimeChat-Online's
Differential Token Drop). Droppers only produce a boolean keep mask ``(N,)``; the
caller selects the kept tokens *and their original grid/RoPE positions* with it, so
kept tokens keep their positions.

Modes (:class:`DropConfig.mode`):

* ``"off"``: keep every token.
* ``"feature"``: drop a token when the cosine similarity with the token at the same
  grid cell of the *previous frame* (all of its tokens, kept or not, as
  TimeChat-Online does) is ``> tau``.
* ``"pixel"``: model-free. Before the vision tower runs, each cell of the frame (as
  the tower will see it) is compared with that cell's *last kept* pixels; a cell is
  kept when its mean absolute difference is ``> pixel_threshold``. Comparing with
  the last kept pixels, not the previous frame, lets slow drifts accumulate until
  they trigger a keep instead of staying under the threshold forever. When no
  cell changed, the vision tower is not run at all.
* ``"budget"``: keep the ``keep_ratio`` fraction of tokens that changed most
  (``1 - cosine`` against the previous frame), as vLLM's EVS does. It is a fixed
  rate: on identical frames it still keeps its budget, namely the first
  ``round(keep_ratio * N)`` cells in row-major order (ties are broken stably by
  index); use ``feature`` or ``pixel`` to drop everything on static video.

The first frame, and a keyframe every ``keyframe_every_s`` seconds of stream time if
set, are kept whole in every mode.

Each mode is one :class:`DropRule` subclass, found in the table :data:`DROP_RULES`;
:class:`DropPolicy` keeps what the modes share (keyframe clock, statistics) and calls
its rule's two hooks.

This module imports numpy and torch only.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from compression.pixel import DropInputError, cell_pixel_mask, pixel_cell_change, pixel_keep_mask
from streaming.checks import check_choice, check_int, check_number

logger = logging.getLogger(__name__)

__all__ = [
    "DROP_MODES",
    "DROP_RULES",
    "BudgetRule",
    "DropConfig",
    "DropInputError",
    "DropPolicy",
    "DropRule",
    "DropStats",
    "FeatureRule",
    "OffRule",
    "PixelRule",
    "PreDecision",
    "budget_keep_count",
    "budget_keep_mask",
    "feature_keep_mask",
    "token_cosine",
]

# Keyframe schedule slack, so that pts rounding (0.99999 s for 1 s) does not skip a keyframe.
_PTS_EPS = 1e-6


@dataclass(frozen=True)
class DropConfig:
    """Settings of the token dropper.

    Attributes:
        mode: ``"off"``, ``"feature"``, ``"pixel"`` or ``"budget"`` (see the module docstring).
        tau: feature rule; drop a token when ``cos(cur, prev at the same cell) > tau``. Range ``(-1, 1]``;
            ``1`` keeps every token. Also the change rule behind ``scene_change`` in the
            ``off``, ``feature`` and ``budget`` modes.
        keep_ratio: budget mode; fraction of tokens kept per frame (the most changed). Range ``(0, 1]``.
        pixel_threshold: pixel mode; a cell is unchanged when its mean absolute difference (pixels
            scaled to ``[0, 1]``) is ``<= pixel_threshold``. Range ``[0, 1]``.
        keyframe_every_s: keep a whole frame every this many seconds of stream time; ``None`` keeps only
            the first frame whole. ``> 0`` when set.
        scene_change_ratio: a frame is a scene change when the fraction of its tokens that the change
            rule marks as changed is ``> scene_change_ratio``. Range ``[0, 1]``.
        history_size: how many recent ``(pts, kept_ratio)`` pairs :meth:`DropPolicy.stats` keeps. ``>= 1``.
    """

    mode: str = "off"
    tau: float = 0.9
    keep_ratio: float = 0.25
    pixel_threshold: float = 0.02
    keyframe_every_s: float | None = None
    scene_change_ratio: float = 0.5
    history_size: int = 10_000

    def __post_init__(self) -> None:
        # DROP_MODES is defined below, from the rule table; it exists by the time a config is built.
        check_choice("DropConfig.mode", self.mode, DROP_MODES, error=ValueError)
        check_number("DropConfig.tau", self.tau, low=-1, high=1)
        check_number("DropConfig.keep_ratio", self.keep_ratio, low=0, high=1)
        check_number("DropConfig.pixel_threshold", self.pixel_threshold, low=0, high=1, low_inclusive=True)
        check_number("DropConfig.keyframe_every_s", self.keyframe_every_s, low=0, allow_none=True)
        check_number("DropConfig.scene_change_ratio", self.scene_change_ratio, low=0, high=1, low_inclusive=True)
        check_int("DropConfig.history_size", self.history_size, low=1, kind="an int")


@dataclass(frozen=True, eq=False)
class PreDecision:
    """What :meth:`DropPolicy.before_encode` decided for one frame.

    Attributes:
        run_encoder: run the vision tower on this frame. False only in pixel mode when no cell
            changed; then the frame is finished (keep nothing) and ``after_encode`` must not be called.
        keep: pixel mode: BoolTensor ``(N,)`` (CPU), the cells to keep; other modes: ``None``
            (decided in ``after_encode``).
        is_keyframe: the frame is kept whole (first frame, or the keyframe schedule).
        pts: the frame's stream time in seconds.
        changed_ratio: pixel mode: fraction of cells whose change exceeds the threshold (the scene
            signal; 1.0 for the first frame); other modes: ``None``.
    """

    run_encoder: bool
    keep: torch.Tensor | None
    is_keyframe: bool
    pts: float
    changed_ratio: float | None = None


@dataclass(frozen=True)
class DropStats:
    """A snapshot of a :class:`DropPolicy`'s counters.

    Attributes:
        frames: frames finished (skipped by pixel mode, or through ``after_encode``).
        encoder_calls: frames for which the vision tower had to run.
        encoder_skipped: frames for which pixel mode skipped the vision tower.
        keyframes: frames kept whole (first frame, keyframe schedule, token count or frame size change).
        tokens_seen: ``N`` summed over finished frames (skipped frames count their grid).
        tokens_kept: kept tokens summed over finished frames.
        kept_ratio: ``tokens_kept / tokens_seen`` (0.0 before the first frame).
        history: the most recent ``(pts, kept_ratio)`` pairs, oldest first (bounded by
            :attr:`DropConfig.history_size`).
        scene_change: the last finished frame was a scene change (its changed ratio exceeded
            :attr:`DropConfig.scene_change_ratio`; always True for the first frame).
        last_changed_ratio: the fraction of the last frame's tokens that the change rule marked as
            changed (pixel rule in pixel mode, the ``tau`` cosine rule otherwise), forced keeps aside.
    """

    frames: int = 0
    encoder_calls: int = 0
    encoder_skipped: int = 0
    keyframes: int = 0
    tokens_seen: int = 0
    tokens_kept: int = 0
    kept_ratio: float = 0.0
    history: tuple[tuple[float, float], ...] = field(default=(), repr=False)
    scene_change: bool = False
    last_changed_ratio: float = 0.0


def _check_tokens(tokens: object, name: str) -> torch.Tensor:
    if not isinstance(tokens, torch.Tensor) or tokens.ndim != 2 or not tokens.is_floating_point():
        raise DropInputError(
            f"{name} must be a 2-D float tensor (N, D); got type={type(tokens).__name__} "
            f"shape={tuple(getattr(tokens, 'shape', ()))} dtype={getattr(tokens, 'dtype', None)}"
        )
    if tokens.shape[0] < 1 or tokens.shape[1] < 1:
        raise DropInputError(f"{name} must have at least one token and one channel; got shape {tuple(tokens.shape)}")
    if not bool(torch.isfinite(tokens).all()):
        raise DropInputError(f"{name} contains NaN or infinite values")
    return tokens


def _check_pair(cur: object, prev: object) -> tuple[torch.Tensor, torch.Tensor | None]:
    cur_t = _check_tokens(cur, "cur")
    if prev is None:
        return cur_t, None
    prev_t = _check_tokens(prev, "prev")
    if prev_t.shape != cur_t.shape:
        raise DropInputError(f"cur and prev must have the same shape (N, D); got {tuple(cur_t.shape)} and {tuple(prev_t.shape)}")
    return cur_t, prev_t


def token_cosine(cur: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of each token with the token at the same grid cell.

    Args:
        cur: ``(N, D)`` float tokens of the current frame.
        prev: ``(N, D)`` float tokens of the reference frame.

    Returns:
        FloatTensor ``(N,)`` (float32) in ``[-1, 1]``. Tokens that are exactly equal (zero vectors
        included) score 1.
    """
    cur_t, prev_t = _check_pair(cur, prev)
    assert prev_t is not None  # noqa: S101 - _check_pair only returns None for prev=None
    a = cur_t.float()
    b = prev_t.to(device=a.device).float()
    cos = F.cosine_similarity(a, b, dim=-1, eps=1e-12).clamp(-1.0, 1.0)
    equal = (a == b).all(dim=-1)
    return torch.where(equal, torch.ones_like(cos), cos)


def _check_tau(tau: float) -> float:
    return check_number("tau", tau, low=-1, high=1, error=DropInputError)


def feature_keep_mask(cur: torch.Tensor, prev: torch.Tensor | None, tau: float) -> torch.Tensor:
    """Differential Token Drop: keep the tokens that changed since the previous frame.

    Args:
        cur: ``(N, D)`` float tokens of the current frame.
        prev: ``(N, D)`` float tokens of the previous frame (same grid), or ``None`` for the first frame.
        tau: drop a token when its cosine similarity with ``prev`` at the same cell is ``> tau``;
            in ``(-1, 1]``.

    Returns:
        BoolTensor ``(N,)`` on ``cur``'s device, True = keep. All True when ``prev`` is None.
    """
    tau = _check_tau(tau)
    cur_t, prev_t = _check_pair(cur, prev)
    if prev_t is None:
        return torch.ones(cur_t.shape[0], dtype=torch.bool, device=cur_t.device)
    return token_cosine(cur_t, prev_t) <= tau


def budget_keep_count(n_tokens: int, keep_ratio: float) -> int:
    """Tokens kept by budget mode out of ``n_tokens``: ``round(keep_ratio * n_tokens)`` (half up), at least 1."""
    check_number("keep_ratio", keep_ratio, low=0, high=1, error=DropInputError)
    check_int("n_tokens", n_tokens, low=1, error=DropInputError, kind="an int")
    return max(1, min(n_tokens, math.floor(keep_ratio * n_tokens + 0.5)))


def budget_keep_mask(cur: torch.Tensor, prev: torch.Tensor | None, keep_ratio: float) -> torch.Tensor:
    """Keep the most-changed fraction of tokens (change = ``1 - cosine`` with the previous frame).

    Args:
        cur: ``(N, D)`` float tokens of the current frame.
        prev: ``(N, D)`` float tokens of the previous frame, or ``None`` for the first frame.
        keep_ratio: fraction to keep, in ``(0, 1]``; the count is :func:`budget_keep_count`.

    Returns:
        BoolTensor ``(N,)`` on ``cur``'s device with exactly ``budget_keep_count(N, keep_ratio)`` True
        entries (all True when ``prev`` is None). Equal changes are ranked by grid index (stable),
        so identical frames keep the first cells in row-major order.
    """
    cur_t, prev_t = _check_pair(cur, prev)
    n_tokens = cur_t.shape[0]
    count = budget_keep_count(n_tokens, keep_ratio)
    if prev_t is None:
        return torch.ones(n_tokens, dtype=torch.bool, device=cur_t.device)
    change = 1.0 - token_cosine(cur_t, prev_t)
    order = torch.sort(change, descending=True, stable=True).indices
    keep = torch.zeros(n_tokens, dtype=torch.bool, device=change.device)
    keep[order[:count]] = True
    return keep


def _check_pts(pts: object) -> float:
    """A frame's stream time in seconds: any finite number."""
    return check_number("pts", pts, error=DropInputError)


# ------------------------------------------------------------------ rules
class DropRule:
    """One drop mode: the two hooks :class:`DropPolicy` calls for every frame, plus the reference they compare with.

    The policy owns everything the modes share (the keyframe clock, the pending frame, statistics); a
    rule owns only its reference (the previous tokens, or the last kept pixels) and its decision:

    * :meth:`before_encode`: from the pixels, before the vision tower runs. Rules that decide from tokens
      return a decision that only says "run the encoder".
    * :meth:`after_encode`: from the tokens, once they exist: the keep mask and the changed ratio.

    A new mode is one subclass with a ``mode`` name, added to :data:`DROP_RULES`.
    """

    #: the :attr:`DropConfig.mode` value this rule implements.
    mode: ClassVar[str] = ""
    #: True when :meth:`before_encode` decides the keep mask from pixels (and may skip the encoder).
    inspects_pixels: ClassVar[bool] = False

    def __init__(self, config: DropConfig, grid: tuple[int, int]):
        self.config = config
        self.grid = grid
        self.n_tokens = grid[0] * grid[1]
        self.reset()

    def reset(self) -> None:
        """Forget the reference; the next frame is compared with nothing (kept whole)."""

    def before_encode(self, pts: float, rgb: np.ndarray, also: Sequence[np.ndarray], keyframe: bool) -> PreDecision:
        """The pre-encode decision for a frame whose ``rgb (H, W, 3)`` uint8 the tower will see.

        ``keyframe`` is the policy's clock (first frame, schedule, time going back). Changes no reference.
        """
        return PreDecision(run_encoder=True, keep=None, is_keyframe=keyframe, pts=pts)

    def after_encode(self, embeds: torch.Tensor, pre: PreDecision) -> tuple[torch.Tensor, float, bool]:
        """The keep mask for a frame's tokens ``embeds (N, D)``; commits the rule's reference.

        Returns:
            ``(keep, changed_ratio, keyframe)``: BoolTensor ``(N,)`` on ``embeds``' device, the fraction of
            tokens the change rule marks as changed, and whether the frame ended up kept whole.
        """
        raise NotImplementedError


class _TokenRule(DropRule):
    """Rules that compare each token with the same grid cell of the previous frame's tokens (all of them)."""

    def reset(self) -> None:
        self._prev_embeds: torch.Tensor | None = None

    def select(self, embeds: torch.Tensor, prev: torch.Tensor, changed: torch.Tensor) -> torch.Tensor:
        """The keep mask ``(N,)`` of a non-key frame, given the ``tau`` rule's ``changed`` mask ``(N,)``."""
        raise NotImplementedError

    def after_encode(self, embeds: torch.Tensor, pre: PreDecision) -> tuple[torch.Tensor, float, bool]:
        keyframe = pre.is_keyframe
        prev = self._prev_embeds
        if prev is None or prev.shape != embeds.shape:
            if prev is not None:
                logger.info("token shape changed from %s to %s; keeping a whole frame", tuple(prev.shape), tuple(embeds.shape))
            keyframe = True
            changed_ratio = 1.0
            keep = torch.ones(self.n_tokens, dtype=torch.bool, device=embeds.device)
        else:
            # The tau rule runs in every token mode: it is the scene-change signal even where it does not drop.
            changed = feature_keep_mask(embeds, prev, self.config.tau)
            changed_ratio = float(changed.float().mean())
            keep = torch.ones_like(changed) if keyframe else self.select(embeds, prev, changed)
        self._prev_embeds = embeds.detach().clone()
        return keep, changed_ratio, keyframe


class OffRule(_TokenRule):
    """Keep every token."""

    mode = "off"

    def select(self, embeds: torch.Tensor, prev: torch.Tensor, changed: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(changed)


class FeatureRule(_TokenRule):
    """Drop a token whose cosine similarity with the previous frame's token at its cell is ``> tau``."""

    mode = "feature"

    def select(self, embeds: torch.Tensor, prev: torch.Tensor, changed: torch.Tensor) -> torch.Tensor:
        return changed


class BudgetRule(_TokenRule):
    """Keep the ``keep_ratio`` fraction of tokens that changed most (see :func:`budget_keep_mask`)."""

    mode = "budget"

    def select(self, embeds: torch.Tensor, prev: torch.Tensor, changed: torch.Tensor) -> torch.Tensor:
        return budget_keep_mask(embeds, prev, self.config.keep_ratio)


class PixelRule(DropRule):
    """Keep the cells whose pixels changed since they were last kept; skip the encoder when none did."""

    mode = "pixel"
    inspects_pixels = True

    def reset(self) -> None:
        self._ref_rgb: np.ndarray | None = None
        self._pending_rgb: np.ndarray | None = None

    def before_encode(self, pts: float, rgb: np.ndarray, also: Sequence[np.ndarray], keyframe: bool) -> PreDecision:
        self._pending_rgb = None
        ref = self._ref_rgb
        if ref is None or ref.shape != rgb.shape:
            if ref is not None:
                logger.info("frame size changed from %s to %s; keeping a whole frame", ref.shape[:2], rgb.shape[:2])
            keep = torch.ones(self.n_tokens, dtype=torch.bool)
            pre = PreDecision(run_encoder=True, keep=keep, is_keyframe=True, pts=pts, changed_ratio=1.0)
        else:
            change = pixel_cell_change(rgb, ref, self.grid)
            for other in also:
                if not isinstance(other, np.ndarray) or other.shape != rgb.shape:
                    raise DropInputError(
                        f"frames in `also` must have rgb's shape {rgb.shape}; got {getattr(other, 'shape', None)}"
                    )
                change = torch.maximum(change, pixel_cell_change(other, ref, self.grid))
            changed = pixel_keep_mask(change, self.config.pixel_threshold)
            changed_ratio = float(changed.float().mean())
            keep = torch.ones_like(changed) if keyframe else changed
            pre = PreDecision(
                run_encoder=bool(keep.any()), keep=keep, is_keyframe=keyframe, pts=pts, changed_ratio=changed_ratio
            )
        if pre.run_encoder:
            self._pending_rgb = rgb.copy()
        return pre

    def after_encode(self, embeds: torch.Tensor, pre: PreDecision) -> tuple[torch.Tensor, float, bool]:
        assert pre.keep is not None and pre.changed_ratio is not None  # noqa: S101 - set by before_encode
        rgb = self._pending_rgb
        assert rgb is not None  # noqa: S101 - before_encode keeps the pixels of every frame it lets through
        if pre.is_keyframe or self._ref_rgb is None or self._ref_rgb.shape != rgb.shape:
            self._ref_rgb = rgb
        else:
            pixels = cell_pixel_mask(pre.keep, rgb.shape[:2], self.grid)
            self._ref_rgb[pixels] = rgb[pixels]
        self._pending_rgb = None
        return pre.keep.to(embeds.device), pre.changed_ratio, pre.is_keyframe


#: The drop modes: :attr:`DropConfig.mode` -> the rule class that implements it.
DROP_RULES: dict[str, type[DropRule]] = {rule.mode: rule for rule in (OffRule, FeatureRule, PixelRule, BudgetRule)}
#: The accepted values of :attr:`DropConfig.mode`, in the order help texts list them.
DROP_MODES: tuple[str, ...] = tuple(DROP_RULES)


class DropPolicy:
    """Per-session token-drop state; call it for every frame, in stream order.

    Protocol, per frame::

        pre = policy.before_encode(frame.pts, rgb)        # rgb exactly as the vision tower sees it
        if pre.run_encoder:
            embeds = tower(rgb)                           # (N, D), N == rows * cols
            keep = policy.after_encode(frame.pts, embeds, pre)   # BoolTensor (N,)
            tokens, positions = embeds[keep], positions[keep]    # kept tokens keep their positions
        # else: nothing to encode or prefill for this frame

    ``before_encode`` changes no reference state; ``after_encode`` commits the frame (previous
    tokens, last kept pixels, keyframe clock, statistics). A frame whose encoding failed can be
    abandoned by simply calling ``before_encode`` for the next frame. A pixel-mode frame with
    ``run_encoder=False`` is committed by ``before_encode`` itself.

    A change in the frame size (pixel mode) or in the token shape ``(N, D)`` is treated like a first
    frame (kept whole); ``N`` itself must always equal ``rows * cols``. Stream time going backwards
    (a new source) also forces a whole frame.

    Not meant for concurrent ``before_encode``/``after_encode`` calls from several threads;
    :meth:`stats` may be called from any thread.
    """

    def __init__(self, config: DropConfig, grid: tuple[int, int]):
        if not isinstance(config, DropConfig):
            raise DropInputError(f"config must be a DropConfig; got {type(config).__name__}")
        if not isinstance(grid, (tuple, list)) or len(grid) != 2 or any(
            isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1 for v in grid
        ):
            raise DropInputError(f"grid must be a pair (rows, cols) of positive ints; got {grid!r}")
        self.config = config
        self.grid = (int(grid[0]), int(grid[1]))
        self.n_tokens = self.grid[0] * self.grid[1]
        self.rule: DropRule = DROP_RULES[config.mode](config, self.grid)
        self._lock = threading.Lock()
        self.reset()

    @property
    def inspects_pixels(self) -> bool:
        """True when the mode decides from pixels before encoding (and may skip the vision tower)."""
        return self.rule.inspects_pixels

    # ----------------------------------------------------------------- state
    def reset(self) -> None:
        """Forget the reference frame, the keyframe clock and all statistics; the next frame is kept whole."""
        with self._lock:
            self.rule.reset()
            self._last_pts: float | None = None
            self._last_keyframe_pts: float | None = None
            self._pending: PreDecision | None = None
            self._frames = 0
            self._encoder_calls = 0
            self._encoder_skipped = 0
            self._keyframes = 0
            self._tokens_seen = 0
            self._tokens_kept = 0
            self._history: deque[tuple[float, float]] = deque(maxlen=self.config.history_size)
            self._scene_change = False
            self._last_changed_ratio = 0.0

    def stats(self) -> DropStats:
        """A consistent snapshot of the counters (see :class:`DropStats`)."""
        with self._lock:
            return DropStats(
                frames=self._frames,
                encoder_calls=self._encoder_calls,
                encoder_skipped=self._encoder_skipped,
                keyframes=self._keyframes,
                tokens_seen=self._tokens_seen,
                tokens_kept=self._tokens_kept,
                kept_ratio=self._tokens_kept / self._tokens_seen if self._tokens_seen else 0.0,
                history=tuple(self._history),
                scene_change=self._scene_change,
                last_changed_ratio=self._last_changed_ratio,
            )

    def _scheduled_keyframe(self, pts: float) -> bool:
        """True when this frame must be kept whole by the clock (first frame, time going back, schedule)."""
        if self._last_keyframe_pts is None or self._last_pts is None:
            return True
        if pts < self._last_pts:
            logger.warning("stream time went back from %.3f s to %.3f s; keeping a whole frame", self._last_pts, pts)
            return True
        every = self.config.keyframe_every_s
        return every is not None and pts - self._last_keyframe_pts >= every - _PTS_EPS

    def _commit(self, pts: float, n_tokens: int, n_kept: int, keyframe: bool, encoded: bool, changed_ratio: float) -> None:
        with self._lock:
            self._last_pts = pts
            if keyframe:
                self._last_keyframe_pts = pts
                self._keyframes += 1
            self._frames += 1
            if encoded:
                self._encoder_calls += 1
            else:
                self._encoder_skipped += 1
            self._tokens_seen += n_tokens
            self._tokens_kept += n_kept
            self._history.append((pts, n_kept / n_tokens))
            self._last_changed_ratio = changed_ratio
            self._scene_change = changed_ratio > self.config.scene_change_ratio

    # ------------------------------------------------------------ per frame
    def before_encode(self, pts: float, rgb: np.ndarray, also: Sequence[np.ndarray] = ()) -> PreDecision:
        """Decide, before the vision tower, whether it must run (pixel mode decides the keep mask here).

        Args:
            pts: the frame's stream time in seconds (non-decreasing within a stream).
            rgb: the frame exactly as the vision tower will see it (resized), ``(H, W, 3)`` uint8,
                with ``H >= rows`` and ``W >= cols``.
            also: the other frames the vision tower encodes together with ``rgb`` into the same
                tokens (the first frame of a Qwen2.5-VL pair), same shape: in pixel mode a cell
                counts as changed when it changed in any of them. ``rgb`` stays the reference.

        Returns:
            A :class:`PreDecision`. In pixel mode ``keep`` is a BoolTensor ``(N,)`` and
            ``run_encoder`` is False when no cell changed (the frame is then finished and counted in
            ``encoder_skipped``). Other modes: ``run_encoder=True``, ``keep=None``.
        """
        pts = _check_pts(pts)
        if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
            raise DropInputError(
                f"rgb must be a uint8 array of shape (H, W, 3); got type={type(rgb).__name__} "
                f"shape={getattr(rgb, 'shape', None)} dtype={getattr(rgb, 'dtype', None)}"
            )
        rows, cols = self.grid
        if rgb.shape[0] < rows or rgb.shape[1] < cols:
            raise DropInputError(f"rgb of size {rgb.shape[0]}x{rgb.shape[1]} is smaller than the token grid {rows}x{cols}")
        if self._pending is not None:
            logger.debug("frame at pts %.3f was abandoned before after_encode", self._pending.pts)
        self._pending = None
        pre = self.rule.before_encode(pts, rgb, also, self._scheduled_keyframe(pts))
        if not pre.run_encoder:
            self._commit(pts, self.n_tokens, 0, keyframe=False, encoded=False, changed_ratio=0.0)
            return pre
        self._pending = pre
        return pre

    def after_encode(self, pts: float, embeds: torch.Tensor, pre: PreDecision) -> torch.Tensor:
        """Decide the keep mask once the frame's tokens exist, and commit the frame.

        Args:
            pts: the same stream time that was given to :meth:`before_encode`.
            embeds: ``(N, D)`` float visual tokens, ``N == rows * cols``, row-major grid order.
            pre: the :class:`PreDecision` that :meth:`before_encode` just returned for this frame
                (with ``run_encoder`` True).

        Returns:
            BoolTensor ``(N,)`` on ``embeds``' device, True = keep. Select tokens and their positions
            with it; the indices of kept tokens are their original grid indices.
        """
        if self._pending is None or pre is not self._pending:
            raise DropInputError(
                "after_encode needs the PreDecision that the latest before_encode returned with run_encoder=True"
            )
        pts = _check_pts(pts)
        if pts != pre.pts:
            raise DropInputError(f"after_encode got pts {pts} but before_encode decided for pts {pre.pts}")
        embeds = _check_tokens(embeds, "embeds")
        if embeds.shape[0] != self.n_tokens:
            raise DropInputError(
                f"embeds has {embeds.shape[0]} tokens but the grid {self.grid[0]}x{self.grid[1]} has {self.n_tokens}"
            )
        keep, changed_ratio, keyframe = self.rule.after_encode(embeds, pre)
        self._pending = None
        self._commit(pts, self.n_tokens, int(keep.sum()), keyframe=keyframe, encoded=True, changed_ratio=changed_ratio)
        return keep
