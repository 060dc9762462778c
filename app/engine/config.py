"""Session settings: one frozen, validated dataclass.

Every field is checked in ``__post_init__``; an invalid value raises
:class:`ConfigError` naming the field and its allowed range, so a bad CLI flag,
websocket ``session.update`` or page setting gets a precise message.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

# The mode lists are declared by the packages that implement them; they are re-exported here for the
# page and the CLI.
from compression.compact_keys import COMPACT_BITS
from compression.droppers import DROP_MODES, DropConfig
from compression.kvcodec import KV_BITS, VALUE_MODES, KVCodecConfig
from memory.config import INDEX_KINDS, BankConfig
from streaming.checks import check_bool, check_choice, check_int, check_number

__all__ = ["DROP_MODES", "INDEX_KINDS", "KV_BITS", "VALUE_MODES", "ConfigError", "SessionConfig"]


class ConfigError(ValueError):
    """An invalid setting; the message names the field and the allowed range."""

    #: the websocket API's error code for this failure (subclasses may narrow it).
    code = "invalid_config"


@dataclass(frozen=True)
class SessionConfig:
    """How one session watches, remembers and answers.

    Attributes:
        window_tokens: local attention window in tokens: each frame's prefill attends to the sink and
            at most this many recent tokens; older KV leaves for the memory bank. [16, 1_000_000]
        chunk_frames: frames per memory chunk (text events are always their own chunk). [1, 64]
        top_k: chunks retrieved from memory per question (0 = local window only). [0, 4096]
        rerank: rerank faiss candidates by late interaction of the question's tokens with each chunk's keys.
        rerank_candidates: faiss candidates reranked per question. [1, 100_000]
        max_new_tokens: answer length limit in tokens. [1, 4096]
        dialog_max_tokens: conversation history kept for later questions (oldest turns dropped). [0, 65536]
        system_prompt: the system prompt of the sink; ``None`` = the backend's default.
        drop: token drop mode: off | feature | pixel | budget.
        tau: feature drop: cosine similarity above which a token is dropped. (-1, 1]
        keep_ratio: budget drop: fraction of tokens kept per frame. (0, 1]
        pixel_threshold: pixel drop: mean absolute cell difference (pixels in [0, 1]) counted as no change. [0, 1]
        keyframe_every_s: keep a whole frame every this many seconds (``None`` = only the first). (0, 86400]
        kv_bits: bits per KV element in memory: 32 (lossless), 16, 8, 4, 2.
        kv_value_mode: values quantized per "channel", per "token", or "ternary" (per token, three levels,
            1.6 bits a code; needs kv_bits 8, 4 or 2). Keys are always per channel.
        kv_outlier_channels: key channels per layer and head kept in float16 (the largest ``max |k|``);
            only for kv_bits 8, 4, 2. [0, 32]
        disk_budget_mb: disk for this session's memory chunk files; when reached the oldest memory is
            consolidated (fewer bits, static neighbouring frames merged), then deleted oldest first
            (``None`` = unbounded). (0, 1e9]
        kv_group_size: quantization group size. [8, 4096]
        ram_budget_mb: RAM for memory chunks before they spill to disk (``None`` = unlimited). (0, 1_048_576]
        memory_dir: directory of the memory's disk tier (``None`` = a private temp dir).
        persist: keep ``memory_dir`` when the session closes, so the memory can be reopened later.
        retention_s: forget chunks older than this many seconds of stream time (``None`` = keep all). (0, 1e9]
        index: summary index: flat (exact), hnsw or ivf (approximate).
        watch_min_interval_s: at most one alert per rule per this many seconds of stream time. [0, 86400]
        watch_on_every_frame: evaluate watch rules on every frame, not only on scene changes.
        vision: frames add visual tokens (the vision tower runs). Off, frames are still received, stamped and
            cited (the frame on screen is the thumbnail of what was heard or noted then) but the model only
            hears and reads: for audio-only sources and models whose vision tower is not trained.
        text_retrieval: chunks that carry text (notes, speech) are also found by a sentence embedder's
            ranking, fused with the in-model one, so questions in other words find them.
        embedder: the sentence embedder of the text path: "minilm" (offline all-MiniLM-L6-v2), a model
            folder, or hub:<model id>.
        text_candidates: chunks the text path proposes per question (each reranked in-model too). [1, 4096]
        retrieval_neighbours: chunks just before and after each of the best hits that carry text (notes,
            speech) that come along, for questions about what happened around a moment (0 = none). [0, 8]
        retrieval_budget_tokens: the most memory tokens a question attends to, hits and neighbours together
            (``None`` = top_k hits plus their neighbours, unbounded). [1, 1_000_000]
        retrieval_heads: the (layer, KV head) pairs the in-model rerank scores with: "auto" (the model's
            calibrated pairs when shipped, app/engine/backends/data/retrieval_heads/<model>.json, else every
            head of the upper half of the layers), "upper" (the upper half always) or the path of a file
            written by ``livesight calibrate-retrieval``.
        retrieval_probe_tokens: a second probe: the model's own first answer tokens (greedy, over sink,
            window and dialog) as a second query, fused with the question's; costs that many decode steps
            per question (0 = off). [0, 64]
        retrieval_score_gap: adaptive k: hits stop at the first whose fused score is below (1 - gap) times
            the best hit's (top_k stays the most; ``None`` = always top_k hits). (0, 1)
        rerank_compact_bits: the rerank scores every chunk from a compact form kept in RAM (its pre-RoPE
            keys of the scored heads, content tokens only, this many bits per channel: 8, 4 or 2), so no
            candidate is read from disk or un-rotated per question; its RAM counts in ``ram_budget_mb``
            (``None`` = off: the rerank reads the stored keys).
    """

    window_tokens: int = 1024
    chunk_frames: int = 1
    top_k: int = 8
    rerank: bool = True
    rerank_candidates: int = 64
    max_new_tokens: int = 128
    dialog_max_tokens: int = 2048
    system_prompt: str | None = None
    drop: str = "feature"
    tau: float = 0.9
    keep_ratio: float = 0.25
    pixel_threshold: float = 0.02
    keyframe_every_s: float | None = None
    kv_bits: int = 8
    kv_value_mode: str = "channel"
    kv_group_size: int = 128
    ram_budget_mb: float | None = None
    kv_outlier_channels: int = 0
    disk_budget_mb: float | None = None
    memory_dir: str | None = None
    persist: bool = False
    retention_s: float | None = None
    index: str = "flat"
    watch_min_interval_s: float = 10.0
    watch_on_every_frame: bool = False
    vision: bool = True
    text_retrieval: bool = True
    embedder: str = "minilm"
    text_candidates: int = 32
    retrieval_neighbours: int = 1
    retrieval_budget_tokens: int | None = None
    retrieval_heads: str = "auto"
    retrieval_probe_tokens: int = 0
    retrieval_score_gap: float | None = None
    rerank_compact_bits: int | None = 4

    def __post_init__(self) -> None:
        err = {"error": ConfigError}
        check_int("window_tokens", self.window_tokens, low=16, high=1_000_000, **err)
        check_int("chunk_frames", self.chunk_frames, low=1, high=64, **err)
        check_int("top_k", self.top_k, low=0, high=4096, **err)
        check_bool("rerank", self.rerank, **err)
        check_int("rerank_candidates", self.rerank_candidates, low=1, high=100_000, **err)
        check_int("max_new_tokens", self.max_new_tokens, low=1, high=4096, **err)
        check_int("dialog_max_tokens", self.dialog_max_tokens, low=0, high=65536, **err)
        if self.system_prompt is not None and (not isinstance(self.system_prompt, str) or len(self.system_prompt) > 8000):
            raise ConfigError("system_prompt must be a string of at most 8000 characters or None")
        check_choice("drop", self.drop, DROP_MODES, **err)
        check_number("tau", self.tau, low=-1.0, high=1.0, **err)
        check_number("keep_ratio", self.keep_ratio, low=0.0, high=1.0, **err)
        check_number("pixel_threshold", self.pixel_threshold, low=0.0, high=1.0, low_inclusive=True, **err)
        check_number("keyframe_every_s", self.keyframe_every_s, low=0.0, high=86400.0, allow_none=True, **err)
        check_choice("kv_bits", self.kv_bits, KV_BITS, **err)
        check_choice("kv_value_mode", self.kv_value_mode, VALUE_MODES, **err)
        check_int("kv_group_size", self.kv_group_size, low=8, high=4096, **err)
        check_number("ram_budget_mb", self.ram_budget_mb, low=0.0, high=1_048_576.0, allow_none=True, **err)
        check_int("kv_outlier_channels", self.kv_outlier_channels, low=0, high=32, **err)
        check_number("disk_budget_mb", self.disk_budget_mb, low=0.0, high=1e9, allow_none=True, **err)
        if self.kv_value_mode == "ternary" and self.kv_bits > 8:
            raise ConfigError(f"kv_value_mode 'ternary' needs kv_bits 8, 4 or 2; got kv_bits={self.kv_bits}")
        if self.memory_dir is not None and not isinstance(self.memory_dir, str):
            raise ConfigError(f"memory_dir must be a path string or None; got {self.memory_dir!r}")
        check_bool("persist", self.persist, **err)
        if self.persist and self.memory_dir is None:
            raise ConfigError("persist needs memory_dir: the directory the memory is kept in")
        check_number("retention_s", self.retention_s, low=0.0, high=1e9, allow_none=True, **err)
        check_choice("index", self.index, INDEX_KINDS, **err)
        check_number("watch_min_interval_s", self.watch_min_interval_s, low=0.0, high=86400.0, low_inclusive=True,
                     **err)
        check_bool("watch_on_every_frame", self.watch_on_every_frame, **err)
        check_bool("vision", self.vision, **err)
        check_bool("text_retrieval", self.text_retrieval, **err)
        if not isinstance(self.embedder, str) or not self.embedder.strip() or len(self.embedder) > 4096:
            raise ConfigError(f"embedder must be a non-empty name, folder or hub:<model id>; got {self.embedder!r}")
        check_int("text_candidates", self.text_candidates, low=1, high=4096, **err)
        check_int("retrieval_neighbours", self.retrieval_neighbours, low=0, high=8, **err)
        check_int("retrieval_budget_tokens", self.retrieval_budget_tokens, low=1, high=1_000_000, allow_none=True,
                  **err)
        if (not isinstance(self.retrieval_heads, str) or not self.retrieval_heads.strip()
                or len(self.retrieval_heads) > 4096):
            raise ConfigError(f"retrieval_heads must be 'auto', 'upper' or the path of a calibration file; "
                              f"got {self.retrieval_heads!r}")
        check_int("retrieval_probe_tokens", self.retrieval_probe_tokens, low=0, high=64, **err)
        if self.rerank_compact_bits is not None:
            check_choice("rerank_compact_bits", self.rerank_compact_bits, COMPACT_BITS, **err)
        check_number("retrieval_score_gap", self.retrieval_score_gap, low=0.0, high=1.0, allow_none=True,
                     high_inclusive=False, **err)

    @property
    def ram_budget_bytes(self) -> int | None:
        return None if self.ram_budget_mb is None else int(self.ram_budget_mb * 1024 * 1024)

    def updated(self, **changes: Any) -> "SessionConfig":
        """A copy with ``changes`` applied (validated); unknown names raise :class:`ConfigError`."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ConfigError(f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def drop_config(self) -> DropConfig:
        """The token dropper's settings."""
        return DropConfig(
            mode=self.drop,
            tau=self.tau,
            keep_ratio=self.keep_ratio,
            pixel_threshold=self.pixel_threshold,
            keyframe_every_s=self.keyframe_every_s,
        )

    def codec_config(self) -> KVCodecConfig:
        """The KV codec's settings for the memory."""
        return KVCodecConfig(bits=self.kv_bits, value_mode=self.kv_value_mode, group_size=self.kv_group_size,
                             outlier_channels=self.kv_outlier_channels if self.kv_bits <= 8 else 0)

    def bank_config(self) -> BankConfig:
        """The memory bank's settings."""
        return BankConfig(
            codec=self.codec_config(),
            ram_budget_bytes=self.ram_budget_bytes,
            disk_budget_bytes=None if self.disk_budget_mb is None else max(1, int(self.disk_budget_mb * 1024 * 1024)),
            disk_dir=self.memory_dir,
            retention_s=self.retention_s,
            index=self.index,
            persist=self.persist,
            compact_keys_bits=self.rerank_compact_bits,
        )
