"""The benchmarks' own files, as they are distributed, -> :class:`~app.eval.items.EvalItem` lists.

- StreamingBench, GitHub JSON: ``questions_real.json`` / ``questions_omni.json`` (a list of entries
  ``{video_path, questions: [{task_type, question, time_stamp, options, answer}]}``),
  ``questions_sqa.json`` (a list of per-video lists of such entries; options may be bare texts) and
  ``questions_proactive.json`` (``ground_truth_time_stamp`` and ``ground_truth_output`` instead of
  options and answer).
- StreamingBench, Hugging Face CSV: ``question_id, task_type, question, time_stamp, answer, options``
  (a Python-list string) and the video in ``video_path`` or ``video_id`` (else derived from
  ``question_id`` as the dataset's ``sample_N/video.mp4`` folders).
- OVO-Bench ``ovo_bench_new.json``: backward and real-time items ``{id, task, video, realtime,
  question, options, gt}``; forward items (REC, SSR, CRR) with ``test_info`` probes, one item each.
- LiveSight JSONL: one question per line (docs/benchmarks.md, "Evaluation").

Every loader refuses malformed input with an :class:`EvalFormatError` naming the file, the record and
the field. The real files have a few untidy records the official scripts live with, and so do these
loaders: clock times are read the official way (base-60 integers: ``"00:24"`` is 24 s), empty option
strings are dropped, an option line without a letter continues the previous option, options lettered out
of order are sorted and repeated or skipped letters are read by position (all logged).
"""

from __future__ import annotations

import ast
import csv
import json
import logging
import math
import re
from dataclasses import replace
from pathlib import Path

from app.eval.items import LETTERS, EvalItem, letters
from app.eval.tasks import canonical_task

__all__ = [
    "FORMATS",
    "EvalFormatError",
    "detect_format",
    "load_items",
    "load_jsonl",
    "load_ovo",
    "load_streamingbench_csv",
    "load_streamingbench_json",
    "parse_clock",
]

log = logging.getLogger(__name__)

FORMATS = ("streamingbench", "ovo", "jsonl")
JSONL_GROUP = "LiveSight"
_NAMES = {"streamingbench": "StreamingBench", "ovo": "OVO-Bench"}
_PREFIX = re.compile(r"^\s*\(?([A-J])\s*[.:)]\s*")
_CLOCK = re.compile(r"\d+(?::\d+)*(?:\.\d+)?")


class EvalFormatError(ValueError):
    """A benchmark file that cannot be read: the message names the file, the record and the field."""


def _fail(path: Path, record: str, message: str) -> EvalFormatError:
    return EvalFormatError(f"{path}: {record}: {message}")


def parse_clock(text: object) -> float:
    """A benchmark clock time -> seconds, the way the official scripts read it: ``":"``-separated
    numbers in base 60 (``"00:01:05"`` -> 65.0, ``"1:02:03"`` -> 3723.0, ``"00:24"`` -> 24.0,
    ``"00:00:8"`` -> 8.0); the last part may have decimals.

    Raises:
        ValueError: ``text`` is not such a time.
    """
    if not isinstance(text, str) or not _CLOCK.fullmatch(text.strip()):
        raise ValueError(f"must be a clock time like '00:01:05'; got {text!r}")
    total = 0.0
    for part in text.strip().split(":"):
        total = total * 60 + float(part)
    return total


def _field(path: Path, record: str, obj: dict, name: str, kind: type | tuple[type, ...], what: str) -> object:
    if not isinstance(obj, dict):
        raise _fail(path, record, f"must be a JSON object; got {type(obj).__name__}")
    if name not in obj:
        raise _fail(path, record, f"missing field {name!r}")
    value = obj[name]
    if not isinstance(value, kind) or isinstance(value, bool) or (isinstance(value, str) and not value.strip()):
        raise _fail(path, record, f"{name} must be {what}; got {value!r}")
    return value


