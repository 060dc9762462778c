"""One manager session per browser tab (or per ``gradio_client.Client``).

Gradio identifies each connected page or API client by its ``session_hash``. The page keeps
the session id in a ``gr.State`` too, but handlers that cannot see the State (``demo.unload``,
``gr.api`` endpoints) find the session through the hash here. Per-tab extras live here as
well: the webcam clock (stream time of browser frames and microphone audio, one clock for both),
the alert buffer fed by ``manager.subscribe`` and a short record of the server-pulled source.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from app.engine.types import Alert, SessionError
from streaming.frame import Frame
from streaming.labels import WEBCAM

logger = logging.getLogger(__name__)

#: Alerts kept per tab for the feed.
ALERT_BUFFER = 200

#: A webcam gap longer than this starts a new run (its frames restart the fps count).
WEBCAM_IDLE_S = 2.0

#: A microphone piece whose arrival is further than this from where the last one ended (on the tab's
#: clock) starts afresh at its arrival time (the microphone was stopped, or the browser fell behind).
MIC_RESYNC_S = 1.0


@dataclass
class Tab:
    """What the page keeps for one session besides the manager's own state."""

    sid: str
    session_hash: str | None
    clock_start: float | None = None  # time.monotonic() of the first webcam frame
    frames_sent: int = 0
    frames_refused: int = 0
    sent_at: deque = field(default_factory=lambda: deque(maxlen=64))  # monotonic times of sent frames
    alerts: deque = field(default_factory=lambda: deque(maxlen=ALERT_BUFFER))
    alerts_shown: int = 0  # alerts already announced with a toast
    alerts_total: int = 0
    events: deque = field(default_factory=lambda: deque(maxlen=20))  # notable events: source errors/ends
    source_label: str | None = None
    source_error: str | None = None  # why the last source request failed (shown until the next one)
    unsubscribe: Any = None
    plotted: tuple[int, float | None] = (0, None)  # (points, newest pts) last drawn
    mic_end: float | None = None  # stream time where the last microphone piece ended
    mic_pieces: int = 0
    mic_seconds: float = 0.0
    mic_refused: int = 0
    chat: list = field(default_factory=list)  # the chat as the page shows it (messages as Gradio takes them)
    pending: deque = field(default_factory=deque)  # (question text, index of its bot message in ``chat``), oldest first
    webcam_left: bool = False  # the user turned to another source tab: the browser stops the webcam
    answering: bool = False  # a chat handler is answering this tab's questions (it drains ``pending``)

    def webcam_pts(self, now: float) -> float:
        """Stream time of a browser frame arriving at ``now`` (monotonic): seconds since the
        tab's webcam stream started."""
        if self.clock_start is None:
            self.clock_start = now
        return now - self.clock_start

    def webcam_fps(self, now: float, window_s: float = 2.0) -> float | None:
        """Frames per second the browser sent over the last ``window_s`` (None when idle)."""
        recent = [t for t in self.sent_at if now - t <= window_s]
        if not recent:
            return None
        return len(recent) / window_s

    def webcam_active(self, now: float) -> bool:
        return bool(self.sent_at) and now - self.sent_at[-1] <= WEBCAM_IDLE_S


