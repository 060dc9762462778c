"""PushSource: encoded bytes and arrays, concurrency, bounds, bad pushes, end and close."""

from __future__ import annotations

import threading
import time

import cv2
import numpy as np
import pytest

from streaming.errors import InvalidFrame, SourceClosed, SourceTimeout
from streaming.push_source import PushSource
from streaming.sampler import Sampler, SamplerConfig
from tests import media


def encode(rgb: np.ndarray, ext: str) -> bytes:
    ok, buf = cv2.imencode(ext, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    return buf.tobytes()


def test_png_jpeg_and_arrays_arrive_as_rgb():
    image = media.noise_image(64, 48, seed=3)
    source = PushSource(max_queue=8)
    source.push(encode(image, ".png"), pts=0.0)
    source.push(encode(image, ".jpg"), pts=0.1)
    source.push(image, pts=0.2)
    source.push(np.dstack([image, np.full(image.shape[:2], 255, np.uint8)]), pts=0.3)  # RGBA
    source.push(image[:, :, 1].copy(), pts=0.4)  # grey
    source.end()
    frames = list(source)
    assert [f.pts for f in frames] == [0.0, 0.1, 0.2, 0.3, 0.4]
    assert all(f.rgb.shape == (48, 64, 3) for f in frames)
    assert np.array_equal(frames[0].rgb, image)  # PNG is lossless
    assert np.abs(frames[1].rgb.astype(int) - image).mean() < 8  # JPEG is close
    assert np.array_equal(frames[2].rgb, image) and np.array_equal(frames[3].rgb, image)
    assert np.array_equal(frames[4].rgb[:, :, 0], image[:, :, 1])
    assert source.info.size == "64x48"


def test_pushed_array_is_copied():
    image = np.zeros((4, 4, 3), np.uint8)
    source = PushSource()
    frame = source.push(image, pts=0)
    image[:] = 255
    assert frame.rgb.max() == 0


@pytest.mark.parametrize("bad", [
    b"definitely not an image",
    b"",
    b"\x89PNG\r\n\x1a\n" + b"\x00" * 40,
    np.zeros((4, 4, 3), np.float32),
    np.zeros((4, 4, 2), np.uint8),
    np.zeros((0, 4, 3), np.uint8),
    "a string",
])
def test_a_bad_push_fails_alone(bad):
    source = PushSource()
    good = np.zeros((4, 4, 3), np.uint8)
    source.push(good, pts=0.0)
    with pytest.raises(InvalidFrame, match="push"):
        source.push(bad, pts=0.1)
    source.push(good, pts=0.2)
    source.end()
    assert [f.pts for f in source] == [0.0, 0.2]
    assert source.counters.decode_errors == 1 and source.counters.decoded == 2


def test_bad_pts_and_oversized_frames_are_rejected():
    source = PushSource(max_pixels=100)
    with pytest.raises(InvalidFrame, match="pts"):
        source.push(np.zeros((4, 4, 3), np.uint8), pts=float("nan"))
    with pytest.raises(InvalidFrame, match="max_pixels"):
        source.push(np.zeros((20, 20, 3), np.uint8))


def test_missing_pts_uses_wall_time_since_creation():
    source = PushSource()
    a = source.push(np.zeros((4, 4, 3), np.uint8))
    time.sleep(0.05)
    b = source.push(np.zeros((4, 4, 3), np.uint8))
    assert 0 <= a.pts < b.pts and b.pts - a.pts == pytest.approx(b.wall - a.wall)


def test_concurrent_pushers_are_bounded_newest_wins():
    source = PushSource(max_queue=8)
    threads_n, per_thread = 4, 50
    image = np.zeros((16, 16, 3), np.uint8)
    start = threading.Barrier(threads_n)

    def pusher(tid: int) -> None:
        start.wait()
        for i in range(per_thread):
            source.push(image, pts=tid * 1000 + i)
            assert source.queue_depth <= 8

    threads = [threading.Thread(target=pusher, args=(t,)) for t in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    total = threads_n * per_thread
    assert source.counters.received == total and source.counters.decoded == total
    assert source.counters.dropped == total - 8 and source.queue_depth == 8
    source.end()
    kept = list(source)
    assert len(kept) == 8
    assert [f.index for f in kept] == list(range(total - 8, total))  # the newest eight, in order


def test_concurrent_pushers_with_a_live_sampler_account_for_every_frame():
    source = PushSource(max_queue=4)
    sampler = Sampler(source, SamplerConfig(queue_size=2))
    image = np.zeros((16, 16, 3), np.uint8)
    got = []
    reader = threading.Thread(target=lambda: got.extend(sampler), daemon=True)
    reader.start()

    def pusher(tid: int) -> None:
        for i in range(100):
            source.push(image, pts=tid * 1000 + i)

    threads = [threading.Thread(target=pusher, args=(t,)) for t in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    source.end()
    reader.join(10)
    stats = sampler.stats()
    assert not reader.is_alive()
    assert stats.received == 300 and len(got) == stats.delivered
    assert stats.delivered + stats.dropped == 300  # dropped counts both queues
    sampler.close()


def test_close_ends_a_blocked_reader_and_refuses_pushes():
    source = PushSource()
    finished = threading.Event()

    def read() -> None:
        list(source)
        finished.set()

    threading.Thread(target=read, daemon=True).start()
    time.sleep(0.1)
    source.close()
    assert finished.wait(5)
    with pytest.raises(SourceClosed):
        source.push(np.zeros((4, 4, 3), np.uint8))


def test_end_lets_the_reader_drain():
    source = PushSource(max_queue=3)
    for i in range(3):
        source.push(np.zeros((4, 4, 3), np.uint8), pts=i)
    source.end()
    with pytest.raises(SourceClosed):
        source.push(np.zeros((4, 4, 3), np.uint8))
    assert [f.pts for f in source] == [0, 1, 2]


def test_open_and_read_timeouts():
    with pytest.raises(SourceTimeout, match="no first frame pushed within 0.1 s"):
        list(PushSource(open_timeout_s=0.1))
    source = PushSource(read_timeout_s=0.1)
    source.push(np.zeros((4, 4, 3), np.uint8), pts=0)
    frames = iter(source)
    assert next(frames).pts == 0
    with pytest.raises(SourceTimeout, match="no frame pushed within 0.1 s"):
        next(frames)


def test_max_side_resizes_pushed_frames():
    source = PushSource()
    source.push(np.zeros((100, 400, 3), np.uint8), pts=0)
    source.end()
    assert [f.rgb.shape for f in source.frames(max_side=200)] == [(50, 200, 3)]


def test_bad_arguments():
    with pytest.raises(ValueError, match="max_queue"):
        PushSource(max_queue=0)
    with pytest.raises(ValueError, match="read_timeout_s"):
        PushSource(read_timeout_s=0)
