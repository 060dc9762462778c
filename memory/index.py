"""The faiss index over chunk summaries (inner product), keyed by chunk id.

Three kinds, one interface (:class:`SummaryIndex`):

- ``flat``: ``IndexIDMap2(IndexFlatIP)``, exact; removal with ``remove_ids``.
- ``hnsw``: ``IndexIDMap2(IndexHNSWFlat(METRIC_INNER_PRODUCT))``, approximate; HNSW cannot
  remove, so removed ids become tombstones filtered at search time (the search over-fetches),
  and the graph is rebuilt from the live vectors when tombstones outnumber them.
- ``ivf``: exact flat search until ``train_threshold`` vectors exist, then (once) an
  ``IndexIVFFlat(METRIC_INNER_PRODUCT)`` trained on them, with a hash-table direct map so
  vectors can be reconstructed and removed by id.

All vectors are float32 ``(S,)``; every kind can reconstruct a stored vector exactly, so the
index is also where the bank keeps summaries in RAM (no second copy).
"""

from __future__ import annotations

import functools
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from memory.config import BankConfig

log = logging.getLogger(__name__)

#: ids per reconstruct_batch call when copying vectors out of an index.
_BLOCK = 4096


@contextmanager
def faiss_threads(n: int) -> Iterator[None]:
    """Run faiss with ``n`` OpenMP threads in the calling thread (an OpenMP per-thread setting), then restore."""
    before = faiss.omp_get_max_threads()
    if before == n:
        yield
        return
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def _with_threads(method: Callable) -> Callable:
    @functools.wraps(method)
    def wrapper(self: SummaryIndex, *args, **kwargs):
        with faiss_threads(self.threads):
            return method(self, *args, **kwargs)

    return wrapper


def _ids_array(ids: Iterable[int]) -> np.ndarray:
    return np.ascontiguousarray(np.fromiter((int(i) for i in ids), dtype=np.int64))