class TabRegistry:
    """Maps Gradio sessions (``session_hash``) to manager sessions and closes them when tabs go.

    Thread-safe: Gradio calls handlers from many threads.

    Args:
        manager: the :class:`app.serving.manager.SessionManager` the page serves.
        overrides: settings for new sessions (on top of the manager's defaults).
    """

    def __init__(self, manager, overrides: dict | None = None) -> None:
        self.manager = manager
        self.overrides = dict(overrides or {})
        self._lock = threading.RLock()
        self._by_hash: dict[str, str] = {}
        self._tabs: dict[str, Tab] = {}
        self._hash_locks: dict[str, threading.Lock] = {}  # session_hash -> that tab's lookup lock

    # ---- lookup -----------------------------------------------------------------------------------
    def _alive(self, sid: str | None) -> bool:
        with self._lock:
            if not sid or sid not in self._tabs:
                return False
        try:  # outside the registry's lock: a manager call may be a remote one (the page under --ray)
            self.manager.session_config(sid)
        except SessionError:  # UnknownSession: closed or expired by the manager
            return False
        return True

    def _tab_lock(self, session_hash: str | None) -> threading.Lock:
        """The lock one tab's lookups and creations hold (one tab's requests never make two sessions;
        other tabs are not held up by its manager calls)."""
        with self._lock:
            return self._hash_locks.setdefault(session_hash or "", threading.Lock())

    def resolve(self, sid: str | None, session_hash: str | None, *, create: bool = True) -> str | None:
        """The open session of this tab: the State's ``sid`` if still open, else the one
        registered for ``session_hash``, else a new one (``create``) or None.

        Raises:
            app.serving.errors.SessionLimit: the server holds its maximum number of sessions.
        """
        with self._tab_lock(session_hash):
            if self._alive(sid):
                with self._lock:
                    if session_hash and self._by_hash.get(session_hash) != sid:
                        self._by_hash[session_hash] = sid
                return sid
            with self._lock:
                known = self._by_hash.get(session_hash) if session_hash else None
            if self._alive(known):
                return known
            with self._lock:
                if known is not None:
                    self._forget(known)
                if sid is not None and sid in self._tabs:
                    self._forget(sid)
            if not create:
                return None
            return self._create(session_hash, self.overrides)

    def _create(self, session_hash: str | None, overrides: dict) -> str:
        owner = f"page:{session_hash}" if session_hash else "page"
        sid = self.manager.create_session(overrides or None, owner=owner)
        tab = Tab(sid, session_hash)
        tab.unsubscribe = self.manager.subscribe(sid, lambda event, _tab=tab: self._on_event(_tab, event))
        with self._lock:
            self._tabs[sid] = tab
            if session_hash:
                self._by_hash[session_hash] = sid
        logger.info("page session %s created for %s", sid, session_hash)
        return sid

    def reset(self, sid: str | None, session_hash: str | None, overrides: dict | None = None) -> str:
        """Close this tab's session and open a fresh one with ``overrides`` (validated by the manager
        first: bad settings leave the old session as it was). Returns the new session id."""
        with self._tab_lock(session_hash):
            with self._lock:
                old = {sid, self._by_hash.get(session_hash) if session_hash else None} - {None}
            new = self._create(session_hash, {**self.overrides, **(overrides or {})})
        for stale in old - {new}:
            self.close(stale)
        return new

    def tab(self, sid: str | None) -> Tab | None:
        with self._lock:
            return self._tabs.get(sid) if sid else None

    def sessions(self) -> dict[str, str]:
        """``{session_hash: sid}`` of the tabs the page serves now."""
        with self._lock:
            return dict(self._by_hash)

    # ---- closing ----------------------------------------------------------------------------------
    def _forget(self, sid: str) -> Tab | None:
        tab = self._tabs.pop(sid, None)
        if tab is not None:
            if tab.session_hash and self._by_hash.get(tab.session_hash) == sid:
                del self._by_hash[tab.session_hash]
            if tab.unsubscribe is not None:
                tab.unsubscribe()
        return tab

    def close(self, sid: str | None) -> None:
        """Close one session (idempotent; unknown ids are ignored)."""
        if not sid:
            return
        with self._lock:
            self._forget(sid)
        try:
            self.manager.close_session(sid, reason="page closed")
        except Exception:  # noqa: BLE001 - closing must never fail a Gradio callback
            logger.exception("closing page session %s failed", sid)

    def release_hash(self, session_hash: str | None) -> None:
        """The tab (or API client) with ``session_hash`` went away: close its session."""
        if not session_hash:
            return
        with self._lock:
            sid = self._by_hash.get(session_hash)
            self._hash_locks.pop(session_hash, None)
        if sid:
            logger.info("page session %s: tab %s left", sid, session_hash)
            self.close(sid)

    def release_state(self, sid: Any) -> None:
        """``gr.State`` delete callback: the State holding ``sid`` expired."""
        if isinstance(sid, str):
            self.close(sid)

    # ---- events -----------------------------------------------------------------------------------
    def _on_event(self, tab: Tab, event: dict) -> None:
        """``manager.subscribe`` callback (manager threads): buffer what the page shows."""
        kind = event.get("type")
        if kind == "alert.triggered":
            try:
                alert = Alert(str(event["rule_id"]), str(event["rule"]), float(event["pts"]),
                              str(event.get("answer", "")), float(event.get("wall", time.time())))
            except (KeyError, TypeError, ValueError):
                logger.warning("malformed alert event: %r", event)
                return
            with self._lock:
                tab.alerts.append(alert)
                tab.alerts_total += 1
        elif kind in ("input_source.error", "input_source.ended", "error"):
            with self._lock:
                tab.events.append(event)

    def new_alerts(self, tab: Tab) -> list:
        """Alerts that arrived since the last call (for toasts)."""
        with self._lock:
            fresh = tab.alerts_total - tab.alerts_shown
            tab.alerts_shown = tab.alerts_total
            return list(tab.alerts)[-fresh:] if fresh > 0 else []

    def alerts(self, tab: Tab) -> list:
        with self._lock:
            return list(tab.alerts)

    # ---- the chat ---------------------------------------------------------------------------------
    def enqueue_question(self, tab: Tab, question: str, question_html: str, placeholder_html: str) -> list:
        """Add ``question`` to the tab's chat (shown as ``question_html``; its bot message is
        ``placeholder_html`` until it is answered) and to the questions waiting for an answer.
        Returns the chat as it now is (a copy)."""
        with self._lock:
            tab.chat.append({"role": "user", "content": question_html})
            tab.chat.append({"role": "assistant", "content": placeholder_html})
            tab.pending.append((question, len(tab.chat) - 1))
            return list(tab.chat)

    def start_answering(self, tab: Tab) -> bool:
        """Claim the tab's answering: True when no other handler answers its questions now (the caller
        then drains them with :meth:`next_question`)."""
        with self._lock:
            if tab.answering:
                return False
            tab.answering = True
            return True

    def next_question(self, tab: Tab):
        """The oldest waiting question as ``(question, bot message index)``; None when there is none
        (then the claim of :meth:`start_answering` is released, under the same lock as
        :meth:`enqueue_question`, so a question added meanwhile is never left unanswered)."""
        with self._lock:
            if tab.pending:
                return tab.pending.popleft()
            tab.answering = False
            return None

    def drop_pending(self, tab: Tab, message_html: str) -> int:
        """Forget the questions still waiting (their bot messages become ``message_html``). Returns how many."""
        with self._lock:
            dropped = list(tab.pending)
            tab.pending.clear()
            for _, index in dropped:
                tab.chat[index] = {"role": "assistant", "content": message_html}
            return len(dropped)

    def set_message(self, tab: Tab, index: int, content_html: str) -> list:
        """Replace the bot message at ``index``. Returns the chat (a copy)."""
        with self._lock:
            tab.chat[index] = {"role": "assistant", "content": content_html}
            return list(tab.chat)

    def chat(self, tab: Tab) -> list:
        with self._lock:
            return list(tab.chat)

    # ---- webcam frames ----------------------------------------------------------------------------
    def mic_audio(self, tab: Tab, rate: int, samples: np.ndarray) -> float:
        """Hand a streamed microphone piece to the manager on the tab's clock (the webcam's clock).

        A piece is placed where the previous one ended, unless its arrival says otherwise by more
        than :data:`MIC_RESYNC_S` (then it ends at its arrival). Blocking while the speech model loads
        on the first piece (Gradio runs handlers in worker threads).

        Args:
            rate: samples per second as the browser recorded.
            samples: ``(N,)`` or ``(N, channels)`` int16 (or float in [-1, 1]) as ``gr.Audio`` gives it;
                channels are averaged to mono.

        Returns:
            The piece's stream time (pts of its first sample).

        Raises:
            ValueError: not audio samples. streaming.errors.InvalidAudio, app.serving.errors.SpeechOff,
            app.serving.errors.UnknownSession: from the manager.
        """
        arr = np.asarray(samples)
        if arr.ndim == 2:
            arr = arr.mean(axis=1) if arr.shape[1] > 1 else arr[:, 0]
        if arr.ndim != 1 or arr.size == 0 or not np.issubdtype(arr.dtype, np.number):
            raise ValueError(f"a microphone piece must be (N,) or (N, channels) samples; got shape {arr.shape} "
                             f"dtype {arr.dtype}")
        if np.issubdtype(arr.dtype, np.integer):
            mono = np.clip(np.rint(arr), -32768, 32767).astype(np.int16)
        else:
            mono = np.clip(arr, -1.0, 1.0).astype(np.float32)
        rate = int(rate)
        duration = mono.size / rate if rate > 0 else 0.0
        now = time.monotonic()
        with self._lock:
            arrived = tab.webcam_pts(now)
            start = max(0.0, arrived - duration)
            if tab.mic_end is not None and abs(tab.mic_end - start) <= MIC_RESYNC_S:
                start = tab.mic_end
        try:
            self.manager.push_audio(tab.sid, mono, rate=rate, pts=start)
        except Exception:
            with self._lock:
                tab.mic_refused += 1
            raise
        with self._lock:
            tab.mic_end = start + duration
            tab.mic_pieces += 1
            tab.mic_seconds += duration
        return start

    def webcam_frame(self, tab: Tab, image: np.ndarray) -> bool:
        """Turn a browser webcam image into a :class:`Frame` on the tab's clock and hand it to the
        manager (non-blocking, newest wins). Returns whether the manager queued it.

        Args:
            image: ``(H, W, 3)`` (or ``(H, W, 4)``, alpha dropped) uint8 RGB as ``gr.Image`` gives it.

        Raises:
            ValueError: ``image`` is not an RGB uint8 picture.
            app.serving.errors.FrameTooLarge, app.serving.errors.UnknownSession: from the manager.
        """
        arr = np.asarray(image)
        if arr.ndim == 3 and arr.shape[2] == 4:
            arr = arr[:, :, :3]
        if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] < 1 or arr.shape[1] < 1:
            raise ValueError(f"a webcam frame must be an (H, W, 3) uint8 RGB image; got shape {arr.shape} dtype {arr.dtype}")
        now = time.monotonic()
        with self._lock:
            if tab.sent_at and now - tab.sent_at[-1] > WEBCAM_IDLE_S:
                tab.sent_at.clear()
            pts = tab.webcam_pts(now)
            index = tab.frames_sent + tab.frames_refused
        frame = Frame(index=index, pts=pts, wall=time.time(), rgb=np.ascontiguousarray(arr), label=WEBCAM)
        accepted = self.manager.submit_frame(tab.sid, frame)
        with self._lock:
            if accepted:
                tab.frames_sent += 1
            else:
                tab.frames_refused += 1
            tab.sent_at.append(now)
        return accepted
