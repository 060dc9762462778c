"""Qwen2.5-VL family: frame pairs, incremental 3D M-RoPE, exactness against the unmodified model.

The reference is the model's own forward over ``input_ids`` with ``<|video_pad|>`` placeholders,
``pixel_values_videos``, ``video_grid_thw`` and ``mm_token_type_ids``: transformers computes the
visual features itself. Positions come from the model's own rules: ``get_rope_index`` of the token
sequence (each pair a one-grid video) for text, height and width, and for the temporal row the
index the model gives the same temporal patch in one video of all pairs (``second_per_grid_ts`` =
the pairs' spacing): stream time on the temporal axis. The session's incremental positions and
question logits must equal it (exactness).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from app.engine.backends.types import BackendError, TimeAnchor
from app.engine.config import SessionConfig
from app.engine.session import Session
from streaming.frame import Frame

from .conftest import random_frames, step_length
from .family_helpers import ATOL, additive_mask, session_layout, window_mask, window_positions


@pytest.fixture(scope="module")
def qwen():
    from app.engine.backends.registry import load_backend

    backend = load_backend("tiny-qwen2_5_vl", dtype="float32")
    yield backend
    backend.close()


def _paired(frames):
    """Frames as the session groups them: pairs, an unpaired last frame repeated."""
    rgbs = [f.rgb for f in frames]
    if len(rgbs) % 2:
        rgbs.append(rgbs[-1])
    return rgbs


def _mm_inputs(backend, input_ids, rgbs):
    pv, grid = backend.preprocess(rgbs)
    mm = (input_ids == backend.video_token_id).int() * 2  # 0 text, 1 image, 2 video
    # second_per_grid_ts as the processor would give a 1 fps stream: a grid of 2 frames spans 2 s
    spg = torch.full((grid.shape[0],), 2.0)
    return dict(pixel_values_videos=pv, video_grid_thw=grid, mm_token_type_ids=mm, second_per_grid_ts=spg)


def _rope_index(backend, input_ids, rgbs) -> torch.Tensor:
    """The model's own 3D positions ``(3, T)`` for ``input_ids``."""
    kw = _mm_inputs(backend, input_ids, rgbs)
    pos, _ = backend.model.model.get_rope_index(
        input_ids, kw["mm_token_type_ids"], video_grid_thw=kw["video_grid_thw"], second_per_grid_ts=kw["second_per_grid_ts"]
    )
    return pos[:, 0]


def _clock_offsets(backend, steps: int, spacing_s: float) -> torch.Tensor:
    """``(steps,)`` temporal index of each temporal patch, relative to the first, in the model's own
    ``get_rope_index`` of ONE video of ``steps`` pairs whose pairs are ``spacing_s`` seconds apart."""
    n = backend.spec.tokens_per_frame
    ids = torch.cat([torch.tensor([[backend.vision_start_id]]), torch.full((1, steps * n), backend.video_token_id)], dim=1)
    g = backend.spec.frame_size // backend.patch_size
    pos, _ = backend.model.model.get_rope_index(
        ids, (ids == backend.video_token_id).int() * 2, video_grid_thw=torch.tensor([[steps, g, g]]),
        second_per_grid_ts=torch.tensor([spacing_s]),
    )
    t = pos[0, 0, 1:].view(steps, n)
    assert torch.all(t == t[:, :1])  # one temporal index per temporal patch
    return t[:, 0] - t[0, 0]


def _stream_rope_index(backend, input_ids, rgbs, spacing_s: float) -> torch.Tensor:
    """Reference ``(3, T)`` positions of a stream of pairs ``spacing_s`` seconds apart: the model's own
    ``get_rope_index`` of the sequence, each pair's temporal row moved to the model's own index of that
    temporal patch in one video of all the pairs, counted from the first pair's."""
    rope = _rope_index(backend, input_ids, rgbs)
    vis = (input_ids[0] == backend.video_token_id).nonzero().flatten()
    n = backend.spec.tokens_per_frame
    idx = vis.view(-1, n)
    offsets = _clock_offsets(backend, idx.shape[0], spacing_s)
    t0 = rope[0, idx[0, 0]]
    for k in range(idx.shape[0]):
        rope[0, idx[k]] = t0 + offsets[k]
    return rope


