"""Speech: a stream's audio becomes timed text (:class:`SpeechSegment`) that enters the session's memory.

* :mod:`.config`: :class:`ASRConfig`, :class:`SpeechSegment`, :func:`parse_asr` (``--asr MODEL|off``).
* :mod:`.models`: the offline default model's folder; one loaded faster-whisper model per process.
* :mod:`.vad`: Silero VAD over a stream, block by block.
* :mod:`.transcriber`: :class:`Transcriber`, VAD + faster-whisper on a thread of its own.
* :mod:`.names`: the offline default's name (imports nothing, for ``--help``).

Names are loaded on first use; importing this package loads neither faster-whisper nor torch.
"""

from __future__ import annotations

import importlib

from app.engine.speech.names import OFFLINE_MODEL

__all__ = ["OFFLINE_MODEL", "ASRConfig", "ASRError", "SpeechSegment", "Transcriber", "parse_asr"]

_EXPORTS = {
    "ASRConfig": "app.engine.speech.config",
    "ASRError": "app.engine.speech.config",
    "SpeechSegment": "app.engine.speech.config",
    "parse_asr": "app.engine.speech.config",
    "Transcriber": "app.engine.speech.transcriber",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
