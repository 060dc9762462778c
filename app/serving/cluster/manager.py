"""Sessions keyed by the client's session id, kept on the shared memory root.

:class:`ClusterSessionManager` is the :class:`~app.serving.manager.SessionManager` of one replica.
A connection names its session (``x-session-id``, the websocket subprotocol or ``?session=``);
:meth:`ClusterSessionManager.open_keyed` takes the session over (a new epoch on the
:class:`~app.serving.cluster.storage.MemoryRoot`) and, when the root holds a saved memory for it,
reopens it with :meth:`Session.open_memory <app.engine.session.Session.open_memory>`: memory, dialog
and stream clock survive a move between replicas. The session is saved to the root every
``save_interval_s`` while it changes, and when it closes (disconnect, expiry, shutdown); what
reached only the local window since the last save is what a crash loses.

The websocket handler creates its session with ``create_session(None, owner=...)``: inside a
connection the ingress prepared with :func:`prepared_session`, that call returns the prepared
session instead of a new one, so the websocket API's own handler serves cluster sessions unchanged.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Iterator

from app.engine.session import Session
from app.engine.types import SessionClosed
from app.serving.cluster.errors import ClusterConfigError, StaleEpoch
from app.serving.cluster.storage import Claim, MemoryRoot
from app.serving.errors import LiveUpdateRefused, SessionLimit, UnknownSession
from app.serving.limits import LIVE_FIELDS, ManagerConfig
from app.serving.manager import SessionManager
from app.serving.scheduler import CONTROL, SchedulerClosed
from streaming.checks import check_number

logger = logging.getLogger(__name__)

#: The session id the current connection was prepared with (see :func:`prepared_session`).
_PREPARED: contextvars.ContextVar[str | None] = contextvars.ContextVar("livesight_prepared_session", default=None)
#: Settings the memory root decides for a keyed session; clients cannot change them.
ROOT_FIELDS = frozenset({"memory_dir", "persist"})


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


class ClusterSessionManager(SessionManager):
    """A replica's session manager: sessions named by the client, saved to and reopened from ``root``.

    Args:
        backend, config, model_notice: as :class:`SessionManager`.
        root: the shared :class:`MemoryRoot`.
        replica: what stats report about this replica (``replica``, ``node``, ``pid``, ...).
        save_interval_s: seconds between saves of a changing session. [0.2, 3600]
    """

    def __init__(self, backend, config: ManagerConfig | None = None, *, root: MemoryRoot, replica: dict[str, Any],
                 save_interval_s: float = 10.0, model_notice: str | None = None) -> None:
        check_number("save_interval_s", save_interval_s, low=0.2, high=3600.0, low_inclusive=True, error=ClusterConfigError)
        super().__init__(backend, config, model_notice=model_notice)
        self.root = root
        self.replica = dict(replica)
        self.save_interval_s = float(save_interval_s)
        self._keys_lock = threading.Lock()
        self._key_locks: dict[str, threading.RLock] = {}
        self._by_key: dict[str, Keyed] = {}
        self._by_sid: dict[str, Keyed] = {}
        self._openers: dict[str, Any] = {}
        self._cluster_counters = {"taken_over": 0, "restored": 0, "saves": 0, "save_errors": 0, "stale_refused": 0}
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
            return sid

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

            def work() -> None:
                self.root.commit(keyed.claim, session.save)

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

    def _save_loop(self) -> None:
        while not self._saver_stop.wait(self.save_interval_s):
            with self._keys_lock:
                keyed_all = list(self._by_sid.values())
            for keyed in keyed_all:
                try:
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

    def close_session(self, sid: str, *, reason: str = "closed", save: bool = True) -> None:
        """As :meth:`SessionManager.close_session`; a keyed session is saved to the root first, committed
        under its epoch (unless another replica took it over), so a reconnect anywhere finds it."""
        keyed = self._by_sid.get(sid)
        if keyed is None:
            return super().close_session(sid, reason=reason, save=save)
        with keyed.lock:
            try:
                if save:
                    self._save_quietly(keyed, force=True)
            except StaleEpoch:
                self._count("stale_refused")
                reason = "moved to another replica"
            super().close_session(sid, reason=reason, save=False)  # never an uncommitted save of a keyed session
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
