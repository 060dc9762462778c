"""The window cache: questions and frames reuse the sink and window already prefilled, and answer exactly
as when every prefill concatenated its whole context into a fresh cache.

The reference (:func:`reference_question`) is that older path, built from the backend's public pieces:
a ``DynamicCache`` of ``sink | window | dialog`` for the retrieval probe, then another of
``sink | memory | window | dialog`` for the answer. Every family's tiny test model runs it, with and
without memory, with dialog turns, and with vision off.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from app.engine.backends import registry
from app.engine.backends.types import BackendError, KVSegment
from app.engine.backends.window_cache import WindowKVCache
from app.engine.config import SessionConfig
from app.engine.session import Session
from streaming.frame import Frame

from .conftest import random_frames

ATOL = 1e-4


@pytest.fixture(scope="module", params=registry.test_models())
def family_backend(request):
    from app.engine.backends.registry import load_backend

    backend = load_backend(request.param, dtype="float32")
    yield backend
    backend.close()


def reference_question(s: Session, question: str, *, top_k: int | None = None, max_new: int = 4):
    """The question answered the way every prefill worked before the window cache.

    Returns ``(logits (Tq, V), greedy token ids, retrieved chunk ids)``; the session is not changed.
    """
    be = s.backend
    k = s.config.top_k if top_k is None else top_k
    qseg = be.question_segment(question, s._next_pos, first=not s._dialog)
    window = s._window.segments()
    retrieved = []
    if k > 0 and len(s.bank):
        probe, _ = be.prefill(qseg, (), cache=be.concat_cache([s._sink, *window, *s._dialog]),
                              want_query_tokens=s.config.rerank)
        retrieved = s._retriever.retrieve(question, probe, k)
    memory = [KVSegment(r.chunk.keys, r.chunk.values, r.chunk.positions) for r in retrieved]
    cache = be.concat_cache([s._sink, *memory, *window, *s._dialog])
    res, cache = be.prefill(qseg, (), cache=cache, logits_to_keep=qseg.length)
    out = [x for x in be.generate(qseg, (), max_new_tokens=max_new, prefilled=(res, cache)) if not isinstance(x, str)]
    return res.logits, out[0].token_ids, [r.chunk.meta.chunk_id for r in retrieved]


def assert_cache_holds_sink_and_window(s: Session) -> None:
    """Between calls the window cache holds exactly ``sink | window items``, values included."""
    cache = s._window.cache
    expected = KVSegment.concat([s._sink, *s._window.segments()])
    assert cache.length == s._sink.length + s._window.tokens == expected.length
    held = cache.segment(0, cache.length, expected.positions)
    assert torch.equal(held.keys, expected.keys.to(held.keys.dtype))
    assert torch.equal(held.values, expected.values.to(held.values.dtype))


def check_question(s: Session, question: str, *, top_k: int | None = None, memory: bool) -> None:
    """``question_logits`` and ``answer`` equal the reference; the cache is rewound after both."""
    ref_logits, ref_ids, ref_chunks = reference_question(s, question, top_k=top_k)
    assert bool(ref_chunks) == memory
    logits, evidence = s.question_logits(question, top_k=top_k)
    assert [e.chunk_id for e in evidence if e.source == "memory"] == ref_chunks
    torch.testing.assert_close(logits, ref_logits, atol=ATOL, rtol=1e-4)
    if not memory:  # the same context in the same order: the very same numbers
        assert torch.equal(logits, ref_logits)
    assert_cache_holds_sink_and_window(s)
    ans = s.answer(question, max_new_tokens=4, top_k=top_k)
    assert list(ans.token_ids) == list(ref_ids)
    assert_cache_holds_sink_and_window(s)


def _stream(s: Session, frames, *, start: int = 0, t0: float = 0.0) -> None:
    for f in frames:
        s.ingest(Frame(f.index + start, t0 + f.pts, f.wall, f.rgb))


def test_questions_equal_the_concatenating_path_with_memory_and_dialog(family_backend):
    be = family_backend
    cfg = SessionConfig(window_tokens=160, top_k=3, drop="off", kv_bits=32, text_retrieval=False,
                        retrieval_neighbours=0, dialog_max_tokens=512)
    with Session(be, cfg) as s:
        _stream(s, random_frames(6, seed=21))
        s.ingest_text(6.5, "The delivery code is 4471.")
        _stream(s, random_frames(4, seed=22), start=6, t0=7.0)
        s.flush()
        assert len(s.bank) > 0
        assert_cache_holds_sink_and_window(s)
        check_question(s, "What was the delivery code?", memory=True)   # first turn, memory retrieved
        check_question(s, "And what came after it?", memory=True)       # a dialog turn before it
        check_question(s, "Describe the scene.", top_k=0, memory=False)  # local window and dialog only
        _stream(s, random_frames(3, seed=23), start=10, t0=12.0)          # frames after questions
        s.flush()
        assert_cache_holds_sink_and_window(s)
        check_question(s, "What is on screen now?", memory=True)
        assert len(s._dialog) == 4


def test_questions_equal_the_concatenating_path_with_vision_off(family_backend):
    be = family_backend
    cfg = SessionConfig(window_tokens=48, top_k=2, drop="off", kv_bits=32, vision=False, text_retrieval=False,
                        retrieval_neighbours=0)
    with Session(be, cfg) as s:
        for i, f in enumerate(random_frames(4, seed=24)):
            s.ingest(f)
            s.ingest_text(f.pts + 0.5, f"Note number {i}: the light is {'red' if i % 2 else 'green'}.")
        s.ingest_speech(4.0, 5.0, "the password is BLUEBERRY")
        assert len(s.bank) > 0
        check_question(s, "What was the password?", memory=True)
        check_question(s, "Which light was first?", top_k=0, memory=False)


def test_option_scores_equal_the_concatenating_path(tiny_backend):
    cfg = SessionConfig(window_tokens=96, top_k=2, drop="off", kv_bits=32, text_retrieval=False, retrieval_neighbours=0)
    with Session(tiny_backend, cfg) as s:
        _stream(s, random_frames(5, seed=25))
        ref_logits, _, _ = reference_question(s, "Is it day?")
        scores, _ = s.score_options("Is it day?", ["yes it is", "no"])
        assert_cache_holds_sink_and_window(s)
        first = torch.log_softmax(ref_logits[-1], dim=-1)
        ids = tiny_backend.tokenize(" no")
        if ids.numel() == 1:
            assert scores[1] == pytest.approx(float(first[int(ids[0])]), abs=1e-4)
        assert all(np.isfinite(scores)) and all(x <= 0 for x in scores)


def test_window_items_are_views_of_the_cache_and_questions_copy_no_window(tiny_backend):
    cfg = SessionConfig(window_tokens=128, top_k=2, drop="off", kv_bits=32, text_retrieval=False)
    with Session(tiny_backend, cfg) as s:
        _stream(s, random_frames(8, seed=26))
        cache = s._window.cache
        buffer = cache.key_buffer.untyped_storage().data_ptr()
        for item in s._window:
            assert item.kv.keys.untyped_storage().data_ptr() == buffer  # the window's KV is held once
        s.answer("What do you see?", max_new_tokens=3)
        s.answer("And now?", max_new_tokens=3)
        # the questions wrote after the window and rewound: the buffer was neither copied nor moved
        assert cache.key_buffer.untyped_storage().data_ptr() == buffer
        assert_cache_holds_sink_and_window(s)


def test_a_failing_answer_leaves_the_cache_rewound(tiny_backend):
    cfg = SessionConfig(window_tokens=96, top_k=2, drop="off", kv_bits=32, text_retrieval=False, retrieval_neighbours=0)
    with Session(tiny_backend, cfg) as s:
        _stream(s, random_frames(5, seed=27))
        _, ref_ids, _ = reference_question(s, "What changed?")

        def boom(_delta):
            raise RuntimeError("the client went away")

        with pytest.raises(RuntimeError, match="went away"):
            s.answer("What changed?", max_new_tokens=4, on_delta=boom)
        assert_cache_holds_sink_and_window(s)
        assert list(s.answer("What changed?", max_new_tokens=4).token_ids) == list(ref_ids)


def test_frames_prefilled_into_the_cache_equal_the_concatenating_path(tiny_backend):
    """Each item's KV, prefilled in the cache as frames enter and leave, equals a prefill of the same
    frame over a fresh concatenated cache of the sink and the window it attended to."""
    be = tiny_backend
    cfg = SessionConfig(window_tokens=120, top_k=0, drop="off", kv_bits=32)
    with Session(be, cfg) as s:
        for f in random_frames(9, seed=28):
            pos, anchor = s._next_pos, s._time_anchor
            s.ingest(f)
            items = s._window.segments()
            seg = be.frame_segment(f.pts, be.encode_frames([f.rgb])[0], None, pos, anchor)
            ref, _ = be.prefill(seg, (), cache=be.concat_cache([s._sink, *items[:-1]]))
            torch.testing.assert_close(items[-1].keys, ref.kv.keys, atol=ATOL, rtol=1e-4)
            torch.testing.assert_close(items[-1].values, ref.kv.values, atol=ATOL, rtol=1e-4)
            assert_cache_holds_sink_and_window(s)
        assert len(s.bank) > 0


# ---- the cache alone ------------------------------------------------------------------------------


def _seg(n: int, seed: int, layers: int = 2) -> KVSegment:
    g = torch.Generator().manual_seed(seed)
    return KVSegment(torch.randn(layers, 1, n, 4, generator=g), torch.randn(layers, 1, n, 4, generator=g),
                     torch.arange(n))


def test_cache_edits_match_a_plain_list_through_moves_and_growth():
    cache = WindowKVCache(2, 1, 4, device="cpu", dtype=torch.float32, capacity=8)
    sink = _seg(3, 0)
    cache.append([sink])
    held = [sink]
    rng = np.random.default_rng(0)
    epochs = set()
    for step in range(60):
        n = int(rng.integers(1, 6))
        seg = _seg(n, step + 1)
        cache.append([seg])
        held.append(seg)
        while sum(h.length for h in held) > 20:  # evict oldest items after the sink
            gone = held.pop(1)
            cache.remove(sink.length, gone.length)
        if step % 7 == 0:  # a question: write after the window, then rewind
            mark = cache.length
            cache.append([_seg(9, 1000 + step)])
            cache.rewind(mark)
        want = KVSegment.concat(held)
        got = cache.segment(0, cache.length, want.positions)
        assert torch.equal(got.keys, want.keys) and torch.equal(got.values, want.values)
        assert cache.layers[1].keys.shape == (1, 1, want.length, 4)
        assert torch.equal(cache.layers[1].keys[0], want.keys[1])
        epochs.add(cache.epoch)
    assert len(epochs) > 2  # the buffer moved to the front and grew along the way
    assert cache.capacity < 200  # moves reuse the buffer: it grows only with what it must hold


def test_a_cache_grown_inside_inference_mode_can_still_be_written_outside_it():
    # a forward (inference mode) that grows the buffer, then a chunk appended or an item removed
    # outside it: the buffer must not become an inference tensor
    with torch.inference_mode():
        cache = WindowKVCache(2, 1, 4, device="cpu", dtype=torch.float32, capacity=4)
    segs = [KVSegment(torch.randn(2, 1, 3, 4), torch.randn(2, 1, 3, 4), torch.arange(3 * i, 3 * i + 3)) for i in range(3)]
    cache.append([segs[0]])
    with torch.inference_mode():
        cache.append([segs[1]])  # grows
    cache.append([segs[2]])
    cache.remove(0, 3)
    assert cache.length == 6
    kept = cache.segment(0, 6, torch.arange(6))
    assert torch.equal(kept.keys, torch.cat([segs[1].keys, segs[2].keys], dim=2))


def test_cache_refuses_what_it_cannot_do():
    cache = WindowKVCache(2, 1, 4, device="cpu", dtype=torch.float32, capacity=8)
    cache.append([_seg(4, 0)])
    with pytest.raises(BackendError, match="rewind to 5 tokens"):
        cache.rewind(5)
    with pytest.raises(BackendError, match="remove 3 tokens after 2"):
        cache.remove(2, 3)
    with pytest.raises(ValueError, match="negative"):
        cache.crop(2)
    with pytest.raises(BackendError, match="positive sizes"):
        WindowKVCache(0, 1, 4, device="cpu", dtype=torch.float32)


@pytest.mark.parametrize("views", [True, False])
def test_window_keeps_its_cache_in_step_through_eviction_and_saves(views):
    """The window removes what it evicts from the cache (views: its items re-taken after moves; copies:
    as on an accelerator), and the chunks it cuts hold the items' own KV."""
    import itertools

    from app.engine.window import Window, WindowItem

    cache = WindowKVCache(2, 1, 4, device="cpu", dtype=torch.float32, capacity=8)
    sink = _seg(3, 0)
    cache.append([sink])
    window = Window(12, 2, cache=cache, sink_tokens=3, views=views)
    made, fed, pos = [], [], itertools.count(100)
    for i in range(25):
        seg = _seg(int(1 + i % 4), 50 + i)
        seg = KVSegment(seg.keys, seg.values, torch.tensor([next(pos) for _ in range(seg.length)]))
        chunks = window.make_room(seg.length)
        made += [c.keys for c in chunks]
        fed.append(seg.keys)
        cache.append([seg])
        kv = cache.segment(cache.length - seg.length, cache.length, seg.positions) if views else seg
        window.append(WindowItem(kv=kv, kind="frame", pts=float(i), key_sum=torch.zeros(8), key_weight=1))
        want = KVSegment.concat([sink, *window.segments()])
        got = cache.segment(0, cache.length, want.positions)
        assert torch.equal(got.keys, want.keys) and window.tokens <= 12
        assert all(torch.equal(it.kv.keys, s.keys) for it, s in zip(window, window.segments()))
    # the evicted items' KV, intact although the sink was copied over their slots afterwards
    evicted = torch.cat(made, dim=2)
    assert torch.equal(evicted, torch.cat(fed, dim=2)[:, :, : evicted.shape[2]])
    banked = window.bank_all()
    assert sum(c.keys.shape[2] for c in banked) == window.tokens
    with pytest.raises(ValueError, match="out of step"):
        window.append(WindowItem(kv=_seg(2, 9), kind="frame", pts=99.0, key_sum=torch.zeros(8), key_weight=1))
