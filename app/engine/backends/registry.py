"""Model families and ``load_backend``.

A family is one module of :mod:`app.engine.backends` that declares ``FAMILY = FamilyInfo(...)``
(:class:`~app.engine.backends.family.FamilyInfo`: its name, hub id prefixes, the checkpoint
``model_type`` values, builtin models, default hub id and test model) and a
``load(name_or_path, device, dtype, quantization_config)``. Registering a family is one line in
:data:`FAMILY_MODULES`; everything else here is derived from the declarations.

Nothing is read at import time. The declarations are read from the modules' source when first
asked for (a module is imported, with torch and transformers, only when one of its models is
loaded), so resolving a name or writing ``--help`` costs no model import.
"""

from __future__ import annotations

import ast
import functools
import importlib
import importlib.util
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from app.engine.backends.family import FamilyInfo
from app.engine.backends.types import BackendError

if TYPE_CHECKING:
    from app.engine.backends.base import VideoLLM

logger = logging.getLogger(__name__)

#: The family modules, in registry order; the first family's default hub id is the default model.
FAMILY_MODULES: tuple[str, ...] = (
    "app.engine.backends.smolvlm",
    "app.engine.backends.qwen2_5_vl",
    "app.engine.backends.llava_onevision",
)


def read_family_info(module: str) -> FamilyInfo:
    """The ``FAMILY = FamilyInfo(...)`` a family module declares, read from its source without importing it.

    Raises:
        BackendError: the module is missing, declares no ``FAMILY``, or gives a field a value that is
            not a literal.
    """
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        raise BackendError(f"family module {module} is not found")
    tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"), spec.origin)
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
        elif isinstance(node, ast.AnnAssign):
            target = node.target
        else:
            continue
        if not (isinstance(target, ast.Name) and target.id == "FAMILY"):
            continue
        call = node.value
        if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == FamilyInfo.__name__
                and not call.args):
            raise BackendError(f"{module}: FAMILY must be FamilyInfo(...) with keyword arguments")
        fields = {}
        for kw in call.keywords:
            try:
                fields[kw.arg] = ast.literal_eval(kw.value)
            except ValueError:
                raise BackendError(f"{module}: FamilyInfo field {kw.arg} must be a literal value") from None
        try:
            return FamilyInfo(**fields)
        except (TypeError, ValueError) as exc:
            raise BackendError(f"{module}: {exc}") from exc
    raise BackendError(f"{module} declares no FAMILY = FamilyInfo(...)")


@functools.cache
def _registry() -> dict[str, tuple[FamilyInfo, str]]:
    """family name -> (its info, its module), in registry order."""
    out: dict[str, tuple[FamilyInfo, str]] = {}
    builtins: dict[str, str] = {}
    for module in FAMILY_MODULES:
        info = read_family_info(module)
        if info.name in out:
            raise BackendError(f"family {info.name!r} is declared by both {out[info.name][1]} and {module}")
        for name in info.builtins:
            if name in builtins:
                raise BackendError(f"builtin {name!r} is declared by families {builtins[name]!r} and {info.name!r}")
            builtins[name] = info.name
        out[info.name] = (info, module)
    return out


def families() -> dict[str, FamilyInfo]:
    """Family name -> its :class:`FamilyInfo`, in registry order."""
    return {name: info for name, (info, _) in _registry().items()}


def family_module(family: str) -> str:
    """The module that implements ``family``."""
    if family not in _registry():
        raise BackendError(f"unknown family {family!r} (families: {', '.join(_registry())})")
    return _registry()[family][1]


def model_types() -> dict[str, str]:
    """transformers ``model_type`` in a checkpoint's config.json -> family."""
    return {t: info.name for info in families().values() for t in info.model_types}


def hub_prefixes() -> dict[str, str]:
    """Hub id prefix -> family, for ids that are not local directories."""
    return {p: info.name for info in families().values() for p in info.hub_prefixes}


def builtin_models() -> dict[str, str]:
    """Offline model names -> family."""
    return {name: info.name for info in families().values() for name in info.builtins}


def test_models() -> tuple[str, ...]:
    """One tiny builtin per family (its ``test_model``), in registry order: what family tests run with."""
    return tuple(info.test_model for info in families().values())


test_models.__test__ = False  # a helper for tests, not a test: pytest skips it when a test module imports it


def default_model() -> str:
    """The model loaded when none is named: the first family's default hub id."""
    return next(iter(families().values())).default_hub_id


def model_help() -> str:
    """The help text of a ``--model`` option: the default, the builtins, directories and hub ids.

    Plain text without ``%`` (argparse formats help strings with ``%``).
    """
    infos = families().values()
    builtins = "; ".join(f"{name}: {desc}" for info in infos for name, desc in info.builtins.items())
    types = ", ".join(model_types())
    hubs = "; ".join(f"{info.label} {', '.join(p + '*' for p in info.hub_prefixes)}" for info in infos)
    return (f"hub id, local model directory, or builtin; default {default_model()}. "
            f"Builtins (built offline): {builtins}. "
            f"A local directory: a checkpoint whose config.json model_type is one of {types}. "
            f"Hub ids: {hubs}.")


def resolve_family(name_or_path: str) -> str:
    """Which family a builtin name, local directory or hub id belongs to."""
    builtins = builtin_models()
    if name_or_path in builtins:
        return builtins[name_or_path]
    path = Path(name_or_path)
    if path.is_dir():
        cfg = path / "config.json"
        if not cfg.is_file():
            raise BackendError(f"{name_or_path}: a model directory needs a config.json")
        model_type = json.loads(cfg.read_text()).get("model_type", "")
        types = model_types()
        if model_type in types:
            return types[model_type]
        raise BackendError(f"{name_or_path}: model_type {model_type!r} is not supported (supported: {sorted(types)})")
    prefixes = hub_prefixes()
    for prefix, family in prefixes.items():
        if name_or_path.startswith(prefix):
            return family
    raise BackendError(
        f"unknown model {name_or_path!r}: use a builtin ({', '.join(sorted(builtins))}), "
        f"a local model directory, or a hub id of a supported family ({', '.join(sorted(prefixes))}...)"
    )


def parse_dtype(dtype):
    """``None``, a ``torch.dtype`` or a name (``"bf16"``, ``"float32"``, ...) -> a ``torch.dtype`` (default float32)."""
    import torch

    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype or torch.float32
    table = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
             "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    if dtype not in table:
        raise BackendError(f"dtype must be one of {sorted(table)}, got {dtype!r}")
    return table[dtype]


def load_backend(name_or_path: str | None = None, device: str = "cpu", dtype=None, quantization=None) -> VideoLLM:
    """Load a backend by builtin name, local directory or hub id (default :func:`default_model`).

    ``quantization`` is a :class:`compression.weights.WeightQuantConfig` (or ``None``).
    """
    from app.engine.backends.quantize import bnb_config

    name_or_path = default_model() if name_or_path is None else name_or_path
    family = resolve_family(name_or_path)
    module = importlib.import_module(family_module(family))
    if getattr(module, "FAMILY", None) != families()[family]:
        raise BackendError(f"{module.__name__}: FAMILY differs from what its source declares")
    torch_dtype = parse_dtype(dtype)
    logger.info("loading %s (family %s) on %s in %s", name_or_path, family, device, torch_dtype)
    return module.load(name_or_path, device, torch_dtype, bnb_config(quantization))
