"""Retrieval runs while another thread appends (with spilling and retention)."""

from __future__ import annotations

import threading

import torch

from compression.kvcodec import KVCodecConfig
from memory import MemoryBank
from tests.memory._factory import S, config, make_chunk


def test_append_and_retrieve_concurrently():
    codec = KVCodecConfig(bits=8, group_size=4)
    bank = MemoryBank(config(codec=codec, ram_budget_bytes=8000, retention_s=60.0), S)
    n = 300
    originals = {cid: make_chunk(cid) for cid in range(n)}
    errors: list[BaseException] = []
    done = threading.Event()
    retrievals = 0

    def writer() -> None:
        try:
            for cid in range(n):
                bank.append(originals[cid])
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            done.set()

    def reader() -> None:
        nonlocal retrievals
        g = torch.Generator().manual_seed(7)
        try:
            while not done.is_set() or retrievals < 5:
                got = bank.retrieve(torch.randn(S, generator=g), 8)
                keys = [(r.chunk.meta.t_start, r.chunk.meta.chunk_id) for r in got]
                assert keys == sorted(keys)
                for r in got:
                    orig = originals[r.chunk.meta.chunk_id]
                    assert r.chunk.meta == orig.meta
                    assert (r.chunk.keys - orig.keys).abs().max() < 0.1
                bank.stats()
                bank.metas()
                retrievals += 1
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer), threading.Thread(target=reader), threading.Thread(target=reader)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    try:
        assert not errors, errors
        assert retrievals >= 5
        st = bank.stats()
        assert st.appended == n and st.chunks == 61  # t_end >= 299.5 - 60
        assert st.corrupt_chunks == 0  # chunks evicted during a read are not "corrupt"
        assert st.bytes_ram <= 8000
        assert len(bank.retrieve(torch.randn(S), 1000)) == 61
    finally:
        bank.close()
