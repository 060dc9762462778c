"""Bounded disk: consolidation (requantize, merge a static scene) before deletion, oldest first."""

from __future__ import annotations

import os

import pytest
import torch

from compression.kvcodec import KVCodecConfig
from memory import BankConfigError, ChunkMeta, KVChunk, MemoryBank
from memory.consolidate import can_merge, consolidation_level, merge_chunks
from tests.memory._factory import D, H, L, S, config

CODEC = KVCodecConfig(bits=8, group_size=4)
T = 8


def _scene_base(scene: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + scene)
    k = torch.randn(L, H, T, D, generator=g)
    v = torch.randn(L, H, T, D, generator=g)
    return k, v, k.mean(2).flatten()


def scene_chunk(cid: int, scene: int, *, needle: bool = False) -> KVChunk:
    """A frame of a static scene: the scene's KV plus a little noise; ``needle`` puts one unique token in."""
    k, v, summary = _scene_base(scene)
    g = torch.Generator().manual_seed(cid)
    k = k + 0.01 * torch.randn(k.shape, generator=g)
    v = v + 0.01 * torch.randn(v.shape, generator=g)
    if needle:
        k[:, :, 3] = 4.0 * torch.randn(L, H, D, generator=g)
        v[:, :, 3] = 4.0 * torch.randn(L, H, D, generator=g)
    meta = ChunkMeta(chunk_id=cid, t_start=float(cid), t_end=cid + 1.0, kind="frame", n_tokens=T,
                     frame_indices=(cid,), extra={"content": [[0, T]]})
    return KVChunk(meta=meta, keys=k, values=v, positions=torch.arange(cid * T, (cid + 1) * T),
                   summary=summary + 0.001 * torch.randn(summary.shape, generator=g))


def _files_bytes(bank) -> int:
    return sum(e.stat().st_size for e in os.scandir(bank.directory / "chunks"))


def _chunk_file_bytes(tmp_path) -> int:
    probe = MemoryBank(config(codec=CODEC, ram_budget_bytes=0, disk_dir=str(tmp_path / "probe")), S)
    try:
        probe.append(scene_chunk(0, 0))
        return probe.nbytes()["disk"]
    finally:
        probe.close()


def test_disk_budget_never_exceeded_over_a_long_stream(tmp_path):
    per_file = _chunk_file_bytes(tmp_path)
    budget = 40 * per_file
    bank = MemoryBank(config(codec=CODEC, ram_budget_bytes=0, disk_budget_bytes=budget,
                             disk_dir=str(tmp_path / "b")), S)
    try:
        for cid in range(300):  # scenes of 12 frames, then a cut
            bank.append(scene_chunk(cid, cid // 12))
            assert bank.nbytes()["disk"] <= budget
            assert _files_bytes(bank) <= budget  # what is really on disk, temporary files included
        st = bank.stats()
        assert st.consolidated > 0 and st.merged > 0 and st.deleted_budget > 0
        assert st.disk_budget_bytes == budget and st.bytes_disk <= budget
        assert st.bytes_per_hour["disk"] == pytest.approx(st.bytes_disk / (st.stream_s / 3600))
        metas = bank.metas()
        # deletion took the oldest: what is left is one unbroken, most recent stretch of stream time
        assert metas[-1].t_end == 300.0
        kept = sorted({i for m in metas for i in m.frame_indices} | {m.chunk_id for m in metas})
        assert kept == list(range(kept[0], 300))
        # the old part is consolidated (fewer bits, merged frames), the newest still as appended
        assert consolidation_level(metas[0]) == 1 and len(metas[0].extra["merged_from"]) > 1
        assert consolidation_level(metas[-1]) == 0
        assert bank.stats().bits_per_element < CODEC.bits + 2
        for m in metas:  # every chunk left still reads back
            assert bank.get(m.chunk_id).keys.shape[2] == m.n_tokens
    finally:
        bank.close()


def test_consolidated_static_scene_still_yields_its_needle(tmp_path):
    per_file = _chunk_file_bytes(tmp_path)
    bank = MemoryBank(config(codec=CODEC, ram_budget_bytes=0, disk_budget_bytes=30 * per_file,
                             disk_dir=str(tmp_path / "b"), persist=True), S)
    needle_id = 5
    needle = scene_chunk(needle_id, 0, needle=True)
    for cid in range(32):  # scene 0: frames 0-7 (the needle in frame 5), then scenes of 8 frames
        bank.append(needle if cid == needle_id else scene_chunk(cid, cid // 8))
    metas = bank.metas()
    holder = next(m for m in metas if needle_id in m.frame_indices)
    assert consolidation_level(holder) == 1 and needle_id in holder.extra["merged_from"]
    assert holder.n_tokens < 8 * T  # near-duplicate tokens of the static frames were folded together

    def check(b):
        got = b.retrieve(needle.summary, 1)
        assert [r.chunk.meta.chunk_id for r in got] == [holder.chunk_id]
        chunk = got[0].chunk
        assert chunk.meta.t_start == 0.0 and chunk.meta.t_end == 8.0
        # the needle token survives with its own position and (requantized) key
        pos = needle.positions[3]
        at = (chunk.positions == pos).nonzero().flatten()
        assert len(at) == 1
        cos = torch.nn.functional.cosine_similarity(chunk.keys[:, :, at[0]].flatten(), needle.keys[:, :, 3].flatten(), dim=0)
        assert float(cos) > 0.9
        return chunk

    before = check(bank)
    bank.close()
    again = MemoryBank.open(tmp_path / "b")  # reopen after save keeps the consolidated chunks
    try:
        after = check(again)
        assert torch.equal(before.keys, after.keys) and torch.equal(before.values, after.values)
        reopened = again.metas()
        assert [m.to_json() for m in reopened] == [m.to_json() for m in metas]
        assert again.stats().bytes_disk <= 30 * per_file
    finally:
        again.close()


def test_merge_folds_duplicates_and_keeps_distinct_tokens():
    a, b = scene_chunk(0, 0), scene_chunk(1, 0, needle=True)
    merged = merge_chunks([a, b], token_similarity=0.95)
    assert merged.meta.n_tokens == T + 1  # b's tokens fold into a's, but for its needle
    assert merged.meta.t_start == 0.0 and merged.meta.t_end == 2.0 and merged.meta.frame_indices == (0, 1)
    assert merged.positions.tolist() == list(range(T)) + [T + 3]
    assert torch.equal(merged.keys[:, :, :T], a.keys)  # kept keys stay valid at their own positions
    assert torch.allclose(merged.values[:, :, 0], (a.values[:, :, 0] + b.values[:, :, 0]) / 2)
    assert merged.meta.extra["merged_from"] == [0, 1]


def test_frames_of_two_inputs_are_never_merged():
    """A merged chunk carries one input label in its evidence: frames of another input stay apart."""
    import dataclasses

    def labelled(chunk, source):
        return dataclasses.replace(chunk, meta=dataclasses.replace(chunk.meta, extra={**chunk.meta.extra,
                                                                                      "source": source}))

    a, b = labelled(scene_chunk(0, 0), "file a.mp4"), labelled(scene_chunk(1, 0), "file a.mp4")
    assert can_merge([a, b])
    assert not can_merge([a, labelled(scene_chunk(1, 0), "webcam")])


def test_budget_config_is_validated():
    with pytest.raises(BankConfigError, match="disk_budget_bytes"):
        config(disk_budget_bytes=0)
    with pytest.raises(BankConfigError, match="merge_similarity"):
        config(merge_similarity=1.5)
    with pytest.raises(BankConfigError, match="merge_max_chunks"):
        config(merge_max_chunks=0)
