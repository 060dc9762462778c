"""Two-stage retrieval of memory chunks for a question.

1. **Candidates** (faiss, cheap): the question's per-layer mean query against each chunk's
   per-layer mean key (ReKV's in-model retrieval), top ``candidates``.
2. **Rerank** (late interaction, exact): for each candidate, the question's per-token queries
   meet the chunk's own keys (dequantized and un-rotated back to pre-RoPE) in the upper layers;
   a chunk's score is the mean over layers, heads and question tokens of the best-matching chunk
   token's attention logit. One strong token (a name, a number, an object) is enough to surface
   a chunk, which a mean over all its tokens washes out.

On real SmolLM2-135M KV (214 text chunks, 10 needles) the candidate stage alone put 4 of 10
needles in the top 8; the rerank put 9 of 10 (BENCHMARKS.md has the full figure).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

logger = logging.getLogger(__name__)


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


def late_interaction_scores(backend, query_tokens: torch.Tensor, chunks: Sequence, layers: Sequence[int]) -> list[float]:
    """Score chunks against a question.

    Args:
        query_tokens: ``(L, Tq, H * D)`` pre-RoPE per-token queries of the question's content.
        chunks: :class:`memory.KVChunk` items with keys ``(L, H, T, D)`` (post-RoPE) and positions.
        layers: which layers to use.

    Returns:
        one score per chunk: mean over layers, heads and query tokens of max over content tokens of
        ``q . k / sqrt(D)``.
    """
    spec = backend.spec
    layers = list(layers)
    h, d = spec.num_kv_heads, spec.head_dim
    q = query_tokens[layers].float()  # (L', Tq, H*D)
    q = q.view(len(layers), q.shape[1], h, d)
    scale = d ** -0.5
    scores = []
    for chunk in chunks:
        keys = chunk.keys[layers].float()  # (L', H, T, D)
        keys = backend.unrotate_keys(keys, chunk.positions)
        mask = content_mask(chunk.meta, keys.shape[2])
        keys = keys[:, :, mask]
        att = torch.einsum("lqhd,lhkd->lhqk", q, keys) * scale  # (L', H, Tq, Tk)
        scores.append(float(att.amax(dim=-1).mean()))
    return scores


def retrieve(backend, bank, probe, k: int, *, candidates: int, rerank: bool, dtype=None) -> list:
    """Top ``k`` chunks for the question ``probe`` (a :class:`PrefillResult` with query tokens), in time order.

    Returns :class:`memory.Retrieved`-like items (``.chunk``, ``.score``); with ``rerank`` the score is
    the late-interaction score, else the summary inner product.
    """
    from memory import Retrieved

    if k <= 0 or len(bank) == 0:
        return []
    n_cand = max(k, candidates) if rerank else k
    found = bank.retrieve(probe.query_summary, n_cand, dtype=dtype)
    if not rerank or len(found) <= k or probe.query_tokens is None or probe.query_tokens.shape[1] == 0:
        return found
    scores = late_interaction_scores(backend, probe.query_tokens, [r.chunk for r in found], rerank_layers(backend.spec.num_layers))
    best = sorted(range(len(found)), key=lambda i: scores[i], reverse=True)[:k]
    kept = [Retrieved(chunk=found[i].chunk, score=scores[i]) for i in best]
    return sorted(kept, key=lambda r: (r.chunk.meta.t_start, r.chunk.meta.chunk_id))
