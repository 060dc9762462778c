"""Reference layouts for the Qwen2.5-VL and LLaVA-OneVision exactness tests.

A reference lays out sink, frame steps, notes and question with the backend's own segment builders,
in the order and with the calls the session uses, so its ``input_ids`` can be fed to the unmodified
transformers model (which inserts the visual features itself) and compared with the session.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from app.engine.timefmt import format_timestamp

from .test_exactness import _window_mask as window_mask  # noqa: F401  (re-exported: the session's attention pattern)

ATOL = 2e-4


@dataclass
class Layout:
    """Segments in stream order: ``items`` is a list of ``(kind, SegmentInput)``."""

    items: list

    @property
    def input_ids(self) -> torch.Tensor:
        """``(1, T)`` token ids (visual tokens as the model's placeholder id)."""
        return torch.cat([seg.token_ids for _, seg in self.items]).unsqueeze(0)

    @property
    def positions(self) -> torch.Tensor:
        """``(T,)`` or ``(3, T)`` positions the segments were laid out at."""
        return torch.cat([seg.positions for _, seg in self.items], dim=-1)

    @property
    def lengths(self) -> list[tuple[str, int]]:
        return [(kind, seg.length) for kind, seg in self.items]

    @property
    def question_length(self) -> int:
        return self.items[-1][1].length


def session_layout(backend, steps, texts, question: str, *, first: bool = True) -> Layout:
    """Lay out a stream the way :class:`app.engine.session.Session` does.

    Args:
        steps: ``(pts, tokens (N, E), keep (N,) or None)`` per frame step, in order.
        texts: ``(pts, text)`` notes that follow the steps.
    """
    sink = backend.text_segment(backend.chat.sink_template.format(system=backend.default_system), 0)
    items = [("sink", sink)]
    pos, anchor = sink.next_position, None
    for pts, tokens, keep in steps:
        seg = backend.frame_segment(pts, tokens, keep, pos, anchor)
        items.append(("frame", seg))
        pos, anchor = seg.next_position, seg.time_anchor
    for pts, text in texts:
        seg = backend.text_segment(text, pos, prefix=f"Note at {format_timestamp(pts)}: ", suffix="\n")
        items.append(("text", seg))
        pos = seg.next_position
    items.append(("question", backend.question_segment(question, pos, first=first)))
    return Layout(items)


def additive_mask(allowed: torch.Tensor) -> torch.Tensor:
    """Boolean ``(T, T)`` allowed-attention pattern -> ``(1, 1, T, T)`` float32 additive mask."""
    mask = torch.zeros(allowed.shape, dtype=torch.float32).masked_fill(~allowed, torch.finfo(torch.float32).min)
    return mask[None, None]


def window_positions(session) -> torch.Tensor:
    """Positions of everything the session holds locally (sink, then window items), concatenated."""
    parts = [session._sink.positions] + [w.kv.positions for w in session._window]
    return torch.cat(parts, dim=-1)
