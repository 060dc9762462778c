"""A real RTSP server for tests: GStreamer's gst-rtsp-server serving a live H.264 test pattern.

Run it with Debian's ``/usr/bin/python3`` (which has ``gi``), not the project's venv::

    /usr/bin/python3 tests/rtsp_server.py --port 8554 --mount /cam

It binds to 127.0.0.1 only, prints ``READY rtsp://127.0.0.1:PORT/MOUNT`` on stdout once it
listens, and runs until it gets SIGTERM or SIGINT. The stream is a live ``videotestsrc``
(a moving ball) encoded with ``openh264enc`` with a short GOP so a client gets its first
keyframe quickly. With ``--audio FILE.wav`` it also carries that WAV as an Opus audio track
(``pay1``), played in real time from when a client starts playing; when the WAV ends the
audio track stops and the video goes on; ``--video no`` leaves the video out (an audio-only
stream). Exit code 3 means the GStreamer RTSP bindings could
not be imported.
"""

from __future__ import annotations

import argparse
import signal
import sys

#: GStreamer elements the audio track needs.
AUDIO_ELEMENTS = ("filesrc", "wavparse", "audioconvert", "audioresample", "opusenc", "rtpopuspay")


def build_launch(width: int, height: int, fps: int, gop: int, pattern: str, audio: str | None = None,
                 video: bool = True) -> str:
    """The media factory's launch line: an H.264 RTP payloader named ``pay0`` and, with
    ``audio`` (a WAV path), an Opus one named ``pay1`` (``pay0`` when ``video`` is False)."""
    parts = []
    if video:
        parts.append(
            f"videotestsrc is-live=true pattern={pattern} "
            f"! video/x-raw,width={width},height={height},framerate={fps}/1,format=I420 "
            f"! openh264enc gop-size={gop} ! h264parse "
            f"! rtph264pay name=pay0 pt=96 config-interval=1"
        )
    if audio:
        location = audio.replace("\\", "\\\\").replace('"', '\\"')
        parts.append(f'filesrc location="{location}" ! wavparse ! audioconvert ! audioresample '
                     f"! opusenc ! rtpopuspay name=pay{len(parts)} pt=97")
    if not parts:
        raise ValueError("the stream needs video, audio or both")
    return f"( {' '.join(parts)} )"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mount", default="/cam")
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--fps", type=int, default=10)
    parser.add_argument("--gop", type=int, default=10)
    parser.add_argument("--pattern", default="ball")
    parser.add_argument("--audio", default=None, help="a WAV file to carry as an Opus audio track")
    parser.add_argument("--video", default="yes", choices=("yes", "no"),
                        help="carry the video test pattern (no: an audio-only stream; needs --audio)")
    args = parser.parse_args(argv)
    if args.video == "no" and not args.audio:
        parser.error("--video no needs --audio")

    try:
        import gi

        gi.require_version("Gst", "1.0")
        gi.require_version("GstRtspServer", "1.0")
        from gi.repository import GLib, Gst, GstRtspServer
    except (ImportError, ValueError) as exc:
        sys.stderr.write(f"cannot import gi's GstRtspServer: {exc}\n")
        return 3

    Gst.init(None)
    if args.audio:
        missing = [e for e in AUDIO_ELEMENTS if Gst.ElementFactory.find(e) is None]
        if missing:
            sys.stderr.write(f"GStreamer lacks {', '.join(missing)} for the audio track "
                             f"(gstreamer1.0-plugins-base/-good)\n")
            return 5
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(build_launch(args.width, args.height, args.fps, args.gop, args.pattern, args.audio,
                                    video=args.video == "yes"))
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
