"""How a source is named to a person: the label evidence carries so an answer says where it saw a moment.

A session takes several sources in turn (a webcam in the page, frames pushed over the websocket, a
played file, a pulled URL, notes, speech). Each gets a short label, recorded on every frame and
memory chunk it produces: ``webcam``, ``websocket frames``, ``file bikes.mp4``,
``rtsp://cam.example:554/live`` (a URL without its user name, password, query or fragment: labels are
shown to whoever reads the answer and must not carry secrets), ``note``, ``speech``.
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit, urlunsplit

__all__ = ["MAX_LABEL_CHARS", "NOTE", "PUSHED", "SPEECH", "WEBCAM", "clean_label", "source_label"]

#: The page's browser camera.
WEBCAM = "webcam"
#: Frames pushed by a websocket client (binary frame messages).
PUSHED = "websocket frames"
#: Timed text events (``input_text.append``, ``--text``).
NOTE = "note"
#: Words heard in a session's audio.
SPEECH = "speech"
#: Longest label kept (a longer one is cut, ending in "...").
MAX_LABEL_CHARS = 160


def clean_label(label: object) -> str | None:
    """``label`` as a label: printable, stripped, at most :data:`MAX_LABEL_CHARS` characters; None
    for None or an empty one.

    Raises:
        ValueError: ``label`` is not a string (naming its type).
    """
    if label is None:
        return None
    if not isinstance(label, str):
        raise ValueError(f"a source label must be a string; got {type(label).__name__}")
    text = "".join(c if c.isprintable() else " " for c in label).strip()
    if len(text) > MAX_LABEL_CHARS:
        text = text[: MAX_LABEL_CHARS - 3].rstrip() + "..."
    return text or None


def _url_label(spec: str) -> str | None:
    try:
        parts = urlsplit(spec)
        host = parts.hostname
        port = parts.port
    except ValueError:
        return None
    if not host:
        return None
    host = f"[{host}]" if ":" in host else host
    netloc = host if port is None else f"{host}:{port}"
    return urlunsplit((parts.scheme.lower(), netloc, parts.path, "", ""))


def source_label(spec: str | os.PathLike[str]) -> str:
    """The label of the source ``spec`` names (a spec as :func:`streaming.open_source` takes it).

    ``webcam:0`` -> ``webcam 0``; ``/dev/video2`` -> ``webcam /dev/video2``; a path or ``file:`` URL
    -> ``file <name>`` (the file's name, not its directory); a URL -> the URL without credentials,
    query or fragment.
    """
    from streaming.schemes import is_webcam_spec, local_path, redact, scheme_of

    text = os.fspath(spec).strip()
    if is_webcam_spec(text):
        device = text.split(":", 1)[1] if text.lower().startswith("webcam:") else text
        return clean_label(f"webcam {device.strip()}") or WEBCAM
    if scheme_of(text) == "file":
        name = os.path.basename(local_path(text).rstrip("/\\")) or text
        return clean_label(f"file {name}") or "file"
    return clean_label(_url_label(text) or redact(text).split("?", 1)[0]) or "url"
