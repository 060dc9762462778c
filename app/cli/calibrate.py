"""``livesight calibrate-retrieval``: choose the (layer, KV head) pairs the in-model rerank scores with.

Streams needle material (the recall bench's seeded needle streams, :mod:`app.bench.needles`, from
``--seed``; or, with ``--material paraphrase``, the paraphrase bench's ``--styles``) into a session
with a ``--window``-token window, and for every needle whose note has left the window asks its
question's probe: each (layer, head) pair's late-interaction score of every chunk in memory
(:func:`app.engine.retrieval.late_interaction_table`). :func:`app.engine.retrieval_heads.calibrate`
then chooses pairs greedily by the mean reciprocal rank of the target note, and the file is written
(default: the model's shipped file, which ``retrieval_heads="auto"`` uses)::

    livesight calibrate-retrieval --model smolvlm2-256m-smollm2 --seed 100 --threads 1

Calibrate on other streams than those a benchmark then measures (the default seed 100 is not one the
recall bench uses; the paraphrase material is held out entirely).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from typing import Any

log = logging.getLogger(__name__)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "calibrate-retrieval",
        help="choose the layers and heads the in-model rerank scores with (writes a calibration file)",
        description="Measure how well each (layer, KV head) pair ranks known needles and write the chosen pairs.",
    )
    p.add_argument("--model", default="smolvlm2-256m-smollm2", help="backend (default: real SmolLM2 text weights)")
    p.add_argument("--material", default="needles", choices=["needles", "paraphrase"],
                   help="needle streams (default) or paraphrase streams (--styles)")
    p.add_argument("--styles", default="", help="paraphrase styles, comma-separated (with --material paraphrase)")
    p.add_argument("--streams", type=int, default=3, help="needle streams (default 3)")
    p.add_argument("--events", type=int, default=150, help="events per stream (default 150)")
    p.add_argument("--needles", type=int, default=17, help="needles per stream (default 17)")
    p.add_argument("--window", type=int, default=512, help="local window in tokens (default 512)")
    p.add_argument("--kv-bits", type=int, default=4, help="memory KV bits (default 4)")
    p.add_argument("--max-heads", type=int, default=24, help="most (layer, head) pairs chosen (default 24)")
    p.add_argument("--min-gain", type=float, default=0.002,
                   help="a pair is added only if it raises the mean reciprocal rank by more (default 0.002)")
    p.add_argument("--layers", choices=["upper", "all"], default="upper",
                   help="choose pairs from the upper half of the layers (default: their keys stay resident in "
                        "RAM, and lower layers match surface form) or from every layer")
    p.add_argument("--seed", type=int, default=100, help="seed of the first stream (default 100)")
    p.add_argument("--out", default=None, help="file to write (default: the model's shipped calibration file)")
    from app.bench import runtime as _rt

    _rt.add_thread_argument(p)
    p.set_defaults(func=run)
    return p


def _streams(args: argparse.Namespace) -> list:
    if args.material == "paraphrase":
        from app.bench.paraphrase_streams import load_styles, make_stream

        styles = {s["name"]: s for s in load_styles()}
        names = [x.strip() for x in args.styles.split(",") if x.strip()]
        unknown = [n for n in names if n not in styles]
        if not names or unknown:
            raise ValueError(f"--styles: give one or more of {sorted(styles)} (unknown: {unknown})")
        return [make_stream(styles[n], args.seed, args.events) for n in names]
    from app.bench.needles import make_stream

    return [make_stream(args.seed + i, args.events, args.needles) for i in range(args.streams)]


def question_table(session, question: str):
    """``(chunk ids, (chunks, L, H) table)``: every pair's score of every chunk in memory for ``question``.

    The probe is the question prefilled over the session's sink and window (dialog off), as a
    session's own question probe; the cache is rewound after it.
    """
    from app.engine.retrieval import late_interaction_table

    backend = session.backend
    cache = session._window.cache  # the calibration reads the probe a question would make; nothing is kept
    mark = cache.length
    try:
        qseg = backend.question_segment(question, session._next_pos, first=True)
        res, _ = backend.prefill(qseg, (), cache=cache, want_query_tokens=True)
    finally:
        cache.rewind(mark)
    layers = range(backend.spec.num_layers)
    ids = [m.chunk_id for m in session.bank.metas()]
    keysets = [session.bank.keys(cid, layers, dtype=backend.dtype) for cid in ids]
    return ids, late_interaction_table(backend, res.query_tokens, keysets)


def calibrate_run(args: argparse.Namespace) -> dict[str, Any]:
    """Measure and choose; returns the calibration record (and writes the file)."""
    from app.bench import runtime
    from app.engine.backends.registry import load_backend
    from app.engine.config import SessionConfig
    from app.engine.retrieval_heads import DATA_DIR, calibrate, save_heads
    from app.engine.session import Session

    runtime.prepare_torch(args)
    max_heads = int(runtime.check_range("max_heads", args.max_heads, 1, 100_000))
    streams = _streams(args)
    cfg = SessionConfig(window_tokens=int(runtime.check_range("window", args.window, 16, 100_000)),
                        kv_bits=args.kv_bits, dialog_max_tokens=0, drop="off", text_retrieval=False)
    t0 = time.perf_counter()
    backend = load_backend(args.model, dtype="float32")
    tables, targets = [], []
    try:
        for stream in streams:
            with Session(backend, cfg) as session:
                for pts, text in stream.events:
                    session.ingest_text(pts, text)
                session.flush()
                by_pts = {m.t_start: i for i, m in enumerate(session.bank.metas())}
                for needle in stream.needles:
                    if needle.pts not in by_pts:
                        continue  # still in the window: nothing to retrieve
                    with session._lock:
                        _, table = question_table(session, needle.question)
                    tables.append(table)
                    targets.append(by_pts[needle.pts])
        if not tables:
            raise ValueError("no needle left the window: give more --events or a smaller --window")
        spec = backend.spec
        result = calibrate(tables, targets, max_heads=max_heads, min_gain=float(args.min_gain),
                           min_layer=spec.num_layers // 2 if args.layers == "upper" else 0)
    finally:
        backend.close()
    record = {"material": args.material, "seed": args.seed, "streams": len(streams), "events": args.events,
              "questions": len(tables), "window": args.window, "kv_bits": args.kv_bits, "layers": args.layers,
              "mrr_chosen": round(result["mrr"], 4), "mrr_upper_half": round(result["mrr_upper_half"], 4),
              "mrr_all_layers": round(result["mrr_all"], 4), "best_single_pairs": result["pair_mrr"],
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "wall_s": round(time.perf_counter() - t0, 1)}
    if args.material == "paraphrase":
        record["styles"] = args.styles
    out = args.out or str(DATA_DIR / f"{spec.name}.json")
    path = save_heads(out, spec.name, spec.num_layers, spec.num_kv_heads, [tuple(p) for p in result["heads"]],
                      record)
    return {"path": str(path), "heads": result["heads"], **record}


def run(args: argparse.Namespace) -> int:
    from app.engine.retrieval_heads import RetrievalHeadsError

    try:
        out = calibrate_run(args)
    except (ValueError, RetrievalHeadsError, OSError) as exc:
        print(f"livesight calibrate-retrieval: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out['path']}: {len(out['heads'])} (layer, head) pairs from {out['questions']} questions; "
          f"target MRR {out['mrr_chosen']:.3f} (upper half {out['mrr_upper_half']:.3f}, every layer "
          f"{out['mrr_all_layers']:.3f})")
    return 0
