"""The offline LiveSight suite: seeded streams of timed notes with recall questions, as LiveSight JSONL.

Each stream is one video of the suite (any clip: the notes carry the content, so the suite runs with
text-only weights and ``--vision off``); its notes are the needle streams of :mod:`app.bench.needles`
(several sentences a note, one fact among them for a needle's note) and every needle becomes one
multiple-choice question asked after the last note. The options are whole replies that differ only
in the answer ("Marta parked the van in bay 47." vs "... bay 12."), so ``--choice logprob`` scores
the model's belief in each answer in the words a reply would use, which a 135M model can read (a
bare "47" as a reply's first token it cannot). Tasks: what kind of fact is recalled (a number, a
color...); every line carries its video's notes, so ``--limit`` and ``--tasks`` still see them.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path

#: Task name of each needle kind, in the order of :data:`app.bench.needles.KIND_POOLS`.
TASK_NAMES = ("Number recall", "Color recall", "Object recall", "Password recall", "Animal recall", "City recall")
SUITE_GROUP = "LiveSight recall"


def needle_task(answer: str) -> str:
    """The task of a needle from its answer's kind (bay number, color, object, password, animal, city).

    Raises:
        ValueError: an answer of no known kind.
    """
    from app.bench.needles import KIND_POOLS

    for name, pool in zip(TASK_NAMES, KIND_POOLS, strict=True):
        if answer in pool:
            return name
    raise ValueError(f"{answer!r} is not an answer of any needle kind")


def suite_records(videos: Sequence[str], *, events: int = 36, needles: int = 12, sentences: int = 12,
                  seed: int = 0) -> list[dict]:
    """LiveSight JSONL records: one stream per name in ``videos`` (stream ``i`` seeded ``seed + i``).

    Notes are at 1, 2, ... ``events`` s; every question is at ``events + 1`` s, with its four options
    shuffled (seeded) and the letter of the expected one as the answer; ``evidence`` is the needle's note.

    Raises:
        ValueError: no videos, a repeated video, or sizes :func:`app.bench.needles.make_stream` refuses.
    """
    from app.bench.needles import make_stream
    from app.eval.items import letters

    videos = [str(v) for v in videos]
    if not videos or len(set(videos)) != len(videos):
        raise ValueError(f"suite_records needs one or more distinct videos, got {videos!r}")
    out = []
    for i, video in enumerate(videos):
        stream = make_stream(seed + i, events, needles, sentences=sentences)
        notes = [[pts, text] for pts, text in stream.events]
        t = stream.events[-1][0] + 1.0
        for j, n in enumerate(stream.needles):
            order = list(range(len(n.options())))
            random.Random(f"suite-{seed + i}-{j}").shuffle(order)
            options = [f"{n.reply} {n.options()[k]}." if n.reply else n.options()[k] for k in order]
            out.append({"id": f"suite/{i}/{j}", "video": video, "t": t, "question": n.question, "options": options,
                        "answer": letters(len(options))[order.index(0)], "task": needle_task(n.answer),
                        "group": SUITE_GROUP, "evidence": [[n.pts, n.pts]], "notes": notes})
    return out


def write_suite(path: str | Path, videos: Sequence[str], **sizes) -> Path:
    """Write :func:`suite_records` to ``path`` as JSONL (one record a line); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for rec in suite_records(videos, **sizes):
            f.write(json.dumps(rec) + "\n")
    return path
