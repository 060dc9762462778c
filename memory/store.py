"""A chunk as the bank stores it (packed KV), and its file format on disk.

File layout of ``chunks/<chunk_id>.kvc`` (format 2, little endian)::

    b"LSKVCHK2"          8 bytes  magic
    len(toc)             4 bytes  uint32
    sha256(toc)         32 bytes  the file's checksum (what the manifest records)
    toc                           JSON: {"format": 2, "chunk_id", "first_layer",
                                  "sections": [{"name", "offset", "length", "sha256"}, ...]}
    section "keys"                torch.save of {"upper": PackedKeys state (layers [first_layer, L)),
                                  "positions"}: all a rerank reads
    section "rest"                torch.save of {"meta" (JSON str), "shape", "dtype", "config",
                                  "rest" (the other PackedKV tensors), "summary"}

Each section carries its own sha256 (listed in the table of contents, which is itself
checksummed), so the keys a rerank needs are read and verified without reading the rest; a
whole chunk is verified section by section. A file carries its chunk's metadata and summary,
so a bank whose manifest is lost can be recovered from its chunk files alone.

Files are written to a temporary sibling and renamed into place (``os.replace``), so a reader
never sees half a file; the checksums catch everything else (flipped bytes, truncation).
Payloads are read back with ``torch.load(weights_only=True)``: no pickled code runs. Format 1
files (one checksummed ``torch.save`` payload, ``b"LSKVCHK1"``) are still read.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import torch

from compression.kvcodec import KVCodecConfig, KVCodecError, PackedKeys, PackedKV, join_keys, split_keys
from memory.chunk import ChunkMeta
from memory.errors import ChunkCorrupt

MAGIC_V1 = b"LSKVCHK1"
MAGIC = b"LSKVCHK2"
_HEADER_V1 = struct.Struct("<8s32sQ")
_HEADER = struct.Struct("<8sI32s")
FORMAT_VERSION = 2
#: Largest table of contents accepted (a damaged length field must not allocate gigabytes).
_MAX_TOC = 1 << 16


def tensor_nbytes(t: torch.Tensor) -> int:
    """Bytes of a tensor's elements."""
    return t.numel() * t.element_size()


@dataclass(frozen=True, eq=False)
class PackedChunk:
    """A chunk in its stored form.

    Attributes:
        meta: the chunk's metadata.
        packed: quantized KV (``compression.kvcodec.PackedKV``) of shape ``(L, H, T, D)``.
        positions: int64 ``(T,)`` or ``(3, T)`` original token positions.
        summary: float32 ``(S,)`` retrieval summary.
    """

    meta: ChunkMeta
    packed: PackedKV
    positions: torch.Tensor
    summary: torch.Tensor

    @property
    def chunk_id(self) -> int:
        return self.meta.chunk_id

    @property
    def nbytes(self) -> int:
        """True bytes held: packed KV (metadata included) + positions + summary."""
        return int(self.packed.nbytes) + tensor_nbytes(self.positions) + tensor_nbytes(self.summary)

    @property
    def n_elements(self) -> int:
        """Number of K and V elements encoded: ``2 * L * H * T * D``."""
        n = 2
        for d in self.packed.shape:
            n *= int(d)
        return n


def fsync_dir(directory: Path) -> None:
    """Make a rename inside ``directory`` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_file(path: Path, *, durable: bool = False) -> Iterator[BinaryIO]:
    """A binary file handle whose content replaces ``path`` only when the block ends without an error.

    The data goes to a temporary sibling first, so a reader never sees half a file; with
    ``durable`` the file is fsynced before the rename and its directory after it.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    if durable:
        fsync_dir(path.parent)


def atomic_write(path: Path, data: bytes | bytearray | memoryview, *, durable: bool = False) -> None:
    """Write ``data`` to ``path`` via a temporary sibling and ``os.replace``."""
    with atomic_file(path, durable=durable) as fh:
        fh.write(data)


def key_split_layer(n_layers: int) -> int:
    """First layer of the keys section and of the RAM-resident keys: the upper half, the layers a
    rerank reads (``app.engine.retrieval.rerank_layers`` uses the same rule)."""
    return n_layers // 2


