"""A real RTSP server for tests: GStreamer's gst-rtsp-server serving a live H.264 test pattern.

Run it with Debian's ``/usr/bin/python3`` (which has ``gi``), not the project's venv::

    /usr/bin/python3 tests/rtsp_server.py --port 8554 --mount /cam

It binds to 127.0.0.1 only, prints ``READY rtsp://127.0.0.1:PORT/MOUNT`` on stdout once it
listens, and runs until it gets SIGTERM or SIGINT. The stream is a live ``videotestsrc``
(a moving ball) encoded with ``openh264enc`` with a short GOP so a client gets its first
keyframe quickly. Exit code 3 means the GStreamer RTSP bindings could not be imported.
"""

from __future__ import annotations

import argparse
import signal
import sys


def build_launch(width: int, height: int, fps: int, gop: int, pattern: str) -> str:
    """The media factory's launch line (one H.264 RTP payloader named ``pay0``)."""
    return (
        f"( videotestsrc is-live=true pattern={pattern} "
        f"! video/x-raw,width={width},height={height},framerate={fps}/1,format=I420 "
        f"! openh264enc gop-size={gop} ! h264parse "
        f"! rtph264pay name=pay0 pt=96 config-interval=1 )"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mount", default="/cam")
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--fps", type=int, default=10)
    parser.add_argument("--gop", type=int, default=10)
    parser.add_argument("--pattern", default="ball")
    args = parser.parse_args(argv)

    try:
        import gi

        gi.require_version("Gst", "1.0")
        gi.require_version("GstRtspServer", "1.0")
        from gi.repository import GLib, Gst, GstRtspServer
    except (ImportError, ValueError) as exc:
        sys.stderr.write(f"cannot import gi's GstRtspServer: {exc}\n")
        return 3

    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(build_launch(args.width, args.height, args.fps, args.gop, args.pattern))
    factory.set_shared(True)
    server.get_mount_points().add_factory(args.mount, factory)
    if server.attach(None) == 0:
        sys.stderr.write(f"cannot listen on 127.0.0.1:{args.port}\n")
        return 4

    loop = GLib.MainLoop()

    def stop(*_: object) -> bool:
        loop.quit()
        return False

    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGTERM, stop)
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGINT, stop)
    sys.stdout.write(f"READY rtsp://127.0.0.1:{args.port}{args.mount}\n")
    sys.stdout.flush()
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
