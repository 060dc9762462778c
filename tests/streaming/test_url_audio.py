"""URLSource with audio: a real GStreamer RTSP server carrying espeak speech as Opus beside
H.264 (and alone), a local audio-only input, and the shared timeline of audio and frames."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from streaming.audio import AudioChunk
from streaming.errors import AudioOnly
from streaming.url_source import LiveTimeline, URLSource
from tests import media

pytestmark = pytest.mark.network


def test_rtsp_speech_is_heard_at_its_times_and_the_video_outlives_the_audio(rtsp_server, speech_media):
    server = rtsp_server(fps=10, audio=speech_media.wav)
    chunks: list[AudioChunk] = []
    pts: list[float] = []
    with URLSource(server.url, audio=True, open_timeout_s=10, read_timeout_s=5, reconnect=False) as source:
        assert source.info.has_audio and source.info.has_video and source.info.audio_codec == "opus"
        source.on_audio(chunks.append)
        for frame in source.frames(max_side=32):
            pts.append(frame.pts)
            if chunks and pts[-1] > chunks[-1].end + 2.0 and pts[-1] > speech_media.sentences[-1].t + 3.0:
                break  # the WAV has ended and frames kept coming
        stats = source.audio_stats()
    assert stats["decode_errors"] == 0 and stats["chunks"] == len(chunks)
    for before, after in zip(chunks, chunks[1:]):
        assert after.pts >= before.end - 1e-3
    segments = media.transcribe(np.concatenate([c.samples for c in chunks]), chunks[0].pts)
    for sentence in speech_media.sentences:
        found = media.find_mention(segments, sentence.key)
        assert found is not None, (sentence.key, segments)
        assert found[0] == pytest.approx(sentence.t, abs=1.0), (sentence, found)
    assert pts[-1] > chunks[-1].end + 2.0  # the audio stopped, the video did not


def test_an_audio_only_rtsp_stream_reconnects_with_its_clock_moving_forward(rtsp_server, speech_media):
    server = rtsp_server(video="no", audio=speech_media.wav)
    chunks: list[AudioChunk] = []
    source = URLSource(server.url, audio=True, open_timeout_s=10, read_timeout_s=3, backoff_initial_s=0.2,
                       backoff_max_s=1.0)
    assert not source.info.has_video and source.info.has_audio
    source.on_audio(chunks.append)
    frames: list[object] = []
    reader = threading.Thread(target=lambda: frames.extend(source), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 60
        stopped_at: int | None = None
        while time.monotonic() < deadline:
            if stopped_at is None and chunks and chunks[-1].end > 2.0:
                stopped_at = len(chunks)
                server.stop()  # mid-stream: the reader sees an unrequested end of stream
                threading.Timer(1.0, server.start).start()
            if stopped_at is not None and source.counters.reconnects == 1 and \
                    sum(c.duration for c in chunks[stopped_at:]) > 2.0:
                break  # the new session is delivering
            time.sleep(0.1)
    finally:
        source.close()
        reader.join(10)
    assert frames == []
    assert source.counters.reconnects == 1 and len(source.counters.gaps) == 1
    gap = source.counters.gaps[0]
    for before, after in zip(chunks, chunks[1:]):
        assert after.pts >= before.end - 1e-3  # monotonic across the reconnect
    jumps = [after.pts - before.end for before, after in zip(chunks, chunks[1:])]
    assert max(jumps) >= gap.duration_s * 0.5  # the hole shows in stream time


def test_a_local_audio_only_input_through_urlsource(speech_media):
    with pytest.raises(AudioOnly):
        URLSource(str(speech_media.audio_only), allow_files=True)
    source = URLSource(str(speech_media.audio_only), allow_files=True, audio=True)
    chunks: list[AudioChunk] = []
    source.on_audio(chunks.append)
    assert list(source) == [] and not source.live
    assert chunks[0].pts == pytest.approx(0.0, abs=0.05)
    assert chunks[-1].end == pytest.approx(media.media_duration(speech_media.audio_only), abs=0.25)
    for before, after in zip(chunks, chunks[1:]):
        assert after.pts == pytest.approx(before.end, abs=1e-3)


def test_live_timeline_gives_audio_the_frames_offset_across_sessions():
    timeline = LiveTimeline()
    assert timeline.map_audio(0.0, 100.0) == 0.0  # the first session keeps the stream's timestamps
    timeline.audio_heard(4.0, 104.0)
    timeline.rebase()  # a new session 3 s later whose clock restarts at 0
    first = timeline.map_audio(0.0, 107.0)
    assert first == pytest.approx(4.0 + 3.0)
    assert timeline.map_audio(0.5, 107.5) == pytest.approx(first + 0.5)  # later audio keeps the offset
    timeline.audio_heard(first + 1.0, 108.0)
    assert timeline.map_audio(-30.0, 108.0) >= first + 1.0  # a reset of the stream's clock: still forward
