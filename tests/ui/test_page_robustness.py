"""The page's rules and messages, over the real manager and the tiny SmolVLM: settings that name
server paths follow the websocket API's rule (refused unless --allow-file-sources); a question with
nothing watched is told so without generating; the settings form's refusals name its labels; the
source box never shows Gradio's progress text; watch rules are numbered with a count of checks and a
labelled remove menu; error messages never lead with a Python class name.
"""

from __future__ import annotations

import dataclasses

import pytest

from app.engine.types import WatchRule
from ui import render
from ui.actions import NOTHING_WATCHED, PageActions, PageError, nothing_watched
from ui.tabs import TabRegistry

from .conftest import launch_page


def _client(url: str):
    from gradio_client import Client

    return Client(url, verbose=False)


@pytest.fixture()
def manager(ui_backend):
    from app.engine.config import SessionConfig
    from app.serving.limits import ManagerConfig
    from app.serving.manager import SessionManager

    m = SessionManager(ui_backend, ManagerConfig(default_session=SessionConfig(window_tokens=32, max_new_tokens=8)))
    yield m
    m.shutdown()


@pytest.mark.network
@pytest.mark.timeout(240)
def test_server_paths_refused_from_the_page_unless_file_sources_are_allowed(ui_backend, page_env, tmp_path):
    from gradio_client.exceptions import AppError

    target = tmp_path / "chosen-by-the-client"
    with launch_page(ui_backend) as page:
        client = _client(page.url)
        try:
            for endpoint in ("/settings", "/new_session"):
                with pytest.raises(AppError, match="allow-file-sources"):
                    client.predict({"memory_dir": str(target), "persist": True}, api_name=endpoint)
                with pytest.raises(AppError, match="persist"):
                    client.predict({"persist": True}, api_name=endpoint)
            sid = client.predict(api_name="/stats")["session_id"]
            assert page.manager.session_config(sid).memory_dir is None and not page.manager.session_config(sid).persist
            # the settings of the page's own form still apply
            assert client.predict({"top_k": 3}, api_name="/settings")["top_k"] == 3
        finally:
            client.close()
    assert not target.exists()
    with launch_page(ui_backend, allow_file_sources=True) as page:
        client = _client(page.url)
        try:
            cfg = client.predict({"memory_dir": str(target), "persist": True}, api_name="/settings")
            assert cfg["memory_dir"] == str(target) and cfg["persist"] is True
        finally:
            client.close()


@pytest.mark.network
@pytest.mark.timeout(240)
def test_a_question_with_nothing_watched_is_told_so_without_generating(page):
    from gradio_client.exceptions import AppError

    client = _client(page.url)
    try:
        history, _, details = client.predict("What do you see?", [], api_name="/chat")
        assert details is None
        assert "Nothing watched yet" in str(history[-1]["content"])
        with pytest.raises(AppError, match="Nothing watched yet"):
            client.predict("What do you see?", api_name="/ask")
        sid = client.predict(api_name="/stats")["session_id"]
        assert page.manager.stats(sid)["answers"] == 0
    finally:
        client.close()


def test_nothing_watched_reads_the_stats():
    assert nothing_watched({"ingest": {"frames_submitted": 0}, "source": None})
    assert not nothing_watched({"ingest": {"frames_submitted": 1}, "source": None})  # a frame on its way
    assert not nothing_watched({"ingest": {"frames_submitted": 0}, "source": {"finished": False}})
    assert not nothing_watched({"ingest": {}, "source": None, "text_events": 1})
    assert not nothing_watched({"ingest": {}, "source": None, "audio": {"pushed": {"chunks": 2}}})
    assert NOTHING_WATCHED.startswith("Nothing watched yet")


def test_form_refusals_name_the_page_labels(manager):
    tabs = TabRegistry(manager)
    actions = PageActions(manager, tabs)
    sid = actions.session(None, "h1")
    with pytest.raises(PageError) as exc:
        actions.apply_settings(sid, "h1", {"window_tokens": 1}, form=True)
    assert "Window (tokens)" in str(exc.value) and "window_tokens" not in str(exc.value)
    actions.add_watch(sid, "h1", "a person enters")  # a watch rule is input: the stream's shape is fixed now
    cfg = manager.session_config(sid)
    drop, bits = ("pixel" if cfg.drop != "pixel" else "off"), (2 if cfg.kv_bits != 2 else 8)
    with pytest.raises(PageError) as exc:
        actions.apply_settings(sid, "h1", {"drop": drop, "kv_bits": bits, "top_k": 2, "window_tokens": 32}, form=True)
    message = str(exc.value)
    assert "Token drop and KV bits in memory cannot change" in message
    assert "a stream, a watch rule or a question" in message and "Chunks retrieved (top-k) can change" in message
    assert "kv_bits" not in message and "dialog_max_tokens" not in message
    # API callers send field names and get field names
    with pytest.raises(PageError, match="kv_bits"):
        actions.apply_settings(sid, "h1", {"kv_bits": bits})
    tabs.close(sid)


def test_page_wiring_keeps_progress_text_out_of_the_source_box_and_labels_the_remove_menu(manager):
    from ui.page import SETTINGS_NOTE, build_page

    demo = build_page(manager)
    config = demo.config
    by_id = {c["id"]: c for c in config["components"]}
    source_box = next(c["id"] for c in config["components"] if c.get("props", {}).get("elem_id") == "ls-source")
    writers = [d for d in config["dependencies"] if source_box in d["outputs"]]
    assert writers and all(d["show_progress"] == "hidden" for d in writers)
    remove = next(c for c in by_id.values() if c.get("props", {}).get("elem_id") == "ls-remove-rule")
    assert remove["props"]["label"] == "Rule to remove" and remove["props"]["show_label"]
    assert "a watch rule or a question" in SETTINGS_NOTE
    # the question box's updates come only from sending a question, never from streamed answers
    question = next(c["id"] for c in config["components"] if c.get("props", {}).get("elem_id") == "ls-question")
    writing = [d for d in config["dependencies"] if question in d["outputs"] and d.get("api_name") != "chat"]
    assert len(writing) == 1 and writing[0]["trigger_mode"] == "multiple"


def test_rules_are_numbered_with_a_count_of_checks():
    rules = [WatchRule("w_3f9a", "a person enters"), WatchRule("w_77c1", "the door opens")]
    html = render.rules_html(rules, checks=12)
    assert "w_3f9a" not in html and "2 rules · checked 12 times" in html
    assert html.index("a person enters") < html.index("the door opens") and "<ol>" in html
    assert "not checked yet" in render.rules_html(rules[:1], checks=0)
    assert render.rule_choices(rules) == [("1. a person enters", "w_3f9a"), ("2. the door opens", "w_77c1")]


def test_the_watch_note_says_when_the_model_cannot_answer_yes(ui_backend):
    assert "cannot really answer yes" in render.watch_note(ui_backend.spec)
    blind = dataclasses.replace(ui_backend.spec, random_weights=False, random_vision=True)
    assert "does not see the video" in render.watch_note(blind)
    real = dataclasses.replace(ui_backend.spec, random_weights=False, random_vision=False)
    assert render.watch_note(real) is None
    assert "does not see the video" in render.watch_note(real, vision=False)


def test_problems_never_lead_with_a_class_name():
    class SourceOpenError(Exception):
        pass

    assert render.problem_text(SourceOpenError("SourceOpenError: cannot open x.mp4")) == "cannot open x.mp4"
    assert render.problem_text(RuntimeError("")) and "RuntimeError" not in render.problem_text(RuntimeError(""))
    assert render.source_html(None, status="connecting…").count("connecting") == 1
