"""Where each replica runs and how many sessions it holds: a small named Ray actor the replicas
report to every few seconds, read by ``livesight serve --ray`` (and the tests).

The router pins each request to a session's owner, so the driver cannot ask a chosen replica over
HTTP; the replicas tell this actor instead.
"""

from __future__ import annotations

import time
from typing import Any

#: The actor's name and namespace.
REGISTRY_NAME = "livesight-replicas"
REGISTRY_NAMESPACE = "livesight"
#: A replica not heard of for this long is shown as gone.
STALE_S = 15.0


def _registry_class():
    import ray

    @ray.remote(num_cpus=0)
    class ReplicaRegistry:
        """replica id -> its last report (plus ``seen``, the wall time of the report)."""

        def __init__(self) -> None:
            self._replicas: dict[str, dict] = {}

        def report(self, info: dict) -> None:
            self._replicas[str(info.get("replica"))] = {**info, "seen": time.time()}

        def remove(self, replica: str) -> None:
            self._replicas.pop(replica, None)

        def replicas(self) -> list[dict]:
            return sorted(self._replicas.values(), key=lambda r: str(r.get("replica")))

    return ReplicaRegistry


def ensure_registry():
    """The registry actor, created when missing (call from the driver after ``ray.init``)."""
    return _registry_class().options(name=REGISTRY_NAME, namespace=REGISTRY_NAMESPACE, get_if_exists=True,
                                     lifetime="detached").remote()


def find_registry():
    """The registry actor, or None when nobody created it (a deployment started another way)."""
    import ray

    try:
        return ray.get_actor(REGISTRY_NAME, namespace=REGISTRY_NAMESPACE)
    except ValueError:
        return None


def live_replicas(registry, *, timeout: float = 10.0) -> list[dict[str, Any]]:
    """The replicas heard of within :data:`STALE_S`, each with its last report."""
    import ray

    now = time.time()
    return [r for r in ray.get(registry.replicas.remote(), timeout=timeout) if now - r.get("seen", 0) <= STALE_S]


def describe(replicas: list[dict[str, Any]]) -> list[str]:
    """One line per replica: where it runs and how many sessions it holds."""
    lines = []
    for r in replicas:
        lines.append(f"replica {r.get('replica')}: node {r.get('node')} pid {r.get('pid')}, "
                     f"{r.get('sessions', 0)}/{r.get('max_sessions', '?')} sessions"
                     + (f" ({', '.join(r['keys'])})" if r.get("keys") else ""))
    return lines
