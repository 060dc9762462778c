"""The replica's side of the page under ``--ray``: page sessions served by key on their owner.

The Gradio page runs in its own model-free deployment (:mod:`app.serving.cluster.page`); every
operation of a tab's session reaches the tab's owner replica through a Ray Serve handle routed by the
session's key (:mod:`app.serving.cluster.remote_manager`), and lands here. :class:`PageSessions`
maps keys (``page-<random>``) to the replica's :class:`ClusterSessionManager` sessions, keyed
sessions like a websocket's: epochs, saves and take-over on the memory root.

A key this replica does not hold but the memory root knows (its owner died, or the ring moved it
here) is taken over from the root on the first call for it, so a page session survives a replica
failure as a websocket session does. Events the page shows (alerts, source errors) are buffered per
key and polled by the page (:meth:`PageSessions.events`). Uploaded videos reach the owner as bytes
(:meth:`PageSessions.upload`), so the page and the replica need not share a file system.

Knows nothing of Ray: the deployment calls it, and so can a test.
"""

from __future__ import annotations

import logging
import os
import pickle
import queue
import re
import shutil
import tempfile
import threading
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from app.serving.errors import InvalidRequest, ManagerError, UnknownSession

logger = logging.getLogger(__name__)

#: Session keys the page creates start with this (the rest is random).
PAGE_KEY_PREFIX = "page-"
#: Events buffered per page session for the page's poll (older ones are dropped).
EVENT_BUFFER = 500
#: Event types the page shows (everything else stays on the replica).
PAGE_EVENTS = frozenset({"alert.triggered", "input_source.error", "input_source.ended", "error", "session.closed"})
#: The largest video file the page may upload to a replica, in bytes.
MAX_UPLOAD_BYTES = 4 * 2**30
#: Manager methods the page may call by name, with the session id as first argument.
PAGE_CALLS = frozenset({
    "session_config", "update_session", "has_input", "stop_source", "source_progress", "stats", "watch",
    "unwatch", "rules", "cancel", "transcript", "kept_history", "submit_frame", "push_audio", "answering",
    "alerts", "set_source",
})


@dataclass
class PageSession:
    """A page session on this replica: its manager session id, events and uploaded file."""

    key: str
    sid: str
    events: deque = field(default_factory=lambda: deque(maxlen=EVENT_BUFFER))  # (seq, event)
    seq: int = 0
    unsubscribe: Any = None
    upload: Path | None = None  # the uploaded video playing now (deleted when replaced or closed)


