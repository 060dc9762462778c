"""Audio as it leaves the sources: 16 kHz mono float chunks on the video's clock.

:class:`AudioChunk` is the unit every audio-carrying source hands to its ``on_audio``
consumer; :class:`AudioDecoder` is the one piece of PyAV code the file and URL sources share to
turn the packets of a container's audio stream into chunks; :func:`resample_pcm` converts a
pushed buffer. PyAV is imported only when decoding or resampling starts, so importing this
module (the speech layer does, for :class:`AudioChunk`) stays light.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

#: The sample rate of every :class:`AudioChunk` a source hands out (what Whisper expects).
AUDIO_RATE = 16000

#: Consumer of a source's audio: called once per chunk, on the thread that demuxes (or pushes).
AudioCallback = Callable[["AudioChunk"], None]


@dataclass(frozen=True)
class AudioChunk:
    """A run of contiguous mono samples.

    Attributes:
        pts: stream time of the first sample in seconds, on the same clock as the
            :class:`~streaming.frame.Frame` ``pts`` of the same source.
        samples: shape (N,), float32, mono, in [-1, 1]; read-only.
        rate: samples per second (sources always give :data:`AUDIO_RATE`).
    """

    pts: float
    samples: np.ndarray = field(repr=False)
    rate: int = AUDIO_RATE

    def __post_init__(self) -> None:
        samples = self.samples
        if not isinstance(samples, np.ndarray) or samples.dtype != np.float32 or samples.ndim != 1:
            raise ValueError(f"AudioChunk.samples must be a float32 array of shape (N,); got shape="
                             f"{getattr(samples, 'shape', None)} dtype={getattr(samples, 'dtype', None)}")
        if not isinstance(self.rate, int) or self.rate <= 0:
            raise ValueError(f"AudioChunk.rate must be a positive integer; got {self.rate!r}")
        if samples.flags.writeable:
            view = np.ascontiguousarray(samples).view()
            view.flags.writeable = False
            object.__setattr__(self, "samples", view)

    @property
    def duration(self) -> float:
        """Seconds of audio in the chunk."""
        return len(self.samples) / self.rate

    @property
    def end(self) -> float:
        """Stream time just after the last sample (``pts + duration``)."""
        return self.pts + self.duration


@dataclass
class AudioCounters:
    """What a source's audio path did (single writer: the demuxing or pushing thread).

    Attributes:
        packets: audio packets (or pushes) taken in.
        chunks: chunks handed to the consumer.
        seconds: seconds of audio in those chunks.
        decode_errors: audio packets (or pushes) that failed and were skipped.
        callback_errors: chunks whose consumer raised (logged; the stream goes on).
        last_end: stream time of the end of the newest chunk, or None.
    """

    packets: int = 0
    chunks: int = 0
    seconds: float = 0.0
    decode_errors: int = 0
    callback_errors: int = 0
    last_end: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"packets": self.packets, "chunks": self.chunks, "seconds": round(self.seconds, 3),
                "decode_errors": self.decode_errors, "callback_errors": self.callback_errors,
                "last_end": None if self.last_end is None else round(self.last_end, 3)}


class AudioDispatch:
    """The ``on_audio`` consumers of one source, and its audio counters.

    :meth:`emit` counts a chunk and calls every consumer; a consumer that raises is logged and
    counted, never propagated (the audio side must not stop the video).
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.counters = AudioCounters()
        self._callbacks: list[AudioCallback] = []

    def add(self, callback: AudioCallback) -> None:
        if not callable(callback):
            raise TypeError(f"on_audio needs a callable taking an AudioChunk; got {type(callback).__name__}")
        self._callbacks.append(callback)

    @property
    def has_consumers(self) -> bool:
        return bool(self._callbacks)

    def emit(self, chunk: AudioChunk) -> None:
        counters = self.counters
        counters.chunks += 1
        counters.seconds += chunk.duration
        counters.last_end = chunk.end if counters.last_end is None else max(counters.last_end, chunk.end)
        for callback in self._callbacks:
            try:
                callback(chunk)
            except Exception:
                counters.callback_errors += 1
                log.exception("%s: audio consumer failed on the chunk at %.2f s", self.name, chunk.pts)


def _mono_float(frame: Any) -> np.ndarray:
    """The (N,) float32 samples of a resampled (``flt``, mono) frame."""
    return np.asarray(frame.to_ndarray(), dtype=np.float32).reshape(-1)


