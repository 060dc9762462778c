"""``livesight probe SOURCE``: open a source, print its facts, watch it ingest, summarise.

Prints the stream's facts (codec, size, rate, duration when known), then a progress line
(frames, fps, drops, lag) that refreshes in place on a terminal and is printed as plain
periodic lines otherwise, until the source ends, ``--duration``/``--max-frames`` is reached
or Ctrl-C; then a summary. A source error prints one line on stderr and exits 1.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any, TextIO


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "probe",
        help="open a video source and report what it delivers",
        description="Open a video source (file, URL, webcam:N), print its facts and watch frames arrive.",
    )
    parser.add_argument("source", metavar="SOURCE",
                        help="a file path, file: URL, rtsp/rtsps/rtmp/http(s) URL, webcam:N or /dev/videoN")
    parser.add_argument("--fps", type=float, default=None, help="sample at this rate by timestamp (default: all frames)")
    parser.add_argument("--max-side", type=int, default=None, help="shrink frames so the longer side is at most this")
    parser.add_argument("--realtime", action="store_true", help="play a file at wall-clock speed, as a live camera")
    parser.add_argument("--speed", type=float, default=1.0, help="playback speed with --realtime (default 1.0)")
    parser.add_argument("--queue-size", type=int, default=4, help="newest-wins hand-off queue bound for live sources")
    parser.add_argument("--open-timeout", type=float, default=10.0, help="seconds to open the source (default 10)")
    parser.add_argument("--read-timeout", type=float, default=10.0, help="seconds to wait for data (default 10)")
    parser.add_argument("--no-reconnect", action="store_true", help="URLs: stop at the first outage")
    parser.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    parser.add_argument("--max-frames", type=int, default=None, help="stop after this many delivered frames")
    parser.add_argument("--interval", type=float, default=None,
                        help="seconds between progress updates (default 0.25 on a terminal, 2 otherwise)")
    parser.set_defaults(func=run)
    return parser


def _fmt(value: float | None, unit: str, digits: int = 2) -> str:
    return "unknown" if value is None else f"{value:.{digits}f} {unit}"


def _audio(info: Any) -> str:
    """``yes (aac, 44100 Hz)`` or ``no``: probe reports the track; it does not decode it."""
    if not info.has_audio:
        return "no"
    details = ", ".join(x for x in (getattr(info, "audio_codec", None),
                                     f"{info.audio_rate} Hz" if getattr(info, "audio_rate", None) else None) if x)
    return f"yes ({details})" if details else "yes"


def facts_lines(info: Any, config: Any) -> list[str]:
    """The stream's facts as aligned ``key value`` lines."""
    sampling = "all frames" if config.keep_all else f"{config.fps:g} fps by timestamp"
    sampling += ", full size" if config.max_side is None else f", longer side <= {config.max_side}"
    rows = [
        ("source", info.source),
        ("kind", info.kind + (" (live)" if info.live else "")),
        ("container", info.container or "unknown"),
        ("codec", info.codec or "unknown"),
        ("size", info.size or "unknown"),
        ("rate", _fmt(info.fps, "fps")),
        ("duration", _fmt(info.duration_s, "s")),
        ("frames", "unknown" if info.frame_count is None else str(info.frame_count)),
        ("audio", _audio(info)),
        ("sampling", sampling),
    ]
    return [f"{key:<10}{value}" for key, value in rows]


def progress_line(stats: Any) -> str:
    """One short line: frames, rate, drops, lag, errors (and outages when there are any)."""
    line = (f"frames {stats.delivered} | decoded {stats.decoded} | {stats.fps:5.1f} fps | "
            f"dropped {stats.dropped} | lag {stats.lag_s:.2f} s | errors {stats.decode_errors}")
    if stats.gaps or stats.reconnecting:
        line += f" | gaps {len(stats.gaps)}"
    if stats.reconnecting:
        line += " | reconnecting"
    return line


