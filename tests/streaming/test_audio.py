"""Audio from file sources: real espeak speech muxed into a real clip, decoded with PyAV,
resampled to 16 kHz and timed on the frames' clock; audio-only inputs, damaged and short
audio tracks, inputs with neither stream, and the sampler's audio counters."""

from __future__ import annotations

import numpy as np
import pytest

from streaming.audio import AUDIO_RATE, AudioChunk
from streaming.errors import AudioOnly, NotAVideo
from streaming.factory import open_source
from streaming.file_source import FileSource
from streaming.sampler import Sampler, SamplerConfig
from tests import media


def read_all(source) -> tuple[list[float], list[AudioChunk]]:
    """Iterate ``source`` to its end: (frame pts, audio chunks handed to on_audio)."""
    chunks: list[AudioChunk] = []
    source.on_audio(chunks.append)
    pts = [frame.pts for frame in source.frames(max_side=32)]
    return pts, chunks


def joined(chunks: list[AudioChunk]) -> np.ndarray:
    return np.concatenate([c.samples for c in chunks])


def onsets(chunks: list[AudioChunk], threshold: float = 0.05, hop_s: float = 0.05,
           quiet_s: float = 1.0) -> list[float]:
    """Stream times where sound starts after at least ``quiet_s`` of quiet (the energy envelope)."""
    samples, hop = joined(chunks), int(hop_s * AUDIO_RATE)
    loud = [float(np.abs(samples[i:i + hop]).max()) > threshold for i in range(0, len(samples), hop)]
    found, quiet = [], quiet_s
    for i, is_loud in enumerate(loud):
        if is_loud and quiet >= quiet_s:
            found.append(chunks[0].pts + i * hop_s)
        quiet = 0.0 if is_loud else quiet + hop_s
    return found


def assert_contiguous(chunks: list[AudioChunk]) -> None:
    for before, after in zip(chunks, chunks[1:]):
        assert after.pts == pytest.approx(before.end, abs=1e-3), (before, after)


def test_speech_in_a_real_clip_arrives_on_the_frames_clock(speech_media):
    plain = FileSource(speech_media.clip)
    video_only = [f.pts for f in plain.frames(max_side=32)]
    assert plain.audio_stats()["chunks"] == 0 and not plain.audio_stats()["enabled"]

    source = FileSource(speech_media.clip, audio=True)
    assert source.info.has_audio and source.info.has_video and source.info.audio_codec == "aac"
    pts, chunks = read_all(source)
    assert pts == video_only  # decoding the audio changes nothing about the frames
    assert all(c.rate == AUDIO_RATE and c.samples.dtype == np.float32 and c.samples.ndim == 1 for c in chunks)
    assert all(np.abs(c.samples).max() <= 1.0 for c in chunks)
    assert_contiguous(chunks)
    duration = media.media_duration(speech_media.clip)
    assert chunks[0].pts == pytest.approx(0.0, abs=0.05)
    assert chunks[-1].end == pytest.approx(duration, abs=0.25)
    stats = source.audio_stats()
    assert stats["chunks"] == len(chunks) and stats["decode_errors"] == 0
    assert stats["seconds"] == pytest.approx(sum(c.duration for c in chunks), abs=1e-2)
    # each sentence starts where the script put it, on the stream clock
    heard = onsets(chunks)
    assert len(heard) == len(speech_media.sentences)
    for sentence, start in zip(speech_media.sentences, heard):
        assert start == pytest.approx(sentence.t, abs=0.25)


def test_the_transcript_of_a_file_source_has_the_words_at_their_times(speech_media):
    pts, chunks = read_all(FileSource(speech_media.clip, audio=True))
    segments = media.transcribe(joined(chunks), chunks[0].pts)
    for sentence in speech_media.sentences:
        found = media.find_mention(segments, sentence.key)
        assert found is not None, (sentence.key, segments)
        assert found[0] == pytest.approx(sentence.t, abs=1.0), (sentence, found)


def test_an_audio_only_file_is_a_source_with_audio_on_and_refused_without(speech_media):
    with pytest.raises(AudioOnly, match="audio only"):
        FileSource(speech_media.audio_only)
    with pytest.raises(AudioOnly):
        open_source(str(speech_media.audio_only))
    source = open_source(str(speech_media.audio_only), audio=True)
    assert isinstance(source, FileSource)
    assert not source.info.has_video and source.info.has_audio and source.info.size is None
    pts, chunks = read_all(source)
    assert pts == []
    assert_contiguous(chunks)
    assert chunks[-1].end == pytest.approx(media.media_duration(speech_media.audio_only), abs=0.25)
    assert [round(t) for t in onsets(chunks)] == [round(s.t) for s in speech_media.sentences]


