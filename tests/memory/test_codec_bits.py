"""KV through the bank (RAM and disk) stays within the codec's error bound (invariant 5)."""

from __future__ import annotations

import pytest
import torch

from compression.kvcodec import KVCodec, KVCodecConfig
from memory import MemoryBank
from tests.memory._factory import S, config, make_chunk


@pytest.mark.parametrize("bits", [32, 16, 8, 4, 2])
@pytest.mark.parametrize("budget", [None, 0], ids=["ram", "disk"])
def test_dequantized_kv_within_bound(bits, budget):
    codec_cfg = KVCodecConfig(bits=bits, group_size=8, outlier_channels=1 if bits <= 8 else 0)
    bank = MemoryBank(config(codec=codec_cfg, ram_budget_bytes=budget), S)
    try:
        chunks = [make_chunk(cid, n_tokens=16) for cid in range(4)]
        for chunk in chunks:
            bank.append(chunk)
        codec = KVCodec(codec_cfg)
        for chunk in chunks:
            got = bank.get(chunk.meta.chunk_id, dtype=torch.float32)
            k_bound, v_bound = codec.error_bound(bank.packed(chunk.meta.chunk_id).packed)
            assert ((got.keys - chunk.keys).abs() <= k_bound).all()
            assert ((got.values - chunk.values).abs() <= v_bound).all()
            if bits == 32:
                assert torch.equal(got.keys, chunk.keys) and torch.equal(got.values, chunk.values)
            else:
                assert not torch.equal(got.keys, chunk.keys)  # it really was quantized
        st = bank.stats()
        assert st.bits_per_element == pytest.approx(bank.packed(0).packed.bits_per_element())
        assert (st.chunks_disk == 4) == (budget == 0)
    finally:
        bank.close()


def test_fewer_bits_store_fewer_bytes():
    sizes = {}
    for bits in (32, 16, 8, 4, 2):
        bank = MemoryBank(config(codec=KVCodecConfig(bits=bits, group_size=32)), S)
        bank.append(make_chunk(0, n_tokens=64))
        sizes[bits] = (bank.nbytes()["ram"], bank.stats().bits_per_element)
        bank.close()
    order = [sizes[b] for b in (32, 16, 8, 4, 2)]
    assert [s for s, _ in order] == sorted((s for s, _ in order), reverse=True)
    assert sizes[32][1] == 32.0 and sizes[16][1] == 16.0
    assert 2.0 < sizes[2][1] < 4.0  # 2-bit codes plus float16 scales and zeros