class SummaryIndex(ABC):
    """Inner-product search over ``(S,)`` float32 summaries keyed by int64 chunk ids."""

    kind: str = ""
    #: OpenMP threads faiss uses inside this index's calls (see :func:`faiss_threads`).
    threads: int = 1

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self._ids: set[int] = set()

    # -- the faiss object -------------------------------------------------
    @property
    @abstractmethod
    def faiss_index(self) -> faiss.Index:
        """The faiss index that currently answers searches."""

    # -- mutation ---------------------------------------------------------
    @_with_threads
    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add ``vectors`` ``(N, S)`` float32 under ``ids`` ``(N,)`` int64 (ids must be new)."""
        ids = np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(len(ids), self.dim)
        if len(ids) == 0:
            return
        self._add(ids, vectors)
        self._ids.update(int(i) for i in ids)

    @_with_threads
    def remove(self, ids: Iterable[int]) -> None:
        """Forget ``ids``; unknown ids are ignored."""
        present = [int(i) for i in ids if int(i) in self._ids]
        if not present:
            return
        self._remove(_ids_array(present))
        self._ids.difference_update(present)

    @abstractmethod
    def _add(self, ids: np.ndarray, vectors: np.ndarray) -> None: ...

    @abstractmethod
    def _remove(self, ids: np.ndarray) -> None: ...

    # -- queries ----------------------------------------------------------
    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, chunk_id: object) -> bool:
        return chunk_id in self._ids

    def ids(self) -> set[int]:
        """The live ids (a copy)."""
        return set(self._ids)

    @_with_threads
    def search(self, query: np.ndarray, k: int, exclude: set[int] | frozenset[int] = frozenset()) -> list[tuple[int, float]]:
        """Top ``k`` live ids by inner product with ``query`` ``(S,)``, best first.

        Returns a list of ``(chunk_id, score)``; ids in ``exclude`` (and tombstones) are skipped,
        so up to ``k`` results come back even when some are filtered (the search over-fetches).
        """
        wanted = min(k, len(self._ids) - len(exclude & self._ids) if exclude else len(self._ids))
        if wanted <= 0:
            return []
        q = np.ascontiguousarray(query, dtype=np.float32).reshape(1, self.dim)
        skip = self._hidden() | (set(exclude) if exclude else set())
        ntotal = int(self.faiss_index.ntotal)
        fetch = min(ntotal, wanted + len(skip))
        while True:
            scores, found = self._search(q, fetch)
            out: list[tuple[int, float]] = []
            for cid, score in zip(found[0].tolist(), scores[0].tolist()):
                if cid < 0 or cid in skip:
                    continue
                out.append((cid, float(score)))
                if len(out) == wanted:
                    return out
            if fetch >= ntotal:  # an approximate index may miss some; return what it found
                return out
            fetch = min(ntotal, fetch * 2)

    def _hidden(self) -> set[int]:
        """Ids present in the faiss index but not live (tombstones)."""
        return set()

    def _search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self.faiss_index.search(q, k)

    @_with_threads
    def reconstruct(self, ids: Iterable[int]) -> np.ndarray:
        """The stored vectors of ``ids`` as ``(N, S)`` float32, exactly as added."""
        arr = _ids_array(ids)
        out = np.empty((len(arr), self.dim), dtype=np.float32)
        for start in range(0, len(arr), _BLOCK):
            block = arr[start : start + _BLOCK]
            out[start : start + len(block)] = self.faiss_index.reconstruct_batch(block)
        return out

    @property
    def nbytes(self) -> int:
        """Approximate RAM held by the index: vectors plus id maps and graph/list overhead."""
        return int(self.faiss_index.ntotal) * (self.dim * 4 + 16)

    # -- persistence ------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """JSON-able state that the manifest keeps beside the index file."""
        return {"kind": self.kind}

    @_with_threads
    def write(self, path: Path) -> None:
        """Write the faiss index to ``path`` (the caller makes it atomic)."""
        faiss.write_index(self.faiss_index, str(path))


class FlatSummaryIndex(SummaryIndex):
    """Exact inner product: ``IndexIDMap2(IndexFlatIP)``."""

    kind = "flat"

    def __init__(self, dim: int, index: faiss.Index | None = None) -> None:
        super().__init__(dim)
        self._index = index if index is not None else faiss.IndexIDMap2(faiss.IndexFlatIP(dim))

    @property
    def faiss_index(self) -> faiss.Index:
        return self._index

    def _add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        self._index.add_with_ids(vectors, ids)

    def _remove(self, ids: np.ndarray) -> None:
        self._index.remove_ids(ids)


class HNSWSummaryIndex(SummaryIndex):
    """Approximate: ``IndexIDMap2(IndexHNSWFlat(M, METRIC_INNER_PRODUCT))`` with tombstones."""

    kind = "hnsw"

    def __init__(self, dim: int, m: int, ef_construction: int, ef_search: int, index: faiss.Index | None = None) -> None:
        super().__init__(dim)
        self._m, self._ef_construction, self._ef_search = m, ef_construction, ef_search
        self._tombstones: set[int] = set()
        self._index = index if index is not None else self._empty()
        self._tune()

    def _empty(self) -> faiss.Index:
        return faiss.IndexIDMap2(faiss.IndexHNSWFlat(self.dim, self._m, faiss.METRIC_INNER_PRODUCT))

    def _tune(self) -> None:
        hnsw = faiss.downcast_index(self._index.index).hnsw
        hnsw.efConstruction = self._ef_construction
        hnsw.efSearch = self._ef_search

    @property
    def faiss_index(self) -> faiss.Index:
        return self._index

    def _add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        revived = self._tombstones.intersection(ids.tolist())
        if revived:  # an id removed earlier comes back: drop the stale vector first
            self._rebuild(exclude=revived)
        self._index.add_with_ids(vectors, ids)

    def _remove(self, ids: np.ndarray) -> None:
        self._tombstones.update(ids.tolist())
        live = len(self._ids) - len(ids)
        if len(self._tombstones) > max(1024, live):
            self._ids.difference_update(ids.tolist())
            self._rebuild()

    def _rebuild(self, exclude: set[int] = frozenset()) -> None:
        keep = sorted(self._ids - self._tombstones - set(exclude))
        vectors = self.reconstruct(keep) if keep else np.empty((0, self.dim), np.float32)
        log.info("rebuilding HNSW index: %d live vectors, %d tombstones dropped", len(keep), len(self._tombstones))
        self._index = self._empty()
        self._tune()
        if keep:
            self._index.add_with_ids(vectors, _ids_array(keep))
        self._tombstones.clear()

    def _hidden(self) -> set[int]:
        return self._tombstones

    @property
    def tombstones(self) -> frozenset[int]:
        return frozenset(self._tombstones)

    @property
    def nbytes(self) -> int:
        return int(self._index.ntotal) * (self.dim * 4 + 16 + 2 * self._m * 4 + 16)

    def state(self) -> dict[str, Any]:
        return {"kind": self.kind, "tombstones": sorted(self._tombstones)}

    @classmethod
    def restore(cls, dim: int, config: BankConfig, index: faiss.Index, live: set[int], state: dict[str, Any]) -> HNSWSummaryIndex:
        out = cls(dim, config.hnsw_m, config.hnsw_ef_construction, config.hnsw_ef_search, index=index)
        out._ids = set(live)
        out._tombstones = {int(i) for i in state.get("tombstones", [])}
        return out


class IVFSummaryIndex(SummaryIndex):
    """Approximate: exact flat search until ``train_threshold`` vectors, then a trained IVF-Flat."""

    kind = "ivf"

    def __init__(self, dim: int, nlist: int, nprobe: int, train_threshold: int, index: faiss.Index | None = None) -> None:
        super().__init__(dim)
        self._nlist, self._nprobe, self._threshold = nlist, nprobe, train_threshold
        self._flat: faiss.Index | None = None
        self._ivf: faiss.Index | None = None
        if index is None:
            self._flat = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        elif isinstance(index, faiss.IndexIVF):
            self._ivf = index
            self._ivf.nprobe = nprobe
        else:
            self._flat = index

    @property
    def trained(self) -> bool:
        """Whether the IVF has been trained (before that, searches are exact)."""
        return self._ivf is not None

    @property
    def faiss_index(self) -> faiss.Index:
        return self._ivf if self._ivf is not None else self._flat

    def _add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if self._ivf is not None:
            self._ivf.add_with_ids(vectors, ids)
            return
        self._flat.add_with_ids(vectors, ids)
        if self._flat.ntotal >= self._threshold:
            self._train()

    def _train(self) -> None:
        all_ids = _ids_array(faiss.vector_to_array(self._flat.id_map))
        vectors = self.reconstruct(all_ids)
        nlist = min(self._nlist, len(all_ids))
        quantizer = faiss.IndexFlatIP(self.dim)
        ivf = faiss.IndexIVFFlat(quantizer, self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
        ivf.set_direct_map_type(faiss.DirectMap.Hashtable)
        ivf.train(vectors)
        ivf.add_with_ids(vectors, all_ids)
        ivf.nprobe = min(self._nprobe, nlist)
        log.info("trained IVF index: %d lists over %d vectors", nlist, len(all_ids))
        self._ivf, self._flat = ivf, None

    def _remove(self, ids: np.ndarray) -> None:
        self.faiss_index.remove_ids(ids)

    @property
    def nbytes(self) -> int:
        extra = self._nlist * self.dim * 4 if self._ivf is not None else 0
        return int(self.faiss_index.ntotal) * (self.dim * 4 + 24) + extra

    def state(self) -> dict[str, Any]:
        return {"kind": self.kind, "trained": self.trained}

    @classmethod
    def restore(cls, dim: int, config: BankConfig, index: faiss.Index, live: set[int], state: dict[str, Any]) -> IVFSummaryIndex:
        out = cls(dim, config.ivf_nlist, config.ivf_nprobe, config.ivf_train_threshold, index=index)
        out._ids = set(live)
        return out


def new_index(config: BankConfig, dim: int) -> SummaryIndex:
    """An empty index of the kind ``config.index`` names."""
    index: SummaryIndex
    if config.index == "flat":
        index = FlatSummaryIndex(dim)
    elif config.index == "hnsw":
        index = HNSWSummaryIndex(dim, config.hnsw_m, config.hnsw_ef_construction, config.hnsw_ef_search)
    else:
        index = IVFSummaryIndex(dim, config.ivf_nlist, config.ivf_nprobe, config.ivf_train_threshold)
    index.threads = config.faiss_threads
    return index


def read_index(path: Path, config: BankConfig, dim: int, live: set[int], state: dict[str, Any]) -> SummaryIndex:
    """Load an index written by :meth:`SummaryIndex.write` and check it against the manifest.

    Raises ``ValueError`` when the file does not match (kind, dimension or count); the caller
    then rebuilds the index from the saved summaries.
    """
    if state.get("kind") != config.index:
        raise ValueError(f"index kind {state.get('kind')!r} in the manifest differs from config {config.index!r}")
    with faiss_threads(config.faiss_threads):
        index = faiss.read_index(str(path))
    if index.d != dim:
        raise ValueError(f"index dimension {index.d} differs from summary_dim {dim}")
    if config.index == "flat":
        out: SummaryIndex = FlatSummaryIndex(dim, index=index)
        out._ids = set(live)
        expected = len(live)
    elif config.index == "hnsw":
        out = HNSWSummaryIndex.restore(dim, config, index, live, state)
        expected = len(live) + len(out.tombstones)
    else:
        out = IVFSummaryIndex.restore(dim, config, index, live, state)
        if out.trained != bool(state.get("trained")):
            raise ValueError("IVF trained state differs from the manifest")
        expected = len(live)
    if int(index.ntotal) != expected:
        raise ValueError(f"index holds {index.ntotal} vectors, the manifest expects {expected}")
    out.threads = config.faiss_threads
    return out
