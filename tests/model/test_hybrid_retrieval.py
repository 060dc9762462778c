"""Hybrid retrieval (app.engine.retrieval.Retriever): the text path (real all-MiniLM-L6-v2 in faiss) fused
with the in-model path finds notes and speech asked about in other words, for every backend family, with
chunks in RAM or on disk, after a memory is reopened, and after retention forgot some chunks."""

from __future__ import annotations

import logging

import pytest

from app.engine.config import ConfigError, SessionConfig
from app.engine.retrieval import Retriever, fuse, select
from app.engine.session import Session
from memory import ChunkMeta
from tests.model.retrieval_material import (
    NEEDLE,
    QUESTION,
    SPEECH,
    SPEECH_Q,
)
from tests.model.retrieval_material import fill as _fill
from tests.model.retrieval_material import memory_evidence as _memory
from tests.model.retrieval_material import random_frame as _frame


def test_fusion_finds_a_paraphrased_needle_that_the_in_model_path_misses(tiny_backend):
    base = SessionConfig(window_tokens=48, top_k=2, drop="off", dialog_max_tokens=0, retrieval_neighbours=0)
    found = {}
    for text_path in (False, True):
        with Session(tiny_backend, base.updated(text_retrieval=text_path)) as s:
            t = _fill(s, 0.0, 10)
            s.ingest_text(t, NEEDLE)
            _fill(s, t + 1, 24)
            _, evidence = s.question_logits(QUESTION)
            found[text_path] = _memory(evidence)
    kv_only, hybrid = {e.t_start for e in found[False]}, found[True]
    assert t not in kv_only  # the random tiny model's own ranking misses the paraphrase
    assert t in {e.t_start for e in hybrid} and len(hybrid) == 2
    assert [e.t_start for e in hybrid] == sorted(e.t_start for e in hybrid)


def test_text_speech_and_frame_chunks_every_family(family_backend):
    """A note and a speech segment are found by paraphrase; a frame right before the speech comes along as
    its neighbour; frames are still retrieved by the in-model path alone."""
    cfg = SessionConfig(window_tokens=96, top_k=3, drop="off", dialog_max_tokens=0, retrieval_neighbours=1, vision=True)
    with Session(family_backend, cfg) as s:
        pts = 0.0
        for i in range(4):
            s.ingest(_frame(i, pts, seed=i))
            pts += 1
        s.ingest_text(pts, NEEDLE)
        pts += 1
        for i in range(4, 8):
            s.ingest(_frame(i, pts, seed=i))
            pts += 1
        s.ingest_speech(pts, pts + 2, SPEECH)
        speech_at = pts
        pts += 3
        for i in range(8, 30):
            s.ingest(_frame(i, pts, seed=i))
            pts += 1
        s.flush()
        kinds = {m.kind for m in s.bank.metas()}
        assert {"frame", "text", "speech"} <= kinds
        _, ev = s.question_logits(SPEECH_Q)
        mem = _memory(ev)
        assert any(e.kind == "speech" and e.t_start == speech_at for e in mem)
        metas = s.bank.metas()
        before = metas[next(i for i, m in enumerate(metas) if m.kind == "speech") - 1]  # the moment just before
        assert before.kind == "frame" and before.t_end <= speech_at
        assert any(e.chunk_id == before.chunk_id for e in mem)  # came along as the hit's neighbour
        _, ev = s.question_logits(QUESTION)
        assert any(e.kind == "text" and e.text == NEEDLE for e in _memory(ev))
    with Session(family_backend, cfg.updated(text_retrieval=False, retrieval_neighbours=0)) as s:
        for i in range(24):
            s.ingest(_frame(i, float(i), seed=i))
        _, ev = s.question_logits("What did you see?")
        mem = _memory(ev)
    assert len(mem) == 3 and all(e.kind == "frame" for e in mem)


