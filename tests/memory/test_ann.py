"""Approximate indexes (HNSW, IVF) against the exact flat index."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from memory import MemoryBank
from tests.memory._factory import config, make_chunk

DIM = 64  # summaries of (L, H, D) = (1, 1, 64)
N = 2000


def _bank(index: str, vectors: np.ndarray, **kwargs) -> MemoryBank:
    bank = MemoryBank(config(index=index, **kwargs), DIM)
    for cid, vec in enumerate(vectors):
        bank.append(make_chunk(cid, n_tokens=1, shape=(1, 1, DIM), summary=torch.from_numpy(vec)))
    return bank


def _recall_at_10(approx: MemoryBank, exact: MemoryBank, queries: np.ndarray) -> float:
    hits = 0
    for q in queries:
        truth = {m.chunk_id for m, _ in exact.search(torch.from_numpy(q), 10)}
        found = {m.chunk_id for m, _ in approx.search(torch.from_numpy(q), 10)}
        hits += len(truth & found)
    return hits / (10 * len(queries))


def _clustered(rng: np.random.Generator, n: int, centers: np.ndarray) -> np.ndarray:
    # video summaries cluster by scene; IVF's premise is exactly that structure
    return (centers[rng.integers(0, len(centers), n)] + rng.standard_normal((n, DIM))).astype(np.float32)


def test_hnsw_recall_on_gaussian_data():
    rng = np.random.default_rng(0)
    data = rng.standard_normal((N, DIM)).astype(np.float32)
    queries = rng.standard_normal((40, DIM)).astype(np.float32)
    exact, hnsw = _bank("flat", data), _bank("hnsw", data, hnsw_m=32, hnsw_ef_search=128)
    try:
        assert _recall_at_10(hnsw, exact, queries) >= 0.9
    finally:
        exact.close()
        hnsw.close()


def test_ivf_recall_on_clustered_data_and_exact_before_training():
    rng = np.random.default_rng(1)
    centers = 2.0 * rng.standard_normal((24, DIM)).astype(np.float32)
    data = _clustered(rng, N, centers)
    queries = _clustered(rng, 40, centers)
    threshold = 39 * 16
    exact = _bank("flat", data)
    ivf = _bank("ivf", data[: threshold - 1], ivf_nlist=16, ivf_nprobe=4)
    try:
        # before training, the IVF bank answers exactly like the flat one
        part = _bank("flat", data[: threshold - 1])
        for q in queries[:10]:
            assert [m.chunk_id for m, _ in ivf.search(torch.from_numpy(q), 10)] == [
                m.chunk_id for m, _ in part.search(torch.from_numpy(q), 10)
            ]
        part.close()
        assert not ivf._index.trained
        for cid in range(threshold - 1, N):
            ivf.append(make_chunk(cid, n_tokens=1, shape=(1, 1, DIM), summary=torch.from_numpy(data[cid])))
        assert ivf._index.trained
        assert _recall_at_10(ivf, exact, queries) >= 0.9
    finally:
        exact.close()
        ivf.close()


@pytest.mark.parametrize("index", ["hnsw", "ivf"])
def test_approximate_index_persists(tmp_path, index):
    rng = np.random.default_rng(2)
    centers = 2.0 * rng.standard_normal((8, DIM)).astype(np.float32)
    data = _clustered(rng, 400, centers)
    bank = _bank(index, data, disk_dir=str(tmp_path / "b"), persist=True, ivf_nlist=8, ivf_nprobe=4, ivf_train_min=200,
                 hnsw_ef_search=64)
    queries = data[:20] + 0.01
    before = [[m.chunk_id for m, _ in bank.search(torch.from_numpy(q), 5)] for q in queries]
    bank.close()
    reopened = MemoryBank.open(tmp_path / "b")
    try:
        assert reopened.config.index == index
        after = [[m.chunk_id for m, _ in reopened.search(torch.from_numpy(q), 5)] for q in queries]
        assert after == before
    finally:
        reopened.close()


def test_hnsw_tombstones_are_filtered_and_compacted():
    rng = np.random.default_rng(3)
    data = rng.standard_normal((1200, DIM)).astype(np.float32)
    # retention of 100 s over chunks one second apart: most of them become tombstones
    bank = _bank("hnsw", data, retention_s=100.0)
    try:
        live = {m.chunk_id for m in bank.metas()}
        assert len(live) == 101
        index = bank._index
        assert len(index.tombstones) < 1200 - 101  # compaction ran at least once
        for q in data[:50]:
            found = [m.chunk_id for m, _ in bank.search(torch.from_numpy(q), 10)]
            assert len(found) == 10 and set(found) <= live
        assert bank.search(torch.from_numpy(data[1150]), 1)[0][0].chunk_id == 1150
    finally:
        bank.close()
