"""A faiss index of chunk text embeddings, keyed by chunk id.

The text path of retrieval: every chunk that carries text (a note, a speech transcript) has one
sentence embedding ``(D,)`` here. It lives beside the memory bank, not in its files: chunk metas
carry their text, so the index is rebuilt from ``bank.metas()`` when a saved memory is reopened.
Chunks the bank forgot (retention, budgets) are dropped lazily: :meth:`TextIndex.search` takes the
set of live ids, skips the others and forgets them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np

from memory.index import FlatSummaryIndex


class TextIndex:
    """Exact inner-product search over unit text embeddings ``(D,)`` float32."""

    def __init__(self, dim: int) -> None:
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"TextIndex dim must be an int >= 1; got {dim!r}")
        self.dim = dim
        self._index = FlatSummaryIndex(dim)

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, chunk_id: object) -> bool:
        return chunk_id in self._index

    def add(self, ids: Iterable[int], vectors: np.ndarray) -> None:
        """Index ``vectors`` ``(N, D)`` under chunk ``ids`` ``(N,)``; ids already present are skipped."""
        ids = [int(i) for i in ids]
        vectors = np.asarray(vectors, dtype=np.float32).reshape(len(ids), self.dim)
        fresh = [j for j, cid in enumerate(ids) if cid not in self._index]
        if fresh:
            self._index.add(np.asarray([ids[j] for j in fresh], dtype=np.int64), vectors[fresh])

    def remove(self, ids: Iterable[int]) -> None:
        """Forget ``ids`` (unknown ids are ignored)."""
        self._index.remove(ids)

    def search(self, query: np.ndarray, k: int, live: Callable[[int], bool] | None = None) -> list[tuple[int, float]]:
        """Top ``k`` chunk ids by cosine with ``query`` ``(D,)``, best first: ``[(chunk_id, score)]``.

        ``live(chunk_id)`` says whether the bank still holds a chunk; the others are skipped and forgotten.
        """
        while True:
            hits = self._index.search(np.asarray(query, dtype=np.float32).reshape(self.dim), k)
            if live is None:
                return hits
            stale = [cid for cid, _ in hits if not live(cid)]
            if not stale:
                return hits
            self._index.remove(stale)

    @property
    def nbytes(self) -> int:
        return self._index.nbytes