def test_frame_hits_bring_no_neighbours_by_default(tiny_backend):
    """Neighbours come along for hits with text only: a frames-only memory answers with exactly top_k chunks."""
    with Session(tiny_backend, SessionConfig(window_tokens=64, top_k=3, drop="off", dialog_max_tokens=0)) as s:
        for i in range(16):
            s.ingest(_frame(i, float(i), seed=i))
        _, ev = s.question_logits("What did you see?")
    assert len(_memory(ev)) == 3


def test_chunks_on_disk_and_a_reopened_memory(tiny_backend, tmp_path):
    cfg = SessionConfig(window_tokens=48, top_k=2, drop="off", dialog_max_tokens=0, retrieval_neighbours=0,
                        ram_budget_mb=0.001, memory_dir=str(tmp_path / "mem"), persist=True)
    with Session(tiny_backend, cfg) as s:
        t = _fill(s, 0.0, 8)
        s.ingest_text(t, NEEDLE)
        _fill(s, t + 1, 20)
        assert s.bank.stats().chunks_disk > 0 and s.bank.tier(next(m.chunk_id for m in s.bank.metas()
                                                                    if m.text == NEEDLE)) == "disk"
        _, ev = s.question_logits(QUESTION)
        assert any(e.text == NEEDLE for e in _memory(ev))
        s.save()
    reopened = Session.open_memory(tiny_backend, tmp_path / "mem", cfg.updated(memory_dir=None, persist=False))
    with reopened:
        assert reopened._retriever.stats["text_indexed"] == 0  # indexed lazily, at the first question
        _, ev = reopened.question_logits(QUESTION)
        assert any(e.text == NEEDLE for e in _memory(ev))
        assert reopened._retriever.stats["text_indexed"] == len(reopened.bank)


def test_forgotten_chunks_leave_the_text_index(tiny_backend):
    cfg = SessionConfig(window_tokens=48, top_k=2, drop="off", dialog_max_tokens=0, retrieval_neighbours=0,
                        retention_s=15.0)
    with Session(tiny_backend, cfg) as s:
        s.ingest_text(0.0, NEEDLE)
        _, ev = s.question_logits(QUESTION)  # indexes the needle
        assert any(e.text == NEEDLE for e in _memory(ev)) or any(e.source == "window" for e in ev)
        _fill(s, 1.0, 40)  # retention forgets the needle's chunk
        assert all(m.text != NEEDLE for m in s.bank.metas())
        _, ev = s.question_logits(QUESTION)
        mem = _memory(ev)
        assert len(mem) == 2 and all(e.text != NEEDLE for e in mem)
        assert all(cid in s.bank for cid in s._retriever._index._index.ids())


def test_unloadable_embedder_falls_back_to_the_in_model_path(tiny_backend, tmp_path, caplog):
    missing = tmp_path / "no-such-model"
    missing.mkdir()  # a folder without a model: resolving works, loading fails
    cfg = SessionConfig(window_tokens=48, top_k=2, drop="off", dialog_max_tokens=0, embedder=str(missing))
    with Session(tiny_backend, cfg) as s, caplog.at_level(logging.WARNING, logger="app.engine.retrieval"):
        _fill(s, 0.0, 30)
        _, ev = s.question_logits(QUESTION)
        assert len(_memory(ev)) >= 2
    assert any("text retrieval is off" in r.message for r in caplog.records)


def test_text_path_switched_on_later_finds_earlier_notes(tiny_backend):
    cfg = SessionConfig(window_tokens=48, top_k=2, drop="off", dialog_max_tokens=0, retrieval_neighbours=0,
                        text_retrieval=False)
    current = {"cfg": cfg}
    with Session(tiny_backend, cfg) as s:
        retriever = Retriever(tiny_backend, s.bank, lambda: current["cfg"])
        t = _fill(s, 0.0, 10)
        s.ingest_text(t, NEEDLE)
        _fill(s, t + 1, 24)
        for m in s.bank.metas():  # what the session tells its retriever, here told to a second one
            retriever.added(s.bank.get(m.chunk_id))
        qseg = tiny_backend.question_segment(QUESTION, s._next_pos, first=True)
        probe, _ = tiny_backend.prefill(qseg, s._local_context(), want_query_tokens=True)
        assert retriever.stats["text_indexed"] == 0
        current["cfg"] = cfg.updated(text_retrieval=True)
        got = retriever.retrieve(QUESTION, probe, 2)
        assert any(r.chunk.meta.text == NEEDLE for r in got) and retriever.stats["text_indexed"] == len(s.bank)