def _model_forward(backend, input_ids, rgbs, *, attention_mask=None, position_ids=None) -> torch.Tensor:
    kw = _mm_inputs(backend, input_ids, rgbs)
    if attention_mask is not None:
        kw["attention_mask"] = attention_mask
    if position_ids is not None:
        kw["position_ids"] = position_ids.unsqueeze(1)  # (3, 1, T)
    with torch.inference_mode():
        return backend.model(input_ids=input_ids, use_cache=False, **kw).logits[0].float()


def _steps(backend, frames):
    """``(pts of the first frame, tokens, None)`` per pair, encoded in one batch."""
    rgbs = _paired(frames)
    tokens = backend.encode_frames(rgbs)
    return [(frames[2 * i].pts, tokens[i], None) for i in range(tokens.shape[0])]


# ---- preprocessing and encoding -------------------------------------------------------------------------


def test_spec_pairs_and_mrope(qwen):
    s = qwen.spec
    assert (s.family, s.frames_per_step, s.position_dims) == ("qwen2_5_vl", 2, 3)
    assert s.token_grid == (4, 4) and s.tokens_per_frame == 16 and s.frame_size == 112
    assert s.random_weights


def test_preprocess_matches_the_image_processor_layout(qwen):
    """A pair of identical frames is what Qwen2VLImageProcessorPil makes of one image (it repeats it in time);
    a pair of different frames carries each frame in its own temporal slot."""
    a, b = (f.rgb for f in random_frames(2, seed=20, size=(112, 112)))
    pv, grid = qwen.preprocess([a, a])
    ref = qwen.image_processor(images=[a], do_resize=False, return_tensors="pt")
    assert torch.equal(grid, ref["image_grid_thw"])
    torch.testing.assert_close(pv, ref["pixel_values"], atol=1e-6, rtol=0)
    pv2, _ = qwen.preprocess([a, b])
    ref_b = qwen.image_processor(images=[b], do_resize=False, return_tensors="pt")["pixel_values"]
    p = qwen.patch_size
    slots = pv2.view(pv2.shape[0], 3, 2, p * p)
    torch.testing.assert_close(slots[:, :, 0], ref["pixel_values"].view(-1, 3, 2, p * p)[:, :, 0], atol=1e-6, rtol=0)
    torch.testing.assert_close(slots[:, :, 1], ref_b.view(-1, 3, 2, p * p)[:, :, 1], atol=1e-6, rtol=0)