def summary_lines(stats: Any, size: str | None, stopped: str) -> list[str]:
    rate = stats.delivered / stats.elapsed_s if stats.elapsed_s > 0 else 0.0
    gap_total = sum(g.duration_s for g in stats.gaps)
    rows = [
        ("result", stopped),
        ("decoded", f"{stats.decoded} frames ({stats.decode_errors} decode errors, "
                    f"{stats.corrupt_frames} concealed)"),
        ("sampled", str(stats.sampled)),
        ("delivered", str(stats.delivered)),
        ("dropped", str(stats.dropped)),
        ("gaps", f"{len(stats.gaps)} ({gap_total:.1f} s, {stats.reconnects} reconnects)"),
        ("output", size or "no frames"),
        ("elapsed", f"{stats.elapsed_s:.2f} s ({rate:.1f} frames/s)"),
    ]
    return [f"{key:<10}{value}" for key, value in rows]


class Progress:
    """Writes progress lines: in place (``\\r``) on a terminal, one per interval otherwise."""

    def __init__(self, out: TextIO, interval: float | None) -> None:
        self.out = out
        self.tty = bool(getattr(out, "isatty", lambda: False)())
        self.interval = interval if interval is not None else (0.25 if self.tty else 2.0)
        self._next = time.monotonic() + self.interval
        self._shown = False

    def due(self) -> float:
        return max(0.0, self._next - time.monotonic())

    def maybe(self, stats_fn: Any) -> None:
        if time.monotonic() >= self._next:
            self.show(stats_fn())
            self._next = time.monotonic() + self.interval

    def show(self, stats: Any) -> None:
        line = progress_line(stats)
        if self.tty:
            self.out.write("\r" + line + "\x1b[K")
        else:
            self.out.write(line + "\n")
        self.out.flush()
        self._shown = True

    def finish(self) -> None:
        if self.tty and self._shown:
            self.out.write("\n")
            self.out.flush()


def run(args: argparse.Namespace) -> int:
    from streaming.errors import SourceError
    from streaming.factory import open_source
    from streaming.sampler import Sampler, SamplerConfig
    from streaming.url_source import URLSource

    out = sys.stdout
    try:
        config = SamplerConfig(fps=args.fps, max_side=args.max_side, queue_size=args.queue_size)
        options: dict[str, Any] = {}
        if args.realtime:
            options["speed"] = args.speed
        source = open_source(args.source, allow_files=True, realtime=args.realtime,
                             open_timeout_s=args.open_timeout, read_timeout_s=args.read_timeout, **options)
    except SourceError as exc:
        print(f"livesight probe: {exc}", file=sys.stderr)
        return 1
    except (ValueError, TypeError) as exc:
        print(f"livesight probe: {exc}", file=sys.stderr)
        return 2
    if args.no_reconnect and isinstance(source, URLSource):
        source.reconnect = False

    for line in facts_lines(source.info, config):
        print(line, file=out)
    out.flush()

    sampler = Sampler(source, config)
    progress = Progress(out, args.interval)
    deadline = None if args.duration is None else time.monotonic() + args.duration
    size: str | None = None
    stopped = "end of stream"
    error: BaseException | None = None
    try:
        while True:
            wait = progress.due()
            if deadline is not None:
                wait = min(wait, max(0.0, deadline - time.monotonic()))
            frame = sampler.poll(timeout=wait)
            if frame is not None:
                size = f"{frame.width}x{frame.height}"
            elif sampler.finished:
                break
            progress.maybe(sampler.stats)
            if deadline is not None and time.monotonic() >= deadline:
                stopped = f"stopped after {args.duration:g} s"
                break
            if args.max_frames is not None and sampler.stats().delivered >= args.max_frames:
                stopped = f"stopped after {args.max_frames} frames"
                break
    except KeyboardInterrupt:
        stopped = "stopped by Ctrl-C"
    except SourceError as exc:
        stopped = "failed"
        error = exc
    finally:
        sampler.close()
    progress.show(sampler.stats())
    progress.finish()
    for line in summary_lines(sampler.stats(), size, stopped):
        print(line, file=out)
    if error is not None:
        print(f"livesight probe: {error}", file=sys.stderr)
        return 1
    return 0
