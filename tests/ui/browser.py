"""Helpers of the browser test: the fake-camera clip and finding Debian's Chromium.

Chromium's fake capture device plays a Y4M file in a loop; :func:`write_y4m_clip` writes one
with numpy (a moving square, then a hard cut to a different scene).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np

CHROMIUM = "/usr/bin/chromium"

#: Chromium flags: headless-friendly, a fake camera fed from a file, no network chatter.
CHROMIUM_ARGS = (
    "--no-sandbox",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
)


def write_y4m_clip(path: Path, *, width: int = 320, height: int = 240, fps: int = 10, moving: int = 20,
                   after_cut: int = 20) -> Path:
    """Write a YUV 4:2:0 Y4M clip: ``moving`` frames of a bright square sliding right on a dark
    background, then a hard cut to ``after_cut`` frames of a bright, striped scene.

    Returns:
        ``path``.
    """
    if width % 2 or height % 2:
        raise ValueError(f"Y4M 4:2:0 needs even sizes; got {width}x{height}")
    header = f"YUV4MPEG2 W{width} H{height} F{fps}:1 Ip A1:1 C420jpeg\n".encode("ascii")
    cw, ch = width // 2, height // 2
    with open(path, "wb") as fh:
        fh.write(header)
        for i in range(moving):
            y = np.full((height, width), 40, np.uint8)
            x0 = 10 + i * (width - 80) // max(1, moving - 1)
            y[height // 3: height // 3 + 60, x0: x0 + 60] = 220
            u = np.full((ch, cw), 128, np.uint8)
            v = np.full((ch, cw), 128, np.uint8)
            v[height // 6: height // 6 + 30, x0 // 2: x0 // 2 + 30] = 200  # a red-ish square
            fh.write(b"FRAME\n" + y.tobytes() + u.tobytes() + v.tobytes())
        stripes = ((np.arange(width) // 20) % 2 * 120 + 100).astype(np.uint8)
        for _ in range(after_cut):
            y = np.tile(stripes, (height, 1))
            u = np.full((ch, cw), 90, np.uint8)  # a blue-green scene: a different shot
            v = np.full((ch, cw), 100, np.uint8)
            fh.write(b"FRAME\n" + y.tobytes() + u.tobytes() + v.tobytes())
    return path


def under_make() -> bool:
    """True when the tests run under ``make`` (make exports MAKELEVEL to its recipes) or when
    LIVESIGHT_REQUIRE_BROWSER=1: then a missing browser is a failure, never a skip."""
    return bool(os.environ.get("MAKELEVEL")) or os.environ.get("LIVESIGHT_REQUIRE_BROWSER") == "1"


def chromium_problem(try_install: bool = True) -> str | None:
    """Why Chromium cannot be used here (None when ``/usr/bin/chromium`` exists).

    When it is missing and ``try_install``, one ``apt-get install -y chromium`` is attempted
    (as root, or through password-less sudo).
    """
    if os.path.exists(CHROMIUM):
        return None
    if try_install:
        cmd = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "chromium"]
        if os.geteuid() != 0:
            if shutil.which("sudo") is None:
                return f"{CHROMIUM} is missing and there is no sudo to install it (apt-get install -y chromium)"
            cmd = ["sudo", "-n", *cmd]
        try:
            result = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                                    env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"{CHROMIUM} is missing and apt-get install chromium failed: {exc}"
        if os.path.exists(CHROMIUM):
            return None
        tail = (result.stderr.strip().splitlines() or ["no output"])[-1]
        return f"{CHROMIUM} is missing and apt-get install chromium failed: {tail}"
    return f"{CHROMIUM} is missing (apt-get install -y chromium; make test installs it)"


@contextlib.contextmanager
def open_tab(chromium_path: str, url: str, *, camera: Path, microphone: Path | None = None,
             session_prefix: str = "sess_", timeout_ms: int = 30_000):
    """A headless Chromium tab on the page at ``url``, its fake camera (and microphone) fed from files.

    Waits until the page load created the tab's own session: its id (starting ``session_prefix``;
    ``page-`` under ``serve --ray``) shown in the header.

    Yields:
        ``(tab, session_id)``: the Playwright page and the session id its header shows.
    """
    from playwright.sync_api import sync_playwright

    args = [*CHROMIUM_ARGS, f"--use-file-for-fake-video-capture={camera}"]
    if microphone is not None:
        args.append(f"--use-file-for-fake-audio-capture={microphone}")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path, headless=True, args=args)
        try:
            tab = browser.new_page(viewport={"width": 1440, "height": 1000})
            tab.goto(url, wait_until="domcontentloaded")
            header = tab.locator("#ls-header code", has_text=session_prefix)
            header.wait_for(timeout=timeout_ms)
            yield tab, header.inner_text().strip()
        finally:
            browser.close()
