"""``livesight bench NAME ...``: run one benchmark, write its JSON, update BENCHMARKS.md (paths under the cwd).

Each bench is a module ``app.bench.<name>`` exposing ``add_arguments(parser)`` and
``run(args) -> dict`` (see :mod:`app.bench.common`); bench modules import only light
modules at module level. Adding a bench is one line in :data:`BENCHES`.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Any

#: Bench name -> module. One line per bench.
BENCHES: dict[str, str] = {
    "ingest": "app.bench.ingest",
    "backends": "app.bench.backends",
    "drop": "app.bench.drop",
    "kv": "app.bench.kv",
    "retrieval": "app.bench.retrieval",
    "stream": "app.bench.stream",
    "stream-days": "app.bench.stream_days",
    "question": "app.bench.question",
    "realtime": "app.bench.realtime",
    "fidelity": "app.bench.fidelity",
    "eval": "app.bench.fidelity_eval",
    "recall": "app.bench.recall",
    "paraphrase": "app.bench.paraphrase",
    "asr": "app.bench.asr",
    "cluster": "app.bench.cluster",
    "serve": "app.bench.serve_load",
}


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    from app.bench import common

    parser = subparsers.add_parser(
        "bench",
        help="run a benchmark and record it in BENCHMARKS.md",
        description="Run a benchmark side by side with its baseline; write bench-results/NAME-TIME.json "
                    "and update the NAME section of BENCHMARKS.md, its plots going to docs/bench/. These paths "
                    "are relative to the current directory (run it from the repository's root to update the "
                    "repository's BENCHMARKS.md); --output-dir, --benchmarks-md and --plot-dir choose others.",
    )
    sub = parser.add_subparsers(dest="bench", metavar="NAME")
    for name, module_name in BENCHES.items():
        module = importlib.import_module(module_name)
        doc = (module.__doc__ or name).strip().splitlines()[0]
        bench_parser = sub.add_parser(name, help=doc, description=module.__doc__)
        module.add_arguments(bench_parser)
        common.add_common_arguments(bench_parser)
        bench_parser.set_defaults(func=run, bench_name=name)
    parser.set_defaults(func=lambda args: _usage(parser))
    return parser


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def run(args: argparse.Namespace) -> int:
    from app.bench import common
    from streaming.errors import SourceError

    name = args.bench_name
    module = importlib.import_module(BENCHES[name])
    try:
        result = module.run(args)
    except (SourceError, ValueError, FileNotFoundError) as exc:
        print(f"livesight bench {name}: {exc}", file=sys.stderr)
        return 1
    json_path, section = common.finish(name, args, result)
    print(section)
    print(f"\nresult written to {json_path}")
    if not args.no_update_md:
        print(f"updated {args.benchmarks_md}")
    return 0