def test_odd_frame_count_repeats_the_last_frame(qwen):
    a, b, c = (f.rgb for f in random_frames(3, seed=21))
    three = qwen.encode_frames([a, b, c])
    assert three.shape == (2, 16, 64)
    torch.testing.assert_close(three[1], qwen.encode_frames([c, c])[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(three[0], qwen.encode_frames([a, b])[0], atol=1e-5, rtol=1e-5)
    # the temporal patch sees both frames: a different second frame changes the tokens
    assert not torch.allclose(qwen.encode_frames([a, a])[0], three[0], atol=1e-3)


def test_video_positions_follow_the_merged_grid(qwen):
    seg = qwen.frame_segment(3.0, torch.zeros(16, 64), None, 100)
    ids = seg.token_ids
    vis = ids == qwen.video_token_id
    first = int(vis.nonzero()[0])
    p = int(seg.positions[0, first])
    assert p == 100 + first  # the video starts right after the marker and <|vision_start|>
    assert int(ids[first - 1]) == qwen.vision_start_id and int(ids[first + 16]) == qwen.vision_end_id
    t, h, w = seg.positions[:, vis]
    assert torch.all(t == p)
    assert h.tolist() == [p + r for r in range(4) for _ in range(4)]
    assert w.tolist() == [p + c for _ in range(4) for c in range(4)]
    # the text after the video continues at the highest position used + 1, all rows equal
    after = seg.positions[:, first + 16 :]
    assert torch.equal(after[0], after[1]) and torch.equal(after[1], after[2])
    assert int(after[0, 0]) == p + 4 == int(seg.positions[:, vis].max()) + 1
    assert seg.next_position == int(seg.positions.max()) + 1
    assert seg.content.sum() == 16 and torch.equal(seg.content, vis)


def test_text_positions_are_three_equal_rows(qwen):
    pos = qwen.text_positions(7, 4)
    assert pos.shape == (3, 4) and all(pos[i].tolist() == [7, 8, 9, 10] for i in range(3))


def test_bad_inputs_raise_backend_errors(qwen):
    with pytest.raises(BackendError, match="at least one frame"):
        qwen.encode_frames([])
    with pytest.raises(BackendError, match=r"expected \(16, E\)"):
        qwen.frame_segment(0.0, torch.zeros(15, 64), None, 0)
    with pytest.raises(BackendError, match=r"keep must be a \(16,\) mask"):
        qwen.frame_segment(0.0, torch.zeros(16, 64), torch.ones(4, dtype=torch.bool), 0)
    with pytest.raises(BackendError, match="RGB uint8"):
        qwen.encode_frames([np.zeros((8, 8), np.uint8)])


# ---- exactness -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("with_note", [True, False])
def test_full_window_equals_the_model_forward_and_its_rope_index(qwen, with_note):
    """Window longer than the stream: positions equal get_rope_index, question logits equal the plain forward.

    Five frames: the fifth waits for its pair and is completed by repeating it when the note (or,
    without a note, the question) arrives.
    """
    frames = random_frames(5, seed=1)
    texts = [(5.0, "The keys are under the blue mat.")] if with_note else []
    question = "Where are the keys?"
    cfg = SessionConfig(window_tokens=100_000, top_k=0, drop="off", kv_bits=32)
    with Session(qwen, cfg) as s:
        results = [s.ingest(f) for f in frames]
        assert [r.pending for r in results] == [True, False, True, False, True]
        assert [r.pts for r in results if not r.pending] == [0.0, 2.0]
        for pts, text in texts:
            s.ingest_text(pts, text)
        logits, _ = s.question_logits(question)
        assert len(s.bank) == 0 and s.stats()["encoder_calls"] == 3
        held = window_positions(s)
    layout = session_layout(qwen, _steps(qwen, frames), texts, question)
    ids, rgbs = layout.input_ids, _paired(frames)
    rope = _stream_rope_index(qwen, ids, rgbs, 2.0)
    assert torch.equal(layout.positions, rope)
    own = _rope_index(qwen, ids, rgbs)  # each pair a separate one-grid video
    first_end = sum(n for _, n in layout.lengths[:2])
    assert torch.equal(rope[:, :first_end], own[:, :first_end])  # the first pair is the model's own layout
    assert torch.equal(rope[1:], own[1:])  # height, width and text rows are the model's own throughout
    assert not torch.equal(rope[0], own[0])  # later pairs sit on the stream clock, not at their one-grid start
    q_len = layout.question_length
    assert torch.equal(held, rope[:, :-q_len])
    # the question comes after the highest position used so far
    assert int(rope[:, -q_len:].min()) == int(rope[:, :-q_len].max()) + 1
    ref = _model_forward(qwen, ids, rgbs, position_ids=rope)
    torch.testing.assert_close(logits, ref[-q_len:], atol=ATOL, rtol=1e-4)
    assert int(logits[-1].argmax()) == int(ref[-1].argmax())


@pytest.mark.parametrize("window_steps", [1, 2])
def test_small_window_all_chunks_retrieved_equals_masked_forward(qwen, window_steps):
    """Steps evicted to the bank and all retrieved come back at their original 3D positions, in time order."""
    frames = random_frames(10, seed=2)
    question = "What changed?"
    step_len = step_length(qwen)
    window = step_len * window_steps
    cfg = SessionConfig(window_tokens=window, top_k=4096, drop="off", kv_bits=32)
    with Session(qwen, cfg) as s:
        for f in frames:
            s.ingest(f)
        assert len(s.bank) == 5 - window_steps
        chunk_positions = [s.bank.get(m.chunk_id).positions for m in s.bank.metas()]
        logits, evidence = s.question_logits(question)
    memory = [e for e in evidence if e.source == "memory"]
    assert [e.t_start for e in memory] == [2.0 * i for i in range(5 - window_steps)]
    assert [e.t_end for e in memory] == [2.0 * i + 1 for i in range(5 - window_steps)]  # a pair spans both frames
    assert all(p.shape[0] == 3 for p in chunk_positions)
    layout = session_layout(qwen, _steps(qwen, frames), [], question)
    ids, rgbs = layout.input_ids, _paired(frames)
    rope = _stream_rope_index(qwen, ids, rgbs, 2.0)
    assert torch.equal(layout.positions, rope)
    mask = additive_mask(window_mask(layout.lengths, window))
    ref = _model_forward(qwen, ids, rgbs, attention_mask=mask, position_ids=rope)
    q_len = layout.question_length
    torch.testing.assert_close(logits, ref[-q_len:], atol=ATOL, rtol=1e-4)
    full = _model_forward(qwen, ids, rgbs)
    assert not torch.allclose(full[-q_len:], ref[-q_len:], atol=ATOL)  # the window really matters


# ---- stream time on the temporal axis -------------------------------------------------------------------


def _video_rows(backend, seg) -> torch.Tensor:
    """``(3, N)`` positions of a segment's visual tokens."""
    return seg.positions[:, seg.token_ids == backend.video_token_id]


@pytest.mark.parametrize("spacing_s", [0.5, 0.7, 2.0, 3.0])
def test_pair_spacing_matches_the_models_own_temporal_patches(qwen, spacing_s):
    """Pairs ``spacing_s`` apart sit where the model puts consecutive temporal patches of one video."""
    tokens = torch.zeros(16, 64)
    pos, anchor, temporal = 40, None, []
    for k in range(6):
        seg = qwen.frame_segment(10.0 + k * spacing_s, tokens, None, pos, anchor)
        temporal.append(int(_video_rows(qwen, seg)[0, 0]))
        pos, anchor = seg.next_position, seg.time_anchor
    assert anchor.pts == 10.0
    got = torch.tensor(temporal) - temporal[0]
    assert torch.equal(got, _clock_offsets(qwen, 6, spacing_s))


def test_irregular_stream_time_drives_the_temporal_axis_exactly(qwen):
    """2 fps, then a 30 s gap, then a dropped-rate stretch: the temporal row is 2 positions per second of
    stream time throughout; when the clock runs ahead of the token flow, the next text starts after it;
    the question follows the highest position; logits equal the plain forward at those positions."""
    pts = [0.0, 0.5, 1.0, 1.5, 31.0, 31.5, 40.0, 40.5]
    rng = np.random.default_rng(9)
    frames = [Frame(i, p, 0.0, rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)) for i, p in enumerate(pts)]
    question = "When did it change?"
    cfg = SessionConfig(window_tokens=100_000, top_k=0, drop="off", kv_bits=32)
    with Session(qwen, cfg) as s:
        for f in frames:
            s.ingest(f)
        logits, _ = s.question_logits(question)
        items = list(s._window)
    layout = session_layout(qwen, _steps(qwen, frames), [], question)
    steps = [seg for kind, seg in layout.items if kind == "frame"]
    for item, seg in zip(items, steps):
        assert torch.equal(item.kv.positions, seg.positions)  # the session laid them out the same way
    video = [_video_rows(qwen, seg) for seg in steps]
    t0 = int(video[0][0, 0])
    assert [int(v[0, 0]) - t0 for v in video] == [0, 2, 62, 80]  # floor(2 * (pts - 0))
    assert all(torch.all(v[0] == v[0, 0]) for v in video)
    for seg, v in zip(steps, video):
        first = int((seg.token_ids == qwen.video_token_id).nonzero()[0])
        base = int(seg.positions[1, first])
        assert v[1].tolist() == [base + r for r in range(4) for _ in range(4)]  # h, w follow the token flow
        after = seg.positions[:, first + 16 :]
        assert int(after[0, 0]) == max(int(v.max()) + 1, base + 4) == int(seg.positions[:, : first + 16].max()) + 1
    assert int(video[2][0, 0]) > int(video[2][1].max())  # the gap put the clock ahead of the flow ...
    assert int(steps[3].positions[:, 0].min()) > int(video[2][0, 0])  # ... and what follows starts after it
    q_len = layout.question_length
    rope = layout.positions
    assert int(rope[:, -q_len:].min()) == int(rope[:, :-q_len].max()) + 1
    ref = _model_forward(qwen, layout.input_ids, _paired(frames), position_ids=rope)
    torch.testing.assert_close(logits, ref[-q_len:], atol=ATOL, rtol=1e-4)


def test_stream_clock_restarts_when_time_goes_backwards(qwen):
    tokens = torch.zeros(16, 64)
    a = qwen.frame_segment(50.0, tokens, None, 10)
    b = qwen.frame_segment(52.0, tokens, None, a.next_position, a.time_anchor)
    c = qwen.frame_segment(1.0, tokens, None, b.next_position, b.time_anchor)  # a source restarted its clock
    assert b.time_anchor == a.time_anchor
    assert int(_video_rows(qwen, b)[0, 0]) == a.time_anchor.position + 4
    first_c = int((c.token_ids == qwen.video_token_id).nonzero()[0])
    assert c.time_anchor == TimeAnchor(1.0, b.next_position + first_c)
    assert int(_video_rows(qwen, c)[0, 0]) == c.time_anchor.position  # its own one-grid layout again
    assert int(c.positions.min()) >= b.next_position


def test_saved_memory_keeps_the_stream_clock(qwen, tmp_path):
    frames = random_frames(6, seed=10)
    cfg = SessionConfig(window_tokens=100_000, top_k=8, drop="off", memory_dir=str(tmp_path / "mem"), persist=True)
    with Session(qwen, cfg) as s:
        for f in frames[:4]:
            s.ingest(f)
        s.save()
        anchor = s._time_anchor
    assert anchor is not None and json.loads((tmp_path / "mem" / "session.json").read_text())["time_anchor"] == {
        "pts": anchor.pts, "position": anchor.position}
    with Session.open_memory(qwen, tmp_path / "mem", cfg) as s:
        assert s._time_anchor == anchor
        for f in frames[4:]:
            s.ingest(f)
        last = s._window[-1].kv.positions
    assert int(last[0, last[0] != last[1]][0]) == anchor.position + 2 * 4  # pts 4 s on the same clock


# ---- drop semantics under M-RoPE ------------------------------------------------------------------------------


def test_identical_pair_is_dropped_and_the_rest_stays_exact(qwen):
    """A pair identical to the previous one keeps nothing; the stream equals the model over the other pairs."""
    frames = random_frames(6, seed=3)
    frames[2] = Frame(2, 2.0, frames[2].wall, frames[0].rgb)
    frames[3] = Frame(3, 3.0, frames[3].wall, frames[1].rgb)
    cfg = SessionConfig(window_tokens=100_000, top_k=0, drop="feature", tau=0.99, kv_bits=32)
    question = "Anything new?"
    with Session(qwen, cfg) as s:
        results = [s.ingest(f) for f in frames]
        logits, _ = s.question_logits(question)
    assert [r.kept for r in results if not r.pending] == [16, 0, 16]
    kept_frames = [frames[i] for i in (0, 1, 4, 5)]
    layout = session_layout(qwen, _steps(qwen, kept_frames), [], question)
    rope = _stream_rope_index(qwen, layout.input_ids, _paired(kept_frames), 4.0)  # the dropped pair's 2 s still pass
    assert torch.equal(layout.positions, rope)
    ref = _model_forward(qwen, layout.input_ids, _paired(kept_frames), position_ids=rope)
    torch.testing.assert_close(logits, ref[-layout.question_length :], atol=ATOL, rtol=1e-4)


def test_partial_drop_keeps_each_token_at_its_3d_position(qwen):
    """Budget drop keeps 4 of 16 tokens of the second pair; they sit at the model's own (t, h, w) for their
    cells, and the question equals the unmodified model over the full pair with the dropped tokens masked out."""
    frames = random_frames(4, seed=4)
    cfg = SessionConfig(window_tokens=100_000, top_k=0, drop="budget", keep_ratio=0.25, kv_bits=32)
    question = "What moved?"
    with Session(qwen, cfg) as s:
        results = [s.ingest(f) for f in frames]
        item = s._window[-1]
        logits, _ = s.question_logits(question)
    assert [r.kept for r in results if not r.pending] == [16, 4]
    layout = session_layout(qwen, _steps(qwen, frames), [], question)
    ids, rgbs = layout.input_ids, _paired(frames)
    rope = _stream_rope_index(qwen, ids, rgbs, 2.0)
    full_seg = layout.items[2][1]
    vis = (full_seg.token_ids == qwen.video_token_id).nonzero().flatten()
    a, z = int(vis[0]), int(vis[-1]) + 1
    got = item.kv.positions
    assert got.shape == (3, full_seg.length - 12)
    assert torch.equal(got[:, :a], full_seg.positions[:, :a]) and torch.equal(got[:, a + 4 :], full_seg.positions[:, z:])
    cells = []
    for col in got[:, a : a + 4].T:
        match = (full_seg.positions[:, a:z] == col[:, None]).all(0).nonzero().flatten()
        assert match.numel() == 1, f"kept token at {col.tolist()} is not at a cell of the pair's grid"
        cells.append(int(match))
    assert cells == sorted(cells) and len(set(cells)) == 4
    assert torch.all(got[0, a : a + 4] == got[0, a])  # one temporal index for the pair
    # reference: the whole sequence at get_rope_index positions, the 12 dropped tokens hidden from everyone
    start = sum(n for _, n in layout.lengths[:2])
    dropped = [start + a + c for c in range(16) if c not in cells]
    total = ids.shape[1]
    allowed = torch.tril(torch.ones(total, total, dtype=torch.bool))
    allowed[:, dropped] = False
    allowed[dropped, dropped] = True  # a dropped token's own row only needs itself (no fully masked rows)
    ref = _model_forward(qwen, ids, rgbs, attention_mask=additive_mask(allowed), position_ids=rope)
    q_len = layout.question_length
    torch.testing.assert_close(logits, ref[-q_len:], atol=ATOL, rtol=1e-4)


# ---- bounded work ---------------------------------------------------------------------------------------


def test_attention_length_stays_constant_per_pair(qwen):
    step_len = step_length(qwen)
    cfg = SessionConfig(window_tokens=step_len * 2, top_k=2, drop="off")
    with Session(qwen, cfg) as s:
        lengths = [r.attention_length for r in (s.ingest(f) for f in random_frames(20, seed=5)) if not r.pending]
        stats = s.stats()
        ans = s.answer("What happened?", max_new_tokens=2)
    sink = lengths[0] - step_len
    assert lengths[1:] == [sink + 2 * step_len] * 9
    assert stats["bank_chunks"] == 8 and stats["window_tokens"] <= cfg.window_tokens
    assert sum(e.source == "memory" for e in ans.evidence) == 2


def test_unrotate_keys_recovers_pre_rope_keys(qwen):
    """The memory's late-interaction rerank un-rotates cached keys with the M-RoPE cos/sin of their (3, T) positions."""
    captured = {}
    attn = qwen.attention_modules()[0]
    handle = attn.k_proj.register_forward_hook(lambda _m, _i, out: captured.setdefault("k", out.detach()[0]))
    try:
        tokens = qwen.encode_frames([f.rgb for f in random_frames(2, seed=6)])[0]
        seg = qwen.frame_segment(4.0, tokens, None, 37)
        res, _ = qwen.prefill(seg, [])
    finally:
        handle.remove()
    h, d = qwen.spec.num_kv_heads, qwen.spec.head_dim
    pre = captured["k"].view(-1, h, d).transpose(0, 1)  # (H, T, D)
    assert not torch.allclose(res.kv.keys[0], pre, atol=1e-3)  # RoPE did rotate them
    torch.testing.assert_close(qwen.unrotate_keys(res.kv.keys[0], seg.positions), pre, atol=1e-5, rtol=1e-4)


# ---- loading ---------------------------------------------------------------------------------------------


def test_local_checkpoint_directory_loads(tmp_path, qwen):
    """A saved checkpoint (model, tokenizer, image processor) loads through the hub/directory path."""
    from app.engine.backends.registry import load_backend

    qwen.model.save_pretrained(tmp_path)
    qwen.tokenizer.save_pretrained(tmp_path)
    qwen.image_processor.save_pretrained(tmp_path)
    backend = load_backend(str(tmp_path))
    try:
        assert backend.spec.family == "qwen2_5_vl" and not backend.spec.random_weights
        assert backend.spec.frame_size == 448 and backend.spec.token_grid == (16, 16)  # checkpoints stream 448 px pairs
        for name, p in backend.model.state_dict().items():
            assert torch.equal(p, qwen.model.state_dict()[name]), name
        with Session(backend, SessionConfig(max_new_tokens=2)) as s:
            for f in random_frames(2, seed=8):
                s.ingest(f)
            assert s.stats()["tokens_seen"] == 256
            assert s.answer("What is there?").stop_reason in ("eos", "max_tokens")
    finally:
        backend.close()


def test_pixel_drop_looks_at_both_frames_of_a_pair(qwen):
    """A pair whose second frame repeats the previous pair's but whose first frame is new is still
    encoded; a pair of two unchanged frames skips the vision tower."""
    a, b, c = (f.rgb for f in random_frames(3, seed=11, size=(112, 112)))
    cfg = SessionConfig(window_tokens=100_000, top_k=0, drop="pixel", pixel_threshold=0.05)
    with Session(qwen, cfg) as s:
        results = [s.ingest(Frame(i, float(i), 0.0, rgb)) for i, rgb in enumerate([a, b, c, b, b, b])]
        stats = s.stats()
    steps = [r for r in results if not r.pending]
    assert [r.encoded for r in steps] == [True, True, False]
    assert steps[1].kept > 0 and steps[2].kept == 0
    assert stats["encoder_calls"] == 2 and stats["frames_skipped"] == 2
