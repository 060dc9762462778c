"""Play the videos through LiveSight sessions and ask the evaluation questions.

Two modes (:class:`EvalConfig`):

* ``stream`` (default): one session per video; the video is played once at ``fps`` (file mode,
  synchronous: no frame is dropped) and every question of that video is asked at its own query time
  ``t`` in the same session, in time order, after the frames up to ``t`` (a frame at ``pts <= t`` is
  seen, a later one is not). Later questions come after earlier ones in the conversation.
* ``clip``: a fresh session per question over ``[0, t]``, or ``[t - context_s, t]``.

Per question kind:

* multiple choice: ``choice="generate"`` asks the question with the options listed as ``"A. ..."``
  and "Answer with the option's letter."; ``choice="logprob"`` scores each option text with
  :meth:`Session.score_options` and answers the letter of the best one (small models need it).
  Yes/no questions under ``logprob`` are scored over ``("Yes", "No")``; open and count questions are
  always generated.
* sequential QA (``item.context``): the earlier questions with their ground-truth answers are put
  before the question as text, in the way StreamingBench's sequential-QA script does it.
* proactive: the question becomes a watch rule at ``t``, checked at 1 s steps of stream time up to
  ``gt_time + 4`` s; the first time it fires is the answer time, scored with
  :func:`app.eval.scoring.score_proactive` (strictly: the expected output must also be in the rule's
  answer). Its record's ``choice`` is the time it fired (None: never), ``response`` the rule's answer.

Every finished question is appended to ``predictions.jsonl`` at once (``resume`` skips ids already
there); a missing or unreadable video is reported once and its questions are recorded with ``error``
set and counted in the summary, never a crash.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.eval.items import EvalItem, letters
from streaming.checks import check_choice, check_int, check_number

logger = logging.getLogger(__name__)

__all__ = ["CHOICES", "MODES", "EvalConfig", "EvalError", "Progress", "question_prompt", "run_eval", "select_items"]

MODES = ("stream", "clip")
CHOICES = ("generate", "logprob")
#: How long after the ground-truth time a proactive rule is still polled, seconds.
PROACTIVE_SLACK_S = 4.0
#: The step of stream time between two checks of a proactive rule, seconds.
PROACTIVE_STEP_S = 1.0
LETTER_INSTRUCTION = "Answer with the option's letter."
#: Sequential QA: the text before the earlier questions and their answers (after StreamingBench's script).
CONTEXT_INTRO = ("Here are the contextual information related to the video. Please answer the questions based on "
                 "the contextual information: ")
CONTEXT_TURN = "The following question and answer occurred earlier: Question: {q} Answer: {a}. "


class EvalError(ValueError):
    """A bad evaluation setting or input, with a message naming it."""

    code = "invalid_config"


@dataclass(frozen=True)
class EvalConfig:
    """How an evaluation runs.

    Attributes:
        mode: ``"stream"`` (one session per video, questions at their times) or ``"clip"`` (a fresh
            session per question).
        fps: frames per second of stream time fed to the model, in (0, 1000].
        context_s: clip mode: the clip is ``[t - context_s, t]``; None: ``[0, t]``. In (0, 1e6].
        choice: multiple choice answered by ``"generate"`` (the letter the model writes) or ``"logprob"``
            (the option whose text the model finds most likely).
        max_new_tokens: answer length limit of generated answers, in [1, 4096].
        limit: only the first N selected questions (file order), in [1, 1e9]; None: all.
        tasks: only these tasks (canonical or as the file spells them, case-insensitive); ``()``: all.
        resume: skip questions whose id is already in ``predictions.jsonl``.
        max_side: shrink frames so the longer side is at most this, in [8, 16384]; None: as decoded.
        session: :class:`~app.engine.config.SessionConfig` field overrides for every session.
    """

    mode: str = "stream"
    fps: float = 1.0
    context_s: float | None = None
    choice: str = "generate"
    max_new_tokens: int = 16
    limit: int | None = None
    tasks: tuple[str, ...] = ()
    resume: bool = False
    max_side: int | None = None
    session: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        err = {"error": EvalError}
        check_choice("mode", self.mode, MODES, **err)
        check_number("fps", self.fps, low=0.0, high=1000.0, low_inclusive=False, **err)
        check_number("context_s", self.context_s, low=0.0, high=1e6, low_inclusive=False, allow_none=True, **err)
        check_choice("choice", self.choice, CHOICES, **err)
        check_int("max_new_tokens", self.max_new_tokens, low=1, high=4096, **err)
        check_int("limit", self.limit, low=1, high=10**9, allow_none=True, **err)
        check_int("max_side", self.max_side, low=8, high=16384, allow_none=True, **err)
        if not isinstance(self.tasks, tuple) or not all(isinstance(t, str) and t.strip() for t in self.tasks):
            raise EvalError(f"tasks must be a tuple of task names; got {self.tasks!r}")
        if not isinstance(self.resume, bool):
            raise EvalError(f"resume must be true or false; got {self.resume!r}")
        self.session_config()  # a bad override fails here, naming its field

    def session_config(self):
        """The :class:`~app.engine.config.SessionConfig` every session of the run gets."""
        from app.engine.config import ConfigError, SessionConfig

        try:
            return SessionConfig(**{"max_new_tokens": self.max_new_tokens, **dict(self.session)})
        except TypeError as exc:
            raise EvalError(f"session: {exc}") from None
        except ConfigError as exc:
            raise EvalError(f"session: {exc}") from None


# ---- progress ------------------------------------------------------------------------------------
class Progress:
    """done/total, rate and ETA on a stream (stderr): one redrawn line on a terminal, plain lines elsewhere.

    Args:
        stream: where the lines go.
        every_s: plain lines: at most one per this many seconds (and always the last).
    """

    def __init__(self, stream=None, *, every_s: float = 10.0) -> None:
        self.stream = sys.stderr if stream is None else stream
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.every_s = every_s
        self.total = 0
        self.done = 0
        self._t0 = time.monotonic()
        self._last = -math.inf

    def start(self, total: int) -> None:
        self.total, self.done, self._t0 = total, 0, time.monotonic()

    def line(self) -> str:
        elapsed = time.monotonic() - self._t0
        rate = self.done / elapsed if elapsed > 0 else 0.0
        left = (self.total - self.done) / rate if rate > 0 else None
        eta = "?" if left is None else _clock(left)
        width = 24
        filled = int(width * self.done / self.total) if self.total else width
        return (f"[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} questions, "
                f"{rate * 60:.1f}/min, elapsed {_clock(elapsed)}, ETA {eta}")

    def advance(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        last = self.done >= self.total
        if self.tty:
            self.stream.write("\r" + self.line() + ("\n" if last else ""))
        elif last or now - self._last >= self.every_s:
            self.stream.write(self.line() + "\n")
        else:
            return
        self._last = now
        self.stream.flush()


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


# ---- selection -------------------------------------------------------------------------------------
def select_items(items: Iterable[EvalItem], config: EvalConfig) -> list[EvalItem]:
    """The items the run asks: the ``tasks`` filter, then the first ``limit`` (file order).

    Raises:
        EvalError: duplicate ids, or a ``tasks`` name no item has.
    """
    items = list(items)
    seen: set[str] = set()
    for it in items:
        if it.id in seen:
            raise EvalError(f"the questions file has the id {it.id!r} twice")
        seen.add(it.id)
    if config.tasks:
        wanted = {t.strip().lower() for t in config.tasks}
        known = {it.task.lower() for it in items} | {it.raw_task.lower() for it in items if it.raw_task}
        unknown = sorted(wanted - known)
        if unknown:
            raise EvalError(f"no question has the task {', '.join(unknown)}; the file's tasks are "
                            f"{', '.join(sorted({it.task for it in items}))}")
        items = [it for it in items if it.task.lower() in wanted or it.raw_task.lower() in wanted]
    if config.limit is not None:
        items = items[: config.limit]
    return items


# ---- prompts -----------------------------------------------------------------------------------------
def question_prompt(item: EvalItem, *, with_options: bool = True) -> str:
    """The text asked for ``item``: sequential-QA context, the question, its options and the letter instruction.

    ``with_options=False`` (log-likelihood choice): the question alone (after its context), since the
    option texts themselves are what is scored.
    """
    parts = []
    if item.context:
        parts.append(CONTEXT_INTRO + "".join(CONTEXT_TURN.format(q=q.strip(), a=a.strip()) for q, a in item.context))
    parts.append(item.question.strip())
    if with_options and item.options:
        parts.extend(f"{letter}. {text}" for letter, text in zip(item.option_letters, item.options, strict=True))
        parts.append(LETTER_INSTRUCTION)
    return "\n".join(parts)


def _evidence_list(evidence) -> list[tuple[float, float, str, str]]:
    return [(round(e.t_start, 3), round(e.t_end, 3), e.source, e.kind) for e in evidence]


# ---- one question -------------------------------------------------------------------------------------
def _record(item: EvalItem, *, response: str | None = None, choice: str | None = None, correct_official: bool = False,
            correct_strict: bool = False, scores: list[float] | None = None, **fields) -> dict:
    """:func:`app.eval.report.make_record`, plus ``scores`` (the options' mean log-probabilities) under ``logprob``."""
    from app.eval.report import make_record

    rec = make_record(item, response=response, choice=choice, correct_official=correct_official,
                      correct_strict=correct_strict, **fields)
    if scores is not None:
        rec["scores"] = scores
    return rec


def _ask(session, item: EvalItem, config: EvalConfig) -> dict:
    """Answer a non-proactive ``item`` now; its record (scored)."""
    from app.eval.scoring import extract_letter, score_official, score_strict

    frames = session.stats()["frames"]
    t0 = time.perf_counter()
    logprob = config.choice == "logprob" and (item.kind == "choice" or item.kind == "yesno")
    if logprob:
        options = list(item.options) if item.kind == "choice" else ["Yes", "No"]
        prompt = question_prompt(item, with_options=False)
        if item.kind == "yesno":
            prompt += "\nAnswer yes or no."
        scores, evidence = session.score_options(prompt, options)
        best = max(range(len(options)), key=scores.__getitem__)
        total = round(time.perf_counter() - t0, 4)
        if item.kind == "choice":
            letter = letters(len(options))[best]
            response = choice = letter  # the letter alone: OVO's official rule finds any capital letter
        else:
            response = choice = options[best]
        timing = {"first_token_s": total, "total_s": total, "scores": [round(s, 4) for s in scores]}
    else:
        from app.engine.types import Answer

        answer = None
        for ev in session.ask(question_prompt(item), max_new_tokens=config.max_new_tokens):
            if isinstance(ev, Answer):
                answer = ev
        response, evidence = answer.text, answer.evidence
        choice = extract_letter(response, len(item.options)) if item.kind == "choice" else None
        timing = {"first_token_s": answer.usage.get("first_token_s"), "total_s": answer.usage.get("total_s")}
    return _record(item, response=response, choice=choice, correct_official=bool(score_official(item, response)),
                   correct_strict=bool(score_strict(item, response)), evidence=_evidence_list(evidence),
                   frames=frames, **timing)


class _Proactive:
    """A proactive item being watched: its rule, the times it is checked at, and when it fired."""

    def __init__(self, session, item: EvalItem) -> None:
        from app.engine.watch import MAX_RULE_CHARS

        self.item = item
        self.rule = session.watch(item.question.strip()[:MAX_RULE_CHARS])
        self.end = (item.gt_time if item.gt_time is not None else item.t) + PROACTIVE_SLACK_S
        self.next_check = item.t
        self.t0 = time.perf_counter()
        self.fired_at: float | None = None
        self.output = ""

    def record(self, session) -> dict:
        from app.eval.scoring import score_proactive

        session.unwatch(self.rule.rule_id)
        official = bool(score_proactive(self.item, self.fired_at, self.output))
        strict = bool(score_proactive(self.item, self.fired_at, self.output, require_output=True))
        total = round(time.perf_counter() - self.t0, 4)
        return _record(self.item, response=self.output, choice=None if self.fired_at is None else round(self.fired_at, 3),
                       correct_official=official, correct_strict=strict, frames=session.stats()["frames"],
                       first_token_s=None, total_s=total)


# ---- one session over one video ------------------------------------------------------------------------
class _Timeline:
    """The questions, notes and proactive checks of one session, put in at their stream times between frames.

    ``until(t)`` runs everything due before a frame at ``t`` is fed: notes at or before ``t``, questions
    asked before ``t`` (a question at ``t`` sees the frame at ``t``), proactive checks before ``t``.
    """

    def __init__(self, session, items: Sequence[EvalItem], config: EvalConfig, emit: Callable[[dict], None],
                 notes: Sequence[tuple[float, str]]) -> None:
        self.session = session
        self.config = config
        self.emit = emit
        self.pending = sorted(items, key=lambda it: it.t)
        self.notes = sorted(set(notes))
        self.watching: list[_Proactive] = []

    def until(self, t: float) -> None:
        while True:
            due = []
            if self.notes and self.notes[0][0] <= t:
                due.append((self.notes[0][0], 0, "note"))
            if self.pending and self.pending[0].t < t:
                due.append((self.pending[0].t, 1, "item"))
            checks = [p for p in self.watching if p.next_check < t]
            if checks:
                due.append((min(p.next_check for p in checks), 2, "check"))
            if not due:
                return
            when, _, kind = min(due)
            if kind == "note":
                self.session.ingest_text(*self.notes.pop(0))
            elif kind == "item":
                self._item(self.pending.pop(0))
            else:
                self._check(when)

    def _item(self, item: EvalItem) -> None:
        """Ask ``item`` now (or start watching it); a question the session refuses is recorded with its error."""
        from app.engine.types import SessionError

        try:
            if item.kind == "proactive":
                self.watching.append(_Proactive(self.session, item))
            else:
                self.emit(_ask(self.session, item, self.config))
        except SessionError as exc:
            logger.warning("question %s refused: %s", item.id, exc)
            self.emit(_record(item, error=f"refused: {exc}", frames=self.session.stats()["frames"]))

    def _check(self, when: float) -> None:
        """Check the watch rules once at stream time ``when``; record the rules that fired or ran out."""
        alerts = {a.rule_id: a for a in self.session.check_watches()}
        for p in list(self.watching):
            # the session checks every rule at once: a rule that fires between its own steps fired then
            if p.rule.rule_id in alerts:
                p.fired_at, p.output = when, alerts[p.rule.rule_id].answer
            if p.next_check <= when:
                p.next_check += PROACTIVE_STEP_S
            if p.fired_at is not None or p.next_check > p.end:
                self.watching.remove(p)
                self.emit(p.record(self.session))

    def finish(self) -> None:
        """The video ended: everything left is asked or checked at the end of the stream."""
        self.until(math.inf)


def _play(backend, path: Path, session_config, items: Sequence[EvalItem], config: EvalConfig, emit,
          start_s: float = 0.0, stop_s: float = math.inf) -> None:
    """One session over ``path`` from ``start_s`` to ``stop_s`` (stream time), with ``items`` asked in it.

    Raises:
        streaming.errors.SourceError: the video cannot be opened or read.
    """
    from app.engine.session import Session
    from streaming import Sampler, SamplerConfig, open_source

    notes = [n for it in items for n in it.notes if start_s <= n[0] <= stop_s]
    with Session(backend, session_config) as session:
        timeline = _Timeline(session, items, config, emit, notes)
        src = open_source(str(path), allow_files=True)
        with Sampler(src, SamplerConfig(fps=config.fps, max_side=config.max_side), live=False) as sampler:
            for frame in sampler:
                if frame.pts < start_s:
                    continue
                if frame.pts > stop_s and not timeline.watching:
                    break
                timeline.until(frame.pts)
                session.ingest(frame, evaluate_watches=False)
                if not timeline.pending and not timeline.watching and not timeline.notes:
                    break
        timeline.finish()


# ---- the run ---------------------------------------------------------------------------------------------
def _resolve(videos_dir: Path, video: str) -> Path | None:
    path = Path(video)
    for candidate in ((videos_dir / path), (videos_dir / path.name)):
        if candidate.is_file():
            return candidate
    return None


def run_eval(items: Iterable[EvalItem], videos_dir: str | Path, backend, config: EvalConfig, out_dir: str | Path,
             progress: Progress | None = None) -> dict:
    """Run ``items`` through LiveSight; write ``predictions.jsonl`` and ``summary.json`` under ``out_dir``.

    Returns:
        the summary (:func:`app.eval.aggregate.aggregate` of every record in ``predictions.jsonl``, this
        run's and earlier ones'), plus ``"run"``: this run's counts (``asked``, ``skipped_done``, ``errors``,
        ``missing_videos``, ``bad_videos``) and settings.

    Raises:
        EvalError: bad settings or items (duplicate ids, unknown task).
    """
    from app.eval.report import PredictionsFile
    from streaming.errors import SourceError

    if not isinstance(config, EvalConfig):
        raise EvalError(f"run_eval needs an EvalConfig, got {type(config).__name__}")
    videos_dir = Path(videos_dir)
    if not videos_dir.is_dir():
        raise EvalError(f"--videos: {videos_dir} is not a directory")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    session_config = config.session_config()
    selected = select_items(items, config)
    try:
        predictions = PredictionsFile(out_dir / "predictions.jsonl")
    except ValueError as exc:
        raise EvalError(str(exc)) from None
    done = set(predictions.done_ids()) if config.resume else set()
    if not config.resume and (out_dir / "predictions.jsonl").is_file() and (out_dir / "predictions.jsonl").stat().st_size:
        raise EvalError(f"{out_dir / 'predictions.jsonl'} already has predictions: give --resume to continue that "
                        "run, or a new --output directory")
    todo = [it for it in selected if it.id not in done]
    counts = {"selected": len(selected), "skipped_done": len(selected) - len(todo), "asked": 0, "errors": 0,
              "missing_videos": 0, "bad_videos": 0}
    if progress is not None:
        progress.start(len(todo))

    answered: set[str] = set()

    def emit(record: dict) -> None:
        answered.add(record["id"])
        predictions.append(record)
        counts["asked" if record.get("error") is None else "errors"] += 1
        if progress is not None:
            progress.advance()

    by_video: dict[str, list[EvalItem]] = {}
    for it in todo:
        by_video.setdefault(it.video, []).append(it)
    for video, group in by_video.items():
        path = _resolve(videos_dir, video)
        if path is None:
            logger.warning("video %s not found under %s: its %d question(s) are skipped", video, videos_dir, len(group))
            counts["missing_videos"] += 1
            for it in group:
                emit(_record(it, error=f"missing video: {video}"))
            continue
        try:
            _run_video(backend, path, group, session_config, config, emit)
        except SourceError as exc:
            logger.warning("video %s cannot be read (%s): its unanswered question(s) are skipped", path, exc)
            counts["bad_videos"] += 1
            for it in group:
                if it.id not in answered:
                    emit(_record(it, error=f"bad video: {exc}"))
    return _summarize(predictions, out_dir, config, counts)


def _run_video(backend, path: Path, group: list[EvalItem], session_config, config: EvalConfig, emit) -> None:
    """All questions of one video: one session in stream mode, one per question in clip mode.

    Raises:
        streaming.errors.SourceError: the video cannot be read; ``emit`` has had the records finished before.
    """
    if config.mode == "stream":
        _play(backend, path, session_config, group, config, emit)
        return
    for it in sorted(group, key=lambda i: i.t):
        stop = it.t if it.kind != "proactive" else (it.gt_time if it.gt_time is not None else it.t) + PROACTIVE_SLACK_S
        start = 0.0 if config.context_s is None else max(0.0, it.t - config.context_s)
        _play(backend, path, session_config, [it], config, emit, start_s=start, stop_s=stop)


def _summarize(predictions, out_dir: Path, config: EvalConfig, counts: dict) -> dict:
    from app.eval.aggregate import aggregate
    from app.eval.report import write_summary

    records = predictions.records()
    summary = dict(aggregate(records))
    summary["run"] = {**counts, "mode": config.mode, "fps": config.fps, "context_s": config.context_s,
                      "choice": config.choice, "session": dict(config.session)}
    write_summary(out_dir, summary)
    return summary