def _new_resampler() -> Any:
    import av

    return av.AudioResampler(format="flt", layout="mono", rate=AUDIO_RATE)


class AudioDecoder:
    """Decodes the packets of one audio stream into 16 kHz mono float32 :class:`AudioChunk` s.

    Each packet is decoded, resampled with ``av.AudioResampler`` and timestamped from the
    frames' own pts (``clock`` maps the container's seconds to the source's stream seconds; the
    identity for files, so audio and video share the container's clock). Contiguous frames are
    gathered into chunks of about ``chunk_s``; a jump in the timestamps starts a new chunk. A
    packet that fails to decode is skipped and counted in ``counters.decode_errors``.

    Args:
        stream: the container's audio stream.
        name: the source's name for messages.
        counters: where packets and errors are counted.
        clock: container seconds -> stream seconds (None: the identity).
        chunk_s: the length a chunk is gathered to before it is handed out.
    """

    #: A frame that starts further than this from the running end starts a new chunk (seconds).
    _JUMP_S = 0.02

    def __init__(self, stream: Any, name: str, counters: AudioCounters,
                 clock: Callable[[float], float] | None = None, chunk_s: float = 0.2) -> None:
        import av.error

        self._ffmpeg_error = av.error.FFmpegError
        self._stream = stream
        self._name = name
        self._counters = counters
        self._clock = clock or (lambda seconds: seconds)
        self._chunk_n = max(1, int(chunk_s * AUDIO_RATE))
        self._resampler = _new_resampler()
        self._parts: list[np.ndarray] = []
        self._buffered = 0
        self._start: float | None = None
        self._next: float | None = None  # stream time just after the newest sample seen
        self.consecutive_errors = 0

    def decode(self, packet: Any) -> list[AudioChunk]:
        """Decode one packet of the audio stream; the chunks that are complete now."""
        if packet.size:
            self._counters.packets += 1
        if packet.is_corrupt:
            self._error("packet flagged corrupt")
            return []
        try:
            frames = packet.decode()
        except self._ffmpeg_error as exc:
            self._error(str(exc))
            return []
        out: list[AudioChunk] = []
        for frame in frames:
            try:
                resampled = self._resample(frame)
            except (self._ffmpeg_error, ValueError) as exc:
                self._error(f"resample: {exc}")
                continue
            for piece in resampled:
                out.extend(self._add(piece))
        if frames:
            self.consecutive_errors = 0
        return out

    def flush(self) -> list[AudioChunk]:
        """End of stream: what the resampler and the gathering buffer still hold."""
        out: list[AudioChunk] = []
        try:
            for piece in self._resampler.resample(None):
                out.extend(self._add(piece))
        except (self._ffmpeg_error, ValueError) as exc:
            log.debug("%s: audio resampler flush failed (%s)", self._name, exc)
        chunk = self._take()
        if chunk is not None:
            out.append(chunk)
        return out

    def _resample(self, frame: Any) -> list[Any]:
        try:
            return self._resampler.resample(frame)
        except ValueError:  # the stream changed rate or layout mid-way: a fresh resampler takes it
            self._resampler = _new_resampler()
            return self._resampler.resample(frame)

    def _add(self, piece: Any) -> list[AudioChunk]:
        samples = _mono_float(piece)
        if samples.size == 0:
            return []
        if piece.pts is not None and piece.time_base is not None:
            start = self._clock(float(piece.pts * piece.time_base))
        else:
            start = self._next if self._next is not None else self._clock(0.0)
        out: list[AudioChunk] = []
        if self._next is not None and abs(start - self._next) > self._JUMP_S:
            chunk = self._take()  # a jump in the timestamps: what came before is one chunk
            if chunk is not None:
                out.append(chunk)
        if self._start is None:
            self._start = start
        self._parts.append(samples)
        self._buffered += samples.size
        self._next = start + samples.size / AUDIO_RATE
        if self._buffered >= self._chunk_n:
            chunk = self._take()
            if chunk is not None:
                out.append(chunk)
        return out

    def _take(self) -> AudioChunk | None:
        if not self._parts or self._start is None:
            return None
        samples = np.clip(np.concatenate(self._parts), -1.0, 1.0)
        chunk = AudioChunk(pts=self._start, samples=samples)
        self._parts, self._buffered, self._start = [], 0, None
        return chunk

    def _error(self, reason: str) -> None:
        self._counters.decode_errors += 1
        self.consecutive_errors += 1
        log.debug("%s: audio packet skipped (%s)", self._name, reason)


