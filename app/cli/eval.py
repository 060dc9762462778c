"""``livesight eval``: run a benchmark's questions through LiveSight and score them.

Examples::

    livesight eval questions_real.json --videos ./StreamingBench/videos --output ./out --model smolvlm2-256m
    livesight eval ovo_bench_new.json --videos ./ovo --output ./out-ovo --mode clip --choice logprob
    livesight eval mine.jsonl --videos ./clips --output ./out --resume          # continue an interrupted run

The format is detected from the file when ``--format`` is not given. Output: ``OUT/predictions.jsonl``
(one record per question, written as it finishes), ``OUT/summary.json`` and the per-task table on
stdout; the progress bar goes to stderr. Bad input (a missing file, an unknown format, a malformed
record, bad settings) is one ``error:`` line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import sys

from app.cli.args import add_model_arguments, add_session_arguments
from app.eval.formats import FORMATS  # light: the eval package's pure half imports no model code
from app.eval.runner import CHOICES, MODES


def add_parser(sub) -> None:
    p = sub.add_parser(
        "eval",
        help="run StreamingBench, OVO-Bench or a LiveSight JSONL file through LiveSight and score it",
        description="Ask every question of FILE at its query time over its video in --videos, score the answers "
        "the benchmark's official way and strictly, and write OUT/predictions.jsonl, OUT/summary.json and a "
        "per-task table. --mode stream (default): one session per video, every question asked at its time in "
        "that session; --mode clip: a fresh session per question over [0, t] (or [t - --context-s, t]).",
    )
    p.add_argument("file", metavar="FILE", help="the questions: StreamingBench JSON/CSV, OVO-Bench JSON or JSONL")
    p.add_argument("--videos", required=True, metavar="DIR", help="the folder the file's video paths are relative to")
    p.add_argument("--output", required=True, metavar="OUT", help="where predictions.jsonl and summary.json go")
    p.add_argument("--format", default=None, metavar="FORMAT",  # checked by load_items: one error line
                   help=f"the file's format: {', '.join(FORMATS)} (default: detected from the file)")
    p.add_argument("--mode", default="stream", choices=MODES,
                   help="stream: one session per video (default); clip: a fresh session per question")
    p.add_argument("--context-s", type=float, default=None, metavar="S",
                   help="clip mode: only the last S seconds before each question (StreamingBench's main setting: 60)")
    p.add_argument("--fps", type=float, default=1.0, help="frames per second of video fed to the model (default 1)")
    p.add_argument("--max-side", type=int, default=None, help="shrink frames so the longer side is at most this")
    p.add_argument("--choice", default="generate", choices=CHOICES,
                   help="multiple choice: the letter the model writes (generate, default) or the option text it "
                        "finds most likely (logprob; small models need it)")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="only the first N questions")
    p.add_argument("--tasks", default=None, metavar="T1,T2", help="only these tasks (comma-separated)")
    p.add_argument("--resume", action="store_true", help="skip questions already in OUT/predictions.jsonl")
    add_model_arguments(p)
    add_session_arguments(p)
    p.set_defaults(func=run)


def _error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    from app.cli.args import load_backend_from_args, session_overrides
    from app.engine.backends.types import BackendError
    from app.eval.formats import EvalFormatError, load_items
    from app.eval.report import markdown_table
    from app.eval.runner import EvalConfig, EvalError, Progress, run_eval

    overrides = session_overrides(args)
    max_new = overrides.pop("max_new_tokens", None)
    tasks = tuple(t.strip() for t in args.tasks.split(",") if t.strip()) if args.tasks else ()
    try:
        config = EvalConfig(mode=args.mode, fps=args.fps, context_s=args.context_s, choice=args.choice,
                            limit=args.limit, tasks=tasks, resume=args.resume, max_side=args.max_side,
                            session=overrides, **({} if max_new is None else {"max_new_tokens": max_new}))
        if args.context_s is not None and args.mode != "clip":
            raise EvalError("--context-s applies to --mode clip only")
        items = load_items(args.file, args.format)
    except (EvalError, EvalFormatError) as exc:
        return _error(str(exc))
    if not items:
        return _error(f"{args.file} holds no questions")
    try:
        backend = load_backend_from_args(args)
    except BackendError as exc:
        return _error(str(exc))
    if backend.spec.random_weights:
        print(f"note: {backend.spec.name} has random weights: its answers are not meaningful")
    try:
        summary = run_eval(items, args.videos, backend, config, args.output, progress=Progress(sys.stderr))
    except EvalError as exc:
        return _error(str(exc))
    finally:
        backend.close()
    print(markdown_table(summary))
    run_counts = summary.get("run", {})
    print(f"asked {run_counts.get('asked', 0)}, skipped (already done) {run_counts.get('skipped_done', 0)}, "
          f"errors {run_counts.get('errors', 0)} (missing videos {run_counts.get('missing_videos', 0)}, "
          f"unreadable videos {run_counts.get('bad_videos', 0)}); predictions in {args.output}/predictions.jsonl, "
          f"summary in {args.output}/summary.json")
    return 0
