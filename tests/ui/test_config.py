"""Page settings are validated, and errors name the field and its range."""

from __future__ import annotations

import pytest

from ui.config import PageConfig, PageConfigError


@pytest.mark.parametrize("field, value, match", [
    ("stream_every_s", 0.0, r"stream_every_s must be a number in \[0.05, 10\]"),
    ("stream_every_s", "0.5", "stream_every_s"),
    ("stats_every_s", 120, r"stats_every_s must be a number in \[0.2, 60\]"),
    ("source_fps", float("nan"), r"source_fps must be a number in \[0.05, 1000\]"),
    ("source_fps", True, "source_fps"),
    ("title", "", "title must be a string of 1 to 200 characters"),
    ("session_overrides", [("top_k", 2)], "session_overrides must be a dict"),
])
def test_bad_page_settings_name_the_field(field, value, match):
    with pytest.raises(PageConfigError, match=match):
        PageConfig(**{field: value})


def test_defaults_and_frozen():
    cfg = PageConfig()
    assert (cfg.stream_every_s, cfg.stats_every_s, cfg.source_fps) == (0.5, 1.0, 1.0)
    with pytest.raises(AttributeError):
        cfg.title = "x"  # type: ignore[misc]


def test_build_page_caps_source_fps_and_rejects_a_non_config(ui_backend):
    from app.serving.limits import ManagerConfig
    from app.serving.manager import SessionManager
    from ui.page import build_page

    manager = SessionManager(ui_backend, ManagerConfig(max_fps=2.0))
    try:
        with pytest.raises(PageConfigError, match="config must be a PageConfig"):
            build_page(manager, {"source_fps": 1.0})  # type: ignore[arg-type]
        demo = build_page(manager, PageConfig(source_fps=30.0, session_overrides={"top_k": 3}))
        assert demo.livesight_actions.source_fps == 2.0  # capped at the manager's max_fps
        sid = demo.livesight_tabs.resolve(None, "h")
        assert manager.session_config(sid).top_k == 3
        api = {d.api_name for d in demo.fns.values() if d.api_visibility == "public"}
        assert {"chat", "ask", "stats", "play_video"} <= api
    finally:
        manager.shutdown()
