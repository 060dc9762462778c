"""Source labels: how evidence names the input a moment came from, never with secrets in it."""

from __future__ import annotations

import pytest

from streaming.labels import MAX_LABEL_CHARS, clean_label, source_label


@pytest.mark.parametrize(("spec", "label"), [
    ("webcam:0", "webcam 0"),
    ("/dev/video2", "webcam /dev/video2"),
    ("/data/clips/bikes.mp4", "file bikes.mp4"),
    ("file:///data/clips/my%20clip.mkv", "file my clip.mkv"),
    ("rtsp://admin:hunter2@cam.example:554/live?token=s3cret#x", "rtsp://cam.example:554/live"),
    ("https://user@Videos.Example.com/a/b.m3u8?sig=abc", "https://videos.example.com/a/b.m3u8"),
    ("rtsp://[fe80::1]:8554/cam", "rtsp://[fe80::1]:8554/cam"),
])
def test_a_source_is_named_as_a_person_would_without_credentials_or_query(spec, label):
    assert source_label(spec) == label
    assert "hunter2" not in source_label(spec) and "s3cret" not in source_label(spec)


def test_labels_are_printable_and_bounded():
    assert clean_label("  file a\nb.mp4\x00 ") == "file a b.mp4"
    assert clean_label("") is None and clean_label(None) is None
    long = clean_label("x" * 1000)
    assert len(long) == MAX_LABEL_CHARS and long.endswith("...")
    with pytest.raises(ValueError, match="must be a string; got int"):
        clean_label(3)
