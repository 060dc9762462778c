"""Network streams (RTSP, RTMP, HTTP(S), HLS) through PyAV, with reconnection and gaps; audio too."""

from __future__ import annotations

import dataclasses
import functools
import http.client
import logging
import os
import socket
import ssl
import time
from collections import deque
from collections.abc import Iterable, Iterator
from urllib.parse import urljoin, urlsplit, urlunsplit

import av
import numpy as np

from streaming.audio import AudioDecoder
from streaming.base import FrameSource, Select
from streaming.checks import check_bool, check_int, check_number, check_timeout
from streaming.errors import CorruptStream, SourceError, SourceTimeout, SourceUnreachable
from streaming.file_source import check_thread_type
from streaming.frame import Frame
from streaming.hosts import CheckedHost, HostNotAllowed, HostPolicy, Resolver
from streaming.info import Gap, SourceInfo
from streaming.pyav_io import (
    PacketDecoder,
    StreamInterrupted,
    describe,
    frame_to_rgb,
    make_frame,
    open_input,
    pick_streams,
)
from streaming.schemes import (
    ALWAYS_LIVE_SCHEMES,
    DEFAULT_ALLOWED_SCHEMES,
    check_scheme,
    local_path,
    normalise_schemes,
    redact,
)

log = logging.getLogger(__name__)

#: FFmpeg options for low-latency RTSP: TCP transport, no input buffering, short probing.
RTSP_OPTIONS: dict[str, str] = {
    "rtsp_transport": "tcp",
    "fflags": "nobuffer",
    "flags": "low_delay",
    "analyzeduration": "500000",
    "probesize": "65536",
}
#: FFmpeg options for RTMP: no input buffering.
RTMP_OPTIONS: dict[str, str] = {"fflags": "nobuffer", "flags": "low_delay"}


#: FFmpeg protocols a URL of each scheme may use, set explicitly (``protocol_whitelist``) instead of
#: relying on the bundled FFmpeg's defaults: an HTTP playlist cannot make FFmpeg open ``file:`` or
#: another scheme's protocol. ``crypto`` is HLS's encrypted segments.
PROTOCOL_WHITELIST: dict[str, str] = {
    "http": "http,tcp,crypto",
    "https": "https,http,tls,tcp,crypto",
    "rtsp": "rtsp,rtp,srtp,tcp,udp",
    "rtsps": "rtsps,rtsp,rtp,srtp,tls,tcp,udp",
    "rtmp": "rtmp,tcp",
    "rtmps": "rtmps,rtmp,tls,tcp",
    "file": "file",
}


def default_options(scheme: str) -> dict[str, str]:
    """The FFmpeg options a URL with this scheme is opened with (before the caller's own): low-latency
    settings and the scheme's :data:`PROTOCOL_WHITELIST`."""
    if scheme in ("rtsp", "rtsps"):
        out = dict(RTSP_OPTIONS)
    elif scheme in ("rtmp", "rtmps"):
        out = dict(RTMP_OPTIONS)
    else:
        out = {}
    if scheme in PROTOCOL_WHITELIST:
        out["protocol_whitelist"] = PROTOCOL_WHITELIST[scheme]
    return out


#: Redirects a pulled HTTP(S) source follows, each target checked against the host policy.
MAX_REDIRECTS = 5
#: Schemes whose connection FFmpeg makes to the checked address itself (the URL names the address).
PINNED_SCHEMES = frozenset({"http", "rtsp", "rtmp"})
#: Schemes over TLS: the URL keeps the name (certificate, SNI) and the certificate is verified.
TLS_SCHEMES = frozenset({"https", "rtsps", "rtmps"})


@functools.lru_cache(maxsize=1)
def ca_bundle() -> str | None:
    """The system's CA bundle file (for FFmpeg's ``ca_file``), or None when none is found."""
    paths = ssl.get_default_verify_paths()
    for path in (paths.cafile, paths.openssl_cafile, "/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt",
                 "/etc/ssl/cert.pem"):
        if path and os.path.isfile(path):
            return path
    return None


