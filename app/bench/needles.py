"""Needle-in-stream material: seeded facts with unambiguous short answers, among distractor events.

A stream is a list of timed text events (one per second of stream time); a few are *needles*
(facts such as "Marta parked the van in bay 47."), the rest are distractors that never mention
a needle's subject or answer. Each needle comes with a question and its short expected answer;
an answer is correct when it contains the expected answer (case-insensitive). Each needle also
carries three *distractor answers of the same kind* (other bay numbers, colors, cities...) so an
answer can be chosen among four options by their log-likelihood (:meth:`Needle.options`).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

NAMES = ("Marta", "Jonas", "Priya", "Tomas", "Aiko", "Diego", "Fatima", "Oskar", "Lena", "Rafael", "Ingrid",
         "Kofi", "Sofia", "Mateo", "Yara", "Nils", "Amara", "Hugo", "Zara", "Emil", "Noor", "Felix", "Rosa", "Ivan")
COLORS = ("red", "blue", "green", "yellow", "purple", "orange", "white", "black", "pink", "brown")
OBJECTS = ("umbrella", "guitar", "suitcase", "ladder", "bicycle", "telescope", "violin", "backpack", "kettle",
           "lantern", "skateboard", "camera")
ANIMALS = ("dog", "cat", "parrot", "rabbit", "horse", "goat", "duck", "turtle", "hamster", "fox")
CODEWORDS = ("BLUEBERRY", "PINECONE", "SUNFLOWER", "AVALANCHE", "MARMALADE", "THUNDER", "CACTUS", "LIGHTHOUSE",
             "WALNUT", "GLACIER", "MANGO", "ORCHID")
CITIES = ("Lisbon", "Oslo", "Nairobi", "Kyoto", "Lima", "Dublin", "Cairo", "Quebec", "Hanoi", "Zurich")
PLACES = ("vault", "server room", "garage", "rooftop", "archive", "boathouse", "greenhouse", "workshop")

SUBJECTS = ("The weather", "The traffic", "The lobby", "The parking lot", "The kitchen", "The hallway",
            "The garden", "The office", "The corridor", "The queue", "The street", "The staircase")
STATES = ("is quiet", "looks busy", "is empty", "is brightly lit", "is dim", "smells of coffee",
          "is being cleaned", "moves slowly", "looks calm", "is noisy", "seems crowded", "is unchanged")


@dataclass(frozen=True)
class Needle:
    """One fact in a stream and its question.

    Attributes:
        index: position of the fact among the stream's events.
        pts: its stream time in seconds.
        fact: the event text.
        question: asked after the stream.
        answer: the expected short answer.
        depth: ``index / (events - 1)``: 0 = the first event, 1 = the last.
        distractors: other answers of the same kind (none equal to ``answer``), for a choice among options.
        reply: the start of the assistant's reply that leads to the answer (the fact up to its answer,
            e.g. "Marta parked the van in bay"): scoring the answer after it measures whether the model
            finds the fact, not whether it phrases replies as one bare word.
    """

    index: int
    pts: float
    fact: str
    question: str
    answer: str
    depth: float
    distractors: tuple[str, ...] = ()
    reply: str = ""

    def options(self) -> tuple[str, ...]:
        """The expected answer first, then the distractors: ``(answer, *distractors)``."""
        return (self.answer, *self.distractors)

    def correct(self, text: str) -> bool:
        """The answer ``text`` contains the expected answer (case-insensitive)."""
        return self.answer.lower() in text.lower()


@dataclass(frozen=True)
class NeedleStream:
    """A timed list of events ``[(pts, text)]`` with its needles."""

    events: tuple[tuple[float, str], ...]
    needles: tuple[Needle, ...]


BAYS = tuple(str(n) for n in range(10, 100))
KIND_POOLS = (BAYS, COLORS, OBJECTS, CODEWORDS, ANIMALS, CITIES)  # the answers of each template kind, in order


def _templates(rng: random.Random, name: str, place: str):
    """One (fact, question, answer, kind) about ``name`` (or ``place``), drawn from a few kinds;
    ``kind`` indexes :data:`KIND_POOLS` (the answers of the same kind)."""
    kind = rng.randrange(6)
    if kind == 0:
        n = rng.randint(10, 99)
        return f"{name} parked the van in bay {n}.", f"In which bay did {name} park the van?", str(n), kind
    if kind == 1:
        c = rng.choice(COLORS)
        return f"{name} is wearing a {c} jacket today.", f"What color is {name}'s jacket?", c, kind
    if kind == 2:
        o = rng.choice(OBJECTS)
        return f"{name} walked in carrying a {o}.", f"What was {name} carrying?", o, kind
    if kind == 3:
        w = rng.choice(CODEWORDS)
        return (f"The secret password for the {place} is {w}.", f"What is the secret password for the {place}?", w,
                kind)
    if kind == 4:
        a = rng.choice(ANIMALS)
        return f"{name} brought a {a} to the office.", f"Which animal did {name} bring to the office?", a, kind
    city = rng.choice(CITIES)
    return f"{name} just flew in from {city}.", f"Which city did {name} fly in from?", city, kind


def distractor_answers(seed: int, index: int, kind: int, answer: str, count: int = 3) -> tuple[str, ...]:
    """``count`` seeded answers of template ``kind`` other than ``answer`` (their own random stream, so
    the stream's events do not change with them).

    Raises:
        ValueError: ``kind`` not in [0, 5] or ``count`` larger than the pool of other answers.
    """
    if not isinstance(kind, int) or not 0 <= kind < len(KIND_POOLS):
        raise ValueError(f"kind must be an integer in [0, {len(KIND_POOLS) - 1}], got {kind!r}")
    pool = [a for a in KIND_POOLS[kind] if a.lower() != answer.lower()]
    if not isinstance(count, int) or not 0 <= count <= len(pool):
        raise ValueError(f"count must be an integer in [0, {len(pool)}], got {count!r}")
    return tuple(random.Random(f"distractors-{seed}-{index}").sample(pool, count))


def make_stream(seed: int, events: int = 230, needles: int = 10, *, start_pts: float = 1.0,
                step_s: float = 1.0, margin: float = 0.03, sentences: int = 1) -> NeedleStream:
    """A seeded stream of ``events`` timed events, ``needles`` of them facts at evenly spread depths.

    Each needle has its own subject (a name, or a place for passwords), so no two facts share a
    question; distractors mention none of the names, places or answers. Each event is a note of
    ``sentences`` sentences (longer notes make longer memory chunks: text events are one chunk
    each); a needle's fact takes the place of one of its note's sentences, at a seeded position.

    Raises:
        ValueError: ``needles`` not in [1, min(events, 24)], ``events`` < 2 or ``sentences`` not in [1, 64].
    """
    if not isinstance(events, int) or events < 2:
        raise ValueError(f"events must be an integer >= 2, got {events!r}")
    if not isinstance(sentences, int) or not 1 <= sentences <= 64:
        raise ValueError(f"sentences must be an integer in [1, 64], got {sentences!r}")
    limit = min(events, len(NAMES), len(PLACES) * 3)
    if not isinstance(needles, int) or not 1 <= needles <= limit:
        raise ValueError(f"needles must be an integer in [1, {limit}], got {needles!r}")
    rng = random.Random(seed)
    names = rng.sample(NAMES, needles)
    places = [PLACES[i % len(PLACES)] for i in rng.sample(range(len(PLACES)), min(needles, len(PLACES)))]
    lo, hi = margin * (events - 1), (1 - margin) * (events - 1)
    spots = sorted({round(lo + (hi - lo) * i / max(1, needles - 1)) for i in range(needles)})
    while len(spots) < needles:  # rounding collided on a short stream
        spots = sorted(set(spots) | {rng.randrange(events)})
    notes: list[list[str]] = []
    for _ in range(events):
        notes.append([f"{rng.choice(SUBJECTS)} {rng.choice(STATES)}." for _ in range(sentences)])
    out: list[Needle] = []
    used_places: set[str] = set()
    used_questions: set[str] = set()
    for i, spot in enumerate(spots):
        place_pool = [p for p in PLACES if p not in used_places] or list(PLACES)
        place = places[i] if i < len(places) and places[i] not in used_places else rng.choice(place_pool)
        while True:
            fact, question, answer, kind = _templates(rng, names[i], place)
            if question not in used_questions:
                break
        used_questions.add(question)
        if "password" in question:
            used_places.add(place)
        notes[spot][rng.randrange(sentences) if sentences > 1 else 0] = fact  # 1 sentence: the old seeded streams
        pts = start_pts + spot * step_s
        reply = fact[:re.search(rf"\b{re.escape(answer)}\b", fact).start()].rstrip()
        out.append(Needle(spot, pts, fact, question, answer, spot / (events - 1),
                          distractor_answers(seed, spot, kind, answer), reply))
    timed = tuple((start_pts + i * step_s, " ".join(n)) for i, n in enumerate(notes))
    return NeedleStream(timed, tuple(out))


def needle_in_context(evidence, needle) -> tuple[bool, bool]:
    """-> (the needle's event was in the context an answer saw, it came from memory), from the answer's
    :class:`~app.engine.types.Evidence` items (memory chunks' time ranges, the window's span)."""
    from_memory = any(e.source == "memory" and e.t_start <= needle.pts <= e.t_end for e in evidence)
    in_window = any(e.source == "window" and e.t_start <= needle.pts for e in evidence)
    return from_memory or in_window, from_memory
