"""The local attention window and how it is cut into memory chunks.

Every prefilled frame step or text event enters the window as a :class:`WindowItem`. When the
window is full, its oldest items leave it as one memory chunk: a text event alone, or up to
``chunk_frames`` consecutive frame steps (:func:`group_length`, the one grouping rule that
eviction and saving share, so both cut the window at the same places and nothing is banked twice).
"""

from __future__ import annotations

import io
import itertools
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from app.engine.backends.types import KVSegment
from app.engine.types import Evidence

if TYPE_CHECKING:
    from memory import KVChunk

#: Longest side of a frame's evidence thumbnail, in pixels.
THUMBNAIL_SIDE = 96


@dataclass
class WindowItem:
    """One prefilled frame step or text event still inside the attention window.

    Attributes:
        kv: its KV, keys and values ``(L, H, T, D)``.
        kind: ``"frame"``, ``"text"`` (a note) or ``"speech"`` (a transcribed speech segment).
        pts: stream time (seconds) of the step's first frame, or of the text event (a speech segment's start).
        key_sum: ``(L * H * D,)`` sum of the content tokens' pre-RoPE keys (mean * ``key_weight``), so
            a chunk's summary is the mean over all its items' content tokens.
        key_weight: how many tokens ``key_sum`` adds up.
        content: ``(T,)`` bool, the content tokens (``None``: no content mask).
        frame_index: index of the step's first frame (frames; or the frame on screen when a text event
            came, with vision off).
        text: the event's text (text and speech).
        thumbnail: JPEG bytes of the step's last frame (frames; or of the frame on screen, with vision off).
        banked: already copied into the memory bank by a save.
        pts_end: stream time of the step's last frame (steps of several frames), or a speech segment's end.
        label: the input it came from (``webcam``, ``file bikes.mp4``, ``note``, ...; see
            :mod:`streaming.labels`), kept in its chunk's ``meta.extra["source"]``; None when unknown.
    """

    kv: KVSegment
    kind: str
    pts: float
    key_sum: torch.Tensor
    key_weight: int
    content: torch.Tensor | None = None
    frame_index: int | None = None
    text: str | None = None
    thumbnail: bytes | None = None
    banked: bool = False
    pts_end: float | None = None
    label: str | None = None

    @property
    def end(self) -> float:
        return self.pts if self.pts_end is None else self.pts_end


def thumbnail(rgb: np.ndarray) -> bytes:
    """``rgb (H, W, 3)`` uint8 -> JPEG bytes at most :data:`THUMBNAIL_SIDE` pixels on a side."""
    from PIL import Image

    img = Image.fromarray(rgb)
    img.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=80)
    return buf.getvalue()


def group_length(items: Sequence[WindowItem], i: int, chunk_frames: int) -> int:
    """How many items from ``items[i]`` make one memory chunk.

    A text or speech event is a chunk of its own; frames group up to ``chunk_frames``. A group never mixes
    items already banked by a save with items that are not, nor frames of two inputs (labels).
    """
    head = items[i]
    n = 1
    if head.kind == "frame":
        while (n < chunk_frames and i + n < len(items) and items[i + n].kind == "frame"
               and items[i + n].banked == head.banked and items[i + n].label == head.label):
            n += 1
    return n


def make_chunk(items: Sequence[WindowItem], chunk_id: int) -> KVChunk:
    """One memory chunk of consecutive window items: their KV joined, one summary, one time range.

    The summary is the mean pre-RoPE key over the items' content tokens, ``(L * H * D,)`` float32;
    ``meta.extra["content"]`` holds the content tokens' ``[start, stop)`` ranges within the chunk and
    ``meta.extra["source"]`` the items' input label (when known; a chunk never mixes inputs).
    """
    from memory import ChunkMeta, KVChunk

    kv = KVSegment.concat([it.kv for it in items])
    summary = torch.stack([it.key_sum for it in items]).sum(0) / sum(it.key_weight for it in items)
    ranges, offset = [], 0
    for it in items:
        if it.content is not None and bool(it.content.any()):
            idx = it.content.nonzero().flatten()
            ranges.append([offset + int(idx[0]), offset + int(idx[-1]) + 1])
        offset += it.kv.length
    extra: dict = {"content": ranges} if ranges else {}
    if items[0].label:
        extra["source"] = items[0].label
    meta = ChunkMeta(
        chunk_id=chunk_id,
        t_start=items[0].pts,
        t_end=items[-1].end,
        kind=items[0].kind,
        n_tokens=kv.length,
        frame_indices=tuple(it.frame_index for it in items if it.frame_index is not None),
        text="\n".join(it.text for it in items if it.text) or None,
        thumbnail=next((it.thumbnail for it in items if it.thumbnail), None),
        extra=extra,
    )
    return KVChunk(meta=meta, keys=kv.keys, values=kv.values, positions=kv.positions, summary=summary.float())


