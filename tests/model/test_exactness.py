"""Exactness: the streaming machinery computes exactly what the plain model computes.

The reference is one forward pass of the unmodified transformers model over the same token
sequence (``input_ids`` with ``<image>`` placeholders + ``pixel_values``: transformers inserts the
image features itself). fp32, tight tolerance.
"""

from __future__ import annotations

from collections import deque

import pytest
import torch

from app.engine.config import SessionConfig
from app.engine.session import Session

from .conftest import random_frames, step_length

ATOL = 2e-4


def _reference_inputs(backend, frames, texts, question, first=True):
    """Token ids and pixel values of sink + frames (+ timed texts after them) + question, laid out as the session does."""
    chat = backend.chat
    sink = backend.text_segment(chat.sink_template.format(system=backend.default_system), 0)
    ids = [sink.token_ids]
    lengths = [("sink", sink.length)]
    pos = sink.next_position
    tokens = backend.encode_frames([f.rgb for f in frames]) if frames else None
    for i, f in enumerate(frames):
        seg = backend.frame_segment(f.pts, tokens[i], None, pos)
        ids.append(seg.token_ids)
        lengths.append(("frame", seg.length))
        pos = seg.next_position
    for pts, text in texts:
        from app.engine.timefmt import format_timestamp

        seg = backend.text_segment(text, pos, prefix=f"Note at {format_timestamp(pts)}: ", suffix="\n")
        ids.append(seg.token_ids)
        lengths.append(("text", seg.length))
        pos = seg.next_position
    q = backend.question_segment(question, pos, first=first)
    ids.append(q.token_ids)
    lengths.append(("question", q.length))
    pixel_values = backend.preprocess([f.rgb for f in frames]) if frames else None
    return torch.cat(ids).unsqueeze(0), pixel_values, lengths


def _plain_forward(backend, input_ids, pixel_values, attention_mask=None):
    kwargs = {}
    if pixel_values is not None:
        kwargs["pixel_values"] = pixel_values.view(1, -1, *pixel_values.shape[2:])
    if attention_mask is not None:
        kwargs["attention_mask"] = attention_mask
    with torch.inference_mode():
        return backend.model(input_ids=input_ids, use_cache=False, **kwargs).logits[0].float()


def test_question_logits_equal_plain_forward_full_window(tiny_backend):
    """Window longer than the stream: nothing leaves it; the question sees sink + all frames + texts."""
    backend = tiny_backend
    frames = random_frames(6, seed=1)
    texts = [(6.0, "The keys are under the blue mat.")]
    question = "Where are the keys?"
    cfg = SessionConfig(window_tokens=100_000, top_k=0, drop="off", kv_bits=32)
    with Session(backend, cfg) as s:
        for f in frames:
            s.ingest(f)
        for pts, text in texts:
            s.ingest_text(pts, text)
        assert len(s.bank) == 0
        logits, _ = s.question_logits(question)
    input_ids, pv, lengths = _reference_inputs(backend, frames, texts, question)
    ref = _plain_forward(backend, input_ids, pv)
    q_len = lengths[-1][1]
    assert logits.shape == ref[-q_len:].shape
    torch.testing.assert_close(logits, ref[-q_len:], atol=ATOL, rtol=1e-4)
    # and the greedy first answer token agrees
    assert int(logits[-1].argmax()) == int(ref[-1].argmax())


def _window_mask(lengths, window_tokens, chunk_frames=1):
    """The attention pattern the session implements, as a boolean (T, T) mask.

    Sink: causal. Each frame/text item: the sink, the items inside the local window when it was
    prefilled (oldest evicted first until it fits), and itself causally. The question: everything
    (all chunks retrieved, the window, itself causally).
    """
    total = sum(n for _, n in lengths)
    allowed = torch.zeros(total, total, dtype=torch.bool)
    spans = []
    start = 0
    for kind, n in lengths:
        spans.append((kind, start, start + n))
        start += n
    causal = lambda a, b: torch.tril(torch.ones(b - a, b - a, dtype=torch.bool))  # noqa: E731
    sink = spans[0]
    allowed[sink[1]:sink[2], sink[1]:sink[2]] = causal(sink[1], sink[2])
    window: deque = deque()
    window_len = 0
    for kind, a, b in spans[1:]:
        n = b - a
        if kind == "question":
            allowed[a:b, : a] = True
            allowed[a:b, a:b] = causal(a, b)
            continue
        while window and window_len + n > window_tokens:
            _, wa, wb = window.popleft()
            window_len -= wb - wa
        allowed[a:b, sink[1]:sink[2]] = True
        for _, wa, wb in window:
            allowed[a:b, wa:wb] = True
        allowed[a:b, a:b] = causal(a, b)
        window.append((kind, a, b))
        window_len += n
    return allowed


