"""The replica's websocket ingress without Ray: a real FastAPI app on uvicorn (what Ray Serve runs in
each replica) handing connections to a real :class:`ReplicaEngine`, driven by a real websockets
client: token checks, the three ways to name a session, the subprotocol echo, refusals.

No ``from __future__ import annotations`` here: FastAPI reads the route's ``WebSocket`` annotation at run time."""


import asyncio
import json
import socket
import threading
import time

import pytest

from app.engine.config import SessionConfig
from app.serving.limits import ManagerConfig

TOKEN = "ingress-test-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ingress(tmp_path_factory):
    uvicorn = pytest.importorskip("uvicorn", reason="the ray extra brings uvicorn and FastAPI")
    from fastapi import FastAPI, WebSocket

    from app.serving.cluster.config import ClusterConfig
    from app.serving.cluster.replica import ReplicaEngine
    from app.serving.process import ServeOptions

    root = tmp_path_factory.mktemp("ingress-root")
    engine = ReplicaEngine(
        ClusterConfig(memory_root=str(root)),
        ServeOptions(model="tiny-smolvlm", fallback_model=None, ui=False, token=TOKEN,
                     manager=ManagerConfig(asr=None, max_sessions=2, save_interval_s=1.0,
                                           default_session=SessionConfig(window_tokens=64))),
        {"replica": "local-test"})
    app = FastAPI()

    @app.websocket("/")
    async def ws(websocket: WebSocket) -> None:
        await engine.handle(websocket)

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    yield {"url": f"ws://127.0.0.1:{port}/", "engine": engine}
    server.should_exit = True
    thread.join(10)
    engine.close()


async def open_session(url: str, *, headers=None, subprotocols=None):
    from websockets.asyncio.client import connect

    ws = await connect(url, additional_headers=headers, subprotocols=subprotocols, proxy=None, open_timeout=20)
    first = json.loads(await asyncio.wait_for(ws.recv(), 30))
    return ws, first


async def stats(ws) -> dict:
    await ws.send(json.dumps({"type": "session.stats", "event_id": "s1"}))
    while True:
        msg = json.loads(await asyncio.wait_for(ws.recv(), 30))
        if msg.get("reply_to") == "s1":
            return msg["stats"]


def test_tokens_are_checked(ingress):
    from websockets.exceptions import InvalidStatus

    async def main() -> None:
        for headers in (None, {"Authorization": "Bearer wrong"}):
            with pytest.raises(InvalidStatus) as info:
                await open_session(ingress["url"] + "?session=t1", headers=headers)
            assert info.value.response.status_code == 403
        ws, first = await open_session(ingress["url"] + f"?session=t1&token={TOKEN}")
        assert first["type"] == "session.created"
        await ws.close()

    asyncio.run(main())


def test_the_session_is_named_by_header_subprotocol_or_url(ingress):
    auth = {"Authorization": f"Bearer {TOKEN}"}

    async def main() -> None:
        ws, _ = await open_session(ingress["url"], headers={**auth, "x-session-id": "by-header"})
        assert (await stats(ws))["cluster"]["key"] == "by-header"
        await ws.close()
        ws, _ = await open_session(ingress["url"], headers=auth, subprotocols=["by-subprotocol"])
        assert ws.subprotocol == "by-subprotocol"  # accepted, or a browser would fail the connection
        st = await stats(ws)
        assert st["cluster"]["key"] == "by-subprotocol" and st["cluster"]["replica"] == "local-test"
        await ws.close()
        ws, _ = await open_session(ingress["url"] + "?session=by-url", headers=auth)
        assert (await stats(ws))["cluster"]["key"] == "by-url"
        await ws.close()
        ws, first = await open_session(ingress["url"], headers={**auth, "x-session-id": "../etc"})
        assert first["type"] == "error" and first["error"]["code"] == "invalid_event"
        assert "session id" in first["error"]["message"]

    asyncio.run(main())


def test_a_full_replica_answers_session_limit(ingress):
    auth = {"Authorization": f"Bearer {TOKEN}"}

    async def main() -> None:
        held = []
        for key in ("full-1", "full-2"):
            ws, first = await open_session(ingress["url"], headers={**auth, "x-session-id": key})
            assert first["type"] == "session.created"
            held.append(ws)
        ws, first = await open_session(ingress["url"], headers={**auth, "x-session-id": "full-3"})
        assert first["type"] == "error" and first["error"]["code"] == "session_limit"
        for ws in held:
            await ws.close()

    asyncio.run(main())
