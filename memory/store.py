"""A chunk as the bank stores it (packed KV), and its file format on disk.

File layout of ``chunks/<chunk_id>.kvc`` (little endian)::

    b"LSKVCHK1"         8 bytes  magic
    sha256(payload)    32 bytes
    len(payload)        8 bytes  uint64
    payload                      torch.save of {"format", "chunk_id", "meta" (JSON str),
                                 "packed" (PackedKV.state_dict()), "positions", "summary"}

Files are written to a temporary sibling and renamed into place (``os.replace``), so a reader
never sees half a file; the checksum catches everything else (flipped bytes, truncation).
The payload is read back with ``torch.load(weights_only=True)``: no pickled code runs.
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
from typing import BinaryIO

import torch

from compression.kvcodec import PackedKV
from memory.chunk import ChunkMeta
from memory.errors import ChunkCorrupt

MAGIC = b"LSKVCHK1"
_HEADER = struct.Struct("<8s32sQ")
FORMAT_VERSION = 1


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


def encode_chunk(chunk: PackedChunk) -> tuple[bytes, str]:
    """Serialize ``chunk`` to the file format above; returns ``(file bytes, sha256 hex of payload)``."""
    buf = io.BytesIO()
    torch.save(
        {
            "format": FORMAT_VERSION,
            "chunk_id": chunk.chunk_id,
            "meta": json.dumps(chunk.meta.to_json()),
            "packed": chunk.packed.state_dict(),
            "positions": chunk.positions,
            "summary": chunk.summary,
        },
        buf,
    )
    payload = buf.getvalue()
    digest = hashlib.sha256(payload).digest()
    return _HEADER.pack(MAGIC, digest, len(payload)) + payload, digest.hex()


def write_chunk(path: Path, chunk: PackedChunk, *, durable: bool = False) -> tuple[str, int]:
    """Write ``chunk`` atomically to ``path``; returns ``(sha256 hex of payload, file size)``."""
    data, sha = encode_chunk(chunk)
    atomic_write(path, data, durable=durable)
    return sha, len(data)


def read_chunk(path: Path, chunk_id: int, expected_sha256: str | None = None) -> PackedChunk:
    """Read and verify a chunk file; raise :class:`ChunkCorrupt` for anything wrong with it."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ChunkCorrupt(chunk_id, path, "file is missing") from None
    except OSError as exc:
        raise ChunkCorrupt(chunk_id, path, f"cannot read file: {exc}") from None
    if len(data) < _HEADER.size:
        raise ChunkCorrupt(chunk_id, path, f"file is truncated ({len(data)} bytes, header needs {_HEADER.size})")
    magic, digest, length = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise ChunkCorrupt(chunk_id, path, "bad magic bytes (not a LiveSight chunk file)")
    payload = memoryview(data)[_HEADER.size :]
    if len(payload) != length:
        raise ChunkCorrupt(chunk_id, path, f"payload is {len(payload)} bytes, header says {length}")
    actual = hashlib.sha256(payload).digest()
    if actual != digest:
        raise ChunkCorrupt(chunk_id, path, "checksum mismatch (sha256 of payload differs from the header)")
    if expected_sha256 is not None and actual.hex() != expected_sha256:
        raise ChunkCorrupt(chunk_id, path, "checksum differs from the one recorded when the chunk was written")
    try:
        obj = torch.load(io.BytesIO(payload), weights_only=True, map_location="cpu")
        if obj.get("format") != FORMAT_VERSION:
            raise ValueError(f"unknown format {obj.get('format')!r}")
        if obj["chunk_id"] != chunk_id:
            raise ValueError(f"file holds chunk {obj['chunk_id']}")
        meta = ChunkMeta.from_json(json.loads(obj["meta"]))
        packed = PackedKV.from_state_dict(obj["packed"])
        positions, summary = obj["positions"], obj["summary"]
        if not isinstance(positions, torch.Tensor) or not isinstance(summary, torch.Tensor):
            raise ValueError("positions or summary is not a tensor")
    except Exception as exc:  # noqa: BLE001 - any decode failure of a checksummed file means corrupt
        raise ChunkCorrupt(chunk_id, path, f"payload does not decode: {exc}") from None
    return PackedChunk(meta=meta, packed=packed, positions=positions, summary=summary)
