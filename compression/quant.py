"""Uniform group quantization and bit packing, the primitives of the KV codec.

Everything here is pure torch and vectorized over all leading axes: a call
handles every layer, head and channel of a chunk at once.

Quantization is asymmetric min/max with round-to-nearest, in groups of ``G``
consecutive elements along the last axis. Each group stores a float16 scale
``s`` and a float16 zero point ``z`` (the group minimum rounded *down* to
float16) and codes ``q`` in ``[0, 2**bits - 1]``; it decodes to ``q * s + z``.
The scale is rounded *up* to float16, so ``[z, z + (2**bits - 1) * s]`` always
covers the group's ``[min, max]`` and no value is clipped. The error of every
element is therefore at most ``s / 2`` (round-to-nearest) plus float32
arithmetic slack, see :func:`group_error_bound`.

Codes are packed little-end first: with 4 bits the first code sits in the low
nibble of a byte; with 2 bits the first of four codes sits in bits 0-1.

Ternary codes (three levels, "1.58 bits") are packed five to a byte in base 3
(``3**5 = 243 <= 256``), 1.6 bits per code, the first code in the lowest digit.
"""

from __future__ import annotations

import torch

#: Bit widths that store integer codes (16 and 32 bits store floats instead).
PACKED_BITS = (8, 4, 2)

#: Relative float32 slack allowed on top of ``scale / 2`` (see :func:`group_error_bound`).
FP32_SLACK = 2.0**-20


#: Levels of a ternary code and codes per packed byte (base 3: ``3**5 = 243 <= 256``).
TERNARY_LEVELS = 3
TRITS_PER_BYTE = 5


def _check_bits(bits: int) -> None:
    if bits not in PACKED_BITS:
        raise ValueError(f"bits must be one of {PACKED_BITS} for packed codes; got {bits!r}")


