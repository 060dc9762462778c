"""A ``livesight serve`` subprocess for the benches that measure a server over its websocket API.

The bench layer does not import serving, so a bench starts the real command, waits for its ready
line and talks to it with a plain websocket client.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

#: What ``livesight serve`` prints once it accepts connections.
READY_LINE = "ready (Ctrl-C stops)"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serve_subprocess(serve_args: Sequence[str], *, threads: int, env: Mapping[str, str] | None = None,
                     start_timeout_s: float = 300.0, stop_timeout_s: float = 60.0,
                     what: str = "livesight serve") -> Iterator[subprocess.Popen]:
    """Run ``livesight serve SERVE_ARGS`` until the ``with`` block ends; yields the process once ready.

    ``threads`` bounds its torch/OpenMP threads; ``env`` adds to the environment. It is stopped with
    SIGINT (a clean shutdown: sessions saved) and killed after ``stop_timeout_s``.

    Raises:
        RuntimeError: it exited or was not ready within ``start_timeout_s`` (its last output attached).
    """
    cmd = [sys.executable, "-m", "app.cli.main", "serve", *serve_args]
    full_env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), **(env or {})}
    out = tempfile.TemporaryFile()
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=full_env)
    try:
        deadline = time.monotonic() + start_timeout_s
        while True:
            out.seek(0)
            text = out.read().decode("utf-8", "replace")
            if READY_LINE in text:
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not start:\n{text[-2000:]}")
            time.sleep(0.5)
        yield proc
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(stop_timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        out.close()
