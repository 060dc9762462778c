"""The Gradio page under ``livesight serve --ray``: a model-free Serve deployment (one replica) at
:data:`PAGE_PREFIX` on the same proxy as the websocket API.

A tab's many HTTP/SSE requests carry no session header, so they cannot be routed to the session's
owner by the proxy. Instead the page runs here, with a :class:`RemoteManager` as its session
manager: each tab's session is a keyed session (``page-<random>``), and every operation on it is a
handle call routed by that key (``handle.options(session_id=key)``) to the replica that owns it,
the same owner the consistent-hash router picks for a websocket naming that key. Answers stream
back through a streaming handle call; alerts and source events are polled from the owner.

Importing this module imports neither Ray nor Gradio; :func:`build_page_app` does (inside the replica).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

PAGE_APP_NAME = "livesight-page"
PAGE_DEPLOYMENT_NAME = "LiveSightPage"
#: Where the page is served on the Serve proxy (the websocket API has ``/``).
PAGE_PREFIX = "/page"
#: Requests the page replica takes at once: every open tab holds a few long ones (its event stream,
#: a streaming answer, the webcam's stream) besides short ones.
PAGE_MAX_REQUESTS = 1000


def page_url(host: str, port: int) -> str:
    """The page's address on the Serve proxy (``host``/``port`` of ``http_options``)."""
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}{PAGE_PREFIX}/"


def page_auth(host: str, token: str | None) -> tuple[str, str] | None:
    """HTTP basic auth of the page, as the single-process page has it: beyond loopback with a token,
    user ``livesight`` and the token as password; None otherwise."""
    from app.serving.ws_server import is_loopback

    return ("livesight", token) if token and not is_loopback(host) else None


def build_page_app(opts, *, replica_app: str, replica_deployment: str, mount: Callable):
    """The bound Serve application of the page (``serve.run`` it with ``route_prefix=PAGE_PREFIX``).

    Args:
        opts: :class:`~app.serving.process.ServeOptions` (``host`` and ``token`` decide the page's auth).
        replica_app, replica_deployment: the replicas' Serve application and deployment names.
        mount: :func:`ui.page.mount` (``mount(app, manager, path, auth=...)``), handed in by the command
            line: the page sits above the serving layer, which does not import it.
    """
    from ray import serve

    auth = page_auth(opts.host, opts.token)

    @serve.deployment(name=PAGE_DEPLOYMENT_NAME, num_replicas=1, max_ongoing_requests=PAGE_MAX_REQUESTS,
                      ray_actor_options={"num_cpus": 0}, graceful_shutdown_timeout_s=10.0)
    @serve.ingress()
    class LiveSightPage:
        async def __init__(self) -> None:
            from app.serving.cluster.remote_manager import RemoteManager, ServeTransport, unwrap

            logging.basicConfig(level=logging.INFO)
            handle = serve.get_deployment_handle(replica_deployment, app_name=replica_app)
            # asked here, on the replica's loop (a blocking call is refused there); the page's own calls
            # come from Gradio's worker threads and block
            info = unwrap(await handle.page_info.remote())
            self._manager = RemoteManager(ServeTransport(handle), info=info)

        def __serve_build_asgi_app__(self) -> Any:
            from fastapi import FastAPI

            app = FastAPI(title="LiveSight page")
            return mount(app, self._manager, "/", **({"auth": auth} if auth else {}))

        def __del__(self) -> None:
            manager = getattr(self, "_manager", None)
            if manager is not None:
                manager.shutdown()

    return LiveSightPage.bind()
