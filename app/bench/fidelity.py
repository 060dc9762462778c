"""Fidelity: answer log-likelihood, fidelity retained and accuracy of full context, window, retrieval and KV codecs.

Streams of timed text events (one per second, each a note of ``--sentences`` sentences) hide seeded
facts ("needles", see :mod:`app.bench.needles`) at evenly spread depths among distractor sentences. Each stream's session is
built once per KV codec setting; every needle's question is then put to it at each retrieval
setting, side by side on the same streams and questions:

* **full context**: a window longer than the stream (nothing leaves it, no retrieval needed);
* **local window only**: ``--window`` tokens, ``top_k 0``;
* **retrieval** at each ``--top-ks`` (16-bit memory KV, rerank over 64 candidates), and at top_k 8
  with each ``--candidates`` rerank count and with rerank off;
* **KV codecs** ``--codecs`` (bits, group size, value mode) at top_k 8.

Per question and setting: *NLL* = the mean negative log-probability per token of the expected
answer written after the start of the reply that restates the fact's subject ("Marta parked the van
in bay" -> " 47"; :func:`app.bench.fidelity_scoring.answer_logprobs`, nats; ``--answer-scoring bare``
scores the answer as the reply's first tokens instead); *choice accuracy* = the expected answer
scores above its three same-kind distractors; *accuracy* = a greedy answer
contains the expected answer. *Fidelity retained* = ``(NLL_window - NLL_setting) / (NLL_window -
NLL_full)`` over the question set (1 = as good as full context, 0 = as if forgotten). Every figure
carries a 95% bootstrap interval over questions (questions resampled with replacement, seeded).
"""

from __future__ import annotations

import argparse
import logging
import time
from typing import Any

log = logging.getLogger(__name__)

FULL_WINDOW = 1_000_000
BASE_TOP_K = 8
BASE_CANDIDATES = 64
FULL, WINDOW = "full context", "local window only"
DEFAULT_CODECS = ("16:32:channel,8:32:channel,4:32:channel,2:32:channel,4:64:channel,2:64:channel,"
                  "4:128:channel,2:128:channel,4:32:token")
