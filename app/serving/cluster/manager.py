"""Sessions keyed by the client's session id, kept on the shared memory root.

:class:`ClusterSessionManager` is the :class:`~app.serving.manager.SessionManager` of one replica.
A connection names its session (``x-session-id``, the websocket subprotocol or ``?session=``);
:meth:`ClusterSessionManager.open_keyed` takes the session over (a new epoch on the
:class:`~app.serving.cluster.storage.MemoryRoot`) and, when the root holds a saved memory for it,
reopens it with :meth:`Session.open_memory <app.engine.session.Session.open_memory>`: memory, dialog,
watch rules and stream clock survive a move between replicas. The session is saved to the root every
``ManagerConfig.save_interval_s`` while it changes (the one save interval of every persisted
session), and when it closes (disconnect, expiry, shutdown); what reached the session since the last
save is what a crash loses.

A server-pulled source (:meth:`set_source`) is recorded with the session (``source.json`` beside its
memory) while it runs. The next owner restarts a live network source (RTSP, a live HTTP stream) with
the same settings, under its own source policy, once the client is connected again
(``input_source.started`` with ``resumed: true``, or ``input_source.error``). A file, a download or
a webcam is not restarted: replaying a file from its start would put what the memory already holds
in it a second time, and a webcam or a path names a different device or file on another machine;
the client gets ``input_source.ended`` with reason ``"session moved"`` and sets it again if it wants.

The websocket handler creates its session with ``create_session(None, owner=...)``: inside a
connection the ingress prepared with :func:`prepared_session`, that call returns the prepared
session instead of a new one, so the websocket API's own handler serves cluster sessions unchanged.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from app.engine.session import Session
from app.engine.types import SessionClosed
from app.serving.cluster.errors import StaleEpoch, StorageError
from app.serving.cluster.storage import SOURCE_FILE, Claim, MemoryRoot
from app.serving.errors import LiveUpdateRefused, SessionLimit, UnknownSession
from app.serving.limits import LIVE_FIELDS, ManagerConfig
from app.serving.manager import SessionManager
from app.serving.scheduler import CONTROL, SchedulerClosed

logger = logging.getLogger(__name__)

#: The session id the current connection was prepared with (see :func:`prepared_session`).
_PREPARED: contextvars.ContextVar[str | None] = contextvars.ContextVar("livesight_prepared_session", default=None)
#: Settings the memory root decides for a keyed session; clients cannot change them.
ROOT_FIELDS = frozenset({"memory_dir", "persist"})
#: How often sessions are checked for a take-over elsewhere when periodic saves are off
#: (``save_interval_s=None``): a zombie copy still learns that it lost its session.
EPOCH_CHECK_S = 10.0
#: Why a recorded source is not restarted after a move, by kind (see the module docstring).
NOT_RESUMED = {
    "file": "a file is not played again after the session moved (it would repeat what the memory holds); "
            "set it again to play it from its start",
    "device": "a webcam names another device on this replica's machine; set the source again",
}


@contextlib.contextmanager
def prepared_session(sid: str) -> Iterator[None]:
    """Within this block (same task or thread context), ``create_session(None, ...)`` returns ``sid``."""
    token = _PREPARED.set(sid)
    try:
        yield
    finally:
        _PREPARED.reset(token)


@dataclass
class Keyed:
    """A keyed session of this replica: its key, manager id and hold on the root."""

    key: str
    sid: str
    claim: Claim
    lock: threading.RLock
    signature: tuple | None = None  # what the last save saw (next position, chunks, rules)
    save_errors: int = 0
    last_error: str | None = None
    source: dict | None = None  # the pulled source while it runs: {"spec", "fps", "realtime", "kind"}
    resume: dict | None = None  # a source the previous owner recorded, restarted once the client is back


class ClusterSessionManager(SessionManager):
    """A replica's session manager: sessions named by the client, saved to and reopened from ``root``.

    Args:
        backend, config, model_notice: as :class:`SessionManager`.
        root: the shared :class:`MemoryRoot`.
        replica: what stats report about this replica (``replica``, ``node``, ``pid``, ...).

    A changing session is saved every ``config.save_interval_s`` (None: only when it closes; the
    epoch is still checked every :data:`EPOCH_CHECK_S`).
    """

    def __init__(self, backend, config: ManagerConfig | None = None, *, root: MemoryRoot, replica: dict[str, Any],
                 model_notice: str | None = None) -> None:
        super().__init__(backend, config, model_notice=model_notice)
        self.root = root
        self.replica = dict(replica)
        self._keys_lock = threading.Lock()
        self._key_locks: dict[str, threading.RLock] = {}
        self._by_key: dict[str, Keyed] = {}
        self._by_sid: dict[str, Keyed] = {}
        self._openers: dict[str, Any] = {}
        self._cluster_counters = {"taken_over": 0, "restored": 0, "saves": 0, "save_errors": 0, "stale_refused": 0,
                                  "sources_resumed": 0, "removed": 0}
        self._saver_stop = threading.Event()
        self._saver = threading.Thread(target=self._save_loop, name="livesight-cluster-saver", daemon=True)
        self._saver.start()

    # ---- opening ----------------------------------------------------------------------------------
    def _lock_for(self, key: str) -> threading.RLock:
        with self._keys_lock:
            return self._key_locks.setdefault(key, threading.RLock())

    def open_keyed(self, key: str, *, owner: str | None = None) -> str:
        """Take session ``key`` over on this replica and return its manager session id.

        A live session of the same key here is saved and closed first (the newer connection wins).
        With a saved memory on the root the session is reopened from it now (model work, on the
        worker), so its first stats already show what it remembers. Blocking: call it off the loop.

        Raises:
            BadSessionKey, StorageError: the key or the root; SessionLimit: the replica is full.
        """
        with self._lock_for(key):
            old = self._by_key.get(key)
            if old is not None:
                self.close_session(old.sid, reason="replaced by a newer connection")
            elif len(self.sessions()) >= self.config.max_sessions:
                # before the claim: a refused session must not take the session from another owner
                raise SessionLimit(f"this replica holds {self.config.max_sessions} sessions already (max_sessions); "
                                   "close one, add replicas or try later")
            claim = self.root.claim(key, owner=str(self.replica.get("replica", "?")))
            try:
                # a reopened session's directory holds its saved memory, which the manager refuses for a new
                # session: the opener below builds it from there instead (its own config names the directory)
                overrides = None if claim.restored_from is not None else {"memory_dir": str(claim.local_dir),
                                                                          "persist": True}
                sid = super().create_session(overrides, owner=owner)
            except BaseException:
                self.root.release(claim)
                raise
            keyed = Keyed(key, sid, claim, self._lock_for(key))
            with self._keys_lock:
                self._by_key[key] = keyed
                self._by_sid[sid] = keyed
                self._cluster_counters["taken_over"] += 1
            if claim.restored_from is not None:
                directory = claim.local_dir
                self._openers[sid] = lambda cfg: Session.open_memory(self.backend, directory, cfg)
                try:
                    self.get(sid)  # reopened now, on the worker
                except BaseException:
                    self.close_session(sid, reason="could not reopen")
                    raise
                with self._keys_lock:
                    self._cluster_counters["restored"] += 1
                self._continue_clock(sid)
                keyed.resume = _read_source(directory)
            return sid

    def _continue_clock(self, sid: str) -> None:
        """A reopened session's pulled sources continue its saved stream time (as after any earlier
        frame), so a restarted or new source never goes back to moments the memory already holds."""
        stream_time = float(super().stats(sid).get("stream_time_s") or 0.0)
        entry = self._entry(sid)
        with entry.lock:
            if stream_time > 0 and (entry.last_pts is None or entry.last_pts < stream_time):
                entry.last_pts = stream_time

    def _save_persisted(self, entry) -> None:
        # keyed sessions are saved by the cluster's own loop, committed under their epoch (save_keyed)
        if entry.sid not in self._by_sid:
            super()._save_persisted(entry)

    def _build_session(self, sid: str, config) -> Session:
        # a session taken over with a saved memory is built from it instead of empty
        opener = self._openers.pop(sid, None)
        return super()._build_session(sid, config) if opener is None else opener(config)

    def create_session(self, overrides: dict | None = None, *, owner: str | None = None) -> str:
        """As :meth:`SessionManager.create_session`; inside :func:`prepared_session` (without
        overrides) the prepared keyed session is returned instead of a new one."""
        prepared = _PREPARED.get()
        if prepared is not None and overrides is None and prepared in self._by_sid:
            _PREPARED.set(None)  # one connection, one session
            return prepared
        return super().create_session(overrides, owner=owner)

    def key_of(self, sid: str) -> str | None:
        """The session key of manager session ``sid`` (None: not a keyed session)."""
        keyed = self._by_sid.get(sid)
        return keyed.key if keyed is not None else None

    # ---- settings -----------------------------------------------------------------------------------
    def update_session(self, sid: str, overrides: dict) -> Any:
        """As :meth:`SessionManager.update_session`; a keyed session's ``memory_dir`` and ``persist``
        belong to the memory root, and a reopened session's input has started already."""
        keyed = self._by_sid.get(sid)
        if keyed is not None and isinstance(overrides, dict):
            current = self.session_config(sid)
            changed = sorted(k for k, v in overrides.items() if k in current.to_dict() and current.to_dict()[k] != v)
            fixed = [k for k in changed if k in ROOT_FIELDS]
            if fixed:
                raise LiveUpdateRefused(f"{', '.join(fixed)} cannot be set on a cluster session: its memory is kept on "
                                        "the cluster's memory root")
            if keyed.claim.restored_from is not None:
                fixed = [k for k in changed if k not in LIVE_FIELDS]
                if fixed:
                    raise LiveUpdateRefused(
                        f"{', '.join(fixed)} cannot change: this session was reopened from its saved memory, so its "
                        f"input has started (settings that can: {', '.join(sorted(LIVE_FIELDS))})")
        return super().update_session(sid, overrides)

    # ---- saving -------------------------------------------------------------------------------------
    def _signature(self, sid: str) -> tuple | None:
        snap = super().stats(sid)
        if "next_position" not in snap:  # not built yet: nothing to save
            return None
        return (snap.get("next_position"), snap.get("bank_chunks"), snap.get("watch_rules"), snap.get("frames"))

    def save_keyed(self, sid: str, *, force: bool = False) -> bool:
        """Save keyed session ``sid`` to the root now (on the model worker); False when unchanged.

        Raises:
            StaleEpoch: another replica took the session over (nothing was written).
            StorageError: the root failed. UnknownSession: no such open session.
        """
        keyed = self._by_sid.get(sid)
        if keyed is None:
            raise UnknownSession(f"no keyed session {sid!r} on this replica")
        with keyed.lock:
            signature = self._signature(sid)
            if signature is None or (not force and signature == keyed.signature):
                return False
            session = self.get(sid)
            source = self._running_source(keyed)

            def save() -> None:
                session.save()
                _write_source(keyed.claim.local_dir, source)

            def work() -> None:
                self.root.commit(keyed.claim, save)

            if self.scheduler.in_worker():
                work()
            else:
                try:
                    self.scheduler.submit(CONTROL, work, key=sid).result()
                except SchedulerClosed:  # shutting down: the worker is gone, nothing else runs model work
                    work()
            keyed.signature = signature
            with self._keys_lock:
                self._cluster_counters["saves"] += 1
            return True

    # ---- server-pulled sources ----------------------------------------------------------------------
    def set_source(self, sid: str, spec: str, *, fps: float | None = 1.0, realtime: bool = True,
                   allow_files: bool | None = None) -> Any:
        """As :meth:`SessionManager.set_source`; a keyed session records the source with its memory, so
        the next owner restarts it after a move when it is a live network source (module docstring)."""
        info = super().set_source(sid, spec, fps=fps, realtime=realtime, allow_files=allow_files)
        keyed = self._by_sid.get(sid)
        if keyed is not None:
            keyed.resume = None  # the client chose a source itself: a recorded one is not restarted
            keyed.source = {"spec": spec.strip(), "fps": fps, "realtime": bool(realtime),
                            "kind": _source_kind(info)}
            keyed.signature = None  # the next save records it
        return info

    def stop_source(self, sid: str) -> bool:
        """As :meth:`SessionManager.stop_source`; a stopped source is not restarted after a move."""
        keyed = self._by_sid.get(sid)
        if keyed is not None:
            keyed.source = keyed.resume = None
            keyed.signature = None
        return super().stop_source(sid)

    def _running_source(self, keyed: Keyed) -> dict | None:
        """The recorded source while it still runs (one that ended or failed is not restarted)."""
        if keyed.source is None:
            return None
        progress = self.source_progress(keyed.sid)
        if progress is None or progress.get("finished") or progress.get("error"):
            return None
        return keyed.source

    def subscribe(self, sid: str, callback) -> Any:
        """As :meth:`SessionManager.subscribe`; the first subscriber of a reopened session (its client,
        connected again) also starts the restart of the source the previous owner recorded."""
        unsubscribe = super().subscribe(sid, callback)
        keyed = self._by_sid.get(sid)
        if keyed is not None and keyed.resume is not None:
            record, keyed.resume = keyed.resume, None
            # opening a source can take source_open_timeout_s: never on the caller's (event loop) thread
            threading.Thread(target=self._resume_source, args=(keyed, record), daemon=True,
                             name=f"livesight-resume-{keyed.key}").start()
        return unsubscribe

    def _resume_source(self, keyed: Keyed, record: dict) -> None:
        from streaming.schemes import redact

        entry = self._entry(keyed.sid)
        name = redact(record["spec"])
        if record["kind"] != "live":
            self._emit(entry, {"type": "input_source.ended", "source": name, "reason": "session moved", "frames": 0,
                               "pts": entry.last_pts, "message": NOT_RESUMED[record["kind"]]})
            return
        try:
            info = self.set_source(keyed.sid, record["spec"], fps=record["fps"], realtime=record["realtime"])
        except UnknownSession:
            return  # closed meanwhile
        except Exception as exc:  # noqa: BLE001 - refused by this replica's policy, unreachable, ...: the client hears why
            logger.warning("session %s: source %s not restarted after the move: %s", keyed.key, name, exc)
            self._emit(entry, {"type": "input_source.error", "source": name, "resumed": True, "error": {
                "code": getattr(exc, "code", None) or "source_error", "source_error": type(exc).__name__,
                "message": f"the session's source was not restarted after it moved to this replica: {exc}"}})
            return
        self._count("sources_resumed")
        logger.info("session %s: source %s restarted after the move", keyed.key, name)
        self._emit(entry, {"type": "input_source.started", "source": _asdict(info), "resumed": True})

    def _save_quietly(self, keyed: Keyed, *, force: bool = False) -> None:
        try:
            self.save_keyed(keyed.sid, force=force)
        except StaleEpoch as exc:
            logger.warning("%s", exc)
            raise
        except (UnknownSession, SessionClosed):
            pass
        except Exception as exc:  # noqa: BLE001 - a failed save is retried at the next interval
            keyed.save_errors += 1
            keyed.last_error = str(exc)
            with self._keys_lock:
                self._cluster_counters["save_errors"] += 1
            logger.exception("saving session %s (%s) failed", keyed.key, keyed.sid)

    @property
    def save_interval_s(self) -> float | None:
        """Seconds between saves of a changing session: the manager's one ``save_interval_s``."""
        return self.config.save_interval_s

    def _save_loop(self) -> None:
        interval = self.config.save_interval_s
        while not self._saver_stop.wait(interval if interval is not None else EPOCH_CHECK_S):
            with self._keys_lock:
                keyed_all = list(self._by_sid.values())
            for keyed in keyed_all:
                try:
                    if interval is not None:
                        self._save_quietly(keyed)
                    self.root.check(keyed.claim)  # an unchanged session learns of a take-over too
                except StaleEpoch:  # another replica owns it now: this copy must stop
                    self._count("stale_refused")
                    super().close_session(keyed.sid, reason="moved to another replica", save=False)
                    self._forget(keyed)
                except Exception:  # noqa: BLE001 - the root is unreachable now: try again next time
                    logger.exception("checking session %s on the memory root failed", keyed.key)

    def _count(self, name: str) -> None:
        with self._keys_lock:
            self._cluster_counters[name] += 1

    def _forget(self, keyed: Keyed) -> None:
        with self._keys_lock:
            self._by_sid.pop(keyed.sid, None)
            if self._by_key.get(keyed.key) is keyed:
                del self._by_key[keyed.key]
        self._openers.pop(keyed.sid, None)
        self.root.release(keyed.claim)

    def close_session(self, sid: str, *, reason: str = "closed", save: bool = True, remove: bool = False) -> None:
        """As :meth:`SessionManager.close_session`; a keyed session is saved to the root first, committed
        under its epoch (unless another replica took it over), so a reconnect anywhere finds it.

        With ``remove`` (implies no save) a keyed session's memory is deleted from the root instead, unless
        another replica took it over: for sessions nobody can reconnect to, such as a closed page tab's."""
        keyed = self._by_sid.get(sid)
        if keyed is None:
            return super().close_session(sid, reason=reason, save=save and not remove)
        with keyed.lock:
            try:
                if save and not remove:
                    self._save_quietly(keyed, force=True)
            except StaleEpoch:
                self._count("stale_refused")
                reason = "moved to another replica"
            super().close_session(sid, reason=reason, save=False)  # never an uncommitted save of a keyed session
            if remove:
                try:
                    if self.root.remove(keyed.claim):
                        self._count("removed")
                except StorageError as exc:  # a leftover memory costs space only
                    logger.warning("session %s: %s", keyed.key, exc)
            self._forget(keyed)

    def shutdown(self, timeout: float = 10.0) -> None:
        """Save and close every session (see :meth:`SessionManager.shutdown`) and stop the saver."""
        self._saver_stop.set()
        super().shutdown(timeout=timeout)
        if threading.current_thread() is not self._saver:
            self._saver.join(5.0)

    # ---- stats --------------------------------------------------------------------------------------
    def stats(self, sid: str) -> dict:
        """As :meth:`SessionManager.stats`, plus ``cluster``: the owner replica (``replica``, ``node``,
        ``pid``, ``actor``), the session ``key``, its ``epoch``, ``restored_from``, ``saves``,
        ``last_save_s_ago``, ``save_errors``, ``last_error``."""
        out = super().stats(sid)
        keyed = self._by_sid.get(sid)
        cluster = dict(self.replica)
        if keyed is not None:
            claim = keyed.claim
            cluster.update(key=keyed.key, epoch=claim.epoch, restored_from=claim.restored_from, saves=claim.saves,
                           last_save_s_ago=None if claim.last_save is None else round(time.time() - claim.last_save, 3),
                           save_errors=keyed.save_errors, last_error=keyed.last_error)
        out["cluster"] = cluster
        return out

    def manager_stats(self) -> dict:
        """As :meth:`SessionManager.manager_stats`, plus ``cluster``: this replica, its session keys, counters."""
        out = super().manager_stats()
        with self._keys_lock:
            out["cluster"] = {**self.replica, "keys": sorted(self._by_key), **self._cluster_counters}
        return out


