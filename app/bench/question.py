"""Question path: probe time, first-token latency, item prefill and peak memory, window cache vs concatenated caches.

Side by side in one run, on one session per window size (``--windows``, tokens), with the real
SmolLM2-135M weights (``smolvlm2-256m-smollm2``): the window is filled with timed notes (text, so
the vision tower's cost plays no part) until it is full and the memory bank holds chunks, then the
same question is answered alternately by

* **concatenated** (the path before the window cache): the probe prefills the question over a fresh
  ``DynamicCache`` of ``sink | window``, then the answer builds another of ``sink | memory | window``
  and prefills the question again (and every answer token concatenates the cache once more);
* **window cache** (``Session.answer``): the probe prefills the question in the session's window
  cache, the retrieved chunks are written after the window and the question prefilled again there.

Both retrieve the same ``--top-k`` chunks (summaries + rerank; the text path off, no neighbours) and
generate ``--max-new-tokens`` greedy tokens. Reported per window: median probe time, first-token
latency (question in -> first answer token out) and total time; peak extra RSS of one question
(Linux ``VmHWM`` reset through ``/proc/self/clear_refs``, with glibc's mmap threshold fixed so
large tensors are returned to the system when freed); and the prefill of one item (a note) over
``sink | window``, both ways.
"""

from __future__ import annotations

import argparse
import logging
import random
import time
from typing import Any

log = logging.getLogger(__name__)

QUESTION = "What was the code for the side door?"
NEEDLE = "The code for the side door is 7391, and it changes on Monday."
SUBJECTS = ["The lobby", "The parking lot", "The kitchen", "The hallway", "The garden", "The office", "A cyclist",
            "The queue", "The loading dock", "The corridor"]
STATES = ["is quiet and the lights are on", "looks busy with people walking through", "is empty apart from a cart",
          "has two people talking near the window", "is brightly lit by the afternoon sun",
          "is dim and a fan hums in the corner", "smells of coffee from the machine", "is being cleaned by a robot"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="smolvlm2-256m-smollm2", help="backend (default: the real SmolLM2 weights)")
    parser.add_argument("--windows", default="512,1024,2048,4096", help="window sizes in tokens (default 512,1024,2048,4096)")
    parser.add_argument("--repeat", type=int, default=5, help="questions per path and window (default 5)")
    parser.add_argument("--top-k", type=int, default=4, help="memory chunks retrieved per question (default 4)")
    parser.add_argument("--max-new-tokens", type=int, default=8, help="answer tokens generated (default 8)")
    parser.add_argument("--quick", action="store_true", help="tiny random model, small windows, 2 questions (a smoke test)")
    from app.bench import runtime as _rt

    _rt.add_thread_argument(parser)
    _rt.add_plot_argument(parser)  # accepted by every bench; this one draws no plot


# ---- memory ---------------------------------------------------------------------------------------


def _fix_malloc() -> bool:
    """Make glibc hand every large block back to the system when freed (a fixed mmap threshold), so peak
    RSS sees each transient copy; ``False`` where that cannot be set."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        return bool(libc.mallopt(-3, 256 * 1024))  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _peak_extra_bytes(fn) -> int | None:
    """Peak RSS above the starting RSS while ``fn()`` runs (Linux), else ``None``."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")  # resets VmHWM (peak RSS) to the current RSS
    except OSError:
        return None
    start = _status_kb("VmRSS")
    fn()
    peak = _status_kb("VmHWM")
    return None if start is None or peak is None else max(0, peak - start) * 1024


# ---- the two paths ------------------------------------------------------------------------------


