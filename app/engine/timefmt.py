"""Stream times as text: the way prompts and the CLI show them, and the way users write them."""

from __future__ import annotations

import re


def format_timestamp(pts: float) -> str:
    """Stream time as ``MM:SS`` (``H:MM:SS`` past an hour), with tenths when not whole."""
    pts = max(0.0, float(pts))
    whole = abs(pts - round(pts)) < 0.05
    total = int(round(pts)) if whole else int(pts)
    h, rem = divmod(total, 3600)
    m, s = divmod(rem, 60)
    secs = f"{s:02d}" if whole else f"{s:02d}.{int((pts - int(pts)) * 10):d}"
    return f"{h}:{m:02d}:{secs}" if h else f"{m:02d}:{secs}"


def parse_time(text: str) -> float:
    """``"30"``, ``"30s"``, ``"1m05s"``, ``"1h2m"``, ``"01:05"`` or ``"1:02:03"`` -> seconds.

    Raises:
        ValueError: ``text`` is not a stream time (the message shows the accepted forms).
    """
    t = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", t):
        return float(t)
    if re.fullmatch(r"\d+(:\d{1,2}){1,2}(\.\d+)?", t):
        total = 0.0
        for part in t.split(":"):
            total = total * 60 + float(part)
        return total
    m = re.fullmatch(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?", t)
    if not t or not m or not any(m.groups()):
        raise ValueError(f"not a stream time: {text!r} (use 30, 30s, 1m05s, 1h2m or 01:05)")
    h, mi, s = (float(g) if g else 0.0 for g in m.groups())
    return h * 3600 + mi * 60 + s