def _clock_field(path: Path, record: str, obj: dict, name: str) -> float:
    value = _field(path, record, obj, name, str, "a clock time like '00:01:05'")
    try:
        return parse_clock(value)
    except ValueError as exc:
        raise _fail(path, record, f"{name} {exc}") from None


def _seconds_field(path: Path, record: str, obj: dict, name: str) -> float:
    value = _field(path, record, obj, name, (int, float), "a number of seconds >= 0")
    if not math.isfinite(value) or value < 0:
        raise _fail(path, record, f"{name} must be a number of seconds >= 0; got {value!r}")
    return float(value)


def _options(path: Path, record: str, raw: object) -> tuple[str, ...]:
    """Option texts without their letters, in letter order. Lettered lists (``"A. ..."``, ``"A.text"``,
    ``"(A) ..."``): an unlettered line continues the option before it, empty lines are dropped, letters
    out of order (``A, C, B, D``) are sorted, and letters that repeat or skip (``A, B, B, D``) are read by
    position as A, B, C, D; lists where fewer than half the lines (or one) carry a letter are bare
    texts, taken as they are."""
    if not isinstance(raw, list) or not all(isinstance(o, str) for o in raw):
        raise _fail(path, record, f"options must be a list of strings; got {raw!r}")
    texts = [o.strip() for o in raw if o.strip()]
    lettered = sum(1 for o in texts if _PREFIX.match(o))
    if lettered < 2 or 2 * lettered < len(texts):  # bare texts, one of which may start like "A.Lebrun"
        return tuple(texts)
    found: list[tuple[str, str]] = []
    for i, text in enumerate(texts):
        m = _PREFIX.match(text)
        if m is None:
            if not found:
                raise _fail(path, record, f"options[{i}] has no letter before the first lettered option: {text!r}")
            found[-1] = (found[-1][0], f"{found[-1][1]} {text}")
        else:
            found.append((m.group(1), text[m.end():].strip()))
    file_letters = "".join(letter for letter, _ in found)
    ordered = "".join(sorted(file_letters))
    if ordered == LETTERS[:len(found)]:
        out = [text for _, text in sorted(found)]
        if file_letters != ordered:
            log.warning("%s: %s: options lettered %s; put in letter order", path, record, ", ".join(file_letters))
    else:
        out = [text for _, text in found]
        log.warning("%s: %s: options lettered %s; read as %s by position", path, record, ", ".join(file_letters),
                    ", ".join(LETTERS[:len(found)]))
    return tuple(out)


def _choice_answer(path: Path, record: str, answer: object, options: tuple[str, ...]) -> str:
    allowed = letters(len(options))
    if not isinstance(answer, str) or answer.strip().upper() not in allowed:
        raise _fail(path, record, f"answer must be one of the option letters {', '.join(allowed)}; got {answer!r}")
    return answer.strip().upper()


def _task(path: Path, record: str, benchmark: str, raw: object, field: str) -> tuple[str, str, str]:
    if not isinstance(raw, str) or not raw.strip():
        raise _fail(path, record, f"{field} must be a task name; got {raw!r}")
    found = canonical_task(benchmark, raw)
    if found is None:
        raise _fail(path, record, f"{field} {raw!r} is not a task of {_NAMES[benchmark]} (see app/eval/tasks.py)")
    return found[0], found[1], raw


def _context_text(question: str, options: tuple[str, ...]) -> str:
    if not options:
        return question
    listed = ", ".join(f"{letter}. {text}" for letter, text in zip(letters(len(options)), options))
    return f"{question} Options: {listed}"


# ---------------------------------------------------------------- StreamingBench, GitHub JSON


