"""Every ``livesight bench`` subcommand of issue 6 runs in quick mode, end to end, through the CLI.

Each run writes its JSON and plots under a temporary folder and leaves the repository's
BENCHMARKS.md alone (``--no-update-md``); one run checks that a section is written into a
copy of BENCHMARKS.md between its markers. Timings are never asserted.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.cli.main import main

pytestmark = pytest.mark.slow


def _run(name: str, tmp_path: Path, *extra: str) -> dict:
    out = tmp_path / "results"
    rc = main(["bench", name, "--quick", "--threads", "1", "--output-dir", str(out), "--plot-dir", str(tmp_path / "plots"),
               "--no-update-md", *extra])
    assert rc == 0
    files = sorted(out.glob(f"{name}-*.json"))
    assert len(files) == 1
    result = json.loads(files[0].read_text())
    assert result["name"] == name
    assert result["command"].startswith(f"livesight bench {name}") and "--quick" in result["command"]
    assert result["machine"]["logical_cores"] >= 1 and result["date"]
    assert result["markdown"].strip()
    return result


def test_drop_quick(tmp_path):
    result = _run("drop", tmp_path)
    rows = {r["drop"]: r for r in result["metrics"]["rows"]}
    assert set(rows) == {"off", "feature", "pixel", "budget"}
    assert rows["off"]["kept_ratio"] == 1.0 and rows["off"]["encoder_calls"] == rows["off"]["frames"] == 50
    assert rows["budget"]["kept_ratio"] < rows["off"]["kept_ratio"]
    # pixel mode: every frame is either encoded or skipped, and the saved calls are the skips
    pixel = rows["pixel"]
    assert pixel["encoder_calls"] + pixel["frames_skipped"] == pixel["frames"]
    assert pixel["tower_calls_saved"] == pixel["frames_skipped"]
    assert (tmp_path / "plots" / "drop-quick.png").stat().st_size > 1000
    # the first frame of the history is kept whole in every mode
    for history in result["metrics"]["bikes_history"].values():
        assert history[0][1] == 1.0 and len(history) == 50


def test_kv_quick(tmp_path):
    result = _run("kv", tmp_path)
    rows = result["metrics"]["rows"]
    by_bits = {}
    for r in rows:
        by_bits.setdefault(r["bits"], []).append(r)
    assert sorted(by_bits) == [2, 4, 8, 16, 32]
    assert by_bits[32][0]["bits_per_element"] == 32.0 and by_bits[32][0]["key_rel_error"] == 0.0
    assert by_bits[16][0]["bits_per_element"] == 16.0
    # fewer bits store fewer bytes, and lose more
    sizes = [min(r["bytes_per_frame"] for r in by_bits[b]) for b in (32, 16, 8, 4, 2)]
    assert sizes == sorted(sizes, reverse=True)
    assert max(r["key_rel_error"] for r in by_bits[2]) > max(r["key_rel_error"] for r in by_bits[8])
    from compression.kvcodec import VALUE_MODES

    assert {r["value_mode"] for r in by_bits[4]} == set(VALUE_MODES)  # every value mode is measured


def test_retrieval_quick(tmp_path):
    result = _run("retrieval", tmp_path)
    rows = result["metrics"]["rows"]
    assert {(r["size"], r["index"]) for r in rows} == {(n, k) for n in (200, 2000) for k in ("flat", "hnsw", "ivf")}
    for r in rows:
        if r["index"] == "flat":
            assert r["recall_at_8"] == 1.0
        assert 0.0 <= r["recall_at_8"] <= 1.0
    assert {r["through"] for r in rows} == {"MemoryBank.retrieve", "memory.index search"}
    assert result["metrics"]["rerank"]["candidates"] == 64


def test_stream_quick(tmp_path):
    result = _run("stream", tmp_path)
    m = result["metrics"]
    assert [p["minutes"] for p in m["liveSight"]] == [0.25, 0.5]
    assert [p["minutes"] for p in m["full_kv"]] == [0.25, 0.5]
    assert [p["minutes"] for p in m["offline"]] == [0.25]
    # LiveSight's window is bounded: chunks reach the memory bank; full KV keeps everything in the window
    assert m["liveSight"][-1]["bank_chunks"] > 0
    assert all(p["bank_chunks"] == 0 for p in m["full_kv"])
    assert m["offline"][0]["tokens"] > 15 * 16
    assert m["bank_ram_within_budget"] is True
    assert (tmp_path / "plots" / "stream-quick.png").is_file()


def test_realtime_quick(tmp_path):
    result = _run("realtime", tmp_path)
    rows = result["metrics"]["rows"]
    assert [r["drop"] for r in rows] == ["off", "feature", "pixel", "budget"]
    for r in rows:
        assert r["frames"] == 3 and r["fps"] > 0 and r["realtime_factor"] > 0
    assert rows[0]["kept_ratio"] == 1.0


def test_fidelity_quick(tmp_path):
    import math

    result = _run("fidelity", tmp_path)
    m = result["metrics"]
    assert m["questions"] == 3
    settings = {s["setting"]: s for s in m["settings"]}
    expected = {"full context", "local window only", "top_k 4", "top_k 8", "top_k 16", "top_k 8, rerank 16",
                "top_k 8, rerank 32", "top_k 8, rerank off"}
    expected |= {f"KV {b}-bit, group {g}, channel values (top_k 8)" for b, g in ((8, 32), (4, 32), (2, 32), (4, 64),
                                                                                 (2, 64), (4, 128), (2, 128))}
    expected.add("KV 4-bit, group 32, token values (top_k 8)")
    assert set(settings) == expected
    assert settings["full context"]["hit_rate"] == 1.0
    assert settings["full context"]["from_memory"] == 0.0
    # by definition: full context retains all, the window none, in every bootstrap draw too
    assert settings["full context"]["retained"] == settings["full context"]["retained_lo"] == 1.0
    assert abs(settings["local window only"]["retained"]) < 1e-9
    for row in settings.values():
        assert row["questions"] == 3
        assert row["nll"] > 0 and math.isfinite(row["retained"])
        assert row["nll_lo"] <= row["nll"] <= row["nll_hi"]
        assert row["retained_lo"] <= row["retained_hi"]
        for key in ("choice", "accuracy"):
            assert row[key + "_lo"] <= row[key] <= row[key + "_hi"]
            assert row[key] in (0.0, 1 / 3, 2 / 3, 1.0)  # 3 questions
    # true bits per element (tiny model: 16 dims per head, so group metadata dominates differently per codec)
    bpe = m["codec_bits_per_element"]
    assert bpe["top_k 8"] == 16.0
    assert bpe["KV 8-bit, group 32, channel values (top_k 8)"] > bpe["KV 4-bit, group 32, channel values (top_k 8)"]
    assert bpe["KV 4-bit, group 32, channel values (top_k 8)"] > bpe["KV 4-bit, group 128, channel values (top_k 8)"] > 4
    # a local window of 48 tokens cannot hold the early needles: some must be missing from its context
    assert settings["local window only"]["hit_rate"] < 1.0
    for rec in result["records"]:  # the expected answer first, then 3 distinct distractors of its kind
        assert rec["options"][0] == rec["expected"] and len(set(rec["options"])) == 4


def test_section_is_written_between_markers(tmp_path):
    md = tmp_path / "BENCHMARKS.md"
    md.write_text("# LiveSight benchmarks\n\n<!-- bench:kv -->\nthe previous run\n<!-- /bench:kv -->\n\ntail\n")
    rc = main(["bench", "kv", "--quick", "--threads", "1", "--output-dir", str(tmp_path / "r"), "--benchmarks-md", str(md)])
    assert rc == 0
    text = md.read_text()
    assert "the previous run" not in text and text.endswith("tail\n")
    assert text.count("<!-- bench:kv -->") == 1 and "KV codec: bytes per frame" in text
    assert "- command: `livesight bench kv --quick --threads 1`" in text


def test_bad_option_is_a_clear_error(tmp_path, capsys):
    rc = main(["bench", "stream", "--quick", "--fps", "0", "--output-dir", str(tmp_path), "--no-update-md"])
    assert rc == 1
    assert "--fps must be in" in capsys.readouterr().err


def test_recall_quick(tmp_path):
    """Every question is asked at each candidate count on the same session; the smallest count is the summary
    stage alone, the others rerank; rates are shares of the questions."""
    from app.bench.recall import DEFAULT, HYBRID

    result = _run("recall", tmp_path)
    m = result["metrics"]
    rows = {r["setting"]: r for r in m["rows"]}
    assert set(rows) == {"2", "4", "8", HYBRID, DEFAULT}
    assert not rows["2"]["reranked"] and rows["4"]["reranked"] and rows["8"]["reranked"]
    assert [rows[k]["candidates"] for k in ("2", "4", "8")] == [2, 4, 8]
    # today's in-model rows leave the text path out; the hybrid row adds it, the default is what sessions get
    assert not any(rows[k]["text_retrieval"] for k in ("2", "4", "8")) and rows[HYBRID]["text_retrieval"]
    assert all(r["questions"] == 3 for r in rows.values()) and m["mean_bank_chunks"] >= 4
    assert all(0.0 <= r["from_memory"] <= r["hit_rate"] <= 1.0 for r in rows.values())
    for rec in result["records"]:
        assert set(rec["results"]) == {"2", "4", "8", HYBRID, DEFAULT}
    assert "| in-model, 2 rerank candidates (summaries only) |" in result["markdown"]


def test_asr_quick(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = _run("asr", tmp_path)
    rows = result["metrics"]["rows"]
    assert {(r["vad"], r["threads"]) for r in rows} == {(True, 1), (True, 2), (False, 1), (False, 2)}
    for r in rows:
        assert r["audio_s"] == pytest.approx(result["metrics"]["audio_s"], abs=0.01)
        assert 0 < r["speech_s"] <= r["audio_s"] and r["rtf"] > 0 and 0 <= r["wer"] < 0.5 and r["segments"] >= 1
    off, on = result["metrics"]["pipeline"]
    assert not off["speech"] and on["speech"] and off["frames"] == on["frames"] > 0
    assert off["speech_events"] == 0 and on["speech_events"] >= 1
    assert "| VAD | threads |" in result["markdown"] and "| speech | frames |" in result["markdown"]


def test_asr_word_error_rate():
    from app.bench.asr import wer, word_errors

    assert word_errors(["a", "b", "c"], ["a", "x", "c", "d"]) == 2
    assert wer("Turn the lights on.", "turn the light on") == 0.25
    assert wer("hello", "") == 1.0


def test_question_quick(tmp_path):
    """The window cache and the concatenated caches answer the same questions side by side; the
    window's KV is held once (its items are views of the cache)."""
    result = _run("question", tmp_path)
    rows = result["metrics"]["rows"]
    assert rows and all(r["item_views"] for r in rows)
    for r in rows:
        assert r["window_held"] <= r["window_tokens"] and r["bank_chunks"] >= 1
        assert r["window_items_bytes"] <= r["window_cache_bytes"]  # views: no second copy of the window
        for path in ("concatenated", "window_cache"):
            assert 0 < r[f"{path}_probe_s"] <= r[f"{path}_total_s"]


