"""Many sessions, one loaded model: the session manager behind the websocket API and the page.

* All model work of all sessions runs on one :class:`~app.serving.scheduler.Scheduler` worker thread, by
  priority: answers and text events (in the order they were submitted, so a question sees the text
  sent before it), then control work (building a session), then watch-rule checks, then frames. Each
  session keeps at most one pending frame (newest wins); the replaced frame is counted as dropped
  (``backlog``). Frames beyond ``max_fps`` are refused at once (``rate_limit``). Sessions share the
  worker fairly: it serves them by the worker time each has used, at every priority, and an answer
  yields between tokens to sessions that used less (:class:`~app.serving.scheduler.Scheduler`).
* A session that persists (``memory_dir`` + ``persist``) is saved every ``save_interval_s`` while its
  input changes, and when it closes (``Session.save``:
  the window's frames are banked and ``session.json`` written), so ``livesight ask --memory`` reopens
  it; a ``memory_dir`` that holds a saved memory, is not empty, or is another open session's is refused.
* A session's model state (:class:`~app.engine.session.Session`, whose sink prefill is model work) is
  built on the worker when it is first needed: by its first frame, text event, question or watch
  rule, or by :meth:`SessionManager.get`. Until then :meth:`SessionManager.update_session` may
  change any setting; afterwards only :data:`LIVE_FIELDS`.
* Watch rules: frames are ingested with ``evaluate_watches=False``; when a frame's drop ratio
  signals a scene change and the session has rules, ``Session.check_watches`` is queued at alert
  priority (one pending check per session; a pending one already sees the newest frames) and each
  alert goes to subscribers as an ``alert.triggered`` event.
* A session can pull its own source (:meth:`SessionManager.set_source`): a file, RTSP or HTTP
  stream is read by a per-session thread and its frames enter like pushed ones.
* Speech (``ManagerConfig.asr``): each session that gets audio (pushed with :meth:`SessionManager.push_audio`,
  or the sound track of a pulled source) has its own transcriber, on its own thread; each segment it
  hears enters the session as a timed speech event (:meth:`SessionManager.submit_speech`), at answer
  priority and in order with text events and questions. Audio never runs on the event loop or the
  model worker.
* A housekeeping thread sends ``input_video.stats`` events every ``stats_interval_s`` while frames
  flow and closes sessions idle for ``session_ttl_s`` (subscribers get ``session.closed``).
* Every failure of a task belongs to its session: it becomes an exception of that call's future
  or an ``error`` event for that session, never a crash of the process or another session.

Events given to :meth:`SessionManager.subscribe` callbacks are plain dicts with a ``type``:
``input_video.stats`` ``{stats}``, ``alert.triggered`` ``{rule_id, rule, pts, answer, wall}``,
``input_audio.transcript`` ``{t_start, t_end, text, tokens}`` (a speech segment the session has
prefilled), ``input_source.ended`` ``{source, reason, frames, pts}``, ``input_source.error``
``{source, error: {code, source_error, message}}``, ``input_source.stalled`` ``{source, pts, stalled_s,
reconnecting}`` (no frame for ``source_stall_s``), ``input_source.gap`` ``{source, gap}`` (when frames
come back),
``error`` ``{error: {code, message}}`` (a frame or text event that failed), ``session.closed``
``{reason}``. Callbacks run on manager threads and must return quickly.
"""

from __future__ import annotations

import concurrent.futures
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from app.engine.config import ConfigError, SessionConfig
from app.engine.session import MAX_QUESTION_CHARS, Session
from app.engine.types import Alert, Answer, SessionClosed, WatchRule
from app.serving.errors import (
    FrameTooLarge,
    InvalidRequest,
    LiveUpdateRefused,
    ManagerError,
    ResponseInProgress,
    SessionLimit,
    SpeechOff,
    UnknownSession,
    WorkBacklog,
)
from app.serving.limits import LIVE_FIELDS, FrameVerdict, ManagerConfig, RateLimiter
from app.serving.scheduler import ALERT, ANSWER, CONTROL, Scheduler, SchedulerBacklog, SchedulerClosed
from app.serving.session_audio import SessionAudio
from app.serving.session_stats import SessionCounters, SnapshotCache, compose_stats
from app.serving.source_runner import SourceRunner
from streaming.frame import Frame

logger = logging.getLogger(__name__)


@dataclass
class _AnswerJob:
    future: concurrent.futures.Future
    cancel: threading.Event


@dataclass
class _Entry:
    """One open session as the manager holds it. Everything the session itself knows (its stats,
    watch rules, alerts, kept-ratio history) is read from ``session``, through ``snapshot`` by
    readers that must not wait for the model. ``lock`` guards the mutable fields."""

    sid: str
    config: SessionConfig
    limiter: RateLimiter
    snapshot: SnapshotCache
    lock: threading.RLock = field(default_factory=threading.RLock)
    session: Session | None = None  # built on the worker at the first input
    closed: bool = False
    inputs: int = 0  # frames, texts, questions, watch rules, sources so far
    last_active: float = field(default_factory=time.monotonic)
    subscribers: list = field(default_factory=list)
    answer: _AnswerJob | None = None
    source: SourceRunner | None = None
    audio: SessionAudio | None = None  # with speech on: the session's transcriber and transcript
    counters: SessionCounters = field(default_factory=SessionCounters)
    stats_dirty: bool = False  # something changed since the last input_video.stats event
    last_pts: float | None = None  # the newest stream time of any frame queued (a new source continues from it)
    stats_sent_at: float = 0.0
    saved_inputs: int = 0  # ``inputs`` when the persisted memory was last saved (periodic saves)
    saved_at: float = field(default_factory=time.monotonic)

    def touch(self) -> None:
        self.last_active = time.monotonic()


# --------------------------------------------------------------------------- the manager

