"""What the page's buttons and API endpoints do, as plain Python over the session manager.

Each method takes the tab's session id (from ``gr.State``, may be None or stale) and Gradio's
``session_hash``, resolves them to the tab's open session (:class:`~ui.tabs.TabRegistry`) and
returns plain data; ``ui.page`` renders it. Failures a user can cause raise :class:`PageError`
with a message fit to show as is.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.engine.config import ConfigError
from app.engine.types import Answer, SessionError, WatchRule
from app.serving.errors import LiveUpdateRefused, ManagerError
from app.serving.limits import LIVE_FIELDS
from app.serving.ws_server import SERVER_PATH_FIELDS
from streaming.errors import SourceError

from .answers import stream_answer
from .tabs import Tab, TabRegistry

logger = logging.getLogger(__name__)

#: Settings the page offers, with the SessionConfig field each one sets.
SETTING_FIELDS = ("drop", "kv_bits", "top_k", "window_tokens")

#: The label each of those settings has on the page (refusals of the page's form name these).
SETTING_LABELS = {"drop": "Token drop", "kv_bits": "KV bits in memory", "top_k": "Chunks retrieved (top-k)",
                  "window_tokens": "Window (tokens)"}

#: What the user is told when a question comes before anything was watched (no model work is done).
NOTHING_WATCHED = ("Nothing watched yet: start the webcam, upload a video or connect a camera URL, "
                   "then ask about what it shows.")


def nothing_watched(stats: dict[str, Any]) -> bool:
    """Whether a session's statistics (``manager.stats``) say it has taken no input to answer about:
    no frame submitted or watched, no note, no speech, no memory, no source pulling."""
    ingest = stats.get("ingest") if isinstance(stats.get("ingest"), dict) else {}
    audio = stats.get("audio") if isinstance(stats.get("audio"), dict) else {}
    pushed = audio.get("pushed") if isinstance(audio.get("pushed"), dict) else {}
    counts = (ingest.get("frames_submitted"), stats.get("frames"), stats.get("text_events"), stats.get("speech_events"),
              stats.get("bank_chunks"), audio.get("committed"), pushed.get("chunks"))
    return stats.get("source") is None and not any(isinstance(n, (int, float)) and n > 0 for n in counts)


def labelled(message: str) -> str:
    """``message`` with the page's settings named by their labels instead of their field names."""
    return re.sub(r"\b(" + "|".join(SETTING_LABELS) + r")\b", lambda m: SETTING_LABELS[m.group(1)], message)


def refuse_server_paths(manager, overrides: dict[str, Any]) -> None:
    """The websocket API's rule for client settings, applied to the page's clients: settings that name
    server-side paths (``memory_dir``, ``persist``) only on a server started with ``--allow-file-sources``.

    Raises:
        PageError: one of those settings was given and the server does not allow it.
    """
    forbidden = sorted(SERVER_PATH_FIELDS & set(overrides))
    if forbidden and not manager.config.allow_file_sources:
        raise PageError(f"{', '.join(forbidden)} name server-side paths and cannot be set from the page or its API "
                        "on this server (it was not started with --allow-file-sources)")


class PageError(RuntimeError):
    """A request from the page that cannot be served; the message says why, for the user."""


@dataclass(frozen=True)
class SourceStatus:
    """The result of starting a server-pulled source."""

    sid: str
    label: str
    ok: bool
    message: str
    info: dict[str, Any] | None = None


def source_problem(exc: Exception, label: str | None = None) -> str:
    """A source error as the page shows it: the uploaded file's name (the server's temporary path means
    nothing to the user) and what is wrong, never a Python class name."""
    message = str(exc).strip() or "the source cannot be read"
    return f"{label}: {message}" if label and label not in message else message


