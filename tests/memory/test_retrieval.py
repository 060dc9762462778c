"""Invariant 4: a planted chunk is found first; results come back in time order with their own data."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from compression.kvcodec import KVCodecConfig
from memory import MemoryBank
from tests.memory._factory import S, config, make_chunk


@pytest.fixture
def bank():
    b = MemoryBank(config(), S)
    yield b
    b.close()


def test_planted_chunk_ranks_first_among_1000(bank):
    g = torch.Generator().manual_seed(1234)
    query = torch.randn(S, generator=g)
    planted_id = 537
    originals = {}
    for cid in range(1000):
        summary = query.clone() if cid == planted_id else None
        chunk = make_chunk(cid, summary=summary)
        originals[cid] = chunk
        bank.append(chunk)
    top = bank.search(query, 5)
    assert top[0][0].chunk_id == planted_id
    assert top[0][1] == pytest.approx(float(query @ query), rel=1e-5)
    assert [s for _, s in top] == sorted((s for _, s in top), reverse=True)

    got = bank.retrieve(query, 5)
    assert len(got) == 5
    best = max(got, key=lambda r: r.score)
    assert best.chunk.meta.chunk_id == planted_id
    # time order, and each chunk carries its own time range and KV
    keys = [(r.chunk.meta.t_start, r.chunk.meta.chunk_id) for r in got]
    assert keys == sorted(keys)
    assert {r.chunk.meta.chunk_id for r in got} == {m.chunk_id for m, _ in top}
    for r in got:
        orig = originals[r.chunk.meta.chunk_id]
        assert r.chunk.meta == orig.meta
        assert (r.chunk.meta.t_start, r.chunk.meta.t_end) == (float(orig.meta.chunk_id), orig.meta.chunk_id + 0.5)
        assert torch.equal(r.chunk.keys, orig.keys) and torch.equal(r.chunk.values, orig.values)
        assert torch.equal(r.chunk.positions, orig.positions)
        assert r.score == pytest.approx(float(orig.summary @ query), rel=1e-4, abs=1e-3)


def test_time_order_is_not_append_order(bank):
    # appended out of time order (a late text event): results still sorted by (t_start, id)
    times = {10: 5.0, 11: 1.0, 12: 3.0, 13: 1.0}
    for cid, t in times.items():
        bank.append(make_chunk(cid, t_start=t, kind="text", text=f"event {cid}"))
    got = bank.retrieve(torch.randn(S), 10)
    assert [r.chunk.meta.chunk_id for r in got] == [11, 13, 12, 10]
    assert [m.chunk_id for m in bank.metas()] == [11, 13, 12, 10]
    assert got[0].chunk.meta.text == "event 11"


def test_k_larger_than_bank_returns_all_and_k_zero_none(bank):
    assert bank.retrieve(torch.randn(S), 3) == []
    for cid in range(7):
        bank.append(make_chunk(cid))
    assert len(bank.retrieve(torch.randn(S), 100)) == 7
    assert bank.retrieve(torch.randn(S), 0) == []
    assert len(bank) == 7


def test_query_accepts_numpy_and_batch_of_one(bank):
    for cid in range(5):
        bank.append(make_chunk(cid))
    target = bank.get(3).summary
    assert bank.search(target.numpy(), 1)[0][0].chunk_id == 3
    assert bank.search(target[None, :].double(), 1)[0][0].chunk_id == 3


def test_dtype_as_appended_or_requested():
    bank = MemoryBank(config(codec=KVCodecConfig(bits=16)), S)
    try:
        chunk = make_chunk(0, dtype=torch.bfloat16, mrope=True)
        bank.append(chunk)
        got = bank.retrieve(chunk.summary, 1)[0].chunk
        assert got.keys.dtype == torch.bfloat16 and got.values.dtype == torch.bfloat16
        assert torch.equal(got.positions, chunk.positions) and got.positions.shape == (3, 4)
        as_f32 = bank.retrieve(chunk.summary, 1, dtype=torch.float32)[0].chunk
        assert as_f32.keys.dtype == torch.float32 and as_f32.values.dtype == torch.float32
        torch.testing.assert_close(as_f32.keys, chunk.keys.float(), rtol=2**-10, atol=2**-24)
    finally:
        bank.close()


def test_returned_tensors_are_copies(bank):
    chunk = make_chunk(0)
    bank.append(chunk)
    first = bank.get(0)
    first.keys.zero_()
    first.positions.zero_()
    first.summary.zero_()
    again = bank.get(0)
    assert torch.equal(again.keys, chunk.keys)
    assert torch.equal(again.positions, chunk.positions)
    assert torch.equal(again.summary, chunk.summary)
    # the appended chunk's tensors are not kept either
    chunk.keys.zero_()
    assert not torch.equal(bank.get(0).keys, chunk.keys)


def test_search_logs_nothing_on_healthy_bank(bank, caplog):
    for cid in range(20):
        bank.append(make_chunk(cid))
    with caplog.at_level(logging.WARNING, logger="memory"):
        got = bank.retrieve(torch.randn(S), 20)
    assert len(got) == 20
    assert not caplog.records
    assert np.isfinite([r.score for r in got]).all()
