"""Official and strict scoring, the official scripts' quirks included."""

from __future__ import annotations

import pytest

from app.eval.items import EvalItem
from app.eval.scoring import extract_letter, score_official, score_proactive, score_strict, strict_choice


def item(benchmark: str = "streamingbench", kind: str = "choice", answer: str = "B",
         options: tuple[str, ...] = ("A horse", "A bicycle", "A car", "A boat"), gt_time: float | None = None) -> EvalItem:
    return EvalItem(id="q", benchmark=benchmark, task="t", group="g", video="bikes.mp4", t=5.0, question="What?",
                    options=options if kind == "choice" else (), answer=answer, kind=kind, gt_time=gt_time)


@pytest.mark.parametrize(("response", "letter"), [
    ("B", "B"), ("(B)", "B"), ("B.", "B"), (" B) a bicycle", "B"), ("Answer: B", "B"), ("The answer is B.", "B"),
    ("I think it's C", "C"), ("A", "A"), ("A. A horse", "A"), ("[D]", "D"),
    ("Because the bikes", None), ("A man rides", None), ("B or C", None), ("E", None), ("b", None), ("", None), (None, None),
])
def test_extract_letter(response, letter):
    assert extract_letter(response, 4) == letter


def test_streamingbench_official_is_the_first_character():
    q = item()
    assert score_official(q, "B") and score_official(q, "  B. A bicycle")
    assert score_official(q, "Because the person pedals")  # the official rule's quirk: "Because" counts as B ...
    assert not score_strict(q, "Because the person pedals")  # ... the strict rule finds no letter in it
    assert not score_official(q, "The answer is B") and score_strict(q, "The answer is B")
    assert not score_official(q, "b") and not score_official(q, "") and not score_official(q, None)


def test_ovo_official_is_a_substring_of_the_letter():
    q = item("ovo", answer="A")
    assert score_official(q, "A")
    assert score_official(q, "Answer: B")  # contains a capital A: the official rule counts it for A
    assert not score_strict(q, "Answer: B")
    assert score_official(item("ovo", answer="C"), "C. A car") and not score_official(item("ovo", answer="D"), "C. A car")


def test_strict_choice_reads_the_full_option_text():
    q = item()
    assert strict_choice(q, "It is a bicycle.") == "B" and score_strict(q, "It is a bicycle.")
    assert strict_choice(q, "A horse or a boat") is None  # two options named: undecided
    assert strict_choice(q, "Nothing at all") is None


def test_ovo_rec_counts_digits_joined():
    q = item("ovo", "count", answer="3")
    assert score_official(q, "3") and score_official(q, "They did it 3 times.")
    assert not score_official(q, "3 or 4")  # digits joined: "34"
    assert score_official(item("ovo", "count", answer="34"), "3 or 4")  # the quirk, both ways
    assert not score_official(q, "three") and score_strict(q, "three")
    assert score_strict(q, "3 times") and not score_strict(q, "3 or 4")


def test_ovo_yes_no_probes():
    yes, no = item("ovo", "yesno", "Yes"), item("ovo", "yesno", "No")
    assert score_official(yes, "Y") and score_official(yes, "Yes.") and score_official(no, "N")
    assert not score_official(yes, "yes")  # case-sensitive substring
    assert score_official(no, "Not yet")  # "Not" contains "No"
    assert not score_strict(no, "Not yet") and score_strict(no, "no.") and score_strict(yes, "yes, it is")
    assert not score_official(yes, "YES") and not score_official(no, "Y")
    assert not score_strict(yes, "Yes and no")


def test_open_answers():
    q = item("jsonl", "open", "a bell")
    assert score_official(q, "I heard A BELL ring.") and score_strict(q, "I heard a bell, ring.")
    assert score_official(q, "a bellow") and not score_strict(q, "a bellow")  # substring vs whole words
    assert not score_official(q, "a horn")


def test_proactive_fires_within_two_seconds():
    q = item(kind="proactive", answer="two", gt_time=29.0)
    assert score_proactive(q, 27.0, "") and score_proactive(q, 31.0, "") and score_proactive(q, 29.5)
    assert not score_proactive(q, 26.9) and not score_proactive(q, 31.5) and not score_proactive(q, None)
    assert score_proactive(q, 30.0, "there are two", require_output=True)
    assert not score_proactive(q, 30.0, "there are 2", require_output=True)
    assert score_official(q, "now two") and not score_official(q, "now 2")
    with pytest.raises(ValueError, match="needs a proactive item"):
        score_proactive(item(), 1.0)
