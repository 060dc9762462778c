"""Weight-quantization settings (bitsandbytes) for the model backends.

This module only describes the quantization; it never imports transformers. The
backend (``app/engine/backends/quantize.py``, which may) turns ``cfg.bnb_kwargs()`` into
transformers' ``BitsAndBytesConfig`` and passes it to ``from_pretrained`` as
``quantization_config``.

bitsandbytes 0.50 runs on the CPU too (``Linear8bitLt``; ``Linear4bit`` with NF4 or FP4).
bitsandbytes itself is imported lazily, inside :func:`quantized_linear_counts`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from streaming.checks import check_bool, check_choice

__all__ = [
    "COMPUTE_DTYPES",
    "LOAD_IN",
    "QUANT_TYPES",
    "WeightQuantConfig",
    "quantized_linear_count",
    "quantized_linear_counts",
]

#: Accepted values of :attr:`WeightQuantConfig.load_in` (``None`` = full precision).
LOAD_IN: tuple[str | None, ...] = (None, "8bit", "4bit")
#: Accepted values of :attr:`WeightQuantConfig.quant_type` (4-bit data type).
QUANT_TYPES: tuple[str, ...] = ("nf4", "fp4")
#: Accepted values of :attr:`WeightQuantConfig.compute_dtype`, mapped to torch dtypes.
COMPUTE_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


@dataclass(frozen=True)
class WeightQuantConfig:
    """How to quantize a model's Linear weights with bitsandbytes.

    Attributes:
        load_in: ``None`` (no quantization), ``"8bit"`` (LLM.int8, ``Linear8bitLt``) or ``"4bit"``
            (``Linear4bit``).
        quant_type: 4-bit data type, ``"nf4"`` or ``"fp4"`` (ignored for 8-bit).
        compute_dtype: dtype of the 4-bit matmuls: ``"float32"``, ``"float16"`` or ``"bfloat16"``.
        double_quant: 4-bit only: also quantize the quantization constants (saves ~0.4 bit/param).
        skip_modules: modules left in full precision, passed as ``llm_int8_skip_modules`` (transformers
            applies it to 8-bit and 4-bit alike). transformers 5.23 matches each entry against a module's
            full dotted name as a prefix ending at a dot boundary (regex allowed, e.g.
            ``"model.vision_model"``) or as a suffix (``"down_proj"``); a bare middle component such as
            ``"mlp"`` matches nothing. A non-empty list *replaces* transformers' default, which keeps the
            output head unquantized: include ``"lm_head"`` to keep it so. Empty = transformers' default.
    """

    load_in: str | None = None
    quant_type: str = "nf4"
    compute_dtype: str = "float32"
    double_quant: bool = False
    skip_modules: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check_choice("WeightQuantConfig.load_in", self.load_in, LOAD_IN)
        check_choice("WeightQuantConfig.quant_type", self.quant_type, QUANT_TYPES)
        check_choice("WeightQuantConfig.compute_dtype", self.compute_dtype, tuple(COMPUTE_DTYPES))
        check_bool("WeightQuantConfig.double_quant", self.double_quant)
        if not isinstance(self.skip_modules, tuple) or not all(isinstance(m, str) and m for m in self.skip_modules):
            raise ValueError(
                f"WeightQuantConfig.skip_modules must be a tuple of non-empty module names; got {self.skip_modules!r}"
            )

    @classmethod
    def from_name(cls, name: str | None) -> WeightQuantConfig:
        """Parse a short name, e.g. from a command line.

        Accepted: ``None``, ``"none"``, ``"8bit"``, ``"4bit"`` (NF4), ``"nf4"``, ``"fp4"``,
        ``"4bit-nf4"``, ``"4bit-fp4"`` (case-insensitive).
        """
        if name is None:
            return cls()
        if not isinstance(name, str):
            raise ValueError(f"quantization name must be a string; got {name!r}")
        key = name.strip().lower()
        table: dict[str, dict[str, Any]] = {
            "none": {},
            "8bit": {"load_in": "8bit"},
            "4bit": {"load_in": "4bit", "quant_type": "nf4"},
            "nf4": {"load_in": "4bit", "quant_type": "nf4"},
            "fp4": {"load_in": "4bit", "quant_type": "fp4"},
            "4bit-nf4": {"load_in": "4bit", "quant_type": "nf4"},
            "4bit-fp4": {"load_in": "4bit", "quant_type": "fp4"},
        }
        if key not in table:
            raise ValueError(f"quantization must be one of {sorted(table)}; got {name!r}")
        return cls(**table[key])

    @property
    def enabled(self) -> bool:
        """True when weights are quantized (``load_in`` is not None)."""
        return self.load_in is not None

    def bnb_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for transformers' ``BitsAndBytesConfig(**kwargs)``.

        Returns an empty dict when ``load_in`` is None: then pass no ``quantization_config`` at all.
        4-bit: ``load_in_4bit``, ``bnb_4bit_quant_type``, ``bnb_4bit_compute_dtype`` (a torch dtype)
        and ``bnb_4bit_use_double_quant``; 8-bit: ``load_in_8bit``. ``llm_int8_skip_modules`` when
        ``skip_modules`` is set.
        """
        if self.load_in is None:
            return {}
        kwargs: dict[str, Any]
        if self.load_in == "8bit":
            kwargs = {"load_in_8bit": True}
        else:
            kwargs = {
                "load_in_4bit": True,
                "bnb_4bit_quant_type": self.quant_type,
                "bnb_4bit_compute_dtype": COMPUTE_DTYPES[self.compute_dtype],
                "bnb_4bit_use_double_quant": self.double_quant,
            }
        if self.skip_modules:
            kwargs["llm_int8_skip_modules"] = list(self.skip_modules)
        return kwargs


def quantized_linear_counts(model: torch.nn.Module) -> dict[str, int]:
    """Count a model's Linear layers by kind.

    Returns:
        ``{"int8": n Linear8bitLt, "4bit": n Linear4bit, "full": n other torch.nn.Linear}``.
        bitsandbytes' classes subclass ``torch.nn.Linear``; they are counted only under their own key.
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    import bitsandbytes as bnb  # lazy: only needed when counting quantized layers

    counts = {"int8": 0, "4bit": 0, "full": 0}
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear8bitLt):
            counts["int8"] += 1
        elif isinstance(module, bnb.nn.Linear4bit):
            counts["4bit"] += 1
        elif isinstance(module, torch.nn.Linear):
            counts["full"] += 1
    return counts


def quantized_linear_count(model: torch.nn.Module) -> int:
    """Number of bitsandbytes ``Linear8bitLt`` and ``Linear4bit`` modules in ``model``."""
    counts = quantized_linear_counts(model)
    return counts["int8"] + counts["4bit"]