def _netloc(parts, host: str) -> str:
    """``parts``' netloc with ``host`` in place of its host (user info and port kept)."""
    shown = f"[{host}]" if ":" in host else host
    if parts.port is not None:
        shown = f"{shown}:{parts.port}"
    user = parts.netloc.rpartition("@")[0]
    return f"{user}@{shown}" if user else shown


def pinned(url: str, scheme: str, checked: CheckedHost | None) -> tuple[str, dict[str, str]]:
    """The URL FFmpeg opens for ``url`` whose host the policy checked, and the options that go with it.

    ``http``, ``rtsp``, ``rtmp``: the first checked address replaces the name (HTTP keeps the name in
    ``Host:``), so FFmpeg resolves nothing. TLS schemes keep the name and verify the certificate
    (``tls_verify``, the system's ``ca_file``). HTTP(S) follows no redirect itself (``max_redirects=0``).
    """
    options: dict[str, str] = {}
    if scheme in ("http", "https"):
        options["max_redirects"] = "0"
    if checked is None:
        return url, options
    parts = urlsplit(url)
    if scheme in PINNED_SCHEMES and checked.addresses:
        address = str(checked.addresses[0])
        if scheme == "http":
            host = f"[{checked.host}]" if ":" in checked.host else checked.host
            options["headers"] = f"Host: {host}{'' if parts.port is None else f':{parts.port}'}\r\n"
        url = urlunsplit((parts.scheme, _netloc(parts, address), parts.path, parts.query, parts.fragment))
    elif scheme in TLS_SCHEMES:
        bundle = ca_bundle()
        if bundle is not None:
            options.update(tls_verify="1", ca_file=bundle)
        else:
            log.warning("no CA bundle found: TLS certificates of pulled sources are not verified")
    return url, options


def redirect_target(url: str, checked: CheckedHost | None, timeout_s: float | None) -> str | None:
    """Where an HTTP(S) server redirects a GET of ``url`` (``Location``, made absolute), or None when it
    answers otherwise. Connects to the checked address (never resolves the name again) and reads the
    status line and headers only."""
    parts = urlsplit(url)
    https = parts.scheme.lower() == "https"
    port = parts.port or (443 if https else 80)
    address = str(checked.addresses[0]) if checked is not None and checked.addresses else parts.hostname
    host = parts.hostname or ""
    header = (f"[{host}]" if ":" in host else host) + ("" if parts.port is None else f":{parts.port}")
    try:
        sock = socket.create_connection((address, port), timeout=timeout_s or 10.0)
        if https:  # only the Location is read, and it is checked like any URL: no verification needed
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            sock = ctx.wrap_socket(sock, server_hostname=host or None)
        conn = http.client.HTTPConnection(address, port, timeout=timeout_s or 10.0)
        conn.sock = sock
        try:
            conn.putrequest("GET", (parts.path or "/") + (f"?{parts.query}" if parts.query else ""), skip_host=True,
                            skip_accept_encoding=True)
            conn.putheader("Host", header)
            conn.putheader("Connection", "close")
            conn.endheaders()
            response = conn.getresponse()
            status, location = response.status, response.getheader("Location")
        finally:
            conn.close()
    except (OSError, http.client.HTTPException, ValueError):
        return None
    if 300 <= status < 400 and location:
        return urljoin(url, location.strip())
    return None


