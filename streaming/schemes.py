"""URL schemes: which are allowed, how local paths are recognised, how URLs are named safely."""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import unquote, urlsplit, urlunsplit
from urllib.request import url2pathname

from streaming.errors import SchemeNotAllowed

#: Schemes a :class:`~streaming.url_source.URLSource` accepts unless the operator says otherwise.
#: HLS is http(s) with a ``.m3u8`` playlist. Local files (``file``) are never in the default.
DEFAULT_ALLOWED_SCHEMES: frozenset[str] = frozenset({"rtsp", "rtsps", "rtmp", "http", "https"})

#: Schemes whose streams are always live (an end of stream there is an outage).
ALWAYS_LIVE_SCHEMES: frozenset[str] = frozenset({"rtsp", "rtsps", "rtmp", "rtmps", "udp", "rtp", "srt"})


def is_webcam_spec(spec: str) -> bool:
    """True for ``webcam:N``, ``webcam:/dev/videoN`` and ``/dev/videoN``."""
    text = spec.strip()
    return text.lower().startswith("webcam:") or text.startswith("/dev/video")


def scheme_of(spec: str) -> str:
    """The lower-case scheme of ``spec``; ``"file"`` for local paths (including ``C:\\...``)."""
    scheme = urlsplit(spec).scheme.lower()
    if not scheme or len(scheme) == 1:
        return "file"
    return scheme


def local_path(spec: str) -> str:
    """The filesystem path of a local path or ``file:`` URL (``file:///x``, ``file:x``)."""
    parts = urlsplit(spec)
    if parts.scheme.lower() != "file":
        return spec
    if parts.netloc and parts.netloc != "localhost":
        return url2pathname(unquote(f"//{parts.netloc}{parts.path}"))
    return url2pathname(unquote(parts.path))


def redact(url: str) -> str:
    """``url`` with any password in it replaced by ``***`` (safe for logs and messages)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    netloc = f"{parts.username}:***@{host}" if parts.username else f":***@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def normalise_schemes(schemes: Iterable[str]) -> frozenset[str]:
    """Lower-cased scheme names, without ``:`` or ``://`` suffixes.

    Raises:
        ValueError: a scheme is not a non-empty string.
    """
    if isinstance(schemes, str):
        raise ValueError(f"allowed_schemes must be a collection of scheme names, not the string {schemes!r}")
    out = set()
    for scheme in schemes:
        if not isinstance(scheme, str) or not scheme.strip(":/ "):
            raise ValueError(f"allowed_schemes entries must be non-empty strings; got {scheme!r}")
        out.add(scheme.strip(":/ ").lower())
    return frozenset(out)


def check_scheme(spec: str, allowed: frozenset[str], *, allow_files: bool, name: str) -> str:
    """Return the scheme of ``spec`` if the allow-list admits it.

    Local paths and ``file:`` URLs are admitted only with ``allow_files`` or ``"file"`` in
    ``allowed``.

    Raises:
        SchemeNotAllowed: naming the scheme and the allowed ones.
    """
    scheme = scheme_of(spec)
    admitted = allowed | ({"file"} if allow_files else set())
    if scheme in admitted:
        return scheme
    listing = ", ".join(sorted(admitted)) or "none"
    if scheme == "file":
        message = f"{name}: local files are not allowed here (allowed schemes: {listing})"
    else:
        message = f"{name}: scheme '{scheme}' is not allowed (allowed schemes: {listing})"
    raise SchemeNotAllowed(message, name, scheme=scheme, allowed=tuple(sorted(admitted)))
