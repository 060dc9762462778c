"""Compact rerank keys: per-channel quantization of pre-RoPE keys, and their batched late-interaction scoring."""

from __future__ import annotations

import pytest
import torch

from compression.compact_keys import (
    COMPACT_BITS,
    CompactKeys,
    CompactKeysError,
    compact_scores,
    encode_compact,
)
from compression.quant import group_error_bound

PAIRS = ((2, 0), (2, 1), (3, 1))


def _keys(t: int, seed: int = 0, d: int = 16) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # channels of very different magnitudes, as pre-RoPE keys have
    return torch.randn(len(PAIRS), t, d, generator=g) * torch.logspace(-1, 1, d)


@pytest.mark.parametrize("bits", COMPACT_BITS)
def test_round_trip_within_half_a_step_per_channel(bits):
    k = _keys(40)
    ck = encode_compact(k, bits, PAIRS)
    back = ck.decode()
    assert back.shape == k.shape and ck.pairs == PAIRS and ck.n_tokens == 40
    bound = group_error_bound(ck.scale, ck.zero, bits).transpose(-1, -2)  # (P, 1, D)
    assert bool(((back - k).abs() <= bound + 1e-6).all())
    # true bytes: codes + a float16 scale and zero per pair and channel
    assert ck.nbytes == len(PAIRS) * (-(-16 * 40 * bits // 8)) + 2 * 2 * len(PAIRS) * 16
    assert ck.bits_per_element() == pytest.approx(ck.nbytes * 8 / k.numel())


def test_state_dict_round_trip_and_malformed_states():
    ck = encode_compact(_keys(7), 4, PAIRS)
    again = CompactKeys.from_state_dict(ck.state_dict())
    assert again.pairs == ck.pairs and torch.equal(again.codes, ck.codes) and torch.equal(again.scale, ck.scale)
    bad = ck.state_dict()
    bad["codes"] = bad["codes"][:, :-1]
    with pytest.raises(CompactKeysError, match="codes"):
        CompactKeys.from_state_dict(bad)
    with pytest.raises(CompactKeysError, match="format"):
        CompactKeys.from_state_dict({"format": "other"})
    missing = ck.state_dict()
    del missing["zero"]
    with pytest.raises(CompactKeysError, match="malformed"):
        CompactKeys.from_state_dict(missing)


def test_bad_input_is_refused_with_the_problem_named():
    with pytest.raises(CompactKeysError, match="bits"):
        encode_compact(_keys(4), 3, PAIRS)
    with pytest.raises(CompactKeysError, match="rows for 3 pairs"):
        encode_compact(_keys(4)[:2], 4, PAIRS)
    with pytest.raises(CompactKeysError, match=r"\(P, T, D\)"):
        encode_compact(torch.zeros(3, 4), 4, PAIRS)
    with pytest.raises(CompactKeysError, match="float16"):
        encode_compact(torch.full((3, 4, 16), float("nan")), 4, PAIRS)
    with pytest.raises(CompactKeysError, match="distinct"):
        encode_compact(_keys(4), 4, ((1, 0), (1, 0), (2, 0)))


@pytest.mark.parametrize("bits", COMPACT_BITS)
def test_scores_equal_a_reference_on_the_dequantized_keys(bits):
    g = torch.Generator().manual_seed(3)
    items = [encode_compact(_keys(n, seed=n), bits, PAIRS) for n in (5, 1, 12, 9, 30)]
    q = torch.randn(len(PAIRS), 6, 16, generator=g)
    got = compact_scores(q, items)
    ref = [float((torch.einsum("pqd,ptd->pqt", q, it.decode()).amax(-1) * 16 ** -0.5).mean()) for it in items]
    assert got == pytest.approx(ref, rel=1e-5, abs=1e-6)
    assert compact_scores(q, []) == []
    with pytest.raises(CompactKeysError, match="query must be"):
        compact_scores(q[:2], items)
    other = encode_compact(_keys(5)[:2], 4, PAIRS[:2])
    with pytest.raises(CompactKeysError, match="same pairs"):
        compact_scores(q, [items[0], other])
