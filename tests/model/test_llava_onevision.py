"""LLaVA-OneVision family: pooled video-frame tokens, the video newline, exactness against the unmodified model.

The reference is the model's own forward over ``input_ids`` with ``<video>`` placeholders and
``pixel_values_videos``: transformers runs SigLIP, the projector, the 2x bilinear video pooling and
appends ``image_newline`` itself. Each streamed frame is a one-frame video.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from app.engine.backends.types import BackendError
from app.engine.config import SessionConfig
from app.engine.session import Session
from streaming.frame import Frame

from .conftest import random_frames, step_length
from .family_helpers import ATOL, additive_mask, session_layout, window_mask, window_positions


@pytest.fixture(scope="module")
def ov():
    from app.engine.backends.registry import load_backend

    backend = load_backend("tiny-llava-ov", dtype="float32")
    yield backend
    backend.close()


def _model_forward(backend, input_ids, rgbs, *, attention_mask=None, position_ids=None) -> torch.Tensor:
    kw = {"pixel_values_videos": backend.preprocess(rgbs)}
    if attention_mask is not None:
        kw["attention_mask"] = attention_mask
    if position_ids is not None:
        kw["position_ids"] = position_ids.unsqueeze(0)
    with torch.inference_mode():
        return backend.model(input_ids=input_ids, use_cache=False, **kw).logits[0].float()


def _steps(backend, frames):
    tokens = backend.encode_frames([f.rgb for f in frames])
    return [(f.pts, tokens[i], None) for i, f in enumerate(frames)]


def test_spec_and_pooled_grid(ov):
    from app.engine.backends.llava_onevision import pooled_side

    s = ov.spec
    assert (s.family, s.frames_per_step, s.position_dims) == ("llava_onevision", 1, 1)
    assert s.token_grid == (4, 4) and s.tokens_per_frame == 16 and s.frame_size == 64
    assert pooled_side(384, 14) ** 2 == 196  # the published 384 px models: 27 x 27 patches -> 14 x 14


def test_tokens_are_the_models_video_features(ov):
    """encode_frames gives what get_video_features gives for each frame as a one-frame video; the newline
    that follows it in a segment is the model's image_newline."""
    rgbs = [f.rgb for f in random_frames(3, seed=20)]
    tokens = ov.encode_frames(rgbs)
    with torch.inference_mode():
        out = ov.model.model.get_video_features(pixel_values_videos=ov.preprocess(rgbs[1:2]), return_dict=True)
    ref = out.pooler_output[0]  # (N + 1, E): pooled tokens then the newline
    assert ref.shape[0] == 17
    torch.testing.assert_close(tokens[1], ref[:16], atol=1e-5, rtol=1e-5)
    seg = ov.frame_segment(1.0, tokens[1], None, 0)
    vis = (seg.token_ids == ov.video_token_id).nonzero().flatten()
    assert vis.numel() == 17 and torch.equal(vis, torch.arange(int(vis[0]), int(vis[0]) + 17))
    torch.testing.assert_close(seg.embeds[int(vis[-1])], ref[16], atol=1e-6, rtol=0)
    assert int(seg.content.sum()) == 16 and not bool(seg.content[int(vis[-1])])


def test_pixels_are_the_image_processors(ov):
    """A square frame normalised as the PIL image processor normalises it (SigLIP mean and std 0.5)."""
    rgb = random_frames(1, seed=21, size=(64, 64))[0].rgb
    pv = ov.preprocess([rgb])
    assert pv.shape == (1, 1, 3, 64, 64)
    expected = (rgb.astype(np.float32) / 255.0 - 0.5) / 0.5
    torch.testing.assert_close(pv[0, 0], torch.from_numpy(expected.transpose(2, 0, 1)), atol=1e-6, rtol=0)


def test_bad_inputs_raise_backend_errors(ov):
    with pytest.raises(BackendError, match="at least one frame"):
        ov.encode_frames([])
    with pytest.raises(BackendError, match=r"expected \(16, E\)"):
        ov.frame_segment(0.0, torch.zeros(196, 64), None, 0)
    with pytest.raises(BackendError, match="RGB uint8"):
        ov.encode_frames([np.zeros((8, 8, 3), np.float32)])


def test_full_window_equals_the_model_forward(ov):
    frames = random_frames(4, seed=1)
    texts = [(4.0, "The keys are under the blue mat.")]
    question = "Where are the keys?"
    cfg = SessionConfig(window_tokens=100_000, top_k=0, drop="off", kv_bits=32)
    with Session(ov, cfg) as s:
        for f in frames:
            assert not s.ingest(f).pending
        for pts, text in texts:
            s.ingest_text(pts, text)
        held = window_positions(s)
        logits, _ = s.question_logits(question)
    layout = session_layout(ov, _steps(ov, frames), texts, question)
    q_len = layout.question_length
    assert torch.equal(held, torch.arange(held.numel()))  # 1D positions, contiguous without drop
    ref = _model_forward(ov, layout.input_ids, [f.rgb for f in frames])
    torch.testing.assert_close(logits, ref[-q_len:], atol=ATOL, rtol=1e-4)
    assert int(logits[-1].argmax()) == int(ref[-1].argmax())


