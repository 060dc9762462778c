"""The page's session manager under ``--ray``: every operation of a tab's session goes to the tab's
owner replica.

:class:`RemoteManager` offers what the Gradio page (``ui/``) calls on a
:class:`~app.serving.manager.SessionManager` (``create_session``, ``stats``, ``ask``,
``submit_frame``, ``set_source``, ``subscribe``, ...) and carries each call through a transport to the
replica that owns the session, where :class:`~app.serving.cluster.page_ops.PageSessions` serves it.
The page's session ids are the sessions' keys (``page-<random>``).

Transports: :class:`ServeTransport` (a Ray Serve ``DeploymentHandle`` of the replicas, each call
routed with ``handle.options(session_id=key)``: the consistent-hash router sends it to the same
owner a websocket with that key in its session header reaches, strict affinity, no fallback) and
:class:`LocalTransport` (a :class:`PageSessions` in this process, for tests and tools).

Replies travel as ``("ok", value)`` or ``("error", exception)`` (:func:`guarded`), so a manager's
refusal reaches the page as the manager's own exception class (``UnknownSession``, ``SessionLimit``,
``ConfigError`` ...). A replica that cannot be reached is retried for ``retry_s`` (a dead replica is
replaced and its sessions are taken over from the memory root), then :class:`ReplicaUnreachable`.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import threading
import time
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Iterator

from app.serving.cluster.errors import ClusterError
from app.serving.cluster.page_ops import PAGE_KEY_PREFIX, PageSessions, portable
from app.serving.errors import UnknownSession

logger = logging.getLogger(__name__)

#: Bytes per upload piece sent to the owner (each is one call).
UPLOAD_CHUNK_BYTES = 4 * 2**20
#: Seconds between polls of a subscribed session's events.
EVENT_POLL_S = 0.5


class ReplicaUnreachable(ClusterError):
    """The replica owning a page session did not answer (the message says what Ray reported).

    Not a ``SessionError`` on purpose: the page keeps the tab's session (its next call goes to the
    session's owner again, or to its successor) instead of opening a new one."""

    code = "internal_error"