def _concatenated_answer(s, question: str, k: int, max_new: int) -> dict[str, float]:
    """The question path before the window cache, built from the backend's public pieces (as the
    exactness tests' reference): two concatenated caches, the question prefilled in each."""
    from app.engine.backends.types import KVSegment

    be = s.backend
    t0 = time.perf_counter()
    qseg = be.question_segment(question, s._next_pos, first=not s._dialog)
    window = s._window.segments()
    probe, _ = be.prefill(qseg, (), cache=be.concat_cache([s._sink, *window, *s._dialog]),
                          want_query_tokens=s.config.rerank)
    probe_s = time.perf_counter() - t0
    retrieved = s._retriever.retrieve(question, probe, k)
    memory = [KVSegment(r.chunk.keys, r.chunk.values, r.chunk.positions) for r in retrieved]
    res, cache = be.prefill(qseg, (), cache=be.concat_cache([s._sink, *memory, *window, *s._dialog]))
    first = None
    for item in be.generate(qseg, (), max_new_tokens=max_new, prefilled=(res, cache)):
        if first is None and isinstance(item, str):
            first = time.perf_counter() - t0
    total = time.perf_counter() - t0
    return {"probe_s": probe_s, "first_token_s": total if first is None else first, "total_s": total,
            "retrieved": len(retrieved)}


def _window_cache_answer(s, question: str, k: int, max_new: int) -> dict[str, float]:
    t0 = time.perf_counter()
    ans = s.answer(question, max_new_tokens=max_new, top_k=k)
    total = time.perf_counter() - t0
    u = ans.usage
    return {"probe_s": u["probe_s"], "first_token_s": u["first_token_s"] if u["first_token_s"] is not None else total,
            "total_s": total, "retrieved": u["retrieved_chunks"]}


def _item_prefill(s, mode: str) -> float:
    """Seconds to prefill one note over ``sink | window`` (the session is left as it was)."""
    be = s.backend
    seg = be.text_segment(NEEDLE, s._next_pos, prefix="Note at 99:00: ", suffix="\n")
    t0 = time.perf_counter()
    if mode == "concatenated":
        be.prefill(seg, (), cache=be.concat_cache([s._sink, *s._window.segments()]))
        return time.perf_counter() - t0
    cache = s._window.cache
    mark = cache.length
    try:
        be.prefill(seg, (), cache=cache, kv_view=True)
        return time.perf_counter() - t0
    finally:
        cache.rewind(mark)


PATHS = {"concatenated": _concatenated_answer, "window cache": _window_cache_answer}


def _fill(s, window_tokens: int, k: int) -> int:
    """Notes until the window is full and the bank holds at least ``3 k`` chunks, the needle among the first."""
    rng = random.Random(window_tokens)
    t, n = 1.0, 0
    s.ingest_text(t, NEEDLE)
    while s._window.tokens < window_tokens - 64 or len(s.bank) < 3 * k:
        t += 1.0
        text = " ".join(f"{rng.choice(SUBJECTS)} {rng.choice(STATES)}." for _ in range(3))
        s.ingest_text(t, text)
        n += 1
    return n


