"""Recall: is the needle in the question's context, per number of rerank candidates.

How many faiss candidates the late-interaction rerank needs (``rerank_candidates``): the same
needle-in-stream material as the fidelity bench (:mod:`app.bench.needles`: seeded facts among
distractor events, one timed text event per second), streamed once per stream into one session
(local window ``--window`` tokens, memory KV ``--kv-bits``); then every needle's question is put
to the same session at each candidate count, side by side, at ``--top-k``. A count equal to the
top-k is the summary stage alone (nothing to rerank). Measured: the share of questions whose
needle was in the context the answer would see (retrieved from memory, or still in the window),
and the median time of ``Session.question_logits`` (the question's probe prefill, the summary
search, the rerank, the fetch and the question's forward over the context; no generation).

Beside today's in-model rows, the same questions are put to the *hybrid* retrieval (the text
path's sentence-embedder ranking fused with the in-model one, at ``--top-k``, no neighbours) and
to the session's *default* retrieval settings (hybrid plus the neighbours of the best hits).
With ``--levers`` (on unless ``--quick``) the rows of :func:`app.bench.paraphrase.lever_rows` come too, and the
in-model path alone with the calibrated heads beside the in-model rows.
With ``--material paraphrase`` the streams are the paraphrase bench's (:mod:`app.bench.paraphrase_streams`:
questions in other words than their notes) instead of the needle streams.
"""

from __future__ import annotations

import argparse
import logging
import time
from typing import Any

log = logging.getLogger(__name__)

HYBRID, DEFAULT = "hybrid", "default"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="smolvlm2-256m-smollm2", help="backend (default: real SmolLM2 text weights)")
    parser.add_argument("--streams", type=int, default=3, help="streams, each with its own needles (default 3)")
    parser.add_argument("--events", type=int, default=150, help="text events per stream, one per second (default 150)")
    parser.add_argument("--needles", type=int, default=17, help="needles (questions) per stream (default 17)")
    parser.add_argument("--window", type=int, default=512, help="local window in tokens (default 512)")
    parser.add_argument("--kv-bits", type=int, default=4, help="memory KV bits (default 4)")
    parser.add_argument("--top-k", type=int, default=8, help="chunks retrieved per question (default 8)")
    parser.add_argument("--candidates", default="8,16,32,64,128",
                        help="rerank candidate counts to compare (default 8,16,32,64,128)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first stream (default 0)")
    parser.add_argument("--material", default="needles", choices=["needles", "paraphrase"],
                        help="needle streams (questions share words with their facts; default) or the paraphrase "
                             "streams (questions in other words; --streams and --needles then do not apply)")
    parser.add_argument("--levers", action=argparse.BooleanOptionalAction, default=None,
                        help="rows for the calibrated heads, the second probe and the score gap, each alone on top "
                             "of the hybrid + neighbours retrieval and all together (default on; off with --quick)")
    parser.add_argument("--probe-tokens", type=int, default=6, help="second probe's answer tokens (default 6)")
    parser.add_argument("--score-gap", type=float, default=0.6, help="the score gap rows' gap (default 0.6)")
    parser.add_argument("--gap-top-k", type=int, default=16, help="top_k of the score gap rows (default 16)")
    parser.add_argument("--quick", action="store_true", help="tiny random model, 1 short stream (a smoke test)")
    from app.bench import runtime as _rt

    _rt.add_thread_argument(parser)
    _rt.add_plot_argument(parser)  # accepted by every bench; this one draws no plot


