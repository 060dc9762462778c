"""save() then open() (also in a fresh process) gives back the same chunks and retrievals."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from compression.kvcodec import KVCodecConfig
from memory import BankCorrupt, BankError, MemoryBank
from memory.bank import INDEX_FILE, MANIFEST, SUMMARIES
from tests.memory._factory import S, assert_same_packed, config, make_chunk

REPO = Path(__file__).resolve().parents[2]
CODEC = KVCodecConfig(bits=4, group_size=4, value_mode="token")


def _fill(bank, n=40):
    chunks = {}
    for cid in range(n):
        kind = "text" if cid % 7 == 3 else "frame"
        chunks[cid] = make_chunk(
            cid, kind=kind, text=f"line {cid}" if kind == "text" else None, thumbnail=bytes([cid]) * 5, mrope=cid % 2 == 0
        )
        bank.append(chunks[cid])
    return chunks


def _digest(packed_chunk) -> str:
    h = hashlib.sha256()
    for name in sorted(packed_chunk.packed.tensors):
        h.update(packed_chunk.packed.tensors[name].contiguous().view(torch.uint8).numpy().tobytes())
    h.update(packed_chunk.positions.numpy().tobytes())
    h.update(packed_chunk.summary.numpy().tobytes())
    return h.hexdigest()


@pytest.mark.parametrize("index", ["flat", "hnsw"])
def test_save_open_round_trip(tmp_path, index):
    d = tmp_path / "saved"
    bank = MemoryBank(config(codec=CODEC, ram_budget_bytes=20_000, disk_dir=str(d), persist=True, index=index), S)
    chunks = _fill(bank)
    query = chunks[17].summary + 0.1 * chunks[30].summary
    before = [(r.chunk.meta.chunk_id, r.score) for r in bank.retrieve(query, 6)]
    packed_before = {cid: bank.packed(cid) for cid in chunks}
    metas_before = bank.metas()
    assert bank.save() == d
    assert {p.name for p in d.iterdir()} >= {MANIFEST, SUMMARIES, INDEX_FILE, "chunks"}
    assert len(list((d / "chunks").glob("*.kvc"))) == 40
    # the bank stays usable after save
    bank.append(make_chunk(40))
    assert len(bank) == 41
    bank.close()  # persist: saves the new chunk too, keeps the directory
    assert d.exists()

    reopened = MemoryBank.open(d)
    try:
        assert reopened.config.index == index and reopened.config.codec == CODEC
        assert reopened.config.persist and reopened.config.disk_dir == str(d)
        assert len(reopened) == 41
        assert reopened.metas()[:40] == metas_before
        assert reopened.stats().chunks_ram == 0
        for cid, packed in packed_before.items():
            assert_same_packed(packed, reopened.packed(cid))
        after = [(r.chunk.meta.chunk_id, r.score) for r in reopened.retrieve(query, 6)]
        assert [c for c, _ in after] == [c for c, _ in before]
        assert [s for _, s in after] == pytest.approx([s for _, s in before], rel=1e-6)
    finally:
        reopened.close()


def test_open_in_a_new_process(tmp_path):
    d = tmp_path / "saved"
    bank = MemoryBank(config(codec=CODEC, disk_dir=str(d), persist=True), S)
    chunks = _fill(bank, 25)
    query = chunks[11].summary
    expected = [(r.chunk.meta.chunk_id, r.score, r.chunk.meta.t_start, r.chunk.meta.t_end) for r in bank.retrieve(query, 5)]
    digests = {cid: _digest(bank.packed(cid)) for cid in chunks}
    decoded_sum = {cid: float(bank.get(cid).keys.double().sum()) for cid in chunks}
    bank.save()
    bank.close()
    torch.save(query, tmp_path / "query.pt")
    script = f"""
