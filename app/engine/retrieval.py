"""Two-stage retrieval of memory chunks for a question.

1. **Candidates** (faiss, cheap): the question's per-layer mean query against each chunk's
   per-layer mean key (ReKV's in-model retrieval), top ``candidates``. Only ids and summary
   scores: no KV is read (:meth:`memory.MemoryBank.search`).
2. **Rerank** (late interaction, exact): for each candidate, the question's per-token queries
   meet the chunk's own keys (dequantized and un-rotated back to pre-RoPE) in the upper layers;
   a chunk's score is the mean over layers, heads and question tokens of the best-matching chunk
   token's attention logit. One strong token (a name, a number, an object) is enough to surface
   a chunk, which a mean over all its tokens washes out. Only the keys of those layers are
   dequantized (:meth:`memory.MemoryBank.keys`); values and lower layers stay packed. Where the
   bank keeps a chunk's compact rerank keys (pre-RoPE, a few bits per channel, in RAM), those are
   scored instead: nothing un-rotated, no disk read (:func:`rerank_scores`).
3. **Fetch**: only the final ``k`` chunks are dequantized whole (:meth:`memory.MemoryBank.get`).

Scoring is batched: candidates' content tokens are concatenated along the token axis with
their positions (1D or M-RoPE ``(3, T)``), un-rotated by one ``backend.unrotate_keys`` call
and scored by one einsum per block, then reduced by a per-chunk segment max. On the CPU a
block holds about :data:`CPU_BLOCK_BYTES` of keys: one call over every candidate streams all
their keys through memory several times, which is much slower than blocks that fit a cache.

The rerank finds needles (a chunk with one telling fact among many alike) that the candidate
stage alone ranks too low; ``livesight bench recall`` measures both stages side by side. Which
(layer, KV head) pairs it averages over is calibrated per model (:mod:`app.engine.retrieval_heads`,
``livesight calibrate-retrieval``); without a calibration, every head of the upper half.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from memory.chunk import content_mask

__all__ = ["Expansion", "Retriever", "content_mask", "expansion_probe", "fetch", "fuse", "kv_ranking",
           "late_interaction_scores", "late_interaction_table", "rerank_layers", "rerank_pairs", "rerank_scores",
           "retrieve", "select"]

logger = logging.getLogger(__name__)

#: Weight of the text path's ranking in the fusion (the in-model path's is 1).
TEXT_WEIGHT = 1.0
#: Weight of each second-probe ranking (the model's own first answer tokens) in the fusion.
PROBE_WEIGHT = 0.5
#: Hits whose neighbours in time may come along (the best hits with text; see :func:`select`).
NEIGHBOUR_HITS = 4

#: Keys (float32 bytes) un-rotated and scored per call on the CPU: a few chunks, about an L2 cache.
CPU_BLOCK_BYTES = 2 << 20


def rerank_layers(num_layers: int) -> range:
    """The layers used to rerank: the upper half (lower layers match surface form, not meaning)."""
    return range(num_layers // 2, num_layers)




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


def late_interaction_table(backend, query_tokens: torch.Tensor, keysets: Sequence, *,
                           block_bytes: int | None = -1) -> torch.Tensor:
    """Each (layer, KV head) pair's late-interaction score of each chunk, batched over chunks.

    Args:
        query_tokens: ``(L, Tq, H * D)`` pre-RoPE per-token queries of the question's content, all layers.
        keysets: :class:`memory.ChunkKeys` items, all of the same ``layers``: keys ``(L', H, T, D)``
            (post-RoPE) with positions ``(T,)`` or ``(3, T)``.
        block_bytes: float32 key bytes per un-rotate + einsum call; ``None`` = all chunks in one
            call; default :data:`CPU_BLOCK_BYTES` on the CPU, one call elsewhere.

    Returns:
        ``(chunks, L', H)`` float32: per pair, the mean over query tokens of the max over the chunk's
        content tokens of ``q . k / sqrt(D)`` (the calibration's material, :mod:`app.engine.retrieval_heads`).
    """
    spec = backend.spec
    h = spec.num_kv_heads
    if not keysets:
        return torch.zeros(0, 0, h)
    return torch.cat([best.mean(dim=2).permute(2, 0, 1) for best in _best_blocks(backend, query_tokens, keysets,
                                                                                   block_bytes)], dim=0)


def _best_blocks(backend, query_tokens: torch.Tensor, keysets: Sequence, block_bytes: int | None):
    """Per block of chunks: ``(L', H, Tq, chunks)`` scaled best-match logits (see :func:`late_interaction_table`)."""
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
    for block in _blocks([n * per_token for n in lengths], block_bytes):
        keys = torch.cat([keysets[i].keys[:, :, masks[i]].float() for i in block], dim=2)  # (L', H, N, D)
        positions = torch.cat([keysets[i].positions[..., masks[i]] for i in block], dim=-1)  # (N,) or (3, N)
        keys = backend.unrotate_keys(keys, positions)
        att = torch.einsum("lqhd,lhkd->lhqk", q, keys)  # (L', H, Tq, N)
        best = torch.stack([seg.amax(dim=-1) for seg in att.split([lengths[i] for i in block], dim=-1)], dim=-1)
        yield best * scale  # (L', H, Tq, chunks)


def late_interaction_scores(backend, query_tokens: torch.Tensor, keysets: Sequence, *,
                            block_bytes: int | None = -1, head_mask: torch.Tensor | None = None) -> list[float]:
    """Score chunks against a question, batched over chunks.

    Args:
        query_tokens: ``(L, Tq, H * D)`` pre-RoPE per-token queries of the question's content, all layers.
        keysets: :class:`memory.ChunkKeys` items, all of the same ``layers``: keys ``(L', H, T, D)``
            (post-RoPE) with positions ``(T,)`` or ``(3, T)``.
        block_bytes: float32 key bytes per un-rotate + einsum call; ``None`` = all chunks in one
            call; default :data:`CPU_BLOCK_BYTES` on the CPU, one call elsewhere.
        head_mask: ``(L', H)`` 0/1 weights of the (layer, KV head) pairs that count (calibrated heads,
            :class:`app.engine.retrieval_heads.RetrievalHeads`); ``None`` = every head of those layers.

    Returns:
        one score per chunk: mean over the chosen (layer, head) pairs and query tokens of max over
        content tokens of ``q . k / sqrt(D)``.
    """
    if not keysets:
        return []
    if head_mask is not None and tuple(head_mask.shape) != (len(keysets[0].layers), backend.spec.num_kv_heads):
        raise ValueError(f"late_interaction_scores: head_mask {tuple(head_mask.shape)} does not match "
                         f"{len(keysets[0].layers)} layers x {backend.spec.num_kv_heads} KV heads")
    scores: list[float] = []
    for best in _best_blocks(backend, query_tokens, keysets, block_bytes):
        if head_mask is None:
            scores.extend(best.mean(dim=(0, 1, 2)).tolist())  # (chunks,)
        else:
            w = head_mask.to(best.dtype)[:, :, None]  # (L', H, 1)
            scores.extend(((best.mean(dim=2) * w).sum(dim=(0, 1)) / w.sum()).tolist())
    return scores


def rerank_pairs(layers: Sequence[int], num_kv_heads: int, head_mask: torch.Tensor | None = None) -> list[tuple[int, int]]:
    """The (layer, KV head) pairs a rerank scores: every head of ``layers``, or those ``head_mask`` ``(L', H)`` keeps."""
    return [(int(layer), h) for i, layer in enumerate(layers) for h in range(num_kv_heads)
            if head_mask is None or bool(head_mask[i, h])]


def rerank_scores(backend, bank, query_tokens: torch.Tensor, ids: Sequence[int], layers: Sequence[int], *,
                  head_mask: torch.Tensor | None = None, dtype=None) -> list[tuple[int, float]]:
    """Late-interaction scores ``[(chunk_id, score)]`` of the chunks ``ids`` (in that order), the same score
    as :func:`late_interaction_scores` over ``layers`` and ``head_mask``.

    Chunks whose compact rerank keys the bank keeps (:meth:`memory.MemoryBank.compact`: pre-RoPE keys of
    the scored pairs in RAM, built on first use when missing) are scored from them in one batched pass
    (:func:`compression.compact_keys.compact_scores`), with nothing un-rotated and no disk read; the
    others (compact keys off, or keys that cannot give one) from their stored keys
    (:meth:`memory.MemoryBank.keys`, un-rotated here). A chunk that is corrupt or that retention deleted
    meanwhile is skipped.

    Args:
        query_tokens: ``(L, Tq, H * D)`` pre-RoPE per-token queries of the question's content, all layers.
        layers: the layers scored; ``head_mask``: ``(len(layers), H)`` 0/1, ``None`` = every head.
    """
    from compression.compact_keys import compact_scores
    from memory import ChunkCorrupt, ChunkNotFound

    spec = backend.spec
    layers = [int(i) for i in layers]
    pairs = rerank_pairs(layers, spec.num_kv_heads, head_mask)
    use_compact = bool(pairs) and getattr(bank.config, "compact_keys_bits", None) is not None
    if use_compact:
        bank.set_rerank_form(backend.unrotate_keys, pairs)
    compact, full, order = [], [], []
    for cid in ids:
        try:
            ck = bank.compact(cid) if use_compact else None
            if ck is not None:
                compact.append((cid, ck))
            else:
                full.append(bank.keys(cid, layers, dtype=dtype))
            order.append(cid)
        except (ChunkCorrupt, ChunkNotFound) as exc:  # the bank logged and marked a corrupt one
            logger.debug("rerank skips chunk %d: %s", cid, exc)
    score: dict[int, float] = {}
    if compact:
        h, d = spec.num_kv_heads, spec.head_dim
        q = query_tokens.detach().to("cpu", torch.float32)
        q = q.view(q.shape[0], q.shape[1], h, d)
        li = torch.tensor([layer for layer, _ in pairs], dtype=torch.long)
        hi = torch.tensor([head for _, head in pairs], dtype=torch.long)
        values = compact_scores(q[li, :, hi], [ck for _, ck in compact])  # query (P, Tq, D)
        score.update((cid, float(v)) for (cid, _), v in zip(compact, values))
    if full:
        values = late_interaction_scores(backend, query_tokens, full, head_mask=head_mask)
        score.update((ks.chunk_id, float(v)) for ks, v in zip(full, values))
    return [(cid, score[cid]) for cid in order]


def kv_ranking(backend, bank, probe, candidates: int, *, rerank: bool, extra: Sequence[int] = (),
               dtype=None, heads=None) -> list[tuple[int, float]]:
    """The in-model ranking: ``[(chunk_id, score)]`` best first over the summary stage's top
    ``candidates`` plus the chunks ``extra`` (e.g. the text path's hits), which the rerank scores too.

    With ``rerank`` (and the probe's query tokens) the score is the late-interaction score, else the
    summary inner product (``extra`` chunks the summary stage did not find are then left out).
    ``heads``: the (layer, KV head) pairs the rerank uses (:class:`app.engine.retrieval_heads.RetrievalHeads`;
    ``None`` = every head of :func:`rerank_layers`). A chunk that is corrupt or that retention deleted
    meanwhile is skipped.
    """
    hits = bank.search(probe.query_summary, candidates)
    tokens = probe.query_tokens
    if not rerank or tokens is None or tokens.shape[1] == 0:
        return [(meta.chunk_id, float(score)) for meta, score in hits]
    ids = [meta.chunk_id for meta, _ in hits]
    for cid in extra:
        if cid not in ids and cid in bank:
            ids.append(cid)
    layers = rerank_layers(backend.spec.num_layers) if heads is None else list(heads.layers)
    mask = None if heads is None or heads.all_heads else heads.mask_tensor()
    scored = rerank_scores(backend, bank, tokens, ids, layers, head_mask=mask, dtype=dtype)
    return sorted(scored, key=lambda item: item[1], reverse=True)


def fuse(rankings: Sequence[Sequence[int]], weights: Sequence[float] | None = None, *,
         k0: float = 20.0) -> list[tuple[int, float]]:
    """Weighted reciprocal rank fusion: ``score(c) = sum_p w_p / (k0 + rank_p(c))`` (rank from 1).

    Rank-based, so the in-model scores (attention logits) and the text path's cosines need no common
    scale; a chunk high in either ranking comes up, and one high in both comes first.

    Returns:
        ``[(chunk_id, fused score)]`` best first; ties keep the first ranking's order.
    """
    weights = [1.0] * len(rankings) if weights is None else list(weights)
    if len(weights) != len(rankings):
        raise ValueError(f"fuse: {len(rankings)} rankings but {len(weights)} weights")
    total: dict[int, float] = {}
    first: dict[int, tuple[int, int]] = {}
    for p, (ranking, w) in enumerate(zip(rankings, weights)):
        for r, cid in enumerate(ranking, start=1):
            total[cid] = total.get(cid, 0.0) + float(w) / (k0 + r)
            first.setdefault(cid, (p, r))
    return sorted(total.items(), key=lambda item: (-item[1], first[item[0]]))


def select(ranked: Sequence[int], metas, k: int, *, neighbours: int = 0, budget_tokens: int | None = None,
           neighbour_hits: int | None = None, neighbours_of=None, scores: Sequence[float] | None = None,
           score_gap: float | None = None) -> list[int]:
    """Which chunks a question gets: the top ``k`` of ``ranked`` (chunk ids, best first), then the
    ``neighbours`` chunks just before and after each of the first ``neighbour_hits`` hits (all hits
    when ``None``) in time, the best hits' neighbours first, all within ``budget_tokens``.

    Args:
        metas: the bank's metas in time order (:meth:`memory.MemoryBank.metas`).
        budget_tokens: the most memory tokens the question may attend to (``None`` = no limit); a hit
            that does not fit is passed over for a smaller one after it; the first hit always comes.
        neighbours_of: ``meta -> bool``: the hits whose neighbours may come (``None`` = every hit).
        scores: ``ranked``'s scores (same order, best first; positive, e.g. fused reciprocal-rank scores),
            for ``score_gap``.
        score_gap: adaptive k: hits stop at the first whose score is below ``(1 - score_gap)`` times the
            best's (``None`` = no cut: ``k`` hits); the first hit always comes, ``k`` stays the most.

    Returns:
        chosen chunk ids (hits first, then neighbours), without duplicates.
    """
    by_id = {m.chunk_id: (i, m) for i, m in enumerate(metas)}
    chosen: list[int] = []
    used = 0

    def take(cid: int) -> bool:
        nonlocal used
        if cid in chosen or cid not in by_id:
            return False
        n = by_id[cid][1].n_tokens
        if budget_tokens is not None and chosen and used + n > budget_tokens:
            return False
        chosen.append(cid)
        used += n
        return True

    if score_gap is not None and scores is not None and len(scores) != len(ranked):
        raise ValueError(f"select: {len(ranked)} ranked chunks but {len(scores)} scores")
    floor = None if score_gap is None or not scores else (1.0 - float(score_gap)) * float(scores[0])
    for i, cid in enumerate(ranked):
        if len(chosen) >= k:
            break
        if floor is not None and chosen and float(scores[i]) < floor:
            break
        take(cid)
    if neighbours > 0:
        hits = [cid for cid in chosen if neighbours_of is None or neighbours_of(by_id[cid][1])]
        hits = hits if neighbour_hits is None else hits[:neighbour_hits]
        for step in range(1, neighbours + 1):
            for cid in hits:
                i = by_id[cid][0]
                for j in (i - step, i + step):
                    if 0 <= j < len(metas):
                        take(metas[j].chunk_id)
    return chosen


@dataclass(frozen=True)
class Expansion:
    """The second probe: the model's own first answer tokens to the question, as a query.

    Attributes:
        text: those tokens' text (the text path embeds it after the question).
        probe: a :class:`PrefillResult`-like record: ``query_summary`` ``(L * H * D,)`` (the mean of the
            tokens' summaries) and ``query_tokens`` ``(L, n, H * D)`` (their pre-RoPE queries).
        tokens: how many answer tokens were made (it stops early at an end-of-turn token).
    """

    text: str
    probe: object
    tokens: int


@dataclass(frozen=True)
class _ExpansionProbe:
    query_summary: torch.Tensor
    query_tokens: torch.Tensor


def expansion_probe(backend, cache, probe, question_seg, n_tokens: int) -> Expansion | None:
    """Greedy-decode the first ``n_tokens`` answer tokens after the question's probe prefill, over
    what ``cache`` holds (sink, window, dialog and the question: no memory yet), keeping each token's
    per-layer queries; the cache is rewound to where it was afterwards, whatever happens.

    Args:
        cache: the window cache the probe ``probe`` (a :class:`PrefillResult` with logits) was written into.
        question_seg: the question's :class:`SegmentInput` (its ``next_position`` is the answer's first).

    Returns:
        the :class:`Expansion`, or ``None`` when the model ends its turn at once.
    """
    from app.engine.backends.types import SegmentInput

    if n_tokens <= 0 or probe.logits is None:
        return None
    mark = cache.get_seq_length()
    next_id = int(torch.argmax(probe.logits[-1]).item())
    pos = question_seg.next_position
    ids: list[int] = []
    summaries, queries = [], []
    try:
        while len(ids) < n_tokens and not backend.is_stop_token(next_id):
            ids.append(next_id)
            tok = torch.tensor([next_id], dtype=torch.long)
            seg = SegmentInput(backend.embed_ids(tok), backend.text_positions(pos, 1), pos + 1, tok,
                               torch.ones(1, dtype=torch.bool))
            res, _ = backend.prefill(seg, (), cache=cache, logits_to_keep=1, want_query_tokens=True)
            summaries.append(res.query_summary)
            queries.append(res.query_tokens)
            next_id = int(torch.argmax(res.logits[-1]).item())
            pos += 1
    finally:
        cache.rewind(mark)
    if not ids:
        return None
    text = backend.tokenizer.decode(ids, skip_special_tokens=True).strip()
    summary = torch.stack(summaries).mean(dim=0)
    return Expansion(text, _ExpansionProbe(summary, torch.cat(queries, dim=1)), len(ids))


def retrieve(backend, bank, probe, k: int, *, candidates: int, rerank: bool, dtype=None, heads=None) -> list:
    """Top ``k`` chunks for the question ``probe`` (a :class:`PrefillResult` with query tokens), in
    time order, by the in-model path alone (summaries, then the late-interaction rerank).

    Returns :class:`memory.Retrieved` items (``.chunk``, ``.score``); with ``rerank`` the score is
    the late-interaction score, else the summary inner product. A candidate whose file is corrupt
    (or that retention deleted meanwhile) is skipped and the next best takes its place.
    """
    if k <= 0 or len(bank) == 0:
        return []
    tokens = probe.query_tokens
    if not rerank or tokens is None or tokens.shape[1] == 0 or len(bank) <= k:
        return bank.retrieve(probe.query_summary, k, dtype=dtype)
    ranked = kv_ranking(backend, bank, probe, max(k, candidates), rerank=True, dtype=dtype, heads=heads)
    return fetch(bank, ranked, k, dtype=dtype)


def _has_text(meta) -> bool:
    """A hit whose neighbours may come along: one with text (a note, speech). Such chunks are a few
    tokens, so the moments around them are cheap context; a frame hit's neighbours would double the
    visual tokens of every question (a frame still comes along as a text hit's neighbour)."""
    return bool((meta.text or "").strip()) and meta.kind != "frame"


def fetch(bank, ranked: Sequence[tuple[int, float]], k: int, *, dtype=None) -> list:
    """The first ``k`` readable chunks of ``ranked`` (``[(chunk_id, score)]``), dequantized, in time order."""
    from memory import ChunkCorrupt, ChunkNotFound, Retrieved

    kept = []
    for cid, score in ranked:
        if len(kept) == k:
            break
        try:
            kept.append(Retrieved(chunk=bank.get(cid, dtype=dtype), score=float(score)))
        except (ChunkCorrupt, ChunkNotFound) as exc:
            logger.debug("retrieval skips chunk %d: %s", cid, exc)
    return sorted(kept, key=lambda r: (r.chunk.meta.t_start, r.chunk.meta.chunk_id))


class Retriever:
    """What a session asks memory through: it hears of every chunk that enters the bank
    (:meth:`added`) and answers a question's retrieval (:meth:`retrieve`).

    The one place retrieval strategies live, so the session stays the same when they change:

    * **in-model path** (every chunk): summaries, then the late-interaction rerank (:func:`kv_ranking`);
    * **text path** (chunks with text: notes, speech, captions; ``config.text_retrieval``): the
      question's sentence embedding against each chunk text's in a faiss index
      (:class:`memory.text_index.TextIndex`, embedder ``config.embedder``); its hits are reranked
      by the in-model path too, and the two rankings are fused (:func:`fuse`), so a question in
      other words finds its note while frames keep their in-model ranking;
    * **calibrated heads** (``config.retrieval_heads``): the rerank scores with the (layer, KV head)
      pairs a calibration chose for the model (:mod:`app.engine.retrieval_heads`), else every head of
      the upper half of the layers;
    * **second probe** (``config.retrieval_probe_tokens`` > 0): the model's own first answer tokens
      (:func:`expansion_probe`, over sink + window + dialog) rank the chunks again, in-model and, with
      the question before them, on the text path; both rankings join the fusion at :data:`PROBE_WEIGHT`;
    * **selection** (:func:`select`): the top ``k`` fused hits (fewer when ``config.retrieval_score_gap``
      cuts the hits whose fused score falls below ``1 - gap`` of the best's), then the chunks just before
      and after the best hits that carry text (``config.retrieval_neighbours``; :data:`NEIGHBOUR_HITS` of
      them), within ``config.retrieval_budget_tokens``.

    Args:
        config: the session's :class:`~app.engine.config.SessionConfig`, or a zero-argument callable
            returning the current one (so live changes of the session's settings apply per question).

    Texts are embedded on the caller's thread (the session's model worker), in batches: a chunk's
    text waits in a queue until :data:`EMBED_BATCH` are pending or a question comes. When the
    embedder cannot be loaded the text path is switched off with one warning and the in-model path
    answers alone.
    """

    #: Pending texts embedded together.
    EMBED_BATCH = 16
    #: Question embeddings kept (the oldest is dropped first).
    QUESTION_CACHE = 64

    def __init__(self, backend, bank, config) -> None:
        self.backend = backend
        self.bank = bank
        self._config = config
        self._index = None
        self._embedder = None
        self._pending: list[tuple[int, str]] = []
        self._text_failed: str | None = None
        self._heads_failed: str | None = None
        self._questions: dict[str, object] = {}  # question text -> its embedding (repeated and rephrased asks)
        self.stats = {"text_indexed": 0, "text_hits": 0, "questions": 0}
        for meta in bank.metas():  # a reopened memory: its texts are indexed again
            self._queue(meta)

    @property
    def config(self):
        """The settings in force now."""
        return self._config() if callable(self._config) else self._config

    def _text_on(self) -> bool:
        return bool(getattr(self.config, "text_retrieval", False)) and self._text_failed is None

    def _queue(self, meta) -> None:
        # queued even while the text path is off, so switching it on later finds every chunk's text
        text = (meta.text or "").strip()
        if text and self._text_failed is None:
            self._pending.append((meta.chunk_id, text))

    def added(self, chunk) -> None:
        """A chunk (:class:`memory.KVChunk`) just entered the bank."""
        self._queue(chunk.meta)
        if len(self._pending) >= self.EMBED_BATCH and self._text_on():
            self._embed_pending()

    def _load_embedder(self):
        from app.engine.text_embed import EmbedderError, load_embedder

        if self._embedder is not None and self._embedder.name != self.config.embedder:
            # another embedder was chosen: every text is embedded again by it
            self._embedder, self._index, self._questions = None, None, {}
            self._pending = [(m.chunk_id, m.text.strip()) for m in self.bank.metas() if (m.text or "").strip()]
        if self._embedder is None:
            try:
                self._embedder = load_embedder(self.config.embedder)
                dim = self._embedder.dim
            except EmbedderError as exc:
                self._text_failed = str(exc)
                self._embedder = None
                self._pending.clear()
                logger.warning("text retrieval is off: %s", exc)
                return None
            from memory.text_index import TextIndex

            self._index = TextIndex(dim)
        return self._embedder

    def _embed_pending(self) -> None:
        if not self._pending or self._load_embedder() is None:
            return
        pending, self._pending = self._pending, []
        live = [(cid, text) for cid, text in pending if cid in self.bank]
        if live:
            self._index.add([cid for cid, _ in live], self._embedder.embed([text for _, text in live]))
            self.stats["text_indexed"] += len(live)

    def text_ranking(self, question: str, n: int) -> list[tuple[int, float]]:
        """The text path: ``[(chunk_id, cosine)]`` best first, top ``n`` of the live chunks with text."""
        if not self._text_on() or n <= 0 or not question.strip():
            return []
        self._embed_pending()
        if self._index is None or len(self._index) == 0:
            return []
        question = question.strip()
        query = self._questions.get(question)
        if query is None:
            query = self._embedder.embed([question])[0]
            if len(self._questions) >= self.QUESTION_CACHE:
                self._questions.pop(next(iter(self._questions)))
            self._questions[question] = query
        return self._index.search(query, n, live=lambda cid: cid in self.bank)

    def heads(self):
        """The (layer, KV head) pairs the rerank uses now (``config.retrieval_heads``;
        :func:`app.engine.retrieval_heads.heads_for`).

        Raises:
            RetrievalHeadsError: the setting names a file that cannot be used (the shipped file of
                ``"auto"`` that cannot be used is logged once and the upper half used instead).
        """
        from app.engine.retrieval_heads import RetrievalHeadsError, heads_for, upper_half

        setting = getattr(self.config, "retrieval_heads", "upper")
        try:
            return heads_for(self.backend.spec, setting)
        except RetrievalHeadsError as exc:
            if setting != "auto":
                raise
            if self._heads_failed != str(exc):
                self._heads_failed = str(exc)
                logger.warning("calibrated retrieval heads not used: %s", exc)
            return upper_half(self.backend.spec.num_layers, self.backend.spec.num_kv_heads)

    def retrieve(self, question: str, probe, k: int, *, expand: Callable[[int], Expansion | None] | None = None) -> list:
        """The chunks a question attends to, in time order (:class:`memory.Retrieved` items).

        Args:
            question: the question's text (the text path embeds it).
            probe: the question's probe prefill (:class:`PrefillResult`: summary and query tokens).
            k: the number of hits at most (neighbours come on top, within the token budget).
            expand: ``n -> Expansion``: the model's first ``n`` answer tokens as a second probe
                (:func:`expansion_probe` over the session's cache); used when
                ``config.retrieval_probe_tokens`` > 0.
        """
        cfg = self.config
        dtype = self.backend.dtype
        if k <= 0 or len(self.bank) == 0:
            return []
        self.stats["questions"] += 1
        heads = self.heads()
        text = self.text_ranking(question, cfg.text_candidates) if self._text_on() else []
        neighbours = int(getattr(cfg, "retrieval_neighbours", 0))
        budget = getattr(cfg, "retrieval_budget_tokens", None)
        gap = getattr(cfg, "retrieval_score_gap", None)
        n_probe = int(getattr(cfg, "retrieval_probe_tokens", 0))
        second = expand(n_probe) if expand is not None and n_probe > 0 and cfg.rerank else None
        if not text and neighbours == 0 and budget is None and gap is None and second is None:
            return retrieve(self.backend, self.bank, probe, k, candidates=cfg.rerank_candidates, rerank=cfg.rerank,
                            dtype=dtype, heads=heads)
        candidates = max(k, cfg.rerank_candidates)
        extra = [cid for cid, _ in text]
        kv = kv_ranking(self.backend, self.bank, probe, candidates, rerank=cfg.rerank, extra=extra, dtype=dtype,
                        heads=heads)
        rankings, weights = [[cid for cid, _ in kv]], [1.0]
        if text:
            rankings.append([cid for cid, _ in text])
            weights.append(TEXT_WEIGHT)
            self.stats["text_hits"] += 1
        if second is not None:
            self.stats["second_probes"] = self.stats.get("second_probes", 0) + 1
            kv2 = kv_ranking(self.backend, self.bank, second.probe, candidates, rerank=True, extra=extra,
                             dtype=dtype, heads=heads)
            rankings.append([cid for cid, _ in kv2])
            weights.append(PROBE_WEIGHT)
            if text and second.text:
                text2 = self.text_ranking(f"{question.strip()} {second.text}", cfg.text_candidates)
                rankings.append([cid for cid, _ in text2])
                weights.append(PROBE_WEIGHT)
        # one ranking alone keeps its own scores unless the gap needs positive, rank-fused ones
        fused = kv if len(rankings) == 1 and gap is None else fuse(rankings, weights)
        chosen = select([cid for cid, _ in fused], self.bank.metas(), k, neighbours=neighbours,
                        budget_tokens=budget, neighbour_hits=NEIGHBOUR_HITS, neighbours_of=_has_text,
                        scores=[sc for _, sc in fused], score_gap=gap)
        score = dict(fused)
        return fetch(self.bank, [(cid, score.get(cid, 0.0)) for cid in chosen], len(chosen), dtype=dtype)

    def close(self) -> None:
        """The session closed: free what the retriever holds."""
        self._pending.clear()
        self._index = None
