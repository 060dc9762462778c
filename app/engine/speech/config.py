"""Speech settings and the timed text a transcriber hands out.

:class:`ASRConfig` is frozen and validated like every other config (errors name the field and its
range, raised as :class:`app.engine.config.ConfigError`); :func:`parse_asr` turns the command line's
``--asr MODEL|off`` into one. Nothing here imports faster-whisper.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from app.engine.config import ConfigError
from app.engine.speech.names import OFFLINE_MODEL
from streaming.checks import check_bool, check_int, check_number

__all__ = ["ASRConfig", "ASRError", "OFFLINE_MODEL", "SpeechSegment", "parse_asr"]


#: ``--asr`` values that turn speech off.
OFF_VALUES = ("off", "none", "no", "false", "0")

_LANGUAGE = re.compile(r"^[a-z]{2,3}(-[a-z]{2,4})?$")


class ASRError(RuntimeError):
    """A speech model could not be loaded or run; the message names the model and what to do."""

    #: the websocket API's error code for this failure.
    code = "invalid_config"


@dataclass(frozen=True)
class SpeechSegment:
    """Words heard in the stream.

    Attributes:
        t_start: stream time (seconds, the clock of the source's frames) the words began.
        t_end: stream time they ended (``>= t_start``).
        text: the words, stripped.
    """

    t_start: float
    t_end: float
    text: str

    @property
    def duration(self) -> float:
        return self.t_end - self.t_start


@dataclass(frozen=True)
class ASRConfig:
    """How a stream's audio becomes timed text.

    Attributes:
        model: a faster-whisper model name (``small``, ``distil-large-v3``: needs the hub or its cache), a
            local CTranslate2 model directory, or :data:`OFFLINE_MODEL` (Whisper tiny.en shipped in a package).
        vad: voice activity detection: transcribe only speech, cut at its pauses (off: every audio
            window is transcribed, cut at its quietest moment).
        threads: CPU threads of the speech model. [1, 64]
        max_queue_s: audio waiting for transcription, in seconds; beyond it the oldest audio is dropped
            (and counted). (0, 3600]
        beam_size: beam search width (1 = greedy). [1, 16]
        language: the spoken language code (``"en"``), or ``None`` to detect it (multilingual models only).
    """

    model: str = OFFLINE_MODEL
    vad: bool = True
    threads: int = 1
    max_queue_s: float = 60.0
    beam_size: int = 1
    language: str | None = "en"

    def __post_init__(self) -> None:
        err = {"error": ConfigError}
        if not isinstance(self.model, str) or not self.model.strip():
            raise ConfigError(f"asr.model must be a model name or directory; got {self.model!r}")
        check_bool("asr.vad", self.vad, **err)
        check_int("asr.threads", self.threads, low=1, high=64, **err)
        check_number("asr.max_queue_s", self.max_queue_s, low=0.0, high=3600.0, **err)
        check_int("asr.beam_size", self.beam_size, low=1, high=16, **err)
        if self.language is not None and (not isinstance(self.language, str) or not _LANGUAGE.match(self.language)):
            raise ConfigError(f"asr.language must be a language code such as 'en' or None; got {self.language!r}")

    @property
    def is_offline_default(self) -> bool:
        return self.model == OFFLINE_MODEL


def parse_asr(value: str | None, **settings) -> ASRConfig | None:
    """``--asr MODEL|off`` -> an :class:`ASRConfig` for MODEL (``settings`` are its other fields), or
    ``None`` for ``off``.

    Raises:
        ConfigError: an empty value or an invalid setting.
    """
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"--asr must be a model name, a directory or off; got {value!r}")
    if value.strip().lower() in OFF_VALUES:
        return None
    return ASRConfig(model=value.strip(), **settings)
