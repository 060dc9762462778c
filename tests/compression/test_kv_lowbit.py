"""The low-bit codec settings: ternary values, large groups, per-layer key packing, key sections."""

from __future__ import annotations

import pytest
import torch

from compression.kvcodec import (
    VALUE_MODES,
    KVCodec,
    KVCodecConfig,
    KVCodecError,
    PackedKeys,
    PackedKV,
    join_keys,
    split_keys,
)
from compression.quant import pack_trits, trit_packed_numel, unpack_trits


def _kv(L=4, H=3, T=64, D=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    k = torch.randn(L, H, T, D, generator=g)
    k[:, :, :, 5] = k[:, :, :, 5] * 30 + 10  # an outlier channel, as post-RoPE keys have
    return k, torch.randn(L, H, T, D, generator=g)


def test_trits_round_trip_and_pack_five_to_a_byte():
    codes = torch.randint(0, 3, (1003,), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    packed = pack_trits(codes)
    assert packed.numel() == trit_packed_numel(1003) == 201
    assert torch.equal(unpack_trits(packed, 1003), codes)
    with pytest.raises(ValueError, match="201 bytes"):
        unpack_trits(packed[:-1], 1003)


def test_ternary_values_decode_within_their_bound():
    k, v = _kv()
    codec = KVCodec(KVCodecConfig(bits=2, value_mode="ternary", group_size=64))
    packed = codec.encode(k, v)
    k_hat, v_hat = codec.decode(packed, torch.float32)
    k_bound, v_bound = codec.error_bound(packed)
    assert bool(((k_hat - k).abs() <= k_bound).all())
    assert bool(((v_hat - v).abs() <= v_bound).all())
    # three levels per token group: the bound is a quarter of each token's value range
    rng = v.amax(-1) - v.amin(-1)
    assert bool((v_bound.amax(-1) <= rng / 4 * 1.01 + 1e-3).all())
    # per-token ternary keeps the values' direction (cosine well above noise)
    cos = torch.nn.functional.cosine_similarity(v_hat.flatten(0, 2), v.flatten(0, 2), dim=-1)
    assert float(cos.mean()) > 0.75


def test_ternary_needs_quantized_keys():
    assert "ternary" in VALUE_MODES
    with pytest.raises(KVCodecError, match="value_mode='ternary' needs quantized keys"):
        KVCodecConfig(bits=16, value_mode="ternary")


@pytest.mark.parametrize(
    ("cfg", "limit"),
    [
        (KVCodecConfig(bits=2, value_mode="token", group_size=64), 2.5),
        (KVCodecConfig(bits=2, value_mode="ternary", group_size=64), 2.5),
        (KVCodecConfig(bits=2, value_mode="ternary", group_size=128, outlier_channels=1), 2.5),
        (KVCodecConfig(bits=2, value_mode="channel", group_size=128), 2.5),
    ],
    ids=lambda x: str(x) if not isinstance(x, KVCodecConfig) else f"{x.value_mode}-g{x.group_size}-o{x.outlier_channels}",
)
def test_true_bits_per_element_at_most_2_5(cfg, limit):
    """Every stored byte counted (codes, float16 scales and zero points, outlier channels and their indices)."""
    k, v = _kv()
    packed = KVCodec(cfg).encode(k, v)
    by_hand = sum(t.numel() * t.element_size() for t in packed.tensors.values()) * 8 / (2 * k.numel())
    assert packed.bits_per_element() == pytest.approx(by_hand)
    assert packed.bits_per_element() <= limit


def test_ternary_exact_size():
    # L=4, H=3, T=64, D=64, 2-bit keys per channel in one group of 64 tokens, ternary values per token
    # in one group of 64 channels: keys 4*3*64*64/4 = 12,288 bytes + scale/zero 4*3*64*1*2*2 = 3,072;
    # values ceil(49,152 / 5) = 9,831 bytes + scale/zero 4*3*64*1*2*2 = 3,072.
    k, v = _kv()
    packed = KVCodec(KVCodecConfig(bits=2, value_mode="ternary", group_size=64)).encode(k, v)
    assert packed.nbytes == 12_288 + 3_072 + 9_831 + 3_072
    assert packed.bits_per_element() == pytest.approx(28_263 * 8 / 98_304)  # 2.30


@pytest.mark.parametrize("cfg", [
    KVCodecConfig(bits=2, value_mode="ternary", group_size=8, outlier_channels=3),
    KVCodecConfig(bits=4, value_mode="channel", group_size=16),
    KVCodecConfig(bits=16),
    KVCodecConfig(bits=32),
])
def test_split_keys_cuts_the_upper_layers_and_joins_back(cfg):
    k, v = _kv(L=5, T=13, D=16)
    codec = KVCodec(cfg)
    packed = codec.encode(k, v)
    upper, rest = split_keys(packed, 2)
    assert isinstance(upper, PackedKeys) and list(upper.layers) == [2, 3, 4]
    full_keys = codec.decode(packed)[0]
    assert torch.equal(codec.decode_keys(upper, [4, 2]), full_keys[[4, 2]])
    with pytest.raises(KVCodecError, match=r"\[2, 5\)"):
        codec.decode_keys(upper, [1])
    # the resident copy keeps nothing else of the chunk alive
    for name, t in upper.tensors.items():
        assert t.untyped_storage().data_ptr() != packed.tensors[name].untyped_storage().data_ptr()
    again = join_keys(PackedKeys.from_state_dict(upper.state_dict()), rest)
    k2, v2 = codec.decode(again)
    assert torch.equal(k2, full_keys) and torch.equal(v2, codec.decode(packed)[1])
    assert again.nbytes == packed.nbytes


def test_version_1_state_with_flat_key_codes_still_loads():
    from compression.quant import pack_bits, unpack_rows

    k, v = _kv(L=3, T=9, D=8)
    codec = KVCodec(KVCodecConfig(bits=2, value_mode="token", group_size=4, outlier_channels=1))
    packed = codec.encode(k, v)
    state = packed.state_dict()
    rows = packed.tensors["k_codes"]
    per_layer = 3 * 7 * 9
    flat = unpack_rows(rows, 2, per_layer).reshape(-1)
    state["version"] = 1
    state["tensors"] = {**state["tensors"], "k_codes": pack_bits(flat.contiguous(), 2)}
    old = PackedKV.from_state_dict(state)
    assert torch.equal(codec.decode(old)[0], codec.decode(packed)[0])


def test_session_config_carries_the_codec_and_disk_budget():
    from app.engine.config import ConfigError, SessionConfig

    cfg = SessionConfig(kv_bits=2, kv_value_mode="ternary", kv_group_size=64, kv_outlier_channels=1, disk_budget_mb=3)
    bank = cfg.bank_config()
    assert bank.codec == KVCodecConfig(bits=2, value_mode="ternary", group_size=64, outlier_channels=1)
    assert bank.disk_budget_bytes == 3 * 2**20
    with pytest.raises(ConfigError, match="kv_value_mode 'ternary' needs kv_bits"):
        SessionConfig(kv_bits=16, kv_value_mode="ternary")
    with pytest.raises(ConfigError, match="kv_outlier_channels"):
        SessionConfig(kv_outlier_channels=33)
    with pytest.raises(ConfigError, match="disk_budget_mb"):
        SessionConfig(disk_budget_mb=0)
