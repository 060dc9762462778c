"""The memory bank: quantized KV chunks in RAM then on disk, found by a faiss summary index.

Life of a chunk: :meth:`MemoryBank.append` quantizes its KV with the configured codec and
keeps the packed chunk in RAM; its summary goes into the index. When the RAM tier exceeds
``ram_budget_bytes``, the oldest chunks (in append order) are written to
``disk_dir/chunks/<id>.kvc`` and dropped from RAM. :meth:`MemoryBank.retrieve` ranks
summaries by inner product with a query, loads the top ``k`` chunks from whichever tier holds
them (whole-chunk disk reads are not cached), dequantizes them and returns them in time order.
Retention by stream age deletes chunks from every tier. :meth:`MemoryBank.save` makes the
directory a self-contained saved bank that :meth:`MemoryBank.open` reopens (and, when its
manifest is lost or damaged, recovers from the chunk files, which carry their own metadata).

Resident keys: when a chunk leaves RAM for disk, the packed keys of its upper layers (what a
rerank scores, :class:`~compression.kvcodec.PackedKeys`) stay in RAM, so
:meth:`MemoryBank.keys` scores candidates without touching disk; only the final ``get`` reads
files. Their bytes count in ``bytes_ram`` and under ``ram_budget_bytes`` (the oldest copies are
dropped first when the budget is short; those chunks' keys are then read from the file's keys
section alone).

Compact rerank keys: once the rerank has told the bank its (layer, head) pairs and the model's
un-rotation (:meth:`MemoryBank.set_rerank_form`, done by the first rerank), every chunk also gets a
compact form (:class:`~compression.compact_keys.CompactKeys`:
its pre-RoPE keys of those pairs, content tokens only, ``compact_keys_bits`` per channel), built
from its float keys on append. A rerank scores candidates from it in one batched pass, without
un-rotating and without touching disk (:meth:`MemoryBank.compact`); a chunk without one (appended
before the first rerank, reopened from an older save, or dropped by the budget) gets it built from
its stored keys on its first rerank (for a chunk on disk only the file's keys section is read).
Compact forms count in ``bytes_ram`` and under ``ram_budget_bytes`` and are dropped last (oldest
first), after whole RAM chunks spilled and resident packed keys went. ``save()`` writes them to
``compact/<segment>.pt`` (only segments that changed) and ``open()`` restores them.

Disk budget: before a chunk file is written, the bank makes room under ``disk_budget_bytes``.
Past :data:`CONSOLIDATE_AT` of the budget, the oldest chunks are consolidated (requantized with
``consolidate_codec``; a run of neighbouring frame chunks of a static scene merged into one, see
:mod:`memory.consolidate`); when the budget itself would be exceeded, the oldest chunks are
deleted. No file write ever takes the chunk files past the budget.

Disk layout (``disk_dir``)::

    chunks/000000000042.kvc   one file per chunk (see memory.store), written atomically
    summaries.npy             float32 (N, S) summaries, rows in manifest chunk order (save())
    index.faiss               the faiss index (save())
    compact/000042.pt         compact rerank keys of chunk ids [42 * 4096, 43 * 4096) (save())
    manifest.json             config, summary_dim, chunk metadata + sha256 per file (save(); written last)

Thread safety: one lock guards all state. File reads, checksums and dequantization run
outside it, so a retrieval does not stall appends for long; ``save()`` holds it throughout.
"""

from __future__ import annotations

import bisect
import hashlib
import heapq
import io
import json
import logging
import os
import shutil
import tempfile
import threading
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from compression.compact_keys import CompactKeys, CompactKeysError, as_pairs, encode_compact
from compression.kvcodec import KVCodec, KVCodecError, PackedKeys, split_keys
from memory.chunk import ChunkKeys, ChunkMeta, KVChunk, content_mask, validate_chunk
from memory.config import BankConfig
from memory.consolidate import can_merge, consolidation_level, mark_consolidated, merge_chunks
from memory.errors import (
    BankClosed,
    BankCorrupt,
    BankError,
    ChunkCorrupt,
    ChunkNotFound,
    InvalidChunk,
    InvalidQuery,
)
from memory.index import SummaryIndex, new_index, read_index
from memory.store import (
    PackedChunk,
    atomic_file,
    atomic_write,
    encode_chunk,
    key_split_layer,
    read_chunk,
    read_chunk_keys,
    recover_chunk,
    tensor_nbytes,
)

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
SUMMARIES = "summaries.npy"
INDEX_FILE = "index.faiss"
CHUNK_DIR = "chunks"
COMPACT_DIR = "compact"
#: Chunk ids per compact-keys file (``compact/<id // COMPACT_SEGMENT>.pt``): a save rewrites only
#: the files whose chunks changed.
COMPACT_SEGMENT = 4096
COMPACT_FORMAT = "livesight.compact_segment"
MANIFEST_FORMAT = 1
#: Rows per block when streaming summaries to or from disk.
_ROWS = 2048
#: Fraction of ``disk_budget_bytes`` past which the oldest chunks are consolidated (the rest of
#: the budget is the headroom a consolidated file is written into before its sources go).
CONSOLIDATE_AT = 0.9
#: Suffix a damaged manifest is renamed to when a bank is recovered from its chunk files.
DAMAGED_SUFFIX = ".damaged"


@dataclass(frozen=True)
class Retrieved:
    """One retrieval result.

    Attributes:
        chunk: the chunk, dequantized (KV in the dtype it was appended with unless asked otherwise).
        score: inner product of the chunk's summary with the query.
    """

    chunk: KVChunk
    score: float


@dataclass(frozen=True)
class BankStats:
    """A snapshot of the bank's counters.

    Attributes:
        chunks: live chunks.
        chunks_ram: chunks with a copy in the RAM tier.
        chunks_disk: chunks with a file on disk (after ``save()`` a chunk can be in both tiers).
        bytes_ram: bytes of the RAM tier (packed KV + positions + summary of RAM chunks, plus the
            resident keys of chunks on disk), what ``ram_budget_bytes`` limits.
        bytes_disk: bytes of chunk files on disk.
        index_bytes: approximate RAM of the faiss index (it holds every summary).
        spills: chunks moved from RAM to disk because of the budget.
        disk_reads: chunk files read (retrieval, get).
        evicted_retention: chunks deleted by retention.
        corrupt_chunks: distinct chunks found corrupt or missing on disk.
        bits_per_element: stored bits per K/V element over live chunks, codec metadata included.
        appended: chunks appended over the bank's life in this process.
        ram_budget_bytes: the configured budget (``None`` = unlimited).
        chunks_resident_keys: chunks whose upper-layer keys are resident in RAM apart from a
            whole RAM copy (chunks on disk).
        bytes_resident_keys: bytes of those resident keys (included in ``bytes_ram``).
        key_reads_ram: rerank key reads served from RAM (a whole RAM chunk or resident keys).
        key_reads_disk: rerank key reads that read a file's keys section.
        disk_budget_bytes: the configured disk budget (``None`` = unbounded).
        consolidated: chunks consolidated (requantized, maybe merged) because of the disk budget.
        merged: chunks merged into a neighbour on consolidation (no longer separate chunks).
        deleted_budget: chunks deleted because of the disk budget.
        chunks_compact: chunks with compact rerank keys in RAM.
        bytes_compact: bytes of those compact keys (included in ``bytes_ram``).
        key_reads_compact: rerank reads served by a compact form.
        compact_built: compact forms built from stored keys on a rerank (they were missing).
        compact_dropped: compact forms dropped because of the RAM budget.
        stream_s: stream time spanned by live chunks, seconds.
        bytes_per_hour: bytes per hour of that stream time, per tier: ``"ram"``, ``"disk"``,
            ``"resident_keys"`` (0 when no stream time is spanned).
    """

    chunks: int
    chunks_ram: int
    chunks_disk: int
    bytes_ram: int
    bytes_disk: int
    index_bytes: int
    spills: int
    disk_reads: int
    evicted_retention: int
    corrupt_chunks: int
    bits_per_element: float
    appended: int
    ram_budget_bytes: int | None
    chunks_resident_keys: int = 0
    bytes_resident_keys: int = 0
    key_reads_ram: int = 0
    key_reads_disk: int = 0
    disk_budget_bytes: int | None = None
    consolidated: int = 0
    merged: int = 0
    deleted_budget: int = 0
    chunks_compact: int = 0
    bytes_compact: int = 0
    key_reads_compact: int = 0
    compact_built: int = 0
    compact_dropped: int = 0
    stream_s: float = 0.0
    bytes_per_hour: dict[str, float] | None = None


