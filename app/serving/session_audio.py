"""The audio side of one served session: sound pushed by a client or pulled from a source's sound
track goes to the session's own transcriber; its segments come back as timed speech events.

A :class:`SessionAudio` is made per session when the manager has speech on. Its
:class:`~app.engine.speech.Transcriber` is created on the first audio (loading the speech model
there: on the caller's thread, never the event loop or the model worker) and transcribes on its own
thread; each segment goes to ``on_segment`` (the manager submits it to the session as model work, in
order with text events). Pushed audio is turned into 16 kHz mono :class:`~streaming.audio.AudioChunk`\\ s
by the streaming layer's resampler; without a pts it continues the session's audio clock.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["TRANSCRIPT_KEPT", "SessionAudio", "empty_transcriber_stats"]

#: Segments of the recent transcript a session keeps for readers (the page's transcript box).
TRANSCRIPT_KEPT = 200


def empty_transcriber_stats() -> dict[str, Any]:
    """The transcriber's stats before it exists (nothing heard yet)."""
    return {"audio_s": 0.0, "speech_s": 0.0, "rtf": None, "lag_s": 0.0, "dropped_s": 0.0, "queue_s": 0.0,
            "segments": 0, "errors": 0, "behind": False}


class SessionAudio:
    """One session's transcriber, pushed-audio clock, counters and recent transcript (thread-safe).

    Args:
        sid: the session's id (log lines).
        asr: the :class:`~app.engine.speech.ASRConfig` of the transcriber.
        on_segment: called with each :class:`~app.engine.speech.SpeechSegment` on the transcriber's
            thread; must return quickly (the manager queues model work).
        max_message_s: seconds of audio one push may carry.
    """

    def __init__(self, sid: str, asr, *, on_segment: Callable[[Any], None], max_message_s: float) -> None:
        self.sid = sid
        self.asr = asr
        self.max_message_s = max_message_s
        self._on_segment = on_segment
        self._lock = threading.Lock()
        self._create_lock = threading.Lock()
        self._transcriber = None
        self._closed = False
        self.clock: float | None = None  # stream time where the last pushed chunk ended
        self.pushed = {"chunks": 0, "seconds": 0.0, "errors": 0}
        self.committed = 0  # segments the session has prefilled
        self.commit_errors = 0
        self._transcript: deque = deque(maxlen=TRANSCRIPT_KEPT)

    # ---- the transcriber ------------------------------------------------------------------------
    @property
    def started(self) -> bool:
        """True once a transcriber exists (the session has had audio)."""
        return self._transcriber is not None

    def transcriber(self):
        """The session's transcriber, created (and its model loaded) on first use.

        Raises:
            app.engine.speech.ASRError: the speech model cannot be loaded.
            app.engine.types.SessionClosed: the session is closed.
        """
        from app.engine.types import SessionClosed

        with self._create_lock:  # one creator; readers (stats, from the event loop) take only the short _lock
            if self._closed:
                raise SessionClosed(f"session {self.sid} is closed")
            if self._transcriber is None:
                from app.engine.speech import Transcriber

                transcriber = Transcriber(self.asr, on_segment=self._segment, name=f"asr-{self.sid}")
                with self._lock:
                    closed = self._closed
                    if not closed:
                        self._transcriber = transcriber
                if closed:
                    transcriber.close()
                    raise SessionClosed(f"session {self.sid} is closed")
                logger.info("session %s: transcriber started (%s)", self.sid, self.asr.model)
            return self._transcriber

    def _segment(self, segment) -> None:
        if not segment.text.strip():
            return
        try:
            self._on_segment(segment)
        except Exception:  # noqa: BLE001 - the transcriber's thread must go on (e.g. the session closed)
            logger.debug("session %s: a speech segment was not submitted", self.sid, exc_info=True)

    # ---- audio in -------------------------------------------------------------------------------
    def feed(self, chunk) -> None:
        """Hand an :class:`~streaming.audio.AudioChunk` to the transcriber (non-blocking once the
        transcriber exists; a source's demuxing thread calls this for every chunk)."""
        if self._closed:
            return
        self.transcriber().feed(chunk)

    def push(self, pcm, *, rate: int, pts: float | None = None):
        """Turn pushed PCM into a 16 kHz chunk on the session's clock and feed it.

        Args:
            pcm: PCM16 LE mono bytes, or an int16/float32 ``(N,)`` array.
            rate: its sample rate, [8000, 48000].
            pts: stream time of its first sample (None: where the last pushed chunk ended; 0 at first).

        Returns:
            The :class:`~streaming.audio.AudioChunk` fed.

        Raises:
            streaming.errors.InvalidAudio: a bad rate, an odd byte count, no samples, or too long.
        """
        from streaming.errors import InvalidAudio

        with self._lock:
            start = pts if pts is not None else (self.clock if self.clock is not None else 0.0)
        try:
            chunk = _to_chunk(pcm, rate=rate, pts=float(start), max_s=self.max_message_s)
        except InvalidAudio:
            with self._lock:
                self.pushed["errors"] += 1
            raise
        self.feed(chunk)
        with self._lock:
            self.clock = chunk.end
            self.pushed["chunks"] += 1
            self.pushed["seconds"] += chunk.duration
        return chunk

    def flush(self, timeout_s: float = 60.0) -> None:
        """Transcribe what is buffered now and wait for it (its segments go to ``on_segment``)."""
        transcriber = self._transcriber
        if transcriber is None or self._closed:
            return
        transcriber.flush(timeout_s=timeout_s)

    # ---- segments back --------------------------------------------------------------------------
    def record(self, segment) -> None:
        """Note a segment the session has prefilled (for :meth:`transcript`)."""
        with self._lock:
            self.committed += 1
            self._transcript.append(segment)

    def record_error(self) -> None:
        with self._lock:
            self.commit_errors += 1

    def transcript(self, last: int | None = None) -> list:
        """The recent segments the session heard, oldest first (``last``: only the newest ones)."""
        with self._lock:
            items = list(self._transcript)
        return items if last is None else items[-last:] if last > 0 else []

    # ---- stats and closing ----------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """``{"model", "started", <the transcriber's stats>, "committed", "commit_errors", "pushed"}``."""
        transcriber = self._transcriber
        heard = empty_transcriber_stats()
        if transcriber is not None:
            try:
                heard.update(transcriber.stats())
            except Exception:  # noqa: BLE001 - stats must never fail the caller
                logger.debug("session %s: transcriber stats failed", self.sid, exc_info=True)
        with self._lock:
            return {"model": self.asr.model, "started": transcriber is not None, **heard,
                    "committed": self.committed, "commit_errors": self.commit_errors, "pushed": dict(self.pushed)}

    def close(self) -> None:
        """Stop the transcriber (idempotent); audio fed afterwards is ignored."""
        with self._lock:
            self._closed = True
            transcriber, self._transcriber = self._transcriber, None
        if transcriber is not None:
            try:
                transcriber.close()
            except Exception:  # noqa: BLE001 - closing must not fail the caller
                logger.exception("session %s: closing the transcriber failed", self.sid)


def _to_chunk(pcm, *, rate: int, pts: float, max_s: float):
    """Pushed PCM as a 16 kHz mono :class:`~streaming.audio.AudioChunk` starting at ``pts``, through the
    streaming layer's one check and resampler of pushed audio (``streaming.audio.decode_pcm``).

    Raises:
        streaming.errors.InvalidAudio: a rate outside ``PUSH_RATES``, an odd byte count, a wrong dtype
            or shape, non-finite samples, no samples, or more than ``max_s`` seconds.
    """
    from streaming.audio import AudioChunk, decode_pcm

    return AudioChunk(pts=pts, samples=decode_pcm(pcm, rate, max_s=max_s))
