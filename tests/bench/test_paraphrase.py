"""The paraphrase bench's material: questions never repeat their note's content words, and the streams
place every target note (and each order question's landmark right after it) where the questions say."""

from __future__ import annotations

import pytest

from app.bench.paraphrase_streams import check_paraphrases, content_words, load_styles, make_stream, shared_words


def test_material_is_paraphrased_and_has_several_styles():
    styles = load_styles()
    assert len(styles) >= 4
    assert check_paraphrases(styles) == []
    for style in styles:
        assert len(style["needles"]) >= 12 and len(style["order"]) >= 3


def test_the_check_catches_a_question_that_repeats_the_fact():
    assert shared_words("Which bed got a new saline drip?", "Nurse Okafor hung a new saline drip for bed 7.",
                        ("bed 7",)) == {"saline", "drip"}
    bad = [{"name": "x", "needles": [{"fact": "The van is parked in bay 12.", "question": "Where is the van parked?",
                                      "answer": "bay 12", "options": ["bay 3", "bay 4", "bay 5"]}], "order": []}]
    assert check_paraphrases(bad) and "shares ['parked', 'van']" in check_paraphrases(bad)[0]


@pytest.mark.parametrize("seed", [0, 1])
def test_streams_place_targets_and_landmarks(seed):
    for style in load_styles():
        stream = make_stream(style, seed, 160)
        assert len(stream.events) == 160
        texts = dict(stream.events)
        assert len(stream.needles) == len(style["needles"]) + len(style["order"])
        for q in stream.needles:
            assert texts[q.pts] == q.fact
            assert all(w[:4] in q.fact.lower() for w in content_words(q.answer))  # the note holds the answer
            if q.kind == "order":
                landmark = next(o["landmark"] for o in style["order"] if o["before"] == q.fact)
                assert texts[q.landmark_pts] == landmark
        near = [n for item in style["needles"] for n in item.get("near", ())]
        assert all(n in texts.values() for n in near)
        assert [e[0] for e in stream.events] == sorted(e[0] for e in stream.events)
    with pytest.raises(ValueError, match="events must be"):
        make_stream(load_styles()[0], 0, 20)
