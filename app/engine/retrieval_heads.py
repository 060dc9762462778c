"""Calibrated (layer, KV head) pairs for the in-model late-interaction rerank, per model.

The rerank (:func:`app.engine.retrieval.late_interaction_scores`) averages a question's best-match
attention logits over layers and KV heads. Without calibration it uses every head of the upper half
of the layers (:func:`app.engine.retrieval.rerank_layers`). Some heads retrieve far better than
others; :func:`calibrate` measures, on needle questions whose target chunk is known, how well each
(layer, head) pair alone ranks the target, and chooses a set of pairs greedily (each step adds the
pair that most improves the mean reciprocal rank of the target under the set's mean score).

The chosen pairs are data, one JSON file per model (:data:`DATA_DIR` ``/<model name>.json``, written
by ``livesight calibrate-retrieval``), with this shape::

    {"format": 1, "model": "<name>", "num_layers": L, "num_kv_heads": H,
     "heads": [[layer, head], ...], "calibration": {... how it was measured ...}}

``SessionConfig.retrieval_heads`` chooses what a session uses: ``"auto"`` (the model's shipped file
when there is one, else the upper half), ``"upper"`` (the upper half always) or the path of such a
file. A file for another shape of model, or a malformed one, is refused with a
:class:`RetrievalHeadsError` naming the problem.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

__all__ = ["DATA_DIR", "FORMAT", "RetrievalHeads", "RetrievalHeadsError", "calibrate", "heads_for", "load_heads",
           "save_heads", "upper_half"]

logger = logging.getLogger(__name__)

#: Where the shipped calibrations live (one ``<model name>.json`` per model).
DATA_DIR = Path(__file__).resolve().parent / "backends" / "data" / "retrieval_heads"
#: The version of the file format.
FORMAT = 1
#: ``SessionConfig.retrieval_heads`` values that are not paths.
MODES = ("auto", "upper")


class RetrievalHeadsError(ValueError):
    """A retrieval-heads file that cannot be used (missing, malformed, or for another model shape)."""


@dataclass(frozen=True)
class RetrievalHeads:
    """The (layer, KV head) pairs the rerank scores with.

    Attributes:
        layers: the layers that hold at least one pair, ascending (the keys read from memory).
        mask: ``len(layers) x num_kv_heads`` booleans as nested tuples: ``mask[i][h]`` = head ``h`` of
            ``layers[i]`` is used.
        source: where the pairs come from (``"upper half"`` or a file path), for logs and stats.
    """

    layers: tuple[int, ...]
    mask: tuple[tuple[bool, ...], ...]
    source: str

    @property
    def pairs(self) -> list[tuple[int, int]]:
        """The pairs, ``[(layer, head)]`` ascending."""
        return [(layer, h) for layer, row in zip(self.layers, self.mask) for h, on in enumerate(row) if on]

    @property
    def all_heads(self) -> bool:
        """Every head of each chosen layer is used (the rerank then needs no mask)."""
        return all(all(row) for row in self.mask)

    def mask_tensor(self):
        """``(len(layers), H)`` float32 mask for the scoring (torch imported here, when needed)."""
        import torch

        return torch.tensor(self.mask, dtype=torch.float32)


def upper_half(num_layers: int, num_kv_heads: int) -> RetrievalHeads:
    """Every head of the upper half of the layers (lower layers match surface form, not meaning)."""
    layers = tuple(range(num_layers // 2, num_layers))
    return RetrievalHeads(layers, tuple((True,) * num_kv_heads for _ in layers), "upper half")


def from_pairs(pairs, num_layers: int, num_kv_heads: int, source: str) -> RetrievalHeads:
    """Pairs ``[(layer, head)]`` as :class:`RetrievalHeads`.

    Raises:
        RetrievalHeadsError: no pairs, a pair that is not two integers, or one out of range (named).
    """
    if not isinstance(pairs, (list, tuple)) or not pairs:
        raise RetrievalHeadsError(f"{source}: 'heads' must be a non-empty list of [layer, head] pairs")
    chosen: dict[int, set[int]] = {}
    for pair in pairs:
        if (not isinstance(pair, (list, tuple)) or len(pair) != 2
                or not all(isinstance(x, int) and not isinstance(x, bool) for x in pair)):
            raise RetrievalHeadsError(f"{source}: each head must be [layer, head] (two integers), got {pair!r}")
        layer, head = pair
        if not 0 <= layer < num_layers:
            raise RetrievalHeadsError(f"{source}: layer {layer} out of range [0, {num_layers - 1}]")
        if not 0 <= head < num_kv_heads:
            raise RetrievalHeadsError(f"{source}: KV head {head} out of range [0, {num_kv_heads - 1}]")
        chosen.setdefault(layer, set()).add(head)
    layers = tuple(sorted(chosen))
    mask = tuple(tuple(h in chosen[layer] for h in range(num_kv_heads)) for layer in layers)
    return RetrievalHeads(layers, mask, source)


def load_heads(path: str | Path, num_layers: int, num_kv_heads: int, *, model: str | None = None) -> RetrievalHeads:
    """Read a retrieval-heads file for a model of ``num_layers`` layers and ``num_kv_heads`` KV heads.

    Raises:
        RetrievalHeadsError: the file cannot be read or parsed, has another format, was calibrated for
            another shape (or, with ``model``, another model), or holds bad pairs.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise RetrievalHeadsError(f"retrieval heads {path}: cannot read: {exc}") from None
    if not isinstance(data, dict):
        raise RetrievalHeadsError(f"retrieval heads {path}: expected a JSON object, got {type(data).__name__}")
    if data.get("format") != FORMAT:
        raise RetrievalHeadsError(f"retrieval heads {path}: format {data.get('format')!r}, expected {FORMAT}")
    shape = (data.get("num_layers"), data.get("num_kv_heads"))
    if shape != (num_layers, num_kv_heads):
        raise RetrievalHeadsError(
            f"retrieval heads {path}: calibrated for {shape[0]} layers x {shape[1]} KV heads, but the model has "
            f"{num_layers} x {num_kv_heads}")
    if model is not None and data.get("model") != model:
        raise RetrievalHeadsError(f"retrieval heads {path}: calibrated for model {data.get('model')!r}, not {model!r}")
    return from_pairs(data.get("heads"), num_layers, num_kv_heads, str(path))


