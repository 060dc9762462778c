"""A SmolVLM2 backend whose vision tower is replaced by a lookup of visual tokens encoded once.

Benchmarks that measure the language-model side (prefill, memory, retrieval, answers) over
long streams cannot afford the vision tower on every frame (about 1.4 s per 512 px frame on 2
cores, far more under load). :class:`CachedEncoderBackend` encodes each distinct frame once with
the real tower (timing it) and afterwards answers ``encode_frames`` from that cache; everything
else is the unmodified backend. Frames are keyed by a hash of their pixels.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence

import numpy as np
import torch

from app.engine.backends.smolvlm import SmolVLMBackend

log = logging.getLogger(__name__)


def frame_key(rgb: np.ndarray) -> str:
    """A hash of the frame's shape and pixels."""
    h = hashlib.blake2b(digest_size=16)
    h.update(str(rgb.shape).encode())
    h.update(np.ascontiguousarray(rgb).tobytes())
    return h.hexdigest()


class CachedEncoderBackend(SmolVLMBackend):
    """The same model as ``backend``; ``encode_frames`` reads tokens from a cache filled by :meth:`warm`.

    A frame missing from the cache is encoded by the real tower (and counted in ``misses``).
    """

    def __init__(self, backend: SmolVLMBackend):
        if not isinstance(backend, SmolVLMBackend):
            raise TypeError(f"CachedEncoderBackend wraps a SmolVLM2 backend, got {type(backend).__name__}")
        super().__init__(backend.model, backend.tokenizer, backend.image_processor, name=backend.spec.name,
                         device=backend.device, dtype=backend.dtype, random_weights=backend.spec.random_weights)
        self._cache: dict[str, torch.Tensor] = {}
        self.tower_seconds: list[float] = []
        self.misses = 0

    def warm(self, frames: Sequence[np.ndarray]) -> None:
        """Encode each distinct frame of ``frames`` (RGB ``(H, W, 3)`` uint8) once with the real tower, timed."""
        for rgb in frames:
            key = frame_key(rgb)
            if key not in self._cache:
                self._cache[key] = self._encode_real(rgb)

    def _encode_real(self, rgb: np.ndarray) -> torch.Tensor:
        t0 = time.perf_counter()
        tokens = super().encode_frames([rgb])[0]
        self.tower_seconds.append(time.perf_counter() - t0)
        return tokens

    @property
    def tower_s_per_frame(self) -> float:
        """Median measured seconds of one real vision-tower call (0 when none ran)."""
        return float(np.median(self.tower_seconds)) if self.tower_seconds else 0.0

    def encode_frames(self, frames: Sequence[np.ndarray]) -> torch.Tensor:
        """``frames`` -> ``(B, N, E)`` visual tokens from the cache (the real tower on a miss)."""
        out = []
        for rgb in frames:
            key = frame_key(rgb)
            tokens = self._cache.get(key)
            if tokens is None:
                self.misses += 1
                tokens = self._cache[key] = self._encode_real(rgb)
            out.append(tokens)
        return torch.stack(out)
