"""Speech to timed text, off the model worker's path: a :class:`Transcriber` per stream.

``feed(chunk)`` only queues the audio (bounded by ``max_queue_s``: when full, the oldest audio is
dropped and counted), so the thread that demuxes never waits. The transcriber's own thread scores
the audio with Silero VAD as it arrives, and each speech region (closed by a pause, or cut when it
grows long) is transcribed by faster-whisper at once, so words come out a pause after they were said.
With ``vad=False`` the audio is transcribed in windows cut at their quietest moment instead.

Times are stream times: a chunk's ``pts`` plus the offset inside the transcribed audio. A jump in the
chunks' timestamps (a gap, or audio dropped from the queue) closes what was open and starts afresh.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np

from app.engine.speech.config import ASRConfig, SpeechSegment
from streaming.audio import AUDIO_RATE

logger = logging.getLogger(__name__)

__all__ = ["RATE", "Transcriber", "clean_text"]

#: Sample rate the transcriber works at: the sources' own.
RATE = AUDIO_RATE
#: A jump between consecutive chunks' timestamps larger than this starts a new stretch of audio.
GAP_S = 0.25
#: Without VAD: length of the windows transcribed, and the span before the window's end searched for its quietest cut.
WINDOW_S = 8.0
CUT_SEARCH_S = 4.0
#: With VAD: audio kept on each side of a speech region (Whisper hears a word's onset and tail better with it).
VAD_PAD_S = 0.4
#: Without VAD: RMS below which a window's ends count as silence and are left out (about -46 dBFS).
QUIET_RMS = 0.005
#: Audio shorter than this is not worth transcribing.
MIN_AUDIO_S = 0.3
#: ``behind`` stays true this long (wall seconds) after audio was dropped.
BEHIND_HOLD_S = 10.0

_NON_WORDS = re.compile(r"\[[^\]]*\]|\([^)]*\)|\*[^*]*\*|[^\w]+")


def clean_text(text: str) -> str:
    """Segment text stripped; ``""`` when nothing but markers (``[noise]``, ``(music)``) and punctuation remain."""
    text = (text or "").strip()
    return text if _NON_WORDS.sub("", text) else ""


def _loud_span(samples: np.ndarray, lo: int, hi: int, floor: float = QUIET_RMS, pad_s: float = 0.2) -> tuple[int, int]:
    """``[lo, hi)`` narrowed to its 100 ms frames louder than ``floor`` RMS, padded by ``pad_s``
    (an empty span when none is)."""
    hop = RATE // 10
    n = (hi - lo) // hop
    if n == 0:
        return lo, hi
    frames = samples[lo:lo + n * hop].reshape(n, hop)
    loud = np.nonzero(np.sqrt((frames ** 2).mean(1)) > floor)[0]
    if loud.size == 0:
        return lo, lo
    pad = int(pad_s * RATE)
    return max(lo, lo + int(loud[0]) * hop - pad), min(hi, lo + (int(loud[-1]) + 1) * hop + pad)


class Transcriber:
    """Turns a stream's audio chunks into :class:`SpeechSegment`s on a thread of its own.

    Args:
        config: the speech settings (the model is loaded here, once per process, so a model that cannot be
            had fails at construction with :class:`~app.engine.speech.config.ASRError`).
        on_segment: called (on the transcriber's thread) with each segment in time order; without it
            segments wait for :meth:`poll`. An exception it raises is logged and counted in ``errors``.
        name: for the thread's name and the log.
    """

    def __init__(self, config: ASRConfig | None = None, on_segment: Callable[[SpeechSegment], None] | None = None,
                 *, name: str = "asr"):
        from app.engine.speech.models import load_model

        self.config = config or ASRConfig()
        self._model = load_model(self.config)
        self._on_segment = on_segment
        self._name = name
        self._cond = threading.Condition()
        self._queue: deque[tuple[float, np.ndarray]] = deque()  # (pts, samples at RATE)
        self._queued = 0  # samples in the queue
        self._ready: list[SpeechSegment] = []
        self._flush_req = 0
        self._flush_done = 0
        self._closing = False
        self._counters = dict(audio_s=0.0, dropped_s=0.0, processed_s=0.0, busy_s=0.0, transcribed_s=0.0,
                              segments=0, errors=0, chunks=0)
        self._fed_end: float | None = None  # stream time of the newest audio fed
        self._final_t = 0.0  # stream time up to which every result is out
        self._last_drop_wall: float | None = None
        # the stretch of audio being worked on (worker thread only, except _final_t)
        self._vad = None
        self._detector = None
        if self.config.vad:
            from app.engine.speech.vad import SpeechDetector, StreamingVAD

            self._vad = StreamingVAD()
            self._detector = SpeechDetector(pad_s=VAD_PAD_S, rate=RATE)
        self._speech_before = 0  # speech samples of stretches already finished
        self._run_pts: float | None = None  # stream time of the stretch's first sample
        self._run_len = 0  # samples of the stretch so far
        self._buf = np.zeros(0, np.float32)  # the stretch's samples from _buf_start on
        self._buf_start = 0
        self._thread = threading.Thread(target=self._work, name=f"{name}-transcriber", daemon=True)
        self._thread.start()

    # ---- the caller's side --------------------------------------------------------------------------
    def feed(self, chunk) -> None:
        """Queue an ``AudioChunk`` (``pts``, ``samples (N,)`` float32 mono in [-1, 1], ``rate``); never blocks.

        When more than ``max_queue_s`` of audio waits, the oldest is dropped and counted in ``dropped_s``.
        Feeding a closed transcriber does nothing.

        Raises:
            ValueError: a chunk without a finite ``pts`` or with samples that are not one channel of numbers.
        """
        pts = float(getattr(chunk, "pts", float("nan")))
        if not np.isfinite(pts):
            raise ValueError(f"an audio chunk needs a finite pts; got {getattr(chunk, 'pts', None)!r}")
        samples = np.asarray(getattr(chunk, "samples", None))
        if samples.ndim != 1 or not np.issubdtype(samples.dtype, np.number):
            raise ValueError(f"an audio chunk needs (N,) mono samples; got shape {samples.shape} {samples.dtype}")
        rate = int(getattr(chunk, "rate", RATE))
        if not 1000 <= rate <= 384_000:
            raise ValueError(f"an audio chunk's rate must be in [1000, 384000] Hz; got {rate}")
        samples = np.clip(np.nan_to_num(samples.astype(np.float32, copy=False)), -1.0, 1.0)
        if rate != RATE:
            from streaming.audio import resample_pcm

            samples = resample_pcm(samples, rate)
        if len(samples) == 0:
            return
        limit = int(self.config.max_queue_s * RATE)
        with self._cond:
            if self._closing:
                return
            seconds = len(samples) / RATE
            self._counters["audio_s"] += seconds
            self._counters["chunks"] += 1
            self._fed_end = max(self._fed_end or 0.0, pts + seconds)
            self._queue.append((pts, samples))
            self._queued += len(samples)
            while self._queued > limit and self._queue:
                old_pts, old = self._queue.popleft()
                over = self._queued - limit
                if over < len(old):  # drop only the oldest part of this chunk
                    self._queue.appendleft((old_pts + over / RATE, old[over:]))
                    self._queued -= over
                    dropped = over
                else:
                    self._queued -= len(old)
                    dropped = len(old)
                self._counters["dropped_s"] += dropped / RATE
                self._last_drop_wall = time.monotonic()
            self._cond.notify_all()

    def poll(self) -> list[SpeechSegment]:
        """Segments finished since the last poll, in time order (always empty with an ``on_segment`` callback)."""
        with self._cond:
            out, self._ready = self._ready, []
            return out

    def flush(self, timeout_s: float = 60.0) -> list[SpeechSegment]:
        """End of stream: transcribe everything queued and buffered, wait for it, and return what :meth:`poll`
        would (segments given to the callback are not returned again).

        After ``timeout_s`` it returns what is ready and logs that the rest is still being transcribed.
        """
        with self._cond:
            self._flush_req += 1
            ticket = self._flush_req
            self._cond.notify_all()
            done = self._cond.wait_for(lambda: self._flush_done >= ticket or self._closing, timeout=timeout_s)
        if not done:
            logger.warning("%s: flush timed out after %.1f s; transcription goes on", self._name, timeout_s)
        return self.poll()

    def stats(self) -> dict[str, Any]:
        """``audio_s`` (heard), ``speech_s`` (of it speech: VAD's count, or the seconds transcribed without VAD),
        ``rtf`` (seconds of work per second of audio worked on), ``lag_s`` (stream seconds between the newest
        audio heard and the point up to which every segment is out), ``dropped_s``, ``queue_s`` (audio waiting),
        ``processed_s`` (audio the thread has worked on), ``segments``, ``errors``, ``behind`` (the queue is over half
        full or audio was dropped lately)."""
        with self._cond:
            c = self._counters
            queue_s = self._queued / RATE
            if self._detector is not None:
                speech = (self._speech_before + self._detector.speech_samples) / RATE
            else:
                speech = c["transcribed_s"]
            lag = max(0.0, (self._fed_end or 0.0) - self._final_t) if self._fed_end is not None else 0.0
            recent_drop = self._last_drop_wall is not None and time.monotonic() - self._last_drop_wall < BEHIND_HOLD_S
            return {
                "model": self.config.model,
                "vad": self.config.vad,
                "threads": self.config.threads,
                "audio_s": round(c["audio_s"], 3),
                "speech_s": round(speech, 3),
                "rtf": round(c["busy_s"] / c["processed_s"], 4) if c["processed_s"] else 0.0,
                "lag_s": round(lag, 3),
                "dropped_s": round(c["dropped_s"], 3),
                "processed_s": round(c["processed_s"], 3),
                "queue_s": round(queue_s, 3),
                "segments": c["segments"],
                "errors": c["errors"],
                "chunks": c["chunks"],
                "behind": bool(queue_s > 0.5 * self.config.max_queue_s or recent_drop),
            }

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop the thread (what is queued is not transcribed; call :meth:`flush` first for that)."""
        with self._cond:
            self._closing = True
            self._queue.clear()
            self._queued = 0
            self._cond.notify_all()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout_s)

    @property
    def closed(self) -> bool:
        return self._closing

    def __enter__(self) -> Transcriber:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- the transcriber's thread -------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._queue or self._closing or self._flush_done < self._flush_req)
                if self._closing:
                    return
                if self._queue:
                    pts, samples = self._queue.popleft()
                    self._queued -= len(samples)
                    flush_ticket = None
                else:
                    pts, samples = None, None
                    flush_ticket = self._flush_req
            try:
                if samples is not None:
                    t0 = time.perf_counter()
                    self._take(pts, samples)
                    with self._cond:
                        self._counters["busy_s"] += time.perf_counter() - t0
                        self._counters["processed_s"] += len(samples) / RATE
                else:
                    t0 = time.perf_counter()
                    self._finish_run()
                    with self._cond:
                        self._counters["busy_s"] += time.perf_counter() - t0
            except Exception:  # noqa: BLE001 - one bad stretch of audio never stops the transcriber
                logger.exception("%s: transcription failed", self._name)
                with self._cond:
                    self._counters["errors"] += 1
                self._reset_run()
            if flush_ticket is not None:
                with self._cond:
                    self._flush_done = max(self._flush_done, flush_ticket)
                    self._cond.notify_all()

    def _time(self, sample: int) -> float:
        return float(self._run_pts) + sample / RATE

    def _take(self, pts: float, samples: np.ndarray) -> None:
        """Add one chunk to the stretch and transcribe whatever it completes."""
        if self._run_pts is not None and abs(pts - self._time(self._run_len)) > GAP_S:
            self._finish_run()
        if self._run_pts is None:
            self._run_pts = pts
        self._buf = np.concatenate([self._buf, samples])
        self._run_len += len(samples)
        if self._detector is not None:
            for region in self._detector.push(self._vad.probabilities(samples)):
                self._transcribe(region.start, region.end)
            open_start = self._detector.open_start
            keep = open_start if open_start is not None else max(0, self._run_len - self._detector.pad - 1024)
            self._final_t = self._time(keep)
            self._trim(keep)
        else:
            while self._run_len - self._buf_start >= WINDOW_S * RATE:
                cut = self._quiet_cut()
                self._transcribe(self._buf_start, cut)
                self._trim(cut)
                self._final_t = self._time(cut)

    def _quiet_cut(self) -> int:
        """Where to end the window (a sample of the stretch): the middle of the longest pause in its last
        ``CUT_SEARCH_S``, or its quietest 100 ms when it has no pause."""
        hop = RATE // 10
        lo, hi = int((WINDOW_S - CUT_SEARCH_S) * RATE), int(WINDOW_S * RATE)
        span = self._buf[lo:hi]
        frames = span[: len(span) // hop * hop].reshape(-1, hop)
        if not len(frames):
            return self._buf_start + hi
        rms = np.sqrt((frames ** 2).mean(1))
        best, best_len, run = int(np.argmin(rms)), 0, 0
        for i, quiet in enumerate(rms < QUIET_RMS):
            run = run + 1 if quiet else 0
            if run > best_len:
                best, best_len = i - run // 2, run
        return self._buf_start + lo + best * hop + hop // 2

    def _trim(self, keep: int) -> None:
        if keep > self._buf_start:
            self._buf = self._buf[keep - self._buf_start:]
            self._buf_start = keep

    def _finish_run(self) -> None:
        """Close the stretch: transcribe its open speech (or untranscribed tail) and forget it."""
        if self._run_pts is None:
            return
        if self._detector is not None:
            for region in self._detector.finish():
                self._transcribe(region.start, region.end)
        elif self._run_len - self._buf_start >= MIN_AUDIO_S * RATE:
            self._transcribe(self._buf_start, self._run_len)
        self._final_t = max(self._final_t, self._time(self._run_len))
        self._reset_run()

    def _reset_run(self) -> None:
        if self._detector is not None:
            with self._cond:
                self._speech_before += self._detector.speech_samples
            self._detector.reset()
            self._vad.reset()
        self._run_pts = None
        self._run_len = 0
        self._buf = np.zeros(0, np.float32)
        self._buf_start = 0

    def _transcribe(self, start: int, end: int) -> None:
        """Transcribe samples ``[start, end)`` of the stretch and hand out their segments."""
        lo, hi = max(start, self._buf_start) - self._buf_start, end - self._buf_start
        if self._detector is None:  # without VAD: at least leave out the window's silent ends
            lo, hi = _loud_span(self._buf, lo, hi)
        audio = self._buf[lo:hi]
        if len(audio) < MIN_AUDIO_S * RATE:
            return
        t0 = self._time(lo + self._buf_start)
        duration = len(audio) / RATE
        segments, _info = self._model.transcribe(
            audio, language=self.config.language, beam_size=self.config.beam_size, vad_filter=False,
            condition_on_previous_text=False, without_timestamps=False, word_timestamps=True,
        )
        out = []
        for seg in segments:
            text = clean_text(seg.text)
            if not text:
                continue
            words = [w for w in (seg.words or ()) if w.word.strip()]
            first, last = (words[0].start, words[-1].end) if words else (seg.start, seg.end)
            s = t0 + min(max(0.0, float(first)), duration)
            e = t0 + min(max(float(last), float(first)), duration)
            out.append(SpeechSegment(round(s, 3), round(max(s, e), 3), text))
        with self._cond:
            self._counters["transcribed_s"] += duration
            self._counters["segments"] += len(out)
            if self._on_segment is None:
                self._ready.extend(out)
        if self._on_segment is not None:
            for seg in out:
                try:
                    self._on_segment(seg)
                except Exception:  # noqa: BLE001 - the consumer's fault is logged, the stream goes on
                    logger.exception("%s: the segment callback failed", self._name)
                    with self._cond:
                        self._counters["errors"] += 1
