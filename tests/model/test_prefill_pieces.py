"""A text event prefilled in pieces (so a model worker can yield between them) leaves the session in
the state one prefill leaves: the same window KV, summaries, banked chunks and question logits."""

from __future__ import annotations

import pytest
import torch

from app.engine.backends import registry
from app.engine.config import SessionConfig
from app.engine.session import Session
from app.engine.types import SessionError

ATOL = 2e-4
LONG_NOTE = " ".join(f"item {i} is a red box on shelf {i % 7}" for i in range(40))  # a few hundred tokens


@pytest.fixture(scope="module", params=registry.test_models())
def backend(request):
    b = registry.load_backend(request.param, dtype="float32")
    yield b
    b.close()


def _feed(session: Session, **pieces) -> None:
    session.ingest_text(1.0, "a short note")
    session.ingest_text(2.0, LONG_NOTE, **pieces)  # its older neighbours leave the window into the bank
    session.ingest_text(3.0, LONG_NOTE.replace("red", "blue"), **pieces)


def test_pieces_give_the_state_of_one_prefill(backend):
    cfg = SessionConfig(window_tokens=320, vision=False)
    calls: list[int] = []
    with Session(backend, cfg) as whole, Session(backend, cfg) as pieced:
        _feed(whole)
        _feed(pieced, piece_tokens=32, between=lambda: calls.append(1))
        n_long = backend.text_segment(LONG_NOTE, 0, prefix="Note at 00:02: ", suffix="\n").length
        assert n_long > 3 * 32
        assert len(calls) >= 2 * ((n_long - 1) // 32)  # between every two pieces of both long notes
        assert whole.stats()["next_position"] == pieced.stats()["next_position"]
        assert whole.stats()["bank_chunks"] == pieced.stats()["bank_chunks"] >= 1

        a, b = whole._window.segments(), pieced._window.segments()
        assert [s.length for s in a] == [s.length for s in b]
        for sa, sb in zip(a, b):
            torch.testing.assert_close(sb.keys, sa.keys, atol=ATOL, rtol=1e-4)
            torch.testing.assert_close(sb.values, sa.values, atol=ATOL, rtol=1e-4)
            assert torch.equal(sa.positions, sb.positions)
        for ia, ib in zip(whole._window._items, pieced._window._items):
            assert ia.key_weight == ib.key_weight
            torch.testing.assert_close(ib.key_sum, ia.key_sum, atol=ATOL * ia.key_weight, rtol=1e-4)

        for ca, cb in zip(whole.bank.metas(), pieced.bank.metas()):
            assert (ca.chunk_id, ca.t_start, ca.text) == (cb.chunk_id, cb.t_start, cb.text)

        la, ea = whole.question_logits("Which shelf holds the blue box?")
        lb, eb = pieced.question_logits("Which shelf holds the blue box?")
        torch.testing.assert_close(lb, la, atol=ATOL, rtol=1e-4)
        assert [e.chunk_id for e in ea] == [e.chunk_id for e in eb]


def test_a_short_note_is_one_prefill_and_bad_piece_sizes_are_refused(backend):
    calls: list[int] = []
    with Session(backend, SessionConfig(vision=False)) as s:
        s.ingest_text(0.5, "short", piece_tokens=64, between=lambda: calls.append(1))
        assert calls == []
        for bad in (0, -3, 2.5, True):
            with pytest.raises(SessionError, match="piece_tokens"):
                s.ingest_text(1.0, "note", piece_tokens=bad)