class LiveTimeline:
    """Stream pts in seconds that only move forward, across reconnects and timestamp resets.

    The first session keeps the stream's own timestamps. When a new session starts (or the
    stream's timestamps jump backwards) the new timestamps are offset so they continue from
    the last pts plus the wall time that passed; frames without pts get the last pts plus the
    wall time since the last frame. Audio (:meth:`map_audio`) shares the offset, so a sound and
    the frame shown with it keep the same stream time; a new session is rebased on whichever
    of the two arrives first.
    """

    _MIN_STEP = 1e-3
    #: Audio timestamps further back than this from the end of the last audio are a reset (s).
    _AUDIO_BACK_S = 0.5

    def __init__(self) -> None:
        self._offset = 0.0
        self._last_pts: float | None = None
        self._last_wall = 0.0
        self._audio_end: float | None = None
        self._audio_wall = 0.0
        self._rebase_next = False

    def rebase(self) -> None:
        """The next frame starts a new session: continue the timeline from the last frame."""
        self._rebase_next = True

    def _anchor(self) -> tuple[float, float] | None:
        """``(pts, wall)`` of the newest thing mapped (frame or end of audio), or None."""
        marks = [(p, w) for p, w in ((self._last_pts, self._last_wall), (self._audio_end, self._audio_wall))
                 if p is not None]
        return max(marks) if marks else None

    def _continue_from_anchor(self, raw: float, wall: float) -> None:
        anchor = self._anchor()
        if anchor is not None:
            self._offset = anchor[0] + max(wall - anchor[1], self._MIN_STEP) - raw

    def map(self, frame: av.VideoFrame, wall: float) -> float:
        """The output pts of ``frame`` that arrived at ``wall``."""
        forward = self._MIN_STEP if self._last_pts is None else max(wall - self._last_wall, self._MIN_STEP)
        if frame.pts is None or frame.time_base is None:
            pts = 0.0 if self._last_pts is None else self._last_pts + forward
        else:
            raw = float(frame.pts * frame.time_base)
            if self._rebase_next:
                self._continue_from_anchor(raw, wall)
            elif self._last_pts is not None and raw + self._offset <= self._last_pts:
                self._offset = self._last_pts + forward - raw
            pts = raw + self._offset
        self._rebase_next = False
        self._last_pts, self._last_wall = pts, wall
        return pts

    def map_audio(self, raw: float, wall: float) -> float:
        """The stream time of audio whose first sample has container time ``raw`` (seconds)."""
        if self._rebase_next:
            self._continue_from_anchor(raw, wall)
            self._rebase_next = False
        elif self._audio_end is not None and raw + self._offset < self._audio_end - self._AUDIO_BACK_S:
            self._offset = self._audio_end + max(wall - self._audio_wall, self._MIN_STEP) - raw
        return raw + self._offset

    def audio_heard(self, end: float, wall: float) -> None:
        """Audio up to stream time ``end`` was handed out at ``wall``."""
        if self._audio_end is None or end > self._audio_end:
            self._audio_end, self._audio_wall = end, wall


