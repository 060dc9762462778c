"""The Ray Serve deployment: N replicas of :class:`~app.serving.cluster.replica.ReplicaEngine` behind a
FastAPI ingress, sessions pinned to their owner by Ray Serve's consistent-hash router.

Routes of the ingress (on ``http_options`` host and port):

- ``/`` websocket: the LiveSight websocket API (``docs/protocol.md``); the session is named by the
  session header (default ``x-session-id``, what the router keys on), the first subprotocol, or
  ``?session=`` (the last is not seen by the router: such a connection lands on any replica, which
  takes the session over from the memory root).
- ``GET /healthz``: the replica that answered (any).
- ``GET /session`` with the session header: the session's stats from its owner.
- ``page_*`` handle methods (no HTTP route): the page's operations on its sessions, called by the
  page deployment (:mod:`app.serving.cluster.page`, served at ``/page``) through a handle routed by
  the session's key, so they reach the same owner as a websocket naming that key.

Importing this module imports neither Ray nor FastAPI; :func:`build_app` does.
"""

import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO

from app.serving.cluster.config import EXTRA_REQUESTS, ClusterConfig

logger = logging.getLogger(__name__)

#: Ray Serve's router with strict affinity: a session's requests go to its owner or wait, never elsewhere.
ROUTER_CLASS = "ray.serve.experimental.consistent_hash_router.ConsistentHashRouter"
APP_NAME = "livesight"
DEPLOYMENT_NAME = "LiveSightReplica"
#: Seconds between a replica's reports to the registry.
REPORT_INTERVAL_S = 2.0
#: Seconds the proxy's router is given to learn of the replicas once they run.
ROUTER_SETTLE_S = 3.0
#: Requests one session may hold at once on its owner: a websocket holds one for its whole life; a
#: page session a few (a streaming answer, a webcam frame, the stats tick, the event poll).
REQUESTS_PER_SESSION = 4


def replica_identity() -> dict[str, Any]:
    """Who this replica is, from inside it: Serve's replica id, its actor name, node and pid."""
    import ray
    from ray import serve

    ctx = serve.get_replica_context()
    return {"replica": ctx.replica_id.unique_id, "actor": ray.get_runtime_context().get_actor_name(),
            "node": ray.util.get_node_ip_address(), "pid": os.getpid()}


def build_app(cluster: ClusterConfig, opts):
    """The bound Serve application (``serve.run`` it). ``opts``: :class:`~app.serving.process.ServeOptions`."""
    from fastapi import FastAPI, Request, WebSocket
    from fastapi.responses import JSONResponse
    from ray import serve
    from ray.serve.config import RequestRouterConfig

    from app.serving.cluster.remote_manager import guarded

    app = FastAPI(title="LiveSight cluster")
    max_sessions = opts.manager.max_sessions

    @serve.deployment(
        name=DEPLOYMENT_NAME,
        num_replicas=cluster.replicas,
        # an open websocket is one ongoing request for its whole life, a page session holds a few at
        # once: a replica takes that for each of its sessions plus a few short requests (health,
        # stats); the manager itself refuses sessions beyond max_sessions (session_limit)
        max_ongoing_requests=max_sessions * REQUESTS_PER_SESSION + EXTRA_REQUESTS,
        ray_actor_options={"num_cpus": cluster.replica_cpus},
        request_router_config=RequestRouterConfig(request_router_class=ROUTER_CLASS,
                                                  request_router_kwargs={"num_fallback_replicas": 0}),
        health_check_period_s=cluster.health_check_period_s,
        health_check_timeout_s=max(30.0, cluster.health_check_period_s),
        graceful_shutdown_timeout_s=60.0,
    )
    @serve.ingress(app)
    class LiveSightReplica:
        def __init__(self, cluster: ClusterConfig, opts) -> None:
            from app.serving.cluster.registry import find_registry
            from app.serving.cluster.replica import ReplicaEngine

            logging.basicConfig(level=logging.INFO)
            self._engine = ReplicaEngine(cluster, opts, replica_identity())
            self._registry = find_registry()
            self._stop = threading.Event()
            self._reporter = threading.Thread(target=self._report_loop, name="livesight-report", daemon=True)
            self._reporter.start()

        def _report_loop(self) -> None:
            while True:
                if self._registry is not None:
                    try:
                        self._registry.report.remote(self._engine.info())
                    except Exception as exc:  # noqa: BLE001 - the registry is best effort
                        logger.debug("report failed: %s", exc)
                if self._stop.wait(REPORT_INTERVAL_S):
                    return

        @app.websocket("/")
        async def websocket(self, websocket: WebSocket) -> None:
            await self._engine.handle(websocket)

        @app.get("/healthz")
        def healthz(self) -> dict:
            self._engine.check_health()
            return {"ok": True, **self._engine.info()}

        @app.get("/session")
        def session(self, request: Request):
            from app.serving.cluster.replica import session_key

            key = session_key(request.headers, request.url.query, cluster.session_header)
            stats = self._engine.session_stats(key) if key else None
            if stats is None:
                return JSONResponse({"error": f"no session {key!r} on the replica that owns it "
                                              f"({self._engine.replica['replica']})"}, status_code=404)
            return stats

        def check_health(self) -> None:
            self._engine.check_health()

        # ---- the page's operations (handle calls routed by session key; see page_ops) -------------
        def page_info(self):
            return guarded(self._engine.pages.info)

        def page_open(self, key: str, overrides: dict | None = None, owner: str | None = None):
            return guarded(self._engine.pages.open, key, overrides, owner=owner)

        def page_call(self, key: str, method: str, args: tuple = (), kwargs: dict | None = None):
            return guarded(self._engine.pages.call, key, method, args, kwargs)

        def page_events(self, key: str, after: int = 0):
            return guarded(self._engine.pages.events, key, after)

        def page_close(self, key: str, reason: str = "page closed"):
            return guarded(self._engine.pages.close, key, reason)

        def page_upload(self, key: str, upload_id: str | None, data: bytes):
            return guarded(self._engine.pages.upload, key, upload_id, data)

        def page_play_upload(self, key: str, upload_id: str, name: str, fps: float | None = 1.0,
                             realtime: bool = True):
            return guarded(self._engine.pages.play_upload, key, upload_id, name, fps=fps, realtime=realtime)

        def page_ask(self, key: str, question: str, max_new_tokens: int | None = None):
            yield from self._engine.pages.ask(key, question, max_new_tokens)

        def __del__(self) -> None:
            self._stop.set()
            if self._registry is not None:
                try:
                    self._registry.remove.remote(self._engine.replica["replica"])
                except Exception:  # noqa: BLE001 - shutting down regardless
                    pass
            self._engine.close()

    return LiveSightReplica.bind(cluster, opts)