import json, sys, torch, hashlib
from memory import MemoryBank
from tests.memory.test_persistence import _digest
bank = MemoryBank.open({str(d)!r})
q = torch.load({str(tmp_path / "query.pt")!r})
out = {{
    "hits": [[r.chunk.meta.chunk_id, r.score, r.chunk.meta.t_start, r.chunk.meta.t_end] for r in bank.retrieve(q, 5)],
    "digests": {{str(m.chunk_id): _digest(bank.packed(m.chunk_id)) for m in bank.metas()}},
    "sums": {{str(m.chunk_id): float(bank.get(m.chunk_id).keys.double().sum()) for m in bank.metas()}},
}}
bank.close()
print(json.dumps(out))
"""
    res = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert [h[0] for h in out["hits"]] == [e[0] for e in expected]
    assert [h[1] for h in out["hits"]] == pytest.approx([e[1] for e in expected], rel=1e-6)
    assert [tuple(h[2:]) for h in out["hits"]] == [e[2:] for e in expected]
    assert out["digests"] == {str(k): v for k, v in digests.items()}
    assert out["sums"] == {str(k): v for k, v in decoded_sum.items()}


@pytest.mark.parametrize("missing", [[INDEX_FILE], [INDEX_FILE, SUMMARIES]])
def test_open_rebuilds_a_missing_index(tmp_path, missing, caplog):
    d = tmp_path / "saved"
    bank = MemoryBank(config(codec=CODEC, disk_dir=str(d), persist=True), S)
    chunks = _fill(bank, 20)
    bank.close()
    for name in missing:
        (d / name).unlink()
    reopened = MemoryBank.open(d)
    try:
        assert len(reopened) == 20
        for cid in (0, 7, 19):
            assert reopened.search(chunks[cid].summary, 1)[0][0].chunk_id == cid
        assert "rebuilding" in caplog.text
    finally:
        reopened.close()
    # close() saved the rebuilt index, so the next open needs no rebuild
    assert (d / INDEX_FILE).exists()


def test_damaged_index_file_is_rebuilt(tmp_path):
    d = tmp_path / "saved"
    bank = MemoryBank(config(codec=CODEC, disk_dir=str(d), persist=True), S)
    chunks = _fill(bank, 10)
    bank.close()
    (d / INDEX_FILE).write_bytes(b"junk")
    with MemoryBank.open(d) as reopened:
        assert reopened.search(chunks[4].summary, 1)[0][0].chunk_id == 4


def test_open_errors(tmp_path):
    with pytest.raises(BankCorrupt, match="manifest.json is missing"):
        MemoryBank.open(tmp_path)
    (tmp_path / MANIFEST).write_text("{not json")
    with pytest.raises(BankCorrupt, match="cannot read"):
        MemoryBank.open(tmp_path)
    malformed = {"format": 1, "summary_dim": S, "config": {"index": "flat"}, "chunks": [{"meta": {}}]}
    (tmp_path / MANIFEST).write_text(json.dumps(malformed))
    with pytest.raises(BankCorrupt, match="malformed"):
        MemoryBank.open(tmp_path)


def test_open_and_append_then_reopen(tmp_path):
    d = tmp_path / "saved"
    with MemoryBank(config(codec=CODEC, disk_dir=str(d), persist=True), S) as bank:
        _fill(bank, 5)
    with MemoryBank.open(d, ram_budget_bytes=0) as reopened:
        reopened.append(make_chunk(5))
        assert reopened.tier(5) == "disk"
        assert len(reopened.retrieve(torch.randn(S), 10)) == 6
    with MemoryBank.open(d) as again:
        assert [m.chunk_id for m in again.metas()] == list(range(6))


def test_directory_cleanup_rules(tmp_path):
    # a directory the bank created, not persisted: removed whole
    created = tmp_path / "new" / "bank"
    bank = MemoryBank(config(disk_dir=str(created), ram_budget_bytes=0), S)
    bank.append(make_chunk(0))
    bank.save()
    bank.close()
    assert not created.exists()
    # the caller's existing directory, not persisted: only the bank's own files go
    existing = tmp_path / "mine"
    existing.mkdir()
    (existing / "notes.txt").write_text("keep me")
    bank = MemoryBank(config(disk_dir=str(existing), ram_budget_bytes=0), S)
    bank.append(make_chunk(0))
    bank.save()
    bank.close()
    assert [p.name for p in existing.iterdir()] == ["notes.txt"]
    # a directory that already holds a bank is not reused by a new bank
    saved = tmp_path / "saved"
    with MemoryBank(config(disk_dir=str(saved), persist=True), S) as bank:
        bank.append(make_chunk(0))
    with pytest.raises(BankError, match="already holds a memory bank"):
        MemoryBank(config(disk_dir=str(saved)), S)
    with MemoryBank.open(saved) as reopened:
        assert reopened.get(0).meta.chunk_id == 0
