"""The memory bank: quantized KV chunks in RAM then on disk, searchable by summary (faiss).

Imports torch, numpy, faiss and :mod:`compression` only (never transformers or gradio).

Public API::

    from memory import BankConfig, ChunkMeta, KVChunk, MemoryBank
    bank = MemoryBank(BankConfig(ram_budget_bytes=256 << 20), summary_dim=L * H * D)
    bank.append(KVChunk(meta, keys, values, positions, summary))
    for r in bank.retrieve(query, k=8):   # time order
        r.chunk.keys, r.chunk.meta.t_start, r.score
    # two stages without fetching whole chunks: summary scores, then some layers' keys, then k chunks
    hits = bank.search(query, 64)                       # [(meta, score)], best first, no KV read
    ck = bank.keys(hits[0][0].chunk_id, layers=range(15, 30))  # ChunkKeys: keys (15, H, T, D)
    chunk = bank.get(hits[0][0].chunk_id)
"""

from memory.bank import BankStats, MemoryBank, Retrieved
from memory.chunk import CHUNK_KINDS, ChunkKeys, ChunkMeta, KVChunk
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
    "ChunkKeys",
    "ChunkMeta",
    "ChunkNotFound",
    "InvalidChunk",
    "InvalidQuery",
    "KVChunk",
    "MemoryBank",
    "PackedChunk",
    "Retrieved",
]