def guarded(fn: Callable[..., Any], *args, **kwargs) -> tuple[str, Any]:
    """``("ok", fn(*args, **kwargs))`` or ``("error", exception)`` (made portable)."""
    try:
        return "ok", fn(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - carried to the page, raised there
        return "error", portable(exc)


def unwrap(reply: Any) -> Any:
    """The value of a :func:`guarded` reply; raises its exception."""
    if not (isinstance(reply, tuple) and len(reply) == 2 and reply[0] in ("ok", "error")):
        raise ReplicaUnreachable(f"unexpected reply from the replica: {type(reply).__name__}")
    status, value = reply
    if status == "error":
        raise value
    return value


class LocalTransport:
    """Calls a :class:`PageSessions` in this process (tests, tools)."""

    def __init__(self, pages: PageSessions) -> None:
        self.pages = pages

    def call(self, key: str | None, method: str, *args, **kwargs) -> Any:
        return unwrap(guarded(getattr(self.pages, method), *args, **kwargs))

    def call_once(self, key: str | None, method: str, *args, **kwargs) -> Any:
        return self.call(key, method, *args, **kwargs)

    def stream(self, key: str, method: str, *args, **kwargs) -> Iterator[Any]:
        return getattr(self.pages, method)(*args, **kwargs)


class ServeTransport:
    """Calls the replicas' ``page_<method>`` handle methods, routed by session key.

    Args:
        handle: ``DeploymentHandle`` of the replica deployment.
        timeout_s: seconds one call may take. retry_s: seconds a call is retried while the replica
            cannot be reached.
    """

    def __init__(self, handle, *, timeout_s: float = 120.0, retry_s: float = 30.0) -> None:
        self.handle = handle
        self.timeout_s = float(timeout_s)
        self.retry_s = float(retry_s)

    def _routed(self, key: str | None, **options):
        return self.handle.options(session_id=key, **options) if key else self.handle.options(**options)

    def _retrying(self, what: str, attempt: Callable[[], Any]) -> Any:
        deadline = time.monotonic() + self.retry_s
        delay = 0.25
        while True:
            try:
                return attempt()
            except Exception as exc:  # noqa: BLE001 - Ray's errors: the replica died, is replaced, timed out
                if time.monotonic() + delay > deadline:
                    raise ReplicaUnreachable(f"{what}: the session's replica did not answer: {exc}") from exc
                logger.info("%s: replica unreachable (%s), retrying", what, exc)
                time.sleep(delay)
                delay = min(2.0, delay * 2)

    def call(self, key: str | None, method: str, *args, **kwargs) -> Any:
        def attempt():
            return getattr(self._routed(key), f"page_{method}").remote(*args, **kwargs).result(timeout_s=self.timeout_s)

        return unwrap(self._retrying(method, attempt))

    def call_once(self, key: str | None, method: str, *args, **kwargs) -> Any:
        """As :meth:`call`, without retrying (the event poll: the next poll is the retry)."""
        try:
            reply = getattr(self._routed(key), f"page_{method}").remote(*args, **kwargs).result(timeout_s=self.timeout_s)
        except Exception as exc:  # noqa: BLE001 - Ray's errors
            raise ReplicaUnreachable(f"{method}: the session's replica did not answer: {exc}") from exc
        return unwrap(reply)

    def stream(self, key: str, method: str, *args, **kwargs) -> Iterator[Any]:
        def start():
            gen = getattr(self._routed(key, stream=True), f"page_{method}").remote(*args, **kwargs)
            return gen, next(iter(gen))  # the first item: the replica took the request

        gen, first = self._retrying(method, start)

        def items():
            yield first
            try:
                yield from gen
            except Exception as exc:  # noqa: BLE001 - the replica died mid-stream
                raise ReplicaUnreachable(f"{method}: the session's replica stopped answering: {exc}") from exc
            finally:
                try:
                    gen.cancel()
                except Exception:  # noqa: BLE001 - finished already
                    pass

        return items()


class RemoteManager:
    """The page's manager: each session's calls go to its owner replica through ``transport``.

    Args:
        transport: :class:`ServeTransport` or :class:`LocalTransport`.
        info: what :meth:`PageSessions.info` returns (None: asked of any replica now, retried for
            ``wait_s`` while none answers).
    """

    def __init__(self, transport, *, info: dict | None = None, wait_s: float = 120.0) -> None:
        self.transport = transport
        if info is None:
            deadline = time.monotonic() + wait_s
            while True:
                try:
                    info = transport.call(None, "info")
                    break
                except ReplicaUnreachable:
                    if time.monotonic() > deadline:
                        raise
        self.config = info["config"]
        self.model_notice = info.get("model_notice")
        self.speech = bool(info.get("speech"))
        self.backend = SimpleNamespace(spec=info.get("spec"))  # the page reads backend.spec (name, random weights)
        self._lock = threading.Lock()
        self._open: set[str] = set()
        self._subscribers: dict[str, list[Callable[[dict], None]]] = {}
        self._seen: dict[str, int] = {}
        self._poller: threading.Thread | None = None
        self._stop = threading.Event()

    # ---- sessions ---------------------------------------------------------------------------------
    def create_session(self, overrides: dict | None = None, *, owner: str | None = None) -> str:
        """Open a new page session on the replica its fresh key maps to; returns the key (the page's
        session id). Raises what the manager raises (``SessionLimit``, ``ConfigError`` ...)."""
        key = PAGE_KEY_PREFIX + uuid.uuid4().hex[:20]
        self.transport.call(key, "open", key, overrides, owner=owner)
        with self._lock:
            self._open.add(key)
        return key

    def close_session(self, sid: str, *, reason: str = "closed", save: bool = True) -> None:
        """Close page session ``sid`` on its owner (a page session is not saved: nobody reopens a tab's key)."""
        with self._lock:
            self._open.discard(sid)
            self._subscribers.pop(sid, None)
            self._seen.pop(sid, None)
        self.transport.call(sid, "close", sid, reason)

    def sessions(self) -> list[str]:
        """The page sessions this manager opened and did not close."""
        with self._lock:
            return sorted(self._open)

    def _call(self, sid: str, method: str, *args, **kwargs) -> Any:
        with self._lock:
            known = sid in self._open
        if not known:  # never ask the cluster about a key the page closed: it would be taken over again
            raise UnknownSession(f"no page session {sid!r}")
        return self.transport.call(sid, "call", sid, method, args, kwargs)

    def session_config(self, sid: str):
        return self._call(sid, "session_config")

    def update_session(self, sid: str, overrides: dict):
        return self._call(sid, "update_session", overrides)

    def has_input(self, sid: str) -> bool:
        return self._call(sid, "has_input")

    def stats(self, sid: str) -> dict:
        """The owner's stats of the session (``cluster`` names the owner replica)."""
        return self._call(sid, "stats")

    def kept_history(self, sid: str) -> list:
        return self._call(sid, "kept_history")

    def transcript(self, sid: str, last: int | None = None) -> list:
        return self._call(sid, "transcript", last)

    # ---- input ------------------------------------------------------------------------------------
    def submit_frame(self, sid: str, frame) -> bool:
        return self._call(sid, "submit_frame", frame)

    def push_audio(self, sid: str, pcm, *, rate: int, pts: float | None = None):
        return self._call(sid, "push_audio", pcm, rate=rate, pts=pts)

    def set_source(self, sid: str, spec: str, *, fps: float | None = 1.0, realtime: bool = True,
                   allow_files: bool | None = None):
        """Pull ``spec`` into the session on its owner. A local file (an upload the page received,
        ``allow_files``) is sent to the owner as bytes, so the owner need not see the page's disk."""
        if allow_files and isinstance(spec, str) and os.path.isfile(spec):
            return self._play_file(sid, Path(spec), fps=fps, realtime=realtime)
        return self._call(sid, "set_source", spec, fps=fps, realtime=realtime)

    def _play_file(self, sid: str, path: Path, *, fps, realtime):
        self._call(sid, "has_input")  # an unknown session fails before any byte is sent
        upload_id = None
        with open(path, "rb") as fh:
            while True:
                data = fh.read(UPLOAD_CHUNK_BYTES)
                if not data and upload_id is not None:
                    break
                upload_id = self.transport.call(sid, "upload", sid, upload_id, data)
                if not data:
                    break
        return self.transport.call(sid, "play_upload", sid, upload_id, path.name, fps=fps, realtime=realtime)

    def stop_source(self, sid: str) -> bool:
        return self._call(sid, "stop_source")

    def source_progress(self, sid: str) -> dict | None:
        return self._call(sid, "source_progress")

    # ---- watch rules ------------------------------------------------------------------------------
    def watch(self, sid: str, rule: str):
        return self._call(sid, "watch", rule)

    def unwatch(self, sid: str, rule_id: str) -> bool:
        return self._call(sid, "unwatch", rule_id)

    def rules(self, sid: str) -> list:
        return self._call(sid, "rules")

    def alerts(self, sid: str) -> list:
        return self._call(sid, "alerts")

    # ---- questions --------------------------------------------------------------------------------
    def ask(self, sid: str, question: str, *, on_delta: Callable[[str], None] | None = None,
            max_new_tokens: int | None = None, top_k: int | None = None) -> concurrent.futures.Future:
        """As ``SessionManager.ask``: the answer streams from the owner (``on_delta`` per piece, on a
        thread of this process); the future gives the :class:`Answer`. A refusal raises here."""
        with self._lock:
            known = sid in self._open
        if not known:
            raise UnknownSession(f"no page session {sid!r}")
        items = self.transport.stream(sid, "ask", sid, question, max_new_tokens)
        kind, value = next(items)
        if kind == "error":
            raise value
        future: concurrent.futures.Future = concurrent.futures.Future()
        future.set_running_or_notify_cancel()

        def pump() -> None:
            try:
                for kind, value in items:
                    if kind == "delta":
                        if on_delta is not None:
                            on_delta(value)
                    elif kind == "answer":
                        future.set_result(value)
                        return
                    elif kind == "error":
                        future.set_exception(value)
                        return
                future.set_exception(ReplicaUnreachable("the answer stream ended without an answer"))
            except Exception as exc:  # noqa: BLE001 - the replica went away mid-answer
                if not future.done():
                    future.set_exception(exc)

        threading.Thread(target=pump, name=f"livesight-answer-{sid}", daemon=True).start()
        return future

    def cancel(self, sid: str) -> bool:
        return self._call(sid, "cancel")

    def answering(self, sid: str) -> bool:
        return self._call(sid, "answering")

    # ---- events -----------------------------------------------------------------------------------
    def subscribe(self, sid: str, callback: Callable[[dict], None]) -> Callable[[], None]:
        """Call ``callback(event)`` for the session's alerts, source errors and ends (polled from the
        owner every :data:`EVENT_POLL_S`); returns an unsubscribe function."""
        with self._lock:
            self._subscribers.setdefault(sid, []).append(callback)
            if self._poller is None:
                self._poller = threading.Thread(target=self._poll_loop, name="livesight-page-events", daemon=True)
                self._poller.start()

        def unsubscribe() -> None:
            with self._lock:
                callbacks = self._subscribers.get(sid)
                if callbacks and callback in callbacks:
                    callbacks.remove(callback)
                    if not callbacks:
                        del self._subscribers[sid]

        return unsubscribe

    def _poll_loop(self) -> None:
        while not self._stop.wait(EVENT_POLL_S):
            with self._lock:
                wanted = {sid: list(cbs) for sid, cbs in self._subscribers.items() if sid in self._open}
            for sid, callbacks in wanted.items():
                after = self._seen.get(sid, 0)
                try:
                    seq, events = self.transport.call_once(sid, "events", sid, after)
                    if seq < after:  # a new owner took the session over: its events count afresh
                        seq, events = self.transport.call_once(sid, "events", sid, 0)
                except Exception as exc:  # noqa: BLE001 - closed meanwhile, or the replica is being replaced
                    logger.debug("events of %s: %s", sid, exc)
                    continue
                with self._lock:
                    if sid in self._open:
                        self._seen[sid] = seq
                for event in events:
                    for callback in callbacks:
                        try:
                            callback(event)
                        except Exception:  # noqa: BLE001 - one page callback must not stop the others
                            logger.exception("page event callback failed")

    def shutdown(self) -> None:
        """Stop polling events (the sessions stay on their replicas until their tabs close or expire)."""
        self._stop.set()
