"""RAM budget, spilling to disk, bit-identical round trips (invariant 6)."""

from __future__ import annotations

import os

import pytest
import torch

from compression.kvcodec import KVCodecConfig
from memory import MemoryBank
from memory.bank import CHUNK_DIR
from tests.memory._factory import S, assert_same_packed, config, make_chunk


def _chunk_bytes(codec: KVCodecConfig, **chunk_kwargs) -> int:
    probe = MemoryBank(config(codec=codec), S)
    try:
        probe.append(make_chunk(0, **chunk_kwargs))
        return probe.nbytes()["ram"]
    finally:
        probe.close()


def test_budget_holds_while_appending_200_chunks(tmp_path):
    codec = KVCodecConfig(bits=4, group_size=4)
    per_chunk = _chunk_bytes(codec)
    budget = 10 * per_chunk + per_chunk // 2
    # whole chunks only: resident keys (which take RAM from whole chunks) are tested in test_resident.py
    bank = MemoryBank(config(codec=codec, ram_budget_bytes=budget, disk_dir=str(tmp_path / "bank"), resident_keys=False), S)
    try:
        originals = {}
        for cid in range(200):
            chunk = make_chunk(cid)
            originals[cid] = chunk
            bank.append(chunk)
            assert bank.nbytes()["ram"] <= budget
        st = bank.stats()
        assert st.chunks == 200
        assert st.chunks_ram == 10 and st.chunks_disk == 190
        assert st.spills == 190
        assert st.bytes_ram == 10 * per_chunk
        files = sorted((tmp_path / "bank" / CHUNK_DIR).glob("*.kvc"))
        assert len(files) == 190
        assert st.bytes_disk == sum(f.stat().st_size for f in files) == bank.nbytes()["disk"]
        # the newest chunks stay in RAM, the oldest went to disk
        assert bank.tier(199) == "ram" and bank.tier(0) == "disk"

        # retrieval still finds the right chunks on both tiers, and disk reads are not cached in RAM
        for target in (3, 150, 195):
            got = bank.retrieve(originals[target].summary, 3)
            best = max(got, key=lambda r: r.score)
            assert best.chunk.meta.chunk_id == target
            k_err = (best.chunk.keys - originals[target].keys).abs().max()
            assert k_err < 0.5  # 4-bit, groups of 4 tokens of N(0,1) data
        ram_before = bank.nbytes()["ram"]
        reads_before = bank.stats().disk_reads
        bank.retrieve(originals[5].summary, 20)
        assert bank.nbytes()["ram"] == ram_before
        assert bank.stats().disk_reads > reads_before
        assert bank.tier(5) == "disk"
    finally:
        bank.close()


def test_spill_round_trip_is_bit_identical():
    codec = KVCodecConfig(bits=4, group_size=2, outlier_channels=2)
    per_chunk = _chunk_bytes(codec, mrope=True)
    bank = MemoryBank(config(codec=codec, ram_budget_bytes=per_chunk, resident_keys=False), S)
    try:
        first = make_chunk(0, mrope=True, text="caption", thumbnail=b"\xff\xd8\xff thumb", extra={"cam": "door"})
        bank.append(first)
        assert bank.tier(0) == "ram"
        in_ram = bank.packed(0)
        decoded_ram = bank.get(0)
        bank.append(make_chunk(1, mrope=True))  # pushes chunk 0 out of RAM
        assert bank.tier(0) == "disk" and bank.tier(1) == "ram"
        from_disk = bank.packed(0)
        assert from_disk is not in_ram
        assert_same_packed(in_ram, from_disk)
        decoded_disk = bank.get(0)
        for name in ("keys", "values", "positions", "summary"):
            assert torch.equal(getattr(decoded_ram, name), getattr(decoded_disk, name)), name
        assert decoded_disk.meta.thumbnail == b"\xff\xd8\xff thumb"
        assert dict(decoded_disk.meta.extra) == {"cam": "door"}
    finally:
        bank.close()


def test_zero_budget_keeps_everything_on_disk_and_no_budget_keeps_all_in_ram():
    on_disk = MemoryBank(config(ram_budget_bytes=0), S)
    in_ram = MemoryBank(config(), S)
    try:
        for cid in range(5):
            on_disk.append(make_chunk(cid))
            in_ram.append(make_chunk(cid))
        assert on_disk.nbytes()["ram"] == 0 and on_disk.stats().chunks_disk == 5
        assert in_ram.nbytes() == {"ram": in_ram.stats().bytes_ram, "disk": 0}
        assert in_ram.directory is None  # no temporary directory until one is needed
        for cid in range(5):
            assert torch.equal(on_disk.get(cid).keys, in_ram.get(cid).keys)
    finally:
        on_disk.close()
        in_ram.close()


def test_private_temp_dir_removed_on_close():
    bank = MemoryBank(config(ram_budget_bytes=0), S)
    bank.append(make_chunk(0))
    directory = bank.directory
    assert directory is not None and any((directory / CHUNK_DIR).iterdir())
    bank.close()
    assert not directory.exists()
    assert bank.nbytes() == {"ram": 0, "disk": 0}


def test_nbytes_counts_packed_positions_and_summary():
    codec = KVCodecConfig(bits=8, group_size=4)
    bank = MemoryBank(config(codec=codec), S)
    try:
        chunk = make_chunk(0, mrope=True)
        bank.append(chunk)
        stored = bank.packed(0)
        expected = stored.packed.nbytes + 3 * 4 * 8 + S * 4
        assert bank.nbytes()["ram"] == expected
        assert bank.stats().bits_per_element == pytest.approx(stored.packed.bits_per_element())
    finally:
        bank.close()


def test_unwritable_disk_dir_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    from memory import BankError

    with pytest.raises(BankError, match="not a directory"):
        MemoryBank(config(disk_dir=str(blocker)), S)
    if os.geteuid() != 0:  # root ignores permissions
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        with pytest.raises(BankError, match="disk_dir"):
            MemoryBank(config(disk_dir=str(ro / "sub")), S)