@pytest.mark.parametrize("window_frames", [1, 2])
def test_small_window_all_chunks_retrieved_equals_masked_forward(ov, window_frames):
    frames = random_frames(6, seed=2)
    question = "What changed?"
    frame_len = step_length(ov)
    window = frame_len * window_frames
    cfg = SessionConfig(window_tokens=window, top_k=4096, drop="off", kv_bits=32)
    with Session(ov, cfg) as s:
        for f in frames:
            s.ingest(f)
        assert len(s.bank) == len(frames) - window_frames
        logits, evidence = s.question_logits(question)
    assert [e.t_start for e in evidence if e.source == "memory"] == [f.pts for f in frames[: len(frames) - window_frames]]
    layout = session_layout(ov, _steps(ov, frames), [], question)
    mask = additive_mask(window_mask(layout.lengths, window))
    rgbs = [f.rgb for f in frames]
    ref = _model_forward(ov, layout.input_ids, rgbs, attention_mask=mask)
    q_len = layout.question_length
    torch.testing.assert_close(logits, ref[-q_len:], atol=ATOL, rtol=1e-4)
    full = _model_forward(ov, layout.input_ids, rgbs)
    assert not torch.allclose(full[-q_len:], ref[-q_len:], atol=ATOL)


def test_identical_frame_is_dropped_and_the_rest_stays_exact(ov):
    frames = random_frames(3, seed=3)
    frames[1] = Frame(1, 1.0, frames[1].wall, frames[0].rgb)
    cfg = SessionConfig(window_tokens=100_000, top_k=0, drop="feature", tau=0.99, kv_bits=32)
    question = "Anything new?"
    with Session(ov, cfg) as s:
        results = [s.ingest(f) for f in frames]
        logits, _ = s.question_logits(question)
    assert [r.kept for r in results] == [16, 0, 16]
    kept = [frames[0], frames[2]]
    layout = session_layout(ov, _steps(ov, kept), [], question)
    ref = _model_forward(ov, layout.input_ids, [f.rgb for f in kept])
    torch.testing.assert_close(logits, ref[-layout.question_length :], atol=ATOL, rtol=1e-4)


def test_partial_drop_keeps_positions_and_the_newline(ov):
    """Budget drop: kept tokens keep their slots, the newline and the text after keep theirs; the question equals
    the unmodified model over the whole frame with the dropped tokens masked out."""
    frames = random_frames(2, seed=4)
    cfg = SessionConfig(window_tokens=100_000, top_k=0, drop="budget", keep_ratio=0.25, kv_bits=32)
    question = "What moved?"
    with Session(ov, cfg) as s:
        results = [s.ingest(f) for f in frames]
        item = s._window[-1]
        logits, _ = s.question_logits(question)
    assert [r.kept for r in results] == [16, 4]
    layout = session_layout(ov, _steps(ov, frames), [], question)
    full_seg = layout.items[2][1]
    vis = (full_seg.token_ids == ov.video_token_id).nonzero().flatten()
    a = int(vis[0])
    got = item.kv.positions
    assert got.shape == (full_seg.length - 12,)
    assert torch.equal(got[:a], full_seg.positions[:a])
    assert torch.equal(got[a + 4 :], full_seg.positions[a + 16 :])  # newline + text after: unchanged slots
    cells = (got[a : a + 4] - full_seg.positions[a]).tolist()
    assert cells == sorted(cells) and len(set(cells)) == 4 and all(0 <= c < 16 for c in cells)
    ids = layout.input_ids
    start = sum(n for _, n in layout.lengths[:2])
    dropped = [start + a + c for c in range(16) if c not in cells]
    total = ids.shape[1]
    allowed = torch.tril(torch.ones(total, total, dtype=torch.bool))
    allowed[:, dropped] = False
    allowed[dropped, dropped] = True
    ref = _model_forward(ov, ids, [f.rgb for f in frames], attention_mask=additive_mask(allowed))
    torch.testing.assert_close(logits, ref[-layout.question_length :], atol=ATOL, rtol=1e-4)


def test_attention_length_stays_constant(ov):
    frame_len = step_length(ov)
    cfg = SessionConfig(window_tokens=frame_len * 3, top_k=2, drop="off")
    with Session(ov, cfg) as s:
        lengths = [s.ingest(f).attention_length for f in random_frames(20, seed=5)]
        stats = s.stats()
    sink = lengths[0] - frame_len
    assert lengths[2:] == [sink + 3 * frame_len] * 18
    assert stats["bank_chunks"] == 17 and stats["window_tokens"] <= cfg.window_tokens


def test_local_checkpoint_directory_loads(tmp_path, ov):
    """A saved checkpoint (model, tokenizer, image processor) loads through the hub/directory path and encodes
    frames exactly as the builtin it was saved from."""
    from app.engine.backends.registry import load_backend

    ov.model.save_pretrained(tmp_path)
    ov.tokenizer.save_pretrained(tmp_path)
    ov.image_processor.save_pretrained(tmp_path)
    backend = load_backend(str(tmp_path))
    try:
        assert backend.spec.family == "llava_onevision" and not backend.spec.random_weights
        assert backend.spec.token_grid == ov.spec.token_grid
        rgbs = [f.rgb for f in random_frames(2, seed=8)]
        torch.testing.assert_close(backend.encode_frames(rgbs), ov.encode_frames(rgbs), atol=0, rtol=0)
        assert backend.chat == ov.chat
    finally:
        backend.close()