def test_fuse_rewards_agreement_and_keeps_either_path():
    fused = fuse([[1, 2, 3, 4], [9, 3, 8]], k0=1.0)
    ids = [cid for cid, _ in fused]
    assert ids[0] == 3 or ids[0] in (1, 9)
    assert set(ids) == {1, 2, 3, 4, 8, 9}
    both = dict(fused)
    assert both[3] > both[2] and both[3] > both[8]  # in both rankings beats one rank better in one
    assert fuse([[5, 6]], [1.0]) == [(5, 1 / 21), (6, 1 / 22)]
    with pytest.raises(ValueError, match="2 rankings but 1 weights"):
        fuse([[1], [2]], [1.0])


def _metas(n: int, tokens: int = 10) -> list[ChunkMeta]:
    return [ChunkMeta(chunk_id=100 + i, t_start=float(i), t_end=float(i), kind="text", n_tokens=tokens) for i in range(n)]


def test_select_takes_hits_then_their_neighbours_within_the_budget():
    metas = _metas(20)
    ranked = [105, 112, 101]
    assert select(ranked, metas, 2) == [105, 112]
    assert select(ranked, metas, 2, neighbours=1) == [105, 112, 104, 106, 111, 113]
    assert select(ranked, metas, 2, neighbours=1, budget_tokens=40) == [105, 112, 104, 106]
    assert select(ranked, metas, 2, neighbours=2, neighbour_hits=1) == [105, 112, 104, 106, 103, 107]
    assert select([119, 100], metas, 2, neighbours=1) == [119, 100, 118, 101]  # no neighbour past either end
    assert select(ranked, metas, 3, budget_tokens=5) == [105]  # the first hit always comes
    assert select([999, 105], metas, 1) == [105]  # an id the bank no longer holds is passed over
    assert select(ranked, metas, 2, neighbours=1, neighbours_of=lambda m: m.chunk_id == 112) == [105, 112, 111, 113]


def test_retrieval_settings_are_validated_and_reach_the_command_line():
    import argparse

    from app.cli.args import add_session_arguments, session_overrides

    for field, value, match in [("text_candidates", 0, "text_candidates"), ("retrieval_neighbours", 9, "retrieval_neighbours"),
                                ("retrieval_budget_tokens", 0, "retrieval_budget_tokens"), ("embedder", "", "embedder"),
                                ("text_retrieval", "yes", "text_retrieval")]:
        with pytest.raises(ConfigError, match=match):
            SessionConfig(**{field: value})
    p = argparse.ArgumentParser()
    add_session_arguments(p)
    args = p.parse_args(["--text-retrieval", "off", "--embedder", "hub:x/y", "--text-candidates", "16",
                         "--retrieval-neighbours", "2", "--retrieval-budget-tokens", "300"])
    assert session_overrides(args) == {"text_retrieval": False, "embedder": "hub:x/y", "text_candidates": 16,
                                       "retrieval_neighbours": 2, "retrieval_budget_tokens": 300}


def test_retriever_follows_a_live_config(tiny_backend):
    cfg = SessionConfig(top_k=2, text_retrieval=False)
    current = {"cfg": cfg}
    with Session(tiny_backend, cfg) as s:
        r = Retriever(tiny_backend, s.bank, lambda: current["cfg"])
        assert r.config is cfg
        current["cfg"] = cfg.updated(text_retrieval=True)
        assert r.config.text_retrieval is True
