"""Paraphrase: needle in context and fidelity retained when questions use other words than the notes.

Streams of one timed note every few seconds in several styles (:mod:`app.bench.paraphrase_streams`:
a hospital ward, a warehouse floor, a cycling race, a hotel front desk), each with needles whose
questions never repeat the fact's content words, same-kind near misses, and order questions about
the moment just before a landmark ("just before the emergency siren went off, ..."). Each stream is
ingested once with a ``--window``-token local window (and once with a window longer than the stream,
for *full context*); every question is then put to the same session under each retrieval setting,
side by side:

* **full context** (nothing leaves the window) and **local window only** (``top_k 0``);
* **in-model** (today's retrieval: summaries + late-interaction rerank) at each ``--top-ks``;
* **hybrid** (the text path's sentence-embedder ranking fused with the in-model one, no neighbours)
  at each ``--top-ks``;
* **the levers of issue 17** (``--levers``, on unless ``--quick``): *hybrid + neighbours (before the
  levers)* at top 8, then each lever alone on top of it (calibrated rerank heads; the second probe of
  ``--probe-tokens``; the score gap ``--score-gap`` at top ``--gap-top-k``) and all together;
* **default**: the session's default retrieval settings (:class:`~app.engine.config.SessionConfig`),
  the window held at ``--window``.

Rows whose effective settings are the same are measured once per question (and share the figures).

Per question and setting the answer is chosen by option log-likelihood
(:meth:`Session.score_options`, the expected answer against three same-kind options): *NLL* of the
expected answer, *choice accuracy*, and *needle in context* (the target note was retrieved or still
in the window). *Fidelity retained* = ``(NLL_window - NLL) / (NLL_window - NLL_full)``. Every figure
has a 95% bootstrap interval over questions. *First-token s*: the median time to the first answer
token of :meth:`Session.answer` (probe prefill, retrieval, the question's prefill), for in-model top 8
and the default, on the first ``--latency`` questions of each stream.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

from app.bench.fidelity import FULL, FULL_WINDOW, WINDOW, bootstrap

log = logging.getLogger(__name__)

DEFAULT = "default"
LATENCY_REF = "in-model top_k 8"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="smolvlm2-256m-smollm2", help="backend (default: real SmolLM2 text weights)")
    parser.add_argument("--styles", default="all", help="comma-separated stream styles, or all (default)")
    parser.add_argument("--events", type=int, default=160, help="notes per stream, one every 4 s (default 160)")
    parser.add_argument("--window", type=int, default=512, help="local window in tokens (default 512)")
    parser.add_argument("--top-ks", default="4,8,16", help="top-k values of the in-model and hybrid rows (default 4,8,16)")
    parser.add_argument("--levers", action=argparse.BooleanOptionalAction, default=None,
                        help="rows for the calibrated heads, the second probe and the score gap, each alone and "
                             "together (default on; off with --quick)")
    parser.add_argument("--probe-tokens", type=int, default=6, help="second probe's answer tokens (default 6)")
    parser.add_argument("--score-gap", type=float, default=0.6, help="the score gap row's gap (default 0.6)")
    parser.add_argument("--gap-top-k", type=int, default=16, help="top_k of the score gap rows (default 16)")
    parser.add_argument("--latency", type=int, default=4, metavar="N",
                        help="time the first answer token of in-model top 8 and the default on the first N questions "
                             "of each stream (default 4; 0 = none)")
    parser.add_argument("--checkpoint", default=None, metavar="PATH",
                        help="write the records measured so far to this JSON file after each stream")
    parser.add_argument("--from-checkpoints", default=None, metavar="PATH,...",
                        help="measure nothing: report the records of these --checkpoint files together (e.g. the "
                             "styles measured by parallel runs of the same settings)")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap draws for the intervals (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the streams' layout and the bootstrap (default 0)")
    parser.add_argument("--quick", action="store_true", help="tiny random model, one short stream (a smoke test)")
    from app.bench import runtime as _rt

    _rt.add_thread_argument(parser)
    _rt.add_plot_argument(parser)  # accepted by every bench; this one draws no plot


#: Today's retrieval before the levers of issue 17 (the rows every lever is compared with pin these).
TODAY = {"retrieval_heads": "upper", "retrieval_probe_tokens": 0, "retrieval_score_gap": None}
TODAY_ROW = "hybrid + neighbours (before the levers)"


def lever_rows(probe_tokens: int, score_gap: float, gap_top_k: int) -> list[tuple[str, int | None, dict[str, Any]]]:
    """The rows of the in-model levers, each alone on top of today's hybrid + neighbours and all together:
    ``[(name, top_k or None for the config's, SessionConfig changes)]``."""
    heads = {"retrieval_heads": "auto"}
    probe = {"retrieval_probe_tokens": probe_tokens}
    gap = {"retrieval_score_gap": score_gap}
    return [
        (TODAY_ROW, 8, dict(TODAY)),
        ("+ calibrated heads", 8, {**TODAY, **heads}),
        (f"+ second probe ({probe_tokens} tokens)", 8, {**TODAY, **probe}),
        (f"+ score gap {score_gap:g}, top_k {gap_top_k}", gap_top_k, {**TODAY, **gap}),
        (f"all levers (top_k {gap_top_k})", gap_top_k, {**heads, **probe, **gap}),
    ]


def settings(top_ks: list[int], levers: list | None = None) -> list[tuple[str, int | None, dict[str, Any]]]:
    """``[(name, top_k or None for the config's, SessionConfig changes)]`` of the retrieval rows."""
    in_model = {"text_retrieval": False, "retrieval_neighbours": 0, "retrieval_budget_tokens": None, **TODAY}
    hybrid = {"text_retrieval": True, "retrieval_neighbours": 0, "retrieval_budget_tokens": None, **TODAY}
    rows: list[tuple[str, int | None, dict[str, Any]]] = [(WINDOW, 0, {})]
    rows += [(f"in-model top_k {k}", k, in_model) for k in top_ks]
    rows += [(f"hybrid top_k {k}", k, hybrid) for k in top_ks]
    rows += list(levers or [])
    rows.append((DEFAULT, None, {}))
    return rows


def use_config(session, config) -> None:
    """Put ``config`` in force for the next questions, as the session manager does for live settings."""
    session.config = config  # the session's retriever reads the session's config at each question


def measure(session, question, top_k: int | None) -> dict[str, Any]:
    """One question under the session's current settings: NLL of the answer, choice, needle in context."""
    from app.bench.needles import needle_in_context

    t0 = time.perf_counter()
    scores, evidence = session.score_options(question.question, question.options(), top_k=top_k)
    hit, from_memory = needle_in_context(evidence, question)
    return {"nll": -scores[0], "choice_correct": all(scores[0] > s for s in scores[1:]), "hit": hit,
            "from_memory": from_memory, "memory_chunks": sum(e.source == "memory" for e in evidence),
            "score_s": time.perf_counter() - t0}


def first_token(session, question, top_k: int | None) -> dict[str, float]:
    """Time to the first answer token and the context size of a one-token answer."""
    ans = session.answer(question.question, max_new_tokens=1, top_k=top_k)
    return {"first_token_s": float(ans.usage["first_token_s"] or ans.usage["total_s"]),
            "context_tokens": float(ans.usage["context_tokens"])}


def run(args: argparse.Namespace) -> dict[str, Any]:
    from app.bench import runtime
    from app.bench.paraphrase_streams import load_styles, make_stream
    from app.engine.backends.registry import load_backend
    from app.engine.config import SessionConfig
    from app.engine.session import Session

    runtime.prepare_torch(args)
    styles = load_styles()
    if args.quick:
        args.model, args.events, args.window, args.styles, args.top_ks = "tiny-smolvlm", 80, 64, styles[0]["name"], "2,4"
        args.bootstrap = min(args.bootstrap, 200)
    args.levers = (not args.quick) if getattr(args, "levers", None) is None else bool(args.levers)
    names = [s["name"] for s in styles]
    chosen = names if args.styles == "all" else [x.strip() for x in str(args.styles).split(",") if x.strip()]
    unknown = [x for x in chosen if x not in names]
    if unknown or not chosen:
        raise ValueError(f"--styles: unknown {unknown}; choose from {names} or all")
    events = int(runtime.check_range("events", args.events, 2, 5000))
    window = int(runtime.check_range("window", args.window, 16, 100_000))
    draws = int(runtime.check_range("bootstrap", args.bootstrap, 10, 100_000))
    top_ks = sorted(set(runtime.parse_ints("top_ks", args.top_ks, 1, 4096)))
    levers = None
    if args.levers:
        levers = lever_rows(int(runtime.check_range("probe_tokens", args.probe_tokens, 1, 64)),
                            float(runtime.check_range("score_gap", args.score_gap, 0.0, 0.999)),
                            int(runtime.check_range("gap_top_k", args.gap_top_k, 1, 4096)))
    rows = settings(top_ks, levers)
    latency_rows = [r for r in rows if r[0] == LATENCY_REF or r[0] == DEFAULT or r in (levers or [])]
    latency_n = int(runtime.check_range("latency", args.latency, 0, 10_000))
    base = SessionConfig(window_tokens=window, dialog_max_tokens=0, drop="off")
    load0 = runtime.load_average()
    t_start = time.perf_counter()
    if args.from_checkpoints:
        records, random_weights, load0 = _read_checkpoints(args.from_checkpoints, events, window, top_ks)
        chosen = list(dict.fromkeys(r["style"] for r in records))
        return _report(args, records, rows, chosen, events, window, draws, top_ks, latency_n, base, load0, t_start,
                       random_weights)
    backend = load_backend(args.model, dtype="float32")
    records: list[dict[str, Any]] = []
    try:
        for s_index, name in enumerate(chosen):
            stream = make_stream(styles[names.index(name)], args.seed, events)
            recs = [{"style": name, "kind": q.kind, "pts": q.pts, "depth": round(q.depth, 3), "question": q.question,
                     "expected": q.answer, "results": {}, "latency": {}} for q in stream.needles]
            with Session(backend, base.updated(window_tokens=FULL_WINDOW, text_retrieval=False)) as full:
                for pts, text in stream.events:
                    full.ingest_text(pts, text)
                for rec, q in zip(recs, stream.needles):
                    rec["results"][FULL] = measure(full, q, 0)
            with Session(backend, base) as session:
                for pts, text in stream.events:
                    session.ingest_text(pts, text)
                def each_row(row_list, out: dict, run) -> None:
                    """``out[setting] = run(k)`` under each row's config; rows with the same effective
                    settings are measured once and share the result."""
                    done: dict[tuple, str] = {}
                    for setting, k, changes in row_list:
                        config = base.updated(**changes)
                        key = (config.top_k if k is None else k, repr(config))
                        if key in done:
                            out[setting] = dict(out[done[key]])
                            continue
                        done[key] = setting
                        use_config(session, config)
                        out[setting] = run(k)

                for q_index, (rec, q) in enumerate(zip(recs, stream.needles)):
                    each_row(rows, rec["results"], lambda k, q=q: measure(session, q, k))
                    each_row(latency_rows if q_index < latency_n else [], rec["latency"],
                             lambda k, q=q: first_token(session, q, k))
                use_config(session, base)
            records.extend(recs)
            if args.checkpoint:
                Path(args.checkpoint).write_text(json.dumps({
                    "model": args.model, "random_weights": backend.spec.random_weights, "events": events,
                    "window": window, "top_ks": top_ks, "load_avg_start": load0, "records": records}))
            log.info("style %d/%d (%s) done (%.0f s so far)", s_index + 1, len(chosen), name,
                     time.perf_counter() - t_start)
    finally:
        backend.close()

    return _report(args, records, rows, chosen, events, window, draws, top_ks, latency_n, base, load0, t_start,
                   backend.spec.random_weights)


def _derive_default(records, rows, base) -> str | None:
    """Reporting checkpoints measured under other defaults: the *default* row becomes the measured row whose
    settings equal today's defaults (the same effective settings give the same measurement, as the
    measuring loop shares them); ``None`` (the default row as measured) when no row matches."""
    keys = {}
    for setting, k, changes in rows:
        config = base.updated(**changes)
        keys.setdefault((config.top_k if k is None else k, repr(config)), setting)
    match = keys.get((base.top_k, repr(base)))
    if match is None or match == DEFAULT:
        return None
    for rec in records:
        rec["results"][DEFAULT] = dict(rec["results"][match])
        if match in rec["latency"]:
            rec["latency"][DEFAULT] = dict(rec["latency"][match])
    return match


def _read_checkpoints(paths: str, events: int, window: int, top_ks: list[int]) -> tuple[list, bool, Any]:
    """Records of ``--checkpoint`` files measured with these settings -> (records, random weights, first load).

    Raises:
        ValueError: a file that cannot be read, or one measured with other settings (named).
    """
    records: list[dict[str, Any]] = []
    random_weights, load0 = False, None
    for path in [p.strip() for p in str(paths).split(",") if p.strip()]:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ValueError(f"--from-checkpoints: cannot read {path}: {exc}") from None
        if (data.get("events"), data.get("window"), data.get("top_ks")) != (events, window, top_ks):
            raise ValueError(f"--from-checkpoints: {path} was measured with events {data.get('events')}, window "
                             f"{data.get('window')}, top-ks {data.get('top_ks')}; give the same options")
        records.extend(data["records"])
        random_weights = random_weights or bool(data.get("random_weights"))
        load0 = load0 if load0 is not None else data.get("load_avg_start")
    if not records:
        raise ValueError("--from-checkpoints: no records in the files given")
    return records, random_weights, load0


def _report(args, records, rows, chosen, events, window, draws, top_ks, latency_n, base, load0, t_start,
            random_weights) -> dict[str, Any]:
    """The bench's result (table, metrics, markdown) from its per-question records."""
    from app.bench import common, runtime

    derived = _derive_default(records, rows, base) if args.from_checkpoints else None
    order = [FULL] + [r[0] for r in rows]
    values: dict[str, dict[str, list[float]]] = {"nll": {}, "choice": {}, "hit": {}}
    for setting in order:
        res = [r["results"][setting] for r in records]
        values["nll"][setting] = [x["nll"] for x in res]
        values["choice"][setting] = [float(x["choice_correct"]) for x in res]
        values["hit"][setting] = [float(x["hit"]) for x in res]
    stats = bootstrap(values, draws, args.seed)
    table = []
    for setting in order:
        res = [r["results"][setting] for r in records]
        by_kind = {}
        for kind in ("fact", "order"):
            sub = [r["results"][setting]["hit"] for r in records if r["kind"] == kind]
            by_kind[f"hit_{kind}"] = sum(sub) / len(sub) if sub else float("nan")
        lat = [r["latency"][setting] for r in records if setting in r["latency"]]
        table.append({"setting": setting, "questions": len(res), **stats[setting], **by_kind,
                      "mean_memory_chunks": sum(x["memory_chunks"] for x in res) / max(1, len(res)),
                      "median_first_token_s": common.median([x["first_token_s"] for x in lat]) if lat else None,
                      "median_context_tokens": common.median([x["context_tokens"] for x in lat]) if lat else None})
    defaults = {f: getattr(base, f) for f in ("top_k", "text_retrieval", "embedder", "text_candidates",
                                              "retrieval_neighbours", "retrieval_budget_tokens", "rerank_candidates",
                                              "kv_bits", "retrieval_heads", "retrieval_probe_tokens",
                                              "retrieval_score_gap")}
    lever_names = [r[0] for r in rows if r[0] == TODAY_ROW or r[0].startswith(("+ ", "all levers"))]
    by = {r["setting"]: r for r in table}
    ratio = None
    if by[DEFAULT]["median_first_token_s"] and by.get(LATENCY_REF, {}).get("median_first_token_s"):
        ratio = by[DEFAULT]["median_first_token_s"] / by[LATENCY_REF]["median_first_token_s"]
    metrics = {"questions": len(records), "styles": chosen, "events_per_stream": events, "window_tokens": window,
               "defaults": defaults, "bootstrap_draws": draws, "settings": table, "first_token_ratio": ratio,
               "levers": lever_names,
               "load_avg_start": load0, "load_avg_end": runtime.load_average(),
               "wall_s": time.perf_counter() - t_start}
    options: dict[str, Any] = {"quick": True, "threads": args.threads, "levers": args.levers} if args.quick else {
        "threads": args.threads, "model": args.model, "styles": args.styles, "events": events, "window": window,
        "top_ks": args.top_ks, "latency": latency_n, "bootstrap": draws, "seed": args.seed}
    if not args.quick:
        options.update({"no_levers": True} if not args.levers else {
            "probe_tokens": args.probe_tokens, "score_gap": args.score_gap, "gap_top_k": args.gap_top_k})
    if args.from_checkpoints:
        options["from_checkpoints"] = args.from_checkpoints
        metrics["default_from"] = derived
    return {"title": "Paraphrase: needle in context and fidelity retained when questions use other words",
            "command": common.format_command("paraphrase", [], options), "params": options, "metrics": metrics,
            "records": records, "markdown": _markdown(metrics, args, random_weights)}


def _ci(row: dict[str, Any], key: str) -> str:
    if row.get(key) is None or row[key] != row[key]:
        return "-"
    return f"{100 * row[key]:.0f}% [{100 * row[key + '_lo']:.0f}, {100 * row[key + '_hi']:.0f}]"


def _markdown(m: dict[str, Any], args: argparse.Namespace, random_weights: bool) -> str:
    weights = "tiny random weights: a smoke test, the figures are noise" if random_weights else \
        "real SmolLM2-135M-Instruct text weights"
    d = m["defaults"]
    lines = [
        f"Model `{args.model}` ({weights}). Styles: {', '.join(m['styles'])}; {m['events_per_stream']} notes per "
        f"stream, **{m['questions']} questions** (facts asked in other words, and order questions about the moment "
        f"before a landmark), every one put to the same session under each setting. Local window "
        f"{m['window_tokens']} tokens. Default retrieval: top_k {d['top_k']}, text path "
        f"{'on (' + d['embedder'] + ')' if d['text_retrieval'] else 'off'}, {d['text_candidates']} text candidates, "
        f"{d['retrieval_neighbours']} neighbour(s) each side of the best hits with text, token budget "
        f"{d['retrieval_budget_tokens'] or 'none'}, rerank heads {d['retrieval_heads']}, second probe "
        f"{d['retrieval_probe_tokens'] or 'off'}{' tokens' if d['retrieval_probe_tokens'] else ''}, score gap "
        f"{d['retrieval_score_gap'] if d['retrieval_score_gap'] is not None else 'off'}, memory KV {d['kv_bits']}-bit. "
        f"Load average "
        f"{m['load_avg_start']} at the start, {m['load_avg_end']} at the end.",
        "",
        "| setting | needle in context | facts / order | choice accuracy | fidelity retained | memory chunks | "
        "first-token s | context tokens |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in m["settings"]:
        ft = f"{r['median_first_token_s']:.3f}" if r["median_first_token_s"] else "-"
        ctx = f"{r['median_context_tokens']:.0f}" if r["median_context_tokens"] else "-"
        lines.append(f"| {r['setting']} | {_ci(r, 'hit')} | {100 * r['hit_fact']:.0f}% / {100 * r['hit_order']:.0f}% | "
                     f"{_ci(r, 'choice')} | {_ci(r, 'retained')} | {r['mean_memory_chunks']:.1f} | {ft} | {ctx} |")
    by = {r["setting"]: r for r in m["settings"]}
    dflt = by[DEFAULT]
    goal_hit, goal_ret = dflt["hit"] >= 0.95, dflt["retained"] >= 0.95
    ratio = m["first_token_ratio"]
    lines += [
        "",
        "- *needle in context*: the target note was in what the answer attended to (retrieved, or still in the "
        "window); *facts / order*: the same for fact and order questions; *choice accuracy*: the expected answer "
        "scored above its three same-kind options; *fidelity retained*: `(NLL_window - NLL) / (NLL_window - "
        "NLL_full)`; [95% bootstrap intervals over questions]; *first-token s* and *context tokens*: medians of a "
        "one-token `Session.answer`.",
        f"- Goals (issue 17) at the default: needle in context >= 95%: **{'met' if goal_hit else 'not met'}** "
        f"({100 * dflt['hit']:.0f}%); fidelity retained >= 95%: **{'met' if goal_ret else 'not met'}** "
        f"({100 * dflt['retained']:.0f}%); first-token time within 1.5x of in-model top 8: "
        + (f"**{'met' if ratio <= 1.5 else 'not met'}** ({ratio:.2f}x)." if ratio else "not measured."),
    ]
    if m.get("default_from"):
        lines.append(f"- The *default* row is the row *{m['default_from']}*, which was measured with exactly the "
                     "session's default settings.")
    lines += lever_lines(m)
    return "\n".join(lines)


def lever_lines(m: dict[str, Any]) -> list[str]:
    """How far each lever got: its needle in context, fidelity retained and first-token time beside the
    row before the levers (hybrid + neighbours), in plain words."""
    by = {r["setting"]: r for r in m["settings"]}
    ref = by.get(TODAY_ROW)
    names = [n for n in m.get("levers") or [] if n != TODAY_ROW and n in by]
    if ref is None or not names:
        return []
    lat0 = by.get(LATENCY_REF, {}).get("median_first_token_s")
    out = [f"- Levers (issue 17), each against *{TODAY_ROW}* (needle in context {100 * ref['hit']:.0f}%, fidelity "
           f"retained {100 * ref['retained']:.0f}%):"]
    for name in names:
        r = by[name]
        ft = r.get("median_first_token_s")
        cost = f", first token {ft / lat0:.2f}x in-model top 8" if ft and lat0 else ""
        out.append(f"  - {name}: needle in context {100 * r['hit']:.0f}% ({100 * (r['hit'] - ref['hit']):+.0f} "
                   f"points), fidelity retained {100 * r['retained']:.0f}% ({100 * (r['retained'] - ref['retained']):+.0f} "
                   f"points), {r['mean_memory_chunks']:.1f} memory chunks{cost}.")
    return out
