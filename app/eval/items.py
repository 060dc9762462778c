"""One evaluation question, whatever file it came from."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["BENCHMARKS", "KINDS", "LETTERS", "EvalItem", "letters"]

BENCHMARKS = ("streamingbench", "ovo", "jsonl")
KINDS = ("choice", "open", "yesno", "count", "proactive")
# Option letters in order; the benchmarks' files use at most A..F (StreamingBench's omni file has a few
# questions with five or six options).
LETTERS = "ABCDEFGHIJ"


def letters(n: int) -> tuple[str, ...]:
    """The first ``n`` option letters: ``letters(4) == ("A", "B", "C", "D")``.

    Raises:
        ValueError: ``n`` is not in ``[0, len(LETTERS)]``.
    """
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= len(LETTERS):
        raise ValueError(f"the number of options must be an integer in [0, {len(LETTERS)}]; got {n!r}")
    return tuple(LETTERS[:n])


@dataclass(frozen=True)
class EvalItem:
    """One question at one moment of one video.

    Attributes:
        id: unique within the loaded file (``"real/0/2"``, ``"ovo/1468/3"``, ``"jsonl/7"``...).
        benchmark: ``"streamingbench"``, ``"ovo"`` or ``"jsonl"``.
        task: the canonical task name (:data:`app.eval.tasks.TASKS`); for JSONL the file's own name.
        group: the task's group (``"Real-Time Visual Understanding"``, ``"Backward Tracing"``...).
        video: the video path relative to ``--videos``, as the file names it.
        t: the query time, seconds from the start of the video.
        question: the question text (for OVO's forward probes, the text the official script asks about).
        options: the option texts without their ``"A."`` prefixes; ``()`` for open questions.
        answer: the letter for multiple choice, else the expected text, count or ``"Yes"``/``"No"``.
        kind: ``"choice"``, ``"open"``, ``"yesno"``, ``"count"`` or ``"proactive"``.
        context: earlier questions of the same video with their ground-truth answers (sequential QA):
            ``((question_with_options, answer), ...)``.
        evidence: ground-truth evidence time ranges ``((t0, t1), ...)`` in seconds, when known.
        gt_time: proactive items: the ground-truth time the output is due, seconds.
        raw_task: the task name as the file spelled it.
        notes: timed text events ``((t, text), ...)`` fed to the session before ``t`` (JSONL ``notes``).
    """

    id: str
    benchmark: str
    task: str
    group: str
    video: str
    t: float
    question: str
    options: tuple[str, ...]
    answer: str
    kind: str
    context: tuple[tuple[str, str], ...] = ()
    evidence: tuple[tuple[float, float], ...] = ()
    gt_time: float | None = None
    raw_task: str = ""
    notes: tuple[tuple[float, str], ...] = ()

    def __post_init__(self) -> None:
        if self.benchmark not in BENCHMARKS:
            raise ValueError(f"EvalItem.benchmark must be one of {', '.join(BENCHMARKS)}; got {self.benchmark!r}")
        if self.kind not in KINDS:
            raise ValueError(f"EvalItem.kind must be one of {', '.join(KINDS)}; got {self.kind!r}")
        if self.kind == "choice" and self.answer not in letters(len(self.options)):
            raise ValueError(f"EvalItem {self.id}: answer must be one of the option letters "
                             f"{', '.join(letters(len(self.options)))}; got {self.answer!r}")

    @property
    def option_letters(self) -> tuple[str, ...]:
        """The option letters of this item (``()`` for open questions)."""
        return letters(len(self.options))
