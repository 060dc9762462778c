"""MemoryBank.keys: some layers' keys of one chunk, from either tier, without decoding the rest."""

from __future__ import annotations

import threading

import pytest
import torch

from compression.kvcodec import KVCodecConfig
from memory import ChunkCorrupt, ChunkNotFound, InvalidQuery, MemoryBank
from tests.memory._factory import S, config, flip_byte, make_chunk, section_span

L3 = (3, 2, 16)  # three layers, so "upper layers" is a proper subset
S3 = 3 * 2 * 16


@pytest.mark.parametrize("bits", [32, 4])
def test_keys_equal_the_full_chunk_keys_in_ram_and_on_disk(tmp_path, bits):
    bank = MemoryBank(config(codec=KVCodecConfig(bits=bits, group_size=4), ram_budget_bytes=0 if bits == 4 else None,
                             disk_dir=str(tmp_path / "b")), S3)
    try:
        for cid in range(6):
            bank.append(make_chunk(cid, n_tokens=5, shape=L3, mrope=cid % 2 == 1))
        for cid in range(6):
            full = bank.get(cid)
            got = bank.keys(cid, range(1, 3))
            assert got.chunk_id == cid and got.meta == full.meta and got.layers == (1, 2)
            assert torch.equal(got.keys, full.keys[1:3])
            assert torch.equal(got.positions, full.positions)
            assert bank.keys(cid, [2], dtype=torch.float16).keys.dtype == torch.float16
        assert {bank.tier(c) for c in range(6)} == ({"disk"} if bits == 4 else {"ram"})
    finally:
        bank.close()


def test_keys_do_not_alias_the_stored_chunk():
    bank = MemoryBank(config(), S)
    bank.append(make_chunk(0))
    got = bank.keys(0, [0])
    got.keys.zero_()
    got.positions.zero_()
    assert torch.equal(bank.get(0).keys, make_chunk(0).keys)
    assert torch.equal(bank.get(0).positions, make_chunk(0).positions)
    bank.close()


def test_corrupt_file_fails_that_chunk_alone(tmp_path):
    bank = MemoryBank(config(codec=KVCodecConfig(bits=8, group_size=4), ram_budget_bytes=0, disk_dir=str(tmp_path / "b")), S)
    for cid in range(5):
        bank.append(make_chunk(cid))
    path = bank.directory / "chunks" / f"{2:012d}.kvc"
    # the keys section carries its own checksum: a rerank read of it notices the damage
    start, stop = section_span(path, "keys")
    flip_byte(path, (start + stop) // 2)
    with pytest.raises(ChunkCorrupt, match="section 'keys'") as info:
        bank.keys(2, [1])
    assert info.value.chunk_id == 2
    assert bank.stats().corrupt_chunks == 1
    assert 2 not in [m.chunk_id for m, _ in bank.search(make_chunk(2).summary, 10)]  # later searches skip it
    for cid in (0, 1, 3, 4):
        assert torch.equal(bank.keys(cid, [1]).keys, bank.get(cid).keys[1:2])
    with pytest.raises(ChunkNotFound):
        bank.keys(99, [0])
    with pytest.raises(InvalidQuery):
        bank.keys(0, [5])
    bank.close()


def test_keys_while_appending_and_spilling(tmp_path):
    bank = MemoryBank(config(codec=KVCodecConfig(bits=4, group_size=4), ram_budget_bytes=4000, disk_dir=str(tmp_path / "b")), S)
    for cid in range(20):
        bank.append(make_chunk(cid))
    errors: list[BaseException] = []

    def reader():
        try:
            for _ in range(5):
                for cid in range(20):
                    assert torch.equal(bank.keys(cid, [1]).keys, bank.get(cid).keys[1:2])
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    for cid in range(20, 80):  # spills older chunks to disk while the readers run
        bank.append(make_chunk(cid))
    for t in threads:
        t.join()
    assert not errors
    assert bank.stats().spills > 0
    bank.close()


def test_damage_outside_the_keys_section_fails_the_fetch_not_the_rerank(tmp_path):
    bank = MemoryBank(config(codec=KVCodecConfig(bits=8, group_size=4), ram_budget_bytes=0, disk_dir=str(tmp_path / "b")), S)
    for cid in range(3):
        bank.append(make_chunk(cid))
    path = bank.directory / "chunks" / f"{1:012d}.kvc"
    start, stop = section_span(path, "rest")
    flip_byte(path, (start + stop) // 2)
    assert bank.keys(1, [1]).keys.shape[0] == 1  # the keys section alone is read and is intact
    with pytest.raises(ChunkCorrupt, match="section 'rest'"):
        bank.get(1)
    assert bank.stats().corrupt_chunks == 1
    assert [r.chunk.meta.chunk_id for r in bank.retrieve(make_chunk(1).summary, 3)] == [0, 2]
    bank.close()