def local_ray_env() -> None:
    """Set the environment a local Ray must start with (before Ray is imported: it reads it once).

    - ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``: every Ray port binds 127.0.0.1 (the node IP alone is
      not enough).
    - Ray token authentication (``RAY_AUTH_MODE=token`` with a fresh random ``RAY_AUTH_TOKEN`` for this
      run), unless ``RAY_AUTH_MODE`` is set already: the one port Ray Serve 2.60 binds on all
      interfaces, each replica's inter-deployment gRPC server (``[::]:0``, fixed in Ray's code), then
      refuses every call without the token. Ray's own tools need ``RAY_AUTH_TOKEN`` to reach it.
    """
    if "ray" in sys.modules:
        if os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER") != "0":
            logger.warning("Ray was imported before RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 was set: its ports may "
                           "listen beyond 127.0.0.1")
        if "RAY_AUTH_MODE" not in os.environ:
            logger.warning("Ray was imported before its token authentication was set up: the replicas' gRPC "
                           "ports accept calls without a token")
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        return
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    if "RAY_AUTH_MODE" not in os.environ:
        import secrets

        os.environ["RAY_AUTH_MODE"] = "token"
        if not os.environ.get("RAY_AUTH_TOKEN") and not os.environ.get("RAY_AUTH_TOKEN_PATH"):
            os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)


def init_ray(cluster: ClusterConfig) -> bool:
    """Start a local Ray bound to 127.0.0.1 (:func:`local_ray_env`), or join ``cluster.ray_address``;
    True when this call started it.

    The router's session header (``RAY_SERVE_SESSION_ID_HEADER_KEY``) is set here for a local Ray; a
    cluster joined by address must have been started with it (docs/cluster.md).
    """
    os.environ["RAY_SERVE_SESSION_ID_HEADER_KEY"] = cluster.session_header
    if cluster.ray_address is None:
        local_ray_env()
    import ray

    if ray.is_initialized():
        return False
    if cluster.ray_address is None:
        ray.init(num_cpus=cluster.local_cpus, include_dashboard=False, object_store_memory=512 * 2**20,
                 _node_ip_address="127.0.0.1", namespace="livesight", log_to_driver=False)
        return True
    ray.init(address=cluster.ray_address, namespace="livesight", log_to_driver=False)
    return True


def deploy(cluster: ClusterConfig, opts, *, host: str, port: int, page_mount: Callable | None = None) -> None:
    """Start Serve's proxy on ``host:port`` and deploy the replicas (returns at once; see
    :func:`wait_replicas`). With ``opts.ui`` and a ``page_mount`` (``ui.page.mount``, handed in by
    the caller: the serving layer does not import the page) the page is deployed as well
    (:func:`deploy_page`)."""
    from ray import serve

    from app.serving.cluster.registry import ensure_registry

    ensure_registry()
    serve.start(http_options={"host": host, "port": port})
    serve.run(build_app(cluster, opts), name=APP_NAME, route_prefix="/", blocking=False)
    if opts.ui and page_mount is not None:
        deploy_page(opts, page_mount)


