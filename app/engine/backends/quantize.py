"""Weight quantization with bitsandbytes through transformers' own loading path.

Hub and local checkpoints are quantized by ``from_pretrained(...,
quantization_config=BitsAndBytesConfig(...))``. Models built in code (the
offline builtins) are saved once to a temporary folder and loaded back the
same way, so every model is quantized by transformers' own integration.

bitsandbytes' 4-bit kernel for CPUs with AVX-512 bf16 repacks each weight into blocks of
``CPU_PACK_ROWS`` output rows by ``BNB_4BIT_BLOCKSIZE`` input columns, and fails on a layer
whose shape is not a whole number of blocks. Such layers (only small models built in code have
them; published checkpoints' widths are multiples of 64) stay in full precision.
"""

from __future__ import annotations

import copy
import logging
import tempfile

logger = logging.getLogger(__name__)


def bnb_config(settings):
    """A transformers ``BitsAndBytesConfig`` from a :class:`compression.weights.WeightQuantConfig` (or ``None``)."""
    if settings is None or getattr(settings, "load_in", None) is None:
        return None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(**settings.bnb_kwargs())


#: bitsandbytes' 4-bit quantization block (inputs per absmax) and the CPU kernel's row block.
BNB_4BIT_BLOCKSIZE = 64
CPU_PACK_ROWS = 32


def unpackable_4bit_layers(model) -> list[str]:
    """Names of ``nn.Linear`` layers whose shape bitsandbytes' CPU 4-bit kernel cannot pack."""
    import torch

    return [name for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear)
            and (module.in_features % BNB_4BIT_BLOCKSIZE or module.out_features % CPU_PACK_ROWS)]


def reload_quantized(model, model_cls, quantization_config, dtype):
    """Save ``model`` and load it back through ``model_cls.from_pretrained`` with ``quantization_config``.

    In 4-bit, layers bitsandbytes cannot pack on a CPU (:func:`unpackable_4bit_layers`) are added to
    ``llm_int8_skip_modules`` and stay in full precision.
    """
    if getattr(quantization_config, "load_in_4bit", False):
        unpackable = unpackable_4bit_layers(model)
        if unpackable:
            logger.info("keeping %d layers in full precision (shape not a multiple of the 4-bit block)", len(unpackable))
            quantization_config = copy.deepcopy(quantization_config)
            quantization_config.llm_int8_skip_modules = sorted(
                set(quantization_config.llm_int8_skip_modules or ()) | set(unpackable))
    with tempfile.TemporaryDirectory(prefix="livesight-quant-") as tmp:
        model.save_pretrained(tmp)
        logger.info("re-loading %s with %s", model_cls.__name__, type(quantization_config).__name__)
        return model_cls.from_pretrained(tmp, quantization_config=quantization_config, dtype=dtype)