TOLERANCE = 0.02  # a compressed setting "retains fidelity" within 2 points of its uncompressed reference


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="smolvlm2-256m-smollm2", help="backend (default: real SmolLM2 text weights)")
    parser.add_argument("--streams", type=int, default=3, help="streams, each with its own needles (default 3)")
    parser.add_argument("--events", type=int, default=36, help="text events (notes) per stream, one per second (default 36)")
    parser.add_argument("--sentences", type=int, default=12,
                        help="sentences per note: longer notes make longer memory chunks (default 12, about 90 tokens)")
    parser.add_argument("--answer-scoring", choices=("reply", "bare"), default="reply",
                        help="score the answer after the reply's restated subject (reply, default) or as the "
                             "reply's first tokens (bare)")
    parser.add_argument("--needles", type=int, default=12, help="needles (questions) per stream (default 12)")
    parser.add_argument("--window", type=int, default=512, help="LiveSight local window in tokens (default 512)")
    parser.add_argument("--top-ks", default="4,8,16", help="retrieval top-k values, 16-bit KV (default 4,8,16)")
    parser.add_argument("--candidates", default="16,32,64", help="rerank candidate counts at top_k 8 (default 16,32,64)")
    parser.add_argument("--codecs", default=DEFAULT_CODECS,
                        help="memory KV codecs BITS:GROUP:VALUEMODE compared at top_k 8 (default: 16/8/4/2 bits at "
                             "group 32, groups 64 and 128 at 4 and 2 bits, token values at 4 bits)")
    parser.add_argument("--levers", action=argparse.BooleanOptionalAction, default=None,
                        help="rows for the retrieval levers of issue 17 (calibrated heads, second probe, score gap, "
                             "all together, and the session's default retrieval) beside top_k 8 (default on; off with --quick)")
    parser.add_argument("--probe-tokens", type=int, default=6, help="second probe's answer tokens (default 6)")
    parser.add_argument("--score-gap", type=float, default=0.6, help="the score gap rows' gap (default 0.6)")
    parser.add_argument("--gap-top-k", type=int, default=16, help="top_k of the score gap rows (default 16)")
    parser.add_argument("--generate", action=argparse.BooleanOptionalAction, default=True,
                        help="also generate greedy answers for the generated-answer accuracy (default on)")
    parser.add_argument("--max-new-tokens", type=int, default=8, help="answer length limit (default 8)")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap draws for the intervals (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first stream and of the bootstrap (default 0)")
    parser.add_argument("--quick", action="store_true", help="tiny random model, 1 short stream (a smoke test)")
    from app.bench import runtime as _rt

    _rt.add_thread_argument(parser)
    _rt.add_plot_argument(parser)  # accepted by every bench; this one draws no plot


def parse_codecs(text: str) -> list[tuple[int, int, str]]:
    """``"16:32:channel,4:64:token"`` -> ``[(16, 32, "channel"), (4, 64, "token")]``; 16 bits at group
    32 channel (the retrieval settings' codec) is always included, first.

    Raises:
        ValueError: an item that is not ``BITS:GROUP:MODE`` or a value out of range, naming ``--codecs``.
    """
    from compression.kvcodec import KV_BITS, VALUE_MODES

    out: list[tuple[int, int, str]] = [(16, 32, "channel")]
    for item in str(text).split(","):
        if not item.strip():
            continue
        parts = item.strip().split(":")
        try:
            bits, group, mode = int(parts[0]), int(parts[1]), parts[2]
        except (ValueError, IndexError):
            raise ValueError(f"--codecs items must be BITS:GROUP:MODE (e.g. 4:32:channel), got {item!r}") from None
        if len(parts) != 3 or bits not in KV_BITS or not 8 <= group <= 4096 or mode not in VALUE_MODES:
            raise ValueError(f"--codecs item {item!r}: bits must be one of {list(KV_BITS)}, group in [8, 4096], "
                             f"mode one of {list(VALUE_MODES)}")
        if bits >= 16:
            group, mode = 32, "channel"  # float codecs ignore the group and mode
        if (bits, group, mode) not in out:
            out.append((bits, group, mode))
    return out


def codec_name(codec: tuple[int, int, str]) -> str:
    bits, group, mode = codec
    if codec == (16, 32, "channel"):
        return f"top_k {BASE_TOP_K}"
    if bits >= 16:
        return f"KV {bits}-bit (top_k {BASE_TOP_K})"
    return f"KV {bits}-bit, group {group}, {mode} values (top_k {BASE_TOP_K})"


#: Retrieval settings the levers of issue 17 added; the rows pin them to today's unless named.
LEVER_FIELDS = ("retrieval_heads", "retrieval_probe_tokens", "retrieval_score_gap")
DEFAULT_RETRIEVAL = "default retrieval"


def _session_config(window: int, codec: tuple[int, int, str], max_new: int):
    from app.bench.paraphrase import TODAY
    from app.engine.config import SessionConfig

    bits, group, mode = codec
    return SessionConfig(window_tokens=window, kv_bits=bits, kv_group_size=group, kv_value_mode=mode,
                         top_k=BASE_TOP_K, rerank=True, rerank_candidates=BASE_CANDIDATES, max_new_tokens=max_new,
                         dialog_max_tokens=0, drop="off", **TODAY)


def _lever_retrieval(args: argparse.Namespace) -> list[tuple[str, int, dict[str, Any]]]:
    """The lever rows (each beside ``top_k 8``, today's hybrid + neighbours) and the session's default retrieval."""
    from app.bench import runtime
    from app.bench.paraphrase import TODAY_ROW, lever_rows
    from app.engine.config import SessionConfig

    rows = lever_rows(int(runtime.check_range("probe_tokens", args.probe_tokens, 1, 64)),
                      float(runtime.check_range("score_gap", args.score_gap, 0.0, 0.999)),
                      int(runtime.check_range("gap_top_k", args.gap_top_k, 1, 4096)))
    out = [(name, k, changes) for name, k, changes in rows if name != TODAY_ROW]
    dflt = SessionConfig()
    fields = ("text_retrieval", "text_candidates", "retrieval_neighbours", "retrieval_budget_tokens") + LEVER_FIELDS
    out.append((DEFAULT_RETRIEVAL, dflt.top_k, {f: getattr(dflt, f) for f in fields}))
    return out


def _ingest(backend, config, stream) -> Any:
    from app.engine.session import Session

    session = Session(backend, config)
    for pts, text in stream.events:
        session.ingest_text(pts, text)
    return session


def _measure(session, needle, *, top_k: int, generate: bool, scoring: str = "reply", **changes: Any) -> dict[str, Any]:
    """One question under one setting: NLL of the expected answer, the choice among options, and
    (``generate``) the greedy answer. ``changes``: live settings for this question (e.g. rerank)."""
    from app.bench.fidelity_scoring import answer_logprobs
    from app.bench.needles import needle_in_context

    before = session.config
    if changes:
        session.config = before.updated(**changes)  # live settings are read per question (as the manager does)
    try:
        t0 = time.perf_counter()
        reply = needle.reply if scoring == "reply" else ""
        scores, evidence = answer_logprobs(session, needle.question, reply, needle.options(), top_k=top_k)
        score_s = time.perf_counter() - t0
        out: dict[str, Any] = {"nll": -scores[0], "scores": [round(s, 4) for s in scores],
                               "choice_correct": all(scores[0] > s for s in scores[1:]), "score_s": score_s}
        if generate:
            ans = session.answer(needle.question, top_k=top_k)
            out.update(text=ans.text, correct=needle.correct(ans.text))
    finally:
        session.config = before
    out["hit"], out["from_memory"] = needle_in_context(evidence, needle)
    return out


def _codec_bits(session, codecs: list[tuple[int, int, str]], tokens: int = 128) -> dict[str, float]:
    """True bits per element (metadata included) of ``tokens`` tokens of this session's real KV under each codec."""
    from app.engine.backends.types import KVSegment
    from compression.kvcodec import KVCodec, KVCodecConfig

    kv = KVSegment.concat([w.kv for w in session._window]) if session._window else None  # read-only peek
    if kv is None or kv.length < tokens:
        return {}
    k, v = kv.keys[:, :, :tokens].float(), kv.values[:, :, :tokens].float()
    out = {}
    for bits, group, mode in codecs:
        packed = KVCodec(KVCodecConfig(bits=bits, group_size=group, value_mode=mode)).encode(k, v)
        out[codec_name((bits, group, mode))] = float(packed.bits_per_element())
    return out


def bootstrap(values: dict[str, Any], draws: int, seed: int, ref: str | None = None) -> dict[str, dict[str, float]]:
    """95% bootstrap intervals over questions, the same resampled questions for every setting.

    Args:
        values: ``{"nll": {setting: [Q floats]}, "choice": {...}, "accuracy": {...}, ...}``: NLLs, and
            any other per-question figures (a setting may be missing from them); every list indexes
            the same ``Q`` questions.
        draws: bootstrap draws; seed: their seed.
        ref: a setting to compare every setting with, paired on the same draws: ``delta`` =
            retained(setting) - retained(ref) = ``(NLL_ref - NLL_setting) / (NLL_window - NLL_full)``.

    Returns:
        ``{setting: {"nll", "nll_lo", "nll_hi", "retained", "retained_lo", "retained_hi", "choice", ...}}``
        (and ``"delta", "delta_lo", "delta_hi"`` with ``ref``):
        point estimates over all questions and the 2.5/97.5 percentiles of the draws. Retained is
        ``(mean NLL_window - mean NLL_setting) / (mean NLL_window - mean NLL_full)``; draws whose
        denominator is 0 are left out of its interval (``nan`` when all are, or when the point's is).
    """
    import numpy as np

    nll = {k: np.asarray(v, dtype=np.float64) for k, v in values["nll"].items()}
    q = len(nll[FULL])
    idx = np.random.default_rng(seed).integers(0, q, size=(draws, q))
    means = {k: v[idx].mean(axis=1) for k, v in nll.items()}
    den_pt = nll[WINDOW].mean() - nll[FULL].mean()
    den = means[WINDOW] - means[FULL]
    def gain(row: dict[str, float], key: str, over: str, name: str) -> None:
        """``row[key]`` (+ ``_lo``, ``_hi``): (NLL_over - NLL_name) / (NLL_window - NLL_full), point and
        interval; draws whose denominator is 0 are left out. Retained is the gain over the window."""
        with np.errstate(divide="ignore", invalid="ignore"):
            draws_ = (means[over] - means[name]) / den
        draws_ = draws_[np.isfinite(draws_)]
        row[key] = float((nll[over].mean() - nll[name].mean()) / den_pt) if den_pt != 0 else float("nan")
        row[key + "_lo"] = float(np.percentile(draws_, 2.5)) if draws_.size else float("nan")
        row[key + "_hi"] = float(np.percentile(draws_, 97.5)) if draws_.size else float("nan")

    out: dict[str, dict[str, float]] = {}
    for name, v in nll.items():
        row = {"nll": float(v.mean()), "nll_lo": float(np.percentile(means[name], 2.5)),
               "nll_hi": float(np.percentile(means[name], 97.5))}
        gain(row, "retained", WINDOW, name)
        if ref is not None:
            gain(row, "delta", ref, name)
        for key in (k for k in values if k != "nll"):  # choice, accuracy, hit...: proportions per question
            if name in values[key]:
                a = np.asarray(values[key][name], dtype=np.float64)
                m = a[idx].mean(axis=1)
                row[key] = float(a.mean())
                row[key + "_lo"], row[key + "_hi"] = float(np.percentile(m, 2.5)), float(np.percentile(m, 97.5))
        out[name] = row
    return out


def choose_defaults(table: list[dict[str, Any]], codecs: list[tuple[int, int, str]], top_ks: list[int],
                    candidates: list[int], tolerance: float = TOLERANCE) -> dict[str, Any]:
    """The most compressed settings whose fidelity retained stays within ``tolerance`` of their reference.

    * KV codec: the fewest bits per element among ``codecs`` whose ``delta`` (retained minus 16-bit
      top_k 8's, paired) is at least ``-tolerance``; 16-bit when none is.
    * top_k: the smallest of ``top_ks`` whose retained is within ``tolerance`` of the best top_k's.
    * rerank candidates: the fewest of ``candidates`` (and the base count) within ``tolerance`` of the base.

    Args:
        table: rows with ``setting``, ``retained``, ``delta`` and ``bits_per_element`` (as :func:`run` builds).

    Returns:
        ``{"codec": (bits, group, mode), "codec_setting": name, "top_k": k, "rerank_candidates": c}``.
    """
    by = {r["setting"]: r for r in table}
    ok = [c for c in codecs if codec_name(c) in by and by[codec_name(c)]["delta"] >= -tolerance]
    codec = min(ok or [codecs[0]], key=lambda c: (by[codec_name(c)]["bits_per_element"] or 16.0, -c[1], c))
    ks = [k for k in top_ks if f"top_k {k}" in by]
    best = max(by[f"top_k {k}"]["retained"] for k in ks)
    top_k = min(k for k in ks if by[f"top_k {k}"]["retained"] >= best - tolerance)
    ref = by[f"top_k {BASE_TOP_K}"]["retained"]
    pool = {BASE_CANDIDATES: ref} | {c: by[f"top_k {BASE_TOP_K}, rerank {c}"]["retained"] for c in candidates
                                     if f"top_k {BASE_TOP_K}, rerank {c}" in by}
    cands = min(c for c, r in pool.items() if r >= ref - tolerance)
    return {"codec": codec, "codec_setting": codec_name(codec), "top_k": top_k, "rerank_candidates": cands}


def run(args: argparse.Namespace) -> dict[str, Any]:
    from app.bench import common, runtime
    from app.bench.needles import make_stream
    from app.engine.backends.registry import load_backend

    runtime.prepare_torch(args)
    if args.quick:
        args.model, args.streams, args.events, args.needles, args.window = "tiny-smolvlm", 1, 16, 3, 48
        args.sentences = 1
        args.max_new_tokens = min(args.max_new_tokens, 4)
        args.bootstrap = min(args.bootstrap, 200)
    args.levers = (not args.quick) if getattr(args, "levers", None) is None else bool(args.levers)
    streams_n = int(runtime.check_range("streams", args.streams, 1, 100))
    events = int(runtime.check_range("events", args.events, 2, 2000))
    sentences = int(runtime.check_range("sentences", args.sentences, 1, 64))
    scoring = args.answer_scoring
    needles_n = int(runtime.check_range("needles", args.needles, 1, 24))
    window = int(runtime.check_range("window", args.window, 16, 100_000))
    max_new = int(runtime.check_range("max_new_tokens", args.max_new_tokens, 1, 256))
    draws = int(runtime.check_range("bootstrap", args.bootstrap, 10, 100_000))
    top_ks = sorted(set(runtime.parse_ints("top_ks", args.top_ks, 1, 4096)) | {BASE_TOP_K})
    candidates = sorted(set(runtime.parse_ints("candidates", args.candidates, BASE_TOP_K + 1, 100_000)))
    codecs = parse_codecs(args.codecs)
    retrieval = [(WINDOW, 0, {})] + [(f"top_k {k}", k, {}) for k in top_ks]
    retrieval += [(f"top_k {BASE_TOP_K}, rerank {c}", BASE_TOP_K, {"rerank_candidates": c})
                  for c in candidates if c != BASE_CANDIDATES]
    retrieval.append((f"top_k {BASE_TOP_K}, rerank off", BASE_TOP_K, {"rerank": False}))
    if getattr(args, "levers", False):
        retrieval += _lever_retrieval(args)
    names = [FULL] + [r[0] for r in retrieval] + [codec_name(c) for c in codecs[1:]]
    load0 = runtime.load_average()
    t_start = time.perf_counter()
    backend = load_backend(args.model, dtype="float32")
    records: list[dict[str, Any]] = []
    codec_bits: dict[str, float] = {}
    stream_tokens: list[int] = []
    try:
        for s_index in range(streams_n):
            stream = make_stream(args.seed + s_index, events, needles_n, sentences=sentences)
            log.info("stream %d/%d: %d events, %d needles", s_index + 1, streams_n, events, len(stream.needles))
            per_needle = [{"stream": s_index, "pts": n.pts, "depth": round(n.depth, 3), "question": n.question,
                           "reply": n.reply if scoring == "reply" else "", "expected": n.answer,
                           "options": list(n.options()), "results": {}} for n in stream.needles]
            with _ingest(backend, _session_config(FULL_WINDOW, codecs[0], max_new), stream) as full:
                stream_tokens.append(full.stats()["window_tokens"])
                if not codec_bits:
                    codec_bits = _codec_bits(full, codecs)
                for rec, needle in zip(per_needle, stream.needles):
                    rec["results"][FULL] = _measure(full, needle, top_k=0, generate=args.generate, scoring=scoring)
            for codec in codecs:
                with _ingest(backend, _session_config(window, codec, max_new), stream) as session:
                    for rec, needle in zip(per_needle, stream.needles):
                        if codec == codecs[0]:
                            for name, k, changes in retrieval:
                                rec["results"][name] = _measure(session, needle, top_k=k, generate=args.generate,
                                                                scoring=scoring, **changes)
                        else:
                            rec["results"][codec_name(codec)] = _measure(session, needle, top_k=BASE_TOP_K,
                                                                         generate=args.generate, scoring=scoring)
                log.info("stream %d: %s done (%.0f s so far)", s_index + 1, codec_name(codec),
                         time.perf_counter() - t_start)
            records.extend(per_needle)
    finally:
        backend.close()

    values: dict[str, Any] = {"nll": {}, "choice": {}, "accuracy": {}}
    for name in names:
        rows = [r["results"][name] for r in records]
        values["nll"][name] = [x["nll"] for x in rows]
        values["choice"][name] = [float(x["choice_correct"]) for x in rows]
        if args.generate:
            values["accuracy"][name] = [float(x["correct"]) for x in rows]
    stats = bootstrap(values, draws, args.seed, ref=f"top_k {BASE_TOP_K}")
    table = []
    for name in names:
        rows = [r["results"][name] for r in records]
        table.append({"setting": name, "questions": len(rows), **stats[name],
                      "hit_rate": sum(x["hit"] for x in rows) / max(1, len(rows)),
                      "from_memory": sum(x["from_memory"] for x in rows) / max(1, len(rows)),
                      "median_score_s": common.median([x["score_s"] for x in rows] or [0.0]),
                      "bits_per_element": codec_bits.get(name)})
    chosen = choose_defaults(table, codecs, top_ks, candidates)
    metrics = {
        "chosen": {**chosen, "codec": list(chosen["codec"])}, "tolerance": TOLERANCE,
        "mean_note_tokens": sum(stream_tokens) / max(1, len(stream_tokens)) / events,
        "questions": len(records), "streams": streams_n, "events_per_stream": events,
        "mean_stream_tokens": sum(stream_tokens) / max(1, len(stream_tokens)), "window_tokens": window,
        "bootstrap_draws": draws, "settings": table, "codec_bits_per_element": codec_bits,
        "full_beats_window": stats[FULL]["nll_hi"] < stats[WINDOW]["nll_lo"],
        "load_avg_start": load0,
        "kv_shape": f"{backend.spec.num_layers} layers x {backend.spec.num_kv_heads} KV heads x {backend.spec.head_dim} dims",
        "wall_s": time.perf_counter() - t_start,
    }
    options: dict[str, Any] = {"quick": True, "threads": args.threads, "levers": args.levers} if args.quick else {
        "threads": args.threads, "model": args.model, "streams": streams_n, "events": events,
        "sentences": sentences, "answer_scoring": scoring, "needles": needles_n,
        "window": window, "top_ks": args.top_ks, "candidates": args.candidates, "codecs": args.codecs,
        "no_generate": not args.generate, "max_new_tokens": max_new, "bootstrap": draws, "seed": args.seed}
    if not args.quick:
        options.update({"no_levers": True} if not args.levers else {
            "probe_tokens": args.probe_tokens, "score_gap": args.score_gap, "gap_top_k": args.gap_top_k})
    return {"title": "Fidelity: answer log-likelihood and fidelity retained (full context vs window vs retrieval vs KV codecs)",
            "command": common.format_command("fidelity", [], options), "params": options, "metrics": metrics,
            "records": records, "markdown": _markdown(metrics, args, backend.spec.random_weights)}


def _ci(row: dict[str, Any], key: str, pct: bool = True, digits: int = 0) -> str:
    if key not in row or row[key] != row[key]:  # absent or nan
        return "-"
    scale, unit = (100, "%") if pct else (1, "")

    def num(x: float) -> str:
        v = round(scale * x, digits)
        return f"{v if v != 0 else 0.0:.{digits}f}"  # no "-0"

    return f"{num(row[key])}{unit} [{num(row[key + '_lo'])}, {num(row[key + '_hi'])}]"


def _markdown(m: dict[str, Any], args: argparse.Namespace, random_weights: bool) -> str:
    weights = ("tiny random weights: a smoke test, the figures are noise" if random_weights else
               "real SmolLM2-135M-Instruct text weights; the vision tower is not used: facts are text events")
    by = {r["setting"]: r for r in m["settings"]}
    full, win = by[FULL], by[WINDOW]
    scoring = getattr(args, "answer_scoring", "reply")
    sentences = getattr(args, "sentences", 1)
    lines = [
        f"Model `{args.model}` ({weights}). {m['streams']} streams x {m['events_per_stream']} timed notes (one per "
        f"second, {sentences} sentence(s) each, about {m['mean_note_tokens']:.0f} tokens a note, so about as many a "
        f"memory chunk; {m['mean_stream_tokens']:.0f} tokens a stream) with {m['questions'] // max(1, m['streams'])} "
        f"needles each at evenly spread depths = **{m['questions']} questions**, every one asked under every setting on "
        f"the same sessions (one session per stream and KV codec); local window {m['window_tokens']} tokens; retrieval "
        f"rows use 16-bit memory KV and rerank over {BASE_CANDIDATES} candidates unless named; KV rows are at top_k "
        f"{BASE_TOP_K}. Dialog history off (questions independent). {args.threads} torch thread(s); load average "
        f"{m['load_avg_start']} at the start. Brackets: 95% bootstrap intervals over questions ({m['bootstrap_draws']} "
        "draws, the same resampled questions for every setting).",
        "",
        f"Full context vs window only, NLL of the expected answer per token: **{full['nll']:.3f} "
        f"[{full['nll_lo']:.3f}, {full['nll_hi']:.3f}]** vs **{win['nll']:.3f} [{win['nll_lo']:.3f}, {win['nll_hi']:.3f}]** "
        "nats; " + ("the intervals do not overlap: full context clearly beats the window, so the measure discriminates."
                    if m["full_beats_window"] else
                    "the intervals overlap: the measure does not separate them on this material."),
        "",
        f"| setting | NLL / answer token (nats) | fidelity retained | vs top_k {BASE_TOP_K} 16-bit (paired) "
        "| choice accuracy (1 of 4) | generated-answer accuracy | needle in context | from memory | bits / element "
        "| median score s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in m["settings"]:
        bpe = "-" if r["bits_per_element"] is None else f"{r['bits_per_element']:.2f}"
        lines.append(f"| {r['setting']} | {_ci(r, 'nll', pct=False, digits=3)} | {_ci(r, 'retained')} | "
                     f"{_ci(r, 'delta', digits=1)} | {_ci(r, 'choice')} | {_ci(r, 'accuracy')} | "
                     f"{100 * r['hit_rate']:.0f}% | {100 * r['from_memory']:.0f}% | {bpe} | {r['median_score_s']:.2f} |")
    ref = by[f"top_k {BASE_TOP_K}"]
    close = [r["setting"] for r in m["settings"] if r["bits_per_element"] is not None and r is not ref
             and r["delta"] >= -m["tolerance"]]
    chosen = m["chosen"]
    tol = round(100 * m["tolerance"])
    reply_note = ("the answer is scored after the start of the reply that restates the fact's subject (\"Marta "
                  "parked the van in bay\" -> \" 47\"; only the answer's tokens count)" if scoring == "reply" else
                  "the answer is scored as the reply's first tokens (`--answer-scoring bare`)")
    lines += [
        "",
        f"- *NLL*: mean negative log-probability per token of the expected short answer in the assistant's reply "
        f"(`Session.score_options` over the context `answer` uses): {reply_note}. *Fidelity retained*: (NLL_window - "
        "NLL_setting) / (NLL_window - NLL_full) over the question set: 100% = as good as full context, 0% = as if "
        "forgotten (full context and window only are 100% and 0% by definition). *vs top_k 8 16-bit*: the setting's "
        "retained minus 16-bit top_k 8's, in points, on the same bootstrap draws. *Choice accuracy*: the expected "
        "answer has a higher log-likelihood than each of 3 seeded distractor answers of the same kind (other bays, "
        "colors, cities..., often another needle's answer in the same stream); chance is 25%. *Generated-answer "
        f"accuracy*: a greedy answer of at most {args.max_new_tokens} tokens contains the expected answer"
        + ("." if args.generate else " (not measured on this run, `--no-generate`, to keep it short on this machine)."),
        f"- *bits / element*: the KV codec's true size (metadata included) on {m['kv_shape']} real KV of the stream "
        "(128 tokens); the local window always stays float32.",
        f"- KV codecs within {tol} points of 16-bit (top_k {BASE_TOP_K}) in fidelity retained: "
        + (", ".join(close) if close else "none") + f". **Most compressed passing codec: {chosen['codec_setting']}**; "
        f"smallest top_k within {tol} points of the best top_k: **{chosen['top_k']}**; fewest rerank candidates within "
        f"{tol} points of {BASE_CANDIDATES}: **{chosen['rerank_candidates']}**.",
        "- Token drop settings and `chunk_frames` do not apply to this material: the streams are text events (each "
        "its own memory chunk), dropping acts on a frame's vision tokens and `chunk_frames` groups frames, and the "
        "SmolLM2 text weights cannot see frames.",
    ]
    levers = [r for r in m["settings"] if r["setting"].startswith(("+ ", "all levers")) or
              r["setting"] == DEFAULT_RETRIEVAL]
    if levers:
        lines.append(f"- Retrieval levers (issue 17) beside *top_k {BASE_TOP_K}* (today's hybrid + neighbours, "
                     f"fidelity retained {100 * ref['retained']:.0f}%, needle in context {100 * ref['hit_rate']:.0f}%): "
                     + "; ".join(f"{r['setting']}: retained {100 * r['retained']:.0f}% ({100 * r['delta']:+.1f} points "
                                 f"paired, [{100 * r['delta_lo']:.1f}, {100 * r['delta_hi']:.1f}]), needle in context "
                                 f"{100 * r['hit_rate']:.0f}%" for r in levers) + ".")
    return "\n".join(lines)
