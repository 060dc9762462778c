"""predictions.jsonl (append, resume, a truncated last line), summary.json and the markdown table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.eval.aggregate import aggregate
from app.eval.items import EvalItem
from app.eval.report import RECORD_FIELDS, PredictionsFile, make_record, markdown_table, write_summary


def item(n: int, task: str = "EPM", group: str = "Backward Tracing") -> EvalItem:
    return EvalItem(id=f"ovo/{n}", benchmark="ovo", task=task, group=group, video="bikes.mp4", t=float(n),
                    question="Who?", options=("x", "y"), answer="A", kind="choice")


def record(n: int, correct: bool = True, **kw) -> dict:
    return make_record(item(n, **kw), response="A" if correct else "B", choice="A" if correct else "B",
                       correct_official=correct, correct_strict=correct, evidence=[(1, 2.5, "memory", "frame")],
                       first_token_s=0.25, total_s=1.5, frames=12)


def test_record_fields():
    r = record(3)
    assert tuple(r) == RECORD_FIELDS
    assert r["evidence"] == [[1.0, 2.5, "memory", "frame"]] and r["options"] == ["x", "y"] and r["t"] == 3.0
    skipped = make_record(item(4), response=None, choice=None, correct_official=True, correct_strict=True,
                          error="video bikes.mp4 not found")
    assert skipped["correct_official"] is False and skipped["frames"] == 0 and skipped["evidence"] == []


def test_append_then_resume(tmp_path: Path):
    path = tmp_path / "out" / "predictions.jsonl"
    pf = PredictionsFile(path)
    assert pf.done_ids() == set()
    pf.append(record(1))
    pf.append(record(2, correct=False))
    assert len(path.read_text().splitlines()) == 2  # flushed as written
    again = PredictionsFile(path)
    assert again.done_ids() == {"ovo/1", "ovo/2"}
    assert [r["correct_official"] for r in again.records()] == [True, False]
    with pytest.raises(ValueError, match="prediction record ovo/9 lacks choice"):
        again.append({k: v for k, v in record(9).items() if k != "choice"})


def test_resume_drops_a_truncated_last_line(tmp_path: Path):
    path = tmp_path / "predictions.jsonl"
    full = json.dumps(record(1)) + "\n" + json.dumps(record(2))
    path.write_text(full[:-15])  # killed mid-write of the second record
    pf = PredictionsFile(path)
    assert pf.done_ids() == {"ovo/1"}
    pf.append(record(3))
    lines = path.read_text().splitlines()
    assert [json.loads(x)["id"] for x in lines] == ["ovo/1", "ovo/3"]
    # A complete last record without its newline is kept, and the next one starts on its own line.
    path.write_text(json.dumps(record(1)) + "\n" + json.dumps(record(2)))
    pf = PredictionsFile(path)
    assert pf.done_ids() == {"ovo/1", "ovo/2"}
    pf.append(record(3))
    assert [json.loads(x)["id"] for x in path.read_text().splitlines()] == ["ovo/1", "ovo/2", "ovo/3"]


def test_a_bad_line_inside_the_file_is_an_error(tmp_path: Path):
    path = tmp_path / "predictions.jsonl"
    path.write_text(json.dumps(record(1)) + "\n{oops\n" + json.dumps(record(2)) + "\n")
    with pytest.raises(ValueError, match=r"predictions.jsonl: line 2 is not a prediction record"):
        PredictionsFile(path)


def test_summary_and_markdown(tmp_path: Path):
    records = [record(1), record(2, correct=False), record(3, task="STU", group="Real-Time Visual Perception")]
    summary = aggregate(records)
    path = write_summary(tmp_path / "run", summary)
    assert path == tmp_path / "run" / "summary.json" and json.loads(path.read_text()) == summary
    table = markdown_table(summary)
    assert "| task | group | n | official % | strict % |" in table
    assert "| EPM | Backward Tracing | 2 | 50.0 | 50.0 |" in table
    assert "| STU | Real-Time Visual Perception | 1 | 100.0 | 100.0 |" in table
    assert "| **overall** | | 3 | 75.0 | 75.0 |" in table  # OVO: mean of the group means 50 and 100
    assert "| mean of all tasks | | | 75.0 | 75.0 |" in table
    assert markdown_table(aggregate([])) == "No questions were scored.\n"
