"""The websocket API: one connection = one session, JSON events plus binary frames and audio.

Built on the ``websockets`` asyncio server (v17 API). All model work goes through the
:class:`~app.serving.manager.SessionManager` (its scheduler thread); this module only speaks the protocol
(:mod:`app.serving.protocol`), enforces message limits, authenticates the handshake and paces outgoing
events.

What runs where: the event loop runs only what never waits for the model (parsing, the handshake,
creating a session record, queueing frames, text and questions, stats from the cached snapshot, a
watch id that does not exist). Calls that can wait (changing settings, adding or removing a real
watch rule, decoding images, resampling and feeding pushed audio, stopping a source, closing a
session) run in the loop's default thread pool. Opening server-pulled sources, which can take up to
``source_open_timeout_s``, runs in its own pool of ``max_source_opens`` threads; an
``input_source.set`` beyond that many opens in progress is refused at once (``source_busy``), so slow
sources never take the threads other handlers need.

Wrong bearer tokens are rate-limited per client address (:class:`~app.serving.auth.AuthThrottle`):
after ``auth_max_failures`` within ``auth_block_s`` seconds the address's handshakes get HTTP 429
for ``auth_block_s`` seconds.

Outgoing events per connection go through a bounded outbox: ``input_video.stats`` events are
merged (only the newest waits), everything else (answer deltas, errors, alerts) is kept in order.
The outbox is bounded in events (``send_queue``) and in encoded bytes (``send_queue_bytes``), checked
as each event is queued, not after a send completes: a client that does not read is disconnected
(close code 1013) as soon as either bound is passed, and one whose single send does not complete
within ``send_timeout_s`` is dropped too.

Each connection's messages are read at most ``max_messages_per_s`` a second (a token bucket); a
client flooding messages waits for its own next read, so its parsing and replies cannot crowd out
other connections.

User items (``conversation.item.create``) wait for ``response.create`` on the connection, bounded
in count (``max_items``) and in characters (together at most one question's limit); an item
beyond either is refused and not kept, and items a ``response.create`` refuses are discarded.

Client events are served from one table, :data:`CLIENT_EVENTS`: each type's validator and handler
(checked when a server is built). Errors become ``error`` events by their ``code`` attribute
(:func:`error_for`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import functools
import hmac
import inspect
import ipaddress
import logging
import math
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlsplit

from app.engine.config import ConfigError
from app.serving import protocol
from app.serving.auth import AuthThrottle
from app.serving.errors import (
    InvalidRequest,
    ManagerError,
    ResponseInProgress,
    SessionLimit,
    SourceBusy,
    SpeechOff,
    UnknownSession,
)
from app.serving.limits import LIVE_FIELDS, RateLimiter
from app.serving.manager import SessionManager
from app.serving.protocol import (
    AUDIO_HEADER,
    AUDIO_RATES,
    ERROR_CODES,
    FRAME_HEADER,
    ClientEvent,
    ProtocolError,
    Validator,
    decode_base64_audio,
    decode_base64_image,
    dumps,
    error_event,
    is_audio_message,
    new_id,
    parse_message,
    response_object,
    server_event,
    unpack_audio,
    unpack_frame,
)
from streaming.checks import check_int, check_number

logger = logging.getLogger(__name__)

#: Session settings a remote client may not set unless the server allows file access: they name
#: server-side paths.
SERVER_PATH_FIELDS = frozenset({"memory_dir", "persist"})


class ServerConfigError(ConfigError):
    """A server setting is invalid (e.g. listening beyond loopback without a token)."""


class ListenError(OSError):
    """The server cannot listen: ``cannot listen on HOST:PORT: <reason>`` (e.g. the port is in use)."""

    def __init__(self, host: str, port: int, exc: OSError) -> None:
        code = exc.errno if isinstance(exc.errno, int) and exc.errno > 0 else None
        reason = os.strerror(code).lower() if code is not None else (exc.strerror or str(exc))
        shown = f"[{host}]" if ":" in host and not host.startswith("[") else host
        super().__init__(f"cannot listen on {shown}:{port}: {reason}")
        self.errno = code
        self.host, self.port, self.reason = host, port, reason


def check_listen(host: str, port: int) -> None:
    """Refuse early (before a slow model load) when ``host:port`` cannot be bound: binds a throwaway
    socket the way the server will (``SO_REUSEADDR``) and closes it. Port 0 is always free.

    Raises:
        ListenError: the address is in use, not local, or the host does not resolve.
    """
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        for family, kind, proto, _, address in infos:
            with socket.socket(family, kind, proto) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(address)
    except OSError as exc:
        raise ListenError(host, port, exc) from None


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ServerConfig:
    """Where and how the websocket API listens.

    Attributes:
        host: interface to listen on. Anything but loopback needs ``token``.
        port: TCP port (0 = any free port; :attr:`WebSocketServer.port` tells which). [0, 65535]
        token: bearer token every connection must present (``Authorization: Bearer <token>`` or
            ``?token=<token>``); None = no auth, allowed on loopback only. At least 8 characters.
        max_message_bytes: largest JSON text message; None = enough for a base64 frame of
            ``max_frame_bytes`` plus 64 KiB. Larger ones get ``message_too_large`` and the connection
            stays open. [1024, 1 GiB]
        hard_max_bytes: messages beyond this close the connection (1009); None = 2x the larger of the
            message and binary-frame limits. Must be >= both. [1024, 4 GiB]
        send_queue: outgoing events held for a slow client before it is disconnected (stats events
            are merged and do not count up). [16, 1_000_000]
        send_queue_bytes: encoded bytes of outgoing events held for a slow client before it is
            disconnected (checked as each event is queued). [64 KiB, 4 GiB]
        send_timeout_s: a single send that does not complete in this long (the client stopped
            reading) disconnects the client. (0, 3600]
        max_items: user items (``conversation.item.create``) waiting for ``response.create`` per
            session; their text together is limited to one question's characters. [1, 10000]
        max_messages_per_s: messages read from one connection per second (a token bucket holding one
            second's worth); beyond it the server reads that connection's next message later, so a
            client flooding messages (each costs parsing and a reply) slows down only itself. (0, 100000]
        ping_interval_s: keepalive ping interval (None: off). (0, 3600]
        rate_limit_error_interval_s: at most one ``rate_limited`` error per this many seconds per
            connection (every drop is counted in the stats). [0, 3600]
        max_source_opens: server-pulled sources being opened at once (their own threads); an
            ``input_source.set`` beyond them gets ``source_busy`` at once. [1, 64]
        auth_max_failures: wrong or missing tokens one client address may send within
            ``auth_block_s``; then its handshakes get HTTP 429 for ``auth_block_s``. [1, 1000]
        auth_block_s: the window failures are counted in and the length of a block, s. (0, 86400]
    """

    host: str = "127.0.0.1"
    port: int = 8765
    token: str | None = None
    max_message_bytes: int | None = None
    hard_max_bytes: int | None = None
    send_queue: int = 4096
    send_queue_bytes: int = 16 * 2**20
    send_timeout_s: float = 30.0
    max_items: int = 64
    max_messages_per_s: float = 200.0
    ping_interval_s: float | None = 20.0
    rate_limit_error_interval_s: float = 1.0
    max_source_opens: int = 4
    auth_max_failures: int = 5
    auth_block_s: float = 60.0

    def __post_init__(self) -> None:
        if not isinstance(self.host, str) or not self.host.strip():
            raise ServerConfigError(f"host must be a non-empty string; got {self.host!r}")
        check_int("port", self.port, low=0, high=65535, error=ServerConfigError)
        if self.token is not None and (not isinstance(self.token, str) or len(self.token) < 8 or not self.token.isprintable()
                                       or " " in self.token):
            raise ServerConfigError("token must be a string of at least 8 printable characters without spaces")
        if self.token is None and not is_loopback(self.host):
            raise ServerConfigError(f"listening on {self.host!r} (beyond loopback) needs a token: pass --token "
                                    "(or LIVESIGHT_TOKEN); without one, listen on 127.0.0.1")
        check_int("max_message_bytes", self.max_message_bytes, low=1024, high=2**30, allow_none=True,
                  error=ServerConfigError)
        check_int("hard_max_bytes", self.hard_max_bytes, low=1024, high=2**32, allow_none=True, error=ServerConfigError)
        check_int("send_queue", self.send_queue, low=16, high=1_000_000, error=ServerConfigError)
        check_int("send_queue_bytes", self.send_queue_bytes, low=64 * 1024, high=2**32, error=ServerConfigError)
        check_number("send_timeout_s", self.send_timeout_s, low=0, high=3600, error=ServerConfigError)
        check_int("max_items", self.max_items, low=1, high=10000, error=ServerConfigError)
        check_number("max_messages_per_s", self.max_messages_per_s, low=0, high=100000, error=ServerConfigError)
        check_number("ping_interval_s", self.ping_interval_s, low=0, high=3600, allow_none=True, error=ServerConfigError)
        check_number("rate_limit_error_interval_s", self.rate_limit_error_interval_s, low=0, high=3600,
                     low_inclusive=True, error=ServerConfigError)
        check_int("max_source_opens", self.max_source_opens, low=1, high=64, error=ServerConfigError)
        check_int("auth_max_failures", self.auth_max_failures, low=1, high=1000, error=ServerConfigError)
        check_number("auth_block_s", self.auth_block_s, low=0, high=86400, error=ServerConfigError)


@dataclass(frozen=True)
class Limits:
    """The byte limits in force (derived from :class:`ServerConfig` and the manager's ``max_frame_bytes``
    and ``max_audio_message_s``).

    Attributes:
        max_audio_bytes: PCM16 bytes one audio message may carry: ``max_audio_message_s`` at the highest
            rate (48 kHz); fewer seconds at lower rates are refused by seconds (``invalid_audio``).
        max_audio_binary_bytes: the largest binary audio message (header + ``max_audio_bytes``).
    """

    max_message_bytes: int
    max_frame_bytes: int
    max_binary_bytes: int
    hard_max_bytes: int
    max_audio_seconds: float = 10.0
    max_audio_bytes: int = 2 * 48000 * 10
    max_audio_binary_bytes: int = 2 * 48000 * 10 + AUDIO_HEADER.size

    @classmethod
    def derive(cls, server: ServerConfig, max_frame_bytes: int, max_audio_seconds: float = 10.0) -> "Limits":
        message = server.max_message_bytes or (math.ceil(max_frame_bytes / 3) * 4 + 64 * 1024)
        binary = max_frame_bytes + FRAME_HEADER.size
        audio = 2 * math.ceil(max_audio_seconds * AUDIO_RATES[1])
        audio_binary = audio + AUDIO_HEADER.size
        hard = server.hard_max_bytes or 2 * max(message, binary, audio_binary)
        if hard < max(message, binary, audio_binary):
            raise ServerConfigError(f"hard_max_bytes ({hard}) must be at least the message limit ({message}), the "
                                    f"binary frame limit ({binary}) and the binary audio limit ({audio_binary})")
        return cls(message, max_frame_bytes, binary, hard, float(max_audio_seconds), audio, audio_binary)


#: Fields an error object carries besides ``code`` and ``message``, by code (what the exceptions
#: raised with that code hold).
_ERROR_FIELDS: dict[str, Callable[[BaseException], dict[str, Any]]] = {
    "scheme_not_allowed": lambda exc: {"scheme": exc.scheme, "allowed": list(exc.allowed)},
    "source_error": lambda exc: {"source_error": type(exc).__name__},
}


def error_for(exc: BaseException, event_id: str | None) -> dict[str, Any]:
    """The ``error`` event for an exception raised while serving a client event.

    The code is the exception's ``code`` attribute (every error class a client can cause has one);
    a :class:`ProtocolError` adds its own ``event_id`` and ``extra`` fields. Anything else (a plain
    ``ValueError`` too) is a fault of the server: it is logged with its traceback and reported as
    ``internal_error``.
    """
    code = getattr(exc, "code", None)
    if not isinstance(code, str) or code not in ERROR_CODES or code == "internal_error":
        logger.error("internal error while serving %s", event_id, exc_info=exc)
        return error_event("internal_error", f"{type(exc).__name__}: {exc}", event_id)
    own_id = getattr(exc, "event_id", None)
    extra = dict(getattr(exc, "extra", None) or {})
    fields = _ERROR_FIELDS.get(code)
    if fields is not None:
        extra.update(fields(exc))
    return error_event(code, str(exc), own_id if own_id is not None else event_id, **extra)


# --------------------------------------------------------------------------- per-connection

class _Outbox:
    """Outgoing events of one connection, encoded as they are queued: ordered, stats merged, bounded
    in events (``limit``) and bytes (``max_bytes``). Passing a bound sets :attr:`overflow` and calls
    ``on_overflow`` at once (the sender may be stuck in a send to a client that does not read)."""

    MERGED = "input_video.stats"

    def __init__(self, limit: int, max_bytes: int | None = None, on_overflow: Callable[[], None] | None = None) -> None:
        self.limit = limit
        self.max_bytes = max_bytes
        self.on_overflow = on_overflow
        self._items: deque[list] = deque()  # [type, encoded text]; the queued stats item is changed in place
        self._stats: list | None = None  # the queued stats item (merged in place)
        self._ready = asyncio.Event()
        self.bytes = 0
        self.overflow = False

    def put(self, event: dict) -> None:
        kind = event.get("type")
        if kind == "_close":
            item = [kind, event]
            size = 0
        else:
            item = [kind, dumps(event)]
            size = len(item[1])
        if kind == self.MERGED and event.get("reply_to") is None:
            if self._stats is not None:
                self.bytes += size - len(self._stats[1])
                self._stats[1] = item[1]
                self._check()
                return
            self._stats = item
        self._items.append(item)
        self.bytes += size
        self._check()
        self._ready.set()

    def _check(self) -> None:
        if self.overflow:
            return
        if len(self._items) > self.limit or (self.max_bytes is not None and self.bytes > self.max_bytes):
            self.overflow = True
            if self.on_overflow is not None:
                self.on_overflow()

    async def get(self) -> tuple[str, Any]:
        """The next ``(type, encoded text)`` (``("_close", event)`` for a close request)."""
        while not self._items:
            self._ready.clear()
            await self._ready.wait()
        item = self._items.popleft()
        if item is self._stats:
            self._stats = None
        if item[0] != "_close":
            self.bytes -= len(item[1])
        return item[0], item[1]

    def __len__(self) -> int:
        return len(self._items)


class _Connection:
    """State of one websocket connection and its session."""

    def __init__(self, server: "WebSocketServer", ws, sid: str) -> None:
        self.server = server
        self.ws = ws
        self.sid = sid
        self.loop = asyncio.get_running_loop()
        self.outbox = _Outbox(server.config.send_queue, server.config.send_queue_bytes, on_overflow=self._too_slow)
        self.thumbnails = False
        self.items: list[str] = []  # user message texts waiting for response.create
        self.items_chars = 0
        self.frame_index = 0
        self.t0 = time.time()
        self.last_pts: float | None = None
        self.last_rate_error = -math.inf
        self.closing = False
        remote = getattr(ws, "remote_address", None)
        self.local = bool(remote) and is_loopback(str(remote[0]))  # a client on this machine

    # events from manager threads
    def from_thread(self, event: dict) -> None:
        try:
            self.loop.call_soon_threadsafe(self.push, event)
        except RuntimeError:  # the loop is closed: the connection is gone
            pass

    def on_manager_event(self, event: dict) -> None:
        kind = event.get("type")
        if kind == "error":
            err = event.get("error", {})
            event = error_event(err.get("code", "internal_error"), err.get("message", ""), None)
        else:
            event = {"type": kind, "event_id": new_id("evt"), **{k: v for k, v in event.items() if k != "type"}}
        self.from_thread(event)
        if kind == "session.closed" and event.get("reason") not in ("disconnected",):
            self.from_thread({"type": "_close", "reason": event.get("reason", "closed")})

    def push(self, event: dict) -> None:
        """Queue an event (event-loop thread only). ``_finish`` turns a finished answer future into
        its closing events here, so they follow every delta already queued."""
        if self.closing:
            return
        if event.get("type") == "_finish":
            for e in self.server._finish_events(self, event["future"], event["rid"], event["parts"], event["event_id"]):
                self.outbox.put(e)
            return
        self.outbox.put(event)

    def _too_slow(self) -> None:
        """The outbox passed a bound: disconnect now, whatever the sender is waiting for."""
        if self.closing:
            return
        logger.warning("session %s: client reads too slowly (%d events, %d bytes waiting); disconnecting",
                       self.sid, len(self.outbox), self.outbox.bytes)
        self.closing = True
        self.server._counters["slow_clients"] += 1
        self.loop.create_task(self._drop(1013, "client too slow: outgoing queue full"))

    async def _drop(self, code: int, reason: str) -> None:
        """Close with ``code``; a client that does not read the close frame either is cut off."""
        try:
            await asyncio.wait_for(self.ws.close(code, reason), 2.0)
        except Exception:  # noqa: BLE001 - including the timeout: the transport goes anyway
            pass
        transport = getattr(self.ws, "transport", None)
        if transport is not None and not transport.is_closing():
            transport.abort()

    async def send_loop(self) -> None:
        from websockets.exceptions import ConnectionClosed

        timeout = self.server.config.send_timeout_s
        try:
            while True:
                kind, payload = await self.outbox.get()
                if self.outbox.overflow:
                    return  # _too_slow is closing the connection
                if kind == "_close":
                    self.closing = True
                    await self.ws.close(1000, f"session {payload['reason']}"[:120])
                    return
                try:
                    await asyncio.wait_for(self.ws.send(payload), timeout)
                except asyncio.TimeoutError:
                    logger.warning("session %s: a send did not complete in %.0f s (client not reading); "
                                   "disconnecting", self.sid, timeout)
                    self.closing = True
                    self.server._counters["slow_clients"] += 1
                    await self._drop(1013, "client too slow: a send timed out")
                    return
        except ConnectionClosed:
            return


# --------------------------------------------------------------------------- the server

class WebSocketServer:
    """The websocket API over a :class:`SessionManager`.

    Use :meth:`start` / :meth:`stop` to run it in a background thread with its own event loop, or
    ``await serve()`` inside an existing loop.

    Args:
        events: the client events served, type -> :class:`ClientEventSpec` (default
            :data:`CLIENT_EVENTS`); checked here by :func:`check_event_table`.

    Raises:
        ServerConfigError: (at construction) a non-loopback host without a token, bad limits, an
            event without a validator or a coroutine handler.
    """

    def __init__(self, manager: SessionManager, config: ServerConfig | None = None, *,
                 events: Mapping[str, "ClientEventSpec"] | None = None) -> None:
        self.manager = manager
        self.config = config if config is not None else ServerConfig()
        self.limits = Limits.derive(self.config, manager.config.max_frame_bytes, manager.config.max_audio_message_s)
        self.events = dict(CLIENT_EVENTS if events is None else events)
        check_event_table(self.events)
        self._validators = {type_: spec.validate for type_, spec in self.events.items()}
        self._server = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[_Connection] = set()
        self._counters = {"connections": 0, "rejected_auth": 0, "rate_limited_auth": 0, "messages": 0, "errors": 0,
                          "source_busy": 0, "slow_clients": 0, "paced": 0}
        self._auth = AuthThrottle(self.config.auth_max_failures, self.config.auth_block_s)
        self._source_pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._opening = 0  # sources being opened now (event-loop thread only)

    # ---- lifecycle ----------------------------------------------------------------------------
    async def serve(self):
        """Start listening in the running loop; returns the websockets ``Server``."""
        from websockets.asyncio.server import serve

        self._loop = asyncio.get_running_loop()
        try:
            self._server = await serve(
                self._handler, self.config.host, self.config.port,
                process_request=self._process_request,
                max_size=self.limits.hard_max_bytes,
                compression=None,  # frames are JPEG/PNG already; deflate would only cost CPU
                ping_interval=self.config.ping_interval_s,
                close_timeout=2.0,
            )
        except OSError as exc:
            raise ListenError(self.config.host, self.config.port, exc) from None
        self._source_pool = concurrent.futures.ThreadPoolExecutor(self.config.max_source_opens,
                                                                  thread_name_prefix="livesight-source-open")
        logger.info("websocket API listening on %s", self.url)
        return self._server

    @property
    def port(self) -> int:
        """The bound port (useful with ``port=0``)."""
        if self._server is None:
            return self.config.port
        return int(next(iter(self._server.sockets)).getsockname()[1])

    @property
    def url(self) -> str:
        host = self.config.host
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"ws://{host}:{self.port}"

    def start(self, timeout: float = 10.0) -> "WebSocketServer":
        """Run the server in a background thread; returns once it listens.

        Raises:
            ListenError: the port is taken or the host cannot be bound (``cannot listen on HOST:PORT: ...``).
        """
        started = concurrent.futures.Future()

        def run() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.serve())
            except BaseException as exc:  # noqa: BLE001 - handed to start(), which re-raises it
                started.set_exception(exc)
                loop.close()
                return
            started.set_result(True)
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        thread = threading.Thread(target=run, name="livesight-ws", daemon=True)
        thread.start()
        try:
            started.result(timeout)
        except BaseException:
            thread.join(timeout)  # its loop is closed already: nothing is left to stop
            self._loop = None
            raise
        self._thread = thread
        return self

    async def aclose(self, timeout: float = 5.0) -> None:
        """Stop listening and close every connection (their sessions close); connections that do
        not finish their closing handshake within ``timeout`` s are cancelled."""
        if self._server is None:
            return
        for conn in list(self._connections):  # tell clients why, before the library closes what is left
            conn.closing = True
        closing = [asyncio.create_task(conn.ws.close(1001, "server shutting down")) for conn in list(self._connections)]
        if closing:
            await asyncio.wait(closing, timeout=min(2.0, timeout))
        self._server.close(close_connections=True)
        if self._source_pool is not None:
            self._source_pool.shutdown(wait=False, cancel_futures=True)
        try:
            await asyncio.wait_for(self._server.wait_closed(), timeout)
        except asyncio.TimeoutError:
            logger.warning("websocket connections did not close within %.0f s; cancelling them", timeout)
            current = asyncio.current_task()
            tasks = [t for t in asyncio.all_tasks() if t is not current]
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks, timeout=2.0)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop a server started with :meth:`start` (idempotent)."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None or not thread.is_alive():
            return
        try:
            fut = asyncio.run_coroutine_threadsafe(self.aclose(timeout=max(0.5, timeout - 3.0)), loop)
        except RuntimeError:  # the loop closed meanwhile: nothing to stop
            thread.join(timeout)
            return
        try:
            fut.result(timeout)
        except (concurrent.futures.TimeoutError, RuntimeError):
            logger.warning("websocket server did not close within %.0f s", timeout)
        try:
            loop.call_soon_threadsafe(loop.stop)
        except RuntimeError:
            pass
        thread.join(timeout)

    def stats(self) -> dict[str, Any]:
        return {**self._counters, "open": len(self._connections)}

    # ---- handshake ----------------------------------------------------------------------------
    def _process_request(self, connection, request):
        token = self.config.token
        if token is None:
            return None
        address = str(connection.remote_address[0]) if connection.remote_address else "?"
        wait = self._auth.retry_after(address)
        if wait is not None:
            self._counters["rate_limited_auth"] += 1
            response = connection.respond(HTTPStatus.TOO_MANY_REQUESTS,
                                          f"too many wrong tokens from {address}: try again in {math.ceil(wait)} s\n")
            response.headers["Retry-After"] = str(math.ceil(wait))
            return response
        given = None
        auth = request.headers.get("Authorization")
        if auth and auth[:7].lower() == "bearer ":
            given = auth[7:].strip()
        else:
            values = parse_qs(urlsplit(request.path).query).get("token")
            given = values[0] if values else None
        if given is None or not hmac.compare_digest(given.encode(), token.encode()):
            self._counters["rejected_auth"] += 1
            self._auth.failed(address)
            logger.info("websocket handshake from %s refused: %s token", connection.remote_address,
                        "missing" if given is None else "wrong")
            return connection.respond(HTTPStatus.UNAUTHORIZED,
                                      "unauthorized: send 'Authorization: Bearer <token>' (or ?token=<token>)\n")
        self._auth.succeeded(address)
        return None

    # ---- connection -----------------------------------------------------------------------------
    async def serve_connection(self, ws) -> None:
        """Serve one already-accepted connection from another transport (the Ray Serve ingress,
        ``app/serving/cluster``) exactly as a connection of this server: ``ws`` needs
        ``remote_address``, async iteration over messages, ``send`` and ``close(code, reason)`` of a
        ``websockets`` connection. Authentication is the caller's (it has the handshake)."""
        await self._handler(ws)

    async def _handler(self, ws) -> None:
        remote = ws.remote_address
        owner = f"ws:{remote[0]}:{remote[1]}" if remote else "ws"
        try:
            sid = self.manager.create_session(None, owner=owner)  # cheap (no model work): never waits for a thread
        except ManagerError as exc:  # SessionLimit, or the manager is shut down
            code = "session_limit" if isinstance(exc, SessionLimit) else "internal_error"
            await ws.send(dumps(error_event(code, str(exc))))
            await ws.close(1013, "session limit reached" if code == "session_limit" else "server shutting down")
            return
        conn = _Connection(self, ws, sid)
        self._connections.add(conn)
        self._counters["connections"] += 1
        unsubscribe = self.manager.subscribe(sid, conn.on_manager_event)
        conn.push(server_event("session.created", session=self._session_view(conn), model=self._model_view(),
                               limits=self._limits_view()))
        sender = asyncio.create_task(conn.send_loop())
        pace = RateLimiter(self.config.max_messages_per_s)
        try:
            async for message in ws:
                self._counters["messages"] += 1
                wait = pace.wait_s()
                if wait > 0:  # over its message rate: this client waits, nobody else does
                    self._counters["paced"] += 1
                    await asyncio.sleep(wait)
                try:
                    await self._dispatch(conn, message)
                except UnknownSession:
                    break  # the session expired or was closed: end the connection
                except Exception as exc:  # noqa: BLE001 - a bad message fails alone
                    self._counters["errors"] += 1
                    conn.push(error_for(exc, None))
        except Exception as exc:  # noqa: BLE001 - e.g. ConnectionClosedError
            logger.debug("connection of session %s ended: %s", sid, exc)
        finally:
            unsubscribe()
            self._connections.discard(conn)
            try:
                await asyncio.to_thread(self.manager.close_session, sid, reason="disconnected")
            finally:
                if not sender.done():
                    # let queued events go out if the socket is still open, then stop
                    try:
                        await asyncio.wait_for(asyncio.shield(sender), 0.2)
                    except (asyncio.TimeoutError, Exception):  # noqa: BLE001
                        sender.cancel()

    def _session_view(self, conn: _Connection) -> dict[str, Any]:
        cfg = self.manager.session_config(conn.sid)
        return {"id": conn.sid, **cfg.to_dict(), "evidence_thumbnails": conn.thumbnails}

    def _model_view(self) -> dict[str, Any]:
        spec = self.manager.backend.spec
        return {"name": spec.name, "family": spec.family, "random_weights": spec.random_weights,
                "notice": self.manager.model_notice}

    def _limits_view(self) -> dict[str, Any]:
        mc = self.manager.config
        return {"max_message_bytes": self.limits.max_message_bytes, "max_frame_bytes": self.limits.max_frame_bytes,
                "hard_max_bytes": self.limits.hard_max_bytes, "max_frame_side": mc.max_frame_side,
                "max_frame_pixels": mc.max_frame_pixels, "send_queue": self.config.send_queue,
                "send_queue_bytes": self.config.send_queue_bytes, "max_items": self.config.max_items,
                "max_messages_per_s": self.config.max_messages_per_s,
                "max_fps": mc.max_fps, "live_fields": sorted(LIVE_FIELDS), "allow_file_sources": mc.allow_file_sources,
                "speech": mc.asr is not None, "asr_model": mc.asr.model if mc.asr is not None else None,
                "audio_rates": list(AUDIO_RATES), "max_audio_seconds": self.limits.max_audio_seconds,
                "max_audio_bytes": self.limits.max_audio_bytes}

    # ---- dispatch -----------------------------------------------------------------------------
    async def _dispatch(self, conn: _Connection, message: str | bytes) -> None:
        if isinstance(message, (bytes, bytearray, memoryview)):
            if is_audio_message(message):
                await self._binary_audio(conn, bytes(message))
                return
            if len(message) > self.limits.max_binary_bytes:
                raise ProtocolError("frame_too_large", f"binary frame message of {len(message)} bytes; the limit is "
                                                       f"{self.limits.max_binary_bytes} bytes (header + max_frame_bytes)")
            pts, image = unpack_frame(bytes(message))
            await self._frame(conn, image, pts, None)
            return
        if len(message) > self.limits.max_message_bytes:
            # len() counts characters; a character is at least one byte, so this never refuses a legal message
            raise ProtocolError("message_too_large", f"text message of {len(message)} characters; the limit is "
                                                     f"{self.limits.max_message_bytes} bytes (max_message_bytes)")
        event = parse_message(message, self._validators)
        try:
            await self.events[event.type].handle(self, conn, event)
        except UnknownSession:
            raise
        except Exception as exc:  # noqa: BLE001 - reported to this client only
            self._counters["errors"] += 1
            conn.push(error_for(exc, event.event_id))

    async def _frame(self, conn: _Connection, image: bytes, pts: float | None, event_id: str | None) -> None:
        from streaming.frame import Frame
        from streaming.imageops import ImageTooLarge, decode_image

        if len(image) > self.limits.max_frame_bytes:
            raise ProtocolError("frame_too_large", f"the image is {len(image)} bytes; the limit is "
                                                   f"{self.limits.max_frame_bytes} bytes (max_frame_bytes)", event_id)
        mc = self.manager.config
        try:  # the header's size is checked before any pixel is decoded (decompression bombs)
            rgb = await asyncio.to_thread(functools.partial(decode_image, image, max_side=mc.max_frame_side,
                                                            max_pixels=mc.max_frame_pixels))
        except ImageTooLarge as exc:
            raise ProtocolError("frame_too_large", str(exc), event_id) from None
        if rgb is None:
            raise ProtocolError("bad_image", f"{len(image)} bytes are not a decodable image (JPEG or PNG expected)", event_id)
        wall = time.time()
        pts = wall - conn.t0 if pts is None else float(pts)
        frame = Frame(conn.frame_index, pts, wall, rgb)
        conn.frame_index += 1
        conn.last_pts = pts
        verdict = self.manager.offer_frame(conn.sid, frame)
        if not verdict.accepted and verdict.reason == "rate_limit":
            now = time.monotonic()
            if now - conn.last_rate_error >= self.config.rate_limit_error_interval_s:
                conn.last_rate_error = now
                stats = self.manager.stats(conn.sid)["ingest"]["dropped"]
                conn.push(error_event("rate_limited", f"frames over {self.manager.config.max_fps:g} per second are "
                                      f"dropped ({stats['rate_limit']} so far)", event_id,
                                      max_fps=self.manager.config.max_fps, dropped=stats["rate_limit"]))

    async def _binary_audio(self, conn: _Connection, message: bytes) -> None:
        if not self.manager.speech:
            raise SpeechOff()
        if len(message) > self.limits.max_audio_binary_bytes:
            raise ProtocolError("message_too_large", f"binary audio message of {len(message)} bytes; the limit is "
                                                     f"{self.limits.max_audio_binary_bytes} bytes (header + "
                                                     f"{self.limits.max_audio_seconds:g} s at {AUDIO_RATES[1]} Hz)")
        pts, rate, pcm = unpack_audio(message, max_seconds=self.limits.max_audio_seconds)
        await self._audio(conn, pcm, rate, pts)

    async def _audio(self, conn: _Connection, pcm: bytes, rate: int, pts: float | None) -> None:
        """Feed pushed PCM16 to the session's transcriber (in a worker thread: resampling, and the speech
        model's load on the first push, never run on the event loop). Without a pts the first piece
        ends now on the connection's clock (the clock of frames without a pts) and later ones
        continue the session's audio clock."""
        if pts is None and self.manager.audio_clock(conn.sid) is None:
            pts = max(0.0, time.time() - conn.t0 - len(pcm) / 2 / rate)
        await asyncio.to_thread(self.manager.push_audio, conn.sid, pcm, rate=rate, pts=pts)

    async def _on_input_audio_append(self, conn: _Connection, ev: ClientEvent) -> None:
        if not self.manager.speech:
            raise SpeechOff()
        pcm = decode_base64_audio(ev.data["audio"], ev.data["rate"], max_bytes=self.limits.max_audio_bytes,
                                  max_seconds=self.limits.max_audio_seconds, event_id=ev.event_id)
        await self._audio(conn, pcm, ev.data["rate"], ev.data["pts"])

    async def _on_input_audio_commit(self, conn: _Connection, ev: ClientEvent) -> None:
        if not self.manager.speech:
            raise SpeechOff()
        await asyncio.to_thread(self.manager.flush_audio, conn.sid)
        conn.push(server_event("input_audio.committed", reply_to=ev.event_id,
                               audio=self.manager.stats(conn.sid)["audio"]))

    async def _on_input_video_append(self, conn: _Connection, ev: ClientEvent) -> None:
        image = decode_base64_image(ev.data["image"], self.limits.max_frame_bytes, ev.event_id)
        await self._frame(conn, image, ev.data["pts"], ev.event_id)

    async def _on_session_update(self, conn: _Connection, ev: ClientEvent) -> None:
        changes = dict(ev.data["session"])
        changes.pop("id", None)
        if "evidence_thumbnails" in changes:
            value = changes.pop("evidence_thumbnails")
            if not isinstance(value, bool):
                raise ConfigError(f"evidence_thumbnails must be true or false; got {value!r}")
            thumbnails = value
        else:
            thumbnails = conn.thumbnails
        forbidden = sorted(SERVER_PATH_FIELDS & set(changes))
        if forbidden and not self.manager.config.allow_file_sources:
            raise ConfigError(f"{', '.join(forbidden)} name server-side paths and cannot be set over the websocket API "
                              "on this server")
        if changes:
            await asyncio.to_thread(self.manager.update_session, conn.sid, changes)
        conn.thumbnails = thumbnails
        conn.push(server_event("session.updated", reply_to=ev.event_id, session=self._session_view(conn)))

    async def _on_session_stats(self, conn: _Connection, ev: ClientEvent) -> None:
        conn.push(server_event("input_video.stats", reply_to=ev.event_id, stats=self.manager.stats(conn.sid)))

    async def _on_input_source_set(self, conn: _Connection, ev: ClientEvent) -> None:
        realtime = True if ev.data["realtime"] is None else ev.data["realtime"]
        cap = self.config.max_source_opens
        if self._opening >= cap or self._source_pool is None:
            self._counters["source_busy"] += 1
            raise SourceBusy(f"the server is opening {cap} sources already (max_source_opens); try again when one "
                             "has opened or failed")
        from streaming.errors import SourceUnreachable

        self._opening += 1
        started = time.monotonic()
        try:
            info = await asyncio.get_running_loop().run_in_executor(
                self._source_pool, functools.partial(self.manager.set_source, conn.sid, ev.data["url"],
                                                     fps=ev.data["fps"] or 1.0, realtime=realtime))
        except SourceUnreachable as exc:
            if conn.local:
                raise
            # a remote client learns nothing about the server's network from this error: a refused
            # port, a filtered one and a silent host read alike and end after the same open timeout
            left = self.manager.config.source_open_timeout_s - (time.monotonic() - started)
            if left > 0:
                await asyncio.sleep(left)
            raise SourceUnreachable(f"{exc.source}: cannot reach the source (no connection within "
                                    f"{self.manager.config.source_open_timeout_s:g} s)", exc.source) from None
        finally:
            self._opening -= 1
        conn.push(server_event("input_source.started", reply_to=ev.event_id, source=dataclasses.asdict(info)))

    async def _on_input_source_stop(self, conn: _Connection, ev: ClientEvent) -> None:
        stopped = await asyncio.to_thread(self.manager.stop_source, conn.sid)
        if not stopped:
            raise InvalidRequest("no server-pulled source is running in this session")

    async def _on_input_text_append(self, conn: _Connection, ev: ClientEvent) -> None:
        pts = ev.data["pts"]
        if pts is None:
            pts = conn.last_pts if conn.last_pts is not None else time.time() - conn.t0
        future = self.manager.submit_text(conn.sid, float(pts), ev.data["text"])

        def done(f: concurrent.futures.Future) -> None:
            if f.cancelled():
                return
            exc = f.exception()
            if exc is not None:
                conn.from_thread(error_for(exc, ev.event_id))
            else:
                conn.from_thread(server_event("input_text.committed", reply_to=ev.event_id, pts=pts, tokens=f.result()))

        future.add_done_callback(done)

    async def _on_conversation_item_create(self, conn: _Connection, ev: ClientEvent) -> None:
        from app.engine.session import MAX_QUESTION_CHARS

        text = ev.data["text"]
        cap = self.config.max_items
        if len(conn.items) >= cap:
            raise ProtocolError("invalid_event", f"{cap} user items are waiting already (max_items): send "
                                                 "response.create to ask them", ev.event_id, param="item")
        total = conn.items_chars + len(text) + (1 if conn.items else 0)  # items are joined by newlines
        if total > MAX_QUESTION_CHARS:
            raise ProtocolError("invalid_event", f"the waiting user items would hold {total} characters; together "
                                                 f"they form one question, limited to {MAX_QUESTION_CHARS}",
                                ev.event_id, param="item.content")
        conn.items.append(text)
        conn.items_chars = total
        item_id = new_id("item")
        conn.push(server_event("conversation.item.created", reply_to=ev.event_id, item={
            "id": item_id, "type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}))

    async def _on_response_create(self, conn: _Connection, ev: ClientEvent) -> None:
        question = ev.data["input"]
        if question is None:
            if not conn.items:
                raise ProtocolError("invalid_event", "response.create needs a question: send conversation.item.create "
                                                     "first, or give response.input", ev.event_id, param="response.input")
            question = "\n".join(conn.items)
        rid = new_id("resp")
        parts: list[str] = []

        def on_delta(text: str) -> None:
            parts.append(text)
            conn.from_thread(server_event("response.output_text.delta", response_id=rid, delta=text))

        try:
            future = self.manager.ask(conn.sid, question, on_delta=on_delta,
                                      max_new_tokens=ev.data["max_output_tokens"], top_k=ev.data["top_k"])
        except ResponseInProgress:
            raise  # the items wait for the next response.create
        except Exception:
            if ev.data["input"] is None:  # refused items are not kept
                conn.items.clear()
                conn.items_chars = 0
            raise
        if ev.data["input"] is None:
            conn.items.clear()
            conn.items_chars = 0
        conn.push(server_event("response.created", reply_to=ev.event_id,
                               response={"id": rid, "object": "response", "status": "in_progress", "question": question}))
        future.add_done_callback(lambda f: conn.from_thread({"type": "_finish", "future": f, "rid": rid,
                                                             "parts": parts, "event_id": ev.event_id}))

    def _finish_events(self, conn: _Connection, f: concurrent.futures.Future, rid: str, parts: list[str],
                       event_id: str | None) -> list[dict]:
        if f.cancelled():
            text = "".join(parts)
            return [server_event("response.done", response={"id": rid, "object": "response", "status": "cancelled",
                                                            "stop_reason": "cancelled", "output_text": text,
                                                            "evidence": [], "usage": {}})]
        exc = f.exception()
        if exc is not None:
            err = error_for(exc, event_id)
            return [err, server_event("response.done", response={"id": rid, "object": "response", "status": "failed",
                                                                 "output_text": "".join(parts), "evidence": [],
                                                                 "usage": {}, "error": err["error"]})]
        answer = f.result()
        return [server_event("response.output_text.done", response_id=rid, text=answer.text),
                server_event("response.done", response=response_object(rid, answer, with_thumbnails=conn.thumbnails))]

    async def _on_response_cancel(self, conn: _Connection, ev: ClientEvent) -> None:
        if not self.manager.cancel(conn.sid):
            raise InvalidRequest("no response is in progress")

    async def _on_watch_create(self, conn: _Connection, ev: ClientEvent) -> None:
        rule = await asyncio.to_thread(self.manager.watch, conn.sid, ev.data["rule"])
        conn.push(server_event("watch.created", reply_to=ev.event_id, rule={"rule_id": rule.rule_id, "text": rule.text}))

    async def _on_watch_delete(self, conn: _Connection, ev: ClientEvent) -> None:
        rule_id = ev.data["rule_id"]
        # an id the session does not have answers at once; removing a real rule waits for the session
        deleted = self.manager.has_rule(conn.sid, rule_id) and await asyncio.to_thread(self.manager.unwatch, conn.sid,
                                                                                      rule_id)
        if not deleted:
            raise InvalidRequest(f"no watch rule {ev.data['rule_id']!r} in this session")
        conn.push(server_event("watch.deleted", reply_to=ev.event_id, rule_id=ev.data["rule_id"]))


# --------------------------------------------------------------------------- the client events

#: ``handler(server, connection, event)``: serves one validated client event (a coroutine function).
Handler = Callable[[WebSocketServer, _Connection, ClientEvent], Awaitable[None]]


@dataclass(frozen=True)
class ClientEventSpec:
    """How the server takes one client event type: its validator (:mod:`app.serving.protocol`) and
    its handler. Errors either raises become the client's ``error`` event (see :func:`error_for`)."""

    validate: Validator
    handle: Handler


#: Every client event the websocket API takes: the one place a new event is added.
CLIENT_EVENTS: dict[str, ClientEventSpec] = {
    "session.update": ClientEventSpec(protocol.validate_session_update, WebSocketServer._on_session_update),
    "session.stats": ClientEventSpec(protocol.validate_empty, WebSocketServer._on_session_stats),
    "input_source.set": ClientEventSpec(protocol.validate_source_set, WebSocketServer._on_input_source_set),
    "input_source.stop": ClientEventSpec(protocol.validate_empty, WebSocketServer._on_input_source_stop),
    "input_video.append": ClientEventSpec(protocol.validate_video_append, WebSocketServer._on_input_video_append),
    "input_text.append": ClientEventSpec(protocol.validate_text_append, WebSocketServer._on_input_text_append),
    "input_audio.append": ClientEventSpec(protocol.validate_audio_append, WebSocketServer._on_input_audio_append),
    "input_audio.commit": ClientEventSpec(protocol.validate_empty, WebSocketServer._on_input_audio_commit),
    "conversation.item.create": ClientEventSpec(protocol.validate_item_create,
                                                WebSocketServer._on_conversation_item_create),
    "response.create": ClientEventSpec(protocol.validate_response_create, WebSocketServer._on_response_create),
    "response.cancel": ClientEventSpec(protocol.validate_empty, WebSocketServer._on_response_cancel),
    "watch.create": ClientEventSpec(protocol.validate_watch_create, WebSocketServer._on_watch_create),
    "watch.delete": ClientEventSpec(protocol.validate_watch_delete, WebSocketServer._on_watch_delete),
}

#: The client event types, in the table's order.
CLIENT_EVENT_TYPES = tuple(CLIENT_EVENTS)


def check_event_table(events: Mapping[str, ClientEventSpec]) -> None:
    """Refuse an event table the server could not serve.

    Raises:
        ServerConfigError: an empty table, a type that is not a non-empty string, an entry that is
            not a :class:`ClientEventSpec`, a validator that is not callable, or a handler that is
            not a coroutine function. The message names the event type.
    """
    if not events:
        raise ServerConfigError("the client event table is empty")
    for type_, spec in events.items():
        if not isinstance(type_, str) or not type_:
            raise ServerConfigError(f"client event types must be non-empty strings; got {type_!r}")
        if not isinstance(spec, ClientEventSpec):
            raise ServerConfigError(f"client event {type_!r}: the entry must be a ClientEventSpec; got {type(spec).__name__}")
        if not callable(spec.validate):
            raise ServerConfigError(f"client event {type_!r} has no validator (got {spec.validate!r})")
        if not inspect.iscoroutinefunction(spec.handle):
            raise ServerConfigError(f"client event {type_!r} needs a coroutine function as its handler "
                                    f"(got {spec.handle!r})")