def test_an_audio_only_file_played_as_live_hands_out_all_its_audio_in_order(speech_media):
    source = FileSource(speech_media.audio_only, audio=True, realtime=True, speed=20.0)
    pts, chunks = read_all(source)
    assert pts == [] and source.live
    assert_contiguous(chunks)
    assert sum(c.duration for c in chunks) == pytest.approx(source.audio_stats()["seconds"], abs=1e-2)
    assert chunks[-1].end > speech_media.sentences[-1].t


def test_input_with_neither_video_nor_audio_is_not_a_video(synthetic_media):
    for audio in (False, True):
        with pytest.raises(NotAVideo, match="neither a video nor an audio stream"):
            FileSource(synthetic_media.subtitles_only, audio=audio)


def test_damaged_audio_packets_are_skipped_and_counted_and_the_video_is_untouched(speech_media):
    path, damaged = speech_media.damaged_audio_clip
    clean_frames = len([f for f in FileSource(path).frames(max_side=32)])
    source = FileSource(path, audio=True)
    pts, chunks = read_all(source)
    stats = source.audio_stats()
    assert len(pts) == clean_frames and source.counters.decode_errors == 0
    assert 0 < stats["decode_errors"] <= damaged
    assert stats["decode_errors"] >= damaged // 2  # random bytes rarely decode as AAC
    # before the damage the audio is whole; after it audio still arrives up to the end
    before = [c for c in chunks if c.end <= 6.0]
    assert before
    assert_contiguous(before)
    assert sum(c.duration for c in before) == pytest.approx(before[-1].end - chunks[0].pts, abs=0.05)
    assert chunks[-1].end == pytest.approx(media.media_duration(speech_media.clip), abs=0.3)
    assert stats["seconds"] < chunks[-1].end - chunks[0].pts  # the damaged packets' audio is missing


def test_an_audio_track_that_ends_early_leaves_the_video_going(speech_media):
    source = FileSource(speech_media.short_audio_clip, audio=True)
    pts, chunks = read_all(source)
    assert chunks[-1].end == pytest.approx(5.0, abs=0.1)
    assert pts[-1] > chunks[-1].end + 8.0  # frames go on to the end of the clip
    assert len(pts) == len([f for f in FileSource(speech_media.short_audio_clip).frames(max_side=32)])


def test_a_truncated_clip_gives_its_frames_and_audio_up_to_the_cut(speech_media, tmp_path):
    cut = media.truncated_copy(speech_media.clip, tmp_path / "cut.mp4", 0.6)
    source = FileSource(cut, audio=True)  # the clip's index comes first, so the cut copy opens
    pts, chunks = read_all(source)
    assert pts and chunks
    assert 3.0 < chunks[-1].end < media.media_duration(speech_media.clip) - 3.0
    assert_contiguous(chunks)


def test_the_sampler_counts_audio_and_its_fps_rule_leaves_audio_whole(speech_media):
    source = FileSource(speech_media.clip, audio=True)
    chunks: list[AudioChunk] = []
    source.on_audio(chunks.append)
    with Sampler(source, SamplerConfig(fps=1.0, max_side=32)) as sampler:
        frames = list(sampler)
        stats = sampler.stats()
    assert 13 <= len(frames) <= 16
    assert stats.audio_chunks == len(chunks) and stats.audio_decode_errors == 0
    assert stats.audio_s == pytest.approx(chunks[-1].end - chunks[0].pts, abs=0.05)


def test_a_consumer_that_raises_is_counted_and_the_stream_goes_on(speech_media):
    source = FileSource(speech_media.clip, audio=True)
    seen: list[AudioChunk] = []

    def flaky(chunk: AudioChunk) -> None:
        seen.append(chunk)
        if len(seen) % 10 == 0:
            raise RuntimeError("consumer bug")

    source.on_audio(flaky)
    frames = [f for f in source.frames(max_side=32)]
    assert frames and source.audio_stats()["callback_errors"] == len(seen) // 10 > 0
    assert seen[-1].end == pytest.approx(media.media_duration(speech_media.clip), abs=0.25)


def test_audio_chunks_are_checked_and_read_only():
    chunk = AudioChunk(pts=1.5, samples=np.zeros(8000, np.float32))
    assert chunk.duration == 0.5 and chunk.end == 2.0 and not chunk.samples.flags.writeable
    with pytest.raises(ValueError, match="float32 array of shape"):
        AudioChunk(pts=0.0, samples=np.zeros(10, np.int16))
    with pytest.raises(ValueError, match="float32 array of shape"):
        AudioChunk(pts=0.0, samples=np.zeros((2, 10), np.float32))
    with pytest.raises(ValueError, match="audio must be true or false"):
        FileSource("x.mp4", audio="yes")
