"""A server-pulled source (file, RTSP, HTTP...) read by its own thread into one session, its sound
track (when the session hears) handed to the session's transcriber."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import threading
import time
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
        pts_base: the session's stream time where this source begins (the end of what it saw before,
            or None for a new session). A source whose own timestamps start earlier (a new file at 0
            after minutes of webcam) is shifted to start there, so the session's stream time never
            goes back; ``pts_offset`` says by how much.
        stall_after_s: no frame for this long (while the source has not ended) sends
            ``input_source.stalled``; when frames come back, ``input_source.gap`` follows (with the
            gap's stream times) unless the source reported the outage itself (a reconnection).
        label: how evidence names this source (``file bikes.mp4``, ``rtsp://cam/live``; see
            :func:`streaming.labels.source_label`); every frame handed on carries it. None: the
            label of the source's name.

    A file that ends well before the duration its header declares ends with ``input_source.ended``
    of reason ``truncated`` and a ``message`` saying where it stopped.

    Frames the source refuses because their size grew past ``max_pixels`` mid-stream (the decoder
    refuses them undecoded; the frames around them go on) are announced by
    ``input_source.frame_refused`` ``{source, code: "frame_too_large", refused (so far), message}``, at
    most once every :attr:`REFUSAL_EVERY_S` seconds while they go on.

    Events: ``input_source.stalled`` ``{source, pts (the last frame's), stalled_s, reconnecting}``;
    ``input_source.gap`` ``{source, gap: {start_wall, end_wall, duration_s, reason, attempts,
    start_pts, end_pts}}``.
    """

    #: Seconds the end of a stream waits for the last speech to be transcribed.
    FLUSH_TIMEOUT_S = 60.0
    #: Least seconds between two ``input_source.frame_refused`` events.
    REFUSAL_EVERY_S = 1.0

    def __init__(self, sampler, sid: str, *, emit: Callable[[dict], None], enqueue: Callable[[Any], Any],
                 session_closed: Callable[[], bool], paced: bool, blocking: bool, audio=None,
                 pts_base: float | None = None, stall_after_s: float = 5.0, label: str | None = None) -> None:
        from streaming.labels import clean_label, source_label

        self.sampler = sampler
        self.sid = sid
        self.name = sampler.source.name
        self.label = clean_label(label) or source_label(self.name)
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
        self.pts_base = pts_base
        self.pts_offset: float | None = None  # set at the first frame
        self.stall_after_s = float(stall_after_s)
        self.stalls = 0
        self.refused = 0  # frames the source refused as too large (announced so far)
        self._refused_at = 0.0
        self._stalled_since: float | None = None  # wall time the current stall began (last frame's arrival)
        self._stall_pts: float | None = None
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
        """``{"source", "label", "pts", "duration_s", "fraction", "finished", "error", "frames", "live"}``
        (``fraction`` None when the duration is unknown; ``pts`` follows the sound of a source without
        video)."""
        duration = self.info.duration_s
        pts = self.pts if self.pts is not None else self.audio_pts
        first = self.first_pts if self.first_pts is not None else 0.0
        rel = None if pts is None else pts - first
        fraction = None
        if duration and rel is not None:
            fraction = 1.0 if self.finished and not self.error else max(0.0, min(1.0, rel / duration))
        return {"source": self.name, "label": self.label, "pts": pts, "duration_s": duration, "fraction": fraction,
                "finished": self.finished, "error": self.error, "frames": self.frames, "live": self.info.live}

    def ingest_stats(self) -> dict[str, Any]:
        """The sampler's ingest counters (decoded, sampled, delivered, dropped, ...) as a plain dict."""
        ing = self.sampler.stats()
        return {"decoded": ing.decoded, "sampled": ing.sampled, "delivered": ing.delivered,
                "dropped": ing.dropped, "decode_errors": ing.decode_errors, "lag_s": ing.lag_s,
                "fps": ing.fps, "reconnects": ing.reconnects, "reconnecting": ing.reconnecting,
                "gaps": len(ing.gaps)}

    def _check_gaps(self, pts: float | None = None) -> bool:
        """Send the source's newly recorded outages; True when there were any."""
        gaps = self.sampler.source.counters.gaps
        sent = False
        while self._gaps_seen < len(gaps):
            g = gaps[self._gaps_seen]
            self._gaps_seen += 1
            gap = {**dataclasses.asdict(g), "start_pts": self._stall_pts if self._stalled_since else self.pts,
                   "end_pts": pts}
            self._emit({"type": "input_source.gap", "source": self.name, "gap": gap})
            sent = True
        return sent

    def _check_refused(self, final: bool = False) -> None:
        """Announce frames the source refused as too large since the last announcement (rate-limited;
        ``final``: the source ended, say what is left)."""
        counters = self.sampler.source.counters
        count = counters.too_large
        now = time.time()
        if count <= self.refused or (not final and now - self._refused_at < self.REFUSAL_EVERY_S):
            return
        self.refused, self._refused_at = count, now
        self._emit({"type": "input_source.frame_refused", "source": self.name, "code": "frame_too_large",
                    "refused": count, "message": counters.last_refusal})

    def _check_stall(self, last_frame_at: float) -> None:
        """No frame came: once ``stall_after_s`` passed, say so (once per stall)."""
        now = time.time()
        if self._stalled_since is not None or now - last_frame_at < self.stall_after_s:
            return
        self._stalled_since = last_frame_at
        self._stall_pts = self.pts
        self.stalls += 1
        reconnecting = bool(getattr(self.sampler.stats(), "reconnecting", False))
        logger.info("source %s of session %s: no frame for %.1f s", self.name, self.sid, now - last_frame_at)
        self._emit({"type": "input_source.stalled", "source": self.name, "pts": self.pts,
                    "stalled_s": round(now - last_frame_at, 3), "reconnecting": reconnecting})

    def _resumed(self, pts: float) -> None:
        """A frame came after a stall: the gap is sent now (unless the source's own record of the
        outage was just sent)."""
        since = self._stalled_since
        self._stalled_since = None
        if since is None or self._check_gaps(pts):
            return
        now = time.time()
        self._emit({"type": "input_source.gap", "source": self.name, "gap": {
            "start_wall": since, "end_wall": now, "duration_s": round(now - since, 3), "reason": "stalled",
            "attempts": 0, "start_pts": self._stall_pts, "end_pts": pts}})

    def _shift(self, frame):
        """The frame on the session's timeline (see ``pts_base``), labelled with its source."""
        if self.pts_offset is None:
            base = self.pts_base
            self.pts_offset = max(0.0, base - frame.pts) if base is not None else 0.0
            if self.pts_offset:
                logger.info("source %s of session %s starts at %.3f s of its own time: shifted by %.3f s to "
                            "continue the session's stream time", self.name, self.sid, frame.pts, self.pts_offset)
        return dataclasses.replace(frame, pts=frame.pts + (self.pts_offset or 0.0), label=self.label)

    def _run(self) -> None:
        from streaming.errors import SourceError
        from streaming.pacing import RealtimeClock

        clock = RealtimeClock(1.0, self._stop) if self.paced else None
        reason = "end of stream"
        last_frame_at = time.time()
        try:
            while not self._stop.is_set():
                frame = self.sampler.poll(timeout=min(0.5, self.stall_after_s / 2))
                self._check_refused()
                if self._stalled_since is None:
                    self._check_gaps(None if frame is None else frame.pts + (self.pts_offset or 0.0))
                if frame is None:
                    if self.sampler.finished:
                        break
                    self._check_stall(last_frame_at)
                    continue
                if clock is not None:
                    due = clock.wait(frame.pts)
                    if due is None:
                        break
                    frame = dataclasses.replace(frame, wall=due)
                frame = self._shift(frame)
                if self._stalled_since is not None:
                    self._resumed(frame.pts)
                last_frame_at = time.time()
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
            self._check_refused(final=True)
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
            event = {"type": "input_source.ended", "source": self.name, "reason": reason, "frames": self.frames,
                     "pts": self.pts}
            short = self._ended_early() if reason == "end of stream" else None
            if short is not None:
                event.update(reason="truncated", message=short)
                logger.warning("source %s of session %s: %s", self.name, self.sid, short)
            self._emit(event)

    #: How far before its declared duration a file may end without being called truncated: the last
    #: sampled frame of a thinned stream comes up to one sample interval before the end.
    TRUNCATED_SLACK_S = 1.5

    def _ended_early(self) -> str | None:
        """A message when a file (not a live stream) ended well before its declared duration: a
        truncated download or a faststart mp4 cut short, whose index promises more than it holds."""
        duration = self.info.duration_s
        if self.info.live or not duration or self.pts is None:
            return None
        own = self.pts - (self.pts_offset or 0.0)  # the file's own time of its last frame
        if own >= duration - self.TRUNCATED_SLACK_S - 0.05 * duration:
            return None
        return (f"the file ended at {own:.1f} s of the {duration:.1f} s its header declares: it is truncated "
                "(an interrupted download or copy); the frames up to there were read")

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
