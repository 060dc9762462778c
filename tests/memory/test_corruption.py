"""A corrupt or missing chunk file fails that chunk alone (invariant 6)."""

from __future__ import annotations

import logging

import pytest
import torch

from compression.kvcodec import KVCodecConfig
from memory import BankError, ChunkCorrupt, MemoryBank
from tests.memory._factory import S, config, make_chunk


@pytest.fixture
def spilled(tmp_path):
    """A bank of 12 chunks, all on disk, with a known query per chunk."""
    bank = MemoryBank(config(codec=KVCodecConfig(bits=8, group_size=4), ram_budget_bytes=0, disk_dir=str(tmp_path / "b")), S)
    chunks = {cid: make_chunk(cid) for cid in range(12)}
    for chunk in chunks.values():
        bank.append(chunk)
    yield bank, chunks
    bank.close()


def _path(bank, cid):
    return bank.directory / "chunks" / f"{cid:012d}.kvc"


def test_flipped_bytes_and_deleted_file(spilled, caplog):
    bank, chunks = spilled
    flipped, deleted = 4, 9
    data = bytearray(_path(bank, flipped).read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 8):
        data[i] ^= 0xFF
    _path(bank, flipped).write_bytes(bytes(data))
    _path(bank, deleted).unlink()

    with pytest.raises(ChunkCorrupt) as info:
        bank.get(flipped)
    assert info.value.chunk_id == flipped and info.value.path == _path(bank, flipped)
    assert str(flipped) in str(info.value) and str(_path(bank, flipped)) in str(info.value)
    assert "checksum" in str(info.value)
    assert isinstance(info.value, BankError)
    with pytest.raises(ChunkCorrupt, match="missing") as info:
        bank.get(deleted)
    assert info.value.chunk_id == deleted

    # retrieval skips both, logs a warning, and still returns every other chunk
    with caplog.at_level(logging.WARNING, logger="memory"):
        got = bank.retrieve(chunks[flipped].summary, 100)
    ids = [r.chunk.meta.chunk_id for r in got]
    assert ids == [c for c in range(12) if c not in (flipped, deleted)]
    assert bank.stats().corrupt_chunks == 2
    for r in got:
        assert torch.allclose(r.chunk.keys, chunks[r.chunk.meta.chunk_id].keys, atol=0.05)


def test_corrupt_top_hit_is_replaced_by_the_next_best(spilled, caplog):
    bank, chunks = spilled
    target = 6
    query = chunks[target].summary
    ranking = [m.chunk_id for m, _ in bank.search(query, 12)]
    assert ranking[0] == target
    data = bytearray(_path(bank, target).read_bytes())
    data[-1] ^= 0x01
    _path(bank, target).write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="memory"):
        got = bank.retrieve(query, 3)
    assert sorted(r.chunk.meta.chunk_id for r in got) == sorted(ranking[1:4])
    assert any(str(target) in rec.getMessage() for rec in caplog.records)
    assert bank.stats().corrupt_chunks == 1
    # a known-corrupt chunk is no longer offered, without re-reading it
    assert target not in [m.chunk_id for m, _ in bank.search(query, 12)]
    got_again = bank.retrieve(query, 3)
    assert [r.chunk.meta.chunk_id for r in got_again] == [r.chunk.meta.chunk_id for r in got]
    assert bank.stats().corrupt_chunks == 1


@pytest.mark.parametrize("damage", ["truncate", "empty", "garbage_header", "swap"])
def test_other_damage_is_detected(spilled, damage):
    bank, _ = spilled
    p = _path(bank, 2)
    if damage == "truncate":
        p.write_bytes(p.read_bytes()[:100])
    elif damage == "empty":
        p.write_bytes(b"")
    elif damage == "garbage_header":
        p.write_bytes(b"NOTACHNK" + p.read_bytes()[8:])
    else:  # a valid file of another chunk put in its place
        p.write_bytes(_path(bank, 3).read_bytes())
    with pytest.raises(ChunkCorrupt) as info:
        bank.packed(2)
    assert info.value.chunk_id == 2
    assert bank.get(1).meta.chunk_id == 1 and bank.get(3).meta.chunk_id == 3