def deploy_page(opts, page_mount: Callable) -> None:
    """Deploy the Gradio page at ``/page`` of the proxy (one model-free replica; see
    :mod:`app.serving.cluster.page`; ``page_mount`` as :func:`ui.page.mount`). Returns at once; the
    page answers once a replica does."""
    from ray import serve

    from app.serving.cluster.page import PAGE_APP_NAME, PAGE_PREFIX, build_page_app

    serve.run(build_page_app(opts, replica_app=APP_NAME, replica_deployment=DEPLOYMENT_NAME, mount=page_mount),
              name=PAGE_APP_NAME,
              route_prefix=PAGE_PREFIX, blocking=False)


def page_running() -> bool:
    """Whether Serve reports the page's replica RUNNING."""
    from ray import serve

    from app.serving.cluster.page import PAGE_APP_NAME, PAGE_DEPLOYMENT_NAME

    app = serve.status().applications.get(PAGE_APP_NAME)
    deployment = app.deployments.get(PAGE_DEPLOYMENT_NAME) if app is not None else None
    return deployment is not None and int(deployment.replica_states.get("RUNNING", 0)) >= 1


def wait_page(timeout: float = 120.0) -> bool:
    """Wait until the page's replica runs; False when it did not within ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if page_running():
            return True
        time.sleep(0.5)
    return False


def running_replicas() -> int:
    """Replicas Serve reports RUNNING for the deployment (0 when it is not deployed)."""
    from ray import serve

    app = serve.status().applications.get(APP_NAME)
    deployment = app.deployments.get(DEPLOYMENT_NAME) if app is not None else None
    return int(deployment.replica_states.get("RUNNING", 0)) if deployment is not None else 0


def wait_replicas(count: int, timeout: float = 120.0) -> list[dict[str, Any]]:
    """The registry's live replicas once ``count`` of them run (or what runs by ``timeout``).

    Waits until Serve reports ``count`` replicas RUNNING and they reported to the registry, then a
    moment more: the proxy's router learns of new replicas by a long poll, and sessions opened before
    its ring holds every replica would all land on the first one (and move when the ring grows)."""
    from app.serving.cluster.registry import find_registry, live_replicas

    registry = find_registry()
    deadline = time.monotonic() + timeout
    replicas: list[dict] = []
    while time.monotonic() < deadline:
        replicas = live_replicas(registry) if registry is not None else []
        if running_replicas() >= count and len(replicas) >= count:
            time.sleep(ROUTER_SETTLE_S)
            break
        time.sleep(0.5)
    return replicas


def shutdown(started_ray: bool) -> None:
    """Remove the application (replicas save and close their sessions) and stop Serve; stop Ray if started here."""
    import ray
    from ray import serve

    try:
        serve.shutdown()
    finally:
        if started_ray:
            ray.shutdown()


def run_cluster(cluster: ClusterConfig, opts, *, out: TextIO = sys.stdout, stop: threading.Event | None = None,
                page_mount: Callable | None = None) -> int:
    """``livesight serve --ray``: deploy, print where each replica runs and how many sessions it holds
    (again whenever that changes), serve until Ctrl-C, SIGTERM or ``stop``; returns an exit status.

    ``page_mount``: :func:`ui.page.mount` to serve the page too (with ``opts.ui``)."""
    import signal

    from app.serving.cluster.registry import describe, find_registry, live_replicas

    stop = stop or threading.Event()
    started = init_ray(cluster)
    previous = None
    try:
        deploy(cluster, opts, host=opts.host, port=opts.ws_port, page_mount=page_mount)
        replicas = wait_replicas(cluster.replicas)
        host = f"[{opts.host}]" if ":" in opts.host else opts.host
        out.write(f"model: {opts.model}\nmemory root: {cluster.memory_root}\n")
        out.write(f"websocket API: ws://{host}:{opts.ws_port}/  (session id in the {cluster.session_header} header"
                  + ("; bearer token required" if opts.token else "") + ")\n")
        if opts.ui and page_mount is not None:
            from app.serving.cluster.page import page_auth, page_url

            ok = wait_page()
            out.write(f"page: {page_url(opts.host, opts.ws_port)}"
                      + ("  (user livesight, the token as password)" if page_auth(opts.host, opts.token) else "")
                      + ("" if ok else "  (not running yet: see the Ray logs)") + "\n")
        else:
            out.write("page: off (--no-ui)\n")
        shown = describe(replicas)
        for line in shown:
            out.write(line + "\n")
        out.write("ready (Ctrl-C stops)\n")
        out.flush()
        if threading.current_thread() is threading.main_thread():
            def handler(signum, frame) -> None:
                stop.set()
            previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
        registry = find_registry()
        while not stop.wait(REPORT_INTERVAL_S):
            if registry is None:
                continue
            try:
                lines = describe(live_replicas(registry))
            except Exception as exc:  # noqa: BLE001 - the registry is best effort
                logger.debug("registry read failed: %s", exc)
                continue
            if lines != shown:
                shown = lines
                for line in lines or ["no replica is up"]:
                    out.write(line + "\n")
                out.flush()
    except KeyboardInterrupt:
        pass
    finally:
        out.write("stopping: replicas save their sessions to the memory root\n")
        out.flush()
        shutdown(started)
        for sig, h in (previous or {}).items():
            signal.signal(sig, h)
        out.write("stopped\n")
        out.flush()
    return 0
