"""Compact rerank keys in the bank: built on append and on first use, scored like the full rerank,
counted under the RAM budget, saved and restored, and the corrupt-file rules unchanged."""

from __future__ import annotations

import logging

import pytest
import torch

from compression.compact_keys import compact_scores
from compression.kvcodec import KVCodecConfig
from memory import ChunkCorrupt, ChunkMeta, KVChunk, MemoryBank
from memory.bank import COMPACT_DIR
from tests.memory._factory import config

L, H, D = 4, 2, 16
S = L * H * D
PAIRS = [(layer, h) for layer in range(L // 2, L) for h in range(H)]
UPPER = list(range(L // 2, L))
TQ = 6


def _cos_sin(positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    inv = 1.0 / (10000 ** (torch.arange(0, D, 2, dtype=torch.float32) / D))
    ang = positions.float()[:, None] * inv[None, :]
    emb = torch.cat([ang, ang], dim=-1)
    return emb.cos(), emb.sin()


def rotate(pre: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    cos, sin = _cos_sin(positions)
    return pre * cos + torch.cat([-pre[..., D // 2:], pre[..., : D // 2]], dim=-1) * sin


def unrotate(keys: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """The model-side inverse of :func:`rotate` a bank is handed (what ``VideoLLM.unrotate_keys`` does)."""
    cos, sin = _cos_sin(positions)
    k = keys.float()
    return k * cos - torch.cat([-k[..., D // 2:], k[..., : D // 2]], dim=-1) * sin


def _query(seed: int = 0) -> torch.Tensor:
    """``(L, Tq, H * D)`` pre-RoPE query tokens, channel magnitudes spread like real keys'."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(L, TQ, H, D, generator=g).mul(torch.logspace(-0.5, 0.5, D)).view(L, TQ, H * D)


def _chunks(n: int, query: torch.Tensor, seed: int = 1, n_tokens: int = 12) -> list[KVChunk]:
    """Chunk ``c`` holds, among noise tokens, the question's tokens scaled by a relevance of its own
    (distinct per chunk), so the full rerank has one clear order; prompt tokens frame the content."""
    g = torch.Generator().manual_seed(seed)
    relevance = torch.randperm(n, generator=g).float() * 0.15 + 0.4
    q = query.view(L, TQ, H, D).permute(0, 2, 1, 3)  # (L, H, Tq, D)
    out = []
    for c in range(n):
        pre = torch.randn(L, H, n_tokens, D, generator=g) * 0.6
        pre[:, :, 3 : 3 + TQ] = relevance[c] * q
        positions = torch.arange(n_tokens) + 40 * c
        meta = ChunkMeta(chunk_id=c, t_start=float(c), t_end=c + 1.0, kind="frame", n_tokens=n_tokens,
                         frame_indices=(c,), extra={"content": [[1, n_tokens - 1]]})
        out.append(KVChunk(meta, rotate(pre, positions), torch.randn(pre.shape, generator=g), positions,
                           pre.mean(2).flatten()))
    return out


def _full_scores(bank: MemoryBank, ids, query) -> list[float]:
    """The full rerank's score: stored keys, un-rotated, content tokens, mean of best matches."""
    from memory.chunk import content_mask

    q = query[UPPER].view(len(UPPER), TQ, H, D)
    out = []
    for cid in ids:
        ks = bank.keys(cid, UPPER)
        mask = content_mask(ks.meta, ks.keys.shape[2])
        k = unrotate(ks.keys[:, :, mask], ks.positions[mask])
        out.append(float((torch.einsum("lqhd,lhkd->lhqk", q, k).amax(-1) * D ** -0.5).mean()))
    return out


def _compact_query(query: torch.Tensor) -> torch.Tensor:
    q = query.view(L, TQ, H, D)
    return q[torch.tensor([p[0] for p in PAIRS]), :, torch.tensor([p[1] for p in PAIRS])]


def _chunk_bytes(bits: int | None = None, **kwargs) -> int:
    """RAM of one chunk (with its compact form of ``bits``) in a bank of ``config(**kwargs)``."""
    with MemoryBank(config(compact_keys_bits=bits, **kwargs), S) as probe:
        if bits is not None:
            probe.set_rerank_form(unrotate, PAIRS)
        probe.append(_chunks(1, _query())[0])
        return probe.nbytes()["ram"]


@pytest.mark.parametrize("bits", [8, 4])
def test_compact_top_k_is_the_full_reranks_and_reads_no_disk(tmp_path, bits):
    query = _query()
    chunks = _chunks(40, query)
    budget = 6 * _chunk_bytes()
    bank = MemoryBank(config(ram_budget_bytes=budget, disk_dir=str(tmp_path / "b"), compact_keys_bits=bits), S)
    bank.set_rerank_form(unrotate, PAIRS)
    try:
        for c in chunks:
            bank.append(c)
            assert bank.nbytes()["ram"] <= budget
        st = bank.stats()
        assert st.chunks_disk >= 30 and st.chunks_compact == 40 and st.chunks_resident_keys == 0
        ids = [m.chunk_id for m in bank.metas()]
        reads = bank.stats().disk_reads
        items = [bank.compact(cid) for cid in ids]
        assert bank.stats().disk_reads == reads and bank.stats().key_reads_compact == 40  # RAM only
        compact = compact_scores(_compact_query(query), items)
        full = _full_scores(bank, ids, query)
        top = lambda scores: sorted(ids, key=lambda c: -scores[ids.index(c)])[:8]  # noqa: E731
        assert top(compact) == top(full)
        assert compact == pytest.approx(full, rel=0.05 if bits == 4 else 0.01)
    finally:
        bank.close()


def test_compact_bytes_count_under_the_budget_and_go_last(tmp_path):
    query = _query()
    chunk = _chunk_bytes()
    with_compact = _chunk_bytes(4)
    per_compact = with_compact - chunk
    assert 0 < per_compact < chunk / 4
    budget = 2 * chunk + 40 * per_compact
    bank = MemoryBank(config(ram_budget_bytes=budget, disk_dir=str(tmp_path / "b"), compact_keys_bits=4), S)
    bank.set_rerank_form(unrotate, PAIRS)
    try:
        ram_chunks = []
        for c in _chunks(100, query):
            bank.append(c)
            st = bank.stats()
            assert st.bytes_ram == bank.nbytes()["ram"] <= budget
            assert st.bytes_compact == st.chunks_compact * per_compact
            ram_chunks.append(st.chunks_ram)
            if st.compact_dropped:  # compact forms go only once no whole chunk is left in RAM
                assert st.chunks_ram == 0
        assert ram_chunks[:2] == [1, 2] and ram_chunks[-1] == 0
        st = bank.stats()
        # whole chunks spilled first; compact forms were dropped only for the oldest chunks
        assert st.chunks_ram == 0 and st.compact_dropped > 0 and st.chunks_compact > 0
        kept = [m.chunk_id for m in bank.metas() if bank.compact(m.chunk_id, build=False) is not None]
        assert kept == [m.chunk_id for m in bank.metas()][-len(kept):]
        # a dropped one is rebuilt on its rerank from the file's keys section alone
        oldest = bank.metas()[0].chunk_id
        reads = bank.stats().key_reads_disk
        assert bank.compact(oldest) is not None
        assert bank.stats().key_reads_disk == reads + 1 and bank.stats().compact_built == 1
        assert bank.nbytes()["ram"] <= budget
    finally:
        bank.close()


def test_chunks_from_before_the_form_get_theirs_on_first_use(tmp_path):
    query = _query()
    chunks = _chunks(10, query)
    budget = _chunk_bytes() - 1  # no whole chunk stays in RAM; compact forms fit
    bank = MemoryBank(config(ram_budget_bytes=budget, disk_dir=str(tmp_path / "b"), compact_keys_bits=8), S)
    try:
        for c in chunks[:6]:
            bank.append(c)  # no form yet: no compact form, the keys go to disk
        assert bank.stats().chunks_compact == 0 and bank.compact(0) is None
        bank.set_rerank_form(unrotate, PAIRS)
        for c in chunks[6:]:
            bank.append(c)
        assert bank.stats().chunks_compact == 4
        ids = list(range(10))
        items = [bank.compact(cid) for cid in ids]  # the first six are built from their keys sections
        st = bank.stats()
        assert st.compact_built == 6 and st.key_reads_disk == 6 and st.chunks_compact == 10
        full = _full_scores(bank, ids, query)
        assert compact_scores(_compact_query(query), items) == pytest.approx(full, rel=0.01)
        # other pairs: the forms of the old pairs are dropped, then rebuilt for the new ones on use
        bank.set_rerank_form(unrotate, PAIRS[:2])
        assert bank.stats().chunks_compact == 0
        assert bank.compact(3).pairs == tuple(PAIRS[:2])
    finally:
        bank.close()


def test_compact_off_keeps_the_stored_keys_path(tmp_path):
    bank = MemoryBank(config(ram_budget_bytes=_chunk_bytes() - 1, disk_dir=str(tmp_path / "b")), S)  # compact off
    try:
        bank.set_rerank_form(unrotate, PAIRS)
        for c in _chunks(3, _query()):
            bank.append(c)
        assert bank.compact(0) is None and bank.stats().chunks_compact == 0
        assert bank.stats().chunks_resident_keys == 3  # the packed upper keys serve the rerank instead
    finally:
        bank.close()


def test_save_and_reopen_restores_compact_forms(tmp_path):
    query = _query()
    root = tmp_path / "saved"
    bank = MemoryBank(config(disk_dir=str(root), persist=True, compact_keys_bits=4), S)
    bank.set_rerank_form(unrotate, PAIRS)
    for c in _chunks(12, query):
        bank.append(c)
    before = {cid: bank.compact(cid) for cid in range(12)}
    bank.close()
    assert any((root / COMPACT_DIR).iterdir())
    again = MemoryBank.open(root, ram_budget_bytes=None)
    try:
        st = again.stats()
        assert st.chunks_compact == 12 and st.bytes_compact == sum(ck.nbytes for ck in before.values())
        again.set_rerank_form(unrotate, PAIRS)
        reads = again.stats().disk_reads
        for cid, ck in before.items():
            got = again.compact(cid, build=False)
            assert torch.equal(got.codes, ck.codes) and torch.equal(got.scale, ck.scale) and got.pairs == ck.pairs
        assert again.stats().disk_reads == reads
        # a chunk appended after reopening gets its form and the next save writes only its segment
        again.append(_chunks(13, query)[12])
        assert again.compact(12, build=False) is not None
    finally:
        again.close()
    reopened = MemoryBank.open(root)
    try:
        assert reopened.stats().chunks_compact == 13
    finally:
        reopened.close()


def test_a_damaged_compact_file_loses_no_memory(tmp_path, caplog):
    query = _query()
    root = tmp_path / "saved"
    bank = MemoryBank(config(disk_dir=str(root), persist=True, compact_keys_bits=4), S)
    bank.set_rerank_form(unrotate, PAIRS)
    for c in _chunks(8, query):
        bank.append(c)
    bank.close()
    seg = next((root / COMPACT_DIR).iterdir())
    data = bytearray(seg.read_bytes())
    data[len(data) // 2] ^= 0xFF
    seg.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="memory.bank"):
        again = MemoryBank.open(root)
    try:
        assert "compact rerank keys" in caplog.text and str(seg) in caplog.text
        assert len(again) == 8 and again.stats().chunks_compact == 0
        again.set_rerank_form(unrotate, PAIRS)
        for cid in range(8):
            assert again.compact(cid) is not None  # rebuilt from each file's keys section
            assert torch.equal(again.get(cid).keys, again.get(cid).keys)
        assert again.stats().compact_built == 8
    finally:
        again.close()


def test_corrupt_chunk_files_follow_the_same_rules(tmp_path, caplog):
    query = _query()
    codec = KVCodecConfig(bits=4)
    bank = MemoryBank(config(ram_budget_bytes=_chunk_bytes(codec=codec) - 1, disk_dir=str(tmp_path / "b"),
                             compact_keys_bits=4, codec=codec, resident_keys=False), S)
    try:
        chunks = _chunks(6, query)
        for c in chunks[:3]:
            bank.append(c)  # no compact form (and no resident keys): a rerank must read their files
        bank.set_rerank_form(unrotate, PAIRS)
        for c in chunks[3:]:
            bank.append(c)
        for cid in (1, 4):  # truncated files
            path = bank.directory / "chunks" / f"{cid:012d}.kvc"
            path.write_bytes(path.read_bytes()[:-10])
        with caplog.at_level(logging.WARNING, logger="memory.bank"):
            with pytest.raises(ChunkCorrupt) as info:
                bank.compact(1)  # building needs the damaged file: the error names chunk and file
        assert info.value.chunk_id == 1 and "000000000001.kvc" in str(info.value)
        assert bank.compact(4) is not None  # its compact form is in RAM: the rerank still scores it
        with pytest.raises(ChunkCorrupt):
            bank.get(4)  # ...but its KV is not handed out
        got = bank.retrieve(chunks[4].summary, 6)
        assert sorted(r.chunk.meta.chunk_id for r in got) == [0, 2, 3, 5]  # the corrupt ones are skipped
    finally:
        bank.close()


def test_consolidated_chunks_keep_a_compact_form(tmp_path):
    from tests.memory import _factory
    from tests.memory.test_disk_budget import CODEC, _chunk_file_bytes, scene_chunk

    pairs = [(_factory.L - 1, h) for h in range(_factory.H)]
    budget = 40 * _chunk_file_bytes(tmp_path)
    bank = MemoryBank(config(codec=CODEC, ram_budget_bytes=60_000, disk_budget_bytes=budget,
                             disk_dir=str(tmp_path / "b"), compact_keys_bits=4), _factory.S)
    bank.set_rerank_form(unrotate, pairs)
    try:
        for cid in range(200):  # scenes of 12 frames, then a cut
            bank.append(scene_chunk(cid, cid // 12))
            assert bank.nbytes()["ram"] <= 60_000
        st = bank.stats()
        assert st.consolidated > 0 and st.merged > 0
        merged = [m for m in bank.metas() if len(m.extra.get("merged_from", ())) > 1]
        assert merged
        for m in merged:  # a merged chunk's compact form is its own (its tokens), not its first source's
            ck = bank.compact(m.chunk_id, build=False)
            assert ck is not None and ck.n_tokens == m.n_tokens and ck.pairs == tuple(pairs)
        assert st.chunks_compact == len(bank)
    finally:
        bank.close()
