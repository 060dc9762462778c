"""The session manager's limits: its validated config, the per-session frame-rate limiter, and
which session settings may change once a session's input has started."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

from app.engine.config import ConfigError, SessionConfig
from streaming.checks import check_bool, check_int, check_number
from streaming.hosts import HostPolicy

__all__ = ["LIVE_FIELDS", "FrameVerdict", "ManagerConfig", "RateLimiter"]

#: Session settings that may change after a session's input has started (read per request).
#: Everything else (drop mode, KV bits, window, system prompt, memory settings) is fixed from then.
LIVE_FIELDS = frozenset({"max_new_tokens", "top_k", "dialog_max_tokens", "watch_min_interval_s", "watch_on_every_frame"})


@dataclass(frozen=True)
class ManagerConfig:
    """Limits and defaults of a :class:`~app.serving.manager.SessionManager`.

    Attributes:
        max_sessions: open sessions at most. [1, 10000]
        session_ttl_s: a session with no activity for this long is closed. (0, 604800]
        max_fps: frames per second accepted per session (token bucket holding one second's worth, >= 1);
            frames beyond it are dropped and counted as ``rate_limit``. (0, 1000]
        max_frame_side: frames wider or taller than this are refused (``FrameTooLarge``); frames a
            server-pulled source delivers are shrunk to it instead. [16, 16384]
        max_frame_bytes: largest encoded (JPEG/PNG) frame accepted, bytes (enforced by the websocket layer).
            [1024, 1 GiB]
        max_frame_pixels: largest frame accepted, width x height. A pushed image's header is read
            before it is decoded and one over this or ``max_frame_side`` is refused undecoded
            (``frame_too_large``); a server-pulled video whose stream declares more is refused when
            it opens (its decoder would need that much memory per frame). [256, 2**28]
        default_session: settings every new session starts from.
        session_ram_budget_mb: memory-bank RAM per session; used when the session's own
            ``ram_budget_mb`` is None (``None`` here too = unlimited). (0, 1_048_576]
        memory_budget_gb: disk for every session's memory together: each session's ``disk_budget_mb``
            is at most this divided by ``max_sessions``, so the sum stays within it (``None`` = only the
            sessions' own budgets). (0, 1e6]
        stats_interval_s: how often ``input_video.stats`` events go out while frames flow. [0.05, 3600]
        save_interval_s: a session that persists (``memory_dir`` + ``persist``) is saved this often
            while its input changes, as model work at low priority, so a crash of the server loses at
            most this much besides the window (``None``: only when it closes). (0, 86400]
        snapshot_interval_s: the session's own stats are copied for readers after a frame at most this
            often (frames closer together are caught up once they stop). [0.01, 60]
        allow_file_sources: ``SessionManager.set_source`` admits local paths / ``file:`` URLs / webcams
            when its caller does not say (the page passes ``allow_files=True`` for its own uploads).
        source_open_timeout_s: how long opening a server-pulled source may take. (0, 600]
        source_hosts: the hosts server-pulled URLs may reach (a :class:`streaming.hosts.HostPolicy`;
            default: any host but link-local networks and cloud metadata addresses).
        source_stall_s: a pulled source that delivers no frame for this long (at least two frame
            intervals) sends ``input_source.stalled``; ``input_source.gap`` follows when frames come back.
            (0, 3600]
        asr: speech recognition of every session (an ``app.engine.speech.ASRConfig``): each session
            that gets audio (pushed, or from a server-pulled source's sound track) has its own
            transcriber whose segments enter it as timed speech events. None: speech off (audio is
            refused with ``speech_off``; pulled sources are read without their sound).
        max_audio_message_s: seconds of audio one push (one websocket message, one page piece) may
            carry. (0, 10]
        max_pending_texts: text events (``input_text.append``, the page's notes) one session may have
            waiting for the model; one beyond it is refused at once (:class:`WorkBacklog`, error
            ``rate_limited``) and not kept, so a client sending faster than the model reads cannot
            queue unbounded work or memory. Words heard in a session's audio are bounded by its
            transcriber's queue instead. [1, 100000]
        prefill_piece_tokens: a text or speech event longer than this is prefilled in pieces of this
            many tokens, and the model worker may run another session's pending work between them
            (a 4000-character note is about 1000 tokens), so no session waits for a whole long note of
            another; the KV is the same as one prefill's. None: one prefill. [8, 1_000_000]
        short_request_tokens: an answer of at most this many tokens (``max_new_tokens``), or a text
            or speech event of at most about this many (four characters a token), is a short request
            for the model worker's fairness: the first seconds of its worker time count at a tenth
            in its session's account, so short requests go ahead of sessions busy with long work;
            longer ones are charged in full from their start. [0, 1_000_000]
    """

    max_sessions: int = 16
    session_ttl_s: float = 600.0
    max_fps: float = 4.0
    max_frame_side: int = 1920
    max_frame_bytes: int = 8 * 2**20
    max_frame_pixels: int = 3840 * 2160
    default_session: SessionConfig = field(default_factory=SessionConfig)
    session_ram_budget_mb: float | None = 256.0
    memory_budget_gb: float | None = None
    stats_interval_s: float = 1.0
    save_interval_s: float | None = 30.0
    snapshot_interval_s: float = 0.25
    allow_file_sources: bool = False
    source_open_timeout_s: float = 10.0
    source_stall_s: float = 5.0
    source_hosts: HostPolicy = field(default_factory=HostPolicy)
    asr: Any = None
    max_audio_message_s: float = 10.0
    max_pending_texts: int = 16
    prefill_piece_tokens: int | None = 64
    short_request_tokens: int = 64

    def __post_init__(self) -> None:
        check_int("max_sessions", self.max_sessions, low=1, high=10000, error=ConfigError)
        check_number("session_ttl_s", self.session_ttl_s, low=0, high=604800, error=ConfigError)
        check_number("max_fps", self.max_fps, low=0, high=1000, error=ConfigError)
        check_int("max_frame_side", self.max_frame_side, low=16, high=16384, error=ConfigError)
        check_int("max_frame_bytes", self.max_frame_bytes, low=1024, high=2**30, error=ConfigError)
        check_int("max_frame_pixels", self.max_frame_pixels, low=256, high=2**28, error=ConfigError)
        if not isinstance(self.default_session, SessionConfig):
            raise ConfigError(f"default_session must be a SessionConfig; got {type(self.default_session).__name__}")
        check_number("session_ram_budget_mb", self.session_ram_budget_mb, low=0, high=1_048_576, allow_none=True,
                     error=ConfigError)
        check_number("memory_budget_gb", self.memory_budget_gb, low=0, high=1e6, allow_none=True, error=ConfigError)
        check_number("save_interval_s", self.save_interval_s, low=0, high=86400, allow_none=True, error=ConfigError)
        check_number("stats_interval_s", self.stats_interval_s, low=0.05, high=3600, low_inclusive=True, error=ConfigError)
        check_number("snapshot_interval_s", self.snapshot_interval_s, low=0.01, high=60, low_inclusive=True,
                     error=ConfigError)
        check_bool("allow_file_sources", self.allow_file_sources, error=ConfigError)
        check_number("source_open_timeout_s", self.source_open_timeout_s, low=0, high=600, error=ConfigError)
        check_number("source_stall_s", self.source_stall_s, low=0, high=3600, error=ConfigError)
        if not isinstance(self.source_hosts, HostPolicy):
            raise ConfigError(f"source_hosts must be a streaming.hosts.HostPolicy; got {type(self.source_hosts).__name__}")
        if self.asr is not None:
            from app.engine.speech import ASRConfig

            if not isinstance(self.asr, ASRConfig):
                raise ConfigError(f"asr must be an ASRConfig or None (speech off); got {type(self.asr).__name__}")
        check_number("max_audio_message_s", self.max_audio_message_s, low=0, high=10, error=ConfigError)
        check_int("max_pending_texts", self.max_pending_texts, low=1, high=100000, error=ConfigError)
        check_int("prefill_piece_tokens", self.prefill_piece_tokens, low=8, high=1_000_000, allow_none=True,
                  error=ConfigError)
        check_int("short_request_tokens", self.short_request_tokens, low=0, high=1_000_000, error=ConfigError)

    @property
    def speech(self) -> bool:
        """Whether speech recognition is on."""
        return self.asr is not None

    def updated(self, **changes: Any) -> "ManagerConfig":
        """A validated copy with ``changes``; unknown names raise :class:`ConfigError`."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ConfigError(f"unknown manager setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class FrameVerdict:
    """What ``SessionManager.offer_frame`` did with a frame.

    Attributes:
        accepted: the frame is queued for the model.
        reason: why it was not accepted (``"rate_limit"``), else None.
        replaced: it replaced an older pending frame of the session (counted as a ``backlog`` drop).
    """

    accepted: bool
    reason: str | None = None
    replaced: bool = False


class RateLimiter:
    """A token bucket: ``rate`` tokens per second, at most one second's worth (>= 1) stored.

    Not thread-safe: the manager calls :meth:`allow` under the session's lock.
    """

    def __init__(self, rate: float) -> None:
        self.rate = float(rate)
        self.burst = max(1.0, self.rate)
        self._tokens = self.burst
        self._t = time.monotonic()

    def wait_s(self) -> float:
        """Take a token, waiting for it: the seconds to wait before going ahead (0: at once). The
        token is taken now, so successive callers queue up behind each other."""
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._t) * self.rate)
        self._t = now
        self._tokens -= 1.0
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate

    def allow(self) -> bool:
        """Take a token if one is there: True when the caller may go ahead."""
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._t) * self.rate)
        self._t = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False
