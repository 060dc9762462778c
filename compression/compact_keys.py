"""Compact rerank keys: what the late-interaction rerank scores of a chunk, small enough for RAM.

A rerank scores a question's per-token (pre-RoPE) queries against a chunk's keys of the upper
layers. Stored KV keys are post-RoPE, so scoring them means un-rotating every candidate's keys
for every question. :class:`CompactKeys` holds instead the chunk's **pre-RoPE** keys of the
(layer, KV head) pairs the rerank scores, content tokens only, quantized **per channel** (one
float16 scale and zero point per pair and channel over the chunk's tokens: pre-RoPE key channels
have steady magnitudes across tokens, the structure per-channel quantization keeps) to 8, 4 or 2
bits. Scoring never dequantizes:
the scale is folded into the query and the zero point into a bias, the codes become floats by one
table lookup, and one batched matmul over the (layer, head) pairs scores a chunk. Nothing is
un-rotated.

Codes are packed per (layer, head) pair (each pair's ``D * T`` codes start on a byte).

Nothing here depends on a model: the caller hands in keys already un-rotated.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from compression.quant import pack_rows, packed_numel, quantize_groups, unpack_rows
from streaming.checks import check_choice

#: Bits a compact rerank key may use (codes packed 1, 2 or 4 to a byte).
COMPACT_BITS: tuple[int, ...] = (8, 4, 2)
STATE_FORMAT = "livesight.compact_keys"
STATE_VERSION = 1


class CompactKeysError(ValueError):
    """Bad input keys, a bad bit width or a malformed compact form."""


Pairs = tuple[tuple[int, int], ...]


def as_pairs(pairs) -> Pairs:
    """``[(layer, head), ...]`` as a tuple of int pairs, checked (non-empty, no repeats, non-negative)."""
    try:
        out = tuple((int(layer), int(head)) for layer, head in pairs)
    except (TypeError, ValueError):
        raise CompactKeysError(f"pairs must be (layer, head) int pairs; got {pairs!r}") from None
    if not out or len(set(out)) != len(out) or any(layer < 0 or head < 0 for layer, head in out):
        raise CompactKeysError(f"pairs must be distinct non-negative (layer, head) pairs, at least one; got {out!r}")
    return out


@dataclass(frozen=True, eq=False)
class CompactKeys:
    """Pre-RoPE keys of some (layer, KV head) pairs of one chunk's content tokens, per-channel quantized.

    Attributes:
        bits: 8, 4 or 2.
        pairs: the ``P`` (layer, head) pairs held, in the order of the first axis.
        n_tokens: ``T``, the chunk's content tokens.
        head_dim: ``D``.
        codes: uint8 ``(P, packed_numel(D * T, bits))``: each pair's codes in ``(D, T)`` order,
            packed on their own (a subset of pairs is decoded without the others).
        scale, zero: float16 ``(P, D, 1)``: one per pair and channel.
    """

    bits: int
    pairs: Pairs
    n_tokens: int
    head_dim: int
    codes: torch.Tensor = field(repr=False)
    scale: torch.Tensor = field(repr=False)
    zero: torch.Tensor = field(repr=False)

    def __post_init__(self) -> None:
        check_choice("CompactKeys.bits", self.bits, COMPACT_BITS, error=CompactKeysError)
        object.__setattr__(self, "pairs", as_pairs(self.pairs))
        for name in ("n_tokens", "head_dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise CompactKeysError(f"CompactKeys.{name} must be an int >= 1; got {value!r}")
        P, T, D = len(self.pairs), self.n_tokens, self.head_dim
        want = {"codes": ((P, packed_numel(D * T, self.bits)), torch.uint8),
                "scale": ((P, D, 1), torch.float16), "zero": ((P, D, 1), torch.float16)}
        for name, (w_shape, w_dtype) in want.items():
            t = getattr(self, name)
            if not isinstance(t, torch.Tensor) or tuple(t.shape) != w_shape or t.dtype != w_dtype:
                got = f"{tuple(t.shape)} {t.dtype}" if isinstance(t, torch.Tensor) else type(t).__name__
                raise CompactKeysError(f"CompactKeys.{name} must be {w_shape} {w_dtype}; got {got}")

    @property
    def nbytes(self) -> int:
        """True bytes held: codes, scales and zero points."""
        return sum(t.numel() * t.element_size() for t in (self.codes, self.scale, self.zero))

    def bits_per_element(self) -> float:
        """Stored bits per key element held, scales and zero points included."""
        return self.nbytes * 8 / (len(self.pairs) * self.n_tokens * self.head_dim)

    def decode_into(self, out: torch.Tensor) -> None:
        """Dequantize every pair into ``out``: float32 ``(P, D, T)`` (may be a strided view)."""
        T, D = self.n_tokens, self.head_dim
        codes = unpack_rows(self.codes, self.bits, D * T).view(-1, D, T)
        torch.addcmul(self.zero.float(), codes.float(), self.scale.float(), out=out)

    def decode(self) -> torch.Tensor:
        """float32 pre-RoPE keys ``(P, T, D)`` (as quantized)."""
        out = torch.empty(len(self.pairs), self.head_dim, self.n_tokens, dtype=torch.float32)
        self.decode_into(out)
        return out.transpose(-1, -2).contiguous()

    def state_dict(self) -> dict[str, Any]:
        """Plain dict for ``torch.save`` / ``torch.load(weights_only=True)``."""
        return {"format": STATE_FORMAT, "version": STATE_VERSION, "bits": self.bits,
                "pairs": [list(p) for p in self.pairs], "n_tokens": self.n_tokens, "head_dim": self.head_dim,
                "codes": self.codes, "scale": self.scale, "zero": self.zero}

    @classmethod
    def from_state_dict(cls, state: Any) -> CompactKeys:
        """Inverse of :meth:`state_dict`; raises :class:`CompactKeysError` on anything malformed."""
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT or state.get("version") != STATE_VERSION:
            raise CompactKeysError(f"compact keys state must be a dict of format {STATE_FORMAT!r} version {STATE_VERSION}")
        try:
            return cls(bits=state["bits"], pairs=state["pairs"], n_tokens=state["n_tokens"],
                       head_dim=state["head_dim"], codes=state["codes"], scale=state["scale"], zero=state["zero"])
        except (KeyError, TypeError) as exc:
            raise CompactKeysError(f"compact keys state is malformed: {exc!r}") from None


def encode_compact(keys: torch.Tensor, bits: int, pairs) -> CompactKeys:
    """Quantize pre-RoPE keys per channel.

    Args:
        keys: ``(P, T, D)`` floating pre-RoPE keys of the ``pairs`` (content tokens only), finite,
            within float16's range.
        bits: 8, 4 or 2.
        pairs: the ``P`` (layer, head) pairs, in the order of ``keys``' first axis.

    Raises:
        CompactKeysError: wrong shape, type or values, or a bad bit width.
    """
    check_choice("compact bits", bits, COMPACT_BITS, error=CompactKeysError)
    pairs = as_pairs(pairs)
    if not isinstance(keys, torch.Tensor) or keys.ndim != 3 or not keys.is_floating_point() or keys.numel() == 0:
        got = f"{tuple(keys.shape)} {keys.dtype}" if isinstance(keys, torch.Tensor) else type(keys).__name__
        raise CompactKeysError(f"compact keys need a non-empty floating (P, T, D) tensor; got {got}")
    if keys.shape[0] != len(pairs):
        raise CompactKeysError(f"compact keys hold {keys.shape[0]} rows for {len(pairs)} pairs")
    k = keys.detach().to("cpu", torch.float32)
    peak = float(k.abs().amax())
    if not peak <= 65504.0:
        raise CompactKeysError(f"compact keys must be finite and within float16's range; got values up to {peak:g}")
    P, T, D = (int(s) for s in k.shape)
    with torch.no_grad():
        codes, scale, zero = quantize_groups(k.transpose(-1, -2), bits, T)  # (P, D, T); stats (P, D, 1)
        packed = pack_rows(codes.reshape(P, -1), bits)
    return CompactKeys(bits=bits, pairs=pairs, n_tokens=T, head_dim=D, codes=packed, scale=scale.contiguous(),
                       zero=zero.contiguous())


_LUTS: dict[int, torch.Tensor] = {}


def _lut(bits: int) -> torch.Tensor:
    """``(256, 8 // bits)`` float32: the codes a packed byte holds, first code in the low bits."""
    lut = _LUTS.get(bits)
    if lut is None:
        per_byte = 8 // bits
        byte = torch.arange(256, dtype=torch.int64)
        shifts = torch.arange(per_byte, dtype=torch.int64) * bits
        lut = ((byte[:, None] >> shifts) & ((1 << bits) - 1)).float().contiguous()
        _LUTS[bits] = lut
    return lut


def _codes_float(item: CompactKeys) -> torch.Tensor:
    """The item's codes as float32 ``(P, D, T)`` in one table lookup (no unpack passes)."""
    P, T, D = len(item.pairs), item.n_tokens, item.head_dim
    lut = _lut(item.bits)
    codes = lut.index_select(0, item.codes.reshape(-1).to(torch.int32)).view(P, -1)
    return codes[:, : D * T].view(P, D, T)


def compact_scores(query: torch.Tensor, items: Sequence[CompactKeys]) -> list[float]:
    """Late-interaction scores of chunks from their compact keys.

    Args:
        query: ``(P, Tq, D)`` float pre-RoPE query tokens of the question for the items' pairs (a
            query head's row for each (layer, KV head) pair: grouped-query heads are the caller's).
        items: compact keys of the chunks, all holding the same pairs.

    Returns:
        one score per item: mean over pairs and query tokens of the max over the chunk's tokens of
        ``q . k / sqrt(D)``, with ``k = code * scale + zero`` per channel. The scale is folded into
        the query and the zero point into a bias (``q . k = (q * scale) . code + q . zero``), so the
        codes are never dequantized: one table lookup turns them into floats, one batched matmul
        scores them.
    """
    if not items:
        return []
    pairs, D = items[0].pairs, items[0].head_dim
    if any(it.pairs != pairs or it.head_dim != D for it in items):
        raise CompactKeysError("compact_scores: every chunk's compact keys must hold the same pairs and head dim")
    q = query.float()
    if q.ndim != 3 or q.shape[0] != len(pairs) or q.shape[2] != D:
        raise CompactKeysError(f"compact_scores: query must be (P={len(pairs)}, Tq, D={D}); got {tuple(query.shape)}")
    scale = D ** -0.5
    scores: list[float] = []
    with torch.no_grad():
        for it in items:
            s = it.scale.float().transpose(1, 2)  # (P, 1, D)
            bias = torch.bmm(q, it.zero.float())  # (P, Tq, 1)
            att = torch.baddbmm(bias, q * s, _codes_float(it))  # (P, Tq, T)
            scores.append(float(att.amax(dim=-1).mean()) * scale)
    return scores
