"""Weight quantization with bitsandbytes through transformers' own loading path.

Hub and local checkpoints are quantized by ``from_pretrained(...,
quantization_config=BitsAndBytesConfig(...))``. Models built in code (the
offline builtins) are saved once to a temporary folder and loaded back the
same way, so every model is quantized by transformers' own integration.
"""

from __future__ import annotations

import logging
import tempfile

logger = logging.getLogger(__name__)


def bnb_config(settings):
    """A transformers ``BitsAndBytesConfig`` from a :class:`compression.weights.WeightQuantConfig` (or ``None``)."""
    if settings is None or getattr(settings, "load_in", None) is None:
        return None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(**settings.bnb_kwargs())


def reload_quantized(model, model_cls, quantization_config, dtype):
    """Save ``model`` and load it back through ``model_cls.from_pretrained`` with ``quantization_config``."""
    with tempfile.TemporaryDirectory(prefix="livesight-quant-") as tmp:
        model.save_pretrained(tmp)
        logger.info("re-loading %s with %s", model_cls.__name__, type(quantization_config).__name__)
        return model_cls.from_pretrained(tmp, quantization_config=quantization_config, dtype=dtype)