def _sb_question(path: Path, record: str, item_id: str, video: str, q: object) -> EvalItem:
    task, group, raw_task = _task(path, record, "streamingbench", _field(path, record, q, "task_type", str, "a task name"),
                                  "task_type")
    question = str(_field(path, record, q, "question", str, "a non-empty string")).strip()
    t = _clock_field(path, record, q, "time_stamp")
    if "ground_truth_time_stamp" in q or task == "Proactive Output":
        gt_time = _clock_field(path, record, q, "ground_truth_time_stamp")
        output = _field(path, record, q, "ground_truth_output", (str, int, float), "the expected output text")
        return EvalItem(id=item_id, benchmark="streamingbench", task=task, group=group, video=video, t=t,
                        question=question, options=(), answer=str(output).strip(), kind="proactive",
                        gt_time=gt_time, raw_task=raw_task)
    if "options" not in q:
        raise _fail(path, record, "missing field 'options'")
    options = _options(path, record, q["options"])
    if len(options) < 2:
        raise _fail(path, record, f"options must hold at least 2 options; got {q['options']!r}")
    answer = _choice_answer(path, record, q.get("answer"), options)
    return EvalItem(id=item_id, benchmark="streamingbench", task=task, group=group, video=video, t=t,
                    question=question, options=options, answer=answer, kind="choice", raw_task=raw_task)


def _sb_entry(path: Path, record: str, item_id: str, entry: object) -> list[EvalItem]:
    video = str(_field(path, record, entry, "video_path", str, "a video path")).strip()
    questions = _field(path, record, entry, "questions", list, "a list of questions")
    return [_sb_question(path, f"{record}, question {j}", f"{item_id}/{j}", video, q) for j, q in enumerate(questions)]


def load_streamingbench_json(path: str | Path) -> list[EvalItem]:
    """StreamingBench's GitHub JSON (real, omni, proactive: a list of entries; SQA: a list of per-video
    lists of entries). Item ids are ``"{file stem}/{entry}/{question}"`` (SQA: ``"{stem}/{video}/{entry}/{question}"``).
    Sequential QA items get ``context``: every earlier question of the same video, with its options, and its
    ground-truth letter, as the official script feeds them.

    Raises:
        EvalFormatError: the file is not such a JSON file, or a record is malformed.
    """
    path = Path(path)
    data = _read_json(path)
    if not isinstance(data, list):
        raise _fail(path, "top level", f"must be a list of entries; got {type(data).__name__}")
    stem = path.stem
    items: list[EvalItem] = []
    for i, entry in enumerate(data):
        if isinstance(entry, list):  # questions_sqa.json: one list per video, questions in time order
            context: list[tuple[str, str]] = []
            for k, sub in enumerate(entry):
                for item in _sb_entry(path, f"video {i}, entry {k}", f"{stem}/{i}/{k}", sub):
                    item = _replace_context(item, tuple(context))
                    items.append(item)
                    if item.kind == "choice":
                        context.append((_context_text(item.question, item.options), item.answer))
        else:
            items.extend(_sb_entry(path, f"entry {i}", f"{stem}/{i}", entry))
    return items


def _replace_context(item: EvalItem, context: tuple[tuple[str, str], ...]) -> EvalItem:
    return replace(item, context=context) if context != item.context else item


# ---------------------------------------------------------------- StreamingBench, Hugging Face CSV

_CSV_REQUIRED = ("question_id", "task_type", "question", "time_stamp")
_HF_SAMPLE = re.compile(r".*?_(\d+)_\d+$")


def _csv_video(path: Path, record: str, row: dict) -> str:
    for column in ("video_path", "video_id", "video"):
        value = (row.get(column) or "").strip()
        if value:
            return value
    m = _HF_SAMPLE.fullmatch(row["question_id"].strip())
    if m is None:
        raise _fail(path, record, "no video_path or video_id column, and question_id "
                                  f"{row['question_id']!r} does not end in _<sample>_<n>")
    return f"sample_{m.group(1)}/video.mp4"


