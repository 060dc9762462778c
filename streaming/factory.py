"""``open_source``: one string in, the right :class:`FrameSource` out."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from streaming.base import FrameSource
from streaming.errors import SchemeNotAllowed
from streaming.file_source import FileSource
from streaming.hosts import HostPolicy, Resolver
from streaming.schemes import DEFAULT_ALLOWED_SCHEMES, is_webcam_spec, local_path, normalise_schemes, redact, scheme_of
from streaming.url_source import URLSource
from streaming.webcam_source import WebcamSource, parse_device

__all__ = ["is_webcam_spec", "open_source"]


def open_source(spec: str | os.PathLike[str], *, allow_files: bool = True, allow_webcam: bool | None = None,
                allowed_schemes: Iterable[str] = DEFAULT_ALLOWED_SCHEMES, realtime: bool = False,
                open_timeout_s: float | None = 10.0, read_timeout_s: float | None = 10.0,
                audio: bool = False, host_policy: HostPolicy | None = None, resolve: Resolver | None = None,
                max_pixels: int | None = None, **options: Any) -> FrameSource:
    """Open the source ``spec`` names.

    * a path or ``file:`` URL -> :class:`FileSource` (``realtime`` plays it as a live camera);
    * ``webcam:0``, ``webcam:/dev/video2`` or ``/dev/videoN`` -> :class:`WebcamSource`;
    * a URL whose scheme is in ``allowed_schemes`` (rtsp, rtsps, rtmp, http, https by default;
      HLS is http(s) ``.m3u8``) -> :class:`URLSource`.

    Args:
        spec: what to open.
        allow_files: admit local paths and ``file:`` URLs (pass False for remote clients).
        allow_webcam: admit local cameras (None: same as ``allow_files``).
        allowed_schemes: URL schemes admitted.
        realtime: pace a file at wall-clock speed.
        open_timeout_s, read_timeout_s: the source's timeouts.
        audio: files and URLs also decode their audio for ``source.on_audio`` consumers (an
            audio-only input is then valid); a local camera has no audio and ignores it.
        host_policy: the hosts a URL may reach, checked on the address FFmpeg connects to, at every
            (re)connection and redirect (:class:`~streaming.url_source.URLSource`); files and cameras
            are governed by ``allow_files``/``allow_webcam`` instead.
        resolve: the name resolver ``host_policy`` uses (default :func:`socket.getaddrinfo`).
        max_pixels: files and URLs refuse frames larger than this (width x height), checked on every
            frame by the decoder itself; None: no limit.
        **options: further keyword arguments for the chosen source class
            (e.g. ``reconnect``, ``backoff_initial_s`` for URLs; ``speed`` for files).

    Raises:
        SchemeNotAllowed: naming the refused scheme and the allowed ones.
        SourceError: whatever the chosen source raises when it opens.
        ValueError: an empty spec or a bad option value.
    """
    text = os.fspath(spec)
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"source spec must be a non-empty string; got {spec!r}")
    allowed = normalise_schemes(allowed_schemes)
    if allow_webcam is None:
        allow_webcam = allow_files
    if is_webcam_spec(text):
        if not allow_webcam:
            raise SchemeNotAllowed(f"{text}: local cameras are not allowed here "
                                   f"(allowed schemes: {', '.join(sorted(allowed)) or 'none'})",
                                   text, scheme="webcam", allowed=tuple(sorted(allowed)))
        return WebcamSource(parse_device(text), open_timeout_s=open_timeout_s, read_timeout_s=read_timeout_s,
                            **options)
    scheme = scheme_of(text)
    if scheme == "file":
        if not (allow_files or "file" in allowed):
            admitted = ", ".join(sorted(allowed)) or "none"
            raise SchemeNotAllowed(f"{redact(text)}: local files are not allowed here (allowed schemes: {admitted})",
                                   redact(text), scheme="file", allowed=tuple(sorted(allowed)))
        return FileSource(local_path(text), realtime=realtime, open_timeout_s=open_timeout_s,
                          read_timeout_s=read_timeout_s, audio=audio, max_pixels=max_pixels, **options)
    if resolve is not None:
        options["resolve"] = resolve
    return URLSource(text, allowed_schemes=allowed, allow_files=False, open_timeout_s=open_timeout_s,
                     read_timeout_s=read_timeout_s, audio=audio, host_policy=host_policy, max_pixels=max_pixels,
                     **options)
