"""Answer-span scoring for the fidelity bench: how likely the expected answer is as the assistant's reply.

A small model asked "In which bay did Marta park the van?" tends to restate the question before it
answers ("Marta parked the van in bay 47."). Scoring a bare "47" as the first tokens of the reply
then mostly measures how unlikely a bare number is as a reply opening, in every setting alike. So
the answer is scored *after* the start of the reply that restates the fact's subject
(:attr:`app.bench.needles.Needle.reply`): log p(answer | context, question, reply start), per answer
token. Only the answer's tokens count; the reply start is the same text under every setting.

Everything goes through the public :meth:`app.engine.session.Session.score_options`: the reply start
alone and the reply start followed by each option are scored, and the answer's own log-probability is
the difference of their totals (which needs the reply start's tokens to be a prefix of each full
reply's tokens, checked per option).
"""

from __future__ import annotations

from typing import Any

WHITESPACE = (" ", "\n", "\t")


def _reply_ids(session, text: str):
    """Token ids (1-D) of ``text`` as :meth:`Session.score_options` scores it as the start of a reply."""
    fmt = session.backend.chat.first_question if not session._dialog else session.backend.chat.next_question
    spaced = not fmt.endswith(WHITESPACE)
    return session.backend.tokenize((" " if spaced else "") + text.strip())


def answer_logprobs(session, question: str, reply: str, answers, *, top_k: int) -> tuple[list[float], tuple[Any, ...]]:
    """Mean log-probability per answer token of each of ``answers`` written after ``reply`` in the
    assistant's reply to ``question``, over the context :meth:`Session.answer` would use.

    Args:
        session: an open :class:`~app.engine.session.Session`.
        question: the question text.
        reply: the start of the reply before the answer (may be empty: the answer opens the reply).
        answers: option texts (the expected answer first, by the bench's convention).
        top_k: memory chunks retrieved (0 = local window only).

    Returns:
        ``(scores, evidence)``: ``scores[i]`` = ``log p(answer_i tokens | ..., reply) / len(answer_i tokens)``
        (nats, <= 0) and the evidence items the answer would cite.

    Raises:
        ValueError: no answers, or an answer whose full reply does not tokenize with the reply start's
            tokens as its prefix (the difference would not be the answer's own probability).
    """
    answers = [str(a).strip() for a in answers]
    if not answers or any(not a for a in answers):
        raise ValueError("answer_logprobs needs one or more non-empty answers")
    reply = reply.strip()
    if not reply:
        return session.score_options(question, answers, top_k=top_k)
    full = [f"{reply} {a}" for a in answers]
    scores, evidence = session.score_options(question, [reply, *full], top_k=top_k)
    base_ids = _reply_ids(session, reply)
    n0 = int(base_ids.numel())
    base_total = scores[0] * n0
    out = []
    for text, score in zip(full, scores[1:]):
        ids = _reply_ids(session, text)
        n = int(ids.numel())
        if n <= n0 or not bool((ids[:n0] == base_ids).all()):
            raise ValueError(f"the reply {text!r} does not tokenize as {reply!r} followed by the answer's own tokens")
        out.append((score * n - base_total) / (n - n0))
    return out, evidence


def mean(values) -> float:
    """Arithmetic mean of a non-empty sequence of numbers.

    Raises:
        ValueError: an empty sequence.
    """
    values = [float(v) for v in values]
    if not values:
        raise ValueError("mean of no values")
    return sum(values) / len(values)


def fidelity_retained(nll_setting: float, nll_window: float, nll_full: float) -> float:
    """``(NLL_window - NLL_setting) / (NLL_window - NLL_full)``: 1 = as good as full context, 0 = no better
    than the window alone; ``nan`` when full context and the window score alike (nothing to retain)."""
    den = nll_window - nll_full
    return float("nan") if den == 0 else (nll_window - nll_setting) / den
