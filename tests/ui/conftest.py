"""Fixtures of the page tests: the real page served in-process on a free loopback port.

The page runs on a :class:`app.serving.manager.SessionManager` with the ``tiny-smolvlm`` backend (random
weights: the answers mean nothing, but every byte of them goes through the real model, the
real session, the real manager and the real Gradio server).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.conftest import free_port, wait_until  # noqa: F401 - wait_until: the ui tests import it from here

#: Environment the Gradio server reads: no telemetry, quick detection of departed clients.
GRADIO_ENV = {"GRADIO_ANALYTICS_ENABLED": "False", "GRADIO_HEARTBEAT_INTERVAL": "0.5"}


@dataclass
class PageServer:
    """A running page: its URL, the manager behind it and the Blocks."""

    url: str
    manager: object
    demo: object

    @property
    def tabs(self):
        """The page's :class:`ui.tabs.TabRegistry` (``session_hash`` -> session id)."""
        return self.demo.livesight_tabs


@pytest.fixture(scope="session")
def ui_backend():
    from app.engine.backends.registry import load_backend

    return load_backend("tiny-smolvlm", device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def chromium_path() -> str:
    """Debian's Chromium for the browser tests: under ``make test`` its absence fails the test; elsewhere it
    is installed with apt-get when possible, and the test skips, saying why, only when that fails."""
    from tests.ui.browser import CHROMIUM, chromium_problem, under_make

    problem = chromium_problem(try_install=True)
    if problem:
        if under_make():
            pytest.fail(f"the browser test needs Chromium: {problem}")
        pytest.skip(problem)
    return CHROMIUM


@pytest.fixture(scope="session")
def page_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in (*GRADIO_ENV, "GRADIO_TEMP_DIR")}
    os.environ.update(GRADIO_ENV)
    os.environ["GRADIO_TEMP_DIR"] = str(tmp_path_factory.mktemp("gradio-uploads"))
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@contextlib.contextmanager
def launch_page(backend, *, asr=None, session: dict | None = None, allow_file_sources: bool = False) -> Iterator[PageServer]:
    """The page over ``backend`` on ``http://127.0.0.1:<free port>/`` with a fresh manager (speech
    recognition with ``asr``, an ``ASRConfig``; None: off; ``session``: settings of its sessions on
    top of the tests' defaults; ``allow_file_sources`` as ``livesight serve --allow-file-sources``)."""
    from app.engine.config import SessionConfig
    from app.serving.limits import ManagerConfig
    from app.serving.manager import SessionManager
    from ui.config import PageConfig
    from ui.page import build_page, launch_options

    manager = SessionManager(
        backend,
        ManagerConfig(max_sessions=8, max_fps=10.0,
                      default_session=SessionConfig(**{"window_tokens": 32, "max_new_tokens": 48, **(session or {})}),
                      asr=asr, allow_file_sources=allow_file_sources),
    )
    for attempt in range(5):
        port = free_port()
        demo = build_page(manager, PageConfig(stats_every_s=0.5, source_fps=4.0))
        try:
            demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, show_error=True,
                        quiet=True, **launch_options())
            break
        except ValueError as exc:
            # Gradio gives up when its own server does not answer one HEAD request within 3 s, which a
            # machine under heavy load can miss; the server it started is stopped before the next try
            demo.close()
            if "localhost is not accessible" not in str(exc) or attempt == 4:
                manager.shutdown()
                raise
    try:
        yield PageServer(f"http://127.0.0.1:{port}/", manager, demo)
    finally:
        demo.close()
        manager.shutdown()


@pytest.fixture(scope="module")
def page(ui_backend, page_env) -> Iterator[PageServer]:
    """The page over the tiny SmolVLM with a fresh manager (one per test module)."""
    with launch_page(ui_backend) as server:
        yield server


@pytest.fixture(scope="module")
def speech_page(ui_backend, page_env) -> Iterator[PageServer]:
    """The page with speech on (the offline Whisper tiny.en): microphone, transcript, speech evidence."""
    from app.engine.speech import ASRConfig

    with launch_page(ui_backend, asr=ASRConfig()) as server:
        yield server
