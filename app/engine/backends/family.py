"""What a model family declares about itself, for the registry.

Each family module in :mod:`app.engine.backends` declares one ``FAMILY = FamilyInfo(...)`` with
literal values only (strings, tuples, a dict), next to its ``load(name_or_path, device, dtype,
quantization_config)``. The registry reads that declaration from the module's source without
importing the module (which would import torch), so listing families, resolving a model name and
writing ``--help`` stay cheap; the module is imported only when one of its models is loaded.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType


@dataclass(frozen=True)
class FamilyInfo:
    """A model family's identity and the names that lead to it.

    Attributes:
        name: the family's id (``BackendSpec.family``), a Python identifier, e.g. ``"smolvlm"``.
        label: how people write the family's name, in messages and help, e.g. ``"SmolVLM2"``.
        hub_prefixes: hub id prefixes of the family's checkpoints, e.g. ``("HuggingFaceTB/SmolVLM",)``.
        model_types: transformers ``model_type`` values in a checkpoint directory's ``config.json``.
        builtins: offline model names the family builds in code -> a one-line description.
        default_hub_id: the checkpoint the family loads by default; starts with one of ``hub_prefixes``.
        test_model: the tiny builtin that tests run the family with; one of ``builtins``.
    """

    name: str
    label: str
    hub_prefixes: tuple[str, ...]
    model_types: tuple[str, ...]
    builtins: Mapping[str, str]
    default_hub_id: str
    test_model: str

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.isidentifier():
            raise ValueError(f"FamilyInfo.name must be a Python identifier, got {self.name!r}")
        if not isinstance(self.label, str) or not self.label.strip():
            raise ValueError(f"FamilyInfo.label must be a non-empty string, got {self.label!r}")
        for field_name in ("hub_prefixes", "model_types"):
            value = getattr(self, field_name)
            if not isinstance(value, tuple) or not value or not all(isinstance(v, str) and v for v in value):
                raise ValueError(f"FamilyInfo.{field_name} must be a non-empty tuple of non-empty strings, got {value!r}")
        if (not isinstance(self.builtins, Mapping) or not self.builtins
                or not all(isinstance(k, str) and k and isinstance(v, str) and v for k, v in self.builtins.items())):
            raise ValueError(f"FamilyInfo.builtins must map builtin names to one-line descriptions, got {self.builtins!r}")
        if not isinstance(self.default_hub_id, str) or not any(self.default_hub_id.startswith(p) for p in self.hub_prefixes):
            raise ValueError(f"FamilyInfo.default_hub_id {self.default_hub_id!r} must start with one of "
                             f"hub_prefixes {self.hub_prefixes}")
        if self.test_model not in self.builtins:
            raise ValueError(f"FamilyInfo.test_model {self.test_model!r} must be one of builtins {sorted(self.builtins)}")
        # read-only, so a frozen FamilyInfo is really immutable
        object.__setattr__(self, "builtins", MappingProxyType(dict(self.builtins)))

    def __hash__(self) -> int:
        return hash((self.name, self.label, self.hub_prefixes, self.model_types, tuple(self.builtins.items()),
                     self.default_hub_id, self.test_model))
