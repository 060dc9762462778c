"""Builders of real chunks and banks for the memory tests (no mocks: real codec, real faiss)."""

from __future__ import annotations

import torch

from compression.kvcodec import KVCodecConfig
from memory import BankConfig, ChunkMeta, KVChunk

#: Small but real shapes: L layers, H KV heads, D head dim; S = L * H * D.
L, H, D = 2, 2, 16
S = L * H * D
LOSSLESS = KVCodecConfig(bits=32)


def make_chunk(
    chunk_id: int,
    *,
    t_start: float | None = None,
    duration: float = 0.5,
    n_tokens: int = 4,
    summary: torch.Tensor | None = None,
    dtype: torch.dtype = torch.float32,
    shape: tuple[int, int, int] = (L, H, D),
    mrope: bool = False,
    kind: str = "frame",
    seed: int | None = None,
    **meta_kwargs: object,
) -> KVChunk:
    """A chunk with random KV/summary seeded by ``chunk_id`` (or ``seed``); time ``t_start = chunk_id`` by default."""
    n_layers, n_heads, head_dim = shape
    g = torch.Generator().manual_seed(chunk_id if seed is None else seed)
    keys = torch.randn(n_layers, n_heads, n_tokens, head_dim, generator=g).to(dtype)
    values = torch.randn(n_layers, n_heads, n_tokens, head_dim, generator=g).to(dtype)
    if summary is None:
        summary = torch.randn(n_layers * n_heads * head_dim, generator=g)
    start = float(chunk_id) if t_start is None else t_start
    base = torch.arange(n_tokens, dtype=torch.int64) + chunk_id * n_tokens
    positions = torch.stack([base, base % 7, base % 5]) if mrope else base
    meta = ChunkMeta(
        chunk_id=chunk_id,
        t_start=start,
        t_end=start + duration,
        kind=kind,
        n_tokens=n_tokens,
        frame_indices=(chunk_id,) if kind == "frame" else (),
        **meta_kwargs,
    )
    return KVChunk(meta=meta, keys=keys, values=values, positions=positions, summary=summary.float())


def config(**kwargs: object) -> BankConfig:
    """A BankConfig with a lossless codec unless ``codec`` is given."""
    kwargs.setdefault("codec", LOSSLESS)
    return BankConfig(**kwargs)


def assert_same_packed(a, b) -> None:
    """Two PackedChunks hold bit-identical payloads and metadata."""
    assert a.meta == b.meta
    assert a.packed.config == b.packed.config
    assert a.packed.shape == b.packed.shape and a.packed.dtype == b.packed.dtype
    assert sorted(a.packed.tensors) == sorted(b.packed.tensors)
    for name, t in a.packed.tensors.items():
        u = b.packed.tensors[name]
        assert t.dtype == u.dtype and t.shape == u.shape, name
        # compare the raw bytes: bit-identical, not merely equal as numbers
        assert torch.equal(t.contiguous().view(torch.uint8), u.contiguous().view(torch.uint8)), name
    assert torch.equal(a.positions, b.positions)
    assert torch.equal(a.summary, b.summary)


def section_span(path, name: str) -> tuple[int, int]:
    """``(start, stop)`` byte offsets of a section (``"keys"`` or ``"rest"``) of a format-2 chunk file."""
    import json
    import struct

    data = path.read_bytes()
    _, toc_len, _ = struct.unpack_from("<8sI32s", data)
    body = 44 + toc_len
    for sec in json.loads(data[44:body])["sections"]:
        if sec["name"] == name:
            return body + sec["offset"], body + sec["offset"] + sec["length"]
    raise KeyError(name)


def flip_byte(path, offset: int) -> None:
    """Flip every bit of one byte of a file."""
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))
