"""The websocket API with each other backend family behind it (every serving feature works with
``--model`` set to any family's model): a real server on 127.0.0.1, a real ``websockets``
client, real frames (bikes.mp4 decoded by PyAV, sent as JPEG), the tiny random models."""

from __future__ import annotations

import asyncio
import base64

import pytest

from app.engine.backends.registry import test_models
from app.engine.config import SessionConfig
from app.serving.client import encode_jpeg
from app.serving.limits import ManagerConfig
from app.serving.manager import SessionManager
from app.serving.protocol import pack_frame
from app.serving.ws_server import ServerConfig, WebSocketServer

from .conftest import WS, run, wait_for

pytestmark = pytest.mark.network

#: One tiny model per family, but the family the other serving tests run with (tiny-smolvlm).
OTHER_FAMILIES = [name for name in test_models() if name != "tiny-smolvlm"]


@pytest.fixture(scope="module", params=OTHER_FAMILIES)
def family_server(request):
    from app.engine.backends.registry import load_backend

    backend = load_backend(request.param, dtype="float32")
    manager = SessionManager(backend, ManagerConfig(max_fps=50.0, stats_interval_s=0.2,
                                                    default_session=SessionConfig(max_new_tokens=5)))
    server = WebSocketServer(manager, ServerConfig(host="127.0.0.1", port=0)).start()
    yield server
    server.stop()
    manager.shutdown()
    backend.close()


def test_frames_note_question_evidence_watch_and_stats(family_server, bikes_frames):
    """Seven frames (for Qwen2.5-VL three pairs and an unpaired last frame, completed when the question
    comes), a note, a streamed answer with evidence from memory and the window, a watch rule, stats."""
    backend = family_server.manager.backend
    pairs = backend.spec.frames_per_step == 2

    async def main():
        ws = await WS.open(family_server.url)
        assert ws.created["model"]["name"] == backend.spec.name
        await ws.send({"type": "session.update", "session": {"window_tokens": 3 * backend.spec.tokens_per_frame,
                                                             "top_k": 4, "evidence_thumbnails": True}})
        await ws.expect("session.updated")
        await ws.send({"type": "watch.create", "rule": "Is a red van parked?"})
        rule = (await ws.expect("watch.created"))["rule"]
        assert rule["text"] == "Is a red van parked?"
        sent = [bikes_frames[i] for i in range(0, 70, 10)]
        for k, f in enumerate(sent):
            if k % 2:
                await ws.send({"type": "input_video.append", "image": base64.b64encode(encode_jpeg(f.rgb)).decode(),
                               "pts": f.pts})
            else:
                await ws.send(pack_frame(encode_jpeg(f.rgb), f.pts))
            await asyncio.sleep(0.1)
        await ws.expect("input_video.stats", timeout=60,
                        where=lambda e: e["stats"]["ingest"]["frames_processed"] + e["stats"]["ingest"]["dropped"]["backlog"]
                        == len(sent))
        await ws.send({"type": "input_text.append", "text": "A red van parks by the road.", "pts": sent[-1].pts + 0.5})
        assert (await ws.expect("input_text.committed"))["tokens"] > 5
        deltas, resp = await ws.ask("What is parked?", max_output_tokens=5)
        assert "".join(deltas).strip() == resp["output_text"] and resp["usage"]["completion_tokens"] >= 1
        evidence = resp["evidence"]
        assert {e["source"] for e in evidence} == {"memory", "window"}
        memory = [e for e in evidence if e["source"] == "memory"]
        assert [e["t_start"] for e in memory] == sorted(e["t_start"] for e in memory)
        for e in evidence:
            assert 0.0 <= e["t_start"] <= e["t_end"] <= sent[-1].pts + 0.5
        if pairs:  # a pair's evidence spans both of its frames
            assert any(e["t_end"] > e["t_start"] for e in memory)
        assert any(base64.b64decode(e["thumbnail_jpeg_b64"])[:2] == b"\xff\xd8"
                   for e in evidence if "thumbnail_jpeg_b64" in e)
        eid = await ws.send({"type": "session.stats"})
        st = (await ws.expect("input_video.stats", where=lambda e: e.get("reply_to") == eid))["stats"]
        processed = st["ingest"]["frames_processed"]
        assert st["ingest"]["frames_submitted"] == len(sent) and st["answers"] == 1 and st["texts"] == 1
        assert st["frames"] == processed >= 1 and st["bank_chunks"] >= 1
        # every processed frame's tokens were seen: for pairs, the unpaired last frame was completed by the question
        steps = (processed + 1) // 2 if pairs else processed
        assert st["tokens_seen"] == steps * backend.spec.tokens_per_frame
        await ws.close()

    run(main())
    wait_for(lambda: family_server.manager.sessions() == [])
