"""The batched rerank (app.engine.retrieval) equals a straightforward per-chunk reference, 1D RoPE and M-RoPE.

The reference is the scoring as first written: every candidate fetched whole from the bank,
its upper-layer keys un-rotated one chunk at a time, masked to content tokens, scored.
"""

from __future__ import annotations

import pytest
import torch

from app.engine.backends.types import KVSegment, PrefillResult
from app.engine.retrieval import late_interaction_scores, rerank_layers, retrieve
from compression.kvcodec import KVCodecConfig
from memory import BankConfig, ChunkMeta, KVChunk, MemoryBank


@pytest.fixture(scope="module", params=["tiny-smolvlm", "tiny-qwen2_5_vl"])
def backend(request):
    from app.engine.backends.registry import load_backend

    b = load_backend(request.param, dtype="float32")
    yield b
    b.close()


def _positions(backend, start: int, n: int) -> torch.Tensor:
    """``(n,)`` for 1D RoPE; ``(3, n)`` M-RoPE positions with distinct t/h/w for Qwen2.5-VL (a frame-like grid)."""
    if backend.text_positions(0, 1).ndim == 1:
        return torch.arange(start, start + n)
    i = torch.arange(n)
    return torch.stack([torch.full((n,), start), start + i // 4, start + i % 4]).long()


def _rotate(backend, pre: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Apply RoPE to pre-RoPE keys ``(..., T, D)`` (the inverse of ``backend.unrotate_keys``)."""
    cos, sin = backend.rotary_cos_sin(positions)
    half = pre.shape[-1] // 2
    return pre * cos + torch.cat((-pre[..., half:], pre[..., :half]), dim=-1) * sin


def _chunk(backend, cid: int, n_tokens: int, content, g, keys_pre=None) -> KVChunk:
    s = backend.spec
    positions = _positions(backend, 1000 + 50 * cid, n_tokens)
    pre = torch.randn(s.num_layers, s.num_kv_heads, n_tokens, s.head_dim, generator=g) if keys_pre is None else keys_pre
    meta = ChunkMeta(chunk_id=cid, t_start=float(cid), t_end=float(cid) + 1, kind="frame", n_tokens=n_tokens,
                     extra={"content": content} if content else {})
    return KVChunk(meta, _rotate(backend, pre, positions), torch.randn(pre.shape, generator=g), positions,
                   torch.randn(s.summary_dim, generator=g))


def _reference_scores(backend, query_tokens, chunks, layers) -> list[float]:
    """One chunk at a time: un-rotate all its tokens, keep content tokens, best token per query token."""
    from app.engine.retrieval import content_mask

    s = backend.spec
    layers = list(layers)
    q = query_tokens[layers].float().view(len(layers), query_tokens.shape[1], s.num_kv_heads, s.head_dim)
    out = []
    for chunk in chunks:
        keys = backend.unrotate_keys(chunk.keys[layers].float(), chunk.positions)
        keys = keys[:, :, content_mask(chunk.meta, keys.shape[2])]
        att = torch.einsum("lqhd,lhkd->lhqk", q, keys) * s.head_dim ** -0.5
        out.append(float(att.amax(dim=-1).mean()))
    return out


def _bank(backend, chunks, tmp_path, in_ram: int = 4):
    """A 4-bit bank whose RAM tier holds about ``in_ram`` chunks: the rest live on disk, as in a long stream."""
    codec = KVCodecConfig(bits=4)
    with MemoryBank(BankConfig(codec=codec), backend.spec.summary_dim) as probe:
        probe.append(chunks[0])
        per_chunk = probe.nbytes()["ram"]
    bank = MemoryBank(BankConfig(codec=codec, ram_budget_bytes=in_ram * per_chunk, disk_dir=str(tmp_path / "bank")),
                      backend.spec.summary_dim)
    for c in chunks:
        bank.append(c)
    return bank


def test_batched_scores_equal_per_chunk_reference(backend, tmp_path):
    s = backend.spec
    g = torch.Generator().manual_seed(1)
    shapes = [(9, None), (12, [[2, 10]]), (5, [[0, 1], [3, 5]]), (1, None), (16, [[4, 12]]), (7, [[6, 7]]), (11, [])]
    chunks = [_chunk(backend, cid, n, content, g) for cid, (n, content) in enumerate(shapes * 3)]
    bank = _bank(backend, chunks, tmp_path)
    try:
        layers = rerank_layers(s.num_layers)
        query = torch.randn(s.num_layers, 5, s.num_kv_heads * s.head_dim, generator=g)
        reference = _reference_scores(backend, query, [bank.get(c.meta.chunk_id) for c in chunks], layers)
        keysets = [bank.keys(c.meta.chunk_id, layers) for c in chunks]
        assert {bank.tier(c.meta.chunk_id) for c in chunks} >= {"disk"}
        for block_bytes in (-1, None, 1, 3000):  # default, all in one call, one chunk per call, a few per call
            got = late_interaction_scores(backend, query, keysets, block_bytes=block_bytes)
            assert got == pytest.approx(reference, rel=1e-5, abs=1e-5), block_bytes
        assert late_interaction_scores(backend, query, []) == []
    finally:
        bank.close()


def test_top_k_with_planted_needle_is_unchanged(backend, tmp_path):
    """New retrieve() picks the same top k as the old path (fetch 64 whole, per-chunk scores), needle included."""
    s = backend.spec
    g = torch.Generator().manual_seed(2)
    n_q = 4
    query = torch.randn(s.num_layers, n_q, s.num_kv_heads * s.head_dim, generator=g)
    chunks = []
    needle_id = 57
    for cid in range(120):
        pre = torch.randn(s.num_layers, s.num_kv_heads, 10, s.head_dim, generator=g)
        if cid == needle_id:  # one content token per query token that matches it strongly
            q = query.view(s.num_layers, n_q, s.num_kv_heads, s.head_dim).permute(0, 2, 1, 3)  # (L, H, Tq, D)
            pre[:, :, 3 : 3 + n_q] = 4 * q / q.norm(dim=-1, keepdim=True)
        chunks.append(_chunk(backend, cid, 10, [[1, 9]], g, keys_pre=pre))
    bank = _bank(backend, chunks, tmp_path)
    try:
        # the summary stage puts the needle among the 64 candidates, not first: the rerank must find it
        summary = 0.1 * chunks[needle_id].summary + torch.randn(s.summary_dim, generator=g)
        probe = PrefillResult(kv=KVSegment(torch.zeros(1, 1, 1, 1), torch.zeros(1, 1, 1, 1), torch.zeros(1, dtype=torch.long)),
                              key_summary=summary, query_summary=summary, logits=None, attention_length=0, query_tokens=query)
        hits = [m.chunk_id for m, _ in bank.search(summary, 64)]
        assert needle_id in hits and needle_id not in hits[:8]
        old = bank.retrieve(summary, 64)
        scores = _reference_scores(backend, query, [r.chunk for r in old], rerank_layers(s.num_layers))
        best = sorted(range(len(old)), key=lambda i: scores[i], reverse=True)[:8]
        old_ids = sorted(old[i].chunk.meta.chunk_id for i in best)
        new = retrieve(backend, bank, probe, 8, candidates=64, rerank=True)
        new_ids = [r.chunk.meta.chunk_id for r in new]
        assert new_ids == old_ids and needle_id in new_ids
        assert [r.chunk.meta.sort_key() for r in new] == sorted(r.chunk.meta.sort_key() for r in new)
        by_id = {old[i].chunk.meta.chunk_id: scores[i] for i in best}
        for r in new:  # whole chunks, as the old path returned them, with the rerank score
            assert torch.equal(r.chunk.keys, bank.get(r.chunk.meta.chunk_id).keys)
            assert r.score == pytest.approx(by_id[r.chunk.meta.chunk_id], rel=1e-5, abs=1e-5)
        # rerank off: the summary stage alone, k chunks
        plain = retrieve(backend, bank, probe, 8, candidates=64, rerank=False)
        assert sorted(r.chunk.meta.chunk_id for r in plain) == sorted(hits[:8])
    finally:
        bank.close()


def test_corrupt_candidate_is_skipped(backend, tmp_path):
    s = backend.spec
    g = torch.Generator().manual_seed(3)
    chunks = [_chunk(backend, cid, 6, None, g) for cid in range(30)]
    bank = _bank(backend, chunks, tmp_path)
    try:
        on_disk = [c.meta.chunk_id for c in chunks if bank.tier(c.meta.chunk_id) == "disk"]
        bad = on_disk[0]
        (bank.directory / "chunks" / f"{bad:012d}.kvc").write_bytes(b"garbage")
        query = torch.randn(s.num_layers, 3, s.num_kv_heads * s.head_dim, generator=g)
        summary = torch.randn(s.summary_dim, generator=g)
        probe = PrefillResult(kv=KVSegment(torch.zeros(1, 1, 1, 1), torch.zeros(1, 1, 1, 1), torch.zeros(1, dtype=torch.long)),
                              key_summary=summary, query_summary=summary, logits=None, attention_length=0, query_tokens=query)
        got = retrieve(backend, bank, probe, 8, candidates=64, rerank=True)
        assert len(got) == 8 and bad not in [r.chunk.meta.chunk_id for r in got]
        assert bank.stats().corrupt_chunks == 1
    finally:
        bank.close()
