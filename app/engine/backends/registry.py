"""Model families and ``load_backend``.

The registry maps a family name to the module that implements it; modules are
imported only when a model of that family is loaded. Each family module
exposes ``FAMILY``, ``DEFAULT_HUB_ID``, ``BUILTINS`` (offline names it builds
in code) and ``load(name_or_path, device, dtype, quantization_config)``.
"""

from __future__ import annotations

import importlib
import json
import logging
from pathlib import Path

from app.engine.backends.base import BackendError, VideoLLM

logger = logging.getLogger(__name__)

#: family -> module implementing it.
FAMILIES: dict[str, str] = {
    "smolvlm": "app.engine.backends.smolvlm",
    "qwen2_5_vl": "app.engine.backends.qwen2_5_vl",
    "llava_onevision": "app.engine.backends.llava_onevision",
}

#: transformers ``model_type`` in a checkpoint's config.json -> family.
MODEL_TYPES: dict[str, str] = {
    "smolvlm": "smolvlm",
    "qwen2_5_vl": "qwen2_5_vl",
    "llava_onevision": "llava_onevision",
}

#: hub id prefixes -> family, for ids that are not cached locally.
HUB_PREFIXES: dict[str, str] = {
    "HuggingFaceTB/SmolVLM": "smolvlm",
    "Qwen/Qwen2.5-VL-": "qwen2_5_vl",
    "llava-hf/llava-onevision-": "llava_onevision",
}

DEFAULT_MODEL = "HuggingFaceTB/SmolVLM2-256M-Video-Instruct"

_BUILTIN_FAMILY: dict[str, str] = {
    "tiny-smolvlm": "smolvlm",
    "smolvlm2-256m-smollm2": "smolvlm",
    "tiny-qwen2_5_vl": "qwen2_5_vl",
    "tiny-llava-ov": "llava_onevision",
}


def builtin_models() -> dict[str, str]:
    """Offline model names -> family."""
    return dict(_BUILTIN_FAMILY)


def resolve_family(name_or_path: str) -> str:
    """Which family a builtin name, local directory or hub id belongs to."""
    if name_or_path in _BUILTIN_FAMILY:
        return _BUILTIN_FAMILY[name_or_path]
    path = Path(name_or_path)
    if path.is_dir():
        cfg = path / "config.json"
        if not cfg.is_file():
            raise BackendError(f"{name_or_path}: a model directory needs a config.json")
        model_type = json.loads(cfg.read_text()).get("model_type", "")
        if model_type in MODEL_TYPES:
            return MODEL_TYPES[model_type]
        raise BackendError(f"{name_or_path}: model_type {model_type!r} is not supported (supported: {sorted(MODEL_TYPES)})")
    for prefix, family in HUB_PREFIXES.items():
        if name_or_path.startswith(prefix):
            return family
    raise BackendError(
        f"unknown model {name_or_path!r}: use a builtin ({', '.join(sorted(_BUILTIN_FAMILY))}), "
        f"a local model directory, or a hub id of a supported family ({', '.join(sorted(HUB_PREFIXES))}...)"
    )


def parse_dtype(dtype):
    import torch

    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype or torch.float32
    table = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
             "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    if dtype not in table:
        raise BackendError(f"dtype must be one of {sorted(table)}, got {dtype!r}")
    return table[dtype]


def load_backend(name_or_path: str = DEFAULT_MODEL, device: str = "cpu", dtype=None, quantization=None) -> VideoLLM:
    """Load a backend by builtin name, local directory or hub id.

    ``quantization`` is a :class:`compression.weights.WeightQuantConfig` (or ``None``).
    """
    from app.engine.backends.quantize import bnb_config

    family = resolve_family(name_or_path)
    module = importlib.import_module(FAMILIES[family])
    torch_dtype = parse_dtype(dtype)
    logger.info("loading %s (family %s) on %s in %s", name_or_path, family, device, torch_dtype)
    return module.load(name_or_path, device, torch_dtype, bnb_config(quantization))
