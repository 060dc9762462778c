"""A server-pulled source (file, RTSP, HTTP...) read by its own thread into one session, its sound
track (when the session hears) handed to the session's transcriber."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import threading
from collections.abc import Callable
from typing import Any

from app.engine.types import SessionClosed
from app.serving.scheduler import SchedulerClosed

logger = logging.getLogger(__name__)

__all__ = ["SourceRunner"]


class SourceRunner:
    """Reads one server-pulled source in its own thread and hands its frames to the session.

    Args:
        sampler: a ``streaming.Sampler`` over the opened source (started by :meth:`start`).
        sid: the session's id (names the thread and the log lines).
        emit: sends a session event (``input_source.gap`` / ``.error`` / ``.ended``) to its subscribers.
        enqueue: queues one frame for the model and returns its future (raises ``SessionClosed`` once
            the session is gone).
        session_closed: True once the session is closed (no ``input_source.ended`` is sent then).
        paced: frames of a non-live source are released at their stream times (a file or HTTP
            download played as a live camera).
        blocking: each frame waits for the model (nothing is dropped; ``realtime=False``).
        audio: the session's :class:`~app.serving.session_audio.SessionAudio` when the source was opened
            with its sound and the session hears: every ``AudioChunk`` goes to it (registered with
            ``source.on_audio`` here, before the source is read), and at the end of the stream what it
            buffered is transcribed before ``input_source.ended`` is sent.
    """

    #: Seconds the end of a stream waits for the last speech to be transcribed.
    FLUSH_TIMEOUT_S = 60.0

    def __init__(self, sampler, sid: str, *, emit: Callable[[dict], None], enqueue: Callable[[Any], Any],
                 session_closed: Callable[[], bool], paced: bool, blocking: bool, audio=None) -> None:
        self.sampler = sampler
        self.sid = sid
        self.name = sampler.source.name
        self.info = sampler.info
        self.paced = paced
        self.blocking = blocking
        self.frames = 0
        self.pts: float | None = None
        self.first_pts: float | None = None
        self.error: str | None = None
        self.finished = False
        self._emit = emit
        self._enqueue = enqueue
        self._session_closed = session_closed
        self._gaps_seen = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"source-{sid}", daemon=True)
        self.audio = audio
        self.audio_pts: float | None = None  # where the last chunk of sound ended (stream time)
        self.audio_errors = 0  # chunks the transcriber refused (logged once)
        if audio is not None:
            sampler.source.on_audio(self._on_audio)

    def _on_audio(self, chunk) -> None:
        """The source's audio callback (its demuxing thread): quick, never raises."""
        self.audio_pts = chunk.end
        try:
            self.audio.feed(chunk)
        except Exception:  # noqa: BLE001 - the video goes on whatever happens to the sound
            self.audio_errors += 1
            if self.audio_errors == 1:
                logger.warning("source %s of session %s: audio not transcribed", self.name, self.sid, exc_info=True)

    def start(self) -> None:
        # Start the sampler here, not lazily in the reader thread: Sampler.close() from another thread
        # racing a lazy Sampler.start() could try to join its reader before it was started.
        self.sampler.start()
        self._thread.start()

    def signal_stop(self) -> None:
        """Ask the reader to stop at its next frame, without waiting (see :meth:`stop`)."""
        self._stop.set()

    def stop(self, join_s: float = 2.0) -> None:
        """Stop reading, close the sampler and wait up to ``join_s`` s for the thread."""
        self._stop.set()
        self.sampler.close(join_timeout_s=min(join_s, 1.0))
        if threading.current_thread() is not self._thread:
            self._thread.join(join_s)

    def audio_stats(self) -> dict[str, Any] | None:
        """The source's audio counters (``chunks``, ``seconds``, ``decode_errors``, ...) plus ``pts`` (where
        the sound heard so far ends) and ``refused``; None when its sound is not heard."""
        if self.audio is None:
            return None
        try:
            stats = dict(self.sampler.source.audio_stats())
        except Exception:  # noqa: BLE001 - stats never fail the caller
            stats = {}
        return {**stats, "pts": self.audio_pts, "refused": self.audio_errors}

    def progress(self) -> dict[str, Any]:
        """``{"source", "pts", "duration_s", "fraction", "finished", "error", "frames", "live"}``
        (``fraction`` None when the duration is unknown; ``pts`` follows the sound of a source without
        video)."""
        duration = self.info.duration_s
        pts = self.pts if self.pts is not None else self.audio_pts
        first = self.first_pts if self.first_pts is not None else 0.0
        rel = None if pts is None else pts - first
        fraction = None
        if duration and rel is not None:
            fraction = 1.0 if self.finished and not self.error else max(0.0, min(1.0, rel / duration))
        return {"source": self.name, "pts": pts, "duration_s": duration, "fraction": fraction,
                "finished": self.finished, "error": self.error, "frames": self.frames, "live": self.info.live}

    def ingest_stats(self) -> dict[str, Any]:
        """The sampler's ingest counters (decoded, sampled, delivered, dropped, ...) as a plain dict."""
        ing = self.sampler.stats()
        return {"decoded": ing.decoded, "sampled": ing.sampled, "delivered": ing.delivered,
                "dropped": ing.dropped, "decode_errors": ing.decode_errors, "lag_s": ing.lag_s,
                "fps": ing.fps, "reconnects": ing.reconnects, "reconnecting": ing.reconnecting,
                "gaps": len(ing.gaps)}

    def _check_gaps(self) -> None:
        gaps = self.sampler.source.counters.gaps
        while self._gaps_seen < len(gaps):
            g = gaps[self._gaps_seen]
            self._gaps_seen += 1
            self._emit({"type": "input_source.gap", "source": self.name, "gap": dataclasses.asdict(g)})

    def _run(self) -> None:
        from streaming.errors import SourceError
        from streaming.pacing import RealtimeClock

        clock = RealtimeClock(1.0, self._stop) if self.paced else None
        reason = "end of stream"
        try:
            while not self._stop.is_set():
                frame = self.sampler.poll(timeout=0.5)
                self._check_gaps()
                if frame is None:
                    if self.sampler.finished:
                        break
                    continue
                if clock is not None:
                    due = clock.wait(frame.pts)
                    if due is None:
                        break
                    frame = dataclasses.replace(frame, wall=due)
                if self.first_pts is None:
                    self.first_pts = frame.pts
                self.pts = frame.pts
                self.frames += 1
                future = self._enqueue(frame)
                if self.blocking and future is not None:
                    self._wait(future)
        except SourceError as exc:
            self.error = str(exc)
            self._emit({"type": "input_source.error", "source": self.name, "error": {
                "code": "source_error", "source_error": type(exc).__name__, "message": str(exc)}})
        except (SessionClosed, SchedulerClosed):
            reason = "session closed"
        except Exception as exc:  # noqa: BLE001 - any failure ends this source alone
            logger.exception("source %s of session %s failed", self.name, self.sid)
            self.error = f"{type(exc).__name__}: {exc}"
            self._emit({"type": "input_source.error", "source": self.name, "error": {
                "code": "internal_error", "source_error": type(exc).__name__, "message": str(exc)}})
        finally:
            self.sampler.close(join_timeout_s=0.5)
        if self.audio is not None and reason == "end of stream" and not self._stop.is_set() and not self._session_closed():
            try:  # the last words before the end are heard before the end is announced
                self.audio.flush(timeout_s=self.FLUSH_TIMEOUT_S)
            except Exception:  # noqa: BLE001 - the sound fails alone
                logger.warning("source %s of session %s: the last audio was not transcribed", self.name, self.sid,
                               exc_info=True)
        self.finished = True
        if self.error is None and not self._session_closed():
            if self._stop.is_set():
                reason = "stopped"
            self._emit({"type": "input_source.ended", "source": self.name, "reason": reason,
                        "frames": self.frames, "pts": self.pts})

    def _wait(self, future: concurrent.futures.Future) -> None:
        while not self._stop.is_set():
            try:
                future.result(timeout=0.5)
                return
            except concurrent.futures.TimeoutError:
                continue
            except concurrent.futures.CancelledError:
                return
            except Exception:  # noqa: BLE001 - already reported as an error event by the manager
                return