def run(args: argparse.Namespace) -> dict[str, Any]:
    from app.bench import common, runtime
    from app.bench.needles import needle_in_context
    from app.bench.paraphrase import TODAY, lever_rows, use_config
    from app.engine.backends.registry import load_backend
    from app.engine.config import SessionConfig
    from app.engine.session import Session

    runtime.prepare_torch(args)
    if args.quick:
        args.model, args.streams, args.events, args.needles, args.window = "tiny-smolvlm", 1, 24, 3, 48
        args.candidates = "2,4,8"
        args.top_k = 2
    args.levers = (not args.quick) if getattr(args, "levers", None) is None else bool(args.levers)
    streams_n = int(runtime.check_range("streams", args.streams, 1, 100))
    events = int(runtime.check_range("events", args.events, 2, 2000))
    needles_n = int(runtime.check_range("needles", args.needles, 1, 24))
    window = int(runtime.check_range("window", args.window, 16, 100_000))
    top_k = int(runtime.check_range("top_k", args.top_k, 1, 4096))
    counts = sorted(set(runtime.parse_ints("candidates", args.candidates, 1, 100_000)))
    if counts[0] < top_k:
        raise ValueError(f"--candidates values must be >= --top-k ({top_k}); got {counts[0]}")
    default_cfg = SessionConfig(window_tokens=window, kv_bits=args.kv_bits, top_k=top_k, dialog_max_tokens=0,
                                drop="off")
    config = default_cfg.updated(rerank=True, text_retrieval=False, retrieval_neighbours=0,
                                 retrieval_budget_tokens=None, **TODAY)
    modes = [(str(c), config.updated(rerank_candidates=c, rerank=c > top_k)) for c in counts]
    modes.append((HYBRID, config.updated(text_retrieval=True)))
    if args.levers:
        levers = lever_rows(int(runtime.check_range("probe_tokens", args.probe_tokens, 1, 64)),
                            float(runtime.check_range("score_gap", args.score_gap, 0.0, 0.999)),
                            int(runtime.check_range("gap_top_k", args.gap_top_k, 1, 4096)))
        modes += [(name, default_cfg.updated(**changes, top_k=top_k if k == 8 else k)) for name, k, changes in levers]
        # the in-model path alone with the calibrated heads, beside the in-model rows above (upper half)
        modes.append((f"in-model, {counts[-1]} rerank candidates, calibrated heads",
                      config.updated(rerank_candidates=counts[-1], rerank=counts[-1] > top_k, retrieval_heads="auto")))
    modes.append((DEFAULT, default_cfg))
    streams = _streams(args, streams_n, events, needles_n)
    load0 = runtime.load_average()
    t_start = time.perf_counter()
    backend = load_backend(args.model, dtype="float32")
    records: list[dict[str, Any]] = []
    bank_chunks: list[int] = []
    try:
        for s_index, stream in enumerate(streams):
            with Session(backend, config) as session:
                for pts, text in stream.events:
                    session.ingest_text(pts, text)
                bank_chunks.append(len(session.bank))
                for needle in stream.needles:
                    rec = {"stream": s_index, "pts": needle.pts, "depth": round(needle.depth, 3), "results": {}}
                    for name, mode in modes:
                        use_config(session, mode)
                        t0 = time.perf_counter()
                        _, evidence = session.question_logits(needle.question, top_k=mode.top_k)
                        elapsed = time.perf_counter() - t0
                        hit, from_memory = needle_in_context(evidence, needle)
                        rec["results"][name] = {"hit": hit, "from_memory": from_memory, "question_s": elapsed,
                                                "memory_chunks": sum(e.source == "memory" for e in evidence)}
                    records.append(rec)
                use_config(session, config)
            log.info("stream %d/%d done (%.0f s so far)", s_index + 1, len(streams), time.perf_counter() - t_start)
    finally:
        backend.close()

    rows = []
    for name, mode in modes:
        res = [r["results"][name] for r in records]
        rows.append({
            "setting": name,
            "candidates": mode.rerank_candidates,
            "reranked": mode.rerank and mode.rerank_candidates > top_k,
            "text_retrieval": mode.text_retrieval,
            "neighbours": mode.retrieval_neighbours,
            "top_k": mode.top_k,
            "heads": mode.retrieval_heads,
            "probe_tokens": mode.retrieval_probe_tokens,
            "score_gap": mode.retrieval_score_gap,
            "questions": len(res),
            "hit_rate": sum(x["hit"] for x in res) / max(1, len(res)),
            "from_memory": sum(x["from_memory"] for x in res) / max(1, len(res)),
            "mean_memory_chunks": sum(x["memory_chunks"] for x in res) / max(1, len(res)),
            "median_question_s": common.median([x["question_s"] for x in res] or [0.0]),
        })
    metrics = {"questions": len(records), "streams": len(streams), "material": args.material,
               "events_per_stream": events, "top_k": top_k,
               "window_tokens": window, "kv_bits": args.kv_bits, "mean_bank_chunks": sum(bank_chunks) / len(bank_chunks),
               "rows": rows, "load_avg_start": load0, "wall_s": time.perf_counter() - t_start}
    options: dict[str, Any] = {"quick": True, "threads": args.threads, "levers": args.levers} if args.quick else {
        "threads": args.threads, "model": args.model, "streams": streams_n, "events": events, "needles": needles_n,
        "window": window, "kv_bits": args.kv_bits, "top_k": top_k, "candidates": args.candidates, "seed": args.seed,
        "material": args.material}
    if not args.quick:
        options.update({"no_levers": True} if not args.levers else {
            "probe_tokens": args.probe_tokens, "score_gap": args.score_gap, "gap_top_k": args.gap_top_k})
    return {"title": "Recall: needle in the question's context vs rerank candidates",
            "command": common.format_command("recall", [], options), "params": options, "metrics": metrics,
            "records": records, "markdown": _markdown(metrics, args, backend.spec.random_weights)}