def _torch_bytes(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def encode_chunk(chunk: PackedChunk) -> tuple[bytes, str]:
    """Serialize ``chunk`` to the file format above; returns ``(file bytes, sha256 hex of the toc)``."""
    packed = chunk.packed
    first = key_split_layer(packed.shape[0])
    upper, rest = split_keys(packed, first)
    sections = [
        ("keys", _torch_bytes({"upper": upper.state_dict(), "positions": chunk.positions})),
        ("rest", _torch_bytes({
            "meta": json.dumps(chunk.meta.to_json()),
            "shape": list(packed.shape),
            "dtype": str(packed.dtype).removeprefix("torch."),
            "config": packed.config.to_dict(),
            "rest": rest,
            "summary": chunk.summary,
        })),
    ]
    table, offset = [], 0
    for name, data in sections:
        table.append({"name": name, "offset": offset, "length": len(data), "sha256": hashlib.sha256(data).hexdigest()})
        offset += len(data)
    toc = json.dumps({"format": FORMAT_VERSION, "chunk_id": chunk.chunk_id, "first_layer": first,
                      "sections": table}).encode("utf-8")
    digest = hashlib.sha256(toc).digest()
    body = b"".join(data for _, data in sections)
    return _HEADER.pack(MAGIC, len(toc), digest) + toc + body, digest.hex()


def write_chunk(path: Path, chunk: PackedChunk, *, durable: bool = False) -> tuple[str, int]:
    """Write ``chunk`` atomically to ``path``; returns ``(sha256 hex of the file's toc, file size)``."""
    data, sha = encode_chunk(chunk)
    atomic_write(path, data, durable=durable)
    return sha, len(data)


class _ChunkFile:
    """An open chunk file whose table of contents was read and verified; sections read on demand."""

    def __init__(self, path: Path, chunk_id: int | None, expected_sha256: str | None) -> None:
        self.path = path
        self.chunk_id = chunk_id
        try:
            self.fh: BinaryIO = open(path, "rb")
        except FileNotFoundError:
            raise self.corrupt("file is missing") from None
        except OSError as exc:
            raise self.corrupt(f"cannot read file: {exc}") from None
        try:
            self.size = os.fstat(self.fh.fileno()).st_size
            head = self.fh.read(_HEADER.size)
            if len(head) >= 8 and head[:8] == MAGIC_V1:
                self.version = 1
                return
            if len(head) < _HEADER.size:
                raise self.corrupt(f"file is truncated ({self.size} bytes, header needs {_HEADER.size})")
            magic, toc_len, digest = _HEADER.unpack(head)
            if magic != MAGIC:
                raise self.corrupt("bad magic bytes (not a LiveSight chunk file)")
            if toc_len > _MAX_TOC or _HEADER.size + toc_len > self.size:
                raise self.corrupt(f"table of contents of {toc_len} bytes does not fit the file ({self.size} bytes)")
            toc = self.fh.read(toc_len)
            if hashlib.sha256(toc).digest() != digest:
                raise self.corrupt("checksum mismatch (sha256 of the table of contents differs from the header)")
            if expected_sha256 is not None and digest.hex() != expected_sha256:
                raise self.corrupt("checksum differs from the one recorded when the chunk was written")
            try:
                info = json.loads(toc)
                self.version = int(info["format"])
                self.file_chunk_id = int(info["chunk_id"])
                self.first_layer = int(info["first_layer"])
                self.sections = {str(s["name"]): (int(s["offset"]), int(s["length"]), str(s["sha256"]))
                                 for s in info["sections"]}
            except (ValueError, KeyError, TypeError) as exc:
                raise self.corrupt(f"table of contents does not decode: {exc!r}") from None
            if self.version != FORMAT_VERSION:
                raise self.corrupt(f"unknown format {self.version}")
            if chunk_id is not None and self.file_chunk_id != chunk_id:
                raise self.corrupt(f"file holds chunk {self.file_chunk_id}")
            self.body = _HEADER.size + toc_len
            end = max((off + length for off, length, _ in self.sections.values()), default=0)
            if self.body + end != self.size:
                raise self.corrupt(f"file is {self.size} bytes, its table of contents says {self.body + end}")
            self.digest = digest.hex()
        except BaseException:
            self.fh.close()
            raise

    def corrupt(self, reason: str) -> ChunkCorrupt:
        return ChunkCorrupt(-1 if self.chunk_id is None else self.chunk_id, self.path, reason)

    def section(self, name: str) -> Any:
        """The decoded ``torch.load`` of one section, after checking its own checksum."""
        if name not in self.sections:
            raise self.corrupt(f"section {name!r} is missing")
        offset, length, sha = self.sections[name]
        data = os.pread(self.fh.fileno(), length, self.body + offset)
        if len(data) != length:
            raise self.corrupt(f"section {name!r} is truncated")
        if hashlib.sha256(data).hexdigest() != sha:
            raise self.corrupt(f"checksum mismatch in section {name!r}")
        try:
            return torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
        except Exception as exc:  # noqa: BLE001 - a checksummed section that does not decode is corrupt
            raise self.corrupt(f"section {name!r} does not decode: {exc}") from None

    def close(self) -> None:
        self.fh.close()

    def __enter__(self) -> _ChunkFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _keys_of(obj: Any, corrupt: Any) -> tuple[PackedKeys, torch.Tensor]:
    try:
        upper = PackedKeys.from_state_dict(obj["upper"])
        positions = obj["positions"]
        if not isinstance(positions, torch.Tensor) or positions.dtype != torch.int64:
            raise ValueError("positions is not an int64 tensor")
    except (KVCodecError, KeyError, TypeError, ValueError) as exc:
        raise corrupt(f"keys section is malformed: {exc}") from None
    return upper, positions


def read_chunk(path: Path, chunk_id: int | None, expected_sha256: str | None = None) -> PackedChunk:
    """Read and verify a whole chunk file; raise :class:`ChunkCorrupt` for anything wrong with it.

    ``chunk_id=None`` accepts whichever chunk the file holds (recovery without a manifest).
    """
    with _ChunkFile(path, chunk_id, expected_sha256) as f:
        if f.version == 1:
            return _read_chunk_v1(path, chunk_id, expected_sha256)
        upper, positions = _keys_of(f.section("keys"), f.corrupt)
        obj = f.section("rest")
        try:
            meta = ChunkMeta.from_json(json.loads(obj["meta"]))
            if meta.chunk_id != f.file_chunk_id:
                raise ValueError(f"metadata names chunk {meta.chunk_id}, the file chunk {f.file_chunk_id}")
            if KVCodecConfig(**obj["config"]) != upper.config or list(obj["shape"]) != list(upper.shape):
                raise ValueError("the sections disagree on the codec or the shape")
            packed = join_keys(upper, obj["rest"])
            summary = obj["summary"]
            if not isinstance(summary, torch.Tensor):
                raise ValueError("summary is not a tensor")
        except Exception as exc:  # noqa: BLE001 - any decode failure of a checksummed file means corrupt
            raise f.corrupt(f"payload does not decode: {exc}") from None
    return PackedChunk(meta=meta, packed=packed, positions=positions, summary=summary)


def read_chunk_keys(path: Path, chunk_id: int, expected_sha256: str | None = None) -> tuple[PackedKeys, torch.Tensor]:
    """Read and verify only the keys section: ``(PackedKeys of the upper layers, positions)``.

    A format-1 file has no sections: it is read whole and its upper keys cut out.
    """
    with _ChunkFile(path, chunk_id, expected_sha256) as f:
        if f.version == 2:
            return _keys_of(f.section("keys"), f.corrupt)
    stored = _read_chunk_v1(path, chunk_id, expected_sha256)
    upper, _ = split_keys(stored.packed, key_split_layer(stored.packed.shape[0]))
    return upper, stored.positions


def _read_chunk_v1(path: Path, chunk_id: int | None, expected_sha256: str | None) -> PackedChunk:
    """Read a format-1 file (one checksummed payload)."""
    cid = -1 if chunk_id is None else chunk_id
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ChunkCorrupt(cid, path, f"cannot read file: {exc}") from None
    if len(data) < _HEADER_V1.size:
        raise ChunkCorrupt(cid, path, f"file is truncated ({len(data)} bytes, header needs {_HEADER_V1.size})")
    magic, digest, length = _HEADER_V1.unpack_from(data)
    payload = memoryview(data)[_HEADER_V1.size :]
    if len(payload) != length:
        raise ChunkCorrupt(cid, path, f"payload is {len(payload)} bytes, header says {length}")
    actual = hashlib.sha256(payload).digest()
    if actual != digest:
        raise ChunkCorrupt(cid, path, "checksum mismatch (sha256 of payload differs from the header)")
    if expected_sha256 is not None and actual.hex() != expected_sha256:
        raise ChunkCorrupt(cid, path, "checksum differs from the one recorded when the chunk was written")
    try:
        obj = torch.load(io.BytesIO(payload), weights_only=True, map_location="cpu")
        if obj.get("format") != 1:
            raise ValueError(f"unknown format {obj.get('format')!r}")
        if chunk_id is not None and obj["chunk_id"] != chunk_id:
            raise ValueError(f"file holds chunk {obj['chunk_id']}")
        meta = ChunkMeta.from_json(json.loads(obj["meta"]))
        packed = PackedKV.from_state_dict(obj["packed"])
        positions, summary = obj["positions"], obj["summary"]
        if not isinstance(positions, torch.Tensor) or not isinstance(summary, torch.Tensor):
            raise ValueError("positions or summary is not a tensor")
    except Exception as exc:  # noqa: BLE001 - any decode failure of a checksummed file means corrupt
        raise ChunkCorrupt(cid, path, f"payload does not decode: {exc}") from None
    return PackedChunk(meta=meta, packed=packed, positions=positions, summary=summary)


def recover_chunk(path: Path) -> tuple[PackedChunk, str]:
    """Read and verify whichever chunk ``path`` holds, with no manifest to check it against.

    Returns:
        ``(chunk, sha256 hex of the file's checksum)``: what a manifest would record for it.
    """
    with _ChunkFile(path, None, None) as f:
        digest = f.digest if f.version == FORMAT_VERSION else None
    stored = read_chunk(path, None)
    if digest is None:  # format 1: the checksum is the payload's, in the header
        digest = path.read_bytes()[8:40].hex()
    return stored, digest