def load_streamingbench_csv(path: str | Path) -> list[EvalItem]:
    """StreamingBench's Hugging Face CSV. ``options`` is a Python-list string, read with
    :func:`ast.literal_eval` (never ``eval``). Item ids are the file's ``question_id``. Sequential QA rows get
    the earlier rows of the same video as ``context``; rows with ``ground_truth_time_stamp`` are proactive.

    Raises:
        EvalFormatError: a required column is missing or a row is malformed.
    """
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            columns = reader.fieldnames or []
            missing = [c for c in _CSV_REQUIRED if c not in columns]
            if missing:
                raise _fail(path, "header", f"missing column(s) {', '.join(missing)}; found {', '.join(columns) or 'none'}")
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise EvalFormatError(f"{path}: cannot read the CSV: {exc}") from None
    items: list[EvalItem] = []
    contexts: dict[str, list[tuple[str, str]]] = {}
    seen: set[str] = set()
    for n, row in enumerate(rows, start=2):
        record = f"line {n}"
        if None in row:
            raise _fail(path, record, "more cells than columns")
        qid = (row.get("question_id") or "").strip()
        if not qid:
            raise _fail(path, record, "question_id must be a non-empty string")
        if qid in seen:
            raise _fail(path, record, f"question_id {qid!r} appears twice")
        seen.add(qid)
        record = f"line {n} ({qid})"
        q: dict[str, object] = {k: (v.strip() if isinstance(v, str) else v) for k, v in row.items()}
        if q.get("ground_truth_time_stamp"):
            q.pop("options", None)
        else:
            q.pop("ground_truth_time_stamp", None)
            q.pop("ground_truth_output", None)
            text = q.get("options") or ""
            try:
                q["options"] = ast.literal_eval(text) if text else None
            except (ValueError, SyntaxError, MemoryError, RecursionError):
                raise _fail(path, record, f"options must be a Python list of strings; got {text[:80]!r}") from None
        video = _csv_video(path, record, row)
        item = _sb_question(path, record, qid, video, q)
        if item.task == "Sequential Question Answering":
            context = contexts.setdefault(video, [])
            item = _replace_context(item, tuple(context))
            context.append((_context_text(item.question, item.options), item.answer))
        items.append(item)
    return items


# ---------------------------------------------------------------- OVO-Bench


def load_ovo(path: str | Path) -> list[EvalItem]:
    """OVO-Bench's ``ovo_bench_new.json``.

    Backward-tracing and real-time items become one ``"choice"`` item each (``answer`` = the letter of
    ``gt``), id ``"ovo/{id}"``. Forward items become one item per ``test_info`` probe, id
    ``"ovo/{id}/{j}"``, asked at the probe's ``realtime``: REC -> ``"count"`` (answer the count, the
    official question ``"How many times did they {activity}?"``, evidence the item's start/end times),
    SSR -> ``"yesno"`` about the probe's ``step`` (evidence the step's own start/end), CRR -> ``"yesno"``:
    can the question be answered yet (answer ``"Yes"`` for ``type`` 1, ``"No"`` for 0).

    Raises:
        EvalFormatError: the file is not such a list, or a record is malformed.
    """
    path = Path(path)
    data = _read_json(path)
    if not isinstance(data, list):
        raise _fail(path, "top level", f"must be a list of items; got {type(data).__name__}")
    items: list[EvalItem] = []
    seen: set[str] = set()
    for i, entry in enumerate(data):
        record = f"item {i}"
        raw_id = _field(path, record, entry, "id", (int, str), "an id")
        record = f"item {i} (id {raw_id})"
        task, group, raw_task = _task(path, record, "ovo", _field(path, record, entry, "task", str, "a task code"), "task")
        video = str(_field(path, record, entry, "video", str, "a video path")).strip()
        base = f"ovo/{raw_id}"
        if base in seen:
            raise _fail(path, record, f"id {raw_id!r} appears twice")
        seen.add(base)
        if task in ("REC", "SSR", "CRR"):
            items.extend(_ovo_forward(path, record, base, task, group, raw_task, video, entry))
            continue
        question = str(_field(path, record, entry, "question", str, "a non-empty string")).strip()
        options = _options(path, record, _field(path, record, entry, "options", list, "a list of option texts"))
        if len(options) < 2:
            raise _fail(path, record, f"options must hold at least 2 options; got {entry['options']!r}")
        gt = _field(path, record, entry, "gt", int, "the index of the right option")
        if not 0 <= gt < len(options):
            raise _fail(path, record, f"gt must be an option index in [0, {len(options) - 1}]; got {gt!r}")
        items.append(EvalItem(id=base, benchmark="ovo", task=task, group=group, video=video,
                              t=_seconds_field(path, record, entry, "realtime"), question=question, options=options,
                              answer=LETTERS[gt], kind="choice", raw_task=raw_task))
    return items


