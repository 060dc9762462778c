"""``livesight ask``: stream a source through a session and ask questions at given stream times.

Examples::

    livesight ask bikes.mp4 "What is happening?" --model tiny-smolvlm
    livesight ask cam.mp4 "Who came in?" "What did they carry?" --at 30s --at 1m05s
    livesight ask talk.mp4 "What was the password?" --memory ./talk-memory   # watch and save
    livesight ask --memory ./talk-memory "What was the password?"          # answer later, no video
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from app.cli.args import add_model_arguments, add_session_arguments


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
            what = f" \"{e.text}\"" if e.kind == "text" and e.text else ""
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


def run(args: argparse.Namespace) -> int:
    from app.cli.args import load_backend_from_args, session_overrides
    from app.engine.backends.types import BackendError
    from app.engine.config import ConfigError, SessionConfig
    from app.engine.persistence import is_saved_memory
    from app.engine.session import Session
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
    except (ConfigError, argparse.ArgumentTypeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        backend = load_backend_from_args(args)
    except BackendError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
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
        return _watch_and_ask(backend, config, source, questions, texts, args, out)
    except (SourceError, SessionError, BackendError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _watch_and_ask(backend, config, source, questions, texts, args, out) -> int:
    from app.engine.session import Session
    from streaming import Sampler, SamplerConfig, open_source

    src = open_source(source, realtime=args.realtime)
    pending = [q for q in questions if q.at is not None]
    at_end = [q for q in questions if q.at is None]
    texts = list(texts)
    sampling = SamplerConfig(fps=args.fps or None, max_side=args.max_side)
    with Session(backend, config) as session, Sampler(src, sampling) as sampler:
        info = sampler.info
        out.write(f"source: {source} ({info.width}x{info.height}, {info.codec}"
                  + (f", {info.duration_s:.1f} s" if getattr(info, "duration_s", None) else "") + ")\n")
        out.flush()
        for frame in sampler:
            while texts and texts[0][0] <= frame.pts:
                session.ingest_text(*texts.pop(0))
            while pending and pending[0].at < frame.pts:
                ask_and_print(session, pending.pop(0), out)
            session.ingest(frame)
        for t in texts:
            session.ingest_text(*t)
        for q in pending + at_end:
            ask_and_print(session, q, out)
        st = session.stats()
        ing = sampler.stats()
        out.write(f"watched {st['frames']} frames ({st['stream_time_s']:.1f} s), kept {st['kept_ratio']:.0%} of visual tokens, "
                  f"{st['bank_chunks']} memory chunks; decoded {ing.decoded}, dropped {ing.dropped}, decode "
                  f"errors {ing.decode_errors}\n")
        if args.stats:
            for k, v in st.items():
                out.write(f"  {k}: {v}\n")
        if config.memory_dir is not None:
            path = session.save()
            out.write(f"memory saved to {path}\n")
    return 0
