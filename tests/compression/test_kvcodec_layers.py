"""KVCodec.decode_keys: the keys of some layers equal the full decode's, for every storage mode."""

from __future__ import annotations

import pytest
import torch

from compression.kvcodec import KVCodec, KVCodecConfig, KVCodecError


@pytest.mark.parametrize("bits", [32, 16, 8, 4, 2])
@pytest.mark.parametrize("outliers", [0, 3])
@pytest.mark.parametrize("n_tokens", [1, 7, 75])
def test_layer_keys_equal_full_decode(bits, outliers, n_tokens):
    g = torch.Generator().manual_seed(bits * 100 + n_tokens + outliers)
    # odd sizes everywhere, so a layer's codes start in the middle of a byte at 4 and 2 bits
    k = torch.randn(5, 3, n_tokens, 13, generator=g) * 3
    v = torch.randn(5, 3, n_tokens, 13, generator=g)
    codec = KVCodec(KVCodecConfig(bits=bits, group_size=4, outlier_channels=outliers))
    packed = codec.encode(k, v)
    full_k, _ = codec.decode(packed)
    for layers in ([0], [4], [2, 3, 4], [1, 3], [4, 0, 2], list(range(5))):
        got = codec.decode_keys(packed, layers)
        assert got.shape == (len(layers), 3, n_tokens, 13)
        assert torch.equal(got, full_k[layers]), layers


def test_dtype_and_range_checks():
    codec = KVCodec(KVCodecConfig(bits=4))
    packed = codec.encode(torch.randn(2, 1, 5, 8, dtype=torch.bfloat16), torch.randn(2, 1, 5, 8, dtype=torch.bfloat16))
    assert codec.decode_keys(packed, [1]).dtype == torch.bfloat16
    assert torch.equal(codec.decode_keys(packed, [1], dtype=torch.float32), codec.decode(packed, dtype=torch.float32)[0][[1]])
    for bad in ([], [2], [-1]):
        with pytest.raises(KVCodecError):
            codec.decode_keys(packed, bad)