class SessionManager:
    """Sessions sharing one backend, with a priority scheduler, limits, sources and events.

    Args:
        backend: the loaded :class:`~app.engine.backends.base.VideoLLM` every session uses.
        config: limits and defaults.
        model_notice: a line for users about the model (e.g. "the default model could not be
            loaded; tiny random weights answer, answers are not meaningful"); shown by the page.
    """

    def __init__(self, backend, config: ManagerConfig | None = None, *, model_notice: str | None = None) -> None:
        self.backend = backend
        self.config = config if config is not None else ManagerConfig()
        if not isinstance(self.config, ManagerConfig):
            raise ConfigError(f"config must be a ManagerConfig; got {type(config).__name__}")
        self.model_notice = model_notice
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}
        self._closed = False
        self._counters = {"sessions_created": 0, "sessions_closed": 0, "sessions_expired": 0}
        self.scheduler = Scheduler()
        self._stop = threading.Event()
        self._housekeeper = threading.Thread(target=self._housekeeping, name="livesight-housekeeping", daemon=True)
        self._housekeeper.start()

    # ---- sessions ------------------------------------------------------------------------------
    def _effective(self, cfg: SessionConfig) -> SessionConfig:
        """``cfg`` within the server's budgets: RAM when the session sets none, and a share of the disk."""
        if cfg.ram_budget_mb is None and self.config.session_ram_budget_mb is not None:
            cfg = cfg.updated(ram_budget_mb=self.config.session_ram_budget_mb)
        if self.config.memory_budget_gb is not None:
            share = self.config.memory_budget_gb * 1024 / self.config.max_sessions
            if cfg.disk_budget_mb is None or cfg.disk_budget_mb > share:
                cfg = cfg.updated(disk_budget_mb=share)
        return cfg

    def create_session(self, overrides: dict | None = None, *, owner: str | None = None) -> str:
        """Open a session with ``default_session`` plus ``overrides`` (SessionConfig field names).

        Cheap: no model work happens until the session's first input.

        Raises:
            ConfigError: an unknown setting or a value out of range (the message names it).
            SessionLimit: ``max_sessions`` are open.
            ManagerError: the manager is shut down.
        """
        if overrides is not None and not isinstance(overrides, dict):
            raise ConfigError(f"session settings must be a mapping of field names to values; got {type(overrides).__name__}")
        cfg = self._effective(self.config.default_session.updated(**(overrides or {})))
        sid = "sess_" + uuid.uuid4().hex[:16]
        if cfg.memory_dir is not None:
            self._check_memory_dir(sid, cfg.memory_dir)
        with self._lock:
            if self._closed:
                raise ManagerError("the session manager is shut down")
            if len(self._entries) >= self.config.max_sessions:
                raise SessionLimit(f"the server holds {self.config.max_sessions} sessions already (max_sessions); "
                                   "close one or try later")
            entry = _Entry(sid, cfg, RateLimiter(self.config.max_fps), SnapshotCache(self.config.snapshot_interval_s))
            if self.config.asr is not None:
                entry.audio = SessionAudio(sid, self.config.asr, max_message_s=self.config.max_audio_message_s,
                                           on_segment=lambda segment, e=entry: self._speech_heard(e, segment))
            self._entries[sid] = entry
            self._counters["sessions_created"] += 1
        logger.info("session %s created (owner %s)", sid, owner)
        return sid

    def _entry(self, sid: str) -> _Entry:
        with self._lock:
            entry = self._entries.get(sid) if isinstance(sid, str) else None
        if entry is None or entry.closed:
            raise UnknownSession(f"no open session {sid!r} (closed, expired or never created)")
        return entry

    def sessions(self) -> list[str]:
        """Ids of the open sessions."""
        with self._lock:
            return list(self._entries)

    def session_config(self, sid: str) -> SessionConfig:
        """The session's current settings."""
        return self._entry(sid).config

    def has_input(self, sid: str) -> bool:
        """True once the session has taken a frame, text, question, watch rule or source
        (from then on only :data:`LIVE_FIELDS` can change)."""
        return self._entry(sid).inputs > 0

    def _build_session(self, sid: str, config: SessionConfig) -> Session:
        """A new Session for ``sid`` (the sink prefill: model work, on the worker). The extension point
        for managers that build some sessions another way (the cluster's, from a saved memory)."""
        return Session(self.backend, config, session_id=sid)

    def _ensure(self, entry: _Entry) -> Session:
        """The entry's Session, built on first use (runs on the scheduler's worker, the only builder).

        The build (the sink prefill: model work) runs without ``entry.lock``, so readers of the
        record (stats, frame offers, from the event loop) never wait for it."""
        with entry.lock:
            if entry.closed:
                raise SessionClosed(f"session {entry.sid} is closed")
            if entry.session is not None:
                return entry.session
            config = entry.config
        built = self._build_session(entry.sid, config)
        with entry.lock:
            now = entry.config
            changed = {k for k, v in now.to_dict().items() if config.to_dict().get(k) != v}
            keep = not entry.closed and entry.session is None and changed <= LIVE_FIELDS
            if keep:
                entry.session = built
                if changed:  # live fields changed meanwhile are read per request
                    built.config = built.config.updated(**{k: getattr(now, k) for k in changed})
        if not keep and not entry.closed and entry.session is None:  # a setting changed during the build
            built.close()
            return self._ensure(entry)
        if not keep:
            built.close()
            if entry.closed:
                raise SessionClosed(f"session {entry.sid} is closed")
            return entry.session
        entry.snapshot.refresh(built, force=True)
        return built

    def _run_control(self, entry: _Entry, fn: Callable[[], Any], priority: int = CONTROL) -> Any:
        """Run ``fn`` on the worker (directly when already there) and wait for it."""
        if self.scheduler.in_worker():
            return fn()
        try:
            return self.scheduler.submit(priority, fn, key=entry.sid).result()
        except concurrent.futures.CancelledError:
            raise SessionClosed(f"session {entry.sid} was closed") from None
        except SchedulerClosed:
            raise ManagerError("the session manager is shut down") from None

    def get(self, sid: str) -> Session:
        """The session's :class:`Session` (built now if its input has not started; that waits for the
        model worker). Use its read-only methods (``stats``, ``kept_history``, ``alerts``, ``rules``);
        feed it through the manager.

        Raises:
            UnknownSession: no open session with that id.
        """
        entry = self._entry(sid)
        if entry.session is not None:
            return entry.session
        return self._run_control(entry, lambda: self._ensure(entry))

    def update_session(self, sid: str, overrides: dict) -> SessionConfig:
        """Change a session's settings; returns the new settings.

        Before the session's input has started any field may change. Afterwards only
        :data:`LIVE_FIELDS` (``max_new_tokens``, ``top_k``, ``dialog_max_tokens``,
        ``watch_min_interval_s``, ``watch_on_every_frame``) may; the others (drop mode, KV bits,
        window, system prompt, memory settings) shape state that already exists.

        Raises:
            ConfigError: unknown field or value out of range (names the field).
            LiveUpdateRefused: a field that is fixed once input started (a :class:`ConfigError`).
        """
        if not isinstance(overrides, dict):
            raise ConfigError(f"session settings must be a mapping of field names to values; got {type(overrides).__name__}")
        entry = self._entry(sid)
        entry.touch()
        if overrides.get("memory_dir") is not None:
            self._check_memory_dir(sid, overrides["memory_dir"])
        with entry.lock:
            new = self._effective(entry.config.updated(**overrides))
            changed = sorted(k for k in overrides if getattr(new, k) != getattr(entry.config, k))
            if not changed:
                return entry.config
            if entry.inputs > 0:
                fixed = [k for k in changed if k not in LIVE_FIELDS]
                if fixed:
                    raise LiveUpdateRefused(
                        f"{', '.join(fixed)} cannot change after the session's input has started "
                        f"(settings that can: {', '.join(sorted(LIVE_FIELDS))})")
                entry.config = new
                if entry.session is not None:
                    entry.session.config = new  # live fields are read per request
                return new
            if entry.session is None:
                entry.config = new
                return new

        def rebuild() -> SessionConfig:  # on the worker; the build runs without entry.lock
            if entry.closed:
                raise SessionClosed(f"session {sid} is closed")
            built = Session(self.backend, new, session_id=sid)
            with entry.lock:
                closed = entry.closed
                if not closed:
                    old, entry.session, entry.config = entry.session, built, new
            if closed:
                built.close()
                raise SessionClosed(f"session {sid} is closed")
            entry.snapshot.refresh(built, force=True)
            if old is not None:
                old.close()
            return new

        return self._run_control(entry, rebuild)

    def _check_memory_dir(self, sid: str, memory_dir: Any) -> None:
        """Refuse a ``memory_dir`` another open session uses, or one that holds a saved memory (a
        new session would write over it; a saved memory is reopened with ``livesight ask --memory``)."""
        import os

        from app.engine.persistence import SESSION_FILE

        if not isinstance(memory_dir, str):
            return  # SessionConfig names the problem
        path = os.path.realpath(os.path.expanduser(memory_dir))
        with self._lock:
            others = [e for e in self._entries.values() if e.sid != sid and not e.closed]
        for other in others:
            mine = other.config.memory_dir
            if mine is not None and os.path.realpath(os.path.expanduser(mine)) == path:
                raise ConfigError(f"memory_dir {memory_dir!r} is in use by another open session; choose another "
                                  "directory")
        if os.path.isfile(os.path.join(path, SESSION_FILE)):
            raise ConfigError(f"memory_dir {memory_dir!r} holds a saved memory; a new session would write over it. "
                              f"Ask it with `livesight ask --memory {memory_dir}`, or choose a new or empty directory")
        if os.path.isdir(path) and any(os.scandir(path)):
            raise ConfigError(f"memory_dir {memory_dir!r} is not empty; choose a new or empty directory")

    def close_session(self, sid: str, *, reason: str = "closed", save: bool = True) -> None:
        """Close a session: its source stops, pending work is cancelled, a running answer is
        cancelled, and its memory is freed (disk too unless it persists; a persisted one is saved
        first unless ``save`` is False: its owner saved it another way, or may no longer write it).
        Idempotent for ids that are already closed."""
        with self._lock:
            entry = self._entries.pop(sid, None)
            if entry is not None:
                self._counters["sessions_closed"] += 1
        if entry is None:
            return
        with entry.lock:
            entry.closed = True
            session = entry.session
            runner, entry.source = entry.source, None
            job = entry.answer
        if job is not None:
            job.cancel.set()
        if runner is not None:
            runner.stop(join_s=1.0)
        if entry.audio is not None:
            entry.audio.close()
        self.scheduler.cancel_key(sid)
        if save and session is not None and session.config.persist and session.config.memory_dir is not None:
            try:  # a persisted memory is left reopenable: the window's last frames and session.json
                session.save()
                logger.info("session %s: memory saved to %s", sid, session.config.memory_dir)
            except Exception:  # noqa: BLE001 - closing must not fail the caller
                logger.exception("saving the memory of session %s failed", sid)
        if session is not None:
            try:
                session.close()
            except Exception:  # noqa: BLE001 - closing must not fail the caller
                logger.exception("closing session %s failed", sid)
        self._emit(entry, {"type": "session.closed", "reason": reason})
        with entry.lock:
            entry.subscribers.clear()
        logger.info("session %s closed (%s)", sid, reason)

    # ---- frames ------------------------------------------------------------------------------
    def check_frame(self, frame: Frame) -> None:
        """Raise :class:`FrameTooLarge` when ``frame`` exceeds ``max_frame_side`` or ``max_frame_pixels``."""
        side = self.config.max_frame_side
        if frame.width > side or frame.height > side:
            raise FrameTooLarge(f"frame of {frame.width}x{frame.height} exceeds max_frame_side={side} pixels")
        if frame.width * frame.height > self.config.max_frame_pixels:
            raise FrameTooLarge(f"frame of {frame.width}x{frame.height} exceeds max_frame_pixels="
                                f"{self.config.max_frame_pixels}")

    def offer_frame(self, sid: str, frame: Frame, *, label: str | None = None) -> FrameVerdict:
        """Queue a frame (non-blocking); see :class:`FrameVerdict`.

        ``label`` names the input it comes from in evidence (``webcam``; see :mod:`streaming.labels`);
        None keeps the frame's own ``label``, or ``websocket frames`` when it has none.

        Raises:
            UnknownSession, FrameTooLarge; InvalidRequest when ``frame`` is not a :class:`Frame`.
        """
        if not isinstance(frame, Frame):
            raise InvalidRequest(f"a frame must be a streaming.Frame; got {type(frame).__name__}")
        entry = self._entry(sid)
        self.check_frame(frame)
        if label is not None or frame.label is None:
            from dataclasses import replace

            from streaming.labels import PUSHED, clean_label

            try:
                frame = replace(frame, label=clean_label(label) or PUSHED)
            except ValueError as exc:
                raise InvalidRequest(str(exc)) from None
        with entry.lock:
            entry.counters.counts["frames_submitted"] += 1
            entry.touch()
            if not entry.limiter.allow():
                entry.counters.dropped["rate_limit"] += 1
                entry.stats_dirty = True
                return FrameVerdict(False, "rate_limit")
        replaced = self._enqueue_frame(entry, frame, count_submit=False, return_replaced=True)
        return FrameVerdict(True, None, bool(replaced))

    def submit_frame(self, sid: str, frame: Frame, *, label: str | None = None) -> bool:
        """Queue a frame for the model (non-blocking, newest wins per session).

        Returns:
            False when the frame was dropped at once (over ``max_fps``); True when it is queued
            (it may still be replaced by a newer frame before the model gets to it: counted as a
            ``backlog`` drop).

        Raises:
            UnknownSession, FrameTooLarge.
        """
        return self.offer_frame(sid, frame, label=label).accepted

    def _enqueue_frame(self, entry: _Entry, frame: Frame, *, count_submit: bool = True, return_replaced: bool = False):
        """Put a frame in the scheduler's slot of its session; returns its future (or ``replaced``)."""
        with entry.lock:
            if entry.closed:
                raise SessionClosed(f"session {entry.sid} is closed")
            if count_submit:
                entry.counters.counts["frames_submitted"] += 1
            entry.counters.counts["frames_accepted"] += 1
            entry.last_pts = frame.pts if entry.last_pts is None else max(entry.last_pts, frame.pts)
            entry.inputs += 1
            entry.stats_dirty = True
            entry.touch()

        def dropped() -> None:
            with entry.lock:
                entry.counters.dropped["backlog"] += 1

        future, replaced = self.scheduler.submit_frame(entry.sid, lambda: self._process_frame(entry, frame), on_drop=dropped)
        return replaced if return_replaced else future

    def _process_frame(self, entry: _Entry, frame: Frame):
        session = self._ensure(entry)
        lag = max(0.0, time.time() - frame.wall)
        try:
            if frame.label is not None:
                session.set_input_source(frame.label)  # frames of one session run in order: this frame's input
            result = session.ingest(frame, evaluate_watches=False)
        except Exception as exc:
            with entry.lock:
                entry.counters.counts["frame_errors"] += 1
            if not isinstance(exc, SessionClosed):
                logger.warning("session %s: frame %d failed: %s", entry.sid, frame.index, exc)
                message = f"frame {frame.index} (pts {frame.pts:.3f}) failed: {exc}"
                self._emit(entry, {"type": "error", "error": {"code": "internal_error", "message": message}})
            raise
        now = time.monotonic()
        with entry.lock:
            entry.counters.frame_processed(frame.pts, lag, now)
            entry.stats_dirty = True
            entry.touch()
        entry.snapshot.refresh(session)
        cfg = session.config
        if (result.scene_change or cfg.watch_on_every_frame) and session.rules():
            try:
                self.scheduler.submit(ALERT, lambda: self._check_watches(entry), key=entry.sid,
                                      coalesce=("watch", entry.sid), label="watch")
            except SchedulerClosed:
                pass
        return result

    def _check_watches(self, entry: _Entry) -> list:
        session = self._ensure(entry)
        try:
            alerts = session.check_watches()
        except Exception as exc:
            if not isinstance(exc, SessionClosed):
                logger.warning("session %s: watch-rule check failed: %s", entry.sid, exc, exc_info=True)
                self._emit(entry, {"type": "error", "error": {"code": "internal_error",
                                                              "message": f"watch-rule check failed: {exc}"}})
            raise
        with entry.lock:
            entry.counters.counts["watch_checks"] += 1
            entry.counters.counts["alerts"] += len(alerts)
        if alerts:
            entry.snapshot.refresh(session, force=True)
        for alert in alerts:
            self._emit(entry, {"type": "alert.triggered", **alert.to_dict()})
        return alerts

    # ---- text, questions, watches --------------------------------------------------------------
    def submit_text(self, sid: str, pts: float, text: str) -> concurrent.futures.Future:
        """Queue a timed text event (never dropped once queued), at answer priority and in order with the
        session's questions; a long one is prefilled in pieces (``prefill_piece_tokens``) between which
        other sessions' work may run. The future gives the number of tokens prefilled.

        Raises:
            InvalidRequest: empty text or a bad stream time (at once; other failures go to the future).
            WorkBacklog: ``max_pending_texts`` text events of the session wait already (at once; the
                event is not kept).
        """
        entry = self._entry(sid)
        if not isinstance(text, str) or not text.strip():
            raise InvalidRequest("text must be a non-empty string")
        if isinstance(pts, bool) or not isinstance(pts, (int, float)) or not math.isfinite(pts) or pts < 0:
            raise InvalidRequest(f"pts must be a finite number of seconds >= 0; got {pts!r}")
        return self._submit_event(entry, lambda session: session.ingest_text(float(pts), text, **self._pieces()),
                                  done="texts", failed="text_errors", label="text",
                                  limit=self.config.max_pending_texts, long=self._long_text(text))

    def _long_text(self, text: str) -> bool:
        """Whether a text event is long work for the scheduler (charged in full from its start): more
        than about ``short_request_tokens`` tokens (four characters a token)."""
        return len(text) > 4 * self.config.short_request_tokens

    def _pieces(self) -> dict[str, Any]:
        """How a long text or speech event is prefilled: in pieces, yielding the worker between them."""
        return {"piece_tokens": self.config.prefill_piece_tokens, "between": self.scheduler.yield_point}

    # ---- audio and speech ------------------------------------------------------------------------
    @property
    def speech(self) -> bool:
        """Whether speech recognition is on (``ManagerConfig.asr``)."""
        return self.config.asr is not None

    def _audio(self, entry: _Entry) -> SessionAudio:
        if entry.audio is None:
            raise SpeechOff()
        return entry.audio

    def push_audio(self, sid: str, pcm, *, rate: int, pts: float | None = None):
        """Feed pushed sound to the session's transcriber (created on the first audio). Blocking only
        while the speech model loads on the first push; never call it on an event loop.

        Args:
            pcm: PCM16 LE mono bytes, or an int16/float32 ``(N,)`` array.
            rate: samples per second, [8000, 48000] (resampled to 16 kHz).
            pts: stream time of the first sample (None: continues the session's audio clock).

        Returns:
            The 16 kHz :class:`~streaming.audio.AudioChunk` fed.

        Raises:
            SpeechOff: speech is off. streaming.errors.InvalidAudio: a bad rate, an odd byte count,
            no samples, or more than ``max_audio_message_s`` s. UnknownSession.
        """
        entry = self._entry(sid)
        audio = self._audio(entry)
        if pts is not None and (isinstance(pts, bool) or not isinstance(pts, (int, float)) or not math.isfinite(pts)
                                or pts < 0):
            raise InvalidRequest(f"pts must be a finite number of seconds >= 0; got {pts!r}")
        chunk = audio.push(pcm, rate=rate, pts=pts)
        with entry.lock:
            entry.inputs += 1
            entry.stats_dirty = True
            entry.touch()
        return chunk

    def audio_clock(self, sid: str) -> float | None:
        """Stream time where the session's last pushed audio ended (None before any; or speech off)."""
        audio = self._entry(sid).audio
        return None if audio is None else audio.clock

    def flush_audio(self, sid: str, timeout_s: float = 60.0) -> None:
        """Transcribe the session's buffered audio now and wait (up to ``timeout_s``) for it; its
        segments are queued as speech events. Blocking: call it off the event loop.

        Raises:
            SpeechOff: speech is off.
        """
        entry = self._entry(sid)
        self._audio(entry).flush(timeout_s=timeout_s)

    def transcript(self, sid: str, last: int | None = None) -> list:
        """The speech segments the session has heard and prefilled, oldest first (``last``: the newest
        only); empty with speech off. Never waits for the model."""
        audio = self._entry(sid).audio
        return [] if audio is None else audio.transcript(last)

    def _speech_heard(self, entry: _Entry, segment) -> None:
        """The transcriber's callback (its thread): queue the segment as the session's model work."""
        if entry.closed:
            return
        future = self.submit_speech(entry.sid, segment)

        def done(f: concurrent.futures.Future) -> None:
            if f.cancelled():
                return
            exc = f.exception()
            if exc is not None and not isinstance(exc, SessionClosed):
                logger.warning("session %s: speech at %.2f s failed: %s", entry.sid, segment.t_start, exc)
                self._emit(entry, {"type": "error", "error": {
                    "code": "internal_error", "message": f"speech at {segment.t_start:.2f} s failed: {exc}"}})

        future.add_done_callback(done)

    def submit_speech(self, sid: str, segment) -> concurrent.futures.Future:
        """Queue a heard :class:`~app.engine.speech.SpeechSegment` as a timed speech event (never
        dropped), at answer priority and in order with the session's text events and questions. The
        future gives the number of tokens prefilled; subscribers get ``input_audio.transcript``.

        Raises:
            InvalidRequest: empty text or a bad time range (at once; other failures go to the future).
        """
        entry = self._entry(sid)
        text = getattr(segment, "text", None)
        t0, t1 = getattr(segment, "t_start", None), getattr(segment, "t_end", None)
        if not isinstance(text, str) or not text.strip():
            raise InvalidRequest("a speech segment needs non-empty text")
        for name, value in (("t_start", t0), ("t_end", t1)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise InvalidRequest(f"a speech segment's {name} must be a finite number of seconds >= 0; got {value!r}")
        if t1 < t0:
            raise InvalidRequest(f"a speech segment ends ({t1}) before it starts ({t0})")
        def heard(n: int) -> None:
            with entry.lock:
                entry.stats_dirty = True
            if entry.audio is not None:
                entry.audio.record(segment)
            self._emit(entry, {"type": "input_audio.transcript", "t_start": float(t0), "t_end": float(t1),
                               "text": text, "tokens": n})

        def not_heard() -> None:
            if entry.audio is not None:
                entry.audio.record_error()

        return self._submit_event(entry, lambda session: session.ingest_speech(float(t0), float(t1), text,
                                                                               **self._pieces()),
                                  done="speech_segments", failed="speech_errors", on_done=heard, on_failed=not_heard,
                                  label="speech", long=self._long_text(text))

    def _submit_event(self, entry: _Entry, ingest: Callable[[Session], int], *, done: str, failed: str,
                      on_done: Callable[[int], None] | None = None,
                      on_failed: Callable[[], None] | None = None, label: str,
                      limit: int | None = None, long: bool = False) -> concurrent.futures.Future:
        """Queue one timed event (a note or a speech segment) at answer priority, in order with the
        session's questions; ``done``/``failed`` name the counters it bumps, ``label`` its kind for the
        scheduler, ``limit`` how many of that kind may wait (beyond it: :class:`WorkBacklog`)."""
        if limit is not None:
            waiting = self.scheduler.queued(entry.sid, label)
            if waiting >= limit:  # refused before it counts as input (the scheduler checks again, atomically)
                raise WorkBacklog(self._backlog_message(label, waiting, limit))
        with entry.lock:
            entry.inputs += 1
            entry.touch()

        def work() -> int:
            try:
                session = self._ensure(entry)
                n = ingest(session)
            except Exception:
                with entry.lock:
                    entry.counters.counts[failed] += 1
                if on_failed is not None:
                    on_failed()
                raise
            with entry.lock:
                entry.counters.counts[done] += 1
            entry.snapshot.refresh(session, force=True)
            if on_done is not None:
                on_done(n)
            return n

        return self._submit(entry, ANSWER, work, label=label, limit=limit, long=long)

    @staticmethod
    def _backlog_message(label: str, waiting: int, limit: int) -> str:
        what = "text events" if label == "text" else f"{label} events"
        return (f"{waiting} {what} of this session are waiting for the model already (max_pending_texts={limit}); "
                "this one is refused: send more slowly, or wait for input_text.committed")

    def _submit(self, entry: _Entry, priority: int, fn: Callable[[], Any], *, label: str | None = None,
                limit: int | None = None, long: bool = False) -> concurrent.futures.Future:
        try:
            return self.scheduler.submit(priority, fn, key=entry.sid, label=label, limit=limit, long=long)
        except SchedulerClosed:
            raise ManagerError("the session manager is shut down") from None
        except SchedulerBacklog as exc:
            raise WorkBacklog(self._backlog_message(exc.label, exc.pending, limit or exc.pending)) from None

    def ask(self, sid: str, question: str, *, on_delta: Callable[[str], None] | None = None,
            max_new_tokens: int | None = None, top_k: int | None = None) -> concurrent.futures.Future:
        """Queue a question at the highest priority; the future gives the :class:`Answer`.

        ``on_delta(text)`` is called on the model worker for each piece of answer text, in order,
        before the future completes. One answer at a time per session.

        Raises:
            ResponseInProgress: the session is still answering.
            InvalidRequest: an empty or over-long question, or ``max_new_tokens``/``top_k`` out of range.
        """
        entry = self._entry(sid)
        if not isinstance(question, str) or not question.strip():
            raise InvalidRequest("a question needs non-empty text")
        if len(question) > MAX_QUESTION_CHARS:
            raise InvalidRequest(f"a question is limited to {MAX_QUESTION_CHARS} characters, got {len(question)}")
        if max_new_tokens is not None and (isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int)
                                           or not 1 <= max_new_tokens <= 4096):
            raise InvalidRequest(f"max_new_tokens must be an integer in [1, 4096]; got {max_new_tokens!r}")
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or not 0 <= top_k <= 4096):
            raise InvalidRequest(f"top_k must be an integer in [0, 4096]; got {top_k!r}")
        cancel = threading.Event()

        calls = [0]

        def stop_or_yield() -> bool:
            # between tokens (from the second on: the first token comes as soon as it can), a long
            # answer lets other sessions' pending work run (fairness)
            calls[0] += 1
            if calls[0] > 1:
                self.scheduler.yield_point()
            return cancel.is_set()

        def work() -> Answer:
            waited = self.scheduler.current()
            try:
                session = self._ensure(entry)
                answer = session.answer(question, on_delta=on_delta, should_stop=stop_or_yield,
                                        max_new_tokens=max_new_tokens, top_k=top_k)
            except Exception:
                with entry.lock:
                    entry.counters.counts["answer_errors"] += 1
                raise
            if waited is not None:  # where the answer's time went on the shared worker (usage)
                answer.usage.update(queued_s=round(waited.queued_s, 4), queued_behind=waited.behind,
                                    queued_behind_own_s=waited.own_before_s,
                                    yielded_s=round(self.scheduler.nested_s(), 4))
            with entry.lock:
                entry.counters.counts["answers"] += 1
                entry.touch()
            entry.snapshot.refresh(session, force=True)
            return answer

        with entry.lock:
            job = entry.answer
            if job is not None and not job.future.done():
                raise ResponseInProgress(f"session {sid} is still answering; cancel it or wait for it to finish")
            entry.inputs += 1
            entry.touch()
            tokens = entry.config.max_new_tokens if max_new_tokens is None else max_new_tokens
            future = self._submit(entry, ANSWER, work, label="answer", long=tokens > self.config.short_request_tokens)
            entry.answer = _AnswerJob(future, cancel)
        return future

    def cancel(self, sid: str) -> bool:
        """Cancel the session's pending or running answer. Returns True when there was one."""
        entry = self._entry(sid)
        with entry.lock:
            job = entry.answer
        if job is None or job.future.done():
            return False
        job.cancel.set()
        job.future.cancel()  # succeeds only while it has not started; a running answer stops at the next token
        return True

    def answering(self, sid: str) -> bool:
        """True while the session has a pending or running answer."""
        job = self._entry(sid).answer
        return job is not None and not job.future.done()

    def watch(self, sid: str, rule: str) -> WatchRule:
        """Register a standing yes/no question, evaluated when the scene changes.

        Raises:
            SessionError: empty or over-long rule text, or too many rules.
        """
        entry = self._entry(sid)
        if not isinstance(rule, str) or not rule.strip():
            raise InvalidRequest("a watch rule needs non-empty text")
        with entry.lock:
            entry.inputs += 1
            entry.touch()
        session = entry.session or self._run_control(entry, lambda: self._ensure(entry))
        watch_rule = session.watch(rule)
        entry.snapshot.refresh(session, force=True)  # readers see the rule at once
        return watch_rule

    def has_rule(self, sid: str, rule_id: str) -> bool:
        """Whether the session has the watch rule ``rule_id`` (from the cached snapshot, which a rule
        change refreshes before it returns: never waits for the model)."""
        return any(rule.rule_id == rule_id for rule in self.rules(sid))

    def unwatch(self, sid: str, rule_id: str) -> bool:
        """Remove a watch rule; False when the session has no such rule (at once). Removing a rule
        waits for the session (a running answer holds it): call it off the event loop."""
        entry = self._entry(sid)
        entry.touch()
        session = entry.session
        if session is None or not self.has_rule(sid, rule_id):
            return False
        removed = session.unwatch(rule_id)
        entry.snapshot.refresh(session, force=True)
        return removed

    def rules(self, sid: str) -> list[WatchRule]:
        """The session's watch rules, oldest first (a cached copy: never waits for the model)."""
        snapshot = self._entry(sid).snapshot.current
        return list(snapshot.rules) if snapshot is not None else []

    def alerts(self, sid: str) -> list[Alert]:
        """The session's recent alerts, oldest first (a cached copy: never waits for the model)."""
        snapshot = self._entry(sid).snapshot.current
        return list(snapshot.alerts) if snapshot is not None else []

    # ---- server-pulled sources -------------------------------------------------------------------
    def set_source(self, sid: str, spec: str, *, fps: float | None = 1.0, realtime: bool = True,
                   allow_files: bool | None = None, label: str | None = None) -> Any:
        """Make the server pull ``spec`` (RTSP/HTTP URL; a local file or webcam only when allowed)
        into the session; replaces a running source. Returns the source's ``SourceInfo``.

        Args:
            fps: frames per second of stream time fed to the model, in (0, max_fps]; None = max_fps.
            realtime: True: frames arrive at stream speed (a file or download is played as a live
                camera; newest wins when the model is slower). False: every sampled frame waits for
                the model (nothing dropped).
            allow_files: admit local paths, ``file:`` URLs and webcams (None: ``allow_file_sources``).
            label: how evidence names the source (an upload by the name the user gave it); None:
                :func:`streaming.labels.source_label` of ``spec`` (``file bikes.mp4``, the URL
                without credentials).

        With speech on, the source is opened with its sound track (``audio=True``): its audio goes to
        the session's transcriber, and a source with sound but no video (an audio-only file) is valid.

        Raises:
            streaming.errors.SourceError: at once: ``SchemeNotAllowed``, ``SourceUnreachable`` (within
                ``source_open_timeout_s``), ``SourceNotFound``, ``NotAVideo``, ...
            InvalidRequest: ``fps`` out of range or an empty spec.
        """
        from streaming import Sampler, SamplerConfig, open_source
        from streaming.labels import source_label

        entry = self._entry(sid)
        if fps is None:
            fps = self.config.max_fps
        if (isinstance(fps, bool) or not isinstance(fps, (int, float)) or not math.isfinite(fps)
                or not 0 < fps <= self.config.max_fps):
            raise InvalidRequest(f"fps must be a number in (0, {self.config.max_fps:g}] (max_fps); got {fps!r}")
        if not isinstance(spec, str) or not spec.strip():
            raise InvalidRequest("a source needs a non-empty URL or path")
        allow = self.config.allow_file_sources if allow_files is None else bool(allow_files)
        timeout = self.config.source_open_timeout_s
        try:  # the host policy holds for the address FFmpeg connects to, redirects and reconnections included
            source = open_source(spec.strip(), allow_files=allow, realtime=bool(realtime),
                                 open_timeout_s=timeout, read_timeout_s=timeout, audio=entry.audio is not None,
                                 host_policy=self.config.source_hosts, max_pixels=self.config.max_frame_pixels)
        except ValueError as exc:
            raise InvalidRequest(str(exc)) from exc
        width, height = getattr(source.info, "width", None), getattr(source.info, "height", None)
        if width and height and width * height > self.config.max_frame_pixels:
            # refused before the first frame is decoded: each decoded frame would need that much memory
            source.close()
            raise FrameTooLarge(f"{source.info.source}: its video is {width}x{height} = {width * height} pixels per "
                                f"frame; this server decodes at most max_frame_pixels={self.config.max_frame_pixels}")
        audio = entry.audio if entry.audio is not None and getattr(source.info, "has_audio", False) else None
        if audio is not None:
            try:
                audio.transcriber()  # loads the speech model here, not on the source's demuxing thread
            except Exception:
                source.close()
                raise
        paced = bool(realtime) and not source.live
        sampler = Sampler(source, SamplerConfig(fps=float(fps), max_side=self.config.max_frame_side),
                          live=source.live)
        with entry.lock:
            # a new source continues the session's stream time one sample after what it saw last
            base = None if entry.last_pts is None else entry.last_pts + 1.0 / float(fps)
        runner = SourceRunner(sampler, sid, emit=lambda event: self._emit(entry, event),
                              enqueue=lambda frame: self._enqueue_frame(entry, frame),
                              session_closed=lambda: entry.closed, paced=paced, blocking=not realtime,
                              audio=audio, pts_base=base, label=label or source_label(spec),
                              stall_after_s=max(self.config.source_stall_s, 2.0 / float(fps)))
        with entry.lock:
            if entry.closed:
                sampler.close()
                raise UnknownSession(f"no open session {sid!r}")
            old, entry.source = entry.source, runner
            entry.inputs += 1
            entry.touch()
        if old is not None:
            old.stop()
        runner.start()
        logger.info("session %s pulls %s (%s)", sid, runner.name, "live" if source.live else "file")
        return runner.info

    def stop_source(self, sid: str) -> bool:
        """Stop the session's server-pulled source (an ``input_source.ended`` event with reason
        ``stopped`` follows). Returns False when no source was running."""
        entry = self._entry(sid)
        with entry.lock:
            runner = entry.source
        if runner is None or runner.finished:
            return False
        runner.stop()
        return True

    def source_progress(self, sid: str) -> dict | None:
        """``{"source", "pts", "duration_s", "fraction", "finished", "error", "frames", "live"}`` of the
        session's pulled source (``fraction`` None when the duration is unknown), or None."""
        runner = self._entry(sid).source
        return None if runner is None else runner.progress()

    # ---- events and stats ------------------------------------------------------------------------
    def subscribe(self, sid: str, callback: Callable[[dict], None]) -> Callable[[], None]:
        """Call ``callback(event_dict)`` for each event of the session; returns an unsubscribe function."""
        if not callable(callback):
            raise InvalidRequest("callback must be callable")
        entry = self._entry(sid)
        with entry.lock:
            entry.subscribers.append(callback)

        def unsubscribe() -> None:
            with entry.lock:
                if callback in entry.subscribers:
                    entry.subscribers.remove(callback)

        return unsubscribe

    def _emit(self, entry: _Entry, event: dict) -> None:
        with entry.lock:
            subscribers = list(entry.subscribers)
        event.setdefault("session_id", entry.sid)
        for callback in subscribers:
            try:
                callback(dict(event))
            except Exception:  # noqa: BLE001 - one subscriber cannot break the others
                logger.exception("session %s: event subscriber failed", entry.sid)

    def _catch_up_snapshot(self, entry: _Entry) -> None:
        """Refresh a snapshot that missed the last frames, and let the next stats event carry it."""
        session = entry.session
        if session is None:
            return
        entry.snapshot.refresh(session, force=True)
        with entry.lock:
            entry.stats_dirty = True

    def kept_history(self, sid: str) -> list[tuple[float, float]]:
        """``[(pts, kept_ratio)]`` of recent frames (at most 2000; cached, never waits for the model)."""
        snapshot = self._entry(sid).snapshot.current
        return list(snapshot.kept_history) if snapshot is not None else []

    def stats(self, sid: str) -> dict:
        """The session's statistics (never waits for the model).

        Keys: the session's own stats (``frames``, ``kept_ratio``, ``memory_bytes`` {window, ram,
        disk}, ``bank_chunks``, ``encode_ms_per_step``, ... as of the last model step; absent until
        the session is built), plus ``ingest`` {``frames_submitted``, ``frames_accepted``,
        ``frames_processed``, ``frame_errors``, ``fps`` (processed per second, last 2 s), ``lag_s``
        (processing start minus frame arrival, last frame), ``last_pts``, ``dropped`` {``rate_limit``,
        ``backlog``, ``source`` (dropped inside a pulled source's sampler)}, ``dropped_total``},
        ``watch`` {``rules``, ``checks``, ``alerts``}, ``answers``, ``answering``, ``source``
        (:meth:`source_progress` plus the pulled source's ingest stats), ``scheduler``
        (the session's pending work; the worker's busy fraction) and ``audio`` {``speech`` (on/off),
        ``model``, ``started``, the transcriber's ``audio_s`` (heard), ``speech_s``, ``rtf``, ``lag_s``,
        ``dropped_s``, ``queue_s``, ``segments``, ``errors``, ``behind``; ``committed`` (segments
        prefilled), ``commit_errors``, ``pushed`` {``chunks``, ``seconds``, ``errors``}, ``source`` (the
        pulled source's audio stats: ``chunks``, ``seconds``, ``decode_errors``, ... or None)}.
        """
        entry = self._entry(sid)
        with entry.lock:
            counters = entry.counters.view(time.monotonic())
            runner = entry.source
            job = entry.answer
        return compose_stats(sid, counters, entry.snapshot.current, runner,
                             answering=job is not None and not job.future.done(), scheduler=self.scheduler,
                             audio=None if entry.audio is None else entry.audio.stats())

    def manager_stats(self) -> dict:
        """Process-wide counters: sessions, scheduler."""
        with self._lock:
            out = {"sessions": len(self._entries), **self._counters}
        out["scheduler"] = self.scheduler.stats()
        return out

    def _housekeeping(self) -> None:
        tick = min(0.5, self.config.stats_interval_s / 2)
        while not self._stop.wait(tick):
            now = time.monotonic()
            with self._lock:
                entries = list(self._entries.values())
            for entry in entries:
                if entry.closed:
                    continue
                # a pulled source keeps its session alive by the frames it delivers (each one is activity),
                # not by merely being open: a stalled camera or a stream of one frame an hour does not
                busy = entry.answer is not None and not entry.answer.future.done()
                if not busy and now - entry.last_active > self.config.session_ttl_s:
                    with self._lock:
                        self._counters["sessions_expired"] += 1
                    logger.info("session %s expired after %.0f s idle", entry.sid, now - entry.last_active)
                    self.close_session(entry.sid, reason="expired")
                    continue
                if entry.snapshot.take_catch_up(now):
                    # the last frames came too close together to be in the cached stats: refresh on the
                    # worker (it holds the session; readers never wait for the model)
                    try:
                        self.scheduler.submit(ALERT, lambda e=entry: self._catch_up_snapshot(e), key=entry.sid,
                                              coalesce=("snapshot", entry.sid), label="snapshot")
                    except SchedulerClosed:
                        return
                if self._save_due(entry, now):
                    entry.saved_at, entry.saved_inputs = now, entry.inputs
                    try:
                        self.scheduler.submit(ALERT, lambda e=entry: self._save_persisted(e), key=entry.sid,
                                              coalesce=("save", entry.sid), label="save")
                    except SchedulerClosed:
                        return
                if entry.stats_dirty and now - entry.stats_sent_at >= self.config.stats_interval_s:
                    entry.stats_dirty = False
                    entry.stats_sent_at = now
                    try:
                        stats = self.stats(entry.sid)
                    except UnknownSession:
                        continue
                    self._emit(entry, {"type": "input_video.stats", "stats": stats})

    # ---- periodic saves ----------------------------------------------------------------------------
    def _save_due(self, entry: _Entry, now: float) -> bool:
        """Whether a persisted session's memory should be saved now (its input changed, the interval passed)."""
        interval = self.config.save_interval_s
        cfg = entry.config
        return (interval is not None and entry.session is not None and cfg.persist and cfg.memory_dir is not None
                and entry.inputs != entry.saved_inputs and now - entry.saved_at >= interval)

    def _save_persisted(self, entry: _Entry) -> None:
        """Save a persisted session's memory (on the worker): chunks first, the manifest and
        ``session.json`` last, so a crash leaves the previous save whole. Failures are logged; the
        next interval tries again."""
        session = entry.session
        if session is None or entry.closed:
            return
        try:
            session.save()
        except SessionClosed:
            return
        except Exception:  # noqa: BLE001 - a failed save must not stop the session; the next one retries
            entry.saved_inputs = -1
            logger.exception("saving the memory of session %s failed", entry.sid)

    # ---- shutdown ----------------------------------------------------------------------------------
    def shutdown(self, timeout: float = 10.0) -> None:
        """Close every session, stop every source and the worker (waits ``timeout`` s at most for a
        running model step). Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            entries = list(self._entries.values())
        self._stop.set()
        for entry in entries:
            if entry.answer is not None:
                entry.answer.cancel.set()
            if entry.source is not None:
                entry.source.signal_stop()
        self.scheduler.shutdown(timeout=timeout)
        for entry in entries:
            self.close_session(entry.sid, reason="server shutdown")
        if threading.current_thread() is not self._housekeeper:
            self._housekeeper.join(2.0)
        logger.info("session manager shut down")

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> "SessionManager":
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