def _ranges(path: Path, record: str, entry: dict, start: str, end: str) -> tuple[tuple[float, float], ...]:
    starts, ends = entry.get(start), entry.get(end)
    if starts is None and ends is None:
        return ()
    ok = (isinstance(starts, list) and isinstance(ends, list) and len(starts) == len(ends)
          and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in starts + ends))
    if not ok:
        raise _fail(path, record, f"{start} and {end} must be lists of seconds of one length; got {starts!r}, {ends!r}")
    return tuple((float(a), float(b)) for a, b in zip(starts, ends))


def _ovo_forward(path: Path, record: str, base: str, task: str, group: str, raw_task: str, video: str,
                 entry: dict) -> list[EvalItem]:
    probes = _field(path, record, entry, "test_info", list, "a list of probes")
    if task == "REC":
        activity = str(_field(path, record, entry, "activity", str, "the repeated activity")).strip()
        question = f"How many times did they {activity}?"
        evidence = _ranges(path, record, entry, "start_times", "end_times")
    elif task == "SSR":
        steps = entry.get("all_steps") if isinstance(entry.get("all_steps"), list) else []
        spans = _ranges(path, record, entry, "start_time", "end_time")
    else:
        asked = str(_field(path, record, entry, "question", str, "a non-empty string")).strip()
        question = f"{asked} Do the video's latest frames give enough information to answer this question?"
        evidence = ()
    items: list[EvalItem] = []
    for j, probe in enumerate(probes):
        where = f"{record}, test_info[{j}]"
        t = _seconds_field(path, where, probe, "realtime")
        if task == "REC":
            count = _field(path, where, probe, "count", int, "a count >= 0")
            if count < 0:
                raise _fail(path, where, f"count must be a count >= 0; got {count!r}")
            kind, answer = "count", str(count)
        else:
            kind = "yesno"
            kind_code = _field(path, where, probe, "type", int, "0 (No) or 1 (Yes)")
            if kind_code not in (0, 1):
                raise _fail(path, where, f"type must be 0 (No) or 1 (Yes); got {kind_code!r}")
            answer = "Yes" if kind_code == 1 else "No"
            if task == "SSR":
                step = str(_field(path, where, probe, "step", str, "the step text")).strip()
                question = f"Is the person in the video currently performing this step: {step}?"
                evidence = tuple(span for s, span in zip(steps, spans) if isinstance(s, str) and s.strip() == step)
        items.append(EvalItem(id=f"{base}/{j}", benchmark="ovo", task=task, group=group, video=video, t=t,
                              question=question, options=(), answer=answer, kind=kind, evidence=evidence,
                              raw_task=raw_task))
    return items


# ---------------------------------------------------------------- LiveSight JSONL

_JSONL_FIELDS = {"id", "video", "t", "question", "options", "answer", "task", "group", "kind", "evidence", "notes"}
_JSONL_KINDS = ("open", "yesno", "count")


def _jsonl_time(path: Path, record: str, value: object, field: str) -> float:
    from app.engine.timefmt import parse_time

    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value) or value < 0:
            raise _fail(path, record, f"{field} must be seconds >= 0 or a time like '00:01:05'; got {value!r}")
        return float(value)
    if isinstance(value, str):
        try:
            return parse_time(value)
        except ValueError:
            pass
    raise _fail(path, record, f"{field} must be seconds >= 0 or a time like '00:01:05'; got {value!r}")


