"""Typed errors of the memory bank.

Every error the bank raises on purpose derives from :class:`BankError`, so a
caller can catch "anything the memory said no to" in one place. (The name
avoids shadowing Python's builtin ``MemoryError``, which means out of RAM.)
"""

from __future__ import annotations

from pathlib import Path


class BankError(Exception):
    """Base class of every error raised by :mod:`memory`."""


class BankConfigError(BankError, ValueError):
    """A :class:`~memory.config.BankConfig` field is out of its allowed range."""


class InvalidChunk(BankError, ValueError):
    """A chunk (or its metadata) handed to the bank is malformed."""


class InvalidQuery(BankError, ValueError):
    """A retrieval query has the wrong shape, dtype or values."""


class ChunkNotFound(BankError, KeyError):
    """No live chunk has this id (never appended, or dropped by retention)."""

    def __init__(self, chunk_id: int) -> None:
        super().__init__(chunk_id)
        self.chunk_id = chunk_id

    def __str__(self) -> str:
        return f"no live chunk with id {self.chunk_id} in the memory bank"


class ChunkCorrupt(BankError):
    """A chunk's file on disk is missing, truncated or fails its checksum.

    Attributes:
        chunk_id: the chunk that cannot be read.
        path: the file that was expected to hold it.
        reason: what was wrong, in words.
    """

    def __init__(self, chunk_id: int, path: Path | str, reason: str) -> None:
        self.chunk_id = chunk_id
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"chunk {chunk_id} is corrupt or missing on disk ({self.path}): {reason}")


class BankCorrupt(BankError):
    """A saved bank directory cannot be opened (manifest missing or unreadable)."""


class BankClosed(BankError):
    """The bank was closed; it can no longer be used."""
