"""``livesight ask``: stream a source through a session and ask questions at given stream times.

Examples::

    livesight ask bikes.mp4 "What is happening?" --model tiny-smolvlm
    livesight ask cam.mp4 "Who came in?" "What did they carry?" --at 30s --at 1m05s
    livesight ask talk.mp4 "What was the password?" --memory ./talk-memory   # watch and save
    livesight ask --memory ./talk-memory "What was the password?"          # answer later, no video
"""

from __future__ import annotations

import argparse
import re

from .session_args import add_model_arguments, add_session_arguments


def parse_time(text: str) -> float:
    """``"30"``, ``"30s"``, ``"1m05s"``, ``"1h2m"``, ``"01:05"`` or ``"1:02:03"`` -> seconds."""
    t = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", t):
        return float(t)
    if re.fullmatch(r"\d+(:\d{1,2}){1,2}(\.\d+)?", t):
        parts = [float(x) for x in t.split(":")]
        total = 0.0
        for p in parts:
            total = total * 60 + p
        return total
    m = re.fullmatch(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?", t)
    if not t or not m or not any(m.groups()):
        raise argparse.ArgumentTypeError(f"not a stream time: {text!r} (use 30, 30s, 1m05s, 1h2m or 01:05)")
    h, mi, s = (float(g) if g else 0.0 for g in m.groups())
    return h * 3600 + mi * 60 + s


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
    p.add_argument("--at", action="append", type=parse_time, default=[], metavar="TIME",
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


def run(args: argparse.Namespace) -> int:
    from app.ask_runner import run_ask

    return run_ask(args)
