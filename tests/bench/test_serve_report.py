"""``livesight bench serve``'s report: the per-question breakdown of where a loaded answer's time went,
the ratio's interval and the command line (built like every other bench's)."""

from __future__ import annotations

import argparse

import pytest

from app.bench import serve_load


def test_the_breakdown_splits_each_latency_into_queued_answer_and_the_rest():
    phase = {"latency_s": [2.0, 1.0],
             "usage": [{"total_s": 1.2, "queued_s": 0.5, "queued_behind": {"text": 0.4, "answer": 0.1},
                        "queued_behind_own_s": 0.02, "yielded_s": 0.0},
                       {"total_s": 0.9}]}  # a server that does not report its queue
    rows = serve_load.breakdown(phase)
    assert rows[0] == {"latency_s": 2.0, "answer_s": 1.2, "queued_s": 0.5, "behind": {"text": 0.4, "answer": 0.1},
                       "own_before_s": 0.02, "yielded_s": 0.0}
    assert rows[1]["queued_s"] is None
    table = serve_load.breakdown_table(phase)
    assert table[2].startswith("| # | latency | queued | queued behind |")
    assert table[4] == "| 1 | 2.00 | 0.50 | text 0.40, answer 0.10, own 0.02 | 1.20 | 0.00 | 0.30 |"
    assert table[5] == "| 2 | 1.00 | 0.00 | - | 0.90 | 0.00 | 0.10 |"
    assert serve_load.breakdown_table({"latency_s": [1.0], "usage": [{}]}) == []


def test_the_ratio_interval_brackets_the_ratio_of_medians():
    alone, loaded = [1.0, 1.1, 0.9, 1.0, 1.2], [1.5, 1.8, 1.6, 2.0, 1.7]
    low, high = serve_load.bootstrap_ratio(alone, loaded)
    assert low <= 1.7 / 1.0 <= high


def test_the_command_line_is_built_like_the_other_benches():
    parser = argparse.ArgumentParser()
    serve_load.add_arguments(parser)
    args = parser.parse_args(["--model", "smolvlm2-256m-smollm2", "--questions", "12", "--hostile", "flood,long"])
    args.hostile_kinds = ["flood", "long"]
    from app.bench import common

    assert common.format_command("serve", [], serve_load.bench_options(args)) == (
        "livesight bench serve --model smolvlm2-256m-smollm2 --questions 12 --answer-tokens 8 --long-tokens 1200 "
        "--threads 1 --hostile flood,long")
    with pytest.raises(ValueError, match="--hostile"):
        serve_load.run(argparse.Namespace(**{**vars(args), "hostile": "nonsense", "quick": False}))
