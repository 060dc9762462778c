"""Command-line choices read from the package that declares them, when first needed.

The mode lists live with their owners (``compression.droppers.DROP_MODES``,
``compression.kvcodec.KV_BITS`` and ``VALUE_MODES``, ``memory.config.INDEX_KINDS``,
``compression.weights.LOAD_IN``); those modules import torch. Building a parser must not
(``livesight --help`` stays fast), so an option's ``choices`` is an :class:`OwnerChoices` that
imports its owner only when a value is checked or the option's help is printed.

Give such an option a ``metavar``: argparse otherwise lists the choices while the parser is built.
``%(choices)s`` in its help prints them when the help is shown.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Sequence

__all__ = ["DROP_CHOICES", "INDEX_CHOICES", "KV_BITS_CHOICES", "LOAD_IN_CHOICES", "VALUE_MODE_CHOICES", "OwnerChoices"]


class OwnerChoices(Sequence):
    """The values of ``module.name`` (a tuple), less ``skip``, imported on first use."""

    def __init__(self, module: str, name: str, *, skip: tuple = ()):
        self.module = module
        self.name = name
        self.skip = skip
        self._values: tuple | None = None

    def values(self) -> tuple:
        if self._values is None:
            owner = getattr(importlib.import_module(self.module), self.name)
            self._values = tuple(v for v in owner if v not in self.skip)
        return self._values

    def __getitem__(self, index):  # type: ignore[override]
        return self.values()[index]

    def __len__(self) -> int:
        return len(self.values())

    def __iter__(self) -> Iterator:
        return iter(self.values())

    def __contains__(self, value: object) -> bool:
        return value in self.values()

    def __repr__(self) -> str:
        return f"OwnerChoices({self.module}.{self.name})"


#: ``--drop``: the token drop modes.
DROP_CHOICES: Sequence[str] = OwnerChoices("compression.droppers", "DROP_MODES")
#: ``--kv-bits``: bits per KV element in memory.
KV_BITS_CHOICES: Sequence[int] = OwnerChoices("compression.kvcodec", "KV_BITS")
#: ``--kv-value-mode``: how values are quantized.
VALUE_MODE_CHOICES: Sequence[str] = OwnerChoices("compression.kvcodec", "VALUE_MODES")
#: ``--index``: the memory's summary index kinds.
INDEX_CHOICES: Sequence[str] = OwnerChoices("memory.config", "INDEX_KINDS")
#: ``--load-in``: weight quantization on load (full precision is the option left out).
LOAD_IN_CHOICES: Sequence[str] = OwnerChoices("compression.weights", "LOAD_IN", skip=(None,))
