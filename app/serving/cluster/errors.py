"""Errors of the cluster layer, each with the API error code a client sees."""

from __future__ import annotations

from app.engine.config import ConfigError


class ClusterError(Exception):
    """A cluster-level failure (storage, ownership, Ray)."""

    code = "internal_error"


class ClusterConfigError(ConfigError):
    """A cluster setting out of range; the message names the field."""


class StaleEpoch(ClusterError):
    """A write from an owner whose epoch is no longer the session's current one: another replica
    took the session over, so this one must not touch its memory."""

    code = "session_moved"

    def __init__(self, key: str, epoch: int, current: int) -> None:
        super().__init__(f"session {key!r} was taken over (epoch {current}); this owner holds epoch {epoch} "
                         "and may no longer write its memory")
        self.key = key
        self.epoch = epoch
        self.current = current


class StorageError(ClusterError):
    """The memory root cannot be read or written (the message names the path and the cause)."""


class BadSessionKey(ClusterError):
    """A client's session id that cannot name a session directory."""

    code = "invalid_event"
