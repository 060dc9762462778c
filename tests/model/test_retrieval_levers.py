"""The in-model retrieval levers of issue 17: calibrated (layer, head) pairs for the rerank, the model's own
first answer tokens as a second probe, and adaptive k by a score gap; for every backend family, with
text, speech and frame chunks, chunks on disk, and a wrong calibration file refused by name."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from app.engine.config import ConfigError, SessionConfig
from app.engine.retrieval import expansion_probe, late_interaction_scores, late_interaction_table, select
from app.engine.retrieval_heads import (
    DATA_DIR,
    RetrievalHeadsError,
    calibrate,
    heads_for,
    load_heads,
    save_heads,
    upper_half,
)
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


def _heads_file(tmp_path, spec, pairs, **over) -> str:
    data = {"format": 1, "model": spec.name, "num_layers": spec.num_layers, "num_kv_heads": spec.num_kv_heads,
            "heads": pairs, "calibration": {}} | over
    path = tmp_path / f"{spec.name}-{len(list(tmp_path.iterdir()))}.json"
    path.write_text(json.dumps(data))
    return str(path)


# -- calibrated heads: the file ------------------------------------------------------------------


def test_heads_file_round_trip_and_every_refusal_names_the_problem(tmp_path):
    path = save_heads(tmp_path / "m.json", "m", 4, 2, [(3, 1), (2, 0), (3, 0)], {"questions": 5})
    heads = load_heads(path, 4, 2, model="m")
    assert heads.layers == (2, 3) and heads.pairs == [(2, 0), (3, 0), (3, 1)] and not heads.all_heads
    assert heads.mask_tensor().tolist() == [[1.0, 0.0], [1.0, 1.0]]
    with pytest.raises(RetrievalHeadsError, match=r"calibrated for 4 layers x 2 KV heads, but the model has 30 x 3"):
        load_heads(path, 30, 3)
    with pytest.raises(RetrievalHeadsError, match="calibrated for model 'm', not 'other'"):
        load_heads(path, 4, 2, model="other")
    spec = SimpleNamespace(name="m", num_layers=4, num_kv_heads=2)
    bad = {
        "layer 4 out of range": _heads_file(tmp_path, spec, [[4, 0]]),
        "KV head 2 out of range": _heads_file(tmp_path, spec, [[1, 2]]),
        "two integers": _heads_file(tmp_path, spec, [[1, 0, 1]]),
        "non-empty list": _heads_file(tmp_path, spec, []),
        "format 2, expected 1": _heads_file(tmp_path, spec, [[1, 0]], format=2),
    }
    for message, file in bad.items():
        with pytest.raises(RetrievalHeadsError, match=message):
            load_heads(file, 4, 2)
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(RetrievalHeadsError, match="cannot read"):
        load_heads(tmp_path / "broken.json", 4, 2)
    with pytest.raises(RetrievalHeadsError, match="layer 9 out of range"):
        save_heads(tmp_path / "never.json", "m", 4, 2, [(9, 0)], {})
    assert not (tmp_path / "never.json").exists()


def test_heads_for_auto_uses_the_shipped_file_else_the_upper_half(tmp_path):
    tiny = SimpleNamespace(name="tiny-smolvlm", num_layers=2, num_kv_heads=2)
    assert not (DATA_DIR / "tiny-smolvlm.json").exists()
    assert heads_for(tiny, "auto") == upper_half(2, 2) == heads_for(tiny, "upper")
    assert upper_half(30, 3).layers == tuple(range(15, 30)) and upper_half(30, 3).all_heads
    path = _heads_file(tmp_path, tiny, [[0, 1]])
    assert heads_for(tiny, path).pairs == [(0, 1)]
    with pytest.raises(RetrievalHeadsError, match="cannot read"):
        heads_for(tiny, str(tmp_path / "missing.json"))
    # the builtin real-weights model ships a calibration: the upper half's pairs it chose
    real = SimpleNamespace(name="smolvlm2-256m-smollm2", num_layers=30, num_kv_heads=3)
    shipped = heads_for(real, "auto")
    assert shipped.source.endswith("smolvlm2-256m-smollm2.json") and shipped != upper_half(30, 3)
    assert all(15 <= layer < 30 and 0 <= h < 3 for layer, h in shipped.pairs)
    record = json.loads((DATA_DIR / "smolvlm2-256m-smollm2.json").read_text())["calibration"]
    assert record["material"] == "needles" and record["seed"] != 0  # not the recall bench's streams


def test_calibrate_chooses_the_pairs_that_rank_the_target():
    g = torch.Generator().manual_seed(0)
    tables, targets = [], []
    for q in range(12):
        t = torch.randn(20, 4, 2, generator=g)  # (chunks, L, H)
        target = q % 20
        t[target, 3, 1] += 6.0  # one pair that finds every target
        t[target, 2, 0] += 6.0 if q % 2 else 0.0  # one that finds half of them
        tables.append(t)
        targets.append(target)
    out = calibrate(tables, targets, max_heads=4)
    assert [3, 1] in out["heads"] and out["mrr"] > out["mrr_upper_half"]
    assert out["mrr"] == pytest.approx(1.0)
    assert out["pair_mrr"][0][:2] == [3, 1]
    upper_only = calibrate(tables, targets, max_heads=4, min_layer=3)
    assert all(layer >= 3 for layer, _ in upper_only["heads"])
    with pytest.raises(ValueError, match="one table per question"):
        calibrate(tables, targets[:-1])


# -- calibrated heads: the scoring -----------------------------------------------------------------


def test_masked_scores_are_the_mean_over_the_chosen_pairs(family_backend):
    from app.cli.calibrate import question_table

    cfg = SessionConfig(window_tokens=48, top_k=2, drop="off", dialog_max_tokens=0, text_retrieval=False)
    with Session(family_backend, cfg) as s:
        t = _fill(s, 0.0, 6)
        s.ingest_text(t, NEEDLE)
        _fill(s, t + 1, 12)
        s.flush()
        ids, table = question_table(s, QUESTION)
        spec = family_backend.spec
        assert table.shape == (len(ids), spec.num_layers, spec.num_kv_heads) == (len(s.bank), *table.shape[1:])
        layers = list(range(spec.num_layers))
        keysets = [s.bank.keys(cid, layers) for cid in ids]
        cap = s._window.cache
        mark = cap.length
        qseg = family_backend.question_segment(QUESTION, s._next_pos, first=True)
        res, _ = family_backend.prefill(qseg, (), cache=cap, want_query_tokens=True)
        cap.rewind(mark)
    mask = torch.zeros(spec.num_layers, spec.num_kv_heads)
    mask[-1, 0] = 1.0
    mask[0, -1] = 1.0
    masked = late_interaction_scores(family_backend, res.query_tokens, keysets, head_mask=mask)
    expected = (table[:, -1, 0] + table[:, 0, -1]) / 2
    assert torch.allclose(torch.tensor(masked), expected, atol=1e-5)
    plain = late_interaction_scores(family_backend, res.query_tokens, keysets)
    ones = late_interaction_scores(family_backend, res.query_tokens, keysets, head_mask=torch.ones_like(mask))
    assert torch.allclose(torch.tensor(plain), table.mean(dim=(1, 2)), atol=1e-5)
    assert torch.allclose(torch.tensor(ones), torch.tensor(plain), atol=1e-6)
    assert late_interaction_table(family_backend, res.query_tokens, []).shape[0] == 0
    with pytest.raises(ValueError, match="head_mask"):
        late_interaction_scores(family_backend, res.query_tokens, keysets, head_mask=torch.ones(1, 1))


def test_calibrated_heads_retrieve_text_speech_and_frames_from_disk_every_family(family_backend, tmp_path):
    """A session reranking with a calibration file (one pair of the last layer) over chunks spilled to
    disk finds the paraphrased note and the speech segment (text path fused), and frames by the
    in-model path alone; a wrong-shape file is refused with its problem named, at the question."""
    spec = family_backend.spec
    heads = _heads_file(tmp_path, spec, [[spec.num_layers - 1, 0]])
    cfg = SessionConfig(window_tokens=96, top_k=3, drop="off", dialog_max_tokens=0, retrieval_neighbours=1,
                        ram_budget_mb=0.001, memory_dir=str(tmp_path / "mem"), retrieval_heads=heads)
    with Session(family_backend, cfg) as s:
        pts = 0.0
        for i in range(4):
            s.ingest(_frame(i, pts))
            pts += 1
        s.ingest_text(pts, NEEDLE)
        pts += 1
        s.ingest_speech(pts, pts + 2, SPEECH)
        speech_at = pts
        pts += 3
        for i in range(4, 28):
            s.ingest(_frame(i, pts))
            pts += 1
        s.flush()
        assert {"frame", "text", "speech"} <= {m.kind for m in s.bank.metas()}
        assert s.bank.stats().chunks_disk > 0
        assert s._retriever.heads().pairs == [(spec.num_layers - 1, 0)]
        _, ev = s.question_logits(QUESTION)
        assert any(e.kind == "text" and e.text == NEEDLE for e in _memory(ev))
        _, ev = s.question_logits(SPEECH_Q)
        assert any(e.kind == "speech" and e.t_start == speech_at for e in _memory(ev))
        s.config = cfg.updated(text_retrieval=False, retrieval_neighbours=0)
        _, ev = s.question_logits("What did you see?")
        assert len(_memory(ev)) == 3
        s.config = cfg.updated(retrieval_heads=_heads_file(tmp_path, spec, [[0, 0]], num_layers=spec.num_layers + 1))
        with pytest.raises(RetrievalHeadsError, match="calibrated for"):
            s.question_logits(QUESTION)
        s.config = cfg  # the session still answers with a good setting
        _, ev = s.question_logits(QUESTION)
        assert any(e.text == NEEDLE for e in _memory(ev))


# -- the score gap -------------------------------------------------------------------------------


def _metas(n: int, tokens: int = 10) -> list[ChunkMeta]:
    return [ChunkMeta(chunk_id=i, t_start=float(i), t_end=float(i) + 0.5, n_tokens=tokens, kind="text", text=f"n{i}")
            for i in range(n)]


def test_score_gap_stops_taking_hits_below_the_fraction_of_the_best():
    metas = _metas(12)
    ranked, scores = [5, 2, 9, 1, 7], [0.10, 0.08, 0.05, 0.049, 0.03]
    assert select(ranked, metas, 8) == ranked  # no gap: top k
    assert select(ranked, metas, 8, scores=scores, score_gap=0.5) == [5, 2, 9]  # >= 0.05 kept
    assert select(ranked, metas, 2, scores=scores, score_gap=0.9) == [5, 2]  # k stays the most
    assert select(ranked, metas, 8, scores=scores, score_gap=0.05) == [5]  # the first hit always comes
    # neighbours come on top of the hits the gap kept, as before
    assert select(ranked, metas, 8, scores=scores, score_gap=0.3, neighbours=1) == [5, 2, 4, 6, 1, 3]
    with pytest.raises(ValueError, match="5 ranked chunks but 4 scores"):
        select(ranked, metas, 8, scores=scores[:4], score_gap=0.5)


def test_score_gap_adapts_the_hits_in_a_session(tiny_backend):
    base = SessionConfig(window_tokens=48, top_k=12, drop="off", dialog_max_tokens=0, retrieval_neighbours=0)
    with Session(tiny_backend, base) as s:
        t = _fill(s, 0.0, 10)
        s.ingest_text(t, NEEDLE)
        _fill(s, t + 1, 24)
        _, ev = s.question_logits(QUESTION)
        assert len(_memory(ev)) == 12
        s.config = base.updated(retrieval_score_gap=0.1)
        _, ev = s.question_logits(QUESTION)
        mem = _memory(ev)
        assert 1 <= len(mem) < 12 and any(e.text == NEEDLE for e in mem)


# -- the second probe ------------------------------------------------------------------------------


def test_second_probe_off_is_exact_and_on_leaves_no_trace(family_backend):
    cfg = SessionConfig(window_tokens=64, top_k=3, drop="off", dialog_max_tokens=0)
    with Session(family_backend, cfg) as s:
        t = _fill(s, 0.0, 8)
        s.ingest_text(t, NEEDLE)
        _fill(s, t + 1, 24)
        s.flush()
        window_len = s._window.cache.length
        before = s._retriever.stats.get("second_probes", 0)
        today = s.question_logits(QUESTION)
        assert s._retriever.stats.get("second_probes", 0) == before  # off: never asked
        s.config = cfg.updated(retrieval_probe_tokens=4)
        logits, ev = s.question_logits(QUESTION)
        assert s._retriever.stats["second_probes"] == before + 1
        assert s._window.cache.length == window_len
        assert any(e.text == NEEDLE for e in _memory(ev))
        s.config = cfg
        again = s.question_logits(QUESTION)
        assert torch.equal(again[0], today[0]) and again[1] == today[1]  # the probe left nothing behind
        ans = s.answer(QUESTION, max_new_tokens=3)
        s.config = cfg.updated(retrieval_probe_tokens=4)
        with_probe = s.answer("And whose drip was it?", max_new_tokens=3)
        assert with_probe.usage["retrieved_chunks"] >= 3 and ans.usage["retrieved_chunks"] >= 3


def test_expansion_probe_decodes_greedy_tokens_and_rewinds_the_cache(tiny_backend):
    with Session(tiny_backend, SessionConfig(window_tokens=64, drop="off", dialog_max_tokens=0)) as s:
        _fill(s, 0.0, 4)
        s.flush()
        cache = s._window.cache
        qseg = tiny_backend.question_segment(QUESTION, s._next_pos, first=True)
        res, _ = tiny_backend.prefill(qseg, (), cache=cache, want_query_tokens=True)
        mark = cache.length
        exp = expansion_probe(tiny_backend, cache, res, qseg, 3)
        assert cache.length == mark
        spec = tiny_backend.spec
        assert exp is not None and 1 <= exp.tokens <= 3
        assert exp.probe.query_tokens.shape[:2] == (spec.num_layers, exp.tokens)
        assert exp.probe.query_summary.shape == res.query_summary.shape
        gen = next(item for item in tiny_backend.generate(qseg, (), max_new_tokens=exp.tokens,
                                                            prefilled=(res, cache)) if not isinstance(item, str))
        assert exp.text == gen.text.strip()  # the same greedy tokens an answer starts with
        assert expansion_probe(tiny_backend, cache, res, qseg, 0) is None


def test_lever_settings_are_validated():
    for field, bad, message in [("retrieval_probe_tokens", 65, "retrieval_probe_tokens must be"),
                                ("retrieval_probe_tokens", -1, "retrieval_probe_tokens must be"),
                                ("retrieval_score_gap", 1.0, "retrieval_score_gap must be"),
                                ("retrieval_score_gap", 0.0, "retrieval_score_gap must be"),
                                ("retrieval_heads", "", "retrieval_heads must be"),
                                ("retrieval_heads", 3, "retrieval_heads must be")]:
        with pytest.raises(ConfigError, match=message):
            SessionConfig(**{field: bad})
    cfg = SessionConfig(retrieval_probe_tokens=8, retrieval_score_gap=0.5, retrieval_heads="upper")
    assert cfg.retrieval_score_gap == 0.5