def portable(exc: BaseException) -> BaseException:
    """``exc`` if it survives pickling (Ray carries it to the page), else a :class:`ManagerError`
    with its message (an exception whose constructor takes other arguments than its message)."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001 - any unpicklable exception is re-made
        return ManagerError(str(exc))


class PageSessions:
    """Page sessions of one replica, by key.

    Args:
        manager: the replica's :class:`~app.serving.cluster.manager.ClusterSessionManager`.
        upload_dir: where uploaded videos are kept while they play (None: a temp directory).
    """

    def __init__(self, manager, *, upload_dir: str | None = None) -> None:
        self.manager = manager
        self._lock = threading.RLock()
        self._pages: dict[str, PageSession] = {}
        self._uploads: dict[str, tuple[Path, int]] = {}  # upload id -> (partial file, bytes so far)
        self._opening: dict[str, threading.Lock] = {}  # key -> held while the key is taken over here
        self._dir = Path(upload_dir) if upload_dir else Path(tempfile.mkdtemp(prefix="livesight-page-uploads-"))
        self._dir.mkdir(parents=True, exist_ok=True)

    # ---- what the page reads once ------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        """What the page needs of the engine: ``config`` (ManagerConfig), ``spec`` (the model's
        BackendSpec), ``model_notice`` and ``speech``."""
        return {"config": self.manager.config, "spec": getattr(self.manager.backend, "spec", None),
                "model_notice": getattr(self.manager, "model_notice", None),
                "speech": bool(getattr(self.manager, "speech", False))}

    # ---- sessions -----------------------------------------------------------------------------------
    def _register(self, key: str, sid: str) -> PageSession:
        page = PageSession(key, sid)

        def on_event(event: dict, _page=page) -> None:
            if event.get("type") in PAGE_EVENTS:
                with self._lock:
                    _page.seq += 1
                    _page.events.append((_page.seq, dict(event)))

        page.unsubscribe = self.manager.subscribe(sid, on_event)
        with self._lock:
            old = self._pages.get(key)
            self._pages[key] = page
        if old is not None:
            self._drop(old)
        return page

    def open(self, key: str, overrides: dict | None = None, *, owner: str | None = None) -> str:
        """Open page session ``key`` here (a new keyed session; ``overrides`` validated by the
        manager: bad ones leave nothing open). Returns ``key``.

        Raises:
            InvalidRequest: ``key`` is not a page key. BadSessionKey, SessionLimit, ConfigError: from the manager.
        """
        if not isinstance(key, str) or not key.startswith(PAGE_KEY_PREFIX):
            raise InvalidRequest(f"a page session key starts with {PAGE_KEY_PREFIX!r}; got {key!r}")
        sid = self.manager.open_keyed(key, owner=owner)
        try:
            if overrides:
                self.manager.update_session(sid, dict(overrides))
            self._register(key, sid)
        except BaseException:
            self.manager.close_session(sid, reason="could not open", save=False)
            raise
        return key

    def _page(self, key: str) -> PageSession:
        """The live page session ``key``, taken over from the memory root when this replica does not
        hold it but the root does (its owner died or the ring moved it here).

        Raises:
            UnknownSession: no such session here or on the root.
        """
        with self._lock:
            page = self._pages.get(key)
        if page is not None and self.manager.key_of(page.sid) == key and page.sid in self.manager.sessions():
            return page
        if page is not None:  # closed here meanwhile (expired, replaced, moved)
            with self._lock:
                if self._pages.get(key) is page:
                    del self._pages[key]
            self._drop(page)
        if not isinstance(key, str) or not key.startswith(PAGE_KEY_PREFIX):
            raise UnknownSession(f"no page session {key!r}")
        with self._lock:
            opening = self._opening.setdefault(key, threading.Lock())
        with opening:  # calls racing for a key not here yet take it over once
            with self._lock:
                page = self._pages.get(key)
            if page is not None and page.sid in self.manager.sessions():
                return page
            if self.manager.root.current_epoch(key) == 0:
                raise UnknownSession(f"no page session {key!r} on this replica or on the memory root")
            logger.info("page session %s: taken over from the memory root", key)
            sid = self.manager.open_keyed(key, owner="page")
            return self._register(key, sid)

    def call(self, key: str, method: str, args: tuple = (), kwargs: dict | None = None) -> Any:
        """``manager.<method>(sid, *args, **kwargs)`` on page session ``key`` (see :data:`PAGE_CALLS`).

        ``set_source`` never opens this replica's own files (the page uploads files instead).
        """
        if method not in PAGE_CALLS:
            raise InvalidRequest(f"the page cannot call {method!r}")
        kwargs = dict(kwargs or {})
        if method == "set_source":
            kwargs["allow_files"] = False
        page = self._page(key)
        result = getattr(self.manager, method)(page.sid, *args, **kwargs)
        if method in ("set_source", "stop_source"):
            self._clear_upload(page)
        return result

    def events(self, key: str, after: int = 0) -> tuple[int, list[dict]]:
        """Events of page session ``key`` newer than sequence number ``after``: ``(newest seq, events)``."""
        page = self._page(key)
        with self._lock:
            return page.seq, [event for seq, event in page.events if seq > after]

    def close(self, key: str, reason: str = "page closed") -> bool:
        """Close page session ``key`` here and delete its memory from the root (a tab that went is not
        reopened by anyone: nothing will ask for its key again). False when it was not open here."""
        with self._lock:
            page = self._pages.pop(key, None)
            self._opening.pop(key, None)
        if page is None:
            return False
        self._drop(page)
        self.manager.close_session(page.sid, reason=reason, remove=True)
        return True

    def _drop(self, page: PageSession) -> None:
        if page.unsubscribe is not None:
            try:
                page.unsubscribe()
            except Exception:  # noqa: BLE001 - the session may be gone already
                pass
        self._clear_upload(page)

    def _clear_upload(self, page: PageSession) -> None:
        path, page.upload = page.upload, None
        if path is not None:
            try:
                path.unlink()
            except OSError:
                pass

    # ---- questions ----------------------------------------------------------------------------------
    def ask(self, key: str, question: str, max_new_tokens: int | None = None) -> Iterator[tuple[str, Any]]:
        """Ask in page session ``key``; yields ``("started", None)`` once the manager took the question,
        ``("delta", text)`` per piece of answer, then ``("answer", Answer)`` or ``("error", exception)``.

        A refusal (another answer running, an empty question) comes as the first item,
        ``("error", exc)``. Closing the generator early cancels the answer.
        """
        pieces: queue.Queue = queue.Queue()
        try:
            page = self._page(key)
            future = self.manager.ask(page.sid, question, on_delta=lambda text: pieces.put(("delta", text)),
                                      max_new_tokens=max_new_tokens)
        except Exception as exc:  # noqa: BLE001 - carried to the page, raised there
            yield "error", portable(exc)
            return
        future.add_done_callback(lambda f: pieces.put(("done", f)))
        finished = False
        try:
            yield "started", None
            while True:
                kind, value = pieces.get()
                if kind == "delta":
                    yield "delta", value
                    continue
                finished = True
                try:
                    answer = value.result()
                except BaseException as exc:  # noqa: BLE001 - cancelled or failed: the page says why
                    yield "error", portable(exc if isinstance(exc, Exception) else RuntimeError(str(exc)))
                    return
                yield "answer", answer
                return
        finally:
            if not finished and not future.done():
                try:
                    self.manager.cancel(page.sid)
                except Exception:  # noqa: BLE001 - closed meanwhile
                    pass

    # ---- uploaded videos ----------------------------------------------------------------------------
    def upload(self, key: str, upload_id: str | None, data: bytes) -> str:
        """Append ``data`` to upload ``upload_id`` (None: start one) of page session ``key``; returns the id.

        Raises:
            InvalidRequest: an unknown upload id, or more than :data:`MAX_UPLOAD_BYTES` in all.
        """
        self._page(key)
        with self._lock:
            if upload_id is None:
                upload_id = uuid.uuid4().hex
                self._uploads[upload_id] = (self._dir / f"{upload_id}.part", 0)
            if upload_id not in self._uploads:
                raise InvalidRequest(f"no upload {upload_id!r} in progress")
            path, size = self._uploads[upload_id]
            size += len(data)
            if size > MAX_UPLOAD_BYTES:
                del self._uploads[upload_id]
                path.unlink(missing_ok=True)
                raise InvalidRequest(f"an uploaded video is limited to {MAX_UPLOAD_BYTES // 2**20} MiB")
            self._uploads[upload_id] = (path, size)
        with open(path, "ab") as fh:
            fh.write(data)
        return upload_id

    def play_upload(self, key: str, upload_id: str, name: str, *, fps: float | None = 1.0,
                    realtime: bool = True) -> Any:
        """Play the finished upload as session ``key``'s source (see ``SessionManager.set_source``).
        Returns the source's ``SourceInfo``; the file is deleted when the source is replaced or the
        session closes."""
        page = self._page(key)
        with self._lock:
            entry = self._uploads.pop(upload_id, None)
        if entry is None:
            raise InvalidRequest(f"no upload {upload_id!r} in progress")
        part, _ = entry
        # the name's extension only (PyAV reads the container from the bytes; the name helps the log)
        suffix = re.sub(r"[^A-Za-z0-9]", "", Path(str(name or "")).suffix)[:10]
        final = part.with_suffix("." + (suffix or "video"))
        os.replace(part, final)
        try:
            info = self.manager.set_source(page.sid, str(final), fps=fps, realtime=realtime, allow_files=True)
        except BaseException:
            final.unlink(missing_ok=True)
            raise
        self._clear_upload(page)
        page.upload = final
        return info

    # ---- shutting down ------------------------------------------------------------------------------
    def close_all(self) -> None:
        """Forget every page session (the manager saves and closes them itself) and remove the uploads."""
        with self._lock:
            pages = list(self._pages.values())
            self._pages.clear()
            self._uploads.clear()
        for page in pages:
            self._drop(page)
        shutil.rmtree(self._dir, ignore_errors=True)