def run(args: argparse.Namespace) -> dict[str, Any]:
    from app.bench import common, runtime
    from app.engine.backends.registry import load_backend
    from app.engine.config import SessionConfig
    from app.engine.session import Session

    threads = runtime.prepare_torch(args)
    model = "tiny-smolvlm" if args.quick else args.model
    windows = runtime.parse_ints("--windows", "128,256" if args.quick else args.windows, 64, 1_000_000)
    repeat = 2 if args.quick else int(runtime.check_range("--repeat", args.repeat, 1, 1000))
    k = int(runtime.check_range("--top-k", args.top_k, 1, 64))
    max_new = int(runtime.check_range("--max-new-tokens", args.max_new_tokens, 1, 256))
    malloc_fixed = _fix_malloc()
    backend = load_backend(model, dtype="float32")
    rows = []
    try:
        for w in windows:
            cfg = SessionConfig(window_tokens=w, top_k=k, drop="off", kv_bits=16, text_retrieval=False,
                                retrieval_neighbours=0, dialog_max_tokens=0, max_new_tokens=max_new)
            with Session(backend, cfg) as s:
                notes = _fill(s, w, k)
                for fn in PATHS.values():  # warm-up, one of each
                    fn(s, QUESTION, k, max_new)
                runs: dict[str, list[dict]] = {m: [] for m in PATHS}
                items: dict[str, list[float]] = {m: [] for m in PATHS}
                for r in range(repeat):
                    order = list(PATHS) if r % 2 == 0 else list(reversed(PATHS))  # alternate: load drifts
                    for mode in order:
                        runs[mode].append(PATHS[mode](s, QUESTION, k, max_new))
                        items[mode].append(_item_prefill(s, mode))
                peaks = {m: _peak_extra_bytes(lambda m=m: PATHS[m](s, QUESTION, k, max_new)) for m in PATHS}
                item_views = s._window.views
                st = s.stats()
                row = {"window_tokens": w, "window_held": st["window_tokens"], "notes": notes,
                       "bank_chunks": st["bank_chunks"], "window_cache_bytes": s._window.cache.nbytes,
                       "window_items_bytes": sum(it.kv.nbytes for it in s._window), "item_views": item_views,
                       "kv_bytes_per_token": backend.spec.kv_bytes_per_token(4)}
                for mode in PATHS:
                    key = mode.replace(" ", "_")
                    for metric in ("probe_s", "first_token_s", "total_s"):
                        row[f"{key}_{metric}"] = common.median([x[metric] for x in runs[mode]])
                        row[f"{key}_{metric}_all"] = [round(x[metric], 5) for x in runs[mode]]
                    row[f"{key}_retrieved"] = runs[mode][-1]["retrieved"]
                    row[f"{key}_item_prefill_s"] = common.median(items[mode])
                    row[f"{key}_peak_extra_bytes"] = peaks[mode]
                rows.append(row)
                log.info("window %d: %s", w, row)
    finally:
        backend.close()
    command = common.format_command("question", [], {"model": None if args.quick else args.model,
                                                      "windows": None if args.quick else args.windows,
                                                      "repeat": None if args.quick else args.repeat,
                                                      "top_k": args.top_k, "max_new_tokens": args.max_new_tokens,
                                                      "quick": args.quick, "threads": args.threads})
    return {"title": "Question: probe and first-token latency, window cache vs concatenated caches",
            "command": command, "metrics": {"rows": rows, "model": model, "threads": threads, "top_k": k,
                                            "max_new_tokens": max_new, "malloc_fixed": malloc_fixed,
                                            "load_avg_start": runtime.load_average()},
            "markdown": _markdown(rows, model, k, max_new, repeat, malloc_fixed)}


def goal_lines(rows: list[dict]) -> list[str]:
    """The no-copy goal: what a question adds to RSS must not grow with the window.

    A question's peak extra RSS holds things that do not depend on the window (the retrieved chunks'
    KV, the question's activations and logits, the rerank's keys) plus, if the window's KV were
    copied, that copy. So the goal is read on the growth across windows: the window cache's peak extra
    RSS may grow by at most a tenth of the growth of the window's KV from the smallest to the largest
    window. With one window only, the peak itself must be under a tenth of the window's KV.
    """
    usable = [r for r in rows if r.get("window_cache_peak_extra_bytes") is not None]
    if not usable:
        return []

    def kv(r: dict) -> float:
        return r["kv_bytes_per_token"] * r["window_held"]

    lines = ["", "| window tokens | window KV MB | window cache: peak extra RSS MB | share of the window's KV "
             "| concatenated: peak extra RSS MB |", "|---:|---:|---:|---:|---:|"]
    for r in usable:
        peak = r["window_cache_peak_extra_bytes"]
        lines.append(f"| {r['window_tokens']} | {kv(r) / 1e6:.1f} | {peak / 1e6:.1f} | {peak / kv(r):.0%} "
                     f"| {_mb(r.get('concatenated_peak_extra_bytes'))} |")
    lo, hi = usable[0], usable[-1]
    if len(usable) > 1 and kv(hi) > kv(lo):
        grow_peak = hi["window_cache_peak_extra_bytes"] - lo["window_cache_peak_extra_bytes"]
        share = grow_peak / (kv(hi) - kv(lo))
        met = share < 0.1
        lines += ["", f"Goal, no copy of the window's KV per question (from {lo['window_tokens']} to "
                      f"{hi['window_tokens']} window tokens a question's peak extra RSS grows by under a tenth of "
                      f"what the window's KV grows by): grew {grow_peak / 1e6:+.1f} MB against "
                      f"{(kv(hi) - kv(lo)) / 1e6:.1f} MB of window KV ({share:.0%}): "
                      + ("**met**." if met else "**not met**.")
                      + " What a question adds at every window size (retrieved chunks, activations, logits) "
                        "does not depend on the window, so the small windows' share of their own KV is larger "
                        "without any copy; the growth is what a copy would show."]
    else:
        peak = lo["window_cache_peak_extra_bytes"]
        lines += ["", "Goal, no copy of the window's KV per question (one window: peak extra RSS under a tenth of "
                      "its KV): " + ("**met**." if peak < 0.1 * kv(lo) else "**not met**.")]
    return lines


