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

from memory.chunk import content_mask

__all__ = ["Retriever", "content_mask", "fetch", "fuse", "kv_ranking", "late_interaction_scores", "rerank_layers", "retrieve",
           "select"]

logger = logging.getLogger(__name__)

#: Weight of the text path's ranking in the fusion (the in-model path's is 1).
TEXT_WEIGHT = 1.0
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


def kv_ranking(backend, bank, probe, candidates: int, *, rerank: bool, extra: Sequence[int] = (),
               dtype=None) -> list[tuple[int, float]]:
    """The in-model ranking: ``[(chunk_id, score)]`` best first over the summary stage's top
    ``candidates`` plus the chunks ``extra`` (e.g. the text path's hits), which the rerank scores too.

    With ``rerank`` (and the probe's query tokens) the score is the late-interaction score, else the
    summary inner product (``extra`` chunks the summary stage did not find are then left out).
    A chunk that is corrupt or that retention deleted meanwhile is skipped.
    """
    from memory import ChunkCorrupt, ChunkNotFound

    hits = bank.search(probe.query_summary, candidates)
    tokens = probe.query_tokens
    if not rerank or tokens is None or tokens.shape[1] == 0:
        return [(meta.chunk_id, float(score)) for meta, score in hits]
    ids = [meta.chunk_id for meta, _ in hits]
    for cid in extra:
        if cid not in ids and cid in bank:
            ids.append(cid)
    layers = rerank_layers(backend.spec.num_layers)
    keysets = []
    for cid in ids:
        try:
            keysets.append(bank.keys(cid, layers, dtype=dtype))
        except (ChunkCorrupt, ChunkNotFound) as exc:  # the bank logged and marked a corrupt one
            logger.debug("rerank skips chunk %d: %s", cid, exc)
    scores = late_interaction_scores(backend, tokens, keysets)
    order = sorted(range(len(keysets)), key=lambda j: scores[j], reverse=True)
    return [(keysets[j].chunk_id, float(scores[j])) for j in order]


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
           neighbour_hits: int | None = None, neighbours_of=None) -> list[int]:
    """Which chunks a question gets: the top ``k`` of ``ranked`` (chunk ids, best first), then the
    ``neighbours`` chunks just before and after each of the first ``neighbour_hits`` hits (all hits
    when ``None``) in time, the best hits' neighbours first, all within ``budget_tokens``.

    Args:
        metas: the bank's metas in time order (:meth:`memory.MemoryBank.metas`).
        budget_tokens: the most memory tokens the question may attend to (``None`` = no limit); a hit
            that does not fit is passed over for a smaller one after it; the first hit always comes.
        neighbours_of: ``meta -> bool``: the hits whose neighbours may come (``None`` = every hit).

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

    for cid in ranked:
        if len(chosen) >= k:
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


def retrieve(backend, bank, probe, k: int, *, candidates: int, rerank: bool, dtype=None) -> list:
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
    ranked = kv_ranking(backend, bank, probe, max(k, candidates), rerank=True, dtype=dtype)
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
    * **selection** (:func:`select`): the top ``k`` fused hits, then the chunks just before and after
      the best hits that carry text (``config.retrieval_neighbours``; :data:`NEIGHBOUR_HITS` of them),
      within ``config.retrieval_budget_tokens``.

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

    def retrieve(self, question: str, probe, k: int) -> list:
        """The chunks a question attends to, in time order (:class:`memory.Retrieved` items).

        Args:
            question: the question's text (the text path embeds it).
            probe: the question's probe prefill (:class:`PrefillResult`: summary and query tokens).
            k: the number of hits (neighbours come on top, within the token budget).
        """
        cfg = self.config
        dtype = self.backend.dtype
        if k <= 0 or len(self.bank) == 0:
            return []
        self.stats["questions"] += 1
        text = self.text_ranking(question, cfg.text_candidates) if self._text_on() else []
        neighbours = int(getattr(cfg, "retrieval_neighbours", 0))
        budget = getattr(cfg, "retrieval_budget_tokens", None)
        if not text and neighbours == 0 and budget is None:
            return retrieve(self.backend, self.bank, probe, k, candidates=cfg.rerank_candidates, rerank=cfg.rerank,
                            dtype=dtype)
        kv = kv_ranking(self.backend, self.bank, probe, max(k, cfg.rerank_candidates), rerank=cfg.rerank,
                        extra=[cid for cid, _ in text], dtype=dtype)
        if text:
            fused = fuse([[cid for cid, _ in kv], [cid for cid, _ in text]], [1.0, TEXT_WEIGHT])
            self.stats["text_hits"] += 1
        else:
            fused = kv
        chosen = select([cid for cid, _ in fused], self.bank.metas(), k, neighbours=neighbours,
                        budget_tokens=budget, neighbour_hits=NEIGHBOUR_HITS, neighbours_of=_has_text)
        score = dict(fused)
        return fetch(self.bank, [(cid, score.get(cid, 0.0)) for cid in chosen], len(chosen), dtype=dtype)

    def close(self) -> None:
        """The session closed: free what the retriever holds."""
        self._pending.clear()
        self._index = None