def _jsonl_item(path: Path, record: str, n: int, obj: object) -> EvalItem:
    if not isinstance(obj, dict):
        raise _fail(path, record, f"must be a JSON object; got {type(obj).__name__}")
    unknown = sorted(set(obj) - _JSONL_FIELDS)
    if unknown:
        raise _fail(path, record, f"unknown field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(_JSONL_FIELDS))}")
    video = str(_field(path, record, obj, "video", str, "a video path")).strip()
    if "t" not in obj:
        raise _fail(path, record, "missing field 't'")
    t = _jsonl_time(path, record, obj["t"], "t")
    question = str(_field(path, record, obj, "question", str, "a non-empty string")).strip()
    if "answer" not in obj:
        raise _fail(path, record, "missing field 'answer'")
    raw_options = obj.get("options")
    options = () if raw_options is None else _options(path, record, raw_options)
    answer_raw = obj["answer"]
    if options:
        if len(options) < 2:
            raise _fail(path, record, f"options must hold at least 2 options; got {raw_options!r}")
        texts = {o.casefold(): letter for o, letter in zip(options, letters(len(options)))}
        if isinstance(answer_raw, str) and answer_raw.strip().casefold() in texts and len(answer_raw.strip()) > 1:
            answer_raw = texts[answer_raw.strip().casefold()]
        answer = _choice_answer(path, record, answer_raw, options)
        kind = "choice"
        if obj.get("kind", "choice") != "choice":
            raise _fail(path, record, f"kind must be choice (or absent) when options are given; got {obj['kind']!r}")
    else:
        if isinstance(answer_raw, bool) or not isinstance(answer_raw, (str, int, float)) or not str(answer_raw).strip():
            raise _fail(path, record, f"answer must be a non-empty text or number; got {answer_raw!r}")
        answer = str(answer_raw).strip()
        kind = obj.get("kind", "open")
        if kind not in _JSONL_KINDS:
            raise _fail(path, record, f"kind must be one of {', '.join(_JSONL_KINDS)} without options; got {kind!r}")
    task = obj.get("task", kind)
    if not isinstance(task, str) or not task.strip():
        raise _fail(path, record, f"task must be a non-empty string; got {task!r}")
    group = obj.get("group", JSONL_GROUP)
    if not isinstance(group, str) or not group.strip():
        raise _fail(path, record, f"group must be a non-empty string; got {group!r}")
    item_id = obj.get("id", f"jsonl/{n}")
    if isinstance(item_id, bool) or not isinstance(item_id, (str, int)) or not str(item_id).strip():
        raise _fail(path, record, f"id must be a non-empty string or integer; got {item_id!r}")
    evidence = []
    for k, span in enumerate(_list_field(path, record, obj, "evidence")):
        if not (isinstance(span, list) and len(span) == 2):
            raise _fail(path, record, f"evidence[{k}] must be [t0, t1]; got {span!r}")
        t0, t1 = (_jsonl_time(path, record, x, f"evidence[{k}]") for x in span)
        if t1 < t0:
            raise _fail(path, record, f"evidence[{k}] must have t0 <= t1; got {span!r}")
        evidence.append((t0, t1))
    notes = []
    for k, note in enumerate(_list_field(path, record, obj, "notes")):
        if not (isinstance(note, list) and len(note) == 2 and isinstance(note[1], str) and note[1].strip()):
            raise _fail(path, record, f"notes[{k}] must be [t, text]; got {note!r}")
        at = _jsonl_time(path, record, note[0], f"notes[{k}]")
        if at > t:
            raise _fail(path, record, f"notes[{k}] at {at:g} s comes after the question's t = {t:g} s")
        notes.append((at, note[1].strip()))
    return EvalItem(id=str(item_id).strip(), benchmark="jsonl", task=task.strip(), group=group.strip(), video=video,
                    t=t, question=question, options=options, answer=answer, kind=kind, evidence=tuple(evidence),
                    raw_task=task.strip(), notes=tuple(sorted(notes)))


def _list_field(path: Path, record: str, obj: dict, name: str) -> list:
    value = obj.get(name)
    if value is None:
        return []
    if not isinstance(value, list):
        raise _fail(path, record, f"{name} must be a list; got {value!r}")
    return value


