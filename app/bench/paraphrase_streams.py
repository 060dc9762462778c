"""Paraphrase needle streams: questions that never repeat the words of the note they ask about.

The material of ``livesight bench paraphrase`` lives in ``app/bench/data/paraphrase.json``: for
each *style* of stream (a hospital ward's night log, a warehouse floor, a cycling race commentary,
a hotel front desk) there are filler note templates, *needles* and *order* questions:

* a needle is a fact note, a question in other words (synonyms, indirect references), the short
  answer and three wrong options of the same kind, plus *near-miss* notes of the same kind that do
  not answer it (a painkiller beside the antibiotic asked about);
* an order question asks about the note just before a *landmark* note, naming the landmark in
  other words ("just before the emergency siren went off, ..."): the retrieval has to find the
  landmark and bring along the moment before it.

:func:`make_stream` lays one style out as a seeded stream of timed notes (questions at evenly
spread depths, near misses and fillers elsewhere); :func:`check_paraphrases` verifies that no
question shares a content word with its target note (the bench refuses material that does).
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

DATA = Path(__file__).resolve().parent / "data" / "paraphrase.json"

#: Words that carry no content (compared lowercased); the rest must not be shared by a question and its note.
STOPWORDS = frozenset("""
a an the and or but if of to in on at by for from with without into onto off out over under up down
is are was were be been being am do does did done has have had having will would shall should can could
may might must it its this that these those there here what which who whom whose when where why how
i you he she we they me him her us them my your his our their give just right shortly before after
during while about as than then so not no any some all each every one two three four five six seven
eight nine ten got get gets made make came come went go goes took take new old next last today tonight
s among
""".split())


def content_words(text: str) -> set[str]:
    """Lowercased words of ``text`` that carry content: letters/digits, not :data:`STOPWORDS`."""
    return {w for w in re.findall(r"[a-z0-9]+", text.lower()) if w not in STOPWORDS}


def _stem(word: str) -> str:
    """A crude stem (the first five letters), so "punctures" and "punctured" count as one word."""
    return word[:5] if len(word) > 5 else word


def shared_words(question: str, note: str, answers: tuple[str, ...] = ()) -> set[str]:
    """Content words (by stem) that ``question`` shares with ``note``, ignoring the words of ``answers``
    (a format hint such as "Give the room." names the kind of answer, not the fact)."""
    allowed = {_stem(w) for a in answers for w in content_words(a)}
    note_stems = {_stem(w) for w in content_words(note)}
    return {w for w in content_words(question) if _stem(w) in note_stems and _stem(w) not in allowed}


@dataclass(frozen=True)
class ParaphraseQuestion:
    """One question of a stream (duck-types :class:`app.bench.needles.Needle` for the bench helpers).

    Attributes:
        kind: ``"fact"`` (a needle) or ``"order"`` (about the note just before a landmark).
        style: the stream's style.
        index: position of the target note among the stream's events.
        pts: its stream time (seconds): the note whose presence in the context is measured.
        fact: the target note's text.
        question: asked after the stream.
        answer: the expected short answer; distractors: three wrong options of the same kind.
        depth: ``index / (events - 1)``.
        landmark_pts: an order question's landmark note's time (``None`` for a fact).
    """

    kind: str
    style: str
    index: int
    pts: float
    fact: str
    question: str
    answer: str
    distractors: tuple[str, ...]
    depth: float
    landmark_pts: float | None = None

    def options(self) -> tuple[str, ...]:
        """The expected answer first, then the distractors."""
        return (self.answer, *self.distractors)

    def correct(self, text: str) -> bool:
        """The answer ``text`` contains the expected answer (case-insensitive)."""
        return self.answer.lower() in text.lower()


@dataclass(frozen=True)
class ParaphraseStream:
    """A timed list of notes ``[(pts, text)]`` with its questions."""

    style: str
    events: tuple[tuple[float, str], ...]
    needles: tuple[ParaphraseQuestion, ...]


@lru_cache(maxsize=4)
def load_styles(path: str = str(DATA)) -> tuple[dict, ...]:
    """The styles of the material file, checked (:func:`check_paraphrases`).

    Raises:
        ValueError: a malformed style, or a question that shares content words with its note.
    """
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    styles = tuple(data["styles"])
    problems = check_paraphrases(styles)
    if problems:
        raise ValueError(f"{path}: questions repeat their note's words: " + "; ".join(problems[:5]))
    return styles


def check_paraphrases(styles) -> list[str]:
    """Problems of the material: ``"style: question shares {words}"`` for every question that repeats a
    content word of its target note (or, for order questions, of its landmark), or lacks three options."""
    out = []
    for style in styles:
        for item in list(style["needles"]) + list(style["order"]):
            answers = (item["answer"], *item["options"])
            target = item.get("fact") or item["before"]
            shared = shared_words(item["question"], target, answers)
            if "landmark" in item:
                shared |= shared_words(item["question"], item["landmark"], answers)
            if shared:
                out.append(f"{style['name']}: {item['question']!r} shares {sorted(shared)}")
            if len(item["options"]) != 3 or item["answer"] in item["options"]:
                out.append(f"{style['name']}: {item['question']!r} needs three wrong options")
    return out


def _filler(rng: random.Random, style: dict) -> str:
    template = rng.choice(style["fillers"])
    return re.sub(r"\{(\w+)\}", lambda m: rng.choice(style["slots"][m.group(1)]), template)


def make_stream(style: dict, seed: int, events: int = 160, *, start_pts: float = 2.0, step_s: float = 4.0,
                margin: float = 0.03) -> ParaphraseStream:
    """One style as a seeded stream of ``events`` timed notes, one every ``step_s`` seconds.

    The questions' target notes sit at evenly spread depths in ``[margin, 1 - margin]`` (an order
    question's landmark right after its target note); near misses at random free spots away from
    the targets; fillers (the style's templates, seeded) everywhere else.

    Raises:
        ValueError: ``events`` too small for the style's notes.
    """
    needles, orders = list(style["needles"]), list(style["order"])
    near = [n for item in needles for n in item.get("near", ())]
    items = [("fact", x) for x in needles] + [("order", x) for x in orders]
    need = len(needles) + 2 * len(orders) + len(near)
    if not isinstance(events, int) or events < 2 * need:
        raise ValueError(f"events must be an integer >= {2 * need} for style {style['name']!r}, got {events!r}")
    rng = random.Random(f"{style['name']}-{seed}")
    rng.shuffle(items)
    lo, hi = margin * (events - 2), (1 - margin) * (events - 2)
    spots = [round(lo + (hi - lo) * i / max(1, len(items) - 1)) for i in range(len(items))]
    texts: list[str | None] = [None] * events
    out = []
    for (kind, item), spot in zip(items, spots):
        if texts[spot] is not None:
            spot += 1
        if kind == "fact":
            texts[spot] = item["fact"]
        else:
            texts[spot], texts[spot + 1] = item["before"], item["landmark"]
        out.append((kind, item, spot))
    taken = {s for _, _, s in out} | {s + 1 for k, _, s in out if k == "order"}
    free = [i for i in range(events) if all(abs(i - s) > 1 for s in taken)]
    for text, spot in zip(near, rng.sample(free, len(near))):
        texts[spot] = text
    previous = None
    for i in range(events):
        while texts[i] is None:
            candidate = _filler(rng, style)
            if candidate != previous:
                texts[i] = candidate
        previous = texts[i]
    questions = []
    for kind, item, spot in sorted(out, key=lambda x: x[2]):
        pts = start_pts + spot * step_s
        questions.append(ParaphraseQuestion(
            kind=kind, style=style["name"], index=spot, pts=pts, fact=texts[spot], question=item["question"],
            answer=item["answer"], distractors=tuple(item["options"]), depth=spot / (events - 1),
            landmark_pts=pts + step_s if kind == "order" else None))
    timed = tuple((start_pts + i * step_s, t) for i, t in enumerate(texts))
    return ParaphraseStream(style["name"], timed, tuple(questions))
