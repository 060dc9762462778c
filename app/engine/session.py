"""One stream, one conversation: the streaming video LLM at work.

Layout of what the model attends to (positions are explicit and never change)::

    sink | memory chunks (retrieved, time order) | local window | dialog | question -> answer

* The **sink** (system prompt, start of the user turn) is prefilled once.
* Each frame's kept visual tokens (or a timed text event: a note, or words heard in the audio) are
  prefilled **once**, attending to the sink and the local window only, so a frame costs the same
  however long the stream runs. With ``vision`` off, frames add no tokens: they advance the stream
  clock and are cited as the picture on screen when something was heard or noted.
* KV that leaves the window becomes a chunk of the :class:`memory.MemoryBank` (quantized there).
* A question's per-layer mean query scores the chunk summaries; the top-k chunks are put back,
  in time order at their original positions, and the answer is generated over the whole layout.

The sink and the window live in one window cache (:class:`~app.engine.backends.window_cache.WindowKVCache`)
kept for the whole stream: a frame or note is prefilled straight into it, items leaving the window
leave it too, and a question writes the dialog, its own tokens and the retrieved chunks after the
window, then rewinds. A question therefore costs its own tokens (and the chunks it brings back), not a
copy of the window.

The session composes the parts that each do one job: the window and its chunking
(:mod:`app.engine.window`), watch rules (:mod:`app.engine.watch`), the saved form on disk
(:mod:`app.engine.persistence`) and retrieval (:mod:`app.engine.retrieval`).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from app.engine.backends.base import VideoLLM
from app.engine.backends.types import KVSegment, PrefillResult, SegmentInput
from app.engine.config import SessionConfig
from app.engine.persistence import SavedRule, SavedSession, check_compatible, read_session_file, write_session_file
from app.engine.retrieval import Retriever, expansion_probe
from app.engine.timefmt import format_timestamp
from app.engine.types import (
    Alert,
    Answer,
    AnswerDelta,
    Evidence,
    FrameResult,
    SessionClosed,
    SessionError,
    WatchRule,
)
from app.engine.watch import WatchRules, rule_text
from app.engine.window import Window, WindowItem, thumbnail
from streaming.frame import Frame

logger = logging.getLogger(__name__)

__all__ = ["HEARD_PREFIX", "MAX_QUESTION_CHARS", "MAX_TEXT_CHARS", "NOTE_PREFIX", "Session"]

MAX_TEXT_CHARS = 4000
MAX_QUESTION_CHARS = 4000
#: What the model reads before a note and before words heard in the audio (``{t}``: MM:SS of the event).
NOTE_PREFIX = "Note at {t}: "
HEARD_PREFIX = "Heard at {t}: "


#: Tokens a session's window cache has room for at first, beyond the sink (it grows when needed).
FIRST_CACHE_TOKENS = 4096


def _first_capacity(config: SessionConfig) -> int:
    """Room for the window, the dialog and a question at first (capped: a huge window grows as it fills)."""
    return min(config.window_tokens + config.dialog_max_tokens, FIRST_CACHE_TOKENS) + 256


@dataclass(frozen=True)
class _Question:
    """A question prefilled in the window cache, ready to be answered (see ``Session._question``).

    Attributes:
        segment: the question's tokens as laid out.
        prefill: the prefill of the question over the whole context (its logits: the first answer token's).
        cache: the window cache, now ``sink | window | dialog | retrieved chunks | question``.
        retrieved: the memory chunks retrieved, time order.
        context_tokens: tokens the question attends to before itself.
        probe_s: seconds the probe took (the question's prefill over sink, window and dialog).
        retrieved_at: ``time.perf_counter()`` when retrieval was done (before the answer's prefill).
    """

    segment: SegmentInput
    prefill: PrefillResult
    cache: object
    retrieved: list
    context_tokens: int
    probe_s: float
    retrieved_at: float


class Session:
    """A live stream watched by a video LLM, with memory and a conversation.

    Thread-safe: every method takes the session's lock; ``ask`` streams from a worker thread.
    """

    def __init__(self, backend: VideoLLM, config: SessionConfig | None = None, *, session_id: str | None = None, _bank=None):
        from compression.droppers import DropPolicy
        from memory import MemoryBank

        self.backend = backend
        self.config = config or SessionConfig()
        self.session_id = session_id or uuid.uuid4().hex[:12]
        self._lock = threading.RLock()
        self._closed = False
        self._drop = DropPolicy(self.config.drop_config(), backend.spec.token_grid)
        self._bank = _bank if _bank is not None else MemoryBank(self.config.bank_config(), backend.spec.summary_dim)
        self._retriever = Retriever(backend, self._bank, lambda: self.config)  # sees config updates
        system = self.config.system_prompt or getattr(backend, "default_system", "")
        sink_seg = backend.text_segment(backend.chat.sink_template.format(system=system), 0)
        res, cache = backend.prefill(sink_seg, [], cache=backend.window_cache(capacity=_first_capacity(self.config)))
        self._sink = res.kv
        self._next_pos = sink_seg.next_position
        first_chunk_id = len(self._bank) and max(m.chunk_id for m in self._bank.metas()) + 1
        # on the CPU the window's items are views of the cache (its KV held once); on an accelerator
        # they are copies in host memory, where chunks are banked
        self._window = Window(self.config.window_tokens, self.config.chunk_frames, first_chunk_id, cache=cache,
                              sink_tokens=self._sink.length, views=backend.device.type == "cpu")
        self._dialog: deque[KVSegment] = deque()
        self._dialog_len = 0
        self._watches = WatchRules()
        self._kept_history: deque[tuple[float, float]] = deque(maxlen=10_000)
        self._pending_frames: list[Frame] = []
        self._counters = dict(frames=0, encoder_calls=0, frames_encoded=0, frames_skipped=0, frames_empty=0,
                              frames_unseen=0, text_events=0, speech_events=0, tokens_seen=0, tokens_kept=0, chunks=0,
                              questions=0)
        self._timing = dict(encode_s=0.0, prefill_s=0.0)
        self._last_attention = 0
        self._max_attention = 0
        self._last_pts = 0.0
        self._time_anchor = None  # the stream clock on the temporal position axis (backends that have one)
        self._position_warned = False
        self._on_screen: Frame | None = None  # vision off: the latest frame, cited by what is heard or noted
        self._input_source: str | None = None  # the input frames come from now (set_input_source)
        self._on_screen_thumb: bytes | None = None
        self.created = time.time()
        self.last_active = self.created

    # ---- context -------------------------------------------------------------------------------
    @property
    def bank(self):
        return self._bank

    @property
    def spec(self):
        return self.backend.spec

    def _check_open(self) -> None:
        if self._closed:
            raise SessionClosed(f"session {self.session_id} is closed")

    def _local_context(self) -> list[KVSegment]:
        return [self._sink] + self._window.segments()

    def _check_positions(self, needed: int) -> None:
        if self._next_pos + needed > self.spec.max_positions and not self._position_warned:
            self._position_warned = True
            logger.warning(
                "session %s: positions passed the model's trained range (%d); answers about old moments may degrade",
                self.session_id, self.spec.max_positions,
            )

    def _bank_chunks(self, chunks) -> None:
        for chunk in chunks:
            self._bank.append(chunk)
            self._retriever.added(chunk)
            self._counters["chunks"] += 1

    def set_input_source(self, label: str | None) -> None:
        """Name the input the next frames come from (``webcam``, ``file bikes.mp4``, ``rtsp://cam/live``:
        see :func:`streaming.labels.source_label`); every frame ingested after it, and the memory it
        becomes, carries the label, and evidence names it (``Evidence.input_source``). Notes are labelled
        ``note`` and speech ``speech`` whatever this says. None: unnamed.

        Raises:
            SessionError: ``label`` is not a string.
        """
        from streaming.labels import clean_label

        try:
            label = clean_label(label)
        except ValueError as exc:
            raise SessionError(str(exc)) from None
        with self._lock:
            self._input_source = label

    def _prefill_into_window(self, seg, kind: str, pts: float, *, piece_tokens: int | None = None,
                             between: Callable[[], object] | None = None, **extra) -> int:
        """Prefill ``seg`` over the sink and the window, after moving what no longer fits into the bank
        (in pieces of ``piece_tokens`` tokens with ``between()`` called between them: :meth:`_prefill_pieces`).

        The item is labelled with its input: ``note`` for a text event, ``speech`` for words heard, the
        current input (:meth:`set_input_source`) for a frame step."""
        from streaming.labels import NOTE, SPEECH

        extra.setdefault("label", NOTE if kind == "text" else SPEECH if kind == "speech" else self._input_source)
        self._check_positions(seg.length)
        self._bank_chunks(self._window.make_room(seg.length))
        t0 = time.perf_counter()
        res = self._prefill_pieces(seg, piece_tokens, between)
        self._timing["prefill_s"] += time.perf_counter() - t0
        self._next_pos = seg.next_position
        weight = int(seg.content.sum()) if seg.content is not None and bool(seg.content.any()) else seg.length
        item = WindowItem(kv=res.kv, kind=kind, pts=pts, key_sum=res.key_summary * weight, key_weight=weight,
                          content=seg.content, **extra)
        self._window.append(item)
        self._last_attention = res.attention_length
        self._max_attention = max(self._max_attention, res.attention_length)
        return res.attention_length

    # ---- input ---------------------------------------------------------------------------------
    def ingest(self, frame: Frame, *, evaluate_watches: bool = True) -> FrameResult:
        """Watch one frame: drop redundant tokens, prefill the kept ones once, move old KV to memory.

        Backends whose frames enter in groups (``spec.frames_per_step`` > 1, e.g. Qwen2.5-VL's
        temporal patch of 2) get frames buffered until a step is complete; the result then says
        ``pending``. An incomplete last step is completed by repeating its last frame when a
        question is asked, watches are checked, or the memory is saved (:meth:`flush`).

        With ``evaluate_watches``, watch rules are evaluated here when the scene changed (a session
        manager passes ``False`` and schedules :meth:`check_watches` itself, at lower priority).

        With ``vision`` off the frame only advances the stream clock and becomes the picture on screen
        (cited by the next speech or note); the vision tower does not run and no tokens are added.
        """
        if not isinstance(frame, Frame):
            raise SessionError(f"ingest takes a streaming.Frame, got {type(frame).__name__}")
        with self._lock:
            self._check_open()
            self.last_active = time.time()
            self._counters["frames"] += 1
            self._last_pts = max(self._last_pts, frame.pts)
            if not self.config.vision:
                self._counters["frames_unseen"] += 1
                self._on_screen, self._on_screen_thumb = frame, None
                return FrameResult(frame.index, frame.pts, False, 0, 0, False, 0)
            self._pending_frames.append(frame)
            if len(self._pending_frames) < self.spec.frames_per_step:
                return FrameResult(frame.index, frame.pts, False, 0, 0, False, 0, pending=True)
            result = self._ingest_step()
            if evaluate_watches and self._watches and (result.scene_change or self.config.watch_on_every_frame):
                result = replace(result, alerts=tuple(self.check_watches()))
            return result

    def flush(self) -> FrameResult | None:
        """Complete a partial frame step by repeating its last frame (no-op when nothing waits)."""
        with self._lock:
            if not self._pending_frames:
                return None
            last = self._pending_frames[-1]
            while len(self._pending_frames) < self.spec.frames_per_step:
                self._pending_frames.append(last)
            return self._ingest_step()

    def _ingest_step(self) -> FrameResult:
        frames, self._pending_frames = self._pending_frames, []
        first, last = frames[0], frames[-1]
        small = self.backend.resize_frame(last.rgb)
        # the step's other frames (a pair's first) count too: pixel drop skips a step only if none changed
        others = ([self.backend.resize_frame(f.rgb) for f in frames[:-1] if f is not last]
                  if self._drop.inspects_pixels else [])
        pre = self._drop.before_encode(last.pts, small, others)
        n = self.spec.tokens_per_frame
        if not pre.run_encoder:
            self._counters["frames_skipped"] += len(frames)
            self._counters["tokens_seen"] += n
            self._kept_history.append((first.pts, 0.0))
            return FrameResult(last.index, first.pts, False, n, 0, False, 0)
        t0 = time.perf_counter()
        tokens = self.backend.encode_frames([f.rgb for f in frames])[0]
        self._timing["encode_s"] += time.perf_counter() - t0
        self._counters["frames_encoded"] += len(frames)
        self._counters["encoder_calls"] += 1
        keep = self._drop.after_encode(last.pts, tokens, pre)
        kept = int(keep.sum())
        self._counters["tokens_seen"] += n
        self._counters["tokens_kept"] += kept
        self._kept_history.append((first.pts, kept / n))
        scene_change = bool(self._drop.stats().scene_change)
        if kept == 0:
            self._counters["frames_empty"] += 1
            return FrameResult(last.index, first.pts, True, n, 0, scene_change, 0)
        seg = self.backend.frame_segment(first.pts, tokens, keep, self._next_pos, self._time_anchor)
        self._time_anchor = seg.time_anchor
        attn = self._prefill_into_window(seg, "frame", first.pts, frame_index=first.index, thumbnail=thumbnail(small),
                                         pts_end=last.pts)
        return FrameResult(last.index, first.pts, True, n, kept, scene_change, attn)

    def ingest_text(self, pts: float, text: str, *, piece_tokens: int | None = None,
                    between: Callable[[], object] | None = None) -> int:
        """A timed text event (subtitle, transcript line, note) enters the stream like a frame, read as
        ``"Note at MM:SS: <text>"``.

        ``piece_tokens``: prefill it in pieces of at most this many tokens, calling ``between()``
        after each but the last (a model worker's yield point, so other sessions' work runs between
        the pieces of a long note); the KV and summaries are those of one prefill (up to float
        rounding). None: one prefill.

        Returns the number of tokens prefilled.
        """
        text = _event_text(text, "a text event")
        pts = _event_time(pts, "a text event")
        return self._ingest_event("text", pts, pts, text, NOTE_PREFIX, piece_tokens=piece_tokens, between=between)

    def ingest_speech(self, t_start: float, t_end: float, text: str, *, piece_tokens: int | None = None,
                      between: Callable[[], object] | None = None) -> int:
        """Words heard in the stream's audio from ``t_start`` to ``t_end`` (stream seconds) enter the stream
        like a note, read as ``"Heard at MM:SS: <text>"`` (MM:SS of ``t_start``), kind ``"speech"``: prefilled
        once, then a memory chunk of its own, retrieved like frames and notes, cited with its words.
        ``piece_tokens`` and ``between`` as for :meth:`ingest_text`.

        Returns the number of tokens prefilled.
        """
        text = _event_text(text, "a speech segment")
        t_start = _event_time(t_start, "a speech segment")
        t_end = _event_time(t_end, "a speech segment")
        if t_end < t_start:
            raise SessionError(f"a speech segment must end at or after its start; got {t_start} to {t_end}")
        return self._ingest_event("speech", t_start, t_end, text, HEARD_PREFIX, piece_tokens=piece_tokens,
                                  between=between)

    def _ingest_event(self, kind: str, pts: float, pts_end: float, text: str, prefix: str, *,
                      piece_tokens: int | None = None, between: Callable[[], object] | None = None) -> int:
        if piece_tokens is not None and (isinstance(piece_tokens, bool) or not isinstance(piece_tokens, int)
                                         or piece_tokens < 1):
            raise SessionError(f"piece_tokens must be a positive integer or None; got {piece_tokens!r}")
        with self._lock:
            self._check_open()
            self.last_active = time.time()
            self.flush()  # keep time order: frames waiting for their step go first
            seg = self.backend.text_segment(text, self._next_pos, prefix=prefix.format(t=format_timestamp(pts)),
                                            suffix="\n")
            self._counters["speech_events" if kind == "speech" else "text_events"] += 1
            self._last_pts = max(self._last_pts, pts_end)
            screen = self._screen() if not self.config.vision else {}
            self._prefill_into_window(seg, kind, pts, text=text, pts_end=pts_end if pts_end != pts else None,
                                      piece_tokens=piece_tokens, between=between, **screen)
            return seg.length

    def _prefill_pieces(self, seg: SegmentInput, piece_tokens: int | None,
                        between: Callable[[], object] | None) -> PrefillResult:
        """Prefill ``seg`` into the window cache: at once, or in pieces of ``piece_tokens`` tokens with
        ``between()`` called between them.

        Each piece attends to what the cache holds (the sink, the window and the earlier pieces) and
        causally to itself, which is what each of its tokens attends to in one prefill, so the cache
        ends up with the same KV (up to float rounding). The result describes the whole segment: its
        KV (a view of the cache, or a copy, as one prefill gives), the key and query summaries (the
        pieces' means weighted by their content tokens, or by their lengths when ``seg`` has no
        content), the last token's logits and the attention length. Time spent in ``between()``
        (other sessions' work) is not counted as this session's prefill time.
        """
        from app.engine.backends.window_cache import WindowKVCache

        cache, views = self._window.cache, self._window.views
        if piece_tokens is None or seg.length <= piece_tokens:
            return self.backend.prefill(seg, (), cache=cache, kv_view=views)[0]
        if isinstance(cache, WindowKVCache):
            cache.reserve(seg.length)  # room for every piece now: the buffer does not move between them
        start = cache.get_seq_length()
        has_content = seg.content is not None and bool(seg.content.any())
        parts, weights, yielded = [], [], 0.0
        for lo in range(0, seg.length, piece_tokens):
            hi = min(lo + piece_tokens, seg.length)
            if lo and between is not None:
                t0 = time.perf_counter()
                between()
                yielded += time.perf_counter() - t0
            piece = SegmentInput(
                seg.embeds[lo:hi], seg.positions[..., lo:hi],
                seg.next_position if hi == seg.length else int(seg.positions[..., hi].reshape(-1)[0]),
                None if seg.token_ids is None else seg.token_ids[lo:hi],
                None if seg.content is None else seg.content[lo:hi], seg.time_anchor)
            res, _ = self.backend.prefill(piece, (), cache=cache, kv_view=views)
            parts.append(res)
            weights.append(int(piece.content.sum()) if has_content else piece.length)
        self._timing["prefill_s"] -= yielded
        total = float(sum(weights))
        key_summary = sum(r.key_summary * (w / total) for r, w in zip(parts, weights) if w)
        query_summary = sum(r.query_summary * (w / total) for r, w in zip(parts, weights) if w)
        if views and isinstance(cache, WindowKVCache):
            kv = cache.segment(start, start + seg.length, seg.positions)
        else:
            kv = KVSegment.concat([r.kv for r in parts])
            kv.positions = seg.positions
        last = parts[-1]
        return PrefillResult(kv=kv, key_summary=key_summary, query_summary=query_summary, logits=last.logits,
                             attention_length=last.attention_length)

    def _screen(self) -> dict:
        """The frame on screen (vision off) as window-item fields: its index and thumbnail."""
        frame = self._on_screen
        if frame is None:
            return {}
        if self._on_screen_thumb is None:
            self._on_screen_thumb = thumbnail(frame.rgb)
        return {"frame_index": frame.index, "thumbnail": self._on_screen_thumb}

    # ---- questions -------------------------------------------------------------------------------
    def ask(self, question: str, *, max_new_tokens: int | None = None,
            top_k: int | None = None) -> Iterator[AnswerDelta | Answer]:
        """Stream an answer: :class:`AnswerDelta` pieces, then one :class:`Answer` with its evidence.

        The work runs in a worker thread that holds the session lock; closing the iterator early
        cancels the generation.
        """
        q: queue.Queue = queue.Queue()
        cancel = threading.Event()

        def work() -> None:
            try:
                ans = self.answer(question, on_delta=lambda d: q.put(AnswerDelta(d)), should_stop=cancel.is_set,
                                  max_new_tokens=max_new_tokens, top_k=top_k)
                q.put(ans)
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer, who re-raises it
                q.put(exc)

        worker = threading.Thread(target=work, name=f"ask-{self.session_id}", daemon=True)
        worker.start()
        try:
            while True:
                item = q.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if isinstance(item, Answer):
                    return
        finally:
            cancel.set()

    def answer(
        self,
        question: str,
        *,
        on_delta: Callable[[str], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
        max_new_tokens: int | None = None,
        top_k: int | None = None,
    ) -> Answer:
        """Answer ``question`` in the calling thread; text deltas go to ``on_delta``."""
        if not isinstance(question, str) or not question.strip():
            raise SessionError("a question needs non-empty text")
        if len(question) > MAX_QUESTION_CHARS:
            raise SessionError(f"a question is limited to {MAX_QUESTION_CHARS} characters, got {len(question)}")
        max_new = self.config.max_new_tokens if max_new_tokens is None else int(max_new_tokens)
        if not 1 <= max_new <= 4096:
            raise SessionError(f"max_new_tokens must be in [1, 4096], got {max_new}")
        k = self.config.top_k if top_k is None else int(top_k)
        with self._lock:
            self._check_open()
            self.last_active = time.time()
            t0 = time.perf_counter()
            self.flush()
            with self._question(question, k, max_new) as q:
                result = None
                first_token_s = None
                for item in self.backend.generate(q.segment, (), max_new_tokens=max_new, should_stop=should_stop,
                                                  prefilled=(q.prefill, q.cache)):
                    if isinstance(item, str):
                        if first_token_s is None:
                            first_token_s = time.perf_counter() - t0
                        if on_delta is not None:
                            on_delta(item)
                    else:
                        result = item
            assert result is not None
            qseg, retrieved = q.segment, q.retrieved
            self._next_pos = result.next_position
            self._remember_turn(result.turn_kv)
            self._counters["questions"] += 1
            evidence = self._evidence(retrieved)
            usage = {
                "context_tokens": q.context_tokens,
                "question_tokens": qseg.length,
                "completion_tokens": len(result.token_ids),
                "retrieved_chunks": len(retrieved),
                "window_tokens": self._window.tokens,
                "probe_s": round(q.probe_s, 4),
                "retrieval_s": round(q.retrieved_at - t0, 4),
                "first_token_s": None if first_token_s is None else round(first_token_s, 4),
                "total_s": round(time.perf_counter() - t0, 4),
            }
            return Answer(
                question.strip(), result.text.strip(), evidence, result.stop_reason, self._last_pts, usage,
                tuple(result.token_ids),
            )

    @contextmanager
    def _question(self, question: str, k: int, room: int, *, all_logits: bool = False) -> Iterator[_Question]:
        """The question prefilled over the context an answer uses, in the window cache; rewound on exit.

        The cache holds ``sink | window``; the dialog is written after it and the question is
        prefilled once over ``sink | window | dialog``: that prefill is the retrieval probe. When no
        chunk comes back it is also the answer's prefill. Otherwise the question's tokens are dropped,
        the retrieved chunks (time order, original positions) written after the dialog, and the
        question prefilled again over all of it: the order of past KV does not change attention
        (positions are in the rotated keys), so this is the layout ``sink | memory | window | dialog``
        up to float rounding. On exit the cache is rewound to ``sink | window``, whatever happened.

        Args:
            room: tokens the answer may add after the question (for the position check).
            all_logits: keep the logits of every question token (else the last one's).
        """
        qseg = self.backend.question_segment(question.strip(), self._next_pos, first=not self._dialog)
        self._check_positions(qseg.length + room)
        cache = self._window.cache
        mark = cache.length
        keep = qseg.length if all_logits else 1
        try:
            cache.append(list(self._dialog))
            local = cache.length
            probe_needed = k > 0 and len(self._bank) > 0
            t0 = time.perf_counter()
            res, _ = self.backend.prefill(qseg, (), cache=cache, logits_to_keep=keep,
                                          want_query_tokens=probe_needed and self.config.rerank)
            probe_s = time.perf_counter() - t0
            # the second probe (the model's first answer tokens over this cache), when configured
            retrieved = self._retriever.retrieve(
                question.strip(), res, k, expand=lambda n: expansion_probe(self.backend, cache, res, qseg, n),
            ) if probe_needed else []
            retrieved_at = time.perf_counter()
            if retrieved:
                cache.rewind(local)
                cache.append([KVSegment(r.chunk.keys, r.chunk.values, r.chunk.positions) for r in retrieved])
                res, _ = self.backend.prefill(qseg, (), cache=cache, logits_to_keep=keep)
            yield _Question(qseg, res, cache, retrieved, cache.length - qseg.length, probe_s, retrieved_at)
        finally:
            cache.rewind(mark)

    def question_logits(self, question: str, *, top_k: int | None = None) -> tuple[torch.Tensor, tuple[Evidence, ...]]:
        """Logits ``(Tq, V)`` of the question's tokens over the same context :meth:`answer` would use.

        Nothing is generated and the conversation is unchanged. Used by exactness tests and
        fidelity benchmarks (the last row is the first answer token's distribution).
        """
        k = self.config.top_k if top_k is None else int(top_k)
        with self._lock:
            self._check_open()
            self.flush()
            with self._question(question, k, 1, all_logits=True) as q:
                return q.prefill.logits, self._evidence(q.retrieved)

    def score_options(self, question: str, options, *, top_k: int | None = None) -> tuple[list[float], tuple[Evidence, ...]]:
        """How likely each option text is as the answer to ``question``: one mean log-probability per option.

        The question is prefilled once over the context :meth:`answer` would use (sink + retrieved
        chunks + window + dialog + question); each option's tokens are then scored as the start of the
        assistant's reply (after a space when the assistant prompt does not end in whitespace, as a
        reply is written). Nothing is generated and the conversation is unchanged.

        Returns:
            ``(scores, evidence)``: ``scores[i]`` is the mean log-probability per token of option ``i``
            (a float <= 0; the mean makes options of different lengths comparable, and the argmax is
            the model's choice); ``evidence`` is what :meth:`answer` would cite (as :meth:`question_logits`).

        Raises:
            SessionError: an empty question, no options, or an option without text.
        """
        if not isinstance(question, str) or not question.strip():
            raise SessionError("a question needs non-empty text")
        opts = list(options)
        if not opts or any(not isinstance(o, str) or not o.strip() for o in opts):
            raise SessionError("score_options needs one or more options, each with text")
        k = self.config.top_k if top_k is None else int(top_k)
        with self._lock:
            self._check_open()
            self.flush()
            room = max(len(self.backend.tokenize(" " + o)) for o in opts)
            with self._question(question, k, room) as q:
                return self._option_scores(q, opts), self._evidence(q.retrieved)

    def _option_scores(self, q: _Question, opts: list[str]) -> list[float]:
        """Mean log-probability per token of each option, continuing the question prefilled in ``q``."""
        qseg, res, cache = q.segment, q.prefill, q.cache
        first = torch.log_softmax(res.logits[-1].float(), dim=-1)
        base = cache.get_seq_length()
        fmt = self.backend.chat.first_question if not self._dialog else self.backend.chat.next_question
        spaced = not fmt.endswith((" ", "\n", "\t"))
        scores = []
        for option in opts:
            ids = self.backend.tokenize((" " if spaced else "") + option.strip())
            total = float(first[int(ids[0])])
            if ids.numel() > 1:
                feed = ids[:-1]
                with torch.inference_mode():
                    logits = self.backend.language_model_forward(
                        self.backend.embed_ids(feed).unsqueeze(0),
                        self.backend.text_positions(qseg.next_position, int(feed.numel())).to(self.backend.device),
                        cache, int(feed.numel()),
                    )
                logp = torch.log_softmax(logits[0].float().cpu(), dim=-1)
                total += float(logp.gather(1, ids[1:].unsqueeze(1)).sum())
                cache.crop(base - cache.get_seq_length())  # negative: drop the option's tokens again
            scores.append(total / int(ids.numel()))
        return scores

    def _remember_turn(self, turn: KVSegment | None) -> None:
        if turn is None or self.config.dialog_max_tokens == 0:
            return
        self._dialog.append(turn)
        self._dialog_len += turn.length
        while self._dialog and self._dialog_len > self.config.dialog_max_tokens:
            self._dialog_len -= self._dialog.popleft().length

    def _evidence(self, retrieved) -> tuple[Evidence, ...]:
        out = [
            Evidence(
                t_start=r.chunk.meta.t_start,
                t_end=r.chunk.meta.t_end,
                source="memory",
                kind=r.chunk.meta.kind,
                score=float(r.score),
                chunk_id=r.chunk.meta.chunk_id,
                frame_indices=tuple(r.chunk.meta.frame_indices),
                text=r.chunk.meta.text,
                thumbnail=r.chunk.meta.thumbnail,
                input_source=(r.chunk.meta.extra or {}).get("source"),
            )
            for r in retrieved
        ]
        window = self._window.evidence()
        if not self.config.vision and self._on_screen is not None:
            window = [*window[:-1], self._with_screen(window[-1] if window else None)]
        out.extend(window)
        return tuple(out)

    def _with_screen(self, window: Evidence | None) -> Evidence:
        """Vision off: the recent window's (newest) evidence reaches the latest frame and shows it, and
        names the frame's input too."""
        frame = self._on_screen
        screen = self._screen()
        label = frame.label or self._input_source
        if window is None:
            return Evidence(t_start=frame.pts, t_end=frame.pts, source="window", kind="frame",
                            frame_indices=(frame.index,), thumbnail=screen["thumbnail"], input_source=label)
        indices = window.frame_indices if frame.index in window.frame_indices else (*window.frame_indices, frame.index)
        labels = [x for x in (window.input_source or "").split(" + ") if x]
        if label and label not in labels:
            labels.append(label)
        return replace(window, t_start=min(window.t_start, frame.pts), t_end=max(window.t_end, frame.pts),
                       frame_indices=indices, thumbnail=screen["thumbnail"], input_source=" + ".join(labels) or None)

    # ---- watch rules ------------------------------------------------------------------------------
    def watch(self, rule: str) -> WatchRule:
        """Register a standing yes/no question, evaluated when the scene changes."""
        text = rule_text(rule)
        with self._lock:
            self._check_open()
            return self._watches.add(text)

    def unwatch(self, rule_id: str) -> bool:
        with self._lock:
            return self._watches.remove(rule_id)

    def rules(self) -> list[WatchRule]:
        with self._lock:
            return self._watches.rules()

    def check_watches(self) -> list[Alert]:
        """Evaluate every watch rule on the recent stream with a short yes/no generation.

        Runs over the sink and the local window only and leaves no trace in the conversation.
        Rules that fired less than ``watch_min_interval_s`` ago (stream time) are skipped.
        """
        with self._lock:
            self._check_open()
            self.flush()
            return self._watches.check(self.backend, self._local_context(), self._next_pos, self._last_pts,
                                       self.config.watch_min_interval_s)

    def alerts(self) -> list[Alert]:
        with self._lock:
            return self._watches.alerts()

    # ---- state ------------------------------------------------------------------------------------
    def kept_history(self) -> list[tuple[float, float]]:
        """``[(pts, kept_ratio)]`` of recent frames (bounded)."""
        with self._lock:
            return list(self._kept_history)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            c = dict(self._counters)
            encoded = max(1, c["encoder_calls"])
            bank_bytes = self._bank.nbytes()
            window_bytes = self._window.nbytes
            dialog_bytes = sum(d.nbytes for d in self._dialog)
            return {
                "session_id": self.session_id,
                "model": self.spec.name,
                "random_weights": self.spec.random_weights,
                "vision": self.config.vision,
                **c,
                "kept_ratio": (c["tokens_kept"] / c["tokens_seen"]) if c["tokens_seen"] else 1.0,
                "stream_time_s": self._last_pts,
                "window_tokens": self._window.tokens,
                "window_items": len(self._window),
                "dialog_tokens": self._dialog_len,
                "bank_chunks": len(self._bank),
                "memory_bytes": {
                    "window": window_bytes + dialog_bytes,  # the window cache holds the sink too
                    "ram": int(bank_bytes.get("ram", 0)),
                    "disk": int(bank_bytes.get("disk", 0)),
                },
                "next_position": self._next_pos,
                "last_attention_length": self._last_attention,
                "max_attention_length": self._max_attention,
                "encode_ms_per_step": 1000 * self._timing["encode_s"] / encoded,
                "prefill_ms_per_item": 1000 * self._timing["prefill_s"]
                / max(1, c["encoder_calls"] - c["frames_empty"] + c["text_events"] + c["speech_events"]),
                "watch_rules": len(self._watches),
                "alerts": len(self._watches.alerts()),
            }

    # ---- persistence -------------------------------------------------------------------------------
    def save(self) -> Path:
        """Save the memory so it can be reopened later (:meth:`open_memory`) without the video.

        The window's items are copied into the bank (the session keeps streaming), then the bank,
        the dialog's turns (their KV exactly, ``dialog.safetensors``) and ``session.json`` (model,
        positions, stream time, watch rules, the dialog file's checksum) are written to
        ``memory_dir``, ``session.json`` last. Alerts already raised are not saved.
        """
        from app.engine.dialog_store import write_dialog

        with self._lock:
            self._check_open()
            if self.config.memory_dir is None:
                raise SessionError("saving needs memory_dir (the directory the memory is kept in)")
            self.flush()
            self._bank_chunks(self._window.bank_all())
            path = Path(self._bank.save())
            dialog = write_dialog(path, list(self._dialog), self._saved_dialog(path))
            write_session_file(path, SavedSession(
                session_id=self.session_id,
                model=self.spec.name,
                family=self.spec.family,
                summary_dim=self.spec.summary_dim,
                next_position=self._next_pos,
                last_pts=self._last_pts,
                time_anchor=self._time_anchor,
                counters=self._counters,
                saved_at=time.time(),
                dialog=dialog,
                watch_rules=tuple(SavedRule(r.rule_id, r.text, self._watches.last_alert(r.rule_id))
                                  for r in self._watches.rules()),
            ))
            return path

    @classmethod
    def open_memory(cls, backend: VideoLLM, directory: str | Path, config: SessionConfig | None = None) -> Session:
        """Reopen a memory saved by :meth:`save`; questions are answered from it without the video.

        The model must have the same KV shape as the one that saved it. The stream clock, the
        watch rules (same ids) and the dialog come back with the memory, so the next question
        attends to the earlier turns exactly as before the save (the oldest dropped past
        ``dialog_max_tokens``). A missing or damaged dialog file costs the dialog only: a warning
        is logged and the memory reopens without it. Memories saved before dialogs were kept
        (``session.json`` version 1) reopen without one.
        """
        from memory import MemoryBank

        directory = Path(directory)
        saved = read_session_file(directory)
        check_compatible(saved, backend.spec, directory)
        cfg = (config or SessionConfig()).updated(memory_dir=str(directory), persist=True)
        bank = MemoryBank.open(directory, ram_budget_bytes=cfg.ram_budget_bytes)
        session = cls(backend, cfg, session_id=saved.session_id, _bank=bank)
        session._next_pos = max(session._next_pos, saved.next_position)
        session._last_pts = saved.last_pts
        session._time_anchor = saved.time_anchor
        session._restore_saved_state(directory, saved)
        return session

    def _saved_dialog(self, directory: Path):
        """The dialog record of this session's last save in ``directory`` (None: none, or another session's)."""
        try:
            saved = read_session_file(directory)
        except SessionError:
            return None
        return saved.dialog if saved.session_id == self.session_id else None

    def _restore_saved_state(self, directory: Path, saved: SavedSession) -> None:
        """Reinstall a saved memory's watch rules and dialog turns (see :meth:`open_memory`)."""
        from app.engine.dialog_store import read_dialog

        for rule in saved.watch_rules:
            try:
                self._watches.restore(rule.rule_id, rule.text, rule.last_alert_pts)
            except SessionError as exc:  # e.g. more rules than a session holds: keep the others
                logger.warning("%s: watch rule %s not restored: %s", directory, rule.rule_id, exc)
        if saved.dialog is None:
            return
        try:
            turns = read_dialog(directory, saved.dialog, self.spec, saved.next_position)
        except SessionError as exc:
            logger.warning("%s: %s; reopening without the dialog (the memory is intact)", directory, exc)
            return
        for turn in turns:
            self._remember_turn(turn)

    def close(self) -> None:
        """Free the session's memory (and its disk tier unless persistence is on)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._window.clear()
            self._dialog.clear()
            self._retriever.close()
            self._bank.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _event_text(text: object, what: str) -> str:
    """A text or speech event's text, stripped; :class:`SessionError` when empty or too long."""
    if not isinstance(text, str) or not text.strip():
        raise SessionError(f"{what} needs non-empty text")
    if len(text) > MAX_TEXT_CHARS:
        raise SessionError(f"{what} is limited to {MAX_TEXT_CHARS} characters, got {len(text)}")
    return text.strip()


def _event_time(pts: object, what: str) -> float:
    """A stream time in seconds (finite, >= 0); :class:`SessionError` otherwise."""
    try:
        value = float(pts)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise SessionError(f"{what} needs a numeric stream time, got {pts!r}") from None
    if not np.isfinite(value) or value < 0:
        raise SessionError(f"{what} needs a finite stream time >= 0, got {pts!r}")
    return value
