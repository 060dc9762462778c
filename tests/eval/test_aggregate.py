"""Aggregation against hand-computed results: StreamingBench means over questions, OVO means of means."""

from __future__ import annotations

import pytest

from app.eval.aggregate import aggregate


def rec(benchmark: str, task: str, group: str, official: int, strict: int, error: str | None = None) -> dict:
    return {"id": f"{task}-{official}{strict}", "benchmark": benchmark, "task": task, "group": group,
            "correct_official": bool(official), "correct_strict": bool(strict), "error": error}


BT, RVP, FAR = "Backward Tracing", "Real-Time Visual Perception", "Forward Active Responding"
RTVU, CU = "Real-Time Visual Understanding", "Contextual Understanding"


def test_ovo_group_is_the_mean_of_task_means_and_overall_the_mean_of_groups():
    records = [rec("ovo", "EPM", BT, 1, 1), rec("ovo", "EPM", BT, 1, 0), rec("ovo", "EPM", BT, 0, 0),
               rec("ovo", "ASI", BT, 0, 0), rec("ovo", "STU", RVP, 1, 1),
               rec("ovo", "REC", FAR, 1, 0), rec("ovo", "REC", FAR, 0, 0)]
    ovo = aggregate(records)["benchmarks"]["ovo"]
    assert list(ovo["tasks"]) == ["EPM", "ASI", "STU", "REC"]  # the benchmark's own order
    assert ovo["tasks"]["EPM"]["official"] == pytest.approx(200 / 3) and ovo["tasks"]["EPM"]["n"] == 3
    assert ovo["tasks"]["EPM"]["strict"] == pytest.approx(100 / 3)
    # Backward Tracing: mean of EPM 66.7 and ASI 0 = 33.3, where a plain mean over its 4 questions is 50.
    assert ovo["groups"][BT]["official"] == pytest.approx(100 / 3)
    assert ovo["groups"][BT]["tasks"] == ["EPM", "ASI"] and ovo["groups"][BT]["n"] == 4
    assert ovo["groups"][RVP]["official"] == 100.0 and ovo["groups"][FAR]["official"] == 50.0
    assert list(ovo["groups"]) == [BT, RVP, FAR]
    overall = ovo["overall"]
    assert overall["official"] == pytest.approx((100 / 3 + 100 + 50) / 3)  # 61.1; plain mean over 7 is 57.1
    assert overall["official_task_mean"] == pytest.approx((200 / 3 + 0 + 100 + 50) / 4)  # score.py's Total Avg.
    assert overall["strict"] == pytest.approx((50 / 3 + 100 + 0) / 3)
    assert overall["n"] == 7 and overall["errors"] == 0


def test_streamingbench_means_over_questions_and_errors_left_out():
    sb = "streamingbench"
    records = [rec(sb, "Object Perception", RTVU, 1, 1), rec(sb, "Object Perception", RTVU, 0, 1),
               rec(sb, "Counting", RTVU, 1, 0), rec(sb, "Counting", RTVU, 0, 0, error="missing video"),
               rec(sb, "Sequential Question Answering", CU, 0, 0)]
    summary = aggregate(records)
    assert summary["questions"] == 5 and summary["errors"] == 1
    sb = summary["benchmarks"]["streamingbench"]
    assert sb["tasks"]["Counting"] == {"group": RTVU, "n": 1, "errors": 1, "official": 100.0, "strict": 0.0}
    # Real-Time: 2 right of 3 questions (a mean of the task means would be 75).
    assert sb["groups"][RTVU]["official"] == pytest.approx(200 / 3) and sb["groups"][RTVU]["strict"] == pytest.approx(200 / 3)
    assert sb["groups"][CU]["official"] == 0.0
    assert sb["overall"] == {"n": 4, "errors": 1, "official": 50.0, "strict": 50.0}


def test_nothing_scored_and_bad_records():
    summary = aggregate([rec("jsonl", "open", "LiveSight", 0, 0, error="missing video")])
    assert summary["benchmarks"]["jsonl"]["overall"] == {"n": 0, "errors": 1, "official": None, "strict": None}
    assert aggregate([]) == {"benchmarks": {}, "questions": 0, "errors": 0}
    with pytest.raises(ValueError, match=r"record 0 \(x\) lacks group, correct_strict"):
        aggregate([{"id": "x", "benchmark": "ovo", "task": "EPM", "correct_official": True}])
