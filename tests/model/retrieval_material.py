"""What the retrieval tests of every backend family share: the families, filler notes, a needle and
a spoken line each with its question in other words, and small helpers to fill a session."""

from __future__ import annotations

import time

import numpy as np

from streaming.frame import Frame

FAMILIES = ["tiny-smolvlm", "tiny-qwen2_5_vl", "tiny-llava-ov"]
FILLERS = ["The hallway is quiet.", "A visitor left the lobby.", "The lights in the corridor were dimmed.",
           "The tea trolley passed by.", "The phone at the desk rang once.", "Someone mopped the floor."]
NEEDLE = "Nurse Okafor hung a new saline drip for the patient in bed 7."
QUESTION = "Whose IV fluids were replaced?"
SPEECH = "The kitchen is out of salmon, so tonight's special is chicken."
SPEECH_Q = "Which fish can diners no longer order?"


def random_frame(i: int, pts: float, seed: int | None = None) -> Frame:
    """A 64x64 frame of noise (seeded by ``seed``, else by ``i``)."""
    rng = np.random.default_rng(i if seed is None else seed)
    return Frame(i, pts, time.time(), rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))


def memory_evidence(evidence) -> list:
    """The evidence items that came from memory (not the recent window)."""
    return [e for e in evidence if e.source == "memory"]


def fill(session, start: float, n: int) -> float:
    """Ingest ``n`` filler notes one second apart from ``start``; returns the next free time."""
    for i in range(n):
        session.ingest_text(start + i, FILLERS[i % len(FILLERS)] + f" ({i})")
    return start + n