@dataclass(frozen=True)
class _DiskEntry:
    path: Path
    sha256: str
    size: int


def _remove_bank_files(directory: str, whole: bool) -> None:
    """Delete what a non-persistent bank wrote: the whole directory, or only its own files."""
    if whole:
        shutil.rmtree(directory, ignore_errors=True)
        return
    root = Path(directory)
    shutil.rmtree(root / CHUNK_DIR, ignore_errors=True)
    shutil.rmtree(root / COMPACT_DIR, ignore_errors=True)
    for name in (MANIFEST, SUMMARIES, INDEX_FILE):
        try:
            (root / name).unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("could not remove %s: %s", root / name, exc)


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class MemoryBank:
    """Tiered, searchable store of quantized KV chunks (see the module docstring).

    Args:
        config: storage, budget, retention and index settings.
        summary_dim: ``S``, the length of every chunk summary and query (``L * H * D``).
    """

    def __init__(self, config: BankConfig, summary_dim: int) -> None:
        if not isinstance(config, BankConfig):
            raise BankError(f"config must be a BankConfig; got {type(config).__name__}")
        self._init_state(config, summary_dim)
        if config.disk_dir is not None:
            self._claim_dir(Path(config.disk_dir))

    # ------------------------------------------------------------------ set-up
    def _init_state(self, config: BankConfig, summary_dim: int) -> None:
        if isinstance(summary_dim, bool) or not isinstance(summary_dim, int) or summary_dim < 1:
            raise BankError(f"summary_dim must be an int >= 1; got {summary_dim!r}")
        self._config = config
        self._dim = summary_dim
        self._codec = KVCodec(config.codec)
        self._lock = threading.RLock()
        self._closed = False
        self._dir: Path | None = None
        self._finalizer: weakref.finalize | None = None
        self._index: SummaryIndex = new_index(config, summary_dim)
        self._metas: dict[int, ChunkMeta] = {}
        self._order: list[tuple[float, int]] = []  # (t_start, chunk_id), sorted
        self._expiry: list[tuple[float, int]] = []  # heap of (t_end, chunk_id)
        self._ram: OrderedDict[int, PackedChunk] = OrderedDict()  # append order = spill order
        self._disk: dict[int, _DiskEntry] = {}
        self._elements: dict[int, tuple[int, float]] = {}  # id -> (K+V elements, stored bits)
        self._corrupt: set[int] = set()
        self._ram_bytes = 0
        self._disk_bytes = 0
        self._total_elements = 0
        self._total_bits = 0.0
        self._newest_t_end = float("-inf")
        self._spills = 0
        self._disk_reads = 0
        self._evicted = 0
        self._corrupt_seen = 0
        self._appended = 0
        self._dirty = False
        # chunk id -> (upper-layer packed keys, positions), oldest first (the order they are dropped in)
        self._resident: OrderedDict[int, tuple[PackedKeys, torch.Tensor]] = OrderedDict()
        self._resident_bytes = 0
        self._fresh: list[tuple[float, int]] = []  # heap of (t_start, id): on disk, not yet consolidated
        self._key_reads_ram = 0
        self._key_reads_disk = 0
        self._consolidated = 0
        self._merged = 0
        self._deleted_budget = 0
        # compact rerank keys: chunk id -> CompactKeys, oldest first (the order they are dropped in)
        self._compact: OrderedDict[int, CompactKeys] = OrderedDict()
        self._compact_bytes = 0
        self._form: tuple[Any, tuple[tuple[int, int], ...]] | None = None  # (un-rotation, pairs)
        self._compact_dirty: set[int] = set()  # segments to rewrite on save()
        self._compact_saved: dict[int, str] = {}  # segment -> sha256 of its file
        self._key_reads_compact = 0
        self._compact_built = 0
        self._compact_dropped = 0
        self.recovered: dict[str, Any] | None = None  # set by open() when the manifest was damaged

    def _claim_dir(self, directory: Path) -> None:
        """Use ``directory`` for a new bank: create it, or check an existing one holds no bank."""
        created = False
        try:
            if directory.exists():
                if not directory.is_dir():
                    raise BankError(f"BankConfig.disk_dir {directory} exists and is not a directory")
                chunks = directory / CHUNK_DIR
                if (directory / MANIFEST).exists() or (chunks.is_dir() and any(chunks.iterdir())):
                    raise BankError(
                        f"BankConfig.disk_dir {directory} already holds a memory bank; "
                        "reopen it with MemoryBank.open() or choose an empty directory"
                    )
            else:
                directory.mkdir(parents=True)
                created = True
            (directory / CHUNK_DIR).mkdir(exist_ok=True)
        except OSError as exc:
            raise BankError(f"cannot use BankConfig.disk_dir {directory}: {exc}") from exc
        self._dir = directory
        if not self._config.persist:
            self._finalizer = weakref.finalize(self, _remove_bank_files, str(directory), created)

    def _ensure_dir(self) -> Path:
        if self._dir is None:  # the private temporary directory, made on first need
            path = Path(tempfile.mkdtemp(prefix="livesight-memory-"))
            (path / CHUNK_DIR).mkdir()
            self._dir = path
            self._finalizer = weakref.finalize(self, _remove_bank_files, str(path), True)
        return self._dir

    # ------------------------------------------------------------------ properties
    @property
    def config(self) -> BankConfig:
        return self._config

    @property
    def summary_dim(self) -> int:
        return self._dim

    @property
    def directory(self) -> Path | None:
        """The disk tier's directory (``None`` until a private temporary one is needed)."""
        return self._dir

    @property
    def closed(self) -> bool:
        return self._closed

    def __len__(self) -> int:
        with self._lock:
            return len(self._metas)

    def __contains__(self, chunk_id: object) -> bool:
        with self._lock:
            return chunk_id in self._metas

    def __enter__(self) -> MemoryBank:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise BankClosed("the memory bank is closed")

    # ------------------------------------------------------------------ append
    def append(self, chunk: KVChunk) -> None:
        """Quantize ``chunk`` with the codec and store it (RAM first, spilling the oldest if over budget).

        Raises:
            InvalidChunk: wrong types/shapes, summary length != ``summary_dim``, or a duplicate id.
            BankClosed: after :meth:`close`.
            BankError: a spill to disk failed (the chunk stays in RAM).
        """
        self._check_open()
        if not isinstance(chunk, KVChunk):
            raise InvalidChunk(f"append() takes a KVChunk; got {type(chunk).__name__}")
        validate_chunk(chunk)
        meta = chunk.meta
        cid = meta.chunk_id
        if chunk.summary.shape[0] != self._dim:
            raise InvalidChunk(f"chunk {cid}: summary has length {chunk.summary.shape[0]}, the bank's summary_dim is {self._dim}")
        with self._lock:
            if cid in self._metas:
                raise InvalidChunk(f"chunk {cid}: a chunk with this id is already in the bank")
        keys = chunk.keys.detach().to("cpu")
        values = chunk.values.detach().to("cpu")
        try:
            packed = self._codec.encode(keys, values)
        except (ValueError, TypeError) as exc:
            raise InvalidChunk(f"chunk {cid}: the KV codec rejected it: {exc}") from exc
        stored = PackedChunk(
            meta=meta,
            packed=packed,
            positions=chunk.positions.detach().to("cpu").clone().contiguous(),
            summary=chunk.summary.detach().to("cpu", torch.float32).clone().contiguous(),
        )
        form = self._form
        compact = self._build_compact(meta, keys, stored.positions, form)
        with self._lock:
            self._check_open()
            if cid in self._metas:
                raise InvalidChunk(f"chunk {cid}: a chunk with this id is already in the bank")
            self._index.add(np.array([cid], dtype=np.int64), stored.summary.numpy()[None, :])
            self._metas[cid] = meta
            bisect.insort(self._order, (meta.t_start, cid))
            heapq.heappush(self._expiry, (meta.t_end, cid))
            self._ram[cid] = stored
            self._ram_bytes += stored.nbytes
            if compact is not None and self._form is form:
                self._add_compact(cid, compact)
            self._account(cid, stored.n_elements, float(packed.bits_per_element()))
            self._newest_t_end = max(self._newest_t_end, meta.t_end)
            self._appended += 1
            self._dirty = True
            self._apply_retention()
            self._apply_budget()

    def _account(self, cid: int, n_elements: int, bits_per_element: float) -> None:
        bits = bits_per_element * n_elements
        self._elements[cid] = (n_elements, bits)
        self._total_elements += n_elements
        self._total_bits += bits

    def _apply_budget(self) -> None:
        budget = self._config.ram_budget_bytes
        if budget is None:
            return
        while self._ram_bytes + self._resident_bytes + self._compact_bytes > budget and self._ram:
            cid, stored = next(iter(self._ram.items()))
            if cid not in self._disk and not self._write_file(stored, durable=False):
                continue  # it could not fit the disk budget and was deleted
            del self._ram[cid]
            self._ram_bytes -= stored.nbytes
            self._spills += 1
            if self._config.resident_keys and cid in self._metas and cid not in self._compact:
                upper, _ = split_keys(stored.packed, key_split_layer(stored.packed.shape[0]))
                self._add_resident(cid, upper, stored.positions)
            log.debug("spilled chunk %d to disk (RAM tier now %d bytes)", cid, self._ram_bytes)
        self._trim_resident()

    def _add_resident(self, cid: int, upper: PackedKeys, positions: torch.Tensor) -> None:
        old = self._resident.pop(cid, None)
        if old is not None:
            self._resident_bytes -= old[0].nbytes + tensor_nbytes(old[1])
        self._resident[cid] = (upper, positions)
        self._resident_bytes += upper.nbytes + tensor_nbytes(positions)

    def _drop_resident(self, cid: int) -> None:
        old = self._resident.pop(cid, None)
        if old is not None:
            self._resident_bytes -= old[0].nbytes + tensor_nbytes(old[1])

    def _trim_resident(self) -> None:
        """Drop the oldest resident keys, then (once no whole chunk is left in RAM to spill) the oldest
        compact keys, while the RAM tier is over its budget."""
        budget = self._config.ram_budget_bytes
        if budget is None:
            return
        while self._ram_bytes + self._resident_bytes + self._compact_bytes > budget and self._resident:
            self._drop_resident(next(iter(self._resident)))
        while self._ram_bytes + self._resident_bytes + self._compact_bytes > budget and self._compact and not self._ram:
            self._drop_compact(next(iter(self._compact)))
            self._compact_dropped += 1

    # ------------------------------------------------------------------ compact rerank keys
    def set_rerank_form(self, unrotate: Any, pairs: Sequence[tuple[int, int]]) -> None:
        """Tell the bank what a rerank scores, so it keeps every chunk's compact form of it.

        Args:
            unrotate: ``(keys (L', H, T, D) float32 post-RoPE, positions (T,) or (3, T)) -> pre-RoPE
                keys`` of the same shape: the model's own un-rotation (``VideoLLM.unrotate_keys``).
            pairs: the (layer, KV head) pairs the rerank scores.

        Compact forms of other pairs are dropped (they are rebuilt for the new pairs as chunks are
        appended or reranked). A no-op but for the un-rotation when the pairs are the same.
        """
        pairs = as_pairs(pairs)
        with self._lock:
            self._check_open()
            if self._form is not None and self._form[1] == pairs:
                self._form = (unrotate, pairs)
                return
            self._form = (unrotate, pairs)
            for cid in [c for c, ck in self._compact.items() if ck.pairs != pairs]:
                self._drop_compact(cid)

    @property
    def rerank_pairs(self) -> tuple[tuple[int, int], ...] | None:
        """The (layer, head) pairs compact forms are kept for (``None`` until :meth:`set_rerank_form`)."""
        form = self._form
        return None if form is None else form[1]

    def _build_compact(self, meta: ChunkMeta, keys: torch.Tensor, positions: torch.Tensor,
                       form: tuple[Any, tuple[tuple[int, int], ...]] | None,
                       held: Sequence[int] | None = None) -> CompactKeys | None:
        """The compact form of a chunk from float post-RoPE keys ``(L', H, T, D)`` whose rows are the
        layers ``held`` (``None``: all layers, row = layer); ``None`` when off or impossible."""
        bits = self._config.compact_keys_bits
        if form is None or bits is None:
            return None
        unrotate, pairs = form
        layers = sorted({layer for layer, _ in pairs})
        n_layers, n_heads, n_tok, _ = keys.shape
        row_of = {layer: i for i, layer in enumerate(range(n_layers) if held is None else held)}
        if any(layer not in row_of for layer in layers) or max(h for _, h in pairs) >= n_heads:
            log.debug("chunk %d: keys %s do not hold the rerank pairs", meta.chunk_id, tuple(keys.shape))
            return None
        mask = content_mask(meta, n_tok)
        local = {layer: row_of[layer] for layer in layers}
        rows = sorted(set(local.values()))
        try:
            with torch.no_grad():
                pre = unrotate(keys[rows][:, :, mask].float(), positions[..., mask])  # (L'', H, T', D)
                at = {r: i for i, r in enumerate(rows)}
                li = torch.tensor([at[local[layer]] for layer, _ in pairs], dtype=torch.long)
                hi = torch.tensor([h for _, h in pairs], dtype=torch.long)
                return encode_compact(pre[li, hi], bits, pairs)
        except (CompactKeysError, RuntimeError, ValueError, IndexError) as exc:
            log.warning("chunk %d: no compact rerank keys (%s); its rerank reads the stored keys", meta.chunk_id, exc)
            return None

    def _add_compact(self, cid: int, compact: CompactKeys) -> None:
        self._drop_compact(cid)
        self._compact[cid] = compact
        self._compact_bytes += compact.nbytes
        self._compact_dirty.add(cid // COMPACT_SEGMENT)
        self._drop_resident(cid)  # the compact form serves the rerank: no packed copy needed

    def _drop_compact(self, cid: int) -> None:
        old = self._compact.pop(cid, None)
        if old is not None:
            self._compact_bytes -= old.nbytes
            self._compact_dirty.add(cid // COMPACT_SEGMENT)

    def compact(self, chunk_id: int, *, build: bool = True) -> CompactKeys | None:
        """The compact rerank keys of a live chunk for the pairs of :meth:`set_rerank_form`.

        With ``build``, a chunk without one gets it now from its stored keys (RAM, resident keys,
        or only the keys section of its file) and keeps it under the budget.

        Returns:
            the :class:`CompactKeys`, or ``None`` when compact keys are off, no form was set, or the
            chunk's keys cannot give one (then read :meth:`keys` instead).

        Raises:
            ChunkNotFound: no live chunk has this id.
            ChunkCorrupt: building needed its file, which is missing or fails its checksum.
        """
        with self._lock:
            self._check_open()
            if chunk_id not in self._metas:
                raise ChunkNotFound(chunk_id)
            form = self._form
            got = self._compact.get(chunk_id)
            if got is not None and form is not None and got.pairs == form[1]:
                self._key_reads_compact += 1
                return got
            if form is None or self._config.compact_keys_bits is None or not build:
                return None
        layers = sorted({layer for layer, _ in form[1]})
        try:
            ck = self.keys(chunk_id, layers, dtype=torch.float32)
        except InvalidQuery:
            return None
        compact = self._build_compact(ck.meta, ck.keys, ck.positions, form, held=layers)
        if compact is None:
            return None
        with self._lock:
            if chunk_id in self._metas and self._form is form:
                self._add_compact(chunk_id, compact)
                self._compact_built += 1
                self._apply_budget()  # whole RAM chunks spill before any compact form goes
        return compact

    def _chunk_path(self, cid: int) -> Path:
        return self._ensure_dir() / CHUNK_DIR / f"{cid:012d}.kvc"

    def _write_file(self, stored: PackedChunk, *, durable: bool) -> bool:
        """Write a chunk's file, making room under the disk budget first.

        Returns False when the chunk alone does not fit the budget: it is then deleted (logged).
        """
        cid = stored.chunk_id
        path = self._chunk_path(cid)
        data, sha = encode_chunk(stored)
        old = self._disk.get(cid)
        if not self._make_room(len(data) - (old.size if old else 0), protect={cid}):
            log.warning("chunk %d (%d bytes) does not fit the disk budget of %s bytes: deleted",
                        cid, len(data), self._config.disk_budget_bytes)
            self._delete(cid)
            self._deleted_budget += 1
            return False
        try:
            atomic_write(path, data, durable=durable)
        except OSError as exc:
            raise BankError(f"cannot write chunk {cid} to {path}: {exc}") from exc
        if old is not None:
            self._disk_bytes -= old.size
        self._disk[cid] = _DiskEntry(path, sha, len(data))
        self._disk_bytes += len(data)
        if consolidation_level(stored.meta) == 0:
            heapq.heappush(self._fresh, (stored.meta.t_start, cid))
        return True

    # ------------------------------------------------------------------ disk budget
    def _make_room(self, need: int, protect: set[int]) -> bool:
        """Consolidate, then delete, the oldest chunks on disk until ``need`` more bytes fit."""
        budget = self._config.disk_budget_bytes
        if budget is None:
            return True
        soft = int(budget * CONSOLIDATE_AT)
        while self._disk_bytes + need > soft and self._consolidate_oldest(protect, budget, need):
            pass
        while self._disk_bytes + need > budget:
            victim = next((cid for _, cid in self._order if cid in self._disk and cid not in protect), None)
            if victim is None:
                return need <= budget - self._disk_bytes
            log.debug("disk budget: deleting chunk %d", victim)
            self._delete(victim)
            self._deleted_budget += 1
        return True

    def _consolidate_oldest(self, protect: set[int], budget: int, need: int) -> bool:
        """Consolidate the oldest run of fresh chunks on disk; returns whether anything shrank."""
        while self._fresh:
            t_start, cid = self._fresh[0]
            meta = self._metas.get(cid)
            if meta is None or cid not in self._disk or meta.t_start != t_start or consolidation_level(meta) > 0:
                heapq.heappop(self._fresh)
                continue
            if cid in protect:
                return False
            run = self._static_run(cid, protect)
            if run is None:  # the run may still grow: wait for its next chunk
                return False
            heapq.heappop(self._fresh)
            return self._consolidate(run, budget, protect)
        return False

    def _static_run(self, first: int, protect: set[int]) -> list[int] | None:
        """``first`` and its following on-disk fresh frame chunks of the same static scene.

        ``None`` when the run reaches the newest chunk on disk and could still grow.
        """
        meta = self._metas[first]
        limit = self._config.merge_max_chunks
        if meta.kind != "frame" or limit == 1:
            return [first]
        i = bisect.bisect_left(self._order, (meta.t_start, first)) + 1
        run = [first]
        base = self._index.reconstruct([first])[0] if first in self._index else None
        while len(run) < limit:
            if i >= len(self._order):
                return None
            cid = self._order[i][1]
            nxt = self._metas[cid]
            if cid not in self._disk or cid in protect:
                return None if len(run) < limit else run
            if nxt.kind != "frame" or consolidation_level(nxt) > 0 or base is None or cid not in self._index:
                break
            vec = self._index.reconstruct([cid])[0]
            denom = float(np.linalg.norm(base) * np.linalg.norm(vec))
            if denom <= 0 or float(base @ vec) / denom < self._config.merge_similarity:
                break
            run.append(cid)
            i += 1
        return run

    def _consolidate(self, run: list[int], budget: int, protect: set[int]) -> bool:
        """Requantize (and merge) the chunks of ``run`` into one chunk under the first id."""
        loaded: list[PackedChunk] = []
        for cid in run:
            entry = self._disk[cid]
            self._disk_reads += 1
            try:
                loaded.append(read_chunk(entry.path, cid, entry.sha256))
            except ChunkCorrupt as exc:
                self._mark_corrupt(cid, entry, exc)
                break
        if not loaded:
            return False
        decoded = [self._decode(stored, None) for stored in loaded]
        merged = decoded[0]
        if len(decoded) > 1 and can_merge(decoded):
            merged = merge_chunks(decoded, token_similarity=self._config.merge_token_similarity)
        else:
            decoded, loaded = decoded[:1], loaded[:1]
        merged = mark_consolidated(merged)
        codec_cfg = self._config.consolidate_codec or loaded[0].packed.config
        try:
            packed = KVCodec(codec_cfg).encode(merged.keys, merged.values)
        except KVCodecError:
            packed = KVCodec(loaded[0].packed.config).encode(merged.keys, merged.values)
        stored = PackedChunk(meta=merged.meta, packed=packed, positions=merged.positions.contiguous(),
                             summary=merged.summary.float().contiguous())
        first = run[0]
        data, sha = encode_chunk(stored)
        freed = sum(self._disk[s.chunk_id].size for s in loaded)
        if len(data) >= freed:
            return False  # no gain: leave the chunks as they are (deletion comes next)
        while self._disk_bytes + len(data) > budget:
            # no headroom to write the consolidated file beside its sources: the oldest memory goes
            victim = next((c for _, c in self._order if c in self._disk and c not in protect and c not in run), None)
            if victim is None:
                return False
            self._delete(victim)
            self._deleted_budget += 1
        path = self._disk[first].path
        try:
            atomic_write(path, data)
        except OSError as exc:
            raise BankError(f"cannot write consolidated chunk {first} to {path}: {exc}") from exc
        for src in loaded[1:]:
            self._delete(src.chunk_id)
            self._merged += 1
        self._consolidated += len(loaded)
        self._disk_bytes += len(data) - self._disk[first].size
        self._disk[first] = _DiskEntry(path, sha, len(data))
        old_meta = self._metas[first]
        i = bisect.bisect_left(self._order, (old_meta.t_start, first))
        if i < len(self._order) and self._order[i] == (old_meta.t_start, first):
            del self._order[i]
        self._metas[first] = stored.meta
        bisect.insort(self._order, (stored.meta.t_start, first))
        heapq.heappush(self._expiry, (stored.meta.t_end, first))
        in_ram = self._ram.pop(first, None)
        if in_ram is not None:
            self._ram_bytes -= in_ram.nbytes
        n_el, bits = self._elements.pop(first, (0, 0.0))
        self._total_elements -= n_el
        self._total_bits -= bits
        self._account(first, stored.n_elements, float(packed.bits_per_element()))
        if self._config.index == "flat":  # cheap to replace; HNSW/IVF keep the first chunk's summary
            self._index.remove([first])
            self._index.add(np.array([first], dtype=np.int64), stored.summary.numpy()[None, :])
        compact = self._build_compact(stored.meta, merged.keys, stored.positions, self._form)
        if compact is not None:
            self._add_compact(first, compact)
            self._trim_resident()
        elif self._config.resident_keys and (first in self._resident or in_ram is not None):
            self._drop_compact(first)
            upper, _ = split_keys(packed, key_split_layer(packed.shape[0]))
            self._add_resident(first, upper, stored.positions)
            self._trim_resident()
        else:
            self._drop_compact(first)
            self._drop_resident(first)
        self._dirty = True
        log.debug("consolidated chunks %s into chunk %d (%d bytes)", [s.chunk_id for s in loaded], first, len(data))
        return True

    def _apply_retention(self) -> None:
        keep_s = self._config.retention_s
        if keep_s is None:
            return
        cutoff = self._newest_t_end - keep_s
        while self._expiry and self._expiry[0][0] < cutoff:
            t_end, cid = heapq.heappop(self._expiry)
            meta = self._metas.get(cid)
            if meta is not None and meta.t_end == t_end:
                self._delete(cid)
                self._evicted += 1

    def _delete(self, cid: int) -> None:
        meta = self._metas.pop(cid)
        i = bisect.bisect_left(self._order, (meta.t_start, cid))
        if i < len(self._order) and self._order[i] == (meta.t_start, cid):
            del self._order[i]
        stored = self._ram.pop(cid, None)
        if stored is not None:
            self._ram_bytes -= stored.nbytes
        self._drop_resident(cid)
        self._drop_compact(cid)
        entry = self._disk.pop(cid, None)
        if entry is not None:
            self._disk_bytes -= entry.size
            try:
                entry.path.unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("could not delete chunk file %s: %s", entry.path, exc)
        n_el, bits = self._elements.pop(cid, (0, 0.0))
        self._total_elements -= n_el
        self._total_bits -= bits
        self._corrupt.discard(cid)
        self._index.remove([cid])
        self._dirty = True

    # ------------------------------------------------------------------ reading
    def _query_vector(self, query: Any) -> np.ndarray:
        if isinstance(query, np.ndarray):
            query = torch.from_numpy(query)
        if not isinstance(query, torch.Tensor):
            raise InvalidQuery(f"query must be a torch.Tensor of shape ({self._dim},); got {type(query).__name__}")
        if query.ndim == 2 and query.shape[0] == 1:
            query = query[0]
        if query.ndim != 1 or query.shape[0] != self._dim:
            raise InvalidQuery(f"query must have shape ({self._dim},); got {tuple(query.shape)}")
        if not query.is_floating_point():
            raise InvalidQuery(f"query must be a floating tensor; got {query.dtype}")
        q = query.detach().to("cpu", torch.float32).contiguous().numpy()
        if not np.isfinite(q).all():
            raise InvalidQuery("query holds NaN or infinite values")
        return q

    @staticmethod
    def _check_k(k: Any) -> int:
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise InvalidQuery(f"k must be an int >= 0; got {k!r}")
        return k

    def search(self, query: torch.Tensor, k: int) -> list[tuple[ChunkMeta, float]]:
        """Top ``k`` chunks' metadata and scores, best first, without loading any KV.

        Args:
            query: float ``(S,)``.
        """
        q = self._query_vector(query)
        k = self._check_k(k)
        with self._lock:
            self._check_open()
            return [(self._metas[cid], score) for cid, score in self._index.search(q, k, exclude=self._corrupt)]

    def retrieve(self, query: torch.Tensor, k: int, *, dtype: torch.dtype | None = None) -> list[Retrieved]:
        """The ``k`` chunks whose summaries score highest against ``query``, in time order.

        Args:
            query: float ``(S,)`` (e.g. a question's flattened per-layer mean query).
            k: number of chunks; ``k >= len(bank)`` returns every readable chunk.
            dtype: dtype of the returned KV; ``None`` = the dtype each chunk was appended with.

        Returns:
            :class:`Retrieved` items sorted by ``(t_start, chunk_id)``; each chunk has keys/values
            ``(L, H, T, D)``, positions and summary as appended. A chunk whose file is corrupt or
            missing is skipped (logged, counted in ``stats().corrupt_chunks``) and the next best
            chunk takes its place.
        """
        q = self._query_vector(query)
        k = self._check_k(k)
        loaded: dict[int, PackedChunk] = {}
        while True:
            with self._lock:
                self._check_open()
                hits = self._index.search(q, k, exclude=self._corrupt)
                plan = self._plan(cid for cid, _ in hits if cid not in loaded)
            fresh_corrupt = self._load(plan, loaded)
            if not fresh_corrupt:
                break
        chosen = [(loaded[cid], score) for cid, score in hits if cid in loaded]
        out = [Retrieved(self._decode(stored, dtype), score) for stored, score in chosen]
        out.sort(key=lambda r: r.chunk.meta.sort_key())
        return out

    def _plan(self, ids: Any) -> list[tuple[int, PackedChunk | _DiskEntry]]:
        """Under the lock: where each chunk is (a RAM copy, or its disk entry to read)."""
        plan: list[tuple[int, PackedChunk | _DiskEntry]] = []
        for cid in ids:
            stored = self._ram.get(cid)
            if stored is not None:
                plan.append((cid, stored))
                continue
            entry = self._disk.get(cid)
            if entry is None:
                raise ChunkNotFound(cid)
            self._disk_reads += 1
            plan.append((cid, entry))
        return plan

    def _load(self, plan: list[tuple[int, PackedChunk | _DiskEntry]], out: dict[int, PackedChunk]) -> bool:
        """Outside the lock: read disk entries; returns whether a new corrupt chunk was found."""
        fresh = False
        for cid, where in plan:
            if isinstance(where, PackedChunk):
                out[cid] = where
                continue
            try:
                out[cid] = read_chunk(where.path, cid, where.sha256)
            except ChunkCorrupt as exc:
                if self._mark_corrupt(cid, where, exc):
                    fresh = True
        return fresh

    def _mark_corrupt(self, cid: int, entry: _DiskEntry, exc: ChunkCorrupt) -> bool:
        with self._lock:
            if self._disk.get(cid) is not entry:  # deleted by retention meanwhile: not corruption
                return False
            if cid not in self._corrupt:
                self._corrupt.add(cid)
                self._corrupt_seen += 1
                log.warning("skipping %s", exc)
            return True

    def _decode(self, stored: PackedChunk, dtype: torch.dtype | None) -> KVChunk:
        keys, values = self._codec.decode(stored.packed, dtype=dtype)
        return KVChunk(
            meta=stored.meta,
            keys=keys,
            values=values,
            positions=stored.positions.clone(),
            summary=stored.summary.clone(),
        )

    def packed(self, chunk_id: int) -> PackedChunk:
        """The stored (quantized) form of a live chunk, from RAM or disk.

        Raises:
            ChunkNotFound: no live chunk has this id.
            ChunkCorrupt: its file is missing or fails its checksum (names the chunk and file).
        """
        with self._lock:
            self._check_open()
            if chunk_id not in self._metas:
                raise ChunkNotFound(chunk_id)
            plan = self._plan([chunk_id])
        cid, where = plan[0]
        if isinstance(where, PackedChunk):
            return where
        try:
            return read_chunk(where.path, cid, where.sha256)
        except ChunkCorrupt as exc:
            self._mark_corrupt(cid, where, exc)
            raise

    def keys(self, chunk_id: int, layers: Sequence[int], *, dtype: torch.dtype | None = None) -> ChunkKeys:
        """The keys of ``layers`` of one live chunk, dequantizing nothing else (values and other layers stay packed).

        Served from RAM when the chunk is in RAM or its upper-layer keys are resident (layers
        within the upper half); else, for upper layers, only the file's keys section is read and
        verified (and kept resident when the budget allows); other layers read the whole file.
        Equal to ``get(chunk_id, dtype).keys[list(layers)]``.

        Args:
            layers: layer indices in ``[0, L)``, e.g. the upper half a rerank reads.
            dtype: dtype of the keys; ``None`` = the dtype the chunk was appended with.

        Returns:
            :class:`ChunkKeys` with keys ``(len(layers), H, T, D)`` and the chunk's positions.

        Raises:
            ChunkNotFound: no live chunk has this id.
            ChunkCorrupt: its file is missing or fails its checksum (names the chunk and file); the
                chunk is skipped by later searches, other chunks are untouched.
            InvalidQuery: a layer index out of range.
        """
        wanted = tuple(int(i) for i in layers)
        source: Any = None
        with self._lock:
            self._check_open()
            meta = self._metas.get(chunk_id)
            if meta is None:
                raise ChunkNotFound(chunk_id)
            stored = self._ram.get(chunk_id)
            resident = self._resident.get(chunk_id)
            entry = self._disk.get(chunk_id)
            if stored is not None:
                source, positions = stored.packed, stored.positions
            elif resident is not None and wanted and all(resident[0].first <= i < resident[0].stop for i in wanted):
                source, positions = resident
            if source is not None:
                self._key_reads_ram += 1
            elif entry is not None:
                self._disk_reads += 1
                self._key_reads_disk += 1
        if source is None and entry is not None:
            try:
                upper, positions = read_chunk_keys(entry.path, chunk_id, entry.sha256)
            except ChunkCorrupt as exc:
                self._mark_corrupt(chunk_id, entry, exc)
                raise
            if wanted and all(upper.first <= i < upper.stop for i in wanted):
                source = upper
                with self._lock:
                    if self._config.resident_keys and self._disk.get(chunk_id) is entry and chunk_id not in self._ram:
                        self._add_resident(chunk_id, upper, positions)
                        self._trim_resident()
        if source is None:  # lower layers of a chunk on disk: the whole file
            stored = self.packed(chunk_id)
            source, positions, meta = stored.packed, stored.positions, stored.meta
        try:
            keys = self._codec.decode_keys(source, wanted, dtype=dtype)
        except KVCodecError as exc:
            raise InvalidQuery(f"chunk {chunk_id}: {exc}") from None
        return ChunkKeys(meta=meta, layers=wanted, keys=keys, positions=positions.clone())

    def get(self, chunk_id: int, dtype: torch.dtype | None = None) -> KVChunk:
        """One live chunk, dequantized (``dtype`` as appended unless given).

        Raises:
            ChunkNotFound: no live chunk has this id.
            ChunkCorrupt: its file is missing or fails its checksum (names the chunk and file).
        """
        return self._decode(self.packed(chunk_id), dtype)

    def tier(self, chunk_id: int) -> str:
        """Where a live chunk is: ``"ram"``, ``"disk"``, or ``"ram+disk"`` (after ``save()``)."""
        with self._lock:
            if chunk_id not in self._metas:
                raise ChunkNotFound(chunk_id)
            in_ram, on_disk = chunk_id in self._ram, chunk_id in self._disk
            return "ram+disk" if in_ram and on_disk else "ram" if in_ram else "disk"

    def metas(self) -> list[ChunkMeta]:
        """Metadata of every live chunk, in time order ``(t_start, chunk_id)``."""
        with self._lock:
            return [self._metas[cid] for _, cid in self._order]

    def nbytes(self) -> dict[str, int]:
        """True bytes of stored chunks per tier: ``{"ram": ..., "disk": ...}`` (disk = file sizes;
        RAM includes the resident keys of chunks on disk)."""
        with self._lock:
            return {"ram": self._ram_bytes + self._resident_bytes + self._compact_bytes, "disk": self._disk_bytes}

    def stats(self) -> BankStats:
        """A snapshot of the bank's counters (see :class:`BankStats`)."""
        with self._lock:
            bpe = self._total_bits / self._total_elements if self._total_elements else 0.0
            span = 0.0
            if self._order:
                span = max(0.0, self._newest_t_end - self._order[0][0])
            hours = span / 3600.0
            per_hour = {
                tier: (n / hours if hours > 0 else 0.0)
                for tier, n in (("ram", self._ram_bytes + self._resident_bytes + self._compact_bytes),
                                ("disk", self._disk_bytes), ("resident_keys", self._resident_bytes),
                                ("compact_keys", self._compact_bytes))
            }
            return BankStats(
                chunks=len(self._metas),
                chunks_ram=len(self._ram),
                chunks_disk=len(self._disk),
                bytes_ram=self._ram_bytes + self._resident_bytes + self._compact_bytes,
                bytes_disk=self._disk_bytes,
                index_bytes=self._index.nbytes if not self._closed else 0,
                spills=self._spills,
                disk_reads=self._disk_reads,
                evicted_retention=self._evicted,
                corrupt_chunks=self._corrupt_seen,
                bits_per_element=bpe,
                appended=self._appended,
                ram_budget_bytes=self._config.ram_budget_bytes,
                chunks_resident_keys=len(self._resident),
                bytes_resident_keys=self._resident_bytes,
                key_reads_ram=self._key_reads_ram,
                key_reads_disk=self._key_reads_disk,
                disk_budget_bytes=self._config.disk_budget_bytes,
                consolidated=self._consolidated,
                merged=self._merged,
                deleted_budget=self._deleted_budget,
                chunks_compact=len(self._compact),
                bytes_compact=self._compact_bytes,
                key_reads_compact=self._key_reads_compact,
                compact_built=self._compact_built,
                compact_dropped=self._compact_dropped,
                stream_s=span,
                bytes_per_hour=per_hour,
            )

    # ------------------------------------------------------------------ persistence
    def save(self) -> Path:
        """Flush every chunk to disk and write summaries, index and manifest; the bank stays usable.

        Returns:
            the bank's directory (``disk_dir``, or the private temporary one).
        """
        with self._lock:
            self._check_open()
            root = self._ensure_dir()
            try:
                for cid, stored in list(self._ram.items()):
                    if cid in self._metas and cid not in self._disk:
                        self._write_file(stored, durable=False)  # may consolidate or delete the oldest
                order = [cid for _, cid in self._order]
                in_index = [cid for cid in order if cid in self._index]
                summaries_sha = self._write_summaries(root / SUMMARIES, in_index)
                index_tmp = root / f".{INDEX_FILE}.tmp"
                self._index.write(index_tmp)
                index_sha = _file_sha256(index_tmp)
                os.replace(index_tmp, root / INDEX_FILE)
                compact = self._save_compact(root)
                # one flush of everything written so far (far cheaper than an fsync per chunk
                # file), so the manifest, the commit point, never names data not yet on disk
                os.sync()
                manifest = {
                    "format": MANIFEST_FORMAT,
                    "summary_dim": self._dim,
                    "config": self._config.to_json(),
                    "chunks": [self._chunk_record(cid) for cid in order],
                    "summaries": {"file": SUMMARIES, "sha256": summaries_sha, "ids": in_index},
                    "index": {"file": INDEX_FILE, "sha256": index_sha, **self._index.state()},
                    "compact": compact,
                }
                atomic_write(root / MANIFEST, json.dumps(manifest).encode("utf-8"), durable=True)
            except OSError as exc:
                raise BankError(f"cannot save the memory bank to {root}: {exc}") from exc
            self._dirty = False
            log.info("saved memory bank: %d chunks to %s", len(order), root)
            return root

    def _save_compact(self, root: Path) -> dict[str, Any]:
        """Write the compact-keys segments that changed since the last save; returns the manifest's record."""
        folder = root / COMPACT_DIR
        if self._compact_dirty:
            folder.mkdir(exist_ok=True)
            groups: dict[int, list[int]] = {seg: [] for seg in self._compact_dirty}
            for cid in self._compact:
                seg = cid // COMPACT_SEGMENT
                if seg in groups:
                    groups[seg].append(cid)
            for seg, ids in groups.items():
                path = folder / f"{seg:06d}.pt"
                if not ids:
                    self._compact_saved.pop(seg, None)
                    try:
                        path.unlink()
                    except FileNotFoundError:
                        pass
                    continue
                buf = io.BytesIO()
                torch.save({"format": COMPACT_FORMAT, "ids": ids, "states": [self._compact[c].state_dict() for c in ids]},
                           buf)
                data = buf.getvalue()
                atomic_write(path, data)
                self._compact_saved[seg] = hashlib.sha256(data).hexdigest()
            self._compact_dirty.clear()
        return {"dir": COMPACT_DIR, "segment": COMPACT_SEGMENT,
                "segments": {str(seg): sha for seg, sha in sorted(self._compact_saved.items())}}

    def _restore_compact(self, root: Path, record: Any) -> None:
        """Load the saved compact forms of live chunks; a damaged segment is skipped (logged): its
        chunks' compact forms are rebuilt from their keys on their next rerank."""
        if not isinstance(record, dict) or record.get("segment") != COMPACT_SEGMENT:
            return
        segments = record.get("segments")
        if not isinstance(segments, dict):
            return
        for name, sha in segments.items():
            path = root / COMPACT_DIR / f"{int(name):06d}.pt"
            try:
                data = path.read_bytes()
                if hashlib.sha256(data).hexdigest() != sha:
                    raise ValueError("checksum mismatch")
                obj = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
                if not isinstance(obj, dict) or obj.get("format") != COMPACT_FORMAT:
                    raise ValueError("not a compact-keys segment")
                items = [(int(cid), CompactKeys.from_state_dict(st)) for cid, st in zip(obj["ids"], obj["states"])]
            except (OSError, ValueError, KeyError, TypeError, RuntimeError, CompactKeysError) as exc:
                log.warning("compact rerank keys %s unusable (%s); they are rebuilt on use", path, exc)
                continue
            self._compact_saved[int(name)] = str(sha)
            for cid, ck in items:
                if cid in self._metas:
                    self._compact[cid] = ck
                    self._compact_bytes += ck.nbytes
        if self._compact:
            # the pairs of the restored forms; the un-rotation comes with the first rerank's set_rerank_form
            pairs = next(iter(self._compact.values())).pairs
            for cid in [c for c, ck in self._compact.items() if ck.pairs != pairs]:
                self._drop_compact(cid)
        self._trim_resident()

    def _chunk_record(self, cid: int) -> dict[str, Any]:
        entry = self._disk[cid]
        n_el, bits = self._elements[cid]
        return {
            "meta": self._metas[cid].to_json(),
            "file": entry.path.relative_to(self._dir).as_posix(),
            "sha256": entry.sha256,
            "size": entry.size,
            "n_elements": n_el,
            "bits": bits,
        }

    def _write_summaries(self, path: Path, ids: list[int]) -> str:
        """Stream ``(N, S)`` float32 summaries of ``ids`` to an ``.npy`` file atomically; returns its sha256."""
        with atomic_file(path) as fh:
            header = {"descr": "<f4", "fortran_order": False, "shape": (len(ids), self._dim)}
            np.lib.format.write_array_header_1_0(fh, header)
            fh.flush()
            for start in range(0, len(ids), _ROWS):
                rows = self._index.reconstruct(ids[start : start + _ROWS]).astype("<f4", copy=False)
                fh.write(rows.tobytes())
        # the bank holds its lock, so nothing else writes the file between the rename and this read
        return _file_sha256(path)

    @classmethod
    def open(cls, directory: str | os.PathLike[str], *, ram_budget_bytes: int | None = None,
             disk_budget_bytes: int | None = None, recover: bool = True) -> MemoryBank:
        """Reopen a bank written by :meth:`save` (config read from its manifest).

        Every chunk starts in the disk tier; chunks appended later go to RAM under
        ``ram_budget_bytes``. The reopened bank persists (``close()`` saves changes and keeps
        the directory). If the index file is missing or damaged, the index is rebuilt from
        ``summaries.npy``, and failing that from the chunk files.

        A manifest that is missing, truncated or malformed while chunk files exist is recovered
        from (with ``recover``): every chunk file that passes its own checksums is taken back
        (metadata, summary and codec come from the file), files that do not are left in place
        and listed in :attr:`recovered`, the damaged manifest is renamed to
        ``manifest.json.damaged`` (never deleted) and a new one is written on the next save.
        The bank settings other than the codec are then the defaults.

        Raises:
            BankCorrupt: no saved bank in ``directory`` (no manifest and no chunk files), or a
                damaged manifest and not one readable chunk file; the message names the files.
        """
        root = Path(directory)
        try:
            return cls._open_manifest(root, ram_budget_bytes, disk_budget_bytes)
        except BankCorrupt as exc:
            chunk_dir = root / CHUNK_DIR
            has_chunks = chunk_dir.is_dir() and any(chunk_dir.glob("*.kvc"))
            if not recover or not has_chunks:
                raise
            return cls._recover(root, str(exc), ram_budget_bytes, disk_budget_bytes)

    @classmethod
    def _open_manifest(cls, root: Path, ram_budget_bytes: int | None, disk_budget_bytes: int | None) -> MemoryBank:
        manifest_path = root / MANIFEST
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise BankCorrupt(f"{root} holds no saved memory bank ({MANIFEST} is missing)") from None
        except (OSError, ValueError) as exc:
            raise BankCorrupt(f"cannot read {manifest_path}: {exc}") from None
        if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
            raise BankCorrupt(f"{manifest_path} is not a memory-bank manifest of format {MANIFEST_FORMAT}")
        try:
            overrides: dict[str, Any] = {"disk_dir": str(root), "persist": True, "ram_budget_bytes": ram_budget_bytes}
            if disk_budget_bytes is not None:
                overrides["disk_budget_bytes"] = disk_budget_bytes
            config = BankConfig.from_json(manifest["config"], **overrides)
            bank = cls.__new__(cls)
            bank._init_state(config, manifest["summary_dim"])
            bank._dir = root
            (root / CHUNK_DIR).mkdir(exist_ok=True)
            for record in manifest["chunks"]:
                bank._restore_chunk(root, record)
            bank._order.sort()
        except BankCorrupt:
            raise
        except (KeyError, TypeError, ValueError, BankError, OSError) as exc:
            raise BankCorrupt(f"{manifest_path} is malformed: {exc!r}") from None
        # a rebuilt index is written back by the next save() (close() of this persistent bank)
        bank._dirty = not bank._restore_index(root, manifest)
        bank._restore_compact(root, manifest.get("compact"))
        log.info("opened memory bank %s: %d chunks", root, len(bank._metas))
        return bank

    @classmethod
    def _recover(cls, root: Path, reason: str, ram_budget_bytes: int | None,
                 disk_budget_bytes: int | None) -> MemoryBank:
        """Rebuild a bank from its chunk files alone (see :meth:`open`)."""
        manifest_path = root / MANIFEST
        files = sorted((root / CHUNK_DIR).glob("*.kvc"))
        good: list[tuple[Path, PackedChunk, str, int]] = []
        bad: list[str] = []
        for path in files:
            try:
                stored, sha = recover_chunk(path)
                if path.name != f"{stored.chunk_id:012d}.kvc":
                    raise ChunkCorrupt(stored.chunk_id, path, "file name does not match the chunk it holds")
                good.append((path, stored, sha, path.stat().st_size))
            except ChunkCorrupt as exc:
                bad.append(f"{path.name}: {exc.reason}")
            except OSError as exc:
                bad.append(f"{path.name}: {exc}")
        if good:
            dims = {int(g[1].summary.numel()) for g in good}
            dim = max(dims, key=lambda d: sum(int(g[1].summary.numel()) == d for g in good))
            for g in [g for g in good if int(g[1].summary.numel()) != dim]:
                bad.append(f"{g[0].name}: summary length {g[1].summary.numel()} differs from the others' {dim}")
            good = [g for g in good if int(g[1].summary.numel()) == dim]
        if not good:
            raise BankCorrupt(
                f"{reason}; and none of the {len(files)} chunk files in {root / CHUNK_DIR} could be recovered"
                + (f" (first: {bad[0]})" if bad else "")
            )
        config = BankConfig(codec=good[0][1].packed.config, disk_dir=str(root), persist=True,
                            ram_budget_bytes=ram_budget_bytes, disk_budget_bytes=disk_budget_bytes)
        bank = cls.__new__(cls)
        bank._init_state(config, dim)
        bank._dir = root
        seen: set[int] = set()
        for path, stored, sha, size in good:
            cid = stored.chunk_id
            if cid in seen:
                continue
            seen.add(cid)
            meta = stored.meta
            bank._metas[cid] = meta
            bank._order.append((meta.t_start, cid))
            heapq.heappush(bank._expiry, (meta.t_end, cid))
            bank._disk[cid] = _DiskEntry(path, sha, size)
            bank._disk_bytes += size
            bank._account(cid, stored.n_elements, float(stored.packed.bits_per_element()))
            bank._newest_t_end = max(bank._newest_t_end, meta.t_end)
            if consolidation_level(meta) == 0:
                heapq.heappush(bank._fresh, (meta.t_start, cid))
            bank._index.add(np.array([cid], dtype=np.int64), stored.summary.float().numpy()[None, :])
        bank._order.sort()
        moved_to = None
        if manifest_path.exists():
            moved_to = manifest_path.with_name(MANIFEST + DAMAGED_SUFFIX)
            n = 1
            while moved_to.exists():
                moved_to = manifest_path.with_name(f"{MANIFEST}{DAMAGED_SUFFIX}.{n}")
                n += 1
            try:
                os.replace(manifest_path, moved_to)
            except OSError as exc:
                log.warning("could not move the damaged manifest %s aside: %s", manifest_path, exc)
                moved_to = None
        bank._dirty = True  # close() (or save()) writes a fresh manifest
        bank.recovered = {"reason": reason, "chunks": len(bank._metas), "unreadable": bad,
                          "damaged_manifest": None if moved_to is None else str(moved_to)}
        log.warning("recovered memory bank %s from its chunk files (%s): %d chunks, %d unreadable files left in place",
                    root, reason, len(bank._metas), len(bad))
        return bank

    def _restore_chunk(self, root: Path, record: dict[str, Any]) -> None:
        meta = ChunkMeta.from_json(record["meta"])
        cid = meta.chunk_id
        rel = Path(record["file"])
        if rel.is_absolute() or ".." in rel.parts:
            raise BankCorrupt(f"chunk {cid}: file path {rel} escapes the bank directory")
        if cid in self._metas:
            raise BankCorrupt(f"chunk {cid} appears twice in the manifest")
        entry = _DiskEntry(root / rel, str(record["sha256"]), int(record["size"]))
        self._metas[cid] = meta
        self._order.append((meta.t_start, cid))
        heapq.heappush(self._expiry, (meta.t_end, cid))
        self._disk[cid] = entry
        self._disk_bytes += entry.size
        if consolidation_level(meta) == 0:
            heapq.heappush(self._fresh, (meta.t_start, cid))
        self._account(cid, int(record["n_elements"]), float(record["bits"]) / max(int(record["n_elements"]), 1))
        self._newest_t_end = max(self._newest_t_end, meta.t_end)

    def _restore_index(self, root: Path, manifest: dict[str, Any]) -> bool:
        """Load the saved index, else rebuild it; returns whether the saved index file was used."""
        info = manifest.get("index") or {}
        summaries = manifest.get("summaries") or {}
        try:
            live = {int(i) for i in summaries.get("ids", [])}
            path = root / INDEX_FILE
            if _file_sha256(path) != info.get("sha256"):
                raise ValueError("checksum mismatch")
            if not live <= set(self._metas):
                raise ValueError("index ids are not chunks of the manifest")
            self._index = read_index(path, self._config, self._dim, live, info)
            return True
        except (OSError, ValueError, TypeError, AttributeError, RuntimeError) as exc:
            log.warning("index file of %s unusable (%s); rebuilding it from the saved summaries", root, exc)
        self._index = new_index(self._config, self._dim)
        try:
            path = root / SUMMARIES
            if _file_sha256(path) != summaries.get("sha256"):
                raise ValueError("checksum mismatch")
            rows = np.load(path, mmap_mode="r")
            ids = [int(i) for i in summaries["ids"]]
            if rows.shape != (len(ids), self._dim) or not set(ids) <= set(self._metas):
                raise ValueError(f"summaries shape {rows.shape} does not match {len(ids)} chunks of dim {self._dim}")
            for start in range(0, len(ids), _ROWS):
                block = np.ascontiguousarray(rows[start : start + _ROWS], dtype=np.float32)
                self._index.add(np.asarray(ids[start : start + _ROWS], dtype=np.int64), block)
            return False
        except (OSError, ValueError, TypeError, AttributeError, KeyError) as exc:
            log.warning("summaries of %s unusable (%s); rebuilding the index from the chunk files", root, exc)
        self._index = new_index(self._config, self._dim)
        for cid, entry in list(self._disk.items()):
            self._disk_reads += 1
            try:
                stored = read_chunk(entry.path, cid, entry.sha256)
            except ChunkCorrupt as exc:
                self._mark_corrupt(cid, entry, exc)
                continue
            self._index.add(np.array([cid], dtype=np.int64), stored.summary.numpy()[None, :])
        return False

    # ------------------------------------------------------------------ closing
    def close(self) -> None:
        """Free RAM; a persistent bank saves unsaved changes and keeps its directory, any other
        bank removes what it wrote (the whole directory if the bank created it). Idempotent."""
        with self._lock:
            if self._closed:
                return
            try:
                if self._config.persist and self._dirty:
                    self.save()
            finally:
                self._closed = True
                self._ram.clear()
                self._resident.clear()
                self._resident_bytes = 0
                self._compact.clear()
                self._compact_bytes = 0
                self._metas.clear()
                self._order.clear()
                self._expiry.clear()
                self._disk.clear()
                self._elements.clear()
                self._index = new_index(self._config, self._dim)
                self._ram_bytes = self._disk_bytes = 0
                if self._finalizer is not None:
                    self._finalizer()  # removes the non-persistent directory / files now
