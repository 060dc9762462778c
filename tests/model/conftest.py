"""Fixtures for model-level tests: one tiny SmolVLM backend per test session."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from streaming.frame import Frame
from tests.model.retrieval_material import FAMILIES


@pytest.fixture(scope="session")
def tiny_backend():
    from app.engine.backends.registry import load_backend

    backend = load_backend("tiny-smolvlm", dtype="float32")
    yield backend
    backend.close()


def random_frames(n: int, seed: int = 0, size=(96, 128), fps: float = 1.0) -> list[Frame]:
    """``n`` frames of random pixels (every frame different), at ``fps`` stream time."""
    rng = np.random.default_rng(seed)
    return [
        Frame(i, i / fps, time.time(), rng.integers(0, 256, (size[0], size[1], 3), dtype=np.uint8))
        for i in range(n)
    ]


def step_length(backend) -> int:
    """Tokens one full frame step takes in the window (marker, wrappers and every visual token)."""
    zeros = torch.zeros(backend.spec.tokens_per_frame, backend.spec.hidden_size)
    return backend.frame_segment(0.0, zeros, None, 0).length


@pytest.fixture
def frames():
    return random_frames


@pytest.fixture(scope="module", params=FAMILIES)
def family_backend(request):
    """Each tiny backend family in turn (module scope: one load per family and module)."""
    from app.engine.backends.registry import load_backend

    b = load_backend(request.param, dtype="float32")
    yield b
    b.close()
