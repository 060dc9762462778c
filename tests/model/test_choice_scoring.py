"""Session.score_options: option log-likelihoods over the context an answer would use.

The reference is one plain forward of the unmodified transformers model over sink + frames + notes +
question + the option's tokens (laid out as the session lays them out); fp32.
"""

from __future__ import annotations

import pytest
import torch

from app.engine.config import SessionConfig
from app.engine.session import Session
from app.engine.types import SessionError

from .conftest import random_frames
from .test_exactness import _plain_forward, _reference_inputs

EXACT = dict(window_tokens=100_000, top_k=0, drop="off", kv_bits=32)
QUESTION = "What colour is the van?"
TEXTS = [(3.0, "The van is red.")]


def _stream(backend):
    s = Session(backend, SessionConfig(**EXACT))
    frames = random_frames(3, seed=4)
    for f in frames:
        s.ingest(f)
    for pts, text in TEXTS:
        s.ingest_text(pts, text)
    return s, frames


def test_scores_equal_plain_forward(tiny_backend):
    backend = tiny_backend
    options = ["red", "a blue car parked outside", "green"]
    s, frames = _stream(backend)
    with s:
        scores, _ = s.score_options(QUESTION, options)
        # the conversation is unchanged: the same call again gives the same scores, no question counted
        again, _ = s.score_options(QUESTION, options)
        assert s.stats()["questions"] == 0
    assert scores == pytest.approx(again, abs=1e-6)
    input_ids, pv, _ = _reference_inputs(backend, frames, TEXTS, QUESTION)
    for option, score in zip(options, scores, strict=True):
        opt = backend.tokenize(" " + option)  # the assistant prompt ends in "Assistant:": a reply starts with a space
        ids = torch.cat([input_ids[0], opt]).unsqueeze(0)
        logp = torch.log_softmax(_plain_forward(backend, ids, pv), dim=-1)
        n = opt.numel()
        q_end = input_ids.shape[1]
        # token j of the option is predicted by the row before it
        expected = float(sum(logp[q_end - 1 + j, int(opt[j])] for j in range(n))) / n
        assert score == pytest.approx(expected, abs=2e-4), option
    assert all(x <= 0 for x in scores)


def test_greedy_token_scores_highest(tiny_backend):
    """Among single-token options, the one the model would produce first (highest logit) wins."""
    backend = tiny_backend
    s, _ = _stream(backend)
    with s:
        logits, _ = s.question_logits(QUESTION)
        ranked = torch.argsort(logits[-1], descending=True).tolist()
        # options that are exactly one token when written after the assistant prompt
        singles = []
        for tid in ranked:
            text = backend.tokenizer.decode([tid]).strip()
            if text and text.isalpha() and backend.tokenize(" " + text).tolist() == [tid]:
                singles.append((tid, text))
            if len(singles) == 1:
                break
        low = []
        for tid in reversed(ranked):
            text = backend.tokenizer.decode([tid]).strip()
            if text and text.isalpha() and backend.tokenize(" " + text).tolist() == [tid]:
                low.append((tid, text))
            if len(low) == 2:
                break
        options = [low[0][1], singles[0][1], low[1][1]]
        scores, _ = s.score_options(QUESTION, options)
        log_p = torch.log_softmax(logits[-1], dim=-1)
    assert max(range(3), key=scores.__getitem__) == 1
    assert scores[1] == pytest.approx(float(log_p[singles[0][0]]), abs=1e-4)


def test_bad_options_are_refused(tiny_backend):
    with Session(tiny_backend, SessionConfig(**EXACT)) as s:
        with pytest.raises(SessionError, match="options"):
            s.score_options(QUESTION, [])
        with pytest.raises(SessionError, match="options"):
            s.score_options(QUESTION, ["yes", "  "])
        with pytest.raises(SessionError, match="question"):
            s.score_options(" ", ["yes"])
