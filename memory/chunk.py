"""What the memory stores: a chunk of KV cache plus its metadata.

A chunk is the KV of a few consecutive tokens that slid out of the model's
attention window: one frame's kept visual tokens, a few frames, or one timed
text event (a note, or a speech segment heard in the audio). :class:`ChunkMeta` is the small, JSON-able description (time
range, kind, token count, thumbnail); :class:`KVChunk` adds the tensors.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch

from memory.errors import InvalidChunk

#: Chunk kinds the bank knows.
CHUNK_KINDS = ("frame", "text", "speech")


@dataclass(frozen=True)
class ChunkMeta:
    """Metadata of one chunk; immutable and JSON-serializable.

    Attributes:
        chunk_id: unique non-negative id assigned by the caller (the session), increasing in time.
        t_start: start of the stream time range covered by the chunk, seconds.
        t_end: end of that range, seconds (``>= t_start``).
        kind: ``"frame"``, ``"text"`` (a note) or ``"speech"`` (words heard in the audio).
        n_tokens: number of tokens ``T`` in the chunk's KV.
        frame_indices: indices of the frames the chunk was cut from (empty for text).
        text: the text of a text event (or a caption for display); ``None`` if none.
        thumbnail: a small JPEG of the chunk's frame for evidence display; ``None`` if none.
        extra: free-form JSON-able metadata; stored read-only.
    """

    chunk_id: int
    t_start: float
    t_end: float
    kind: str
    n_tokens: int
    frame_indices: tuple[int, ...] = ()
    text: str | None = None
    thumbnail: bytes | None = field(default=None, repr=False)
    extra: Mapping[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if isinstance(self.chunk_id, bool) or not isinstance(self.chunk_id, int) or self.chunk_id < 0:
            raise InvalidChunk(f"ChunkMeta.chunk_id must be an int >= 0; got {self.chunk_id!r}")
        for name in ("t_start", "t_end"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise InvalidChunk(f"ChunkMeta.{name} must be a finite number of seconds; got {value!r}")
            object.__setattr__(self, name, float(value))
        if self.t_end < self.t_start:
            raise InvalidChunk(
                f"ChunkMeta.t_end must be >= t_start; got t_start={self.t_start} t_end={self.t_end}"
            )
        if self.kind not in CHUNK_KINDS:
            raise InvalidChunk(f"ChunkMeta.kind must be one of {CHUNK_KINDS}; got {self.kind!r}")
        if isinstance(self.n_tokens, bool) or not isinstance(self.n_tokens, int) or self.n_tokens < 1:
            raise InvalidChunk(f"ChunkMeta.n_tokens must be an int >= 1; got {self.n_tokens!r}")
        try:
            indices = tuple(self.frame_indices)
        except TypeError:
            raise InvalidChunk(
                f"ChunkMeta.frame_indices must be a sequence of ints; got {self.frame_indices!r}"
            ) from None
        if any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in indices):
            raise InvalidChunk(f"ChunkMeta.frame_indices must hold ints >= 0; got {indices!r}")
        object.__setattr__(self, "frame_indices", indices)
        if self.text is not None and not isinstance(self.text, str):
            raise InvalidChunk(f"ChunkMeta.text must be a str or None; got {type(self.text).__name__}")
        if self.thumbnail is not None:
            if not isinstance(self.thumbnail, (bytes, bytearray, memoryview)):
                raise InvalidChunk(
                    f"ChunkMeta.thumbnail must be bytes (a JPEG) or None; got {type(self.thumbnail).__name__}"
                )
            object.__setattr__(self, "thumbnail", bytes(self.thumbnail))
        if not isinstance(self.extra, Mapping):
            raise InvalidChunk(f"ChunkMeta.extra must be a mapping; got {type(self.extra).__name__}")
        extra = dict(self.extra)
        try:
            # Round-trip through JSON: proves it is JSON-able and detaches it from the caller's objects.
            extra = json.loads(json.dumps(extra, allow_nan=False))
        except (TypeError, ValueError) as exc:
            raise InvalidChunk(f"ChunkMeta.extra must be JSON-serializable: {exc}") from None
        object.__setattr__(self, "extra", MappingProxyType(extra))

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # the read-only ``extra`` view cannot be pickled; rebuild from a plain dict (pickle, copy, Ray)
        return (
            type(self),
            (self.chunk_id, self.t_start, self.t_end, self.kind, self.n_tokens, self.frame_indices,
             self.text, self.thumbnail, dict(self.extra)),
        )

    @property
    def duration(self) -> float:
        """``t_end - t_start`` in seconds."""
        return self.t_end - self.t_start

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict (the thumbnail as base64) that :meth:`from_json` reads back."""
        return {
            "chunk_id": self.chunk_id,
            "t_start": self.t_start,
            "t_end": self.t_end,
            "kind": self.kind,
            "n_tokens": self.n_tokens,
            "frame_indices": list(self.frame_indices),
            "text": self.text,
            "thumbnail": None if self.thumbnail is None else base64.b64encode(self.thumbnail).decode("ascii"),
            "extra": dict(self.extra),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ChunkMeta:
        """Inverse of :meth:`to_json`; raises :class:`InvalidChunk` on malformed input."""
        if not isinstance(data, Mapping):
            raise InvalidChunk(f"chunk metadata must be a JSON object; got {type(data).__name__}")
        try:
            thumb = data.get("thumbnail")
            return cls(
                chunk_id=data["chunk_id"],
                t_start=data["t_start"],
                t_end=data["t_end"],
                kind=data["kind"],
                n_tokens=data["n_tokens"],
                frame_indices=tuple(data.get("frame_indices", ())),
                text=data.get("text"),
                thumbnail=None if thumb is None else base64.b64decode(thumb, validate=True),
                extra=data.get("extra") or {},
            )
        except KeyError as exc:
            raise InvalidChunk(f"chunk metadata lacks the field {exc.args[0]!r}") from None
        except (TypeError, ValueError) as exc:  # binascii.Error is a ValueError
            raise InvalidChunk(f"chunk metadata is malformed: {exc}") from None

    def sort_key(self) -> tuple[float, int]:
        """Time order used everywhere in the bank: ``(t_start, chunk_id)``."""
        return (self.t_start, self.chunk_id)


@dataclass(eq=False)
class KVChunk:
    """One chunk of KV cache with its metadata and retrieval summary.

    Attributes:
        meta: the chunk's :class:`ChunkMeta`.
        keys: ``(L, H, T, D)`` floating tensor, post-RoPE keys as stored in the model cache
            (``L`` layers, ``H`` KV heads, ``T == meta.n_tokens`` tokens, ``D`` head dim).
        values: ``(L, H, T, D)`` floating tensor, same shape and dtype as ``keys``.
        positions: int64 ``(T,)`` (1D RoPE) or ``(3, T)`` (M-RoPE: t, h, w): the tokens' original positions.
        summary: float32 ``(S,)``, the flattened per-layer mean pre-RoPE key, ``S = L * H * D``;
            the bank ranks chunks by its inner product with a question's query summary.
    """

    meta: ChunkMeta
    keys: torch.Tensor
    values: torch.Tensor
    positions: torch.Tensor
    summary: torch.Tensor

    def __post_init__(self) -> None:
        if isinstance(self.summary, torch.Tensor) and self.summary.is_floating_point() and self.summary.dtype != torch.float32:
            self.summary = self.summary.float()
        validate_chunk(self)

    @property
    def chunk_id(self) -> int:
        return self.meta.chunk_id

    @property
    def n_tokens(self) -> int:
        return self.meta.n_tokens


@dataclass(frozen=True, eq=False)
class ChunkKeys:
    """The keys of some layers of one chunk: what a rerank reads, without values or other layers.

    Attributes:
        meta: the chunk's :class:`ChunkMeta`.
        layers: the layer indices, in the order of ``keys``' first axis.
        keys: ``(L', H, T, D)`` post-RoPE keys of those layers (``L' == len(layers)``).
        positions: int64 ``(T,)`` or ``(3, T)``, the tokens' original positions.
    """

    meta: ChunkMeta
    layers: tuple[int, ...]
    keys: torch.Tensor
    positions: torch.Tensor

    @property
    def chunk_id(self) -> int:
        return self.meta.chunk_id


def content_mask(meta: ChunkMeta, n_tokens: int) -> torch.Tensor:
    """``(T,)`` bool: the chunk's content tokens, from ``meta.extra["content"]`` ranges (all when absent).

    Content is what the chunk is about (a frame's visual tokens, a note's words), not the prompt
    pieces around it; retrieval scores and consolidation merges only content.
    """
    ranges = meta.extra.get("content") if meta.extra else None
    if not ranges:
        return torch.ones(n_tokens, dtype=torch.bool)
    mask = torch.zeros(n_tokens, dtype=torch.bool)
    for start, stop in ranges:
        mask[int(start) : int(stop)] = True
    return mask if bool(mask.any()) else torch.ones(n_tokens, dtype=torch.bool)


def validate_chunk(chunk: KVChunk) -> None:
    """Check a chunk's types and shapes; raise :class:`InvalidChunk` naming the problem."""
    meta = chunk.meta
    if not isinstance(meta, ChunkMeta):
        raise InvalidChunk(f"KVChunk.meta must be a ChunkMeta; got {type(meta).__name__}")
    cid = meta.chunk_id
    for name in ("keys", "values", "positions", "summary"):
        if not isinstance(getattr(chunk, name), torch.Tensor):
            raise InvalidChunk(
                f"chunk {cid}: KVChunk.{name} must be a torch.Tensor; got {type(getattr(chunk, name)).__name__}"
            )
    k, v = chunk.keys, chunk.values
    if k.ndim != 4:
        raise InvalidChunk(f"chunk {cid}: keys must have shape (L, H, T, D); got {tuple(k.shape)}")
    if v.shape != k.shape:
        raise InvalidChunk(f"chunk {cid}: values shape {tuple(v.shape)} differs from keys shape {tuple(k.shape)}")
    if not k.is_floating_point() or v.dtype != k.dtype:
        raise InvalidChunk(f"chunk {cid}: keys and values must share one floating dtype; got {k.dtype} and {v.dtype}")
    n_layers, n_heads, n_tok, head_dim = k.shape
    if min(n_layers, n_heads, head_dim) < 1:
        raise InvalidChunk(f"chunk {cid}: keys shape {tuple(k.shape)} has an empty dimension")
    if n_tok != meta.n_tokens:
        raise InvalidChunk(f"chunk {cid}: keys hold T={n_tok} tokens but meta.n_tokens={meta.n_tokens}")
    pos = chunk.positions
    if pos.dtype != torch.int64:
        raise InvalidChunk(f"chunk {cid}: positions must be int64; got {pos.dtype}")
    if not (pos.shape == (n_tok,) or pos.shape == (3, n_tok)):
        raise InvalidChunk(f"chunk {cid}: positions must have shape ({n_tok},) or (3, {n_tok}); got {tuple(pos.shape)}")
    s = chunk.summary
    if s.ndim != 1 or s.dtype != torch.float32:
        raise InvalidChunk(f"chunk {cid}: summary must be a float32 vector (S,); got {s.dtype} {tuple(s.shape)}")
    if not bool(torch.isfinite(s).all()):
        raise InvalidChunk(f"chunk {cid}: summary holds NaN or infinite values")
