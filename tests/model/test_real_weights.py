"""Real weights: a SmolVLM2-256M-shaped model whose language model is the real SmolLM2-135M-Instruct.

* ``Session.ask`` gives, token for token, the greedy answer of plain transformers ``generate``.
* A fact given as a timed text event 200+ chunks earlier is answered from the memory bank
  (not from the local window, which no longer holds it).
"""

from __future__ import annotations

import random

import pytest
import torch

from app.engine.config import SessionConfig
from app.engine.session import Session

pytestmark = [pytest.mark.slow, pytest.mark.real_weights]

SUBJECTS = ["The weather", "The traffic", "The lobby", "The parking lot", "The kitchen", "The hallway",
            "The garden", "The office", "A cyclist", "The queue"]
STATES = ["is quiet", "looks busy", "is empty", "has two people", "is brightly lit", "is dim",
          "smells of coffee", "is being cleaned", "passes by", "moves slowly"]


@pytest.fixture(scope="module")
def real_backend():
    from app.engine.backends.registry import load_backend

    backend = load_backend("smolvlm2-256m-smollm2", dtype="float32")
    assert not backend.spec.random_weights
    assert (backend.spec.num_layers, backend.spec.num_kv_heads, backend.spec.head_dim) == (30, 3, 64)
    assert backend.spec.tokens_per_frame == 64
    yield backend
    backend.close()


def test_greedy_answer_equals_transformers_generate(real_backend):
    be = real_backend
    question = "What is the capital of France?"
    with Session(be, SessionConfig(max_new_tokens=20, top_k=0)) as s:
        ans = s.answer(question)
    sink = be.text_segment(be.chat.sink_template.format(system=be.default_system), 0)
    q = be.question_segment(question, sink.next_position, first=True)
    input_ids = torch.cat([sink.token_ids, q.token_ids]).unsqueeze(0)
    with torch.inference_mode():
        out = be.model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                max_new_tokens=20, do_sample=False)
    ref = out[0, input_ids.shape[1]:].tolist()
    stop = next((i for i, t in enumerate(ref) if be.is_stop_token(t)), len(ref))
    ref = ref[:stop]
    assert list(ans.token_ids) == ref
    assert "Paris" in ans.text


@pytest.mark.timeout(1800)
def test_needle_200_chunks_back_comes_from_memory(real_backend):
    random.seed(0)
    fact = "The secret password for the vault is BLUEBERRY."
    # independent questions: the blind answer must not be in the dialog of the second
    cfg = SessionConfig(window_tokens=256, top_k=8, max_new_tokens=16, kv_bits=16, dialog_max_tokens=0)
    with Session(real_backend, cfg) as s:
        s.ingest_text(3.0, fact)
        for i in range(4, 226):
            s.ingest_text(float(i), f"{random.choice(SUBJECTS)} {random.choice(STATES)}.")
        stats = s.stats()
        chunks_after = sum(1 for m in s.bank.metas() if m.t_start > 3.0)
        assert chunks_after >= 200  # the needle is 200+ chunks back
        # without memory (local window only) the model cannot know it
        blind = s.answer("What is the secret password for the vault?", top_k=0)
        assert "BLUEBERRY" not in blind.text.upper()
        ans = s.answer("What is the secret password for the vault?")
        window = [e for e in ans.evidence if e.source == "window"][0]
        memory = [e for e in ans.evidence if e.source == "memory"]
        # the fact is long gone from the local window: it came back from the memory bank
        assert window.t_start > 3.0
        assert any(e.t_start == 3.0 and e.text == fact for e in memory)
        assert "BLUEBERRY" in ans.text.upper()
    assert stats["bank_chunks"] >= 200
