"""The retrieval levers' rows (issue 17) in the paraphrase, recall and fidelity benches, quick mode through the
CLI: each lever alone beside the row before the levers and all together, on the same questions; a
checkpoint measured under other defaults is reported with the default row taken from the row that had
today's default settings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.cli.main import main

pytestmark = pytest.mark.slow

LEVERS = ["hybrid + neighbours (before the levers)", "+ calibrated heads", "+ second probe (2 tokens)",
          "+ score gap 0.5, top_k 4", "all levers (top_k 4)"]
OPTS = ["--levers", "--probe-tokens", "2", "--score-gap", "0.5", "--gap-top-k", "4"]


def _run(name: str, tmp_path: Path, *extra: str) -> dict:
    out = tmp_path / "results"
    rc = main(["bench", name, "--quick", "--threads", "1", "--output-dir", str(out), "--no-update-md", *extra])
    assert rc == 0
    files = sorted(out.glob(f"{name}-*.json"))
    result = json.loads(files[-1].read_text())
    for f in files:
        f.unlink()
    return result


def test_paraphrase_lever_rows_and_a_reported_checkpoint(tmp_path):
    ck = tmp_path / "ck.json"
    result = _run("paraphrase", tmp_path, *OPTS, "--checkpoint", str(ck))
    m = result["metrics"]
    settings = {s["setting"]: s for s in m["settings"]}
    assert set(LEVERS) <= set(settings) and m["levers"] == LEVERS
    for rec in result["records"]:
        assert set(LEVERS) <= set(rec["results"])
    # more hits allowed (top_k 4 with a gap) never finds fewer targets than the gap lets through at top_k 2 rows
    assert all(0.0 <= settings[n]["hit"] <= 1.0 for n in LEVERS)
    assert "Levers (issue 17), each against *hybrid + neighbours (before the levers)*" in result["markdown"]
    assert "+ second probe (2 tokens): needle in context" in result["markdown"]
    # reported again from the checkpoint: the same figures
    again = _run("paraphrase", tmp_path, *OPTS, "--from-checkpoints", str(ck))
    by = {s["setting"]: s for s in again["metrics"]["settings"]}
    assert by["+ calibrated heads"]["hit"] == settings["+ calibrated heads"]["hit"]
    assert by["default"]["hit"] == settings["default"]["hit"]


def test_recall_and_fidelity_lever_rows(tmp_path):
    from app.bench.recall import DEFAULT, HYBRID

    result = _run("recall", tmp_path, *OPTS)
    rows = {r["setting"]: r for r in result["metrics"]["rows"]}
    assert set(LEVERS) <= set(rows) and {HYBRID, DEFAULT} <= set(rows)
    assert rows["+ second probe (2 tokens)"]["probe_tokens"] == 2 and rows[LEVERS[0]]["probe_tokens"] == 0
    assert rows["+ score gap 0.5, top_k 4"]["score_gap"] == 0.5 and rows["+ score gap 0.5, top_k 4"]["top_k"] == 4
    assert rows["+ calibrated heads"]["heads"] == "auto" and rows[LEVERS[0]]["heads"] == "upper"
    assert "Levers (issue 17) against" in result["markdown"]
    quick = _run("recall", tmp_path)  # quick mode leaves the lever rows out unless asked
    assert not set(LEVERS) & {r["setting"] for r in quick["metrics"]["rows"]}
    fid = _run("fidelity", tmp_path, *OPTS)
    names = {s["setting"] for s in fid["metrics"]["settings"]}
    assert set(LEVERS[1:]) | {"default retrieval", "top_k 8"} <= names and LEVERS[0] not in names
    assert "Retrieval levers (issue 17) beside *top_k 8*" in fid["markdown"]
