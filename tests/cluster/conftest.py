"""Fixtures of the cluster tests: the tiny backend, real frames (bikes.mp4 through PyAV) and a helper
that feeds frames through a session manager and waits until the model took them."""

from __future__ import annotations

import time

import pytest

from streaming.frame import Frame
from tests.serving.conftest import backend, bikes_path  # noqa: F401 - the serving tests' fixtures, shared
from tests.ui.conftest import chromium_path, page_env  # noqa: F401 - the page tests' fixtures, shared


@pytest.fixture(scope="session")
def frames(bikes_path) -> list[Frame]:  # noqa: F811 - the imported fixture, by name
    """The first 24 frames of bikes.mp4 decoded with PyAV, shrunk to 96 px."""
    from streaming import Sampler, SamplerConfig, open_source

    out = []
    with Sampler(open_source(str(bikes_path)), SamplerConfig(max_side=96), live=False) as sampler:
        for frame in sampler:
            out.append(frame)
            if len(out) == 24:
                break
    return out


def feed(manager, sid: str, frames, *, timeout: float = 60.0) -> None:
    """Submit ``frames`` one by one, each after the model processed the one before."""
    for frame in frames:
        before = manager.stats(sid)["ingest"]["frames_processed"]
        assert manager.submit_frame(sid, frame)
        deadline = time.monotonic() + timeout
        while manager.stats(sid)["ingest"]["frames_processed"] <= before:
            assert time.monotonic() < deadline, "the model did not take the frame"
            time.sleep(0.01)
