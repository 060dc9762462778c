"""The files a run writes: ``predictions.jsonl`` (one record per question, appended as it is answered, so
an interrupted run can resume), ``summary.json`` and the markdown table.

A record (:data:`RECORD_FIELDS`, built by :func:`make_record`)::

    id, benchmark, task, group, video, t, question, options, answer, kind,   # from the EvalItem
    response, choice, correct_official, correct_strict,                      # the answer and its scores
    evidence,            # [[t0, t1, source, kind], ...]: where the session's answer came from
    first_token_s, total_s, frames,                                          # cost
    error                # None, or why the question was skipped or failed
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from app.eval.items import EvalItem

__all__ = ["RECORD_FIELDS", "SUMMARY_NAME", "PredictionsFile", "make_record", "markdown_table", "write_summary"]

log = logging.getLogger(__name__)

RECORD_FIELDS = ("id", "benchmark", "task", "group", "video", "t", "question", "options", "answer", "kind",
                 "response", "choice", "correct_official", "correct_strict", "evidence", "first_token_s",
                 "total_s", "frames", "error")
SUMMARY_NAME = "summary.json"


def make_record(item: EvalItem, *, response: str | None, choice: str | None, correct_official: bool,
                correct_strict: bool, evidence: Iterable[Sequence] = (), first_token_s: float | None = None,
                total_s: float | None = None, frames: int = 0, error: str | None = None) -> dict:
    """One ``predictions.jsonl`` record for ``item``.

    Args:
        evidence: ``(t0, t1, source, kind)`` per evidence range the answer used.
        error: None for an answered question; else the reason it was skipped or failed (the scores are
            then False and the aggregate leaves it out).
    """
    return {
        "id": item.id, "benchmark": item.benchmark, "task": item.task, "group": item.group, "video": item.video,
        "t": item.t, "question": item.question, "options": list(item.options), "answer": item.answer,
        "kind": item.kind, "response": response, "choice": choice,
        "correct_official": bool(correct_official) and error is None,
        "correct_strict": bool(correct_strict) and error is None,
        "evidence": [[float(e[0]), float(e[1]), str(e[2]), str(e[3])] for e in evidence],
        "first_token_s": first_token_s, "total_s": total_s, "frames": int(frames), "error": error,
    }


class PredictionsFile:
    """``predictions.jsonl``: read what an earlier run wrote, then append one record per question.

    Opening it drops a truncated last line (a run killed mid-write) so the next record starts on a line of
    its own; a malformed line anywhere else is an error, never silently skipped.

    Raises:
        ValueError: a line before the last is not a JSON record with an ``id``.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._records: list[dict] = []
        if self.path.exists():
            self._records = self._read_and_repair()

    def _read_and_repair(self) -> list[dict]:
        data = self.path.read_bytes()
        records: list[dict] = []
        pos, n = 0, 0
        while pos < len(data):
            n += 1
            newline = data.find(b"\n", pos)
            raw = data[pos:] if newline < 0 else data[pos:newline]
            record = _parse(raw)
            if newline < 0:  # the last line has no newline: a complete record, or one cut short mid-write
                if record is not None:
                    records.append(record)
                    with self.path.open("ab") as f:
                        f.write(b"\n")
                else:
                    log.warning("%s: dropping a truncated last line (%d bytes)", self.path, len(raw))
                    with self.path.open("r+b") as f:
                        f.truncate(pos)
                break
            pos = newline + 1
            if not raw.strip():
                continue
            if record is None:
                raise ValueError(f"{self.path}: line {n} is not a prediction record (a JSON object with an id)")
            records.append(record)
        return records

    def records(self) -> list[dict]:
        """Every record read at open and appended since, in file order."""
        return list(self._records)

    def done_ids(self) -> set[str]:
        """The ids already in the file (``--resume`` skips them)."""
        return {str(r["id"]) for r in self._records}

    def append(self, record: Mapping) -> None:
        """Write one record as a JSON line and flush it.

        Raises:
            ValueError: the record lacks fields of :data:`RECORD_FIELDS`.
        """
        missing = [k for k in RECORD_FIELDS if k not in record]
        if missing:
            raise ValueError(f"prediction record {record.get('id', '?')} lacks {', '.join(missing)}")
        line = json.dumps(dict(record), ensure_ascii=False)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()
        self._records.append(dict(record))


def _parse(raw: bytes) -> dict | None:
    try:
        record = json.loads(raw)
    except ValueError:
        return None
    return record if isinstance(record, dict) and "id" in record else None


def write_summary(out_dir: str | Path, summary: Mapping) -> Path:
    """Write ``summary`` (:func:`app.eval.aggregate.aggregate`'s dict) as ``out_dir/summary.json``
    (written to a temporary name first, so a reader never sees half a file); returns its path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / SUMMARY_NAME
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def markdown_table(summary: Mapping) -> str:
    """A markdown table per benchmark: one row per task, then per group and overall, with the official
    and the strict accuracy (percent) and the number of questions scored (and skipped)."""
    parts: list[str] = []
    for benchmark, result in summary.get("benchmarks", {}).items():
        rows = [f"**{benchmark}**", "", "| task | group | n | official % | strict % |", "|---|---|---:|---:|---:|"]

        def n_text(entry: Mapping) -> str:
            return f"{entry['n']}" + (f" (+{entry['errors']} skipped)" if entry.get("errors") else "")

        for task, e in result["tasks"].items():
            rows.append(f"| {task} | {e['group']} | {n_text(e)} | {_cell(e['official'])} | {_cell(e['strict'])} |")
        for group, e in result["groups"].items():
            rows.append(f"| **{group}** | | {n_text(e)} | {_cell(e['official'])} | {_cell(e['strict'])} |")
        o = result["overall"]
        rows.append(f"| **overall** | | {n_text(o)} | {_cell(o['official'])} | {_cell(o['strict'])} |")
        if "official_task_mean" in o:
            rows.append(f"| mean of all tasks | | | {_cell(o['official_task_mean'])} | {_cell(o['strict_task_mean'])} |")
        parts.append("\n".join(rows))
    return "\n\n".join(parts) + "\n" if parts else "No questions were scored.\n"
