"""The question bench's no-copy goal is read on the growth of a question's peak RSS across windows."""

from __future__ import annotations

from app.bench.question import goal_lines

PER_TOKEN = 46_080  # SmolLM2: 2 * 30 layers * 3 KV heads * 64 dims * 4 bytes


def _row(window: int, peak: float, concat: float = 0.0) -> dict:
    return {"window_tokens": window, "window_held": window - 64, "kv_bytes_per_token": PER_TOKEN,
            "window_cache_peak_extra_bytes": peak, "concatenated_peak_extra_bytes": concat}


def test_a_constant_cost_per_question_meets_the_goal_however_small_the_window():
    # 15 MB per question at every window: more than a tenth of the 512 window's KV, yet no copy
    rows = [_row(w, 15e6, concat=w * PER_TOKEN) for w in (512, 1024, 2048, 4096)]
    text = "\n".join(goal_lines(rows))
    assert "**met**" in text and "not met" not in text
    assert "| 512 | 20.6 | 15.0 |" in text  # per window: its KV, the peak, the share


def test_a_peak_that_grows_with_the_window_fails_it():
    rows = [_row(w, 5e6 + 0.5 * (w - 64) * PER_TOKEN) for w in (512, 4096)]  # half a copy of the window
    assert "**not met**" in "\n".join(goal_lines(rows))


def test_one_window_falls_back_to_a_tenth_of_its_kv_and_no_peak_says_nothing():
    assert "**met**" in "\n".join(goal_lines([_row(4096, 1e6)]))
    assert "**not met**" in "\n".join(goal_lines([_row(512, 15e6)]))
    assert goal_lines([{**_row(512, 0), "window_cache_peak_extra_bytes": None}]) == []
