"""``livesight ask``: stream a source through a session and ask questions at given stream times.

Examples::

    livesight ask bikes.mp4 "What is happening?" --model tiny-smolvlm
    livesight ask cam.mp4 "Who came in?" "What did they carry?" --at 30s --at 1m05s
    livesight ask talk.mp4 "What was the password?" --memory ./talk-memory   # watch and save
    livesight ask --memory ./talk-memory "What was the password?"          # answer later, no video
    livesight ask talk.mp4 "What was the licence plate?" --asr tiny.en-offline  # hear the audio too

Speech (``--asr``): by default (``auto``) the source's audio is heard with the offline Whisper tiny.en
whenever the source has an audio track and that model is installed (transcription costs a fraction
of real time on one core, and what was said is half of what people ask about); ``--asr off`` turns it
off, ``--asr MODEL`` asks for a model (an error when it cannot be had). The segments enter the session
as they are transcribed (drained before each frame), all of them before a question is asked, so a
question at ``--at T`` hears everything said until T. An audio-only source runs with vision off.

When the default model cannot be loaded (no hub, not cached), ask falls back like ``livesight serve``:
to the real SmolLM2 text weights (``smolvlm2-256m-smollm2``) with speech on and vision off. The hub is
checked once, briefly, before loading (``--offline`` skips it); the notice is printed once.
``--memory DIR`` without ``--model`` loads the model that saved the memory (from its ``session.json``).

Saving (``--memory DIR`` with a SOURCE) is incremental: the memory is saved after the first frame and
then every ``--save-every`` seconds (chunks written, the manifest and ``session.json`` last, as the
commit point), and once more when the source ends or on Ctrl-C / SIGTERM; a second Ctrl-C stops at
once, keeping the last save. A memory saved part way through a live source reopens like a whole one.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from app.cli.args import add_asr_argument, add_model_arguments, add_session_arguments
from app.engine.speech.names import OFFLINE_MODEL

#: ``--asr`` default: speech on with the offline model when the source has audio and the model is installed.
ASR_AUTO = "auto"

#: ``--save-every`` default: wall-clock seconds between saves of a memory being watched.
SAVE_EVERY_S = 10.0

#: What a question gets when the session has seen, heard and read nothing (no answer is generated).
NOTHING_WATCHED = "nothing watched yet: the source gave no frames, speech or notes before this question"

logger = logging.getLogger(__name__)


def stream_time(text: str) -> float:
    """argparse type for ``--at`` and ``--text``: :func:`app.engine.timefmt.parse_time` with argparse's error."""
    from app.engine.timefmt import parse_time

    try:
        return parse_time(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_parser(sub) -> None:
    p = sub.add_parser(
        "ask",
        help="watch a source and answer questions about it",
        description="Stream SOURCE through a session and ask each QUESTION at its stream time (--at, in order; "
        "questions without --at are asked when the source ends). With --memory DIR and a SOURCE, the watched "
        "memory is saved to DIR; with --memory DIR and no SOURCE, questions are answered from that saved memory.",
    )
    p.add_argument("inputs", nargs="+", metavar="SOURCE|QUESTION",
                   help="SOURCE (file, URL, webcam:N) then one or more questions; only questions with --memory of a saved memory")
    p.add_argument("--at", action="append", type=stream_time, default=[], metavar="TIME",
                   help="stream time to ask the next question at (repeatable, in question order)")
    p.add_argument("--fps", type=float, default=1.0, help="frames per second of stream time fed to the model (default 1)")
    p.add_argument("--max-side", type=int, default=None, help="shrink frames so the longer side is at most this")
    p.add_argument("--realtime", action="store_true", help="play a file at wall-clock speed, as a live camera")
    p.add_argument("--memory", default=None, metavar="DIR", help="save the memory to DIR, or answer from a saved DIR")
    p.add_argument("--save-every", type=float, default=SAVE_EVERY_S, metavar="SECONDS",
                   help=f"with --memory and a SOURCE: save the memory every SECONDS of wall time while watching "
                        f"(default {SAVE_EVERY_S:g}; it is also saved when the source ends and on Ctrl-C or SIGTERM)")
    p.add_argument("--offline", action="store_true", help="do not try the network for model weights")
    p.add_argument("--text", action="append", default=[], metavar="TIME=TEXT",
                   help="a timed text event (note, subtitle) to add to the stream, e.g. --text '12s=The van is red'")
    p.add_argument("--stats", action="store_true", help="print session statistics at the end")
    add_asr_argument(p, default=ASR_AUTO, default_help="Default auto: the offline model when the source has audio "
                     "and the model is installed, else off")
    add_model_arguments(p)
    add_session_arguments(p)
    p.set_defaults(func=run)


@dataclass(frozen=True)
class TimedQuestion:
    text: str
    at: float | None  # None = when the source ends


def format_evidence(evidence) -> str:
    """One line of an answer's evidence: each moment's time range, what and where it is, and the video
    input it came from (``from file bikes.mp4``) when known; notes and speech are named by their kind."""
    from app.engine.timefmt import format_timestamp
    from streaming.labels import NOTE, SPEECH

    parts = []
    for e in evidence:
        span = format_timestamp(e.t_start)
        if e.t_start != e.t_end:
            span += f"-{format_timestamp(e.t_end)}"
        # a note's or speech's own label adds nothing to its kind: only video inputs are named
        origin = f" from {e.input_source}" if e.input_source and e.input_source not in (NOTE, SPEECH) else ""
        if e.source == "memory":
            what = f" \"{e.text}\"" if e.kind in ("text", "speech") and e.text else ""
            parts.append(f"{span} ({e.kind}{what}, memory, score {e.score:.2f}){origin}")
        else:
            parts.append(f"{span} (recent window){origin}")
    return "; ".join(parts) if parts else "(none)"


def _parse_texts(items: list[str]) -> list[tuple[float, str]]:
    out = []
    for item in items:
        if "=" not in item:
            raise argparse.ArgumentTypeError(f"--text needs TIME=TEXT, got {item!r}")
        t, text = item.split("=", 1)
        out.append((stream_time(t), text.strip()))
    return sorted(out)


def nothing_watched(stats: dict) -> bool:
    """Whether a session's stats say it has taken nothing to answer about (no frame, note, speech or memory)."""
    return not any(stats.get(k) for k in ("frames", "text_events", "speech_events", "bank_chunks"))


def ask_and_print(session, q: TimedQuestion, out=sys.stdout) -> None:
    from app.engine.timefmt import format_timestamp
    from app.engine.types import Answer, AnswerDelta

    stats = session.stats()
    stamp = format_timestamp(stats["stream_time_s"])
    out.write(f"[{stamp}] Q: {q.text}\nA: ")
    if nothing_watched(stats):
        out.write(f"({NOTHING_WATCHED})\n")
        out.flush()
        return
    out.flush()
    answer = None
    for ev in session.ask(q.text):
        if isinstance(ev, AnswerDelta):
            out.write(ev.text)
            out.flush()
        elif isinstance(ev, Answer):
            answer = ev
    out.write("\n")
    if answer is not None:
        out.write(f"   evidence: {format_evidence(answer.evidence)}\n")
        u = answer.usage
        out.write(f"   ({u['completion_tokens']} tokens, {u['retrieved_chunks']} chunks from memory, "
                  f"first token {u['first_token_s']} s, total {u['total_s']} s)\n")
    out.flush()


def _explicit_model(args: argparse.Namespace) -> bool:
    from app.engine.backends import registry

    return args.model != registry.default_model()


def _load_backend(args: argparse.Namespace, speech: bool, out):
    """-> ``(backend, vision)``: the model of ``--model``; the default model falls back like ``livesight serve``
    (to the real SmolLM2 text weights, vision off) when it cannot be had; a notice is printed then."""
    from app.cli.args import weight_quantization
    from app.engine.hub import hub_reachable
    from app.serving.process import is_hub_id, load_backend_with_fallback

    explicit = _explicit_model(args)
    if getattr(args, "offline", False):
        os.environ["HF_HUB_OFFLINE"] = "1"
    elif is_hub_id(args.model) and not os.environ.get("HF_HUB_OFFLINE") and not hub_reachable():
        # without a network the hub client retries for a long while; cached weights still load offline
        os.environ["HF_HUB_OFFLINE"] = "1"
    # the notice is printed here as a note; the loader's own log line would say it a second time
    quiet = None if getattr(args, "verbose", 0) else logging.getLogger("app.serving.process")
    level = quiet.level if quiet is not None else None
    if quiet is not None:
        quiet.setLevel(logging.ERROR)
    try:
        loaded = load_backend_with_fallback(args.model, device=args.device, dtype=args.dtype,
                                            quantization=weight_quantization(args),
                                            fallback=None if explicit else _fallback_model(), speech=speech)
    finally:
        if quiet is not None:
            quiet.setLevel(level)
    if loaded.notice:
        out.write(f"note: {loaded.notice}\n")
    elif loaded.backend.spec.random_weights:
        out.write(f"note: {loaded.backend.spec.name} has random weights: its answers are not meaningful\n")
    return loaded.backend, loaded.vision


def _looks_like_source(text: str) -> bool:
    """Whether a command-line input names a source (an existing path, a URL, a webcam) rather than a question."""
    from streaming.factory import is_webcam_spec
    from streaming.schemes import scheme_of

    if is_webcam_spec(text) or Path(text).exists() or (scheme_of(text) != "file" and "://" in text):
        return True
    # a path that is not there yet (a typo): still a source, so its own error names it; questions have words
    return not any(c.isspace() for c in text) and not text.endswith("?") and (bool(Path(text).suffix) or "/" in text)


def _memory_problem(memory: Path, inputs: list[str]) -> str | None:
    """Why ``--memory DIR`` (not a complete saved memory) cannot be used as asked, or None (watch and save)."""
    from app.engine.persistence import SESSION_FILE

    if memory.exists() and not memory.is_dir():
        return f"--memory {memory} is a file, not a directory"
    if memory.is_dir() and any(memory.iterdir()):
        if (memory / "manifest.json").exists() or (memory / "chunks").exists():
            return (f"{memory} holds an incomplete memory ({SESSION_FILE} is missing: the run saving it stopped "
                    "before its first save finished), so it cannot be reopened; give a new directory to save in")
        return f"{memory} exists and is not empty; give a new directory to save the memory in"
    if inputs and not _looks_like_source(inputs[0]):
        what = "does not exist" if not memory.exists() else "is empty"
        return (f"no saved memory to answer from: {memory} {what}, and {inputs[0]!r} is not a source (a file, URL "
                "or webcam:N); to save a memory, watch a source first: livesight ask SOURCE [QUESTION...] "
                f"--memory {memory}")
    return None


def _fallback_model() -> str:
    from app.serving.process import FALLBACK_MODEL

    return FALLBACK_MODEL


def _speech_config(args: argparse.Namespace, from_memory: bool):
    """-> ``(ASRConfig | None, auto)``; ``auto``: speech only if the source has audio and the offline model is there."""
    from app.cli.args import asr_config

    if from_memory:
        return None, False
    if args.asr == ASR_AUTO:
        from app.engine.speech.models import offline_model_dir

        return (asr_config(args, OFFLINE_MODEL) if offline_model_dir() is not None else None), True
    return asr_config(args), False


def run(args: argparse.Namespace) -> int:
    from app.cli.args import session_overrides
    from app.engine.backends.types import BackendError
    from app.engine.config import ConfigError, SessionConfig
    from app.engine.persistence import is_saved_memory
    from app.engine.session import Session
    from app.engine.speech.config import ASRError
    from app.engine.types import SessionError
    from memory.errors import BankError
    from streaming.errors import SourceError

    out = sys.stdout
    memory = Path(args.memory) if args.memory else None
    from_memory = memory is not None and is_saved_memory(memory)
    inputs = list(args.inputs)
    if memory is not None and not from_memory:
        problem = _memory_problem(memory, inputs)
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            return 2
    if not args.save_every > 0:
        print(f"error: --save-every must be a number of seconds above 0; got {args.save_every}", file=sys.stderr)
        return 2
    if from_memory and not _explicit_model(args):
        from app.engine.persistence import read_session_file

        try:
            saved_model = read_session_file(memory).model
        except SessionError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        if saved_model:
            args.model = saved_model  # the model whose KV the memory holds
    source = None if from_memory else inputs.pop(0)
    if not inputs and not memory:
        print("error: give at least one question after SOURCE", file=sys.stderr)
        return 2
    if from_memory and args.at:
        print("error: --at needs a SOURCE; answering from a saved memory asks every question at once", file=sys.stderr)
        return 2
    if len(args.at) > len(inputs):
        print(f"error: {len(args.at)} --at times for {len(inputs)} question(s)", file=sys.stderr)
        return 2
    questions = [TimedQuestion(q, args.at[i] if i < len(args.at) else None) for i, q in enumerate(inputs)]
    try:
        texts = _parse_texts(args.text)
        overrides = session_overrides(args)
        if memory is not None and not from_memory:
            overrides.update(memory_dir=str(memory), persist=True)
        config = SessionConfig(**overrides)
        asr, asr_auto = _speech_config(args, from_memory)
    except (ConfigError, argparse.ArgumentTypeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        if asr is not None and not asr_auto:
            from app.engine.speech.models import load_model

            load_model(asr)  # an unavailable speech model fails before the (slow) video model loads
        backend, vision = _load_backend(args, asr is not None, out)
    except (BackendError, ASRError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not vision and "vision" not in overrides:
        config = config.updated(vision=False)
    try:
        if from_memory:
            try:
                session = Session.open_memory(backend, memory, config)
            except BankError as exc:
                print(f"error: the saved memory in {memory} cannot be read: {exc}", file=sys.stderr)
                return 2
            out.write(f"memory: {memory} ({len(session.bank)} chunks, up to {session.stats()['stream_time_s']:.1f} s)\n")
            recovered = session.bank.recovered
            if recovered:
                moved = recovered["damaged_manifest"]
                out.write(f"note: the memory's manifest was damaged ({recovered['reason']}); {recovered['chunks']} chunks "
                          f"were recovered from their files, {len(recovered['unreadable'])} unreadable files were left "
                          "in place" + (f", the damaged manifest is kept as {moved}" if moved else "") + "\n")
            with session:
                for q in questions:
                    ask_and_print(session, q, out)
            return 0
        return _watch_and_ask(backend, config, source, questions, texts, args, out, asr, asr_auto)
    except (SourceError, SessionError, BackendError, ASRError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


class _Timeline:
    """Puts notes, speech segments and questions into the session in stream order, between frames.

    Speech arrives late (a pause after it was said): :meth:`hear` holds segments until :meth:`until` lets
    through everything due before a stream time. A question waits for the transcriber to finish all the
    audio heard so far (``flush``), so it hears what was said before it and nothing said after it.
    """

    def __init__(self, session, texts, pending, out, transcriber=None):
        self.session = session
        self.texts = list(texts)
        self.pending = list(pending)
        self.out = out
        self.transcriber = transcriber
        self.heard: list = []
        self._flushed_for = None

    def hear(self, segments) -> None:
        if segments:
            self.heard = sorted([*self.heard, *segments], key=lambda s: s.t_start)

    def until(self, t: float) -> None:
        """Everything due before stream time ``t``, in order: notes and speech at or before it, questions
        asked before it."""
        while True:
            due = []
            if self.texts and self.texts[0][0] <= t:
                due.append((self.texts[0][0], 0, "text"))
            if self.heard and self.heard[0].t_start <= t:
                due.append((self.heard[0].t_start, 1, "speech"))
            if self.pending and self.pending[0].at < t:
                due.append((self.pending[0].at, 2, "ask"))
            if not due:
                return
            _, _, kind = min(due)
            if kind == "text":
                self.session.ingest_text(*self.texts.pop(0))
            elif kind == "speech":
                seg = self.heard.pop(0)
                self.session.ingest_speech(seg.t_start, seg.t_end, seg.text)
            elif self.transcriber is not None and self._flushed_for is not self.pending[0]:
                self._flushed_for = self.pending[0]
                self.hear(self.transcriber.flush())  # then look again: it may have brought earlier speech
            else:
                ask_and_print(self.session, self.pending.pop(0), self.out)

    def finish(self) -> None:
        if self.transcriber is not None:
            self.hear(self.transcriber.flush(timeout_s=max(60.0, self.session.stats()["stream_time_s"])))
        self.until(float("inf"))


class Interrupted(Exception):
    """Ctrl-C or SIGTERM while ``livesight ask`` watched a source."""


class _StopRequests:
    """SIGINT and SIGTERM while watching: the first asks the loop to stop after the frame in hand (or
    at once while it waits for the source's next frame), so the memory is saved whole; a second one
    stops at once (the last save stays)."""

    def __init__(self) -> None:
        self.requested: str | None = None
        self.waiting = False
        self._previous: dict[int, object] = {}

    def __enter__(self) -> _StopRequests:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.requested is not None:
            raise KeyboardInterrupt  # the second one: stop now
        self.requested = name
        if self.waiting:
            raise Interrupted(name)

    def next_frame(self, frames):
        """The next frame of the iterator ``frames`` (None at its end); a stop request meanwhile raises
        :class:`Interrupted`."""
        if self.requested:
            raise Interrupted(self.requested)
        self.waiting = True
        try:
            return next(frames, None)
        finally:
            self.waiting = False


class _Saver:
    """Saves the memory of a session being watched: after the first frame (so the directory reopens from
    then on), then after the first frame that comes ``every_s`` seconds of wall time after the last save,
    and when asked (:meth:`now`). Each save writes the new chunks, then the manifest and ``session.json``."""

    def __init__(self, session, every_s: float, out) -> None:
        self.session = session
        self.every_s = every_s
        self.out = out
        self.last: float | None = None
        self.saves = 0

    def maybe(self) -> None:
        if self.last is None or time.monotonic() - self.last >= self.every_s:
            self.now()

    def now(self):
        path = self.session.save()
        self.last = time.monotonic()
        self.saves += 1
        logger.info("memory saved to %s (%d chunks)", path, len(self.session.bank))
        return path


def _late_questions(questions, duration_s: float | None) -> list:
    """The ``--at`` times after the end of a source of known duration."""
    if not duration_s:
        return []
    return [q for q in questions if q.at is not None and q.at > duration_s]


def _watch_and_ask(backend, config, source, questions, texts, args, out, asr=None, asr_auto=False) -> int:
    from app.engine.session import Session
    from app.engine.speech.transcriber import Transcriber
    from app.engine.timefmt import format_timestamp
    from streaming import Sampler, SamplerConfig, open_source
    from streaming.labels import source_label

    src = open_source(source, realtime=args.realtime, audio=asr is not None)
    info = src.info
    late = _late_questions(questions, getattr(info, "duration_s", None))
    if late:
        src.close()
        times = ", ".join(format_timestamp(q.at) for q in late)
        print(f"error: --at {times} is after the end of {source} ({format_timestamp(info.duration_s)}); "
              "give times within the source, or no --at to ask when it ends", file=sys.stderr)
        return 2
    if asr is not None and not getattr(info, "has_audio", False):
        if not asr_auto:
            out.write(f"note: {source} has no audio track: nothing to hear\n")
        asr = None
    if not getattr(info, "has_video", True) and config.vision:
        config = config.updated(vision=False)  # audio only: nothing to see
    transcriber = Transcriber(asr, name="ask") if asr is not None else None
    if transcriber is not None:
        src.on_audio(transcriber.feed)
    at_end = [q for q in questions if q.at is None]
    sampling = SamplerConfig(fps=args.fps or None, max_side=args.max_side)
    stops = _StopRequests()
    try:
        with Session(backend, config) as session, Sampler(src, sampling) as sampler, stops:
            session.set_input_source(source_label(source))  # evidence names where each moment was seen
            saver = _Saver(session, args.save_every, out) if config.memory_dir is not None else None
            timeline = _Timeline(session, texts, [q for q in questions if q.at is not None], out, transcriber)
            out.write(_describe_source(source, sampler.info, asr, config.vision) + "\n")
            out.flush()
            frames = iter(sampler)
            try:
                while (frame := stops.next_frame(frames)) is not None:
                    if transcriber is not None:
                        timeline.hear(transcriber.poll())
                    timeline.until(frame.pts)
                    session.ingest(frame)
                    if saver is not None:
                        saver.maybe()
            except Interrupted as exc:
                st = session.stats()
                out.write(f"\nstopped ({exc}) at {format_timestamp(st['stream_time_s'])} after {st['frames']} frames\n")
                if saver is not None:
                    out.write(f"memory saved to {saver.now()} ({len(session.bank)} chunks)\n")
                out.flush()
                return 130
            timeline.finish()
            stream_end = session.stats()["stream_time_s"]
            for q in questions:
                if q.at is not None and q.at > stream_end and q not in at_end:
                    out.write(f"note: --at {format_timestamp(q.at)} is after the stream ended "
                              f"({format_timestamp(stream_end)}): asked at the end\n")
            for q in at_end:
                ask_and_print(session, q, out)
            st = session.stats()
            ing = sampler.stats()
            seen = "vision off" if not config.vision else f"kept {st['kept_ratio']:.0%} of visual tokens"
            out.write(f"watched {st['frames']} frames ({st['stream_time_s']:.1f} s), {seen}, "
                      f"{st['bank_chunks']} memory chunks; decoded {ing.decoded}, dropped {ing.dropped}, decode "
                      f"errors {ing.decode_errors}\n")
            if transcriber is not None:
                a = transcriber.stats()
                out.write(f"heard {st['speech_events']} speech segments ({a['speech_s']:.1f} s of speech in "
                          f"{a['audio_s']:.1f} s of audio, real-time factor {a['rtf']:.2f}, dropped "
                          f"{a['dropped_s']:.1f} s)\n")
            if args.stats:
                for k, v in st.items():
                    out.write(f"  {k}: {v}\n")
                if transcriber is not None:
                    for k, v in transcriber.stats().items():
                        out.write(f"  asr.{k}: {v}\n")
            if saver is not None:
                out.write(f"memory saved to {saver.now()}\n")
    finally:
        if transcriber is not None:
            transcriber.close()
    return 0


def _describe_source(source: str, info, asr, vision: bool) -> str:
    parts = []
    if getattr(info, "has_video", True) and info.width:
        parts.append(f"{info.width}x{info.height}, {info.codec}")
    else:
        parts.append("audio only")
    if getattr(info, "duration_s", None):
        parts.append(f"{info.duration_s:.1f} s")
    parts.append(f"speech: {asr.model}" if asr is not None else "speech off")
    if not vision:
        parts.append("vision off")
    return f"source: {source} ({', '.join(parts)})"
