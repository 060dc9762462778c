"""Session behaviour: bounded work (invariant 2), retrieval and evidence (invariant 4), streaming, multi-turn."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from app.engine.config import ConfigError, SessionConfig
from app.engine.session import Session
from app.engine.types import Answer, AnswerDelta, SessionClosed, SessionError
from streaming.frame import Frame

from .conftest import random_frames, step_length


def test_attention_length_constant_with_finite_window(tiny_backend):
    frame_len = step_length(tiny_backend)
    cfg = SessionConfig(window_tokens=frame_len * 3, top_k=2, drop="off")
    with Session(tiny_backend, cfg) as s:
        lengths = [s.ingest(f).attention_length for f in random_frames(30, seed=5)]
        stats = s.stats()
    sink = lengths[0] - frame_len
    # once the window is full, every frame attends to sink + the window (itself and the 2 frames before it),
    # however long the stream
    assert lengths[2:] == [sink + 3 * frame_len] * 28
    assert max(lengths) == stats["max_attention_length"]
    assert stats["window_tokens"] <= cfg.window_tokens
    assert stats["bank_chunks"] == 27


def test_ram_stays_under_budget(tiny_backend, tmp_path):
    cfg = SessionConfig(window_tokens=64, top_k=4, ram_budget_mb=0.05, memory_dir=str(tmp_path / "mem"), kv_bits=8)
    with Session(tiny_backend, cfg) as s:
        for f in random_frames(40, seed=6):
            s.ingest(f)
            assert s.stats()["memory_bytes"]["ram"] <= cfg.ram_budget_bytes
        st = s.stats()
        assert st["memory_bytes"]["disk"] > 0
        ans = s.answer("What happened first?", max_new_tokens=2, top_k=40)
    assert sum(e.source == "memory" for e in ans.evidence) == st["bank_chunks"]


def _probe_query(s: Session, question: str) -> torch.Tensor:
    """The question's per-layer mean query, computed the way the session computes it."""
    qseg = s.backend.question_segment(question, s._next_pos, first=True)
    probe, _ = s.backend.prefill(qseg, s._local_context() + list(s._dialog))
    return probe.query_summary


def test_retrieval_matches_brute_force_and_planted_chunk_comes_first(tiny_backend):
    """Invariant 4 through the session: top-k equals brute-force scoring; a planted matching chunk is first.

    This checks the summary stage alone (rerank off); the rerank is exercised by the real-weights needle test.
    """
    from memory import ChunkMeta, KVChunk

    cfg = SessionConfig(window_tokens=64, top_k=3, drop="off", kv_bits=32, rerank=False, text_retrieval=False,
                        retrieval_neighbours=0)
    question = "What was written on the note?"
    with Session(tiny_backend, cfg) as s:
        for f in random_frames(12, seed=7):
            s.ingest(f)
        s.ingest_text(12.5, "The delivery code is 4471.")
        for f in random_frames(6, seed=8):
            s.ingest(Frame(f.index + 12, 13.0 + f.pts, f.wall, f.rgb))
        query = _probe_query(s, question)
        metas = s.bank.metas()
        scores = {m.chunk_id: float(s.bank.get(m.chunk_id).summary @ query) for m in metas}
        expected = sorted(scores, key=scores.get, reverse=True)[:3]
        _, evidence = s.question_logits(question)
        got = [e.chunk_id for e in evidence if e.source == "memory"]
        assert sorted(got) == sorted(expected)
        assert [e.t_start for e in evidence if e.source == "memory"] == sorted(
            next(m.t_start for m in metas if m.chunk_id == c) for c in got
        )
        # plant a chunk whose summary matches the query
        donor = s.bank.get(metas[0].chunk_id)
        planted = KVChunk(
            meta=ChunkMeta(chunk_id=10_000, t_start=3.25, t_end=3.75, kind="text", n_tokens=donor.meta.n_tokens, text="planted"),
            keys=donor.keys, values=donor.values, positions=donor.positions,
            summary=(query / query.norm()) * 1e3,
        )
        s.bank.append(planted)
        _, evidence = s.question_logits(question)
    memory = [e for e in evidence if e.source == "memory"]
    best = max(memory, key=lambda e: e.score)
    assert best.chunk_id == 10_000 and (best.t_start, best.t_end) == (3.25, 3.75) and best.text == "planted"
    assert [e.t_start for e in memory] == sorted(e.t_start for e in memory)


def test_evidence_in_time_order_with_frame_ranges(tiny_backend):
    cfg = SessionConfig(window_tokens=64, top_k=5, chunk_frames=2, drop="off", retrieval_neighbours=0)
    frames = random_frames(16, seed=9, fps=2.0)
    with Session(tiny_backend, cfg) as s:
        for f in frames:
            s.ingest(f)
        ans = s.answer("What did you see?", max_new_tokens=3)
    memory = [e for e in ans.evidence if e.source == "memory"]
    assert len(memory) == 5
    starts = [e.t_start for e in memory]
    assert starts == sorted(starts)
    for e in memory:
        assert len(e.frame_indices) == 2
        assert e.t_start == frames[e.frame_indices[0]].pts and e.t_end == frames[e.frame_indices[1]].pts
        assert e.thumbnail and e.thumbnail[:2] == b"\xff\xd8"  # JPEG
    window = [e for e in ans.evidence if e.source == "window"]
    assert window and window[0].t_end == frames[-1].pts


