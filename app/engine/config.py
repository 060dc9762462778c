"""Session settings: one frozen, validated dataclass.

Every field is checked in ``__post_init__``; an invalid value raises
:class:`ConfigError` naming the field and its allowed range, so a bad CLI flag,
websocket ``session.update`` or page setting gets a precise message.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

DROP_MODES = ("off", "feature", "pixel", "budget")
KV_BITS = (32, 16, 8, 4, 2)
VALUE_MODES = ("channel", "token")
INDEX_KINDS = ("flat", "hnsw", "ivf")


class ConfigError(ValueError):
    """An invalid setting; the message names the field and the allowed range."""

    #: the websocket API's error code for this failure (subclasses may narrow it).
    code = "invalid_config"


def _int_range(name: str, value: Any, lo: int, hi: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo or (hi is not None and value > hi):
        rng = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise ConfigError(f"{name} must be an integer in {rng}; got {value!r}")


def _float_range(name: str, value: Any, lo: float, hi: float, *, lo_open: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (value > lo if lo_open else value >= lo) and value <= hi
    if not ok:
        left = "(" if lo_open else "["
        raise ConfigError(f"{name} must be a number in {left}{lo}, {hi}]; got {value!r}")


def _choice(name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(map(str, choices))}; got {value!r}")


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
        kv_value_mode: values quantized per "channel" or per "token" (keys always per channel).
        kv_group_size: quantization group size. [8, 4096]
        ram_budget_mb: RAM for memory chunks before they spill to disk (``None`` = unlimited). (0, 1_048_576]
        memory_dir: directory of the memory's disk tier (``None`` = a private temp dir).
        persist: keep ``memory_dir`` when the session closes, so the memory can be reopened later.
        retention_s: forget chunks older than this many seconds of stream time (``None`` = keep all). (0, 1e9]
        index: summary index: flat (exact), hnsw or ivf (approximate).
        watch_min_interval_s: at most one alert per rule per this many seconds of stream time. [0, 86400]
        watch_on_every_frame: evaluate watch rules on every frame, not only on scene changes.
    """

    window_tokens: int = 1024
    chunk_frames: int = 1
    top_k: int = 8
    rerank: bool = True
    rerank_candidates: int = 64
    max_new_tokens: int = 128
    dialog_max_tokens: int = 2048
    system_prompt: str | None = None
    drop: str = "off"
    tau: float = 0.9
    keep_ratio: float = 0.25
    pixel_threshold: float = 0.02
    keyframe_every_s: float | None = None
    kv_bits: int = 16
    kv_value_mode: str = "channel"
    kv_group_size: int = 32
    ram_budget_mb: float | None = None
    memory_dir: str | None = None
    persist: bool = False
    retention_s: float | None = None
    index: str = "flat"
    watch_min_interval_s: float = 10.0
    watch_on_every_frame: bool = False

    def __post_init__(self) -> None:
        _int_range("window_tokens", self.window_tokens, 16, 1_000_000)
        _int_range("chunk_frames", self.chunk_frames, 1, 64)
        _int_range("top_k", self.top_k, 0, 4096)
        if not isinstance(self.rerank, bool):
            raise ConfigError(f"rerank must be true or false; got {self.rerank!r}")
        _int_range("rerank_candidates", self.rerank_candidates, 1, 100_000)
        _int_range("max_new_tokens", self.max_new_tokens, 1, 4096)
        _int_range("dialog_max_tokens", self.dialog_max_tokens, 0, 65536)
        if self.system_prompt is not None and (not isinstance(self.system_prompt, str) or len(self.system_prompt) > 8000):
            raise ConfigError("system_prompt must be a string of at most 8000 characters or None")
        _choice("drop", self.drop, DROP_MODES)
        _float_range("tau", self.tau, -1.0, 1.0, lo_open=True)
        _float_range("keep_ratio", self.keep_ratio, 0.0, 1.0, lo_open=True)
        _float_range("pixel_threshold", self.pixel_threshold, 0.0, 1.0)
        if self.keyframe_every_s is not None:
            _float_range("keyframe_every_s", self.keyframe_every_s, 0.0, 86400.0, lo_open=True)
        _choice("kv_bits", self.kv_bits, KV_BITS)
        _choice("kv_value_mode", self.kv_value_mode, VALUE_MODES)
        _int_range("kv_group_size", self.kv_group_size, 8, 4096)
        if self.ram_budget_mb is not None:
            _float_range("ram_budget_mb", self.ram_budget_mb, 0.0, 1_048_576.0, lo_open=True)
        if self.memory_dir is not None and not isinstance(self.memory_dir, str):
            raise ConfigError(f"memory_dir must be a path string or None; got {self.memory_dir!r}")
        if not isinstance(self.persist, bool):
            raise ConfigError(f"persist must be true or false; got {self.persist!r}")
        if self.persist and self.memory_dir is None:
            raise ConfigError("persist needs memory_dir: the directory the memory is kept in")
        if self.retention_s is not None:
            _float_range("retention_s", self.retention_s, 0.0, 1e9, lo_open=True)
        _choice("index", self.index, INDEX_KINDS)
        _float_range("watch_min_interval_s", self.watch_min_interval_s, 0.0, 86400.0)
        if not isinstance(self.watch_on_every_frame, bool):
            raise ConfigError(f"watch_on_every_frame must be true or false; got {self.watch_on_every_frame!r}")

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

    def drop_config(self):
        from compression.droppers import DropConfig

        return DropConfig(
            mode=self.drop,
            tau=self.tau,
            keep_ratio=self.keep_ratio,
            pixel_threshold=self.pixel_threshold,
            keyframe_every_s=self.keyframe_every_s,
        )

    def codec_config(self):
        from compression.kvcodec import KVCodecConfig

        return KVCodecConfig(bits=self.kv_bits, value_mode=self.kv_value_mode, group_size=self.kv_group_size)

    def bank_config(self):
        from memory import BankConfig

        return BankConfig(
            codec=self.codec_config(),
            ram_budget_bytes=self.ram_budget_bytes,
            disk_dir=self.memory_dir,
            retention_s=self.retention_s,
            index=self.index,
            persist=self.persist,
        )