#: Accepted rates of pushed audio, Hz (inclusive).
PUSH_RATES = (8000, 48000)
#: The longest buffer one push may carry, seconds.
MAX_PUSH_S = 10.0


def decode_pcm(pcm: object, rate: object, *, max_s: float = MAX_PUSH_S) -> np.ndarray:
    """One pushed buffer, checked and resampled: (N,) float32 mono at :data:`AUDIO_RATE`.

    The one check of pushed audio (``PushSource.push_audio`` and the websocket use it).

    Args:
        pcm: little-endian int16 mono PCM bytes, or a mono int16 / float32 ([-1, 1]) array.
        rate: its sample rate, an integer in :data:`PUSH_RATES`.
        max_s: the longest buffer accepted, seconds.

    Raises:
        InvalidAudio: naming the problem: rate out of range or not an integer, odd byte count,
            wrong dtype or shape, NaN/infinite samples, empty, too long, too short to resample.
    """
    from streaming.checks import check_int
    from streaming.errors import InvalidAudio

    rate = check_int("rate", rate, low=PUSH_RATES[0], high=PUSH_RATES[1], error=InvalidAudio)
    try:
        samples = pcm_to_float(pcm)
    except (TypeError, ValueError) as exc:
        raise InvalidAudio(str(exc)) from None
    if samples.size == 0:
        raise InvalidAudio("empty audio (no samples)")
    seconds = samples.size / rate
    if seconds > max_s:
        raise InvalidAudio(f"{seconds:.1f} s of audio in one push; at most {max_s:g} s")
    out = resample_pcm(samples, rate)
    if out.size == 0:
        raise InvalidAudio(f"{samples.size} samples at {rate} Hz are too few to resample")
    return out


def pcm_to_float(pcm: object) -> np.ndarray:
    """Pushed audio as (N,) float32 in [-1, 1].

    Args:
        pcm: bytes of little-endian int16 mono PCM, or a 1-D (or (N, 1)) int16 or float32 array.

    Raises:
        ValueError / TypeError: naming the problem (odd byte count, wrong dtype or shape,
            non-finite samples).
    """
    if isinstance(pcm, (bytes, bytearray, memoryview)):
        raw = bytes(pcm)
        if len(raw) % 2:
            raise ValueError(f"PCM16 audio needs an even number of bytes; got {len(raw)}")
        return np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0
    if isinstance(pcm, np.ndarray):
        array = pcm.reshape(-1) if pcm.ndim == 2 and pcm.shape[1] == 1 else pcm
        if array.ndim != 1:
            raise ValueError(f"audio array must be mono, shape (N,); got shape {pcm.shape}")
        if array.dtype == np.int16:
            return array.astype(np.float32) / 32768.0
        if array.dtype == np.float32:
            if not np.all(np.isfinite(array)):
                raise ValueError("float32 audio contains NaN or infinite samples")
            return np.clip(array, -1.0, 1.0).astype(np.float32, copy=True)
        raise TypeError(f"audio array must be int16 or float32; got {array.dtype}")
    raise TypeError(f"expected PCM16 bytes or an int16/float32 array; got {type(pcm).__name__}")


def resample_pcm(samples: np.ndarray, rate: int) -> np.ndarray:
    """(N,) float32 mono at ``rate`` -> float32 mono at :data:`AUDIO_RATE` (``av.AudioResampler``;
    a buffer too short for its filter, a few dozen samples, is interpolated linearly)."""
    if rate == AUDIO_RATE:
        return samples
    import av

    frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="flt", layout="mono")
    frame.sample_rate = rate
    frame.pts, frame.time_base = 0, Fraction(1, rate)
    resampler = _new_resampler()
    pieces = [*resampler.resample(frame), *resampler.resample(None)]
    out = np.concatenate([_mono_float(p) for p in pieces]) if pieces else np.zeros(0, dtype=np.float32)
    expected = int(round(samples.size * AUDIO_RATE / rate))
    if expected and (out.size == 0 or out.size < expected - 2):  # a buffer shorter than the resampler's filter: interpolate it
        positions = np.arange(expected) * (rate / AUDIO_RATE)
        out = np.interp(positions, np.arange(samples.size), samples).astype(np.float32)
    return np.clip(out, -1.0, 1.0)
