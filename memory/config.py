"""Configuration of a :class:`~memory.bank.MemoryBank`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from compression.compact_keys import COMPACT_BITS
from compression.kvcodec import KVCodecConfig
from memory.errors import BankConfigError
from streaming.checks import check_bool, check_choice, check_int, check_number

#: Index kinds: exact inner product, or approximate for very many chunks.
INDEX_KINDS: tuple[str, ...] = ("flat", "hnsw", "ivf")


def _check_int(name: str, value: Any, lo: int, hi: int | None = None) -> None:
    check_int(f"BankConfig.{name}", value, low=lo, high=hi, error=BankConfigError, kind="an int")


@dataclass(frozen=True)
class BankConfig:
    """How a memory bank stores, spills, forgets and searches chunks.

    Attributes:
        codec: KV quantization applied to every chunk on entry (``compression.kvcodec``).
        ram_budget_bytes: bytes of stored chunks (packed KV + positions + summary) kept in RAM;
            beyond it the oldest chunks spill to disk. ``None`` = unlimited, ``0`` = all on disk.
        disk_dir: per-session directory of the disk tier; ``None`` = a private temporary
            directory, removed on close.
        retention_s: forget chunks whose ``t_end`` is more than this many seconds (stream time)
            before the newest chunk's ``t_end``; ``None`` = keep everything.
        index: ``"flat"`` (exact inner product), ``"hnsw"`` or ``"ivf"`` (approximate).
        persist: keep ``disk_dir`` (saved) on close; otherwise what the bank wrote is removed.
        hnsw_m: HNSW graph degree (``index="hnsw"``).
        hnsw_ef_construction: HNSW build-time beam width.
        hnsw_ef_search: HNSW search-time beam width (higher = better recall, slower).
        ivf_nlist: IVF inverted lists (``index="ivf"``).
        ivf_nprobe: IVF lists visited per search (used as ``min(ivf_nprobe, lists)``).
        ivf_train_min: chunks needed before the IVF is trained (once); until then the search is
            exact. ``None`` = ``39 * ivf_nlist`` (faiss' guideline for k-means).
        faiss_threads: threads faiss may use. [1, 1024]
        resident_keys: keep in RAM, for every chunk on disk, the packed keys of its upper layers
            (what a rerank scores), so candidates are scored without reading disk; their bytes
            count in ``bytes_ram`` and under ``ram_budget_bytes`` (the oldest copies go first).
        disk_budget_bytes: bytes of chunk files on disk; when reached, the oldest chunks are
            consolidated (``consolidate_codec``, static neighbours merged) and then deleted,
            oldest first. ``None`` = unbounded.
        consolidate_codec: the codec consolidated chunks are requantized with (fewer bits);
            ``None`` = keep each chunk's codec (merging only).
        merge_similarity: summary cosine at or above which neighbouring frame chunks count as one
            static scene and are merged on consolidation. [0, 1]; 1 = merge only identical.
        merge_token_similarity: value-vector cosine at or above which a token of a merged frame is
            folded into a kept one (see ``memory.consolidate``). [0, 1]
        merge_max_chunks: most chunks merged into one. [1, 4096]; 1 = never merge.
        compact_keys_bits: bits of the compact rerank keys kept in RAM for every chunk (its
            pre-RoPE keys of the rerank's (layer, head) pairs, content tokens only, quantized per
            channel; :mod:`compression.compact_keys`): 8, 4 or 2; ``None`` = none (the rerank reads
            the stored keys and un-rotates them per question). Built once the bank knows the rerank's
            pairs and the model's un-rotation (:meth:`~memory.bank.MemoryBank.set_rerank_form`);
            their bytes count in ``bytes_ram`` and under ``ram_budget_bytes`` (dropped last).
    """

    codec: KVCodecConfig = field(default_factory=KVCodecConfig)
    ram_budget_bytes: int | None = None
    disk_dir: str | None = None
    retention_s: float | None = None
    index: str = "flat"
    persist: bool = False
    hnsw_m: int = 32
    hnsw_ef_construction: int = 80
    hnsw_ef_search: int = 128
    ivf_nlist: int = 256
    ivf_nprobe: int = 32
    ivf_train_min: int | None = None
    faiss_threads: int = 1
    resident_keys: bool = True
    disk_budget_bytes: int | None = None
    consolidate_codec: KVCodecConfig | None = field(
        default_factory=lambda: KVCodecConfig(bits=2, value_mode="channel", group_size=128)
    )
    merge_similarity: float = 0.97
    merge_token_similarity: float = 0.95
    merge_max_chunks: int = 8
    compact_keys_bits: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.codec, KVCodecConfig):
            raise BankConfigError(f"BankConfig.codec must be a KVCodecConfig; got {type(self.codec).__name__}")
        if self.ram_budget_bytes is not None:
            _check_int("ram_budget_bytes", self.ram_budget_bytes, 0)
        if self.disk_dir is not None:
            if not isinstance(self.disk_dir, (str, bytes)) and not hasattr(self.disk_dir, "__fspath__"):
                raise BankConfigError(f"BankConfig.disk_dir must be a path or None; got {self.disk_dir!r}")
            if str(self.disk_dir) == "":
                raise BankConfigError("BankConfig.disk_dir must be a non-empty path or None; got ''")
        check_number("BankConfig.retention_s", self.retention_s, low=0, allow_none=True, error=BankConfigError)
        check_choice("BankConfig.index", self.index, INDEX_KINDS, error=BankConfigError)
        check_bool("BankConfig.persist", self.persist, error=BankConfigError)
        if self.persist and self.disk_dir is None:
            raise BankConfigError("BankConfig.persist=True needs BankConfig.disk_dir (a directory to keep); got None")
        _check_int("hnsw_m", self.hnsw_m, 2, 512)
        _check_int("hnsw_ef_construction", self.hnsw_ef_construction, 1, 1 << 16)
        _check_int("hnsw_ef_search", self.hnsw_ef_search, 1, 1 << 16)
        _check_int("ivf_nlist", self.ivf_nlist, 1, 1 << 20)
        _check_int("ivf_nprobe", self.ivf_nprobe, 1, 1 << 20)
        _check_int("faiss_threads", self.faiss_threads, 1, 1024)
        if self.ivf_train_min is not None:
            _check_int("ivf_train_min", self.ivf_train_min, self.ivf_nlist)
        check_bool("BankConfig.resident_keys", self.resident_keys, error=BankConfigError)
        if self.disk_budget_bytes is not None:
            _check_int("disk_budget_bytes", self.disk_budget_bytes, 1)
        if self.consolidate_codec is not None and not isinstance(self.consolidate_codec, KVCodecConfig):
            raise BankConfigError(
                f"BankConfig.consolidate_codec must be a KVCodecConfig or None; got {type(self.consolidate_codec).__name__}"
            )
        check_number("BankConfig.merge_similarity", self.merge_similarity, low=0.0, high=1.0, low_inclusive=True,
                     error=BankConfigError)
        check_number("BankConfig.merge_token_similarity", self.merge_token_similarity, low=0.0, high=1.0, low_inclusive=True,
                     error=BankConfigError)
        _check_int("merge_max_chunks", self.merge_max_chunks, 1, 4096)
        if self.compact_keys_bits is not None:
            check_choice("BankConfig.compact_keys_bits", self.compact_keys_bits, COMPACT_BITS, error=BankConfigError)

    @property
    def ivf_train_threshold(self) -> int:
        """Number of chunks at which the IVF index gets trained."""
        return self.ivf_train_min if self.ivf_train_min is not None else 39 * self.ivf_nlist

    def to_json(self) -> dict[str, Any]:
        """JSON-able form written into a saved bank's manifest (``disk_dir`` and ``persist`` left out)."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["codec"] = self.codec.to_dict()
        data["consolidate_codec"] = None if self.consolidate_codec is None else self.consolidate_codec.to_dict()
        data.pop("disk_dir")
        data.pop("persist")
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any], **overrides: Any) -> BankConfig:
        """Inverse of :meth:`to_json`; ``overrides`` replace fields (e.g. ``disk_dir``)."""
        if not isinstance(data, dict):
            raise BankConfigError(f"saved bank config must be a JSON object; got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}
        codec = kwargs.get("codec", {})
        if not isinstance(codec, dict):
            raise BankConfigError(f"saved BankConfig.codec must be a JSON object; got {codec!r}")
        codec_fields = {f.name for f in dataclasses.fields(KVCodecConfig)}
        try:
            kwargs["codec"] = KVCodecConfig(**{k: v for k, v in codec.items() if k in codec_fields})
            if isinstance(kwargs.get("consolidate_codec"), dict):
                kwargs["consolidate_codec"] = KVCodecConfig(
                    **{k: v for k, v in kwargs["consolidate_codec"].items() if k in codec_fields}
                )
        except (TypeError, ValueError) as exc:
            raise BankConfigError(f"saved BankConfig.codec is invalid: {exc}") from None
        kwargs.update(overrides)
        return cls(**kwargs)