def packed_numel(n: int, bits: int) -> int:
    """Number of bytes that ``n`` codes of ``bits`` bits occupy once packed."""
    _check_bits(bits)
    per_byte = 8 // bits
    return -(-n // per_byte)


def pack_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack integer codes into bytes.

    Args:
        codes: uint8 tensor of any shape, values in ``[0, 2**bits - 1]``; read in
            row-major order.
        bits: 8, 4 or 2.

    Returns:
        uint8 tensor of shape ``(ceil(codes.numel() * bits / 8),)``, a fresh
        tensor that shares no memory with ``codes``.
    """
    _check_bits(bits)
    if codes.dtype != torch.uint8:
        raise ValueError(f"codes must be uint8; got {codes.dtype}")
    flat = codes.reshape(-1)
    per_byte = 8 // bits
    if per_byte == 1:
        return flat.clone()
    pad = (-flat.numel()) % per_byte
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    slots = flat.view(flat.numel() // per_byte, per_byte)
    out = slots[:, 0].clone()
    for i in range(1, per_byte):  # at most 3 iterations: one per code slot in a byte
        out |= slots[:, i] << (bits * i)
    return out


def unpack_bits(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`.

    Args:
        packed: uint8 tensor of shape ``(packed_numel(n, bits),)``.
        bits: 8, 4 or 2.
        n: number of codes to return.

    Returns:
        uint8 tensor of shape ``(n,)``.
    """
    _check_bits(bits)
    expected = packed_numel(n, bits)
    if packed.dtype != torch.uint8 or packed.dim() != 1 or packed.numel() != expected:
        raise ValueError(
            f"packed codes must be a 1-D uint8 tensor of {expected} bytes for {n} codes of {bits} bits; "
            f"got shape {tuple(packed.shape)} dtype {packed.dtype}"
        )
    if bits == 8:
        return packed.clone()
    shifts = torch.arange(0, 8, bits, dtype=torch.uint8, device=packed.device)
    mask = (1 << bits) - 1
    return ((packed.unsqueeze(-1) >> shifts) & mask).reshape(-1)[:n]


def num_groups(n: int, group_size: int) -> int:
    """Groups of ``group_size`` needed to cover ``n`` elements (the last one may be partial)."""
    return -(-n // group_size)


def _grouped(x: torch.Tensor, group_size: int) -> torch.Tensor:
    """``(..., n)`` -> ``(..., ceil(n / G), G)``; a partial last group is padded by
    repeating its last element, which leaves the group's min and max unchanged."""
    n = x.shape[-1]
    pad = (-n) % group_size
    if pad:
        x = torch.cat([x, x[..., -1:].expand(*x.shape[:-1], pad)], dim=-1)
    return x.reshape(*x.shape[:-1], (n + pad) // group_size, group_size)


def quantize_groups(x: torch.Tensor, bits: int, group_size: int, *,
                    levels: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Quantize along the last axis in groups of ``group_size`` elements.

    Args:
        x: float tensor ``(..., n)`` with finite values of magnitude at most 65504
            (float16's range); computed in float32.
        bits: 8, 4 or 2 (ignored when ``levels`` is given).
        group_size: elements per group ``G``; ``n`` need not be a multiple of it.
        levels: number of steps above the zero point (codes in ``[0, levels]``); default
            ``2**bits - 1``. ``levels=2`` gives ternary codes (three levels).

    Returns:
        ``(codes, scale, zero)``: codes uint8 ``(..., n)``; scale and zero float16
        ``(..., ceil(n / G))``. Element ``i`` of a row belongs to group ``i // G``
        and decodes to ``codes * scale + zero`` (see :func:`dequantize_groups`).
    """
    if levels is None:
        _check_bits(bits)
        levels = (1 << bits) - 1
    n = x.shape[-1]
    g = _grouped(x.float(), group_size)  # (..., nG, G) float32
    lo = g.amin(dim=-1)
    hi = g.amax(dim=-1)
    # zero point: the minimum rounded down to float16, so nothing falls below it.
    zero = lo.to(torch.float16)
    zero = torch.where(zero.float() > lo, torch.nextafter(zero, torch.full_like(zero, float("-inf"))), zero)
    z32 = zero.float()
    # scale: rounded up to float16, so z + levels * scale covers the maximum.
    exact = (hi - z32) / levels
    scale = exact.to(torch.float16)
    scale = torch.where(scale.float() < exact, torch.nextafter(scale, torch.full_like(scale, float("inf"))), scale)
    s32 = scale.float()
    s_safe = torch.where(s32 > 0, s32, torch.ones_like(s32))  # a zero scale means a constant group equal to z
    codes = (g - z32.unsqueeze(-1)).div_(s_safe.unsqueeze(-1)).round_().clamp_(0, levels).to(torch.uint8)
    codes = codes.reshape(*codes.shape[:-2], g.shape[-2] * group_size)[..., :n]
    return codes, scale, zero


def expand_groups(stat: torch.Tensor, group_size: int, n: int) -> torch.Tensor:
    """Per-group statistic ``(..., nG)`` -> per-element ``(..., n)`` (a broadcast, then a copy)."""
    expanded = stat.unsqueeze(-1).expand(*stat.shape, group_size)
    return expanded.reshape(*stat.shape[:-1], stat.shape[-1] * group_size)[..., :n]


def dequantize_groups(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group_size: int) -> torch.Tensor:
    """Inverse of :func:`quantize_groups`, in float32.

    Args:
        codes: uint8 ``(..., n)``.
        scale, zero: float16 ``(..., ceil(n / G))``.
        group_size: ``G``.

    Returns:
        float32 ``(..., n)``.
    """
    n = codes.shape[-1]
    if scale.shape != zero.shape or scale.shape[:-1] != codes.shape[:-1] or scale.shape[-1] != num_groups(n, group_size):
        raise ValueError(
            f"scale/zero shape {tuple(scale.shape)}/{tuple(zero.shape)} does not fit codes {tuple(codes.shape)} "
            f"with group_size {group_size}"
        )
    s = expand_groups(scale.float(), group_size, n)
    z = expand_groups(zero.float(), group_size, n)
    return torch.addcmul(z, codes.float(), s)


def group_error_bound(scale: torch.Tensor, zero: torch.Tensor, bits: int, *, levels: int | None = None) -> torch.Tensor:
    """Maximum absolute decode error of each group, in float32.

    Round-to-nearest onto the grid ``z + q * s`` errs by at most ``s / 2`` for
    every value inside ``[z, z + levels * s]``, which covers the group by
    construction. float32 arithmetic (``(x - z) / s`` when encoding,
    ``q * s + z`` when decoding) adds at most a few float32 ulps of the group's
    magnitude; the bound allows ``2**-20 * (|z| + levels * s)`` for that.

    Args:
        scale, zero: float16 ``(...)`` as returned by :func:`quantize_groups`.
        bits: 8, 4 or 2 (ignored when ``levels`` is given).
        levels: steps above the zero point, as given to :func:`quantize_groups`.

    Returns:
        float32 ``(...)``.
    """
    if levels is None:
        _check_bits(bits)
        levels = (1 << bits) - 1
    s = scale.float()
    return s / 2 + FP32_SLACK * (zero.float().abs() + levels * s)


def fp16_rounding_bound(stored: torch.Tensor) -> torch.Tensor:
    """Maximum error of rounding any real value to the given float16 values.

    A value that rounds to float16 ``y`` is within half a float16 spacing of it:
    at most ``|y| * 2**-11`` for normal numbers and ``2**-25`` in the subnormal
    range.

    Args:
        stored: float16 tensor of any shape.

    Returns:
        float32 tensor of the same shape.
    """
    return torch.clamp(stored.float().abs() * 2.0**-11, min=2.0**-25)


def trit_packed_numel(n: int) -> int:
    """Bytes that ``n`` ternary codes occupy once packed (five per byte)."""
    return -(-n // TRITS_PER_BYTE)


def pack_trits(codes: torch.Tensor) -> torch.Tensor:
    """Pack ternary codes (uint8 in ``{0, 1, 2}``, any shape, row-major) five to a byte in base 3.

    Returns:
        uint8 ``(ceil(codes.numel() / 5),)``, a fresh tensor.
    """
    if codes.dtype != torch.uint8:
        raise ValueError(f"codes must be uint8; got {codes.dtype}")
    flat = codes.reshape(-1)
    pad = (-flat.numel()) % TRITS_PER_BYTE
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    digits = flat.view(-1, TRITS_PER_BYTE).to(torch.int16)
    weights = torch.tensor([1, 3, 9, 27, 81], dtype=torch.int16, device=codes.device)
    return (digits * weights).sum(dim=-1).to(torch.uint8)


def unpack_trits(packed: torch.Tensor, n: int) -> torch.Tensor:
    """Inverse of :func:`pack_trits`: uint8 ``(n,)`` codes in ``{0, 1, 2}``."""
    expected = trit_packed_numel(n)
    if packed.dtype != torch.uint8 or packed.dim() != 1 or packed.numel() != expected:
        raise ValueError(
            f"packed ternary codes must be a 1-D uint8 tensor of {expected} bytes for {n} codes; "
            f"got shape {tuple(packed.shape)} dtype {packed.dtype}"
        )
    weights = torch.tensor([1, 3, 9, 27, 81], dtype=torch.int16, device=packed.device)
    digits = (packed.to(torch.int16).unsqueeze(-1) // weights) % TERNARY_LEVELS
    return digits.to(torch.uint8).reshape(-1)[:n]


def pack_rows(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack each row of ``codes (R, n)`` on its own: ``(R, packed_numel(n, bits))`` uint8.

    Rows start on a byte boundary, so a range of rows (layers) can be sliced without unpacking.
    """
    rows = codes.shape[0]
    n = codes.shape[1] if codes.dim() == 2 else 0
    width = packed_numel(n, bits)
    per_byte = 8 // bits
    pad = width * per_byte - n
    if pad:
        codes = torch.cat([codes, codes.new_zeros(rows, pad)], dim=1)
    return pack_bits(codes.contiguous(), bits).view(rows, width)


def unpack_rows(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """Inverse of :func:`pack_rows`: uint8 ``(R, n)`` from ``(R, packed_numel(n, bits))``."""
    rows = packed.shape[0]
    width = packed_numel(n, bits)
    if packed.dtype != torch.uint8 or packed.dim() != 2 or packed.shape[1] != width:
        raise ValueError(
            f"packed rows must be a (R, {width}) uint8 tensor for {n} codes of {bits} bits; "
            f"got shape {tuple(packed.shape)} dtype {packed.dtype}"
        )
    if bits == 8:
        return packed.clone()
    shifts = torch.arange(0, 8, bits, dtype=torch.uint8, device=packed.device)
    mask = (1 << bits) - 1
    return ((packed.unsqueeze(-1) >> shifts) & mask).reshape(rows, -1)[:, :n]
