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
to the real SmolLM2 text weights (``smolvlm2-256m-smollm2``) with speech on and vision off.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from app.cli.args import add_asr_argument, add_model_arguments, add_session_arguments
from app.engine.speech.names import OFFLINE_MODEL

#: ``--asr`` default: speech on with the offline model when the source has audio and the model is installed.
ASR_AUTO = "auto"


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
    from app.engine.timefmt import format_timestamp

    parts = []
    for e in evidence:
        span = format_timestamp(e.t_start)
        if e.t_start != e.t_end:
            span += f"-{format_timestamp(e.t_end)}"
        if e.source == "memory":
            what = f" \"{e.text}\"" if e.kind in ("text", "speech") and e.text else ""
            parts.append(f"{span} ({e.kind}{what}, memory, score {e.score:.2f})")
        else:
            parts.append(f"{span} (recent window)")
    return "; ".join(parts) if parts else "(none)"


def _parse_texts(items: list[str]) -> list[tuple[float, str]]:
    out = []
    for item in items:
        if "=" not in item:
            raise argparse.ArgumentTypeError(f"--text needs TIME=TEXT, got {item!r}")
        t, text = item.split("=", 1)
        out.append((stream_time(t), text.strip()))
    return sorted(out)


def ask_and_print(session, q: TimedQuestion, out=sys.stdout) -> None:
    from app.engine.timefmt import format_timestamp
    from app.engine.types import Answer, AnswerDelta

    stamp = format_timestamp(session.stats()["stream_time_s"])
    out.write(f"[{stamp}] Q: {q.text}\nA: ")
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
    if is_hub_id(args.model) and not os.environ.get("HF_HUB_OFFLINE") and not hub_reachable():
        # without a network the hub client retries for a long while; cached weights still load offline
        os.environ["HF_HUB_OFFLINE"] = "1"
    loaded = load_backend_with_fallback(args.model, device=args.device, dtype=args.dtype,
                                        quantization=weight_quantization(args),
                                        fallback=None if explicit else _fallback_model(), speech=speech)
    if loaded.notice:
        out.write(f"note: {loaded.notice}\n")
    return loaded.backend, loaded.vision


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
    from streaming.errors import SourceError

    out = sys.stdout
    memory = Path(args.memory) if args.memory else None
    from_memory = memory is not None and is_saved_memory(memory)
    inputs = list(args.inputs)
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
            if memory.exists() and any(memory.iterdir()):
                print(f"error: {memory} exists and is not empty; give a new directory to save the memory in", file=sys.stderr)
                return 2
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
    if backend.spec.random_weights:
        out.write(f"note: {backend.spec.name} has random weights: its answers are not meaningful\n")
    try:
        if from_memory:
            session = Session.open_memory(backend, memory, config)
            out.write(f"memory: {memory} ({len(session.bank)} chunks, up to {session.stats()['stream_time_s']:.1f} s)\n")
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


def _watch_and_ask(backend, config, source, questions, texts, args, out, asr=None, asr_auto=False) -> int:
    from app.engine.session import Session
    from app.engine.speech.transcriber import Transcriber
    from streaming import Sampler, SamplerConfig, open_source

    src = open_source(source, realtime=args.realtime, audio=asr is not None)
    info = src.info
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
    try:
        with Session(backend, config) as session, Sampler(src, sampling) as sampler:
            timeline = _Timeline(session, texts, [q for q in questions if q.at is not None], out, transcriber)
            out.write(_describe_source(source, sampler.info, asr, config.vision) + "\n")
            out.flush()
            for frame in sampler:
                if transcriber is not None:
                    timeline.hear(transcriber.poll())
                timeline.until(frame.pts)
                session.ingest(frame)
            timeline.finish()
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
            if config.memory_dir is not None:
                path = session.save()
                out.write(f"memory saved to {path}\n")
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
