"""``livesight bench stream-days --quick``: recorded KV replayed into a live session, end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.cli.main import main

pytestmark = pytest.mark.slow


def test_stream_days_quick_keeps_disk_within_budget_and_retrieves(tmp_path: Path):
    out = tmp_path / "results"
    rc = main(["bench", "stream-days", "--quick", "--threads", "1", "--output-dir", str(out),
               "--plot-dir", str(tmp_path / "plots"), "--no-update-md"])
    assert rc == 0
    (path,) = sorted(out.glob("stream-days-*.json"))
    result = json.loads(path.read_text())
    m = result["metrics"]
    assert m["disk_within_budget"] and m["worst_disk_bytes"] <= m["disk_budget_bytes"]
    points = m["points"]
    assert [p["hours"] for p in points] == sorted(p["hours"] for p in points) and len(points) == 2
    assert all(p["retrieved_chunks"] > 0 for p in points)  # retrieval on at both checkpoints
    last = points[-1]
    assert last["deleted_budget"] > 0 and last["bytes_disk"] <= m["disk_budget_bytes"]
    assert last["bank_chunks"] > points[0]["bank_chunks"]
    assert "stream-days" in result["command"] and (tmp_path / "plots" / "stream-days-quick.png").is_file()
    assert "within the" in result["markdown"]
    # the compact rerank keys (the session's default) served the rerank, counted in the RAM tier
    assert last["key_reads_compact"] > 0 and last["chunks_compact"] > 0 and last["bytes_ram"] >= last["bytes_compact"]
    for p in points:  # the first-token latency split into its parts
        assert p["probe_s"] + p["search_s"] + p["answer_s"] == pytest.approx(p["first_token_s"], abs=2e-3)
    assert "Where the difference goes" in result["markdown"]
