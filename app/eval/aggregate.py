"""Per-task, per-group and overall accuracy, each benchmark in its own way, for both scorings.

- StreamingBench: every level is the mean over its questions (the official ``count.py`` counts
  correct / total per task and over all questions).
- OVO-Bench: a group is the mean of its task means, and ``overall`` the mean of the three group means;
  ``overall_task_mean`` is the mean of all task means, the "Total Avg." the official ``score.py`` prints.
- LiveSight JSONL: means over questions, like StreamingBench.

Records that carry an ``error`` (a missing video, a failed question) are counted under ``errors`` and left
out of the means, as the official StreamingBench count leaves out questions without a response.
Accuracies are percentages (0-100), None where nothing was scored.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from app.eval.tasks import GROUPS, TASKS

__all__ = ["SCORINGS", "aggregate"]

SCORINGS = ("official", "strict")


def _pct(values: list[float]) -> float | None:
    return 100.0 * sum(values) / len(values) if values else None


def _mean(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None


def _benchmark(benchmark: str, records: list[Mapping]) -> dict:
    by_task: dict[str, list[Mapping]] = {}
    for r in records:
        by_task.setdefault(str(r["task"]), []).append(r)
    order = [t for t, (b, _, _) in TASKS.items() if b == benchmark]
    tasks: dict[str, dict] = {}
    for name in [t for t in order if t in by_task] + sorted(t for t in by_task if t not in order):
        rows = by_task[name]
        scored = [r for r in rows if not r.get("error")]
        entry = {"group": str(rows[0]["group"]), "n": len(scored), "errors": len(rows) - len(scored)}
        for s in SCORINGS:
            entry[s] = _pct([float(bool(r[f"correct_{s}"])) for r in scored])
        tasks[name] = entry
    group_order = list(GROUPS.get(benchmark, ()))
    seen_groups = {e["group"] for e in tasks.values()}
    group_names = [g for g in group_order if g in seen_groups] + sorted(seen_groups - set(group_order))
    groups: dict[str, dict] = {}
    for g in group_names:
        members = [t for t, e in tasks.items() if e["group"] == g]
        entry = {"tasks": members, "n": sum(tasks[t]["n"] for t in members),
                 "errors": sum(tasks[t]["errors"] for t in members)}
        for s in SCORINGS:
            if benchmark == "ovo":
                entry[s] = _mean([tasks[t][s] for t in members])
            else:
                entry[s] = _pct([float(bool(r[f"correct_{s}"])) for t in members for r in by_task[t] if not r.get("error")])
        groups[g] = entry
    overall: dict[str, object] = {"n": sum(e["n"] for e in tasks.values()), "errors": sum(e["errors"] for e in tasks.values())}
    for s in SCORINGS:
        if benchmark == "ovo":
            overall[s] = _mean([g[s] for g in groups.values()])
            overall[f"{s}_task_mean"] = _mean([e[s] for e in tasks.values()])
        else:
            overall[s] = _pct([float(bool(r[f"correct_{s}"])) for r in records if not r.get("error")])
    return {"tasks": tasks, "groups": groups, "overall": overall}


def aggregate(records: Iterable[Mapping]) -> dict:
    """The summary of a run from its prediction records (the dicts of ``predictions.jsonl``).

    Returns:
        ``{"benchmarks": {benchmark: {"tasks": {task: {group, n, errors, official, strict}},
        "groups": {group: {tasks, n, errors, official, strict}}, "overall": {n, errors, official,
        strict[, official_task_mean, strict_task_mean]}}}, "questions": int, "errors": int}``; tasks and
        groups in the benchmark's own order; ``n`` counts the scored questions (for OVO's forward tasks,
        probes).

    Raises:
        ValueError: a record lacks ``benchmark``, ``task``, ``group`` or a ``correct_*`` field.
    """
    records = list(records)
    by_benchmark: dict[str, list[Mapping]] = {}
    for i, r in enumerate(records):
        missing = [k for k in ("benchmark", "task", "group", "correct_official", "correct_strict") if k not in r]
        if missing:
            raise ValueError(f"record {i} ({r.get('id', '?')}) lacks {', '.join(missing)}")
        by_benchmark.setdefault(str(r["benchmark"]), []).append(r)
    benchmarks = {b: _benchmark(b, rows) for b, rows in by_benchmark.items()}
    return {"benchmarks": benchmarks, "questions": len(records), "errors": sum(1 for r in records if r.get("error"))}