class Window:
    """The recent stream every new token attends to: window items in stream order, bounded in tokens.

    Iterating, indexing and ``len`` give the items, oldest first.

    With a ``cache`` (a :class:`~app.engine.backends.window_cache.WindowKVCache` that holds the sink,
    ``sink_tokens`` long, and then every item, in order), the window keeps the cache in step: items
    leaving it are removed from the cache too, so the cache always holds exactly ``sink | items``
    between prefills, ready for the next one. With ``views`` the items' KV are views of the cache
    (the window's KV is held once), re-taken whenever the cache's buffer moved.

    Args:
        max_tokens: the window's size in tokens.
        chunk_frames: frame steps per memory chunk.
        first_chunk_id: the id of the first chunk it cuts (ids then count up).
        cache: the window cache, or ``None`` (the items alone).
        sink_tokens: tokens the cache holds before the first item.
        views: items' KV are views of ``cache`` (else copies the caller made).
    """

    def __init__(self, max_tokens: int, chunk_frames: int, first_chunk_id: int = 0, *, cache=None,
                 sink_tokens: int = 0, views: bool = False):
        self.max_tokens = max_tokens
        self.chunk_frames = chunk_frames
        self._items: deque[WindowItem] = deque()
        self._tokens = 0
        self._chunk_ids = itertools.count(first_chunk_id)
        self._cache = cache
        self._sink_tokens = sink_tokens
        self._views = bool(views and cache is not None)
        self._epoch = cache.epoch if cache is not None else 0

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[WindowItem]:
        self._sync()
        return iter(self._items)

    def __getitem__(self, i: int) -> WindowItem:
        self._sync()
        return self._items[i]

    @property
    def cache(self):
        """The window cache (``sink | items``), or ``None``."""
        return self._cache

    @property
    def views(self) -> bool:
        """Whether the items' KV are views of the cache."""
        return self._views

    @property
    def tokens(self) -> int:
        """Tokens held (at most ``max_tokens`` once :meth:`make_room` has run for the last item)."""
        return self._tokens

    @property
    def nbytes(self) -> int:
        """Bytes of the KV held: the cache's buffer (sink and spare room included), and the items' own
        copies when they are not views of it."""
        own = 0 if self._views else sum(it.kv.nbytes for it in self._items)
        return own + (self._cache.nbytes if self._cache is not None else 0)

    def _sync(self) -> None:
        """Re-take the items' views after the cache's buffer moved (they would read stale slots)."""
        if not self._views or self._cache.epoch == self._epoch:
            return
        offset = self._sink_tokens
        for it in self._items:
            n = it.kv.length
            it.kv = self._cache.segment(offset, offset + n, it.kv.positions)
            offset += n
        self._epoch = self._cache.epoch

    def segments(self) -> list[KVSegment]:
        """The items' KV, oldest first."""
        self._sync()
        return [it.kv for it in self._items]

    def append(self, item: WindowItem) -> None:
        """Add the newest item (with a cache: already prefilled into it, right after the other items)."""
        if self._cache is not None and self._cache.length != self._sink_tokens + self._tokens + item.kv.length:
            raise ValueError(f"window cache out of step: it holds {self._cache.length} tokens, the sink and "
                             f"items {self._sink_tokens + self._tokens + item.kv.length}")
        self._items.append(item)
        self._tokens += item.kv.length
        self._sync()

    def make_room(self, incoming: int) -> list[KVChunk]:
        """Evict the oldest items until ``incoming`` more tokens fit.

        Returns the chunks the evicted items make, in stream order, for the memory bank; items a
        save already banked leave without a chunk.
        """
        self._sync()
        chunks, evicted = [], 0
        while self._items and self._tokens + incoming > self.max_tokens:
            group = [self._items.popleft() for _ in range(group_length(self._items, 0, self.chunk_frames))]
            n = sum(it.kv.length for it in group)
            self._tokens -= n
            evicted += n
            if not group[0].banked:
                chunks.append(make_chunk(group, next(self._chunk_ids)))  # copies: the slots are reused next
        if self._cache is not None and evicted:
            self._cache.remove(self._sink_tokens, evicted)
        return chunks

    def bank_all(self) -> list[KVChunk]:
        """Chunks of every item not yet banked, cut where eviction will cut them; the items stay and
        are marked banked (a save copies the window into the bank while the stream goes on)."""
        self._sync()
        items, chunks, i = list(self._items), [], 0
        while i < len(items):
            group = items[i : i + group_length(items, i, self.chunk_frames)]
            if not group[0].banked:
                chunks.append(make_chunk(group, next(self._chunk_ids)))
                for it in group:
                    it.banked = True
            i += len(group)
        return chunks

    def evidence(self) -> list[Evidence]:
        """What the window covers, as evidence of an answer: one item per stretch of one video input
        (a new stretch starts where a frame's label differs from the stretch's frames'; notes and
        speech stay in the stretch they came in), oldest first; ``[]`` when empty."""
        stretches: list[list[WindowItem]] = []
        video: str | None = None
        for it in self._items:
            if it.kind == "frame":
                if stretches and any(o.kind == "frame" for o in stretches[-1]) and it.label != video:
                    stretches.append([])
                video = it.label
            if not stretches:
                stretches.append([])
            stretches[-1].append(it)
        return [_stretch_evidence(items) for items in stretches]

    def clear(self) -> None:
        """Drop every item and the cache (its buffer is freed)."""
        self._items.clear()
        self._tokens = 0
        self._cache = None
        self._views = False


def _stretch_evidence(items: Sequence[WindowItem]) -> Evidence:
    """Evidence of consecutive window items: their time range (earliest to latest: a note may carry an
    earlier time than the frames around it), frames, newest thumbnail, words and input labels."""
    frames = tuple(it.frame_index for it in items if it.frame_index is not None)
    thumb = next((it.thumbnail for it in reversed(items) if it.thumbnail), None)
    kinds = {it.kind for it in items}
    # the words heard and read in the window, as a memory chunk of notes or speech carries them
    words = "\n".join(it.text for it in items if it.text and it.kind in ("text", "speech")) or None
    labels = list(dict.fromkeys(it.label for it in items if it.label))
    return Evidence(
        t_start=min(it.pts for it in items), t_end=max(it.end for it in items), source="window",
        kind=next(iter(kinds)) if len(kinds) == 1 else "mixed",
        frame_indices=frames, thumbnail=thumb, text=words, input_source=" + ".join(labels) or None,
    )
