"""Resident keys: a rerank scores chunks on disk from RAM; only the final fetch reads files."""

from __future__ import annotations

import pytest
import torch

from compression.kvcodec import KVCodecConfig
from memory import MemoryBank
from tests.memory._factory import S, config, make_chunk

CODEC = KVCodecConfig(bits=2, value_mode="ternary", group_size=4)


def _chunk_bytes() -> int:
    probe = MemoryBank(config(codec=CODEC), S)
    try:
        probe.append(make_chunk(0))
        return probe.nbytes()["ram"]
    finally:
        probe.close()


def test_keys_of_chunks_on_disk_come_from_ram(tmp_path):
    per_chunk = _chunk_bytes()
    budget = 12 * per_chunk
    bank = MemoryBank(config(codec=CODEC, ram_budget_bytes=budget, disk_dir=str(tmp_path / "b")), S)
    try:
        for cid in range(30):
            bank.append(make_chunk(cid))
            assert bank.nbytes()["ram"] <= budget  # resident keys count under the RAM budget
        st = bank.stats()
        assert st.chunks_disk > 0 and st.chunks_resident_keys > 0 and st.bytes_resident_keys > 0
        assert st.bytes_ram == bank.nbytes()["ram"] <= budget
        resident = [m.chunk_id for m in bank.metas() if bank.tier(m.chunk_id) == "disk"][-st.chunks_resident_keys:]
        reads = st.disk_reads
        for cid in resident:
            ck = bank.keys(cid, [1])
            assert ck.keys.shape[0] == 1
        st2 = bank.stats()
        assert st2.disk_reads == reads and st2.key_reads_disk == 0  # no file touched
        for cid in resident:  # and they equal the keys a full read decodes
            assert torch.equal(bank.keys(cid, [1]).keys, bank.get(cid).keys[1:2])
            assert torch.equal(bank.keys(cid, [1]).positions, bank.get(cid).positions)
    finally:
        bank.close()


def test_resident_copies_give_way_to_the_budget_oldest_first(tmp_path):
    per_chunk = _chunk_bytes()
    bank = MemoryBank(config(codec=CODEC, ram_budget_bytes=2 * per_chunk, disk_dir=str(tmp_path / "b")), S)
    try:
        for cid in range(40):
            bank.append(make_chunk(cid))
            assert bank.nbytes()["ram"] <= 2 * per_chunk
        st = bank.stats()
        assert 0 < st.chunks_resident_keys < 40
        oldest = bank.metas()[0].chunk_id
        reads = bank.stats().key_reads_disk
        # an old chunk whose copy was dropped: only its keys section is read, then kept if it fits
        assert torch.equal(bank.keys(oldest, [1]).keys, bank.get(oldest).keys[1:2])
        assert bank.stats().key_reads_disk == reads + 1
        # lower layers are not resident: the whole file is read
        assert torch.equal(bank.keys(oldest, [0]).keys, bank.get(oldest).keys[0:1])
    finally:
        bank.close()


def test_reopened_bank_makes_keys_resident_on_first_read(tmp_path):
    bank = MemoryBank(config(codec=CODEC, disk_dir=str(tmp_path / "b"), persist=True), S)
    for cid in range(5):
        bank.append(make_chunk(cid))
    bank.close()
    again = MemoryBank.open(tmp_path / "b")
    try:
        first = again.keys(3, [1]).keys
        assert again.stats().key_reads_disk == 1
        assert torch.equal(again.keys(3, [1]).keys, first)
        st = again.stats()
        assert st.key_reads_disk == 1 and st.key_reads_ram == 1 and st.chunks_resident_keys == 1
    finally:
        again.close()


@pytest.mark.slow
@pytest.mark.real_weights
def test_resident_scoring_ranks_as_the_full_rerank_on_real_smollm2_kv(tmp_path):
    """Real SmolLM2 KV of a paragraph, cut into chunks: the top k by late interaction over the upper
    layers' keys is the same from resident keys (no disk) as from whole chunks read back."""
    from tests.real_weights import load_smollm2

    model, tokenizer = load_smollm2(torch.float32)
    text = (
        "The red bicycle leaned against the bakery wall while the baker counted loaves. "
        "A delivery van parked across the street and a man unloaded crates of apples. "
        "Two children chased a small brown dog past the fountain in the square. "
        "At noon the church bell rang twelve times and pigeons scattered over the roofs. "
        "A woman in a yellow raincoat bought a newspaper and walked toward the station."
    )
    ids = tokenizer(text, return_tensors="pt").input_ids
    with torch.no_grad():
        cache = model(ids, use_cache=True).past_key_values
    k = torch.stack([layer.keys[0] for layer in cache.layers])
    v = torch.stack([layer.values[0] for layer in cache.layers])
    n_layers, n_heads, n_tok, head_dim = k.shape
    size = 8
    codec = KVCodecConfig(bits=2, value_mode="ternary", group_size=64)
    from memory import ChunkMeta, KVChunk

    dim = n_layers * n_heads * head_dim
    n_chunks = n_tok // size
    chunks = []
    for c in range(n_chunks):
        sl = slice(c * size, (c + 1) * size)
        meta = ChunkMeta(chunk_id=c, t_start=float(c), t_end=c + 1.0, kind="text", n_tokens=size)
        chunks.append(KVChunk(meta=meta, keys=k[:, :, sl].clone(), values=v[:, :, sl].clone(),
                              positions=torch.arange(c * size, (c + 1) * size), summary=k[:, :, sl].mean(2).flatten()))
    full = MemoryBank(config(codec=codec), dim)
    for chunk in chunks:
        full.append(chunk)
    # room for every chunk's upper-layer keys (about a quarter of it) but not for one whole chunk more
    budget = int(0.4 * full.nbytes()["ram"])
    disk = MemoryBank(config(codec=codec, ram_budget_bytes=budget, disk_dir=str(tmp_path / "d")), dim)
    for chunk in chunks:
        disk.append(chunk)
    try:
        upper = list(range(n_layers // 2, n_layers))
        # whole chunks are on disk in one bank (their upper keys resident), in RAM in the other
        assert sum(disk.tier(c) == "disk" for c in range(n_chunks)) >= n_chunks - 2
        assert disk.stats().chunks_resident_keys >= n_chunks - 2
        reads = disk.stats().disk_reads
        q = k[upper][:, :, -6:]  # the last tokens' keys stand in for a question's queries

        def scores(bank, resident):
            out = []
            for c in range(n_chunks):
                keys = bank.keys(c, upper).keys if resident else bank.get(c).keys[upper]
                out.append(float(torch.einsum("lhqd,lhkd->lhqk", q, keys).amax(-1).mean()))
            return out

        from_disk = scores(disk, True)
        assert disk.stats().disk_reads == reads  # scored without reading a file
        reference = scores(full, False)
        top = sorted(range(n_chunks), key=lambda c: -reference[c])[:4]
        assert sorted(range(n_chunks), key=lambda c: -from_disk[c])[:4] == top
        assert from_disk == pytest.approx(reference, abs=0)
    finally:
        full.close()
        disk.close()
