"""Fixtures of the streaming tests: real HTTP servers on free loopback ports."""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        pass


@pytest.fixture
def local_http() -> Iterator[Callable[[Path | type[http.server.BaseHTTPRequestHandler]], str]]:
    """``local_http(folder)`` or ``local_http(HandlerClass)`` -> ``http://127.0.0.1:PORT`` of a real
    threaded HTTP server serving that folder (or answering with that handler); stopped at teardown."""
    servers: list[http.server.ThreadingHTTPServer] = []

    def start(what) -> str:
        handler = functools.partial(_Quiet, directory=str(what)) if isinstance(what, Path) else what
        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        srv.daemon_threads = True
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        return f"http://127.0.0.1:{srv.server_address[1]}"

    yield start
    for srv in servers:
        srv.shutdown()
        srv.server_close()