def _source_kind(info: Any) -> str:
    """``"live"`` (a network stream without an end: restarted after a move), ``"file"`` (a file, or a
    URL whose container has a duration, a recording: not replayed) or ``"device"`` (a webcam: another
    device on another machine). ``info.live`` alone cannot tell: a file played in real time is live."""
    kind = getattr(info, "kind", None)
    if kind == "webcam":
        return "device"
    if kind == "url" and not getattr(info, "duration_s", None):
        return "live"
    return "file"


def _write_source(directory: Path, source: dict | None) -> None:
    """Record the running source beside the session's memory (no file: none runs)."""
    from memory.store import atomic_write

    path = Path(directory) / SOURCE_FILE
    if source is None:
        path.unlink(missing_ok=True)
    else:
        atomic_write(path, json.dumps({"format": "livesight-source", "version": 1, **source}).encode())


def _read_source(directory: Path) -> dict | None:
    """The source the previous owner recorded (None: none, or an unreadable record, logged)."""
    path = Path(directory) / SOURCE_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        record = {"spec": str(data["spec"]), "fps": data.get("fps"), "realtime": bool(data.get("realtime", True)),
                  "kind": str(data["kind"])}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        logger.warning("%s is unreadable (%s): the session's source is not restarted", path, exc)
        return None
    if record["kind"] not in ("live", "file", "device"):
        logger.warning("%s names an unknown source kind %r: not restarted", path, record["kind"])
        return None
    return record


def _asdict(info: Any) -> dict:
    import dataclasses

    return dataclasses.asdict(info) if dataclasses.is_dataclass(info) else dict(info)
