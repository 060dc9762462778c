"""The fidelity measure: scoring helpers against hand-computed values, the needles' reply starts, the
choice of defaults, the eval suite's records, and (real weights) that full context beats the window."""

from __future__ import annotations

import math

import pytest

from app.bench.fidelity import FULL, WINDOW, bootstrap, choose_defaults, codec_name
from app.bench.fidelity_eval import correct_nll
from app.bench.fidelity_scoring import answer_logprobs, fidelity_retained, mean
from app.bench.needles import KIND_POOLS, make_stream


# ---- pure scoring ----------------------------------------------------------------------------------
def test_mean_and_fidelity_retained_by_hand():
    assert mean([1, 2, 6]) == 3.0
    with pytest.raises(ValueError, match="no values"):
        mean([])
    # window 4.0, full 1.5, setting 2.5: (4 - 2.5) / (4 - 1.5) = 0.6
    assert fidelity_retained(2.5, 4.0, 1.5) == pytest.approx(0.6)
    assert fidelity_retained(1.5, 4.0, 1.5) == 1.0 and fidelity_retained(4.0, 4.0, 1.5) == 0.0
    assert fidelity_retained(5.0, 4.0, 1.5) == pytest.approx(-0.4)  # worse than forgetting
    assert math.isnan(fidelity_retained(2.0, 3.0, 3.0))


def test_bootstrap_point_estimates_and_intervals_by_hand():
    full, window = [1.0, 2.0, 0.5, 1.5], [3.0, 5.0, 4.0, 4.0]
    half = [w - 0.5 * (w - f) for f, w in zip(full, window)]  # retains exactly half on every question
    worse = [w + 1.0 for w in window]
    values = {"nll": {FULL: full, WINDOW: window, "half": half, "worse": worse},
              "choice": {FULL: [1, 1, 0, 1], WINDOW: [0, 0, 0, 1], "half": [1, 0, 0, 1], "worse": [0, 0, 0, 0]}}
    out = bootstrap(values, draws=500, seed=3, ref="half")
    assert out[FULL]["nll"] == pytest.approx(1.25) and out[WINDOW]["nll"] == pytest.approx(4.0)
    # by definition, in every draw: full 100%, window 0%; "half" is 50% in every draw too
    assert out[FULL]["retained"] == out[FULL]["retained_lo"] == out[FULL]["retained_hi"] == 1.0
    assert out[WINDOW]["retained_lo"] == out[WINDOW]["retained_hi"] == 0.0
    for key in ("retained", "retained_lo", "retained_hi"):
        assert out["half"][key] == pytest.approx(0.5)
    # worse: (4 - 5) / (4 - 1.25) = -1 / 2.75
    assert out["worse"]["retained"] == pytest.approx(-1 / 2.75)
    assert out["worse"]["retained_lo"] <= out["worse"]["retained"] <= out["worse"]["retained_hi"] < 0
    # paired difference from the reference: half - half = 0 exactly; full - half = 0.5 in every draw
    assert out["half"]["delta"] == out["half"]["delta_lo"] == out["half"]["delta_hi"] == 0.0
    assert out[FULL]["delta_lo"] == pytest.approx(0.5) and out[FULL]["delta_hi"] == pytest.approx(0.5)
    assert out[FULL]["choice"] == 0.75 and out["worse"]["choice"] == 0.0
    assert 0.0 <= out[FULL]["choice_lo"] <= 0.75 <= out[FULL]["choice_hi"] <= 1.0
    assert out[WINDOW]["nll_lo"] <= 4.0 <= out[WINDOW]["nll_hi"]
    # the same seed resamples the same questions
    assert bootstrap(values, draws=500, seed=3, ref="half") == out


def test_bootstrap_leaves_out_draws_without_a_difference():
    values = {"nll": {FULL: [1.0, 2.0], WINDOW: [1.0, 2.0], "x": [1.5, 1.5]}}
    out = bootstrap(values, draws=50, seed=0)
    assert math.isnan(out["x"]["retained"]) and math.isnan(out["x"]["retained_lo"])


def _row(setting, retained, delta=0.0, bpe=None):
    return {"setting": setting, "retained": retained, "delta": delta, "bits_per_element": bpe}


def test_choose_defaults_picks_the_most_compressed_setting_within_two_points():
    codecs = [(16, 32, "channel"), (8, 32, "channel"), (4, 32, "channel"), (4, 128, "channel"), (2, 32, "channel")]
    table = [_row("top_k 4", 0.80), _row("top_k 8", 0.95, 0.0, 16.0), _row("top_k 16", 0.96),
             _row("top_k 8, rerank 16", 0.90), _row("top_k 8, rerank 32", 0.94),
             _row(codec_name(codecs[1]), 0.95, 0.0, 9.0), _row(codec_name(codecs[2]), 0.94, -0.01, 5.0),
             _row(codec_name(codecs[3]), 0.935, -0.015, 4.25), _row(codec_name(codecs[4]), 0.90, -0.05, 3.0)]
    chosen = choose_defaults(table, codecs, [4, 8, 16], [16, 32])
    assert chosen["codec"] == (4, 128, "channel")  # 2-bit loses 5 points: out; 4-bit group 128 is the smallest left
    assert chosen["top_k"] == 8  # within 2 points of top_k 16's 96%; top_k 4 is not
    assert chosen["rerank_candidates"] == 32  # 94% vs 95%: within 2 points; 16's 90% is not
    # nothing passes: uncompressed memory
    table[-2]["delta"] = table[-3]["delta"] = table[-4]["delta"] = -0.5
    table[-1]["delta"] = -0.5
    assert choose_defaults(table, codecs, [4, 8, 16], [16, 32])["codec"] == (16, 32, "channel")


