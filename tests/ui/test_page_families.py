"""The page with each other backend family behind it (every serving feature works with
``--model`` set to any family's model): a real video uploaded through ``gradio_client`` over
real HTTP on 127.0.0.1 is played into the caller's session, the answer streams and carries evidence."""

from __future__ import annotations

import pytest

from app.engine.backends.registry import test_models

from .conftest import launch_page
from .test_page_client import _client, _play, _words

pytestmark = [pytest.mark.network, pytest.mark.timeout(240)]

#: One tiny model per family, but the family the other page tests run with (tiny-smolvlm).
OTHER_FAMILIES = [name for name in test_models() if name != "tiny-smolvlm"]


@pytest.fixture(scope="module", params=OTHER_FAMILIES)
def family_page(request, page_env):
    from app.engine.backends.registry import load_backend

    backend = load_backend(request.param, device="cpu", dtype="float32")
    try:
        with launch_page(backend) as server:
            yield server
    finally:
        backend.close()


def test_uploaded_video_is_watched_and_questions_answered_with_evidence(family_page, synthetic_media):
    client = _client(family_page.url)
    try:
        stats = _play(client, synthetic_media.scene_mp4)
        assert stats["frames"] >= 1 and stats["bank_chunks"] >= 1
        job = client.submit("What moved across the scene?", api_name="/ask")
        partial = [text for text, info in (list(out) for out in job) if not info["done"]]
        final_text, details = job.result()
        assert details["done"] and details["text"] == final_text and final_text.strip()
        assert all(_words(final_text).startswith(_words(text)) for text in partial)
        sources = [e["source"] for e in details["evidence"]]
        assert "memory" in sources and sources[-1] == "window"
        for e in details["evidence"]:
            assert 0.0 <= e["t_start"] <= e["t_end"] <= stats["stream_time_s"] + 1e-6
    finally:
        client.close()
