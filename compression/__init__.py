"""Compression: temporal token droppers, the KV quantization codec, weight-quantization settings.

Imports torch and numpy only (never transformers or gradio). The KV codec names
(``KVCodec``, ``KVCodecConfig``, ``KVCodecError``, ``PackedKV``) are loaded from
:mod:`compression.kvcodec` on first access.
"""

from __future__ import annotations

import importlib
from typing import Any

from compression.droppers import (
    DROP_MODES,
    DropConfig,
    DropPolicy,
    DropStats,
    PreDecision,
    budget_keep_count,
    budget_keep_mask,
    feature_keep_mask,
    token_cosine,
)
from compression.pixel import DropInputError, cell_pixel_mask, cell_sizes, pixel_cell_change, pixel_keep_mask
from compression.weights import (
    WeightQuantConfig,
    quantized_linear_count,
    quantized_linear_counts,
)

#: Names served lazily from a submodule: name -> module.
_LAZY = {
    "KVCodec": "compression.kvcodec",
    "KVCodecConfig": "compression.kvcodec",
    "KVCodecError": "compression.kvcodec",
    "PackedKV": "compression.kvcodec",
}

__all__ = [
    "DROP_MODES",
    "DropConfig",
    "DropInputError",
    "DropPolicy",
    "DropStats",
    "KVCodec",
    "KVCodecConfig",
    "KVCodecError",
    "PackedKV",
    "PreDecision",
    "WeightQuantConfig",
    "budget_keep_count",
    "budget_keep_mask",
    "cell_pixel_mask",
    "cell_sizes",
    "feature_keep_mask",
    "pixel_cell_change",
    "pixel_keep_mask",
    "quantized_linear_count",
    "quantized_linear_counts",
    "token_cosine",
]


def __getattr__(name: str) -> Any:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'compression' has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