def load_jsonl(path: str | Path) -> list[EvalItem]:
    """LiveSight's own JSONL: one JSON object per line (blank lines skipped). Fields: ``video``, ``t``
    (seconds or a time like ``"00:01:05"``), ``question``, ``answer``; optional ``options`` (list; the
    answer is then a letter or an option's full text), ``task`` (default ``"choice"`` / ``"open"``),
    ``group`` (default ``"LiveSight"``), ``kind`` (``open``, ``yesno`` or ``count`` for questions without
    options), ``id`` (default ``"jsonl/{line}"``), ``evidence`` (``[[t0, t1], ...]``) and ``notes``
    (``[[t, text], ...]``, timed text fed to the session before ``t``).

    Raises:
        EvalFormatError: naming the file and line number of a malformed line.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise EvalFormatError(f"{path}: cannot read: {exc}") from None
    items: list[EvalItem] = []
    seen: set[str] = set()
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        record = f"line {n}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise _fail(path, record, f"not valid JSON ({exc.msg} at column {exc.colno})") from None
        item = _jsonl_item(path, record, n, obj)
        if item.id in seen:
            raise _fail(path, record, f"id {item.id!r} appears twice")
        seen.add(item.id)
        items.append(item)
    return items


# ---------------------------------------------------------------- detection


def _read_json(path: Path) -> object:
    try:
        with path.open(encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as exc:
        raise EvalFormatError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise EvalFormatError(f"{path}: cannot read: {exc}") from None


def _json_kind(data: object) -> str | None:
    if not isinstance(data, list) or not data:
        return None
    first = data[0]
    if isinstance(first, list):
        first = first[0] if first else None
    if isinstance(first, dict) and "questions" in first and "video_path" in first:
        return "streamingbench"
    if isinstance(first, dict) and "task" in first and "video" in first:
        return "ovo"
    return None


def detect_format(path: str | Path) -> str:
    """``"streamingbench"`` (the GitHub JSON or the HF CSV), ``"ovo"`` (``ovo_bench_new.json``-shaped JSON)
    or ``"jsonl"``, from the file's name and first record.

    Raises:
        EvalFormatError: the file cannot be read or looks like none of them.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return "streamingbench"
    if suffix == ".jsonl":
        return "jsonl"
    try:
        with path.open(encoding="utf-8") as f:
            head = f.read(4096).lstrip()
    except (OSError, UnicodeDecodeError) as exc:
        raise EvalFormatError(f"{path}: cannot read: {exc}") from None
    if head.startswith("{"):
        return "jsonl"
    if head.startswith("["):
        kind = _json_kind(_read_json(path))
        if kind is not None:
            return kind
    if head.startswith("question_id") or "question_id," in head.split("\n", 1)[0]:
        return "streamingbench"
    raise EvalFormatError(f"{path}: not a StreamingBench, OVO-Bench or LiveSight JSONL file "
                          "(pass --format streamingbench|ovo|jsonl)")


def load_items(path: str | Path, format: str | None = None) -> list[EvalItem]:  # noqa: A002 - the CLI's name
    """Every question of one benchmark file, in file order.

    Args:
        path: the file.
        format: ``"streamingbench"``, ``"ovo"`` or ``"jsonl"``; None detects it (:func:`detect_format`).

    Raises:
        EvalFormatError: an unknown format, an unreadable file or a malformed record.
    """
    path = Path(path)
    if format is not None and format not in FORMATS:
        raise EvalFormatError(f"format must be one of {', '.join(FORMATS)}; got {format!r}")
    if not path.is_file():
        raise EvalFormatError(f"{path}: no such file")
    kind = format or detect_format(path)
    if kind == "streamingbench":
        with path.open("rb") as f:
            csv_like = path.suffix.lower() == ".csv" or not f.read(4096).lstrip().startswith(b"[")
        return load_streamingbench_csv(path) if csv_like else load_streamingbench_json(path)
    if kind == "ovo":
        return load_ovo(path)
    return load_jsonl(path)
