"""Stream times as text, the way prompts and the CLI show them."""

from __future__ import annotations


def format_timestamp(pts: float) -> str:
    """Stream time as ``MM:SS`` (``H:MM:SS`` past an hour), with tenths when not whole."""
    pts = max(0.0, float(pts))
    whole = abs(pts - round(pts)) < 0.05
    total = int(round(pts)) if whole else int(pts)
    h, rem = divmod(total, 3600)
    m, s = divmod(rem, 60)
    secs = f"{s:02d}" if whole else f"{s:02d}.{int((pts - int(pts)) * 10):d}"
    return f"{h}:{m:02d}:{secs}" if h else f"{m:02d}:{secs}"