class PageActions:
    """The page's operations for one :class:`~app.serving.manager.SessionManager`.

    Args:
        manager: the session manager.
        tabs: the tab registry (one session per Gradio session).
        source_fps: frames per second of stream time a pulled source (upload, URL) feeds the model.
    """

    def __init__(self, manager, tabs: TabRegistry, *, source_fps: float | None = 1.0) -> None:
        self.manager = manager
        self.tabs = tabs
        self.source_fps = source_fps

    # ---- sessions ---------------------------------------------------------------------------------
    def session(self, sid: str | None, session_hash: str | None) -> str:
        """The tab's open session id (created when it has none)."""
        try:
            return self.tabs.resolve(sid, session_hash)
        except ManagerError as exc:  # SessionLimit, shut down
            raise PageError(str(exc)) from exc

    def existing(self, sid: str | None, session_hash: str | None) -> str | None:
        """The tab's open session id, or None (never creates one)."""
        return self.tabs.resolve(sid, session_hash, create=False)

    def tab(self, sid: str) -> Tab:
        tab = self.tabs.tab(sid)
        if tab is None:
            raise PageError("this page's session is gone; reload the page")
        return tab

    def settings(self, sid: str) -> dict[str, Any]:
        """The page's settings fields of the session, plus whether only live fields can change now."""
        cfg = self.manager.session_config(sid)
        return {name: getattr(cfg, name) for name in SETTING_FIELDS} | {"locked": self.manager.has_input(sid)}

    def apply_settings(self, sid: str | None, session_hash: str | None, overrides: dict[str, Any], *,
                       form: bool = False) -> tuple[str, dict[str, Any]]:
        """Apply ``overrides`` (SessionConfig field names) to the tab's session.

        Args:
            form: the overrides come from the page's settings form: refusals name the form's labels
                (API callers, who send field names, get the field names).

        Returns ``(sid, the session's settings as a dict)``.

        Raises:
            PageError: an unknown field, a value out of range, a field that is fixed once the
                session has input (the message names it and says how to change it), or a server path
                the server does not allow (:func:`refuse_server_paths`).
        """
        sid = self.session(sid, session_hash)
        if not isinstance(overrides, dict):
            raise PageError(f"settings must be a mapping of field names to values; got {type(overrides).__name__}")
        refuse_server_paths(self.manager, overrides)
        try:
            cfg = self.manager.update_session(sid, dict(overrides))
        except LiveUpdateRefused as exc:
            if not form:
                raise PageError(f"{exc}. Use /new_session to start over with them.") from exc
            current = self.manager.session_config(sid)
            fixed = [SETTING_LABELS.get(k, k) for k in overrides
                     if k not in LIVE_FIELDS and getattr(current, k, None) != overrides[k]]
            live = [SETTING_LABELS[k] for k in SETTING_FIELDS if k in LIVE_FIELDS]
            raise PageError(f"{' and '.join(fixed) or 'these settings'} cannot change once the session has input "
                            f"(a stream, a watch rule or a question); {', '.join(live)} can change at any time. "
                            "Use “New session with these settings” to start over with them.") from exc
        except ConfigError as exc:
            raise PageError(labelled(str(exc)) if form else str(exc)) from exc
        except SessionError as exc:
            raise PageError(str(exc)) from exc
        return sid, cfg.to_dict()

    def restart(self, sid: str | None, session_hash: str | None, overrides: dict[str, Any] | None = None, *,
                form: bool = False) -> str:
        """Close the tab's session and open a new one with ``overrides``. Returns the new id.

        Raises:
            PageError: a bad setting (the old session stays as it was), a server path the server does
                not allow, the session limit.
        """
        if overrides is not None and not isinstance(overrides, dict):
            raise PageError(f"settings must be a mapping of field names to values; got {type(overrides).__name__}")
        refuse_server_paths(self.manager, overrides or {})
        try:
            return self.tabs.reset(sid, session_hash, overrides)
        except (ConfigError, ManagerError) as exc:
            raise PageError(labelled(str(exc)) if form else str(exc)) from exc

    # ---- sources ----------------------------------------------------------------------------------
    def play_file(self, sid: str | None, session_hash: str | None, path: str) -> SourceStatus:
        """Play an uploaded video file into the session as a live stream (server side)."""
        sid = self.session(sid, session_hash)
        label = Path(str(path)).name
        return self._set_source(sid, str(path), label, allow_files=True)

    def connect_url(self, sid: str | None, session_hash: str | None, url: str) -> SourceStatus:
        """Make the server pull an RTSP/HTTP camera into the session (no local files)."""
        sid = self.session(sid, session_hash)
        url = (url or "").strip()
        if not url:
            message = "Enter a camera URL (rtsp://, rtsps://, rtmp://, http://, https://)."
            self.tab(sid).source_error = message
            return SourceStatus(sid, "", False, message)
        return self._set_source(sid, url, None, allow_files=False)

    def _set_source(self, sid: str, spec: str, label: str | None, *, allow_files: bool) -> SourceStatus:
        tab = self.tab(sid)
        try:
            info = self.manager.set_source(sid, spec, fps=self.source_fps, realtime=True, allow_files=allow_files)
        except SourceError as exc:
            message = source_problem(exc, label)
            tab.source_error = message
            return SourceStatus(sid, label or spec, False, message)
        except ManagerError as exc:
            tab.source_error = f"{label or spec}: {exc}"
            return SourceStatus(sid, label or spec, False, str(exc))
        name = label or getattr(info, "source", spec)
        tab.source_label, tab.source_error = name, None
        facts = {k: getattr(info, k, None) for k in ("source", "kind", "live", "codec", "width", "height", "fps", "duration_s")}
        return SourceStatus(sid, name, True, f"playing {name}", facts)

    def stop_source(self, sid: str | None, session_hash: str | None) -> str | None:
        sid = self.existing(sid, session_hash)
        if sid is not None:
            self.manager.stop_source(sid)
            tab = self.tabs.tab(sid)
            if tab is not None:
                tab.source_error = None
        return sid

    def progress(self, sid: str) -> dict[str, Any] | None:
        try:
            return self.manager.source_progress(sid)
        except SessionError:
            return None

    # ---- questions --------------------------------------------------------------------------------
    def nothing_watched(self, sid: str) -> bool:
        """Whether the session has seen, heard or read nothing yet (see :func:`nothing_watched`)."""
        try:
            return nothing_watched(self.manager.stats(sid))
        except SessionError:
            return False

    def ask(self, sid: str, question: str, max_new_tokens: int | None = None) -> Iterator[str | Answer]:
        """Stream an answer (text so far, then the :class:`Answer`); see :func:`ui.answers.stream_answer`.

        Raises:
            PageError: an empty question, or an answer already running in this session.
        """
        if not isinstance(question, str) or not question.strip():
            raise PageError("type a question first")
        try:
            yield from stream_answer(self.manager, sid, question.strip(), max_new_tokens=max_new_tokens)
        except ManagerError as exc:
            raise PageError(str(exc)) from exc

    # ---- watch rules ------------------------------------------------------------------------------
    def add_watch(self, sid: str | None, session_hash: str | None, text: str) -> tuple[str, WatchRule]:
        sid = self.session(sid, session_hash)
        if not isinstance(text, str) or not text.strip():
            raise PageError("a watch rule needs text, e.g. “a person enters the room”")
        try:
            rule = self.manager.watch(sid, text.strip())
        except SessionError as exc:
            raise PageError(str(exc)) from exc
        return sid, rule

    def remove_watch(self, sid: str | None, session_hash: str | None, rule_id: str) -> tuple[str | None, bool]:
        sid = self.existing(sid, session_hash)
        if sid is None or not rule_id:
            return sid, False
        return sid, self.manager.unwatch(sid, str(rule_id))

    def rules(self, sid: str | None) -> list[WatchRule]:
        if not sid:
            return []
        try:
            return self.manager.rules(sid)
        except SessionError:
            return []

    # ---- stats ------------------------------------------------------------------------------------
    def stats(self, sid: str) -> dict[str, Any]:
        """``manager.stats(sid)`` plus what the page itself knows (webcam frames sent, alerts)."""
        stats = self.manager.stats(sid)
        tab = self.tabs.tab(sid)
        if tab is not None:
            now = time.monotonic()
            stats["page"] = {
                "webcam_frames_sent": tab.frames_sent,
                "webcam_frames_refused": tab.frames_refused,
                "webcam_fps": tab.webcam_fps(now),
                "webcam_active": tab.webcam_active(now),
                "source_label": tab.source_label,
                "source_error": tab.source_error,
                "alerts_received": tab.alerts_total,
            }
        return stats
