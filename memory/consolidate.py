"""Consolidation of old memory: neighbouring frames of a static scene merged into one chunk.

When a disk budget is reached, the bank first consolidates its oldest chunks (requantized to
the consolidation codec's fewer bits, and, for a run of neighbouring frame chunks whose
summaries are near-identical, merged into one chunk) and deletes only what still does not fit.

Merging keeps every distinct token and folds near-duplicates together: a token of a later frame
whose *value* vector (all layers) is nearly parallel to a token already kept (cosine at least
``token_similarity``) is averaged into it. Values are compared, not keys, because the stored
keys are post-RoPE: the same patch seen at another position is rotated differently, so its
key looks unlike its twin's while its value does not. The kept token keeps its own key and
original position (a key is only valid at the position it was rotated for); its value becomes
the mean of the values folded into it. Time range, frame indices and content ranges are the
union of the merged chunks'.

Nothing here touches disk or the index: :func:`merge_chunks` maps decoded chunks to one.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from memory.chunk import ChunkMeta, KVChunk, content_mask

#: Bumped in ``meta.extra["consolidated"]`` when a chunk is consolidated (requantized, maybe merged).
CONSOLIDATED_KEY = "consolidated"
MERGED_KEY = "merged_from"


def consolidation_level(meta: ChunkMeta) -> int:
    """How many times the chunk was consolidated (0 = as appended)."""
    value = meta.extra.get(CONSOLIDATED_KEY, 0) if meta.extra else 0
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else 0


def _ranges(mask: torch.Tensor) -> list[list[int]]:
    """``[[start, stop], ...]`` runs of True in a bool ``(T,)`` mask."""
    out: list[list[int]] = []
    for i, flag in enumerate(mask.tolist()):
        if flag:
            if out and out[-1][1] == i:
                out[-1][1] = i + 1
            else:
                out.append([i, i + 1])
    return out


def summary_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine of two chunk summaries ``(S,)``: how alike two chunks look to retrieval."""
    return float(torch.nn.functional.cosine_similarity(a.float()[None], b.float()[None])[0])


def can_merge(chunks: Sequence[KVChunk]) -> bool:
    """Whether chunks may be merged at all: frame chunks of one input (their evidence names it), one KV
    shape and one position layout."""
    first = chunks[0]
    source = first.meta.extra.get("source")
    return all(
        c.meta.kind == "frame"
        and c.meta.extra.get("source") == source
        and c.keys.shape[:2] == first.keys.shape[:2]
        and c.keys.shape[3] == first.keys.shape[3]
        and c.positions.dim() == first.positions.dim()
        and c.summary.shape == first.summary.shape
        for c in chunks
    )


def merge_chunks(chunks: Sequence[KVChunk], *, token_similarity: float) -> KVChunk:
    """Merge neighbouring frame chunks (time order) into one, folding near-duplicate tokens.

    Args:
        chunks: decoded chunks in time order, all accepted by :func:`can_merge`; keys and
            values ``(L, H, T_i, D)``, positions ``(T_i,)`` or ``(3, T_i)``.
        token_similarity: cosine of value vectors (flattened over ``L, H, D``) at or above which
            a content token of a later chunk is folded into a kept one.

    Returns:
        One :class:`KVChunk` with the first chunk's id, keys/values ``(L, H, T, D)`` with
        ``T <= sum(T_i)``, the kept tokens' positions, the token-weighted mean summary, the
        union of time ranges and frame indices, and ``extra["merged_from"]`` the merged ids.
    """
    if not chunks:
        raise ValueError("merge_chunks needs at least one chunk")
    if len(chunks) == 1:
        return chunks[0]
    keys: list[torch.Tensor] = []
    positions: list[torch.Tensor] = []
    content: list[bool] = []
    kept_vecs: torch.Tensor | None = None  # (N, L*H*D) unit value vectors of kept content tokens
    kept_slot: list[int] = []  # index into the output token list of each kept content token
    sums: list[torch.Tensor] = []  # summed values per output token, (L, H, D)
    counts: list[int] = []
    for chunk in chunks:
        k = chunk.keys.float()
        v = chunk.values.float()
        mask = content_mask(chunk.meta, k.shape[2])
        vecs = torch.nn.functional.normalize(v.permute(2, 0, 1, 3).reshape(k.shape[2], -1), dim=-1)
        if kept_vecs is not None and kept_vecs.shape[0]:
            best, where = (vecs @ kept_vecs.T).max(dim=-1)
        else:
            best = torch.full((k.shape[2],), -2.0)
            where = torch.zeros(k.shape[2], dtype=torch.long)
        new_vecs = []
        for t in range(k.shape[2]):
            if bool(mask[t]) and float(best[t]) >= token_similarity:
                slot = kept_slot[int(where[t])]
                sums[slot] += v[:, :, t]
                counts[slot] += 1
                continue
            slot = len(keys)
            keys.append(k[:, :, t])
            sums.append(v[:, :, t].clone())
            counts.append(1)
            positions.append(chunk.positions[..., t])
            content.append(bool(mask[t]))
            if bool(mask[t]):
                kept_slot.append(slot)
                new_vecs.append(vecs[t])
        if new_vecs:
            stacked = torch.stack(new_vecs)
            kept_vecs = stacked if kept_vecs is None else torch.cat([kept_vecs, stacked])
    dtype = chunks[0].keys.dtype
    merged_k = torch.stack(keys, dim=2).to(dtype)
    merged_v = torch.stack([s / c for s, c in zip(sums, counts)], dim=2).to(dtype)
    merged_pos = torch.stack(positions, dim=-1).to(torch.int64)
    weights = torch.tensor([float(c.meta.n_tokens) for c in chunks])
    summary = (torch.stack([c.summary.float() for c in chunks]) * weights[:, None]).sum(0) / weights.sum()
    first = chunks[0].meta
    extra = dict(first.extra)
    extra["content"] = _ranges(torch.tensor(content, dtype=torch.bool))
    merged_from: list[int] = []
    for c in chunks:
        merged_from.extend(c.meta.extra.get(MERGED_KEY, [c.meta.chunk_id]) if c.meta.extra else [c.meta.chunk_id])
    extra[MERGED_KEY] = merged_from
    frames = sorted({i for c in chunks for i in c.meta.frame_indices})
    meta = ChunkMeta(
        chunk_id=first.chunk_id,
        t_start=min(c.meta.t_start for c in chunks),
        t_end=max(c.meta.t_end for c in chunks),
        kind="frame",
        n_tokens=merged_k.shape[2],
        frame_indices=tuple(frames),
        text=first.text,
        thumbnail=first.thumbnail,
        extra=extra,
    )
    return KVChunk(meta=meta, keys=merged_k, values=merged_v, positions=merged_pos, summary=summary)


def mark_consolidated(chunk: KVChunk) -> KVChunk:
    """The same chunk with ``extra["consolidated"]`` raised by one."""
    meta = chunk.meta
    extra = dict(meta.extra)
    extra[CONSOLIDATED_KEY] = consolidation_level(meta) + 1
    new_meta = ChunkMeta(
        chunk_id=meta.chunk_id, t_start=meta.t_start, t_end=meta.t_end, kind=meta.kind,
        n_tokens=meta.n_tokens, frame_indices=meta.frame_indices, text=meta.text,
        thumbnail=meta.thumbnail, extra=extra,
    )
    return KVChunk(meta=new_meta, keys=chunk.keys, values=chunk.values, positions=chunk.positions,
                   summary=chunk.summary)
