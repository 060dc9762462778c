"""Voice activity detection over a stream: Silero VAD (the model faster-whisper ships) fed block by block.

faster-whisper's own ``get_speech_timestamps`` runs over a whole recording at once; a stream needs the
same model with its recurrent state carried from one block to the next, so each 32 ms window is scored
once however long the stream runs (carrying the state gives exactly the probabilities of one call over
the whole audio). :class:`SpeechDetector` turns those probabilities into closed speech regions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["VAD_WINDOW", "SpeechDetector", "StreamingVAD"]

#: Samples per VAD window at 16 kHz (32 ms).
VAD_WINDOW = 512
_CONTEXT = 64


class StreamingVAD:
    """Silero VAD speech probabilities of consecutive 512-sample windows of a 16 kHz stream.

    :meth:`probabilities` takes any number of new samples and returns one probability per *complete*
    window (samples that do not fill a window wait for the next call).
    """

    def __init__(self):
        from faster_whisper.vad import get_vad_model

        self._session = get_vad_model().session  # faster-whisper's onnxruntime session of Silero VAD
        self.reset()

    def reset(self) -> None:
        """Start a new stream (after a gap): state, context and leftover samples cleared."""
        self._h = np.zeros((1, 1, 128), np.float32)
        self._c = np.zeros((1, 1, 128), np.float32)
        self._context = np.zeros(_CONTEXT, np.float32)
        self._rest = np.zeros(0, np.float32)

    def probabilities(self, samples: np.ndarray) -> np.ndarray:
        """``samples (N,)`` float32 -> ``(W,)`` float32, one speech probability per complete new window."""
        audio = np.concatenate([self._rest, np.asarray(samples, np.float32).reshape(-1)])
        n = (len(audio) // VAD_WINDOW) * VAD_WINDOW
        self._rest = audio[n:].copy()
        if n == 0:
            return np.zeros(0, np.float32)
        blocks = audio[:n].reshape(-1, VAD_WINDOW)
        before = np.concatenate([self._context[None], blocks[:-1, -_CONTEXT:]], 0)
        out, self._h, self._c = self._session.run(
            None, {"input": np.concatenate([before, blocks], 1), "h": self._h, "c": self._c})
        self._context = blocks[-1, -_CONTEXT:].copy()
        return np.asarray(out, np.float32).reshape(-1)


@dataclass(frozen=True)
class Region:
    """A closed speech region, in samples from the start of the detector's stream: ``[start, end)``."""

    start: int
    end: int


class SpeechDetector:
    """Speech regions from per-window probabilities, hysteresis as in Silero's own segmentation.

    Speech starts at a window scoring ``>= threshold``; it ends once windows score below
    ``threshold - 0.15`` for ``min_silence_s``; a region longer than ``max_region_s`` is cut there.
    Regions are padded by ``pad_s`` on each side (never before the stream's start).

    Args:
        threshold: speech probability that starts speech. (0, 1)
        min_silence_s: pause that closes a region.
        max_region_s: longest region before it is cut (so long speech still comes out in time).
        min_speech_s: shorter regions are dropped (clicks).
        pad_s: padding around each region.
    """

    def __init__(self, *, threshold: float = 0.5, min_silence_s: float = 0.5, max_region_s: float = 10.0,
                 min_speech_s: float = 0.2, pad_s: float = 0.2, rate: int = 16000):
        self.threshold = threshold
        self.neg_threshold = max(threshold - 0.15, 0.01)
        self.min_silence = int(min_silence_s * rate)
        self.max_region = int(max_region_s * rate)
        self.min_speech = int(min_speech_s * rate)
        self.pad = int(pad_s * rate)
        self.reset()

    def reset(self) -> None:
        self._pos = 0  # samples scored so far
        self._start: int | None = None  # start of the open region
        self._last_speech = 0  # end of the open region's last speech window
        self.speech_samples = 0  # windows scored as speech, in samples

    @property
    def open_start(self) -> int | None:
        """Start (padded) of the region still open, or None when in silence."""
        return None if self._start is None else max(0, self._start - self.pad)

    def push(self, probs: np.ndarray) -> list[Region]:
        """Score the next windows; returns the regions they close (padded, in order)."""
        closed = []
        for p in probs:
            w0, w1 = self._pos, self._pos + VAD_WINDOW
            self._pos = w1
            if p >= self.threshold:
                self.speech_samples += VAD_WINDOW
                if self._start is None:
                    self._start = w0
                self._last_speech = w1
            elif self._start is not None and p >= self.neg_threshold and w0 == self._last_speech:
                self._last_speech = w1  # still trailing off
            if self._start is None:
                continue
            if w1 - self._last_speech >= self.min_silence:
                closed += self._close(self._last_speech)
            elif w1 - self._start >= self.max_region:
                closed += self._close(w1)
                self._start, self._last_speech = w1, w1
        return closed

    def finish(self) -> list[Region]:
        """End of stream: the open region, if any, closes at the last speech heard."""
        return self._close(self._last_speech) if self._start is not None else []

    def _close(self, end: int) -> list[Region]:
        start, self._start = self._start, None
        if start is None or end - start < self.min_speech:
            return []
        return [Region(max(0, start - self.pad), min(self._pos, end + self.pad))]
