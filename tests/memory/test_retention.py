"""Retention by stream age drops chunks from every tier."""

from __future__ import annotations

import pytest
import torch

from memory import ChunkNotFound, MemoryBank
from tests.memory._factory import S, config, make_chunk


@pytest.mark.parametrize("index", ["flat", "hnsw", "ivf"])
def test_old_chunks_are_dropped_everywhere(tmp_path, index):
    bank = MemoryBank(
        config(retention_s=10.0, ram_budget_bytes=3000, disk_dir=str(tmp_path / "b"), index=index, ivf_nlist=2, ivf_train_min=8),
        S,
    )
    try:
        chunks = {}
        for cid in range(30):  # chunk cid covers [cid, cid + 0.5] seconds
            chunks[cid] = make_chunk(cid)
            bank.append(chunks[cid])
        # newest t_end = 29.5 -> keep t_end >= 19.5, i.e. chunks 19..29
        live = list(range(19, 30))
        assert [m.chunk_id for m in bank.metas()] == live
        st = bank.stats()
        assert st.evicted_retention == 19 and st.chunks == len(bank) == 11
        files = sorted(p.name for p in (tmp_path / "b" / "chunks").glob("*.kvc"))
        assert files == [f"{cid:012d}.kvc" for cid in live if bank.tier(cid) != "ram"]
        assert st.bytes_disk == sum(p.stat().st_size for p in (tmp_path / "b" / "chunks").glob("*.kvc"))
        with pytest.raises(ChunkNotFound):
            bank.get(5)
        # an evicted chunk is never retrieved, even when the query matches it exactly
        got = bank.retrieve(chunks[5].summary, 100)
        assert [r.chunk.meta.chunk_id for r in got] == live
        assert bank.search(chunks[5].summary, 1)[0][0].chunk_id in live
        # exact match for a live chunk still ranks first
        assert bank.search(chunks[25].summary, 1)[0][0].chunk_id == 25
    finally:
        bank.close()


def test_late_old_chunk_is_dropped_on_arrival_and_long_chunks_kept():
    bank = MemoryBank(config(retention_s=5.0), S)
    try:
        bank.append(make_chunk(1, t_start=0.0, duration=100.0))  # long chunk: t_end 100
        bank.append(make_chunk(2, t_start=99.0))
        bank.append(make_chunk(3, t_start=10.0))  # t_end 10.5 < 99.5 - 5: too old already
        assert [m.chunk_id for m in bank.metas()] == [1, 2]
        assert bank.stats().evicted_retention == 1
        assert len(bank.retrieve(torch.randn(S), 10)) == 2
    finally:
        bank.close()
