"""The memory bank: quantized KV chunks in RAM then on disk, searchable by summary (faiss).

Imports torch, numpy, faiss and :mod:`compression` only (never transformers or gradio).

Public API::

    from memory import BankConfig, ChunkMeta, KVChunk, MemoryBank
    bank = MemoryBank(BankConfig(ram_budget_bytes=256 << 20), summary_dim=L * H * D)
    bank.append(KVChunk(meta, keys, values, positions, summary))
    for r in bank.retrieve(query, k=8):   # time order
        r.chunk.keys, r.chunk.meta.t_start, r.score
"""

from memory.bank import BankStats, MemoryBank, Retrieved
from memory.chunk import CHUNK_KINDS, ChunkMeta, KVChunk
from memory.config import INDEX_KINDS, BankConfig
from memory.errors import (
    BankClosed,
    BankConfigError,
    BankCorrupt,
    BankError,
    ChunkCorrupt,
    ChunkNotFound,
    InvalidChunk,
    InvalidQuery,
)
from memory.store import PackedChunk

__all__ = [
    "CHUNK_KINDS",
    "INDEX_KINDS",
    "BankClosed",
    "BankConfig",
    "BankConfigError",
    "BankCorrupt",
    "BankError",
    "BankStats",
    "ChunkCorrupt",
    "ChunkMeta",
    "ChunkNotFound",
    "InvalidChunk",
    "InvalidQuery",
    "KVChunk",
    "MemoryBank",
    "PackedChunk",
    "Retrieved",
]
