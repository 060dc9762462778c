"""Server-pulled sources over time (issue 14): a stall is pushed when frames stop and its gap when
they come back, a new source continues the session's stream time instead of going back, broken
timestamps never make a reader wait for ever, and a source does not keep its session alive."""

from __future__ import annotations

import threading
import time

import numpy as np

from app.serving.source_runner import SourceRunner
from streaming import Sampler, SamplerConfig
from streaming.pacing import RealtimeClock
from streaming.push_source import PushSource
from tests.serving.conftest import wait_for


def runner_over_push(**kw):
    source = PushSource(max_queue=8)
    sampler = Sampler(source, SamplerConfig(), live=True)
    events: list[dict] = []
    frames: list = []
    runner = SourceRunner(sampler, "sess_test", emit=events.append, enqueue=lambda f: frames.append(f),
                          session_closed=lambda: False, paced=False, blocking=False, **kw)
    runner.start()
    return source, runner, events, frames


def image(i: int) -> np.ndarray:
    return np.full((32, 32, 3), i % 255, dtype=np.uint8)


def test_a_stall_is_pushed_when_frames_stop_and_its_gap_when_they_resume():
    source, runner, events, frames = runner_over_push(stall_after_s=0.4)
    try:
        for i in range(3):
            source.push(image(i), pts=0.1 * i)
        wait_for(lambda: len(frames) == 3, timeout=10)
        stalled = wait_for(lambda: [e for e in events if e["type"] == "input_source.stalled"], timeout=10)
        assert len(stalled) == 1 and stalled[0]["pts"] == frames[-1].pts
        assert stalled[0]["stalled_s"] >= 0.4
        time.sleep(0.5)  # still stalled: no second event
        assert [e["type"] for e in events] == ["input_source.stalled"]
        source.push(image(9), pts=5.0)
        gap = wait_for(lambda: [e for e in events if e["type"] == "input_source.gap"], timeout=10)[0]["gap"]
        assert gap["reason"] == "stalled" and gap["start_pts"] == frames[2].pts and gap["end_pts"] == 5.0
        assert gap["duration_s"] >= 0.8 and runner.stalls == 1
    finally:
        source.close()
        runner.stop()


def test_a_new_source_continues_the_sessions_stream_time():
    source, runner, events, frames = runner_over_push(pts_base=37.0)
    try:
        for i in range(4):
            source.push(image(i), pts=float(i))  # its own clock starts at 0
        wait_for(lambda: len(frames) == 4, timeout=10)
        pts = [f.pts for f in frames]
        assert pts == [37.0, 38.0, 39.0, 40.0] and runner.pts_offset == 37.0
    finally:
        source.close()
        runner.stop()


def test_a_source_set_after_pushed_frames_never_goes_back(make_manager, bikes_path, bikes_frames):
    import dataclasses

    m = make_manager(allow_file_sources=True, max_fps=50.0)
    sid = m.create_session()
    for i, frame in enumerate(bikes_frames[:3]):
        m.submit_frame(sid, dataclasses.replace(frame, index=i, pts=35.0 + i, wall=time.time()))
    wait_for(lambda: m.stats(sid)["ingest"]["frames_processed"] >= 1)
    m.set_source(sid, str(bikes_path), fps=4.0, realtime=False)  # bikes.mp4 starts at 0 s
    wait_for(lambda: m.source_progress(sid)["finished"], timeout=120)
    wait_for(lambda: m.scheduler.idle(), timeout=60)
    # kept_history is the session's cached snapshot, refreshed at most every snapshot interval:
    # wait until it has caught up with every frame processed
    wait_for(lambda: m.stats(sid).get("frames", -1) >= m.stats(sid)["ingest"]["frames_processed"], timeout=30)
    history = [pts for pts, _ in m.kept_history(sid)]
    assert history == sorted(history), "stream time went back"
    assert history[-1] > 37.0 + 9.0  # bikes.mp4 is 10 s: it ran on after the pushed frames
    answer = m.ask(sid, "What happened at the start?", max_new_tokens=3).result(60)
    for ev in answer.evidence:
        assert ev.t_start <= ev.t_end


def test_a_huge_timestamp_jump_does_not_make_the_clock_wait_for_ever():
    clock = RealtimeClock(1.0, threading.Event(), max_gap_s=0.2)
    t0 = time.monotonic()
    clock.wait(0.0)
    clock.wait(0.05)
    clock.wait(1e9)  # a broken timestamp, or one frame per thousand years
    clock.wait(1e9 + 0.05)
    assert time.monotonic() - t0 < 5.0
    assert clock.jumps == 1


def test_a_stalled_source_does_not_keep_its_session_from_expiring(make_manager):
    m = make_manager(session_ttl_s=0.5)
    sid = m.create_session()
    source, runner, events, frames = runner_over_push()
    try:
        entry = m._entry(sid)
        with entry.lock:
            entry.source = runner  # a pulled source that delivers nothing
        wait_for(lambda: sid not in m.sessions(), timeout=10)
    finally:
        source.close()
        runner.stop()


def test_a_truncated_faststart_mp4_ends_with_a_clear_notice(make_manager, bikes_path, tmp_path):
    import av

    fast = tmp_path / "fast.mp4"
    with av.open(str(bikes_path)) as src, av.open(str(fast), "w", options={"movflags": "faststart"}) as out:
        stream = out.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(src.streams.video[0]):
            if packet.dts is None:
                continue
            packet.stream = stream
            out.mux(packet)
    data = fast.read_bytes()
    assert data.find(b"moov") < data.find(b"mdat")  # the index comes first: it declares all 10 s
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])

    m = make_manager(allow_file_sources=True, max_fps=50.0)
    sid = m.create_session()
    events: list[dict] = []
    m.subscribe(sid, events.append)
    m.set_source(sid, str(cut), fps=2.0, realtime=False)
    ended = wait_for(lambda: [e for e in events if e["type"] == "input_source.ended"], timeout=120)[0]
    assert ended["reason"] == "truncated" and ended["frames"] > 0
    assert "of the 10.0 s its header declares" in ended["message"]
    # the whole file ends as it always did
    m.set_source(sid, str(bikes_path), fps=2.0, realtime=False)
    whole = wait_for(lambda: [e for e in events if e["type"] == "input_source.ended"][1:], timeout=120)[0]
    assert whole["reason"] == "end of stream" and "message" not in whole