def test_answer_streams_and_respects_max_tokens(tiny_backend):
    with Session(tiny_backend, SessionConfig(max_new_tokens=5)) as s:
        for f in random_frames(3, seed=10):
            s.ingest(f)
        events = list(s.ask("Describe the scene."))
    deltas = [e for e in events if isinstance(e, AnswerDelta)]
    final = events[-1]
    assert isinstance(final, Answer) and all(isinstance(e, AnswerDelta) for e in events[:-1])
    assert final.usage["completion_tokens"] <= 5
    assert "".join(d.text for d in deltas).strip() == final.text
    if final.usage["completion_tokens"] == 5:
        assert final.stop_reason == "max_tokens"


def test_multi_turn_sees_earlier_turns(tiny_backend):
    with Session(tiny_backend, SessionConfig(max_new_tokens=4, top_k=0)) as s:
        for f in random_frames(2, seed=11):
            s.ingest(f)
        first = s.answer("First question?")
        before = s.stats()["dialog_tokens"]
        assert before > 0
        logits_with_dialog, _ = s.question_logits("Second question?")
        second = s.answer("Second question?")
        assert s.stats()["dialog_tokens"] > before
        assert s.stats()["questions"] == 2
    # The same second question without the first turn gives different logits: the dialog is in context.
    with Session(tiny_backend, SessionConfig(max_new_tokens=4, top_k=0)) as s2:
        for f in random_frames(2, seed=11):
            s2.ingest(f)
        logits_fresh, _ = s2.question_logits("Second question?")
    assert first.text is not None and second.text is not None
    assert logits_with_dialog.shape[-1] == logits_fresh.shape[-1]
    assert not torch.allclose(logits_with_dialog[-1], logits_fresh[-1])


def test_dialog_budget_drops_oldest_turns(tiny_backend):
    with Session(tiny_backend, SessionConfig(max_new_tokens=3, top_k=0, dialog_max_tokens=40)) as s:
        s.ingest(random_frames(1)[0])
        for i in range(5):
            s.answer(f"Question number {i}?")
            assert s.stats()["dialog_tokens"] <= 40


def test_cancel_by_closing_the_stream(tiny_backend):
    with Session(tiny_backend, SessionConfig(max_new_tokens=50)) as s:
        s.ingest(random_frames(1)[0])
        it = s.ask("Say a lot.")
        next(it)
        it.close()  # cancels; the session stays usable
        ans = s.answer("Again?", max_new_tokens=2)
        assert ans.usage["completion_tokens"] <= 2


def test_bad_inputs_raise_clear_errors(tiny_backend):
    s = Session(tiny_backend, SessionConfig())
    with pytest.raises(SessionError, match="non-empty"):
        s.answer("   ")
    with pytest.raises(SessionError, match="stream time"):
        s.ingest_text(float("nan"), "hello")
    with pytest.raises(SessionError, match="streaming.Frame"):
        s.ingest(np.zeros((4, 4, 3), np.uint8))  # type: ignore[arg-type]
    s.close()
    with pytest.raises(SessionClosed):
        s.ingest(random_frames(1)[0])


@pytest.mark.parametrize(
    "field,value,match",
    [
        ("window_tokens", 8, "window_tokens must be an integer in \\[16"),
        ("top_k", -1, "top_k"),
        ("drop", "magic", "drop must be one of off, feature, pixel, budget"),
        ("tau", 1.5, "tau must be a number in \\(-1.0, 1.0\\]"),
        ("keep_ratio", 0.0, "keep_ratio"),
        ("kv_bits", 3, "kv_bits must be one of 32, 16, 8, 4, 2"),
        ("ram_budget_mb", -1.0, "ram_budget_mb"),
        ("max_new_tokens", 0, "max_new_tokens"),
        ("index", "lsh", "index must be one of flat, hnsw, ivf"),
    ],
)
def test_config_validation_names_the_field(field, value, match):
    with pytest.raises(ConfigError, match=match):
        SessionConfig(**{field: value})
    with pytest.raises(ConfigError, match="unknown setting"):
        SessionConfig().updated(windw_tokens=3)


def test_command_line_session_options_map_onto_the_config():
    import argparse

    from app.cli.args import add_session_arguments, session_overrides

    parser = argparse.ArgumentParser()
    add_session_arguments(parser)
    args = parser.parse_args(["--rerank", "off", "--rerank-candidates", "32", "--top-k", "4", "--kv-bits", "4"])
    overrides = session_overrides(args)
    assert overrides == {"rerank": False, "rerank_candidates": 32, "top_k": 4, "kv_bits": 4}
    cfg = SessionConfig().updated(**overrides)
    assert (cfg.rerank, cfg.rerank_candidates, cfg.top_k) == (False, 32, 4)
    assert session_overrides(parser.parse_args([])) == {}
    with pytest.raises(ConfigError, match="rerank_candidates"):
        SessionConfig().updated(**session_overrides(parser.parse_args(["--rerank-candidates", "0"])))
    # the compact rerank keys: a bit width, or off (the rerank reads each candidate's stored keys)
    assert session_overrides(parser.parse_args(["--rerank-compact-bits", "off"])) == {"rerank_compact_bits": None}
    assert SessionConfig().updated(**session_overrides(
        parser.parse_args(["--rerank-compact-bits", "2"]))).rerank_compact_bits == 2
    levers = session_overrides(parser.parse_args(["--retrieval-heads", "upper", "--retrieval-probe-tokens", "6",
                                                  "--retrieval-score-gap", "0.6"]))
    cfg = SessionConfig().updated(**levers)
    assert (cfg.retrieval_heads, cfg.retrieval_probe_tokens, cfg.retrieval_score_gap) == ("upper", 6, 0.6)
    with pytest.raises(ConfigError, match="retrieval_score_gap"):
        SessionConfig().updated(**session_overrides(parser.parse_args(["--retrieval-score-gap", "1.5"])))
