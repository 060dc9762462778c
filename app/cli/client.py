"""``livesight client SOURCE``: stream a file or camera to a running server and ask from the terminal.

Frames are sampled locally (``--fps``), JPEG-encoded and sent as binary messages; when the server
has speech on, the source's sound goes too (16 kHz PCM16 binary audio messages, on the frames' clock;
``--no-audio`` keeps it back) and what the server hears is printed. Each line read from stdin is a
question whose answer streams back with its evidence; alerts and statistics are printed as they
come. Works with piped stdin: it exits after the last answer once stdin ends.

Examples::

    livesight client bikes.mp4 --fps 2
    printf 'What is happening?\\n' | livesight client cam.mp4 --ask-after 5
    livesight client rtsp://cam.local/stream --url ws://server:8765 --token "$TOKEN" --watch "a person enters"
"""

from __future__ import annotations

import argparse
import os


def add_parser(sub) -> None:
    p = sub.add_parser(
        "client",
        help="stream a file or camera to a running server and ask questions",
        description="Stream SOURCE (file, URL, webcam:N) to a running `livesight serve`, print alerts and "
        "statistics, and answer each line read from stdin as a question. Exits after the last answer when "
        "stdin ends (pipe questions in), or on Ctrl-C.",
    )
    p.add_argument("source", metavar="SOURCE", help="a file path, URL (rtsp/http...), webcam:N or /dev/videoN")
    p.add_argument("--url", default="ws://127.0.0.1:8765", help="the server's websocket URL (default ws://127.0.0.1:8765)")
    p.add_argument("--token", default=os.environ.get("LIVESIGHT_TOKEN"), help="bearer token (default: $LIVESIGHT_TOKEN)")
    p.add_argument("--fps", type=float, default=2.0, help="frames per second of stream time sent (default 2)")
    p.add_argument("--max-side", type=int, default=640, help="shrink frames so the longer side is at most this (default 640)")
    p.add_argument("--quality", type=int, default=85, help="JPEG quality 1-100 (default 85)")
    p.add_argument("--fast", action="store_true",
                   help="send a file as fast as it decodes instead of at its own speed (the server drops what it cannot take)")
    p.add_argument("--ask-after", type=float, default=0.0, metavar="SECONDS",
                   help="wait until this much stream time has been sent before the first question (default 0: "
                        "after the first frame)")
    p.add_argument("--watch", action="append", default=[], metavar="RULE", help="a watch rule to register (repeatable)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="answer length limit")
    p.add_argument("--stats-every", type=float, default=5.0, metavar="SECONDS",
                   help="print a statistics line at most this often (0: never; default 5)")
    p.add_argument("--thumbnails", action="store_true", help="ask for evidence thumbnails (counted, not shown)")
    p.add_argument("--no-audio", action="store_true",
                   help="do not send the source's sound (by default it is sent when the server has speech on)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import asyncio
    import sys

    if args.fps <= 0 or args.fps > 1000:
        print(f"error: --fps must be in (0, 1000]; got {args.fps}", file=sys.stderr)
        return 2
    if not 1 <= args.quality <= 100:
        print(f"error: --quality must be in [1, 100]; got {args.quality}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(client_main(args, sys.stdin, sys.stdout, sys.stderr))
    except KeyboardInterrupt:
        return 130


def format_evidence(evidence: list) -> str:
    """One line for the evidence dicts of a ``response.done``."""
    from app.engine.timefmt import format_timestamp

    parts = []
    for e in evidence:
        t0, t1 = e.get("t_start", 0.0), e.get("t_end", 0.0)
        span = format_timestamp(t0) if t0 == t1 else f"{format_timestamp(t0)}-{format_timestamp(t1)}"
        what = f' "{e["text"]}"' if e.get("kind") in ("text", "speech") and e.get("text") else ""
        if e.get("source") == "memory":
            score = e.get("score")
            parts.append(f"{span} ({e.get('kind')}{what}, memory" + (f", score {score:.2f})" if score is not None else ")"))
        elif e.get("kind") == "speech":
            parts.append(f"{span} (speech{what}, recent window)")
        else:
            parts.append(f"{span} (recent window)")
    return "; ".join(parts) if parts else "(none)"


def format_stats(stats: dict) -> str:
    """One statistics line from an ``input_video.stats`` payload."""
    ing = stats.get("ingest", {})
    dropped = ing.get("dropped", {})
    mem = stats.get("memory_bytes", {})
    audio = stats.get("audio") or {}
    heard = (f", heard {audio.get('audio_s', 0.0):.0f} s ({audio.get('committed', 0)} segments, "
             f"speech lag {audio.get('lag_s', 0.0):.1f} s)") if audio.get("speech") and audio.get("started") else ""
    return (f"[stats] frames {ing.get('frames_processed', 0)}/{ing.get('frames_submitted', 0)} processed, "
            f"{ing.get('fps', 0.0):.1f} fps, lag {ing.get('lag_s', 0.0):.2f} s, dropped {ing.get('dropped_total', 0)} "
            f"(backlog {dropped.get('backlog', 0)}, rate {dropped.get('rate_limit', 0)}), "
            f"kept {stats.get('kept_ratio', 1.0):.0%}, memory {sum(mem.values()) / 2**20:.1f} MiB{heard}")


def closed_line(client) -> str:
    """What to tell the user when the server closed the connection: ``server closed the connection``
    plus ``(code reason)`` when the server sent a close frame."""
    code = getattr(client, "close_code", None)
    if code is None:
        return "server closed the connection"
    reason = client.closed_reason if client.closed_reason not in (None, "connection closed") else ""
    return f"server closed the connection ({code}{' ' + reason if reason else ''})"


async def client_main(args: argparse.Namespace, stdin, out, err) -> int:
    """The whole ``livesight client`` run; returns the exit status."""
    import asyncio
    import threading
    import time

    from websockets.exceptions import InvalidStatus

    from app.engine.timefmt import format_timestamp
    from app.serving.client import LiveSightClient, LiveSightError
    from streaming import Sampler, SamplerConfig, open_source
    from streaming.errors import SourceError

    def say(line: str, stream=out) -> None:
        stream.write(line + "\n")
        stream.flush()

    try:
        source = open_source(args.source, allow_files=True, realtime=not args.fast, audio=not args.no_audio)
    except (SourceError, ValueError) as exc:
        say(f"error: {exc}", err)
        return 2
    client = LiveSightClient(args.url, args.token)
    try:
        created = await client.connect()
    except InvalidStatus as exc:
        status = exc.response.status_code
        hint = " (missing or wrong --token)" if status == 401 else ""
        say(f"error: the server refused the connection: HTTP {status}{hint}", err)
        source.close()
        return 1
    except (OSError, asyncio.TimeoutError, LiveSightError) as exc:
        say(f"error: cannot connect to {args.url}: {exc}", err)
        source.close()
        return 1
    model = created.get("model", {})
    say(f"connected: session {client.session_id}, model {model.get('name')}")
    send_audio = not args.no_audio and bool(client.limits.get("speech")) and bool(getattr(source.info, "has_audio", False))
    if not args.no_audio and getattr(source.info, "has_audio", False) and not client.limits.get("speech"):
        say("note: the server's speech recognition is off: the source's sound is not sent")
    if model.get("notice"):
        say(f"note: {model['notice']}")
    elif model.get("random_weights"):
        say(f"note: {model.get('name')} has random weights: its answers are not meaningful")
    loop = asyncio.get_running_loop()
    state = {"sent": 0, "pts": None, "answering": False, "last_stats": 0.0, "audio_s": 0.0}
    first_frame = asyncio.Event()
    source_done = asyncio.Event()
    stop = threading.Event()
    held: list[str] = []  # lines that arrived while an answer was streaming

    try:
        settings = {}
        if args.max_new_tokens is not None:
            settings["max_new_tokens"] = args.max_new_tokens
        if args.thumbnails:
            settings["evidence_thumbnails"] = True
        if settings:
            await client.update(**settings)
        for rule in args.watch:
            r = await client.watch(rule)
            say(f"watching: {r['text']} (rule {r['rule_id']})")
    except LiveSightError as exc:
        say(f"error: {exc}", err)
        source.close()
        await client.close()
        return 2

    def forward_audio(chunk) -> None:
        """The source's audio callback (its demuxing thread): queue the chunk's send, never wait."""
        if stop.is_set():
            return
        asyncio.run_coroutine_threadsafe(client.send_audio(chunk.samples, chunk.rate, pts=chunk.pts), loop)
        state["audio_s"] += chunk.duration

    if send_audio:
        source.on_audio(forward_audio)

    def pump() -> None:
        """Read the source in this thread; send each frame through the event loop."""
        try:
            with Sampler(source, SamplerConfig(fps=args.fps, max_side=args.max_side)) as sampler:
                info = sampler.info
                loop.call_soon_threadsafe(say, f"source: {info.source} ({info.size or '?'}, {info.codec or '?'}"
                                          + (f", {info.duration_s:.1f} s" if info.duration_s else "") + ")")
                for frame in sampler:
                    if stop.is_set():
                        return
                    fut = asyncio.run_coroutine_threadsafe(
                        client.send_frame(frame.rgb, pts=frame.pts, quality=args.quality), loop)
                    fut.result()
                    state["sent"] += 1
                    state["pts"] = frame.pts
                    loop.call_soon_threadsafe(first_frame.set)
        except SourceError as exc:
            loop.call_soon_threadsafe(say, f"source error: {exc}", err)
        except LiveSightError:  # the connection closed: the main loop says so
            pass
        except Exception as exc:  # noqa: BLE001 - e.g. the connection closed
            if not stop.is_set():
                loop.call_soon_threadsafe(say, f"source stopped: {type(exc).__name__}: {exc}", err)
        finally:
            try:
                loop.call_soon_threadsafe(source_done.set)
                loop.call_soon_threadsafe(first_frame.set)
            except RuntimeError:
                pass

    lines: asyncio.Queue = asyncio.Queue()

    def read_stdin() -> None:
        try:
            for line in stdin:
                loop.call_soon_threadsafe(lines.put_nowait, line)
        finally:
            try:
                loop.call_soon_threadsafe(lines.put_nowait, None)
            except RuntimeError:
                pass

    def show(line: str) -> None:
        if state["answering"]:
            held.append(line)
        else:
            say(line)

    connection_closed = asyncio.Event()

    async def print_events() -> None:
        try:
            await _print_events()
        finally:
            connection_closed.set()

    async def _print_events() -> None:
        async for event in client.events():
            kind = event.get("type")
            if kind == "alert.triggered":
                show(f"[alert {format_timestamp(event.get('pts', 0.0))}] {event.get('rule')}: {event.get('answer')}")
            elif kind == "input_video.stats":
                now = time.monotonic()
                if args.stats_every > 0 and now - state["last_stats"] >= args.stats_every and not state["answering"]:
                    state["last_stats"] = now
                    say(format_stats(event.get("stats", {})))
            elif kind == "error":
                e = event.get("error", {})
                show(f"[error {e.get('code')}] {e.get('message')}")
            elif kind and kind.startswith("input_source."):
                show(f"[{kind}] {event.get('reason') or event.get('error', {}).get('message', '')}")
            elif kind == "session.closed":
                show(f"[session closed: {event.get('reason')}]")
            elif kind == "input_audio.transcript":
                show(f"[heard {format_timestamp(event.get('t_start', 0.0))}] {event.get('text')}")

    async def ask(question: str) -> None:
        await first_frame.wait()
        while args.ask_after > 0 and not source_done.is_set() and (state["pts"] or 0.0) < args.ask_after:
            await asyncio.sleep(0.1)
        if send_audio and source_done.is_set() and not state.get("committed"):
            try:  # the whole sound is sent: wait until the server has heard all of it
                await client.commit_audio()
                state["committed"] = True
            except (LiveSightError, asyncio.TimeoutError) as exc:
                say(f"[audio not committed: {exc}]", err)
        stamp = format_timestamp(state["pts"] or 0.0)
        out.write(f"[{stamp}] Q: {question}\nA: ")
        out.flush()
        state["answering"] = True
        final = None
        try:
            async for piece in client.ask(question):
                if isinstance(piece, str):
                    out.write(piece)
                    out.flush()
                else:
                    final = piece
        except LiveSightError as exc:
            out.write(f"\n[error {exc.code}] {exc.error.get('message', '')}")
        finally:
            state["answering"] = False
        out.write("\n")
        if final is not None:
            out.write(f"   evidence: {format_evidence(final.get('evidence', []))}\n")
            usage = final.get("usage", {})
            out.write(f"   ({final.get('status')}, {usage.get('completion_tokens', '?')} tokens, "
                      f"{usage.get('retrieved_chunks', '?')} chunks from memory, total {usage.get('total_s', '?')} s)\n")
        out.flush()
        for line in held:
            say(line)
        held.clear()

    pump_thread = threading.Thread(target=pump, name="client-source", daemon=True)
    pump_thread.start()
    threading.Thread(target=read_stdin, name="client-stdin", daemon=True).start()
    printer = asyncio.create_task(print_events())
    status = 0
    try:
        while True:
            next_line = asyncio.ensure_future(lines.get())
            closing = asyncio.ensure_future(connection_closed.wait())
            await asyncio.wait({next_line, closing}, return_when=asyncio.FIRST_COMPLETED)
            closing.cancel()
            if not next_line.done():
                next_line.cancel()
                say(f"error: {closed_line(client)}", err)
                status = 1
                break
            line = next_line.result()
            if line is None:
                break
            question = line.strip()
            if question:
                await ask(question)
            if client.closed_reason is not None:
                say(f"error: {closed_line(client)}", err)
                status = 1
                break
    finally:
        stop.set()
        source.close()
        pump_thread.join(2.0)
        try:
            final_stats = await client.stats() if client.closed_reason is None else None
        except (LiveSightError, asyncio.TimeoutError):
            final_stats = None
        if final_stats is not None:
            say(format_stats(final_stats))
        await client.close()
        printer.cancel()
    say(f"sent {state['sent']} frames" + (f" and {state['audio_s']:.1f} s of sound" if state["audio_s"] else "")
        + "; bye")
    return status
