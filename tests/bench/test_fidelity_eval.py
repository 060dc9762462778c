"""``livesight bench eval --quick``: the suite runs through run_eval under every setting, end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.bench.fidelity_eval import DEFAULTS, DEFAULTS_16, FULL, WINDOW, codec_name
from app.cli.main import main

pytestmark = pytest.mark.slow


def test_eval_bench_quick(tmp_path):
    out = tmp_path / "results"
    rc = main(["bench", "eval", "--quick", "--threads", "1", "--output-dir", str(out), "--no-update-md"])
    assert rc == 0
    (path,) = sorted(out.glob("eval-*.json"))
    result = json.loads(path.read_text())
    m = result["metrics"]
    assert m["questions"] == 3 and m["streams"] == 1
    overall = m["table"]["overall"]
    codec = codec_name(2, 32, "channel")  # --quick adds one codec beside the defaults' own
    assert m["codecs"] == [codec]
    assert set(overall) == {"questions", FULL, WINDOW, DEFAULTS, DEFAULTS_16, codec}
    # every setting is compared with 16-bit on the same resampled questions: 16-bit itself by 0 points
    # (undefined, nan, when window only and full context score alike, as random weights may)
    ref = overall[DEFAULTS_16]["delta"]
    assert ref == 0.0 or ref != ref
    assert {"delta", "delta_lo", "delta_hi"} <= set(overall[codec])
    assert f"| {codec} |" in result["markdown"]
    assert sum(m["table"][t]["questions"] for t in m["tasks"]) == 3
    for name in (FULL, WINDOW, DEFAULTS, DEFAULTS_16):
        assert overall[name]["choice"] in (0.0, 1 / 3, 2 / 3, 1.0)
        assert overall[name]["nll"] > 0
    # every setting wrote its own predictions through run_eval, one record per question, none failed
    for folder in ("full-context", "local-window-only", "default-settings", "defaults-16-bit-KV"):
        work = Path(m["suite"]).parent  # the run's folder: the suite and one folder per setting
        lines = (work / folder / "predictions.jsonl").read_text().splitlines()
        records = [json.loads(x) for x in lines]
        assert len(records) == 3 and all(r["error"] is None and r["scores"] for r in records)
        assert (work / folder / "summary.json").is_file()
    assert "| **overall** | 3 |" in result["markdown"]
