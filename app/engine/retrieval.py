"""Two-stage retrieval of memory chunks for a question.

1. **Candidates** (faiss, cheap): the question's per-layer mean query against each chunk's
   per-layer mean key (ReKV's in-model retrieval), top ``candidates``. Only ids and summary
   scores: no KV is read (:meth:`memory.MemoryBank.search`).
2. **Rerank** (late interaction, exact): for each candidate, the question's per-token queries
   meet the chunk's own keys (dequantized and un-rotated back to pre-RoPE) in the upper layers;
   a chunk's score is the mean over layers, heads and question tokens of the best-matching chunk
   token's attention logit. One strong token (a name, a number, an object) is enough to surface
   a chunk, which a mean over all its tokens washes out. Only the keys of those layers are
   dequantized (:meth:`memory.MemoryBank.keys`); values and lower layers stay packed.
3. **Fetch**: only the final ``k`` chunks are dequantized whole (:meth:`memory.MemoryBank.get`).

Scoring is batched: candidates' content tokens are concatenated along the token axis with
their positions (1D or M-RoPE ``(3, T)``), un-rotated by one ``backend.unrotate_keys`` call
and scored by one einsum per block, then reduced by a per-chunk segment max. On the CPU a
block holds about :data:`CPU_BLOCK_BYTES` of keys: one call over every candidate streams all
their keys through memory several times, which is much slower than blocks that fit a cache.

The rerank finds needles (a chunk with one telling fact among many alike) that the candidate
stage alone ranks too low; ``livesight bench recall`` measures both stages side by side.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

logger = logging.getLogger(__name__)

#: Keys (float32 bytes) un-rotated and scored per call on the CPU: a few chunks, about an L2 cache.
CPU_BLOCK_BYTES = 2 << 20


def rerank_layers(num_layers: int) -> range:
    """The layers used to rerank: the upper half (lower layers match surface form, not meaning)."""
    return range(num_layers // 2, num_layers)


def content_mask(meta, n_tokens: int) -> torch.Tensor:
    """``(T,)`` bool: the chunk's content tokens, from ``meta.extra["content"]`` ranges (all when absent)."""
    ranges = meta.extra.get("content") if meta.extra else None
    if not ranges:
        return torch.ones(n_tokens, dtype=torch.bool)
    mask = torch.zeros(n_tokens, dtype=torch.bool)
    for start, stop in ranges:
        mask[int(start) : int(stop)] = True
    return mask if bool(mask.any()) else torch.ones(n_tokens, dtype=torch.bool)


def _blocks(sizes: Sequence[int], limit: int | None) -> list[range]:
    """Consecutive runs of items whose ``sizes`` add up to at most ``limit`` (one item at least; all if ``None``)."""
    if limit is None:
        return [range(len(sizes))]
    out, start, total = [], 0, 0
    for i, size in enumerate(sizes):
        if i > start and total + size > limit:
            out.append(range(start, i))
            start, total = i, 0
        total += size
    out.append(range(start, len(sizes)))
    return out


