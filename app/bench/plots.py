"""Small PNG plots for BENCHMARKS.md (matplotlib, Agg backend, commit-sized files).

Each function takes plain lists and writes one PNG; nothing is imported until a plot is made.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger(__name__)

#: Small figures: about 30-60 KB per PNG.
DPI = 80


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def line_panels(path: Path, panels: Sequence[dict], *, title: str | None = None) -> Path:
    """Write side-by-side line plots.

    Args:
        path: the PNG to write.
        panels: one dict per panel: ``series`` (list of ``(label, xs, ys)``), ``xlabel``, ``ylabel``,
            optional ``logx`` / ``logy`` (bool), ``vlines`` (x positions marked with dashed lines,
            labelled ``vline_label``), ``hline`` (y value) with ``hline_label``, ``title``.
    """
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 3.6), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        for label, xs, ys in panel["series"]:
            if len(xs):
                ax.plot(xs, ys, marker="o" if len(xs) <= 30 else None, markersize=3, linewidth=1.4, label=label)
        for i, x in enumerate(panel.get("vlines", ())):
            ax.axvline(x, color="grey", linestyle="--", linewidth=0.8,
                       label=panel.get("vline_label") if i == 0 else None)
        if panel.get("hline") is not None:
            ax.axhline(panel["hline"], color="red", linestyle=":", linewidth=1.0, label=panel.get("hline_label"))
        if panel.get("logx"):
            ax.set_xscale("log")
        if panel.get("logy"):
            ax.set_yscale("log")
        ax.set_xlabel(panel["xlabel"])
        ax.set_ylabel(panel["ylabel"])
        if panel.get("title"):
            ax.set_title(panel["title"], fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    log.info("wrote %s", path)
    return path