def test_paraphrase_quick(tmp_path):
    """Window only, in-model, hybrid and the default on the same paraphrased questions, with intervals."""
    result = _run("paraphrase", tmp_path)
    m = result["metrics"]
    settings = {s["setting"]: s for s in m["settings"]}
    assert {"full context", "local window only", "default"} <= set(settings)
    assert any(name.startswith("in-model top_k") for name in settings)
    assert any(name.startswith("hybrid top_k") for name in settings)
    for s in settings.values():
        assert s["questions"] == m["questions"] > 0
        assert 0.0 <= s["hit"] <= 1.0 and s["choice_lo"] <= s["choice"] <= s["choice_hi"]
    assert settings["full context"]["hit"] == 1.0  # everything is in a full context


def test_serve_quick(tmp_path):
    """A healthy session's answers alone and under the hostile clients, through a real livesight serve."""
    result = _run("serve", tmp_path)
    m = result["metrics"]
    assert m["median_alone_s"] > 0 and m["median_loaded_s"] > 0
    assert m["ratio"] == pytest.approx(m["median_loaded_s"] / m["median_alone_s"])
    assert m["ratio_ci95"][0] <= m["ratio"] <= m["ratio_ci95"][1]
    assert m["goal_met"] == (m["ratio"] <= 2.0)
    assert m["hostile"]["texts"] > 0 and m["hostile"]["bombs"] > 0  # the hostile clients really ran
