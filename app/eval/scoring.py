"""Is a response right? Scored twice: as each benchmark's official script scores it, and strictly.

Official rules (reproduced, quirks included, so scores compare with published ones):

- StreamingBench multiple choice: the first character of the response (stripped) equals the answer
  letter. ``"Because..."`` counts as B; ``"b"`` and ``"The answer is B"`` do not.
- StreamingBench proactive output: the expected output text is a substring of the model's output (the
  timing is :func:`score_proactive`).
- OVO-Bench backward / real-time: the answer letter occurs anywhere in the response (``gt in response``):
  ``"Answer: B"`` counts for A as well as B, since it contains a capital A.
- OVO-Bench REC: all the digits in the response, joined, equal the count (``"3 or 4"`` reads as 34).
- OVO-Bench SSR / CRR: the response is exactly ``"Y"`` / ``"N"``, or contains ``"Yes"`` / ``"No"``
  (case-sensitive: ``"Not yet"`` counts as No, ``"yes"`` as neither).
- LiveSight JSONL: multiple choice as StreamingBench; open answers when the expected text occurs in the
  response (case and spaces ignored); yes/no and counts as OVO-Bench.

Strict rules (:func:`score_strict`): exactly one option letter found as a standalone token (``"B"``,
``"(B)"``, ``"B."``, ``"Answer: B"``; a capital A or I followed by a lower-case word is read as English,
not as a letter), or else exactly one option's full text in the response; yes/no: exactly one of yes / no
as a word; counts: exactly one integer (digits or a number word up to twenty); open answers: the expected
text as whole words.
"""

from __future__ import annotations

import re

from app.eval.items import EvalItem, letters

__all__ = [
    "PROACTIVE_TOLERANCE_S",
    "extract_letter",
    "score_official",
    "score_proactive",
    "score_strict",
    "strict_choice",
]

# StreamingBench's proactive task counts an output fired within this many seconds of the ground truth.
PROACTIVE_TOLERANCE_S = 2.0

_TOKEN = re.compile(r"(?<![A-Za-z0-9'])([A-J])(?![A-Za-z0-9'])")
_WORDS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
          "sixteen seventeen eighteen nineteen twenty").split()
_NUMBER = re.compile(r"\b(\d+|" + "|".join(_WORDS) + r")\b", re.IGNORECASE)


def _norm(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.casefold()).split())


def extract_letter(response: str | None, n_options: int) -> str | None:
    """The one option letter (``"A"``.. the ``n_options``-th) written as a standalone token in
    ``response``: ``"B"``, ``"(B)"``, ``"B."``, ``"Answer: B"``, ``"I think B"``. A capital A or I followed
    by a lower-case word (``"A man..."``) is English, not a letter. None when no letter or more than one
    different letter is found (``"B or C"``), or for an empty response."""
    if not response:
        return None
    allowed = set(letters(n_options))
    found: set[str] = set()
    for m in _TOKEN.finditer(response):
        letter = m.group(1)
        if letter not in allowed:
            continue
        if letter in "AI" and re.match(r"\s+[a-z]", response[m.end():]):
            continue
        found.add(letter)
    return found.pop() if len(found) == 1 else None


def strict_choice(item: EvalItem, response: str | None) -> str | None:
    """The option a response chose, strictly: :func:`extract_letter`, else the letter of the one option
    whose full text (case and punctuation ignored) occurs in the response; None when neither decides."""
    if not item.options or not response:
        return None
    letter = extract_letter(response, len(item.options))
    if letter is not None:
        return letter
    said = f" {_norm(response)} "
    hits = [ltr for ltr, text in zip(letters(len(item.options)), item.options) if _norm(text) and f" {_norm(text)} " in said]
    return hits[0] if len(hits) == 1 else None


def _yes_no_strict(response: str) -> str | None:
    words = set(_norm(response).split())
    yes, no = bool(words & {"yes", "y"}), bool(words & {"no", "n"})
    return ("Yes" if yes else "No") if yes != no else None


def _count_strict(response: str) -> str | None:
    values = {str(int(v)) if v.isdigit() else str(_WORDS.index(v.casefold())) for v in _NUMBER.findall(response)}
    return values.pop() if len(values) == 1 else None


def _ovo_yes_no(response: str, answer: str) -> bool:
    return response == answer[0] or answer in response


def _digits(response: str) -> str:
    return "".join(re.findall(r"\d+", response))


def score_official(item: EvalItem, response: str | None) -> bool:
    """Right or wrong as the item's benchmark's official script scores ``response`` (module docstring).
    An empty or missing response is wrong."""
    if not response:
        return False
    if item.kind == "proactive":
        return item.answer in response
    if item.kind == "count":
        return _digits(response) == item.answer
    if item.kind == "yesno":
        return _ovo_yes_no(response, item.answer)
    if item.kind == "choice":
        if item.benchmark == "ovo":
            return item.answer in response
        return response.strip()[:1] == item.answer
    return bool(_norm(item.answer)) and _norm(item.answer) in _norm(response)


def score_strict(item: EvalItem, response: str | None) -> bool:
    """Right or wrong under the strict rules (module docstring): the answer must be stated once and
    unambiguously."""
    if not response:
        return False
    if item.kind == "choice":
        return strict_choice(item, response) == item.answer
    if item.kind == "yesno":
        return _yes_no_strict(response) == item.answer
    if item.kind == "count":
        return _count_strict(response) == item.answer
    expected = _norm(item.answer)
    return bool(expected) and f" {expected} " in f" {_norm(response)} "


def score_proactive(item: EvalItem, fired_at: float | None, output: str = "", *, require_output: bool = False) -> bool:
    """A proactive item is right when the output fired within :data:`PROACTIVE_TOLERANCE_S` of
    ``item.gt_time`` (StreamingBench's time accuracy); with ``require_output`` the expected output must
    also occur in ``output`` (its answer accuracy). ``fired_at`` None (never fired) is wrong.

    Raises:
        ValueError: ``item`` is not a proactive item with a ``gt_time``.
    """
    if item.kind != "proactive" or item.gt_time is None:
        raise ValueError(f"score_proactive needs a proactive item with gt_time; {item.id} is {item.kind}")
    if fired_at is None:
        return False
    on_time = abs(float(fired_at) - item.gt_time) <= PROACTIVE_TOLERANCE_S
    return on_time and (not require_output or item.answer in (output or ""))