# ---- needles ---------------------------------------------------------------------------------------
def test_needles_reply_leads_to_the_answer_and_notes_hold_sentences():
    s = make_stream(5, 20, 6, sentences=5)
    assert len(s.events) == 20
    for _pts, text in s.events:
        assert text.count(".") == 5  # five sentences, none of the answers has a period
    for n in s.needles:
        assert n.fact.startswith(n.reply + " " + n.answer)
        assert n.fact in s.events[n.index][1]
        assert n.question not in s.events[n.index][1]
        assert any(n.answer in pool for pool in KIND_POOLS)
    one = make_stream(5, 20, 6)
    assert all(text.count(".") == 1 for _, text in one.events)
    with pytest.raises(ValueError, match="sentences"):
        make_stream(0, 20, 3, sentences=0)


# ---- the eval suite ----------------------------------------------------------------------------------
def test_suite_records_load_as_livesight_jsonl(tmp_path):
    from app.eval.formats import detect_format, load_items
    from app.eval.suite import needle_task, suite_records, write_suite

    path = write_suite(tmp_path / "suite.jsonl", ["a.mp4", "b.mp4"], events=10, needles=3, sentences=2, seed=7)
    assert detect_format(path) == "jsonl"
    items = load_items(path)
    assert len(items) == 6 and {it.video for it in items} == {"a.mp4", "b.mp4"}
    raw = suite_records(["a.mp4", "b.mp4"], events=10, needles=3, sentences=2, seed=7)
    streams = [make_stream(7, 10, 3, sentences=2), make_stream(8, 10, 3, sentences=2)]
    for it, needle in zip(items, [n for s in streams for n in s.needles]):
        assert it.kind == "choice" and len(it.options) == 4
        right = it.options[it.option_letters.index(it.answer)]
        assert right == f"{needle.reply} {needle.answer}."
        assert it.t == 11.0 and len(it.notes) == 10 and it.evidence == ((needle.pts, needle.pts),)
        assert it.task == needle_task(needle.answer)
    assert [r["answer"] for r in raw] == [it.answer for it in items]
    with pytest.raises(ValueError, match="distinct"):
        suite_records(["a.mp4", "a.mp4"])
    with pytest.raises(ValueError, match="no needle kind|any needle kind"):
        needle_task("seventeen")


def test_correct_nll_reads_the_correct_options_score():
    rec = {"id": "x", "options": ["a", "b", "c"], "answer": "B", "scores": [-1.0, -0.25, -3.0]}
    assert correct_nll(rec) == 0.25
    with pytest.raises(ValueError, match="no option scores"):
        correct_nll({"id": "y", "options": ["a", "b"], "answer": "A", "error": "missing video: v"})


# ---- the session ------------------------------------------------------------------------------------
def _session(backend, window, stream):
    from app.engine.config import SessionConfig
    from app.engine.session import Session

    s = Session(backend, SessionConfig(window_tokens=window, top_k=0, kv_bits=16, drop="off", dialog_max_tokens=0,
                                       max_new_tokens=4, text_retrieval=False))
    for pts, text in stream.events:
        s.ingest_text(pts, text)
    return s


def test_answer_logprobs_is_the_answer_tokens_share_of_the_reply():
    from app.engine.backends.registry import load_backend

    backend = load_backend("tiny-smolvlm")
    stream = make_stream(1, 6, 2, sentences=2)
    n = stream.needles[0]
    with _session(backend, 10_000, stream) as s:
        scores, evidence = answer_logprobs(s, n.question, n.reply, n.options(), top_k=0)
        totals, _ = s.score_options(n.question, [n.reply] + [f"{n.reply} {a}" for a in n.options()], top_k=0)
        lengths = [int(backend.tokenize(t).numel()) for t in [n.reply] + [f"{n.reply} {a}" for a in n.options()]]
        for score, total, length in zip(scores, totals[1:], lengths[1:]):
            by_hand = (total * length - totals[0] * lengths[0]) / (length - lengths[0])
            assert score == pytest.approx(by_hand, abs=1e-6) and score <= 0
        assert evidence
        bare, _ = answer_logprobs(s, n.question, "", n.options(), top_k=0)
        assert bare == pytest.approx(s.score_options(n.question, n.options(), top_k=0)[0])
        with pytest.raises(ValueError, match="non-empty answers"):
            answer_logprobs(s, n.question, n.reply, ["  "], top_k=0)


@pytest.mark.slow
@pytest.mark.real_weights
def test_real_weights_full_context_beats_the_window_on_readable_needles():
    from app.engine.backends.registry import load_backend

    backend = load_backend("smolvlm2-256m-smollm2", dtype="float32")
    stream = make_stream(0, 16, 6, sentences=6, margin=0.0)
    old = [n for n in stream.needles if n.depth < 0.7]  # out of a 160-token window
    assert len(old) >= 3
    nll = {}
    try:
        for name, window in (("full", 100_000), ("window", 160)):
            with _session(backend, window, stream) as s:
                nll[name] = [-answer_logprobs(s, n.question, n.reply, n.options(), top_k=0)[0][0] for n in old]
    finally:
        backend.close()
    assert mean(nll["full"]) + 1.0 < mean(nll["window"])  # at least one nat per answer token better
    assert sum(f < w for f, w in zip(nll["full"], nll["window"])) >= len(old) - 1
