"""Speech tests: real espeak-ng speech (``speech_media``) through real PyAV sources and real faster-whisper."""

from __future__ import annotations

import os

import pytest

from streaming.audio import AudioChunk


@pytest.fixture(autouse=True, scope="session")
def _hub_offline():
    """The offline model is a local directory; nothing should try the hub."""
    old = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    yield
    if old is None:
        os.environ.pop("HF_HUB_OFFLINE", None)
    else:
        os.environ["HF_HUB_OFFLINE"] = old


def file_chunks(path) -> list[AudioChunk]:
    """Every audio chunk a real :class:`~streaming.file_source.FileSource` decodes from ``path``."""
    from streaming.file_source import FileSource

    chunks: list[AudioChunk] = []
    with FileSource(str(path), audio=True) as src:
        src.on_audio(chunks.append)
        for _ in src:
            pass
    return chunks