@pytest.mark.parametrize("window_frames", [1, 2])
def test_question_logits_equal_masked_forward_with_memory(tiny_backend, window_frames):
    """Small window, every chunk retrieved, lossless KV: equals a plain forward with the same attention pattern.

    This covers eviction into the bank, retrieval, chunk order and original positions.
    """
    backend = tiny_backend
    frames = random_frames(7, seed=2)
    question = "What changed?"
    frame_len = step_length(backend)
    window = frame_len * window_frames
    cfg = SessionConfig(window_tokens=window, top_k=4096, drop="off", kv_bits=32)
    with Session(backend, cfg) as s:
        for f in frames:
            s.ingest(f)
        assert len(s.bank) == len(frames) - window_frames
        logits, evidence = s.question_logits(question)
    memory = [e for e in evidence if e.source == "memory"]
    assert [e.t_start for e in memory] == [f.pts for f in frames[: len(frames) - window_frames]]
    input_ids, pv, lengths = _reference_inputs(backend, frames, [], question)
    allowed = _window_mask(lengths, window)
    mask = torch.zeros(allowed.shape, dtype=torch.float32).masked_fill(~allowed, torch.finfo(torch.float32).min)
    ref = _plain_forward(backend, input_ids, pv, attention_mask=mask[None, None])
    q_len = lengths[-1][1]
    torch.testing.assert_close(logits, ref[-q_len:], atol=ATOL, rtol=1e-4)
    # Sanity: the windowed pattern really differs from full attention, so the test can fail.
    full = _plain_forward(backend, input_ids, pv)
    assert not torch.allclose(full[-q_len:], ref[-q_len:], atol=ATOL)


def test_dropped_tokens_keep_positions_exact(tiny_backend):
    """With token drop on, the question still equals a plain forward over the kept tokens at their original positions."""
    backend = tiny_backend
    frames = random_frames(3, seed=3)
    # frame 1 = frame 0 exactly: feature drop keeps none of it; frame 2 is new
    frames[1] = type(frames[1])(1, 1.0, frames[1].wall, frames[0].rgb)
    cfg = SessionConfig(window_tokens=100_000, top_k=0, drop="feature", tau=0.99, kv_bits=32)
    question = "Anything new?"
    with Session(backend, cfg) as s:
        results = [s.ingest(f) for f in frames]
        logits, _ = s.question_logits(question)
    assert [r.kept for r in results] == [16, 0, 16]
    # Reference over embeddings with explicit positions (frame 1 contributes nothing).
    chat = backend.chat
    segs = [backend.text_segment(chat.sink_template.format(system=backend.default_system), 0)]
    tokens = backend.encode_frames([f.rgb for f in frames])
    pos = segs[0].next_position
    for i in (0, 2):
        seg = backend.frame_segment(frames[i].pts, tokens[i], None, pos)
        segs.append(seg)
        pos = seg.next_position
    segs.append(backend.question_segment(question, pos, first=True))
    embeds = torch.cat([s_.embeds for s_ in segs]).unsqueeze(0)
    positions = torch.cat([s_.positions for s_ in segs]).unsqueeze(0)
    with torch.inference_mode():
        mask = torch.ones(positions.shape, dtype=torch.long)
        ref = backend.model(inputs_embeds=embeds, position_ids=positions, attention_mask=mask).logits[0]
    q_len = segs[-1].length
    torch.testing.assert_close(logits, ref[-q_len:].float(), atol=ATOL, rtol=1e-4)


def test_partial_drop_positions_preserved(tiny_backend):
    """Budget drop keeps a subset; kept visual tokens sit at their original slots, gaps where tokens were dropped."""
    backend = tiny_backend
    frames = random_frames(2, seed=4)
    cfg = SessionConfig(window_tokens=100_000, top_k=0, drop="budget", keep_ratio=0.25, kv_bits=32)
    with Session(backend, cfg) as s:
        r = [s.ingest(f) for f in frames]
        item = s._window[-1]
    n = backend.spec.tokens_per_frame
    assert r[0].kept == n and r[1].kept == n // 4
    pos = item.kv.positions
    prefix = backend.tokenize("Frame from 00:01:").numel() + 2  # marker + <fake><global-img>
    visual = pos[prefix : prefix + r[1].kept]
    first = int(pos[0]) + prefix
    assert torch.all(visual >= first) and torch.all(visual < first + n)
    assert torch.all(visual[1:] > visual[:-1])
    # the suffix starts right after the last visual slot, dropped or not
    assert int(pos[prefix + r[1].kept]) == first + n