def _mb(x) -> str:
    return "n/a" if x is None else f"{x / 1e6:.1f}"


def _markdown(rows: list[dict], model: str, k: int, max_new: int, repeat: int, malloc_fixed: bool) -> str:
    lines = [
        f"Model `{model}` (float32, CPU). Each window is filled with timed notes until full and the bank holds "
        f"chunks; the same question is then answered {repeat} times by each path, alternately, each retrieving "
        f"the same {k} chunks and generating {max_new} tokens. Times are medians (seconds); *speed-up* is "
        "concatenated / window cache. Peak extra RSS is one question's peak above the RSS before it"
        + ("" if malloc_fixed else " (glibc's mmap threshold could not be fixed: freed blocks may be reused unseen)")
        + ". Item prefill: one note prefilled over sink + window.",
        "",
        "| window tokens | path | probe s | first token s | total s | item prefill s | peak extra RSS MB |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        for mode in PATHS:
            key = mode.replace(" ", "_")
            lines.append(f"| {r['window_tokens']} | {mode} | {r[f'{key}_probe_s']:.4f} | {r[f'{key}_first_token_s']:.4f} "
                         f"| {r[f'{key}_total_s']:.4f} | {r[f'{key}_item_prefill_s']:.4f} "
                         f"| {_mb(r[f'{key}_peak_extra_bytes'])} |")
    lines += ["", "| window tokens | probe speed-up | first-token speed-up | total speed-up | item prefill speed-up "
              "| window KV held (MB): cache buffer / items' own copies |", "|---:|---:|---:|---:|---:|---|"]
    def ratio(r: dict, metric: str) -> str:
        a, b = r[f"concatenated_{metric}"], r[f"window_cache_{metric}"]
        return f"{a / b:.2f}x" if b else "n/a"

    for r in rows:
        own = 0 if r["item_views"] else r["window_items_bytes"]
        lines.append(f"| {r['window_tokens']} | {ratio(r, 'probe_s')} | {ratio(r, 'first_token_s')} "
                     f"| {ratio(r, 'total_s')} | {ratio(r, 'item_prefill_s')} "
                     f"| {_mb(r['window_cache_bytes'])} / {_mb(own)} |")
    if len(rows) > 1:
        lo, hi = rows[0], rows[-1]
        growth = {m: hi[f"{m.replace(' ', '_')}_probe_s"] / lo[f"{m.replace(' ', '_')}_probe_s"] for m in PATHS}
        lines += ["", f"From {lo['window_tokens']} to {hi['window_tokens']} window tokens the probe time grows "
                      f"{growth['window cache']:.2f}x with the window cache and {growth['concatenated']:.2f}x with "
                      "concatenated caches; what still grows with the window cache is attention itself (the "
                      "question reads every window key), not a copy."]
    lines += goal_lines(rows)
    return "\n".join(lines)