class URLSource(FrameSource):
    """Frames from a network stream: RTSP(S), RTMP, HTTP(S) (progressive or HLS ``.m3u8``).

    Opens at construction (errors surface at once, within ``open_timeout_s``). On a live
    stream an end of stream nobody asked for, a transport error or a read timeout is an
    *outage*: the source reconnects with exponential backoff (``backoff_initial_s`` doubling
    up to ``backoff_max_s``), records a :class:`Gap` per outage in ``counters.gaps`` and keeps
    ``pts`` moving forward across sessions. ``close()`` stops it promptly, also mid-backoff.

    Args:
        url: the stream URL. Its password never appears in messages.
        allowed_schemes: schemes admitted (default rtsp, rtsps, rtmp, http, https).
        allow_files: also admit local paths and ``file:`` URLs (default refused).
        open_timeout_s: limit for connecting and reading the stream header.
        read_timeout_s: limit for each read once streaming.
        reconnect: reconnect after outages of a live stream. Without it an end of stream ends
            the iteration, a transport error raises :class:`SourceUnreachable` and a read
            timeout :class:`SourceTimeout`.
        backoff_initial_s: wait before the first reconnect attempt.
        backoff_max_s: ceiling of the doubling wait.
        max_reconnects: failed attempts in a row before giving up (None: never give up).
        live: whether an end of stream is an outage; None decides: RTSP/RTMP are live, HTTP
            streams are live when the container reports no duration (a live HLS playlist, an
            MJPEG camera), local files are not.
        options: extra FFmpeg options (override the low-latency defaults).
        thread_type: decoder threading; ``SLICE`` (default) adds no frame latency.
        max_consecutive_errors: bad packets in a row before the session counts as lost.
        audio: also decode the stream's audio for :meth:`on_audio` consumers, on the frames'
            clock (shared offsets across reconnects); an audio-only stream is then valid and
            reconnects like a video one. Bad audio packets are skipped and counted in
            :meth:`audio_stats`; audio that stops leaves the video going.
        host_policy: the hosts this source may reach (a server pulling URLs its clients name), checked
            at every connection, reconnections and redirects included: the host is resolved once with
            ``resolve``, every address checked, and FFmpeg connects to a checked address (see
            :mod:`streaming.hosts`). None: no check, and FFmpeg resolves and follows redirects itself.
        resolve: the name resolver the policy uses (:func:`socket.getaddrinfo`'s signature).
        max_pixels: largest frame (width x height) decoded, checked on every frame (the stream's
            frame size may change mid-way): larger ones are refused by the decoder without being
            allocated and counted in ``counters.too_large``; None: no limit.

    Raises:
        SchemeNotAllowed: the scheme is not admitted (checked before any network access).
        SourceUnreachable: refused connection, or no answer within ``open_timeout_s``.
        SourceNotFound / AccessDenied: the server answered 404 / 401 or 403.
        NotAVideo / AudioOnly: the stream has no video (and, with ``audio``, no audio either).
        HostNotAllowed: the host (or a redirect's) is not allowed by ``host_policy``.
    """

    kind = "url"

    def __init__(self, url: str, *, allowed_schemes: Iterable[str] = DEFAULT_ALLOWED_SCHEMES,
                 allow_files: bool = False, open_timeout_s: float | None = 10.0,
                 read_timeout_s: float | None = 10.0, reconnect: bool = True, backoff_initial_s: float = 0.5,
                 backoff_max_s: float = 30.0, max_reconnects: int | None = None, live: bool | None = None,
                 options: dict[str, str] | None = None, thread_type: str = "SLICE",
                 max_consecutive_errors: int = 1000, audio: bool = False, host_policy: HostPolicy | None = None,
                 resolve: Resolver = socket.getaddrinfo, max_pixels: int | None = None) -> None:
        if not isinstance(url, str) or not url.strip():
            raise ValueError(f"url must be a non-empty string; got {url!r}")
        name = redact(url)
        super().__init__(name, live=True)
        self.scheme = check_scheme(url, normalise_schemes(allowed_schemes), allow_files=allow_files, name=name)
        self.open_timeout_s = check_timeout("open_timeout_s", open_timeout_s)
        self.read_timeout_s = check_timeout("read_timeout_s", read_timeout_s)
        self.reconnect = bool(reconnect)
        self.backoff_initial_s = check_number("backoff_initial_s", backoff_initial_s, low=0.0, high=3600.0)
        self.backoff_max_s = check_number("backoff_max_s", backoff_max_s, low=0.0, high=86400.0)
        if self.backoff_max_s < self.backoff_initial_s:
            raise ValueError(f"backoff_max_s must be >= backoff_initial_s ({backoff_initial_s}); got {backoff_max_s}")
        self.max_reconnects = check_int("max_reconnects", max_reconnects, low=1, high=10**9, allow_none=True)
        self._thread_type = check_thread_type(thread_type)
        self._max_errors = check_int("max_consecutive_errors", max_consecutive_errors, low=1, high=10**7)
        self.audio = check_bool("audio", audio)
        self.max_pixels = check_int("max_pixels", max_pixels, low=1, high=2**31, allow_none=True)
        if host_policy is not None and not isinstance(host_policy, HostPolicy):
            raise ValueError(f"host_policy must be a streaming.hosts.HostPolicy; got {type(host_policy).__name__}")
        if not callable(resolve):
            raise ValueError(f"resolve must be a callable like socket.getaddrinfo; got {type(resolve).__name__}")
        self.host_policy = host_policy
        self._resolve = resolve
        self._network = self.scheme != "file"
        self._target = url if self._network else local_path(url)
        self._options = {**default_options(self.scheme), **(options or {})}
        self._container: av.container.InputContainer | None = None
        self._decoder: PacketDecoder | None = None
        self._timeline = LiveTimeline()
        info = self._connect()
        if live is None:
            live = self.scheme in ALWAYS_LIVE_SCHEMES or (self._network and info.duration_s is None)
        self.live = bool(live)
        self._info = dataclasses.replace(info, live=self.live)

    @property
    def info(self) -> SourceInfo:
        return self._info

    def _open(self) -> av.container.InputContainer:
        """The container of a new session: with a host policy, the host resolved and checked, FFmpeg
        pointed at a checked address, and redirects followed only to allowed hosts."""
        if self.host_policy is None or not self._network:
            return open_input(self._target, name=self.name, options=self._options,
                              open_timeout_s=self.open_timeout_s, read_timeout_s=self.read_timeout_s,
                              network=self._network)
        url, shown = self._target, self.name
        for hop in range(MAX_REDIRECTS + 1):
            checked = self.host_policy.check(url, name=shown, resolve=self._resolve)
            scheme = urlsplit(url).scheme.lower()
            target, pins = pinned(url, scheme, checked)
            options = {**self._options, **pins}
            if "headers" in pins and "headers" in self._options:  # the caller's own headers follow Host
                options["headers"] = pins["headers"] + self._options["headers"]
            try:
                return open_input(target, name=self.name, options=options,
                                  open_timeout_s=self.open_timeout_s, read_timeout_s=self.read_timeout_s,
                                  network=True)
            except SourceError:
                if scheme not in ("http", "https"):
                    raise
                location = redirect_target(url, checked, self.open_timeout_s)
                if location is None:
                    raise
            moved = redact(location)
            if hop == MAX_REDIRECTS:
                raise SourceUnreachable(f"{self.name}: more than {MAX_REDIRECTS} redirects (the last to {moved})",
                                        self.name)
            if urlsplit(location).scheme.lower() not in ("http", "https"):
                raise HostNotAllowed(f"{self.name}: redirected to {moved}, which is not an http(s) URL: refused by "
                                     "this server's source host policy", self.name)
            log.info("%s: redirected to %s", self.name, moved)
            url, shown = location, f"{self.name}: redirected to {moved}"
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    def _connect(self) -> SourceInfo:
        """Open a new session (container + decoder). Caller holds ``_io_lock`` after the first."""
        container = self._open()
        try:
            stream, audio_stream = pick_streams(container, self.name, audio=self.audio)
            if stream is not None:
                stream.thread_type = self._thread_type
            info = describe(container, stream, name=self.name, kind=self.kind, live=self.live)
            audio_decoder = (AudioDecoder(audio_stream, self.name, self._audio.counters, clock=self._audio_clock)
                             if audio_stream is not None else None)
        except BaseException:
            container.close()
            raise
        self._container = container
        self._decoder = PacketDecoder(container, stream, self.counters, self.name, self._max_errors,
                                      audio=audio_decoder, audio_stream=audio_stream, max_pixels=self.max_pixels)
        return info

    def _audio_clock(self, raw: float) -> float:
        return self._timeline.map_audio(raw, time.time())

    def _hand_out_audio(self) -> None:
        """Give the decoded audio to the consumers (called without ``_io_lock``)."""
        decoder = self._decoder
        if decoder is None or not decoder.audio_ready:
            return
        chunks, decoder.audio_ready = decoder.audio_ready, []
        for chunk in chunks:
            self._timeline.audio_heard(chunk.end, time.time())
            self._audio.emit(chunk)

    def _end_session_audio(self) -> None:
        """The session ended: hand out the audio its decoder still holds."""
        with self._io_lock:
            if self._decoder is not None and not self._released:
                self._decoder.flush_audio()
        self._hand_out_audio()

    def _drop_session(self) -> None:
        if self._container is not None:
            self._container.close()
        self._container = None
        self._decoder = None

    def _release(self) -> None:
        self._drop_session()

    def _convert(self, decoded: list[av.VideoFrame], wall: float, select: Select | None, max_side: int | None,
                 index: int, pending: deque[tuple[int, float, np.ndarray]]) -> int:
        """Timestamp the decoded frames, convert the selected ones into ``pending``; next index."""
        for vf in decoded:
            pts = self._timeline.map(vf, wall)
            if select is None or select(pts):
                pending.append((index, pts, frame_to_rgb(vf, max_side)))
            index += 1
        return index

    def _produce(self, select: Select | None, max_side: int | None) -> Iterator[Frame]:
        index = 0
        pending: deque[tuple[int, float, np.ndarray]] = deque()
        try:
            while True:
                timed_out = False
                try:
                    while True:
                        with self._io_lock:
                            if self._stop.is_set() or self._released or self._decoder is None:
                                return
                            decoded = self._decoder.step()
                            if decoded is None:
                                break
                            wall = time.time()
                            index = self._convert(decoded, wall, select, max_side, index, pending)
                            del decoded
                        self._hand_out_audio()
                        while pending:  # no local keeps a frame's pixels across the yield
                            yield make_frame(pending.popleft(), wall)
                    self._hand_out_audio()
                    reason = "end of stream"
                except StreamInterrupted as exc:
                    timed_out = exc.timed_out
                    reason = (f"no data within the read timeout ({self.read_timeout_s:g} s)"
                              if timed_out and self.read_timeout_s else exc.reason)
                except CorruptStream as exc:
                    if not (self.live and self.reconnect):
                        raise
                    reason = str(exc)
                self._end_session_audio()
                if self._stop.is_set():
                    return
                if not self.live or not self.reconnect:
                    if reason == "end of stream":
                        return
                    error = SourceTimeout if timed_out else SourceUnreachable
                    raise error(f"{self.name}: stream lost ({reason})", self.name)
                if not self._reconnect(reason):
                    return
        finally:
            self._release_locked()

    def _reconnect(self, reason: str) -> bool:
        """Reconnect with exponential backoff. Returns False when stopped meanwhile.

        Raises:
            SourceUnreachable: ``max_reconnects`` attempts in a row failed.
        """
        start = time.time()
        self.counters.reconnecting = True
        log.warning("%s: stream lost (%s); reconnecting", self.name, reason)
        with self._io_lock:
            self._drop_session()
        delay = self.backoff_initial_s
        attempt = 0
        try:
            while True:
                attempt += 1
                if self._stop.wait(delay):
                    return False
                with self._io_lock:
                    if self._stop.is_set() or self._released:
                        return False
                    try:
                        info = self._connect()
                    except SourceError as exc:
                        last_error = str(exc)
                        log.info("%s: reconnect attempt %d failed: %s", self.name, attempt, exc)
                    else:
                        self._info = dataclasses.replace(info, live=self.live)
                        break
                if self.max_reconnects is not None and attempt >= self.max_reconnects:
                    raise SourceUnreachable(
                        f"{self.name}: gave up after {attempt} reconnect attempts (last: {last_error})", self.name
                    )
                delay = min(delay * 2, self.backoff_max_s)
            end = time.time()
            self.counters.gaps.append(Gap(start_wall=start, end_wall=end, duration_s=end - start,
                                          reason=reason, attempts=attempt))
            self.counters.reconnects += 1
            self._timeline.rebase()
            log.warning("%s: reconnected after %.1f s (%d attempts)", self.name, end - start, attempt)
            return True
        finally:
            self.counters.reconnecting = False
