"""HTML and plot data for the page: answers with evidence, live stats, the transcript, alerts, the
model notice.

Pure functions of plain data (session results and stats dicts); nothing here touches the
manager or Gradio, so every piece of the page's text can be tested on its own. All text that
comes from a user, a stream or the model is HTML-escaped here.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from app.engine.timefmt import format_timestamp
from app.engine.types import Alert, Answer, Evidence, WatchRule

#: Evidence cards shown under an answer (the rest are counted, not drawn).
MAX_EVIDENCE_CARDS = 8

#: Transcript lines shown beside the video (the newest).
TRANSCRIPT_LINES = 12

#: Column names of the kept-ratio plot's DataFrame.
KEPT_X = "stream time (s)"
KEPT_Y = "kept token ratio"


def esc(value: Any) -> str:
    """``value`` as HTML-safe text."""
    return html.escape(str(value), quote=True)


def format_bytes(n: float | int | None) -> str:
    """``1536`` -> ``"1.5 KiB"``; None or a negative count -> ``"-"``."""
    if n is None or not isinstance(n, (int, float)) or not math.isfinite(n) or n < 0:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"  # pragma: no cover - the loop always returns


def format_span(t_start: float, t_end: float) -> str:
    """A time range as ``MM:SS`` or ``MM:SS-MM:SS``."""
    a, b = format_timestamp(t_start), format_timestamp(t_end)
    return a if a == b else f"{a}-{b}"


def jpeg_data_uri(jpeg: bytes) -> str:
    """JPEG bytes as a ``data:`` URI an ``<img>`` can show inline."""
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")


# --------------------------------------------------------------------------------------- answers

def pick_evidence(evidence: Sequence[Evidence], max_cards: int = MAX_EVIDENCE_CARDS) -> list[Evidence]:
    """At most ``max_cards`` evidence items to draw: the recent window always, then the memory
    chunks with the best scores; in their original (time) order."""
    items = list(evidence)
    if len(items) <= max_cards:
        return items
    window = [i for i, e in enumerate(items) if e.source != "memory"][: max_cards]
    room = max(0, max_cards - len(window))
    memory = [i for i, e in enumerate(items) if e.source == "memory"]
    best = sorted(memory, key=lambda i: -(items[i].score if items[i].score is not None else float("-inf")))[:room]
    return [items[i] for i in sorted(set(window) | set(best))]


def evidence_html(evidence: Sequence[Evidence], max_cards: int = MAX_EVIDENCE_CARDS) -> str:
    """The moments an answer relied on: one card per evidence item (thumbnail + time range; words
    heard in the audio, with "heard at", for speech), each naming the input it came from (``webcam``,
    ``file bikes.mp4``, ...) when the session knows it.

    Memory chunks come first in time order with their retrieval score; the recent window is
    the last card. Returns ``""`` for no evidence.
    """
    if not evidence:
        return ""
    cards = []
    for ev in pick_evidence(evidence, max_cards):
        span = format_span(ev.t_start, ev.t_end)
        if ev.source == "memory":
            where = "memory" + (f" · score {ev.score:.2f}" if ev.score is not None else "")
        else:
            where = "recent window"
        origin = (f'<small class="ls-src" title="{esc(ev.input_source)}">{esc(_clip(ev.input_source, 48))}</small><br>'
                  if ev.input_source else "")
        lead = ""
        if ev.kind == "speech" and ev.text:
            pic = f'<div class="ls-thumb ls-note ls-speech">🎙 “{esc(_clip(ev.text, 80))}”</div>'
            span, lead = format_timestamp(ev.t_start), "heard at "
        elif ev.kind == "text" and ev.text:  # a note's words say more than the frame that was on screen
            pic = f'<div class="ls-thumb ls-note">“{esc(_clip(ev.text, 80))}”</div>'
        elif ev.thumbnail:
            pic = f'<img class="ls-thumb" src="{jpeg_data_uri(ev.thumbnail)}" alt="frame at {esc(span)}">'
        else:
            pic = f'<div class="ls-thumb ls-note">{esc(ev.kind)}</div>'
        cards.append(
            f'<figure class="ls-ev ls-ev-{esc(ev.source)}">{pic}'
            f'<figcaption>{esc(lead)}<b class="ls-ts">{esc(span)}</b><br>{origin}<small>{esc(where)}</small>'
            '</figcaption></figure>'
        )
    more = len(evidence) - max_cards
    extra = f'<span class="ls-more">+{more} more</span>' if more > 0 else ""
    return (f'<div class="ls-evidence"><div class="ls-ev-title">Evidence ({len(evidence)})</div>'
            f'<div class="ls-ev-row">{"".join(cards)}{extra}</div></div>')


def answer_message(answer: Answer) -> str:
    """A finished answer as the bot message: its text, then its evidence cards."""
    text = answer.text.strip() or "(empty answer)"
    body = esc(text)
    if answer.stop_reason == "cancelled":
        body += ' <small class="ls-stop">[stopped]</small>'
    return body + "\n\n" + evidence_html(answer.evidence)


def streaming_message(text: str) -> str:
    """The bot message while the answer is still being generated."""
    return esc(text) + " ▍"


def error_message(problem: str) -> str:
    """A bot message that says plainly why there is no answer."""
    return f'<span class="ls-error">⚠ {esc(problem)}</span>'


def queued_message() -> str:
    """The bot message of a question sent while another answer streams: it waits its turn."""
    return '<span class="ls-queued">⏳ queued: answered when the current answer ends</span>'


def notice_message(text: str) -> str:
    """A bot message that is a notice, not an answer (e.g. nothing watched yet)."""
    return f'<span class="ls-muted">ℹ {esc(text)}</span>'


def problem_text(exc: BaseException) -> str:
    """What went wrong, for the user: the exception's message, never its Python class name (a message
    that is empty or that starts with the class name, as some libraries write them, gets a plain lead)."""
    text = str(exc).strip()
    name = type(exc).__name__
    if text.startswith(name + ":"):
        text = text[len(name) + 1:].strip()
    return text or "the answer failed (the server log has the details)"


def _clip(text: str, n: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 1] + "…"


# ----------------------------------------------------------------------------------------- stats

def _num(stats: Mapping[str, Any], *keys: str, default: float | None = None) -> float | None:
    """The first of ``keys`` present in ``stats`` (dotted keys reach into nested dicts)."""
    for key in keys:
        node: Any = stats
        for part in key.split("."):
            if not isinstance(node, Mapping) or part not in node:
                node = None
                break
            node = node[part]
        if isinstance(node, (int, float)) and not isinstance(node, bool) and math.isfinite(node):
            return float(node)
    return default


def stats_cards(stats: Mapping[str, Any], *, webcam_fps: float | None = None) -> list[tuple[str, str, str]]:
    """``[(label, value, hint)]`` of the live statistics shown on the page.

    ``stats`` is ``manager.stats(sid)``: the session's counters plus ingest figures.
    ``webcam_fps`` is the page's own count of frames the browser sent per second.
    """
    fps = _num(stats, "ingest.fps")
    if not fps and webcam_fps:
        fps = webcam_fps
    lag = _num(stats, "ingest.lag_s")
    dropped = _num(stats, "ingest.dropped_total", "dropped_total")
    frames = _num(stats, "frames", default=0.0)
    kept = _num(stats, "kept_ratio")
    mem = stats.get("memory_bytes") if isinstance(stats.get("memory_bytes"), Mapping) else {}
    chunks = _num(stats, "bank_chunks", default=0.0)
    encode_ms = _num(stats, "encode_ms_per_step", "encode_ms_per_frame")
    return [*_base_cards(fps, lag, dropped, frames, kept, encode_ms, mem, chunks), *audio_cards(stats)]


def audio_cards(stats: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """``[(label, value, hint)]`` of the speech statistics (none with speech off)."""
    audio = stats.get("audio")
    if not isinstance(audio, Mapping) or not audio.get("speech"):
        return []
    heard = _num(audio, "audio_s", default=0.0) or 0.0
    speech = _num(audio, "speech_s", default=0.0) or 0.0
    rtf = _num(audio, "rtf")
    lag = _num(audio, "lag_s")
    behind = " (behind)" if audio.get("behind") else ""
    return [
        ("heard", f"{heard:.0f} s", f"seconds of audio heard; {speech:.0f} s of it speech"),
        ("transcripts", f"{int(_num(audio, 'committed', default=0.0) or 0)}", "speech segments remembered"),
        ("speech lag", "-" if lag is None else f"{lag:.1f} s{behind}",
         "how far transcription is behind the audio" + ("" if rtf is None else f" (real-time factor {rtf:.2f})")),
    ]


def _base_cards(fps, lag, dropped, frames, kept, encode_ms, mem, chunks) -> list[tuple[str, str, str]]:
    return [
        ("ingest", "-" if fps is None else f"{fps:.1f} fps", "frames per second reaching the model"),
        ("lag", "-" if lag is None else f"{lag:.2f} s", "how far behind real time the model is"),
        ("dropped", "-" if dropped is None else f"{int(dropped)}", "frames skipped to keep up (newest wins)"),
        ("frames", f"{int(frames or 0)}", "frames watched"),
        ("kept tokens", "-" if kept is None else f"{100 * kept:.0f}%", "visual tokens kept after the token drop"),
        ("encode", "-" if encode_ms is None else f"{encode_ms:.0f} ms", "vision encoder time per frame"),
        ("window", format_bytes(mem.get("window")), "attention window KV (RAM)"),
        ("memory RAM", format_bytes(mem.get("ram")), f"{int(chunks or 0)} chunks in the memory bank"),
        ("memory disk", format_bytes(mem.get("disk")), "memory chunks spilled to disk"),
    ]


def stats_html(stats: Mapping[str, Any] | None, *, webcam_fps: float | None = None) -> str:
    """The live statistics as a grid of small cards."""
    if not stats:
        return '<div class="ls-stats ls-muted">No session yet.</div>'
    cells = "".join(
        f'<div class="ls-stat" title="{esc(hint)}"><div class="ls-stat-v">{esc(value)}</div>'
        f'<div class="ls-stat-l">{esc(label)}</div></div>'
        for label, value, hint in stats_cards(stats, webcam_fps=webcam_fps)
    )
    return f'<div class="ls-stats">{cells}</div>'


def transcript_html(segments: Sequence[Any], *, speech: bool = True, lines: int = TRANSCRIPT_LINES) -> str:
    """The live transcript: the newest ``lines`` speech segments (``t_start``, ``t_end``, ``text``
    objects or dicts), oldest first, each with its stream time."""
    if not speech:
        return ('<div class="ls-transcript ls-muted">Speech recognition is off on this server '
                "(livesight serve --asr MODEL turns it on).</div>")
    if not segments:
        return ('<div class="ls-transcript ls-muted">Transcript: nothing heard yet. Speech in an uploaded video, '
                "a camera URL or the microphone shows up here.</div>")
    items = []
    for seg in list(segments)[-lines:]:
        get = seg.get if isinstance(seg, Mapping) else (lambda k, _s=seg: getattr(_s, k, None))
        t0 = float(get("t_start") or 0.0)
        items.append(f'<li><b class="ls-ts">{esc(format_timestamp(t0))}</b> {esc(get("text") or "")}</li>')
    return f'<div class="ls-transcript"><div class="ls-ev-title">Transcript</div><ul>{"".join(items)}</ul></div>'


def kept_frame(history: Iterable[tuple[float, float]], max_points: int = 600):
    """The kept-token ratio over stream time as a DataFrame for ``gr.LinePlot``.

    ``history`` is ``session.kept_history()``: ``[(pts, kept_ratio)]``. Long histories are thinned
    to at most ``max_points`` rows (evenly, keeping the newest point).
    """
    import pandas as pd

    rows = [(float(t), float(r)) for t, r in history]
    if len(rows) > max_points:
        step = len(rows) / max_points
        picked = [rows[int(i * step)] for i in range(max_points - 1)] + [rows[-1]]
        rows = picked
    # float columns even when empty: Gradio picks the axis types (quantitative, not nominal) from them
    return pd.DataFrame({KEPT_X: pd.Series([r[0] for r in rows], dtype="float64"),
                         KEPT_Y: pd.Series([r[1] for r in rows], dtype="float64")})


# ------------------------------------------------------------------------------------- the source

def progress_html(progress: Mapping[str, Any] | None, label: str | None = None) -> str:
    """The server-side source's state: a progress bar for a file, stream time for a live URL.

    ``progress`` is ``manager.source_progress(sid)``: ``{"pts", "duration_s", "fraction",
    "finished", "error"}`` or None when no source runs.
    """
    if not progress:
        return '<div class="ls-progress ls-muted">No server-side source. Use the webcam, a video file or a camera URL.</div>'
    name = f"<b>{esc(label)}</b> · " if label else ""
    error = progress.get("error")
    if error:
        return f'<div class="ls-progress ls-error">{name}⚠ {esc(error)}</div>'
    pts = _num(progress, "pts", default=0.0) or 0.0
    duration = _num(progress, "duration_s")
    fraction = _num(progress, "fraction")
    finished = bool(progress.get("finished"))
    if fraction is None and duration:
        fraction = min(1.0, pts / duration)
    if finished:
        fraction = 1.0 if fraction is not None else None
    state = "finished" if finished else "playing"
    if fraction is None:
        return f'<div class="ls-progress">{name}{state} · stream time {esc(format_timestamp(pts))} (live)</div>'
    pct = max(0.0, min(100.0, 100.0 * fraction))
    total = f" / {format_timestamp(duration)}" if duration else ""
    return (f'<div class="ls-progress">{name}{state} · {esc(format_timestamp(pts))}{esc(total)} · '
            f'<b class="ls-pct">{pct:.0f}%</b>'
            f'<div class="ls-bar"><div class="ls-bar-fill" style="width:{pct:.1f}%"></div></div></div>')


def source_html(progress: Mapping[str, Any] | None, label: str | None = None, *, error: str | None = None,
                webcam: str | None = None, status: str | None = None) -> str:
    """The source panel: the last source error (kept until the next request), then the pulled
    source's progress, or a line about the browser webcam (``webcam``) when no source is pulled;
    ``status`` alone: what is being done now (e.g. "connecting…")."""
    if status:
        return f'<div class="ls-progress ls-busy">{esc(status)}</div>'
    parts = []
    if error:
        parts.append(f'<div class="ls-progress ls-error" role="alert">⚠ {esc(error)}</div>')
    if progress is None and webcam:
        parts.append(f'<div class="ls-progress"><b>webcam</b> · {esc(webcam)}</div>')
    elif progress is not None or not error:
        parts.append(progress_html(progress, label))
    return "".join(parts)


# ------------------------------------------------------------------------------------ watch rules

def rules_html(rules: Sequence[WatchRule], *, checks: int | float | None = None) -> str:
    """The standing watch rules as a numbered list (the number is the rule's label in the remove
    menu), with how often they were checked (``checks``: the session's watch checks so far)."""
    if not rules:
        return '<div class="ls-rules ls-muted">No watch rules. Add one, e.g. “a person enters”.</div>'
    items = "".join(f"<li>{esc(r.text)}</li>" for r in rules)
    n = int(checks) if isinstance(checks, (int, float)) and not isinstance(checks, bool) and checks >= 0 else 0
    times = "not checked yet" if n == 0 else f"checked {n} time{'s' if n != 1 else ''}"
    count = (f'<div class="ls-rules-count">{len(rules)} rule{"s" if len(rules) != 1 else ""} · {times} '
             "(rules are checked when the scene changes)</div>")
    return f'<div class="ls-rules">{count}<ol>{items}</ol></div>'


def rule_choices(rules: Sequence[WatchRule]) -> list[tuple[str, str]]:
    """``[(label, rule_id)]`` for the remove-rule menu: the rule's number in the list and its text."""
    return [(f"{i}. {_clip(r.text, 60)}", r.rule_id) for i, r in enumerate(rules, 1)]


def watch_note(spec: Any, *, vision: bool = True) -> str | None:
    """What the watch rules cannot do with this model (``spec``: its ``BackendSpec``), or None.

    A model with random weights answers yes or no at random; a model that does not see (vision off,
    or a random vision tower) cannot answer yes to a rule about what is on screen."""
    if spec is None:
        return None
    if getattr(spec, "random_weights", False) and not getattr(spec, "random_vision", False):
        return ("This model has random weights: its yes/no answers to watch rules are not meaningful, so it "
                "cannot really answer yes and its alerts mean nothing.")
    if getattr(spec, "random_vision", False) or not vision:
        return ("This model does not see the video (vision is off): it cannot answer yes to a rule about what is "
                "on screen; rules about what is said or written in notes can match.")
    return None


def alerts_html(alerts: Sequence[Alert], limit: int = 20) -> str:
    """The alert feed, newest first."""
    if not alerts:
        return '<div class="ls-alerts ls-muted">No alerts yet. Rules are checked when the scene changes.</div>'
    items = "".join(
        f'<li><b class="ls-ts">{esc(format_timestamp(a.pts))}</b> {esc(a.rule)} '
        f'<small>→ {esc(_clip(a.answer, 60))}</small></li>'
        for a in list(alerts)[::-1][:limit]
    )
    return f'<ul class="ls-alerts">{items}</ul>'


# ------------------------------------------------------------------------------------ model notice

def notice_html(notice: str | None) -> str:
    """The model notice banner (``""`` when there is nothing to say)."""
    if not notice:
        return ""
    return f'<div class="ls-notice" role="alert">⚠ {esc(notice)}</div>'


def header_html(model: str | None, session_id: str | None) -> str:
    """The page title line: product, model and this tab's session."""
    bits = []
    if model:
        bits.append(f"model <code>{esc(model)}</code>")
    if session_id:
        bits.append(f"session <code>{esc(session_id)}</code>")
    sub = " · ".join(bits)
    return (f'<div class="ls-header"><span class="ls-logo">LiveSight</span>'
            f'<span class="ls-tag">streaming video assistant</span><span class="ls-sub">{sub}</span></div>')
