"""PushSource.push_audio: PCM16 bytes and arrays at 8-48 kHz resampled to 16 kHz with PyAV,
timed pushes and untimed ones, real speech through a push, and each bad push refused alone."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from streaming.audio import AUDIO_RATE, AudioChunk
from streaming.errors import InvalidAudio, SourceClosed, SourceTimeout
from streaming.push_source import PushSource
from tests import media


def tone(rate: int, seconds: float, hz: float = 440.0) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def peak_hz(samples: np.ndarray, rate: int = AUDIO_RATE) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[int(np.argmax(spectrum))])


def audio_source() -> tuple[PushSource, list[AudioChunk]]:
    source = PushSource(audio=True)
    chunks: list[AudioChunk] = []
    source.on_audio(chunks.append)
    return source, chunks


@pytest.mark.parametrize("rate", [8000, 16000, 22050, 44100, 48000])
def test_pcm16_bytes_at_any_accepted_rate_arrive_at_16_khz(rate):
    source, chunks = audio_source()
    pcm = (tone(rate, 1.0) * 32767).astype("<i2").tobytes()
    chunk = source.push_audio(pcm, rate=rate, pts=3.0)
    assert chunks == [chunk]
    assert chunk.rate == AUDIO_RATE and chunk.pts == 3.0
    assert chunk.duration == pytest.approx(1.0, abs=0.01)
    assert peak_hz(chunk.samples) == pytest.approx(440.0, abs=3.0)  # the sound survives the resampling
    assert float(np.abs(chunk.samples).max()) == pytest.approx(0.5, abs=0.05)


def test_int16_and_float32_arrays_are_accepted():
    source, chunks = audio_source()
    source.push_audio(tone(16000, 0.5), rate=16000, pts=0.0)
    source.push_audio((tone(8000, 0.5) * 32767).astype(np.int16), rate=8000, pts=0.5)
    source.push_audio(tone(48000, 0.5)[:, None], rate=48000, pts=1.0)  # (N, 1) is mono too
    assert [c.pts for c in chunks] == [0.0, 0.5, 1.0]
    assert all(c.duration == pytest.approx(0.5, abs=0.01) for c in chunks)
    assert np.array_equal(chunks[0].samples, tone(16000, 0.5))  # 16 kHz float passes through unchanged
    tiny = source.push_audio(np.full(10, 8000, np.int16), rate=8000, pts=2.0)  # shorter than the filter
    assert len(tiny.samples) == 20 and np.allclose(tiny.samples, 8000 / 32768)


def test_untimed_pushes_in_a_row_are_gapless():
    source, chunks = audio_source()
    for _ in range(5):
        source.push_audio((tone(16000, 0.2) * 32767).astype(np.int16), rate=16000)
    for before, after in zip(chunks, chunks[1:]):
        assert after.pts == pytest.approx(before.end, abs=1e-6)
    assert source.audio_stats()["chunks"] == 5 and source.audio_stats()["seconds"] == pytest.approx(1.0)


def test_pushed_speech_is_heard_at_its_pushed_times(speech_media):
    samples, rate = media.read_wav(speech_media.wav)
    source, chunks = audio_source()
    step = rate // 2  # half-second pushes, as a browser microphone sends them
    for start in range(0, len(samples), step):
        source.push_audio(samples[start:start + step].tobytes(), rate=rate, pts=start / rate)
    heard = np.concatenate([c.samples for c in chunks])
    segments = media.transcribe(heard, chunks[0].pts)
    for sentence in speech_media.sentences:
        found = media.find_mention(segments, sentence.key)
        assert found is not None, (sentence.key, segments)
        assert found[0] == pytest.approx(sentence.t, abs=1.0)


@pytest.mark.parametrize(("pcm", "rate", "pts", "problem"), [
    (b"\x00\x01\x02", 16000, None, "even number of bytes"),
    (b"", 16000, None, "empty audio"),
    (np.zeros(0, np.int16), 16000, None, "empty audio"),
    (b"\x00\x00" * 100, 7999, None, r"rate must be an integer in \[8000, 48000\]; got 7999"),
    (b"\x00\x00" * 100, 96000, None, r"rate must be an integer in \[8000, 48000\]; got 96000"),
    (b"\x00\x00" * 100, 16000.0, None, "rate must be an integer"),
    (b"\x00\x00" * (11 * 8000), 8000, None, "11.0 s of audio in one push; at most 10 s"),
    (np.zeros(100, np.float64), 16000, None, "int16 or float32; got float64"),
    (np.zeros((2, 100), np.float32), 16000, None, r"mono, shape \(N,\); got shape \(2, 100\)"),
    (np.array([0.0, np.nan], np.float32), 16000, None, "NaN or infinite"),
    ("not audio", 16000, None, "expected PCM16 bytes"),
    (np.zeros(1, np.int16), 48000, None, "1 samples at 48000 Hz are too few to resample"),
    (b"\x00\x00" * 100, 16000, -1.0, "pts must be a number"),
])
def test_a_bad_push_names_its_problem_and_fails_alone(pcm, rate, pts, problem):
    source, chunks = audio_source()
    with pytest.raises(InvalidAudio, match=problem) as info:
        source.push_audio(pcm, rate=rate, pts=pts)
    assert info.value.code == "invalid_audio"
    assert chunks == [] and source.audio_stats()["decode_errors"] == 1
    good = source.push_audio(b"\x00\x10" * 1600, rate=16000, pts=0.0)  # the next push is fine
    assert chunks == [good] and source.audio_stats()["chunks"] == 1


def test_audio_pushes_need_audio_on_and_an_open_source():
    with pytest.raises(InvalidAudio, match="audio is off for this source"):
        PushSource().push_audio(b"\x00\x00" * 160, rate=16000)
    source, _ = audio_source()
    assert source.info.has_audio
    source.end()
    with pytest.raises(SourceClosed):
        source.push_audio(b"\x00\x00" * 160, rate=16000)


def test_frames_and_audio_share_one_push_source():
    source, chunks = audio_source()
    source.push(media.noise_image(32, 24, seed=1), pts=0.0)
    source.push_audio(tone(16000, 0.5), rate=16000, pts=0.0)
    source.push(media.noise_image(32, 24, seed=2), pts=0.5)
    source.end()
    assert [f.pts for f in source] == [0.0, 0.5]
    assert [c.pts for c in chunks] == [0.0]


def test_audio_pushes_keep_a_source_without_frames_alive():
    source, chunks = audio_source()
    source.open_timeout_s = source.read_timeout_s = 0.3
    stop = threading.Event()

    def microphone() -> None:
        while not stop.is_set():
            source.push_audio(np.zeros(1600, np.int16), rate=16000)
            stop.wait(0.1)
        source.end()

    threading.Thread(target=microphone, daemon=True).start()
    threading.Timer(1.5, stop.set).start()
    assert list(source) == []  # no SourceTimeout: the audio kept it alive until end()
    assert len(chunks) >= 5
    silent = PushSource(audio=True, open_timeout_s=0.2)
    with pytest.raises(SourceTimeout, match="no first frame pushed"):
        list(silent)
