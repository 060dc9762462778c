"""Plain types of the backend contract: errors, a model's static spec, KV and prefill results.

Nothing here runs a model. This module imports no torch at import time (tensors appear only in
annotations and inside :meth:`KVSegment.concat`), so code that only names a type or catches a
:class:`BackendError` (the command line, the model registry) stays cheap to import.

Shapes used throughout (one stream, batch 1):

* ``L`` decoder layers, ``H`` KV heads, ``D`` head dim, ``E`` hidden size.
* positions: ``(T,)`` int64 for 1D RoPE, ``(3, T)`` for M-RoPE.
* KV of a segment: keys and values ``(L, H, T, D)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


class BackendError(RuntimeError):
    """A model could not be loaded or run."""


class ModelNotAvailable(BackendError):
    """The requested weights are not cached locally and cannot be downloaded."""


@dataclass(frozen=True)
class BackendSpec:
    """Static facts about a loaded model that the session and memory need."""

    family: str
    name: str
    num_layers: int
    num_kv_heads: int
    num_heads: int
    head_dim: int
    hidden_size: int
    tokens_per_frame: int
    token_grid: tuple[int, int]
    frame_size: int
    max_positions: int
    position_dims: int = 1  # 1 for 1D RoPE, 3 for M-RoPE
    frames_per_step: int = 1  # frames that enter the model together (2 for Qwen2.5-VL's temporal patch)
    random_weights: bool = False
    random_vision: bool = False  # a real language model behind a random vision tower: frames carry nothing

    @property
    def summary_dim(self) -> int:
        """Length of a retrieval summary vector: ``L * H * D``."""
        return self.num_layers * self.num_kv_heads * self.head_dim

    def kv_bytes_per_token(self, bytes_per_element: float) -> float:
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * bytes_per_element


@dataclass
class KVSegment:
    """KV of a contiguous piece of the stream, all layers.

    Attributes:
        keys: ``(L, H, T, D)`` post-RoPE keys, as the cache stores them.
        values: ``(L, H, T, D)``.
        positions: ``(T,)`` or ``(P, T)`` int64: the tokens' positions.
    """

    keys: torch.Tensor
    values: torch.Tensor
    positions: torch.Tensor

    @property
    def length(self) -> int:
        return int(self.keys.shape[2])

    @property
    def nbytes(self) -> int:
        return self.keys.numel() * self.keys.element_size() * 2

    @staticmethod
    def concat(segments: Sequence[KVSegment]) -> KVSegment:
        """Segments joined along the token axis, in order."""
        import torch

        return KVSegment(
            torch.cat([s.keys for s in segments], dim=2),
            torch.cat([s.values for s in segments], dim=2),
            torch.cat([s.positions for s in segments], dim=-1),
        )


@dataclass(frozen=True)
class TimeAnchor:
    """Where one stream's clock meets a backend's temporal position axis.

    Stream time ``pts`` (seconds) sits at temporal position ``position``; later stream times map
    onto that axis at the backend's own rate (Qwen2.5-VL: ``tokens_per_second``). Backends whose
    positions are 1D use none. A session keeps the anchor its first frame step made and hands it to
    every later step, so the whole stream shares one clock.
    """

    pts: float
    position: int


@dataclass(frozen=True)
class SegmentInput:
    """A piece of input ready for prefill.

    Attributes:
        embeds: ``(T, E)`` input embeddings.
        positions: ``(T,)`` or ``(P, T)`` int64 explicit positions.
        next_position: the first position free after this segment (dropped tokens keep their slot).
        token_ids: ``(T,)`` token ids where known (the image token id for visual tokens).
        content: ``(T,)`` bool, the tokens that carry the segment's content (visual tokens, the
            text of a note or question) as opposed to markers and template; retrieval summaries
            average over these only. ``None`` = all tokens.
        time_anchor: the stream clock a frame segment was laid out on (backends with a temporal
            position axis); the session passes it to the next frame step.
    """

    embeds: torch.Tensor
    positions: torch.Tensor
    next_position: int
    token_ids: torch.Tensor | None = None
    content: torch.Tensor | None = None
    time_anchor: TimeAnchor | None = None

    @property
    def length(self) -> int:
        return int(self.embeds.shape[0])


@dataclass
class PrefillResult:
    """What one prefill produced.

    Attributes:
        kv: KV of the new tokens only.
        key_summary: ``(L * H * D,)`` float32, per-layer mean pre-RoPE key of the new tokens, flattened.
        query_summary: ``(L * H * D,)`` float32, per-layer mean pre-RoPE query (query heads averaged per KV group).
        logits: ``(T_logits, V)`` logits of the last positions when asked for, else ``None``.
        attention_length: number of KV entries each new token could attend to at most (context + new).
        query_tokens: ``(L, Tc, H * D)`` per-token pre-RoPE queries of the content tokens (for reranking).
    """

    kv: KVSegment
    key_summary: torch.Tensor
    query_summary: torch.Tensor
    logits: torch.Tensor | None
    attention_length: int
    query_tokens: torch.Tensor | None = None


@dataclass
class GenerationResult:
    """A finished generation: its token ids, text, why it stopped and the KV of the whole turn.

    Attributes:
        turn_kv: KV of question, answer and the turn's end marker: keys ``(L, H, T, D)``.
        next_position: the first position free after the turn.
    """

    token_ids: list[int]
    text: str
    stop_reason: str  # "eos" | "max_tokens" | "cancelled"
    turn_kv: KVSegment | None = None
    next_position: int = 0


@dataclass
class ChatFormat:
    """Prompt pieces derived from the model's chat template.

    ``sink_template`` opens the conversation (system prompt in ``{system}`` and the user turn
    that the stream lives in); ``first_question`` wraps the first question (``{q}``),
    ``next_question`` later ones (after an assistant turn closed); ``assistant_end`` closes an
    assistant turn.
    """

    sink_template: str
    first_question: str
    next_question: str
    assistant_end: str
    stop_strings: tuple[str, ...] = field(default_factory=tuple)
