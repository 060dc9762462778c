"""A damaged or missing manifest: the bank is recovered from its chunk files, or a clear error names
what is damaged; stored memory is never deleted (issue 14, item 9)."""

from __future__ import annotations

import logging

import pytest
import torch

from compression.kvcodec import KVCodecConfig
from memory import BankCorrupt, MemoryBank
from tests.memory._factory import S, config, flip_byte, make_chunk, section_span

CODEC = KVCodecConfig(bits=4, group_size=4)


@pytest.fixture
def saved(tmp_path):
    root = tmp_path / "mem"
    bank = MemoryBank(config(codec=CODEC, disk_dir=str(root), persist=True, retention_s=1e6), S)
    chunks = {cid: make_chunk(cid, text=f"note {cid}", kind="text") for cid in range(6)}
    for chunk in chunks.values():
        bank.append(chunk)
    expected = {cid: bank.get(cid) for cid in chunks}
    bank.close()
    return root, chunks, expected


def _files(root):
    return sorted(p.name for p in (root / "chunks").iterdir())


@pytest.mark.parametrize("damage", ["missing", "truncated", "garbage", "not_a_manifest"])
def test_damaged_manifest_is_recovered_from_the_chunk_files(saved, damage, caplog):
    root, chunks, expected = saved
    manifest = root / "manifest.json"
    text = manifest.read_text()
    if damage == "missing":
        manifest.unlink()
    elif damage == "truncated":
        manifest.write_text(text[: len(text) // 2])
    elif damage == "garbage":
        manifest.write_bytes(b"\x00\xff" * 40)
    else:
        manifest.write_text('{"format": 1, "chunks": "nope"}')
    before = _files(root)
    with caplog.at_level(logging.WARNING, logger="memory"):
        bank = MemoryBank.open(root)
    try:
        assert bank.recovered is not None and bank.recovered["chunks"] == 6 and bank.recovered["unreadable"] == []
        assert any("recovered memory bank" in r.getMessage() for r in caplog.records)
        assert [m.chunk_id for m in bank.metas()] == list(range(6))
        for cid, want in expected.items():
            got = bank.get(cid)
            assert got.meta == want.meta and torch.equal(got.keys, want.keys) and torch.equal(got.values, want.values)
        assert [r.chunk.meta.chunk_id for r in bank.retrieve(chunks[4].summary, 1)] == [4]
        assert bank.config.codec == CODEC
        if damage != "missing":  # the damaged manifest is kept aside, never deleted
            assert (root / "manifest.json.damaged").exists()
        assert _files(root) == before
    finally:
        bank.close()
    # closing wrote a fresh manifest: the next open is an ordinary one
    again = MemoryBank.open(root)
    try:
        assert again.recovered is None and len(again) == 6
    finally:
        again.close()


def test_a_corrupt_chunk_is_left_in_place_and_named(saved):
    root, _, _ = saved
    (root / "manifest.json").write_text("{")
    bad = root / "chunks" / f"{2:012d}.kvc"
    start, stop = section_span(bad, "rest")
    flip_byte(bad, start + 10)
    bank = MemoryBank.open(root)
    try:
        assert [m.chunk_id for m in bank.metas()] == [0, 1, 3, 4, 5]
        assert len(bank.recovered["unreadable"]) == 1 and bad.name in bank.recovered["unreadable"][0]
        assert "checksum" in bank.recovered["unreadable"][0]
    finally:
        bank.close()
    assert bad.exists()  # never deleted


def test_clear_errors_when_nothing_can_be_recovered(tmp_path, saved):
    with pytest.raises(BankCorrupt, match="holds no saved memory bank"):
        MemoryBank.open(tmp_path / "empty")
    root, _, _ = saved
    for p in (root / "chunks").iterdir():
        p.write_bytes(b"NOTACHNK" + p.read_bytes()[8:])
    (root / "manifest.json").write_text("{")
    with pytest.raises(BankCorrupt) as info:
        MemoryBank.open(root)
    msg = str(info.value)
    assert "manifest.json" in msg and "none of the 6 chunk files" in msg and "bad magic" in msg
    assert len(list((root / "chunks").iterdir())) == 6  # nothing deleted
    with pytest.raises(BankCorrupt, match="manifest.json"):
        MemoryBank.open(root, recover=False)
