"""The backend contract and the generic engine: what a video LLM family must provide to stream.

A backend wraps one transformers vision-language model, used as is through its
public forward and the public ``Cache`` API. The session (``app.engine.session``)
owns the stream logic (window, chunks, memory bank); a backend only knows the
model: how to turn frames into visual tokens, how to lay out a frame / text /
question segment as input embeddings with explicit positions, and how to run
the language model over a given KV context.

Shapes used throughout (one stream, batch 1):

* ``L`` decoder layers, ``H`` KV heads, ``D`` head dim, ``E`` hidden size.
* visual tokens of a frame: ``(N, E)``, laid out on a ``rows x cols`` grid (row-major).
* positions: ``(T,)`` int64 for 1D RoPE, ``(3, T)`` for M-RoPE.
* KV of a segment: keys and values ``(L, H, T, D)``.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch

from app.engine.backends.capture import QKCapture
from app.engine.backends.types import (
    BackendError,
    BackendSpec,
    ChatFormat,
    GenerationResult,
    KVSegment,
    PrefillResult,
    SegmentInput,
    TimeAnchor,
)

logger = logging.getLogger(__name__)


class VideoLLM(abc.ABC):
    """A streaming video LLM backend.

    Subclasses implement the model-specific parts (preprocessing, encoding,
    layout of segments, chat format). The generic engine here runs the
    language model over explicit KV contexts with explicit positions.
    """

    spec: BackendSpec
    tokenizer: object
    model: torch.nn.Module
    device: torch.device
    dtype: torch.dtype
    chat: ChatFormat

    def _attach(self, model, tokenizer, image_processor, device, dtype) -> None:
        """Hold the loaded parts (the model in eval mode) and where it runs; families call it first."""
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.device = torch.device(device)
        self.dtype = dtype

    # ---- model-specific ------------------------------------------------------------------
    @abc.abstractmethod
    def resize_frame(self, rgb: np.ndarray) -> np.ndarray:
        """The frame as the vision tower sees it: ``(S, S, 3)`` uint8 (for pixel-level dropping and thumbnails)."""

    @abc.abstractmethod
    def encode_frames(self, frames: Sequence[np.ndarray]) -> torch.Tensor:
        """Visual tokens of frames. ``frames``: RGB ``(H, W, 3)`` uint8 -> ``(B, N, E)`` in the LLM input space."""

    @abc.abstractmethod
    def frame_segment(self, pts: float, tokens: torch.Tensor, keep: torch.Tensor | None, start: int,
                      anchor: TimeAnchor | None = None) -> SegmentInput:
        """Lay out one frame: timestamp marker, wrapper tokens and the kept visual tokens.

        ``tokens``: ``(N, E)``; ``keep``: ``(N,)`` bool or ``None`` (all kept). Kept tokens keep their
        original positions: dropped tokens leave their position slot empty. ``anchor``: the stream
        clock of earlier steps (``None`` for a stream's first step); backends with a temporal
        position axis place the step on it and return it as ``time_anchor``, others ignore it.
        """

    @abc.abstractmethod
    def decoder(self) -> torch.nn.Module:
        """The transformers text model inside the VLM (its ``layers`` and ``rotary_emb``)."""

    def attention_modules(self) -> Sequence[torch.nn.Module]:
        """Each decoder layer's self-attention module (with ``q_proj`` and ``k_proj``)."""
        return [layer.self_attn for layer in self.decoder().layers]

    def model_position_ids(self, positions: torch.Tensor) -> torch.Tensor:
        """``(T,)`` positions -> the ``position_ids`` the model takes: ``(1, T)`` (M-RoPE families override)."""
        return positions.reshape(1, -1)

    def language_model_forward(self, embeds: torch.Tensor, positions: torch.Tensor, cache, logits_to_keep: int):
        """One forward of the transformers model over ``embeds (1, T, E)`` at explicit positions; returns logits ``(1, t, V)``."""
        out = self.model(
            inputs_embeds=embeds,
            position_ids=self.model_position_ids(positions),
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=logits_to_keep,
        )
        return out.logits

    def rotary_cos_sin(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """RoPE ``(cos, sin)`` for ``positions`` (``(T,)``, or ``(3, T)`` for M-RoPE), each ``(T, D)``,
        from the model's own rotary module fed the ``position_ids`` the model itself gets."""
        rotary = self.rotary_module()
        probe = torch.zeros(1, 1, self.spec.head_dim, dtype=torch.float32, device=self.device)
        cos, sin = rotary(probe, self.model_position_ids(positions).to(self.device))
        return cos[0].float().cpu(), sin[0].float().cpu()

    def rotary_module(self) -> torch.nn.Module:
        """The text model's rotary embedding (the same one its attention uses)."""
        return self.decoder().rotary_emb

    def unrotate_keys(self, keys: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Undo RoPE on cached keys: ``(..., T, D)`` post-RoPE keys at ``positions`` -> pre-RoPE keys.

        RoPE rotates each pair of channels by an angle; rotating back by the same angle (with
        the rotary module's own cos/sin, scaling included) recovers ``k_proj``'s output.
        """
        cos, sin = self.rotary_cos_sin(positions)
        k = keys.float()
        half = k.shape[-1] // 2
        rot = torch.cat((-k[..., half:], k[..., :half]), dim=-1)
        scale = cos.pow(2) + sin.pow(2)
        # forward: k' = k cos + rot(k) sin  ->  inverse: k = (k' cos - rot(k') sin) / (cos^2 + sin^2)
        return (k * cos - rot * sin) / scale

    def text_positions(self, start: int, n: int) -> torch.Tensor:
        """Positions of ``n`` text tokens starting at ``start``: ``(n,)`` (1D RoPE; M-RoPE overrides)."""
        return torch.arange(start, start + n, dtype=torch.long)

    # ---- generic engine --------------------------------------------------------------------
    def _capture(self) -> QKCapture:
        cap = getattr(self, "_qk_capture", None)
        if cap is None:
            s = self.spec
            cap = QKCapture(self.attention_modules(), s.num_heads, s.num_kv_heads, s.head_dim)
            self._qk_capture = cap
        return cap

    def tokenize(self, text: str) -> torch.Tensor:
        """``text`` -> ``(T,)`` int64 token ids (no special tokens added)."""
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return torch.tensor(ids, dtype=torch.long)

    def embed_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """``(T,)`` ids -> ``(T, E)`` input embeddings."""
        emb = self.model.get_input_embeddings()
        with torch.inference_mode():
            return emb(ids.to(self.device)).to(self.dtype)

    def text_segment(self, text: str, start: int, *, prefix: str = "", suffix: str = "") -> SegmentInput:
        """``prefix + text + suffix`` as one segment at positions from ``start``; ``text`` is its content.

        The three parts are tokenized separately so the content tokens are known exactly.
        """
        parts = [self.tokenize(p) if p else torch.zeros(0, dtype=torch.long) for p in (prefix, text, suffix)]
        ids = torch.cat(parts)
        if ids.numel() == 0:
            raise BackendError("empty text segment")
        content = torch.zeros(ids.numel(), dtype=torch.bool)
        content[parts[0].numel() : parts[0].numel() + parts[1].numel()] = True
        pos = self.text_positions(start, int(ids.numel()))
        return SegmentInput(self.embed_ids(ids), pos, start + int(ids.numel()), ids, content)

    def question_segment(self, question: str, start: int, *, first: bool) -> SegmentInput:
        """The question wrapped in the chat format (first turn, or after an assistant turn)."""
        fmt = self.chat.first_question if first else self.chat.next_question
        before, after = fmt.split("{q}")
        return self.text_segment(question, start, prefix=before.format(), suffix=after.format())

    def window_cache(self, context: Sequence[KVSegment] = (), *, capacity: int = 0):
        """A :class:`~app.engine.backends.window_cache.WindowKVCache` holding ``context`` in order.

        One buffer on the model's device and in its dtype, room for at least ``capacity`` tokens
        (grows when needed): prefills write into it in place, and a session keeps one for its sink
        and window between prefills.

        Raises:
            BackendError: the decoder has sliding-window or non-attention layers (every family here
                is full attention; such a decoder needs its own cache layers).
        """
        from app.engine.backends.window_cache import WindowKVCache

        text_config = self.model.config.get_text_config(decoder=True)
        types = getattr(text_config, "layer_types", None) or ()
        if any(t != "full_attention" for t in types):
            raise BackendError(f"{self.spec.name}: a window cache needs full-attention layers, got {sorted(set(types))}")
        s = self.spec
        total = sum(seg.length for seg in context)
        cache = WindowKVCache(s.num_layers, s.num_kv_heads, s.head_dim, device=self.device, dtype=self.dtype,
                              capacity=max(64, int(capacity), total + 64))
        cache.append(context)
        return cache

    def concat_cache(self, context: Sequence[KVSegment]):
        """A transformers ``DynamicCache`` of ``context`` concatenated in order: what every prefill built
        before the window cache (a copy of the whole context, then one more per forward); kept as the
        reference the window cache is tested and benchmarked against (``livesight bench question``)."""
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config)
        live = [s for s in context if s.length > 0]
        if live:
            for layer in range(self.spec.num_layers):
                k = torch.cat([s.keys[layer] for s in live], dim=1).unsqueeze(0).to(self.device, self.dtype)
                v = torch.cat([s.values[layer] for s in live], dim=1).unsqueeze(0).to(self.device, self.dtype)
                cache.update(k, v, layer)
        return cache

    def new_cache(self, context: Sequence[KVSegment]):
        """A cache holding ``context`` in order (keys ``(1, H, T, D)`` per layer), written once into one
        buffer that later tokens are written into in place (:meth:`window_cache`)."""
        return self.window_cache(context)

    @staticmethod
    def cache_tail(cache, n: int, positions: torch.Tensor) -> KVSegment:
        """The last ``n`` tokens of ``cache`` as a :class:`KVSegment` (keys ``(L, H, n, D)``)."""
        keys = torch.stack([layer.keys[0, :, -n:, :] for layer in cache.layers]).detach().cpu()
        values = torch.stack([layer.values[0, :, -n:, :] for layer in cache.layers]).detach().cpu()
        return KVSegment(keys.contiguous(), values.contiguous(), positions.clone())

    def prefill(
        self, seg: SegmentInput, context: Sequence[KVSegment], *, logits_to_keep: int = 1, cache=None,
        want_query_tokens: bool = False, kv_view: bool = False,
    ) -> tuple[PrefillResult, object]:
        """Prefill ``seg`` once, attending to ``context`` (in order) and causally to itself.

        With ``cache`` (a cache already holding the context, e.g. a session's window cache) ``context``
        is ignored and the segment is written after what the cache holds. ``kv_view``: the result's
        ``kv`` is a view of a :class:`~app.engine.backends.window_cache.WindowKVCache` (valid while
        the cache keeps those tokens) instead of a copy on the CPU.

        Returns the result and the cache (context + segment), which ``generate`` can continue.
        """
        from app.engine.backends.window_cache import WindowKVCache

        if cache is None:
            cache = self.new_cache(context)
        past = cache.get_seq_length()
        if isinstance(cache, WindowKVCache):
            cache.reserve(seg.length)
        cap = self._capture()
        with torch.inference_mode(), cap:
            logits = self.language_model_forward(
                seg.embeds.unsqueeze(0).to(self.device, self.dtype),
                seg.positions.to(self.device),
                cache,
                logits_to_keep,
            )
            key_summary, query_summary = cap.summaries(seg.content)
            query_tokens = cap.token_queries(seg.content) if want_query_tokens else None
        if kv_view and isinstance(cache, WindowKVCache):
            kv = cache.segment(past, past + seg.length, seg.positions)
        else:
            kv = self.cache_tail(cache, seg.length, seg.positions)
        result = PrefillResult(
            kv=kv,
            key_summary=key_summary,
            query_summary=query_summary,
            logits=None if logits is None else logits[0].float().cpu(),
            attention_length=past + seg.length,
            query_tokens=query_tokens,
        )
        return result, cache

    def is_stop_token(self, token_id: int) -> bool:
        return token_id in self._stop_ids()

    def _stop_ids(self) -> set[int]:
        ids = getattr(self, "_stop_id_cache", None)
        if ids is None:
            ids = set()
            eos = getattr(self.tokenizer, "eos_token_id", None)
            if eos is not None:
                ids.add(int(eos))
            for s in self.chat.stop_strings:
                tid = self.tokenizer.convert_tokens_to_ids(s)
                if isinstance(tid, int) and tid != getattr(self.tokenizer, "unk_token_id", None):
                    ids.add(tid)
            self._stop_id_cache = ids
        return ids

    def generate(
        self,
        question: SegmentInput,
        context: Sequence[KVSegment],
        *,
        max_new_tokens: int,
        should_stop: Callable[[], bool] | None = None,
        prefilled: tuple[PrefillResult, object] | None = None,
    ) -> Iterator[str | GenerationResult]:
        """Greedy generation after prefilling ``question`` over ``context``.

        Yields text deltas (``str``) as tokens are made, then one :class:`GenerationResult`.
        After stopping, the assistant turn is closed with the chat format's end marker so the
        whole turn (question, answer, end) can be kept as dialog KV (``turn_kv``).

        ``prefilled``: ``(result, cache)`` of a :meth:`prefill` of ``question`` already done (its
        cache ends with the question); generation continues from it and ``context`` is ignored.
        """
        from app.engine.backends.window_cache import WindowKVCache

        res, cache = prefilled if prefilled is not None else self.prefill(question, context)
        if isinstance(cache, WindowKVCache):  # room for a short answer and its end marker (more grows as needed)
            cache.reserve(min(max_new_tokens, 256) + len(self.tokenize(self.chat.assistant_end)))
        first_logits = res.logits[-1]
        pos = question.next_position
        generated: list[int] = []
        text = ""
        stop_reason = "max_tokens"
        next_id = int(torch.argmax(first_logits).item())
        in_cache = 0  # generated tokens already fed through the model
        while len(generated) < max_new_tokens:
            if should_stop is not None and should_stop():
                stop_reason = "cancelled"
                break
            if self.is_stop_token(next_id):
                stop_reason = "eos"
                break
            generated.append(next_id)
            decoded = self.tokenizer.decode(generated, skip_special_tokens=True)
            if not decoded.endswith("\ufffd") and len(decoded) > len(text) and decoded.startswith(text):
                yield decoded[len(text) :]
                text = decoded
            if len(generated) == max_new_tokens:
                break
            ids = torch.tensor([next_id], dtype=torch.long)
            with torch.inference_mode():
                logits = self.language_model_forward(
                    self.embed_ids(ids).unsqueeze(0), self.text_positions(pos, 1).to(self.device), cache, 1
                )
            in_cache += 1
            pos += 1
            next_id = int(torch.argmax(logits[0, -1]).item())
        final_text = self.tokenizer.decode(generated, skip_special_tokens=True)
        if final_text != text and final_text.startswith(text):
            yield final_text[len(text) :]
        # Close the turn: feed generated tokens not yet in the cache, then the end marker.
        feed = generated[in_cache:] + self.tokenize(self.chat.assistant_end).tolist()
        if feed:
            ids = torch.tensor(feed, dtype=torch.long)
            with torch.inference_mode():
                self.language_model_forward(
                    self.embed_ids(ids).unsqueeze(0), self.text_positions(pos, len(feed)).to(self.device), cache, 1
                )
            pos += len(feed)
        turn_len = question.length + in_cache + len(feed)
        turn_positions = torch.cat(
            [question.positions, self.text_positions(question.next_position, in_cache + len(feed))], dim=-1
        )
        turn_kv = self.cache_tail(cache, turn_len, turn_positions)
        yield GenerationResult(generated, final_text, stop_reason, turn_kv, pos)

    def close(self) -> None:
        cap = getattr(self, "_qk_capture", None)
        if cap is not None:
            cap.remove()
            self._qk_capture = None

