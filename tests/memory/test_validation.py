"""Bad configs, chunks and queries raise typed errors that name the problem."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from memory import (
    BankClosed,
    BankConfig,
    BankConfigError,
    BankError,
    ChunkMeta,
    ChunkNotFound,
    InvalidChunk,
    InvalidQuery,
    KVChunk,
    MemoryBank,
)
from tests.memory._factory import S, config, make_chunk

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"ram_budget_bytes": -1}, "ram_budget_bytes"),
        ({"ram_budget_bytes": 1.5}, "ram_budget_bytes"),
        ({"retention_s": 0}, "retention_s"),
        ({"retention_s": float("nan")}, "retention_s"),
        ({"index": "lsh"}, "index"),
        ({"persist": True}, "persist"),
        ({"persist": "yes", "disk_dir": "/tmp/x"}, "persist"),
        ({"disk_dir": ""}, "disk_dir"),
        ({"hnsw_m": 1}, "hnsw_m"),
        ({"hnsw_ef_search": 0}, "hnsw_ef_search"),
        ({"faiss_threads": 0}, "faiss_threads"),
        ({"ivf_nlist": 0}, "ivf_nlist"),
        ({"ivf_nprobe": 0}, "ivf_nprobe"),
        ({"ivf_nlist": 8, "ivf_train_min": 4}, "ivf_train_min"),
        ({"codec": {"bits": 4}}, "codec"),
    ],
)
def test_invalid_config_names_field(kwargs, field):
    with pytest.raises(BankConfigError, match=rf"BankConfig\.{field}\b") as info:
        BankConfig(**kwargs)
    assert isinstance(info.value, ValueError)


def test_range_in_message():
    with pytest.raises(BankConfigError, match=r"\[2, 512\]"):
        BankConfig(hnsw_m=1000)
    with pytest.raises(BankConfigError, match=r">= 8"):
        BankConfig(ivf_nlist=8, ivf_train_min=4)


@pytest.mark.parametrize(
    ("kwargs", "word"),
    [
        ({"chunk_id": -1}, "chunk_id"),
        ({"chunk_id": True}, "chunk_id"),
        ({"t_start": float("inf")}, "t_start"),
        ({"t_start": 2.0, "t_end": 1.0}, "t_end"),
        ({"kind": "audio"}, "kind"),
        ({"n_tokens": 0}, "n_tokens"),
        ({"frame_indices": (1, -2)}, "frame_indices"),
        ({"text": 5}, "text"),
        ({"thumbnail": "not bytes"}, "thumbnail"),
        ({"extra": {"f": object()}}, "extra"),
    ],
)
def test_invalid_meta(kwargs, word):
    base = dict(chunk_id=1, t_start=0.0, t_end=1.0, kind="frame", n_tokens=4)
    base.update(kwargs)
    with pytest.raises(InvalidChunk, match=word):
        ChunkMeta(**base)


def test_meta_is_immutable_and_json_round_trips():
    extra = {"scene": [1, 2]}
    meta = ChunkMeta(3, 1.0, 2.0, "text", 5, text="hello", thumbnail=b"\xff\xd8jpeg", extra=extra)
    extra["scene"].append(3)  # the caller's dict is detached
    assert meta.extra["scene"] == [1, 2]
    with pytest.raises(TypeError):
        meta.extra["new"] = 1  # type: ignore[index]
    assert ChunkMeta.from_json(meta.to_json()) == meta
    with pytest.raises(InvalidChunk, match="chunk_id"):
        ChunkMeta.from_json({"t_start": 0})


def test_invalid_chunks():
    good = make_chunk(0)
    with pytest.raises(InvalidChunk, match="values shape"):
        KVChunk(good.meta, good.keys, good.values[:, :, :2], good.positions, good.summary)
    with pytest.raises(InvalidChunk, match="meta.n_tokens"):
        KVChunk(good.meta, good.keys[:, :, :2], good.values[:, :, :2], good.positions[:2], good.summary)
    with pytest.raises(InvalidChunk, match="positions must be int64"):
        KVChunk(good.meta, good.keys, good.values, good.positions.int(), good.summary)
    with pytest.raises(InvalidChunk, match=r"\(4,\) or \(3, 4\)"):
        KVChunk(good.meta, good.keys, good.values, torch.zeros(2, 4, dtype=torch.int64), good.summary)
    with pytest.raises(InvalidChunk, match="NaN"):
        KVChunk(good.meta, good.keys, good.values, good.positions, torch.full((S,), float("nan")))
    with pytest.raises(InvalidChunk, match="keys must be a torch.Tensor"):
        KVChunk(good.meta, np.zeros((2, 2, 4, 16)), good.values, good.positions, good.summary)


def test_bank_rejects_bad_appends_and_queries():
    bank = MemoryBank(config(), S)
    try:
        with pytest.raises(InvalidChunk, match="summary_dim"):
            bank.append(make_chunk(0, shape=(1, 2, 16)))
        with pytest.raises(InvalidChunk, match="KVChunk"):
            bank.append("not a chunk")  # type: ignore[arg-type]
        bank.append(make_chunk(1))
        with pytest.raises(InvalidChunk, match="already in the bank"):
            bank.append(make_chunk(1))
        inf_chunk = make_chunk(2)
        inf_chunk.keys[0, 0, 0, 0] = float("nan")
        with pytest.raises(InvalidChunk, match="codec rejected"):
            bank.append(inf_chunk)
        assert len(bank) == 1
        with pytest.raises(InvalidQuery, match=rf"\({S},\)"):
            bank.retrieve(torch.zeros(S + 1), 1)
        with pytest.raises(InvalidQuery, match="NaN"):
            bank.retrieve(torch.full((S,), float("nan")), 1)
        with pytest.raises(InvalidQuery, match="floating"):
            bank.retrieve(torch.zeros(S, dtype=torch.int64), 1)
        with pytest.raises(InvalidQuery, match="k must be"):
            bank.retrieve(torch.zeros(S), -1)
        with pytest.raises(ChunkNotFound, match="99"):
            bank.get(99)
        with pytest.raises(BankError, match="summary_dim"):
            MemoryBank(config(), 0)
    finally:
        bank.close()
    with pytest.raises(BankClosed):
        bank.append(make_chunk(5))
    with pytest.raises(BankClosed):
        bank.retrieve(torch.zeros(S), 1)
    bank.close()  # idempotent


def test_memory_never_imports_transformers_or_gradio():
    code = (
        "import sys, memory, memory.bank, memory.index, memory.store\n"
        "bad = [m for m in ('transformers', 'gradio') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr


def test_meta_and_chunks_pickle():
    import copy
    import pickle

    meta = ChunkMeta(3, 1.0, 2.0, "frame", 4, (7,), thumbnail=b"jpg", extra={"a": [1]})
    again = pickle.loads(pickle.dumps(meta))
    assert again == meta and dict(again.extra) == {"a": [1]}
    assert copy.deepcopy(meta) == meta
    chunk = make_chunk(2)
    restored = pickle.loads(pickle.dumps(chunk))
    assert restored.meta == chunk.meta and torch.equal(restored.keys, chunk.keys)
