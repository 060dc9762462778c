"""``ClusterConfig``: how ``livesight serve --ray`` deploys its replicas."""

from __future__ import annotations

import re
from dataclasses import dataclass

from app.serving.cluster.errors import ClusterConfigError
from streaming.checks import check_int, check_number

#: The header Ray Serve's consistent-hash router keys on by default (``RAY_SERVE_SESSION_ID_HEADER_KEY``).
DEFAULT_SESSION_HEADER = "x-session-id"
#: Requests a replica takes besides its sessions' websockets (health and stats pages).
EXTRA_REQUESTS = 8
_HEADER_RE = re.compile(r"^[A-Za-z0-9-]{1,64}$")


@dataclass(frozen=True)
class ClusterConfig:
    """The deployment's settings.

    How often sessions are saved to the memory root is the replicas' ``ManagerConfig.save_interval_s``
    (``livesight serve --save-interval``), the one save interval of every persisted session.

    Attributes:
        memory_root: shared directory or fsspec URL of the sessions' memories (see
            :class:`~app.serving.cluster.storage.MemoryRoot`).
        replicas: engines (Ray Serve replicas), each with its own model and session manager. [1, 256]
        ray_address: None starts a local Ray bound to 127.0.0.1; ``"auto"`` or ``HOST:PORT`` (or
            ``ray://...``) joins an existing cluster.
        replica_cpus: Ray CPUs each replica reserves (also its torch threads, at least 1). (0, 256]
        num_cpus: CPUs of a local Ray (None: ``replicas * replica_cpus``, at least 1). [1, 4096]
        session_header: the header that names a session and that Ray's router keys on. Browsers
            cannot set websocket headers: ``sec-websocket-protocol`` keys on the subprotocol instead.
        fetch_threads: parallel fetches/uploads of a URL root. [1, 64]
        cache_dir: local copies and read cache of a URL root (None: a temp directory).
        health_check_period_s: how often Ray Serve checks each replica. [1, 600]
    """

    memory_root: str
    replicas: int = 1
    ray_address: str | None = None
    replica_cpus: float = 1.0
    num_cpus: int | None = None
    session_header: str = DEFAULT_SESSION_HEADER
    fetch_threads: int = 8
    cache_dir: str | None = None
    health_check_period_s: float = 5.0

    def __post_init__(self) -> None:
        err = {"error": ClusterConfigError}
        if not isinstance(self.memory_root, str) or not self.memory_root.strip():
            raise ClusterConfigError(f"memory_root must be a directory or an fsspec URL; got {self.memory_root!r}")
        check_int("replicas", self.replicas, low=1, high=256, **err)
        if self.ray_address is not None and (not isinstance(self.ray_address, str) or not self.ray_address.strip()):
            raise ClusterConfigError(f"ray_address must be 'auto', HOST:PORT or ray://HOST:PORT; got {self.ray_address!r}")
        check_number("replica_cpus", self.replica_cpus, low=0.0, high=256.0, **err)
        if self.num_cpus is not None:
            check_int("num_cpus", self.num_cpus, low=1, high=4096, **err)
        if not isinstance(self.session_header, str) or not _HEADER_RE.match(self.session_header):
            raise ClusterConfigError(f"session_header must be an HTTP header name (letters, digits, '-'); "
                                     f"got {self.session_header!r}")
        check_int("fetch_threads", self.fetch_threads, low=1, high=64, **err)
        check_number("health_check_period_s", self.health_check_period_s, low=1.0, high=600.0, low_inclusive=True, **err)

    @property
    def local_cpus(self) -> int:
        """CPUs of the local Ray this config starts."""
        if self.num_cpus is not None:
            return self.num_cpus
        return max(1, int(-(-self.replicas * self.replica_cpus // 1)))

    @property
    def threads(self) -> int:
        """Torch threads of each replica."""
        return max(1, int(self.replica_cpus))