def _streams(args: argparse.Namespace, streams_n: int, events: int, needles_n: int) -> list:
    """The streams of ``--material``: seeded needle streams, or one paraphrase stream per style."""
    if args.material == "paraphrase":
        from app.bench.paraphrase_streams import load_styles
        from app.bench.paraphrase_streams import make_stream as paraphrase_stream

        styles = load_styles()[:1] if args.quick else load_styles()
        return [paraphrase_stream(style, args.seed, max(events, 80)) for style in styles]
    from app.bench.needles import make_stream

    return [make_stream(args.seed + i, events, needles_n) for i in range(streams_n)]


def _markdown(m: dict[str, Any], args: argparse.Namespace, random_weights: bool) -> str:
    weights = "tiny random weights: a smoke test" if random_weights else "real SmolLM2-135M-Instruct text weights"
    lines = [
        f"Model `{args.model}` ({weights}), {m['material']} material. "
        f"{m['streams']} streams x {m['events_per_stream']} timed text events with "
        f"{m['questions'] // max(1, m['streams'])} needles each = **{m['questions']} questions**, every one asked "
        f"under each retrieval setting on the same session; top_k {m['top_k']}, local window {m['window_tokens']} "
        f"tokens, memory KV "
        f"{m['kv_bits']}-bit, {m['mean_bank_chunks']:.0f} chunks in the bank on average. Load average "
        f"{m['load_avg_start']} at the start.",
        "",
        "| retrieval | needle in context | needle from memory | memory chunks | median question s |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in m["rows"]:
        if r["setting"] == DEFAULT:
            label = f"default (hybrid, {r['neighbours']} neighbour(s) of the best hits, heads {r['heads']}, second " \
                    f"probe {r['probe_tokens'] or 'off'}, score gap {r['score_gap'] if r['score_gap'] else 'off'})"
        elif not r["setting"].isdigit() and r["setting"] != HYBRID:
            label = r["setting"]  # the levers' rows are named by what they add
        elif r["setting"] == HYBRID:
            label = f"hybrid: text path + in-model, {r['candidates']} rerank candidates"
        else:
            label = f"in-model, {r['candidates']} rerank candidates" + ("" if r["reranked"] else " (summaries only)")
        lines.append(f"| {label} | {100 * r['hit_rate']:.0f}% | {100 * r['from_memory']:.0f}% | "
                     f"{r['mean_memory_chunks']:.1f} | {r['median_question_s']:.3f} |")
    lines += [
        "",
        "- *needle in context*: the needle's event was in what the answer would attend to (retrieved from memory, or still "
        "in the window); *median question s*: `Session.question_logits` (probe prefill, search, rerank, fetch, the "
        "question's forward; no generation).",
    ]
    from app.bench.paraphrase import TODAY_ROW

    by = {r["setting"]: r for r in m["rows"]}
    ref = by.get(TODAY_ROW)
    if ref is not None:
        lines.append(f"- Levers (issue 17) against *{TODAY_ROW}* ({100 * ref['hit_rate']:.0f}% needle in context, "
                     f"{ref['median_question_s']:.3f} s a question): " + "; ".join(
                         f"{r['setting']}: {100 * r['hit_rate']:.0f}% ({100 * (r['hit_rate'] - ref['hit_rate']):+.0f} "
                         f"points), {r['median_question_s'] / ref['median_question_s']:.2f}x the time"
                         for r in m["rows"] if r["setting"] not in (TODAY_ROW, DEFAULT, HYBRID)
                         and not r["setting"].isdigit() and not r["setting"].startswith("in-model")) + ".")
    calibrated = [r for r in m["rows"] if r["setting"].startswith("in-model") and r["heads"] == "auto"]
    plain = by.get(str(calibrated[0]["candidates"])) if calibrated else None
    if calibrated and plain is not None:
        c = calibrated[0]
        lines.append(f"- The in-model path alone, {c['candidates']} rerank candidates: calibrated heads "
                     f"{100 * c['hit_rate']:.0f}% needle in context ({100 * c['from_memory']:.0f}% from memory) against "
                     f"{100 * plain['hit_rate']:.0f}% ({100 * plain['from_memory']:.0f}%) with every head of the upper "
                     f"half, {c['median_question_s'] / plain['median_question_s']:.2f}x the time.")
    return "\n".join(lines)
