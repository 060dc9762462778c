"""A stream whose frame size changes mid-way (real H.264 in MPEG-TS, two encodes back to back): every
frame is checked, the frames after the change are ingested at the sampler's size, or, over the pixel
limit, refused by the decoder itself (counted, with a reason naming the size) while the frames
around them go on; never a crash or a stuck source."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from streaming import Sampler, SamplerConfig, open_source

#: (width, height) and frame count of each encode, at 10 fps; the second is portrait and larger.
SEGMENTS = (((320, 240), 10), ((480, 640), 10), ((320, 240), 5))


def encode_segments(segments=SEGMENTS, fps: int = 10) -> bytes:
    """MPEG-TS bytes of several H.264 encodes of different sizes, one after another, timestamps continuing
    (as a camera that switches resolution, or two recordings concatenated)."""
    import av

    data, i = b"", 0
    for (width, height), count in segments:
        buf = io.BytesIO()
        with av.open(buf, "w", format="mpegts") as out:
            stream = out.add_stream("libx264", rate=fps)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            stream.options = {"preset": "ultrafast", "g": "5"}
            for _ in range(count):
                img = np.full((height, width, 3), (i * 23) % 256, np.uint8)
                frame = av.VideoFrame.from_ndarray(img, format="rgb24")
                frame.pts = i
                i += 1
                for packet in stream.encode(frame):
                    out.mux(packet)
            for packet in stream.encode():
                out.mux(packet)
        data += buf.getvalue()
    return data


@pytest.fixture(scope="module")
def switching_clip(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("resize") / "switch.ts"
    path.write_bytes(encode_segments())
    return path


def test_a_frame_at_the_limit_whose_width_is_not_aligned_still_decodes(tmp_path):
    """FFmpeg's decoder counts a padded width: 240x320 must pass a limit of exactly 240 * 320."""
    path = tmp_path / "portrait.ts"
    path.write_bytes(encode_segments((((320, 240), 5), ((240, 320), 5))))
    source = open_source(str(path), max_pixels=240 * 320)
    with Sampler(source, SamplerConfig(), live=False) as sampler:
        assert [(f.width, f.height) for f in sampler] == [(320, 240)] * 5 + [(240, 320)] * 5
    assert source.counters.too_large == 0


def test_every_frame_after_a_size_change_is_read_and_resized_to_the_limit(switching_clip):
    with Sampler(open_source(str(switching_clip)), SamplerConfig(max_side=200), live=False) as sampler:
        frames = list(sampler)
    sizes = [(f.width, f.height) for f in frames]
    assert len(frames) == 25
    assert sizes[:10] == [(200, 150)] * 10  # 320x240 -> longer side 200
    assert sizes[10:20] == [(150, 200)] * 10  # the portrait 480x640 after the change, aspect kept
    assert sizes[20:] == [(200, 150)] * 5
    assert [round(f.pts, 2) for f in frames] == sorted(round(f.pts, 2) for f in frames)


@pytest.mark.parametrize("limit", [320 * 240, 200_000])  # the decoder refuses 480x640 itself / it is dropped decoded
def test_frames_over_the_pixel_limit_are_refused_and_the_rest_go_on(switching_clip, limit):
    source = open_source(str(switching_clip), max_pixels=limit)
    with Sampler(source, SamplerConfig(), live=False) as sampler:
        frames = list(sampler)
    assert [(f.width, f.height) for f in frames] == [(320, 240)] * 15  # before and after the large stretch
    counters = source.counters
    # all ten large frames are counted as too large (the decoder may also fail a packet or two while it
    # resynchronises at the switch back: those count as decode errors)
    assert counters.too_large == 10 and counters.decode_errors <= 2
    assert f"480x640 = 307200 pixels exceeds max_pixels={limit}" in counters.last_refusal
    assert str(switching_clip) in counters.last_refusal


def test_a_pixel_limit_between_the_sizes_keeps_a_url_source_going(switching_clip, local_http):
    """The same switch over HTTP (URLSource, the server-pulled path): refused frames do not end it."""
    base = local_http(switching_clip.parent)
    source = open_source(f"{base}/{switching_clip.name}", max_pixels=100_000, live=False, reconnect=False)
    with Sampler(source, SamplerConfig(), live=False) as sampler:
        frames = list(sampler)
    assert len(frames) == 15 and source.counters.too_large == 10


def test_a_bad_pixel_limit_is_refused_naming_it(switching_clip):
    with pytest.raises(ValueError, match="max_pixels"):
        open_source(str(switching_clip), max_pixels=0)
