"""LiveSight ingestion: frame (and audio) sources (file, URL, webcam, push), the sampler and ingest stats.

Names are loaded on first use (PEP 562), so ``import streaming`` or
``from streaming.frame import Frame`` does not pull in PyAV or OpenCV.

This package never imports transformers or gradio.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Frame": "streaming.frame",
    "FrameSource": "streaming.base",
    "SourceCounters": "streaming.base",
    "SourceInfo": "streaming.info",
    "Gap": "streaming.info",
    "FileSource": "streaming.file_source",
    "URLSource": "streaming.url_source",
    "WebcamSource": "streaming.webcam_source",
    "PushSource": "streaming.push_source",
    "open_source": "streaming.factory",
    "DEFAULT_ALLOWED_SCHEMES": "streaming.schemes",
    "SamplerConfig": "streaming.sampler",
    "Sampler": "streaming.sampler",
    "IngestStats": "streaming.stats",
    "SourceError": "streaming.errors",
    "SourceNotFound": "streaming.errors",
    "NotAVideo": "streaming.errors",
    "AudioOnly": "streaming.errors",
    "CorruptStream": "streaming.errors",
    "SourceUnreachable": "streaming.errors",
    "AccessDenied": "streaming.errors",
    "SchemeNotAllowed": "streaming.errors",
    "WebcamUnavailable": "streaming.errors",
    "SourceTimeout": "streaming.errors",
    "SourceClosed": "streaming.errors",
    "InvalidFrame": "streaming.errors",
    "InvalidAudio": "streaming.errors",
    "AudioChunk": "streaming.audio",
    "AUDIO_RATE": "streaming.audio",
    "source_label": "streaming.labels",
    "HostPolicy": "streaming.hosts",
    "HostNotAllowed": "streaming.hosts",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'streaming' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