def save_heads(path: str | Path, model: str, num_layers: int, num_kv_heads: int, pairs, calibration: dict[str, Any]) -> Path:
    """Write a retrieval-heads file (checked by reading it back). Returns its path."""
    path = Path(path)
    from_pairs([list(p) for p in pairs], num_layers, num_kv_heads, str(path))  # refuse bad pairs before writing
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"format": FORMAT, "model": model, "num_layers": num_layers, "num_kv_heads": num_kv_heads,
            "heads": [[int(a), int(b)] for a, b in sorted(pairs)], "calibration": calibration}
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    tmp.replace(path)
    load_heads(path, num_layers, num_kv_heads, model=model)
    return path


@lru_cache(maxsize=32)
def _cached(path: str, mtime: float, num_layers: int, num_kv_heads: int, model: str | None) -> RetrievalHeads:
    return load_heads(path, num_layers, num_kv_heads, model=model)


def heads_for(spec, setting: str = "auto") -> RetrievalHeads:
    """The pairs a session of model ``spec`` (a :class:`BackendSpec`) reranks with under ``setting``
    (``SessionConfig.retrieval_heads``): read once per file version, then cached.

    Raises:
        RetrievalHeadsError: ``setting`` is a path to a bad file, or the model's shipped file is bad.
    """
    if setting == "upper":
        return upper_half(spec.num_layers, spec.num_kv_heads)
    if setting == "auto":
        path, model = DATA_DIR / f"{spec.name}.json", spec.name
        if not path.is_file():
            return upper_half(spec.num_layers, spec.num_kv_heads)
    else:
        path, model = Path(setting).expanduser(), None
    try:
        mtime = path.stat().st_mtime
    except OSError as exc:
        raise RetrievalHeadsError(f"retrieval heads {path}: cannot read: {exc}") from None
    return _cached(str(path), mtime, spec.num_layers, spec.num_kv_heads, model)


def _mrr(score, target) -> float:
    """Mean reciprocal rank of each question's target under ``score`` (a list of ``(chunks,)`` tensors)."""
    total = 0.0
    for s, t in zip(score, target):
        total += 1.0 / (1 + int((s > s[t]).sum()))
    return total / max(1, len(score))


def calibrate(tables, targets, *, max_heads: int = 24, min_gain: float = 0.0, min_layer: int = 0) -> dict[str, Any]:
    """Choose (layer, head) pairs from per-pair scores of calibration questions.

    Args:
        tables: one ``(chunks, L, H)`` tensor per question: each pair's late-interaction score of each
            candidate chunk (:func:`app.engine.retrieval.late_interaction_table` over all layers).
        targets: per question, the index of its target chunk among the candidates.
        max_heads: the most pairs chosen.
        min_gain: a pair is added only if it raises the set's mean reciprocal rank by more than this.
        min_layer: pairs are chosen from this layer up (the upper half by default in the CLI: the bank
            keeps upper-layer keys resident, so a rerank over lower layers would read whole chunk files).

    Returns:
        ``{"heads": [[layer, head], ...], "mrr": chosen set's MRR, "mrr_upper_half": the fixed upper
        half's, "mrr_all": every pair's, "pair_mrr": best single pairs}`` (MRR of the target's rank).
    """
    import torch

    if not tables or len(tables) != len(targets):
        raise ValueError("calibrate: one table per question and one target each are needed")
    n_layers, n_heads = tables[0].shape[1], tables[0].shape[2]
    flat = [t.reshape(t.shape[0], -1).float() for t in tables]  # (chunks, L*H)
    pairs = n_layers * n_heads
    single = [_mrr([f[:, p] for f in flat], targets) for p in range(pairs)]
    upper = torch.zeros(pairs, dtype=torch.bool).view(n_layers, n_heads)
    upper[n_layers // 2:] = True
    upper = upper.view(-1)
    mrr_upper = _mrr([f[:, upper].mean(dim=1) for f in flat], targets)
    mrr_all = _mrr([f.mean(dim=1) for f in flat], targets)
    chosen: list[int] = []
    sums = [torch.zeros(f.shape[0]) for f in flat]
    best = 0.0
    while len(chosen) < max_heads:
        step_best, step_pair = best, None
        for p in range(pairs):
            if p in chosen or p // n_heads < min_layer:
                continue
            m = _mrr([s + f[:, p] for s, f in zip(sums, flat)], targets)
            if m > step_best + min_gain or (step_pair is None and not chosen and m >= step_best):
                step_best, step_pair = m, p
        if step_pair is None:
            break
        chosen.append(step_pair)
        sums = [s + f[:, step_pair] for s, f in zip(sums, flat)]
        best = step_best
    top = sorted(range(pairs), key=lambda p: -single[p])[:10]  # over every layer, for the record
    return {"heads": [[p // n_heads, p % n_heads] for p in sorted(chosen)], "mrr": best, "mrr_upper_half": mrr_upper,
            "mrr_all": mrr_all, "pair_mrr": [[p // n_heads, p % n_heads, round(single[p], 4)] for p in top]}
