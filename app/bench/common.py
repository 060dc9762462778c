"""Helpers every ``livesight bench`` module shares.

The machine description, the date, the result JSON under ``bench-results/`` and the
BENCHMARKS.md section of each bench (between ``<!-- bench:NAME -->`` and
``<!-- /bench:NAME -->``, replaced in place, appended when absent).

A bench module's ``run(args)`` returns a dict with at least ``title`` (the section
heading), ``command`` (how to reproduce it), ``metrics`` (numbers) and ``markdown`` (the
section body: tables, notes); :func:`finish` adds machine and date, writes the JSON and
updates BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import json
import logging
import os
import platform
import re
import shlex
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# Default places, relative to the working directory the bench runs in (the installed package never
# writes next to its own files): result JSON, the markdown file, and its plots (beside the markdown).
DEFAULT_RESULTS_DIR = Path("bench-results")
DEFAULT_BENCHMARKS_MD = Path("BENCHMARKS.md")
DEFAULT_PLOT_SUBDIR = Path("docs") / "bench"

BENCHMARKS_HEADER = (
    "# LiveSight benchmarks\n\n"
    "Each section is written by `livesight bench NAME` (see README, section benchmarks): every figure is a "
    "ratio measured side by side in one run, with the command, the machine and the date. Raw results are "
    "in `bench-results/NAME-TIMESTAMP.json`.\n"
)


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux), or the platform's best guess."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine_info() -> dict[str, Any]:
    """CPU model, cores, RAM, OS and the versions that matter for the numbers."""
    import psutil

    return {
        "cpu": cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "torch": _version("torch"),
        "av": _version("av"),
        "numpy": _version("numpy"),
        "opencv": _version("opencv-python-headless"),
        "load_avg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }


def machine_summary(machine: dict[str, Any]) -> str:
    """One line: ``CPU, N cores, R GiB RAM, Python x, torch y (load average)``."""
    cores = machine.get("usable_cores") or machine.get("logical_cores")
    line = (f"{machine.get('cpu')}, {cores} cores, {machine.get('ram_gib')} GiB RAM, "
            f"Python {machine.get('python')}, torch {machine.get('torch')}")
    if machine.get("load_avg_1m") is not None:
        line += f" (1-minute load average {machine['load_avg_1m']} when it finished)"
    return line


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0)


def format_command(name: str, positionals: Sequence[str], options: dict[str, Any]) -> str:
    """``livesight bench NAME POS... --opt value --flag`` (None and False options left out)."""
    parts = ["livesight", "bench", name, *positionals]
    for key, value in options.items():
        if value is None or value is False:
            continue
        flag = "--" + key.replace("_", "-")
        parts += [flag] if value is True else [flag, str(value)]
    return shlex.join(parts)


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def write_result(name: str, payload: dict[str, Any], output_dir: Path, when: dt.datetime) -> Path:
    """Write ``payload`` to ``output_dir/NAME-YYYYmmdd-HHMMSS.json`` (never overwriting one)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{name}-{when.strftime('%Y%m%d-%H%M%S')}"
    path = output_dir / f"{stem}.json"
    counter = 1
    while path.exists():
        path = output_dir / f"{stem}-{counter}.json"
        counter += 1
    path.write_text(json.dumps(payload, indent=2, sort_keys=False, default=str) + "\n", encoding="utf-8")
    return path


def markers(name: str) -> tuple[str, str]:
    return f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"


def update_benchmarks_md(name: str, section: str, path: Path) -> None:
    """Replace the text between ``name``'s markers in ``path`` by ``section``; append the
    marked section when it is absent (creating the file with a header when needed)."""
    begin, end = markers(name)
    block = f"{begin}\n{section.strip()}\n{end}"
    text = path.read_text(encoding="utf-8") if path.exists() else BENCHMARKS_HEADER
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text, encoding="utf-8")


def render_section(result: dict[str, Any], machine: dict[str, Any], when: dt.datetime,
                   json_path: Path | None, relative_to: Path | None = None) -> str:
    """The BENCHMARKS.md section: heading, command, machine, date, then the bench's body.

    ``json_path`` is shown relative to ``relative_to`` (default: the working directory) when inside it.
    """
    lines = [
        f"## {result['title']}",
        "",
        f"- command: `{result['command']}`",
        f"- machine: {machine_summary(machine)}",
        f"- date: {when.strftime('%Y-%m-%d %H:%M UTC')}",
    ]
    if json_path is not None:
        try:
            shown = json_path.resolve().relative_to((relative_to or Path.cwd()).resolve())
        except ValueError:
            shown = json_path
        lines.append(f"- raw result: `{shown}`")
    lines += ["", result["markdown"].strip()]
    return "\n".join(lines)


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """Options every bench takes: where the JSON goes and whether BENCHMARKS.md is updated."""
    parser.add_argument("--output-dir", type=Path, default=DEFAULT_RESULTS_DIR,
                        help=f"where the result JSON goes (default {DEFAULT_RESULTS_DIR}/ in the current directory)")
    parser.add_argument("--benchmarks-md", type=Path, default=DEFAULT_BENCHMARKS_MD,
                        help=f"the markdown file to update (default {DEFAULT_BENCHMARKS_MD} in the current directory; "
                             f"plots go to {DEFAULT_PLOT_SUBDIR}/ beside it)")
    parser.add_argument("--no-update-md", action="store_true", help="write the JSON only, leave BENCHMARKS.md alone")


def finish(name: str, args: argparse.Namespace, result: dict[str, Any]) -> tuple[Path, str]:
    """Add machine and date to ``result``, write the JSON, update BENCHMARKS.md unless told not to.

    Returns:
        the JSON path and the rendered markdown section.
    """
    for key in ("title", "command", "metrics", "markdown"):
        if key not in result:
            raise ValueError(f"bench {name!r} returned no {key!r}")
    when = utc_now()
    machine = machine_info()
    payload = {"name": name, "date": when.isoformat(), "machine": machine, **result}
    json_path = write_result(name, payload, Path(args.output_dir), when)
    # the raw result's path as the markdown's reader finds it: relative to the markdown's folder
    section = render_section(result, machine, when, json_path, relative_to=Path(args.benchmarks_md).parent)
    if not args.no_update_md:
        update_benchmarks_md(name, section, Path(args.benchmarks_md))
        log.info("updated %s (section %s)", args.benchmarks_md, name)
    return json_path, section
