"""One engine of the cluster: a loaded model, its :class:`ClusterSessionManager` and the websocket
API's handler, serving the connections the Ray Serve ingress hands it.

:class:`ReplicaEngine` knows nothing of Ray (the deployment wraps it), so it also runs in a test
or a plain process.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import uuid
from typing import Any
from urllib.parse import parse_qs

from app.serving.auth import AuthThrottle
from app.serving.cluster.adapter import StarletteConnection
from app.serving.cluster.config import ClusterConfig
from app.serving.cluster.errors import ClusterError
from app.serving.cluster.manager import ClusterSessionManager, prepared_session
from app.serving.cluster.page_ops import PageSessions
from app.serving.cluster.storage import MemoryRoot, check_key
from app.serving.errors import ManagerError, SessionLimit
from app.serving.protocol import dumps, error_event
from app.serving.ws_server import ServerConfig, WebSocketServer

logger = logging.getLogger(__name__)

#: Close code of a refused handshake (the HTTP 401 of the single-process server cannot be sent
#: through the Serve proxy's websocket route; 1008 is "policy violation").
CLOSE_UNAUTHORIZED = 1008


def session_key(headers: Any, query: str, header: str) -> str | None:
    """The session a connection names: the ``header`` header, else the first websocket subprotocol,
    else ``?session=`` (None: none named)."""
    value = headers.get(header)
    if value:
        return value.strip()
    protocols = headers.get("sec-websocket-protocol")
    if protocols:
        first = protocols.split(",")[0].strip()
        if first:
            return first
    values = parse_qs(query).get("session")
    return values[0].strip() if values and values[0].strip() else None


class ReplicaEngine:
    """A replica's model, manager, websocket handler and page sessions (``pages``:
    :class:`~app.serving.cluster.page_ops.PageSessions`).

    Args:
        cluster: the deployment's settings. opts: the serve options
            (:class:`~app.serving.process.ServeOptions`: model, limits, token, session defaults).
        replica: identity shown in stats (``replica``, ``node``, ``pid``, ``actor``).
    """

    def __init__(self, cluster: ClusterConfig, opts, replica: dict[str, Any]) -> None:
        from app.serving.process import load_backend_with_fallback, load_speech_model

        if opts.offline:
            os.environ["HF_HUB_OFFLINE"] = "1"
        try:
            import torch

            torch.set_num_threads(cluster.threads)
        except ImportError:  # pragma: no cover - torch is a dependency
            pass
        self.cluster = cluster
        self.token = opts.token
        manager_config = opts.manager
        if manager_config.asr is not None:
            load_speech_model(manager_config.asr)
        self.backend, notice, vision = load_backend_with_fallback(
            opts.model, device=opts.device, dtype=opts.dtype, quantization=opts.quantization,
            fallback=opts.fallback_model, speech=manager_config.asr is not None)
        if not vision and manager_config.default_session.vision:
            manager_config = manager_config.updated(default_session=manager_config.default_session.updated(vision=False))
        self.root = MemoryRoot(cluster.memory_root, cache_dir=cluster.cache_dir, fetch_threads=cluster.fetch_threads)
        self.replica = {**replica, "model": self.backend.spec.name, "max_sessions": manager_config.max_sessions}
        self.manager = ClusterSessionManager(self.backend, manager_config, root=self.root, replica=self.replica,
                                             model_notice=notice)
        # the page's sessions on this replica, by key (the page deployment calls them through a handle)
        self.pages = PageSessions(self.manager)
        # The handler of the websocket API, also listening on a loopback port of this node (with the
        # same token): the ingress hands it every connection through serve_connection.
        self.server = WebSocketServer(self.manager, ServerConfig(
            host="127.0.0.1", port=0, token=opts.token, max_source_opens=opts.max_source_opens,
            auth_max_failures=opts.auth_max_failures, auth_block_s=opts.auth_block_s))
        self._auth = AuthThrottle(opts.auth_max_failures, opts.auth_block_s)
        self._started: asyncio.Lock | None = None
        self._listening = False
        logger.info("replica %s ready: model %s, memory root %s", replica.get("replica"), self.backend.spec.name,
                    cluster.memory_root)

    # ---- connections ----------------------------------------------------------------------------------
    async def _ensure_listening(self) -> None:
        if self._listening:
            return
        if self._started is None:
            self._started = asyncio.Lock()
        async with self._started:
            if not self._listening:
                await self.server.serve()
                self._listening = True
                self.replica["direct_url"] = self.server.url

    def _authorized(self, websocket) -> tuple[bool, str | None]:
        """(allowed, refusal message)."""
        if self.token is None:
            return True, None
        address = websocket.client.host if websocket.client is not None else "?"
        wait = self._auth.retry_after(address)
        if wait is not None:
            return False, f"too many wrong tokens from {address}: try again in {int(wait) + 1} s"
        auth = websocket.headers.get("authorization")
        if auth and auth[:7].lower() == "bearer ":
            given = auth[7:].strip()
        else:
            values = parse_qs(websocket.url.query).get("token")
            given = values[0] if values else None
        if given is None or not hmac.compare_digest(given.encode(), self.token.encode()):
            self._auth.failed(address)
            return False, "unauthorized: send 'Authorization: Bearer <token>' (or ?token=<token>)"
        self._auth.succeeded(address)
        return True, None

    async def handle(self, websocket) -> None:
        """Serve one websocket from the ingress: authenticate, take its session over, run the API on it."""
        ok, why = self._authorized(websocket)
        if not ok:
            logger.info("websocket from %s refused: %s", websocket.client, why)
            await websocket.close(code=CLOSE_UNAUTHORIZED, reason=why[:120])
            return
        await self._ensure_listening()
        offered = websocket.headers.get("sec-websocket-protocol")
        subprotocol = offered.split(",")[0].strip() if offered else None
        await websocket.accept(subprotocol=subprotocol or None)
        conn = StarletteConnection(websocket, max_size=self.server.limits.hard_max_bytes)
        key = session_key(websocket.headers, websocket.url.query, self.cluster.session_header)
        remote = conn.remote_address
        owner = f"ray:{remote[0]}:{remote[1]}" if remote else "ray"
        try:
            key = check_key(key) if key is not None else "anon-" + uuid.uuid4().hex[:16]
            sid = await asyncio.to_thread(self.manager.open_keyed, key, owner=owner)
        except (ManagerError, ClusterError) as exc:
            code = "session_limit" if isinstance(exc, SessionLimit) else getattr(exc, "code", "internal_error")
            await conn.send(dumps(error_event(code, str(exc))))
            await conn.close(1013 if code == "session_limit" else 1011, str(exc))
            return
        except Exception as exc:  # noqa: BLE001 - e.g. a damaged saved memory: say so, keep serving others
            logger.exception("session %s could not be opened", key)
            await conn.send(dumps(error_event("internal_error", f"session {key} could not be opened: {exc}")))
            await conn.close(1011, "session could not be opened")
            return
        with prepared_session(sid):
            await self.server.serve_connection(conn)

    # ---- health and load ------------------------------------------------------------------------------
    def check_health(self) -> None:
        """Raise when this engine cannot serve (its manager is shut down or its model worker died)."""
        if self.manager.closed:
            raise ClusterError("the session manager is shut down")
        if self.manager.scheduler.closed:
            raise ClusterError("the model worker is stopped")

    def info(self) -> dict[str, Any]:
        """This replica: identity, model, sessions held, keys and counters."""
        stats = self.manager.manager_stats()
        return {**self.replica, "sessions": stats["sessions"], "keys": stats["cluster"]["keys"],
                "counters": {k: v for k, v in stats["cluster"].items() if isinstance(v, int)},
                "scheduler": stats.get("scheduler")}

    def session_stats(self, key: str) -> dict[str, Any] | None:
        """Stats of the session ``key`` when this replica owns it."""
        for sid in self.manager.sessions():
            if self.manager.key_of(sid) == key:
                return self.manager.stats(sid)
        return None

    def close(self) -> None:
        """Save and close every session and free the model (the process ends next: the handler's
        loopback port goes with it)."""
        try:
            self.pages.close_all()
            self.manager.shutdown()
        finally:
            self.backend.close()