def late_interaction_scores(backend, query_tokens: torch.Tensor, keysets: Sequence, *,
                            block_bytes: int | None = -1) -> list[float]:
    """Score chunks against a question, batched over chunks.

    Args:
        query_tokens: ``(L, Tq, H * D)`` pre-RoPE per-token queries of the question's content, all layers.
        keysets: :class:`memory.ChunkKeys` items, all of the same ``layers``: keys ``(L', H, T, D)``
            (post-RoPE) with positions ``(T,)`` or ``(3, T)``.
        block_bytes: float32 key bytes per un-rotate + einsum call; ``None`` = all chunks in one
            call; default :data:`CPU_BLOCK_BYTES` on the CPU, one call elsewhere.

    Returns:
        one score per chunk: mean over layers, heads and query tokens of max over content tokens of
        ``q . k / sqrt(D)``.
    """
    if not keysets:
        return []
    spec = backend.spec
    layers = list(keysets[0].layers)
    if any(list(ks.layers) != layers for ks in keysets):
        raise ValueError("late_interaction_scores: every chunk's keys must hold the same layers")
    h, d = spec.num_kv_heads, spec.head_dim
    q = query_tokens[layers].float()
    q = q.view(len(layers), q.shape[1], h, d)  # (L', Tq, H, D)
    scale = d ** -0.5
    masks = [content_mask(ks.meta, ks.keys.shape[2]) for ks in keysets]
    lengths = [int(m.sum()) for m in masks]
    if block_bytes == -1:
        block_bytes = CPU_BLOCK_BYTES if keysets[0].keys.device.type == "cpu" else None
    per_token = len(layers) * h * d * 4
    scores: list[float] = []
    for block in _blocks([n * per_token for n in lengths], block_bytes):
        keys = torch.cat([keysets[i].keys[:, :, masks[i]].float() for i in block], dim=2)  # (L', H, N, D)
        positions = torch.cat([keysets[i].positions[..., masks[i]] for i in block], dim=-1)  # (N,) or (3, N)
        keys = backend.unrotate_keys(keys, positions)
        att = torch.einsum("lqhd,lhkd->lhqk", q, keys)  # (L', H, Tq, N)
        best = torch.stack([seg.amax(dim=-1) for seg in att.split([lengths[i] for i in block], dim=-1)], dim=-1)
        scores.extend((best * scale).mean(dim=(0, 1, 2)).tolist())  # (chunks,)
    return scores


def retrieve(backend, bank, probe, k: int, *, candidates: int, rerank: bool, dtype=None) -> list:
    """Top ``k`` chunks for the question ``probe`` (a :class:`PrefillResult` with query tokens), in time order.

    Returns :class:`memory.Retrieved` items (``.chunk``, ``.score``); with ``rerank`` the score is
    the late-interaction score, else the summary inner product. A candidate whose file is corrupt
    (or that retention deleted meanwhile) is skipped and the next best takes its place.
    """
    from memory import ChunkCorrupt, ChunkNotFound, Retrieved

    if k <= 0 or len(bank) == 0:
        return []
    tokens = probe.query_tokens
    if not rerank or tokens is None or tokens.shape[1] == 0:
        return bank.retrieve(probe.query_summary, k, dtype=dtype)
    hits = bank.search(probe.query_summary, max(k, candidates))
    if len(hits) <= k:  # nothing to choose between: every readable chunk, summary scores
        return bank.retrieve(probe.query_summary, k, dtype=dtype)
    layers = rerank_layers(backend.spec.num_layers)
    keysets = []
    for meta, _ in hits:
        try:
            keysets.append(bank.keys(meta.chunk_id, layers, dtype=dtype))
        except (ChunkCorrupt, ChunkNotFound) as exc:  # the bank logged and marked a corrupt one
            logger.debug("rerank skips chunk %d: %s", meta.chunk_id, exc)
    scores = late_interaction_scores(backend, tokens, keysets)
    kept = []
    for i in sorted(range(len(keysets)), key=lambda j: scores[j], reverse=True):
        try:
            kept.append(Retrieved(chunk=bank.get(keysets[i].chunk_id, dtype=dtype), score=scores[i]))
        except (ChunkCorrupt, ChunkNotFound) as exc:
            logger.debug("retrieval skips chunk %d: %s", keysets[i].chunk_id, exc)
            continue
        if len(kept) == k:
            break
    return sorted(kept, key=lambda r: (r.chunk.meta.t_start, r.chunk.meta.chunk_id))


class Retriever:
    """What a session asks memory through: it hears of every chunk that enters the bank
    (:meth:`added`) and answers a question's retrieval (:meth:`retrieve`).

    The one place retrieval strategies live, so the session stays the same when they change.
    """

    def __init__(self, backend, bank, config) -> None:
        self.backend = backend
        self.bank = bank
        self.config = config

    def added(self, chunk) -> None:
        """A chunk (:class:`memory.KVChunk`) just entered the bank."""

    def retrieve(self, question: str, probe, k: int) -> list:
        """Top ``k`` chunks for ``question`` (its probe prefill ``probe``), in time order (see :func:`retrieve`)."""
        return retrieve(self.backend, self.bank, probe, k, candidates=self.config.rerank_candidates,
                        rerank=self.config.rerank, dtype=self.backend.dtype)

    def close(self) -> None:
        """The session closed: free what the retriever holds."""
