"""Benchmark files as distributed -> EvalItems: every format, detection, the real files' quirks, bad records."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from app.eval.formats import EvalFormatError, detect_format, load_items, parse_clock
from app.eval.items import EvalItem, letters
from app.eval.tasks import canonical_task

# Records shaped exactly like StreamingBench's questions_real.json (keys and spellings as in the file).
REAL = [
    {"time": "[0:00:00 - 0:00:10]", "questions": [
        {"task_type": "Object Recognition", "question": "What is the person riding?", "time_stamp": "00:00:05",
         "answer": "B", "options": ["A. A horse.", "B. A bicycle.", "C. A car.", "D. A boat."],
         "required_ability": "episodic memory"},
        {"task_type": "Clips Summarize", "question": "What happened just now?", "time_stamp": "00:01:05",
         "answer": "A", "options": ["A.Bikes passed by.", "B.Nothing.", "C.It rained.", "D.A dog ran."]}],
     "video_categories": "sports", "video_path": "./videos/bikes.mp4"},
    {"time": "[0:00:00 - 0:00:10]", "questions": [
        {"task_type": "Counting", "question": "How many rabbits are there?", "time_stamp": "0:00:08",
         "answer": "C", "options": ["A. One.", "B. Two.", "C. Three.", "D. Four."]}],
     "video_categories": "cartoon", "video_path": "./videos/bigbuckbunny.mp4"},
]

SQA = [[
    {"time": "[0:00:00 - 0:01:00]", "questions": [
        {"task_type": "Sequential Question Answering", "question": "Who rides first?", "time_stamp": "00:00:02",
         "answer": "A", "options": ["The man in red.", "The woman.", "Nobody.", "A child."],
         "required_ability": "episodic memory"}],
     "video_categories": "sports", "video_path": "./videos/bikes.mp4"},
    {"time": "[0:00:00 - 0:01:00]", "questions": [
        {"task_type": "Sequential Question Answering", "question": "What colour is the bike of the person in the last question?",
         "time_stamp": "00:00:06", "answer": "D", "options": ["Blue.", "Green.", "White.", "Red."]}],
     "video_categories": "sports", "video_path": "./videos/bikes.mp4"},
], [
    {"time": "[0:00:00 - 0:01:00]", "questions": [
        {"task_type": "Sequential Question Answering", "question": "Is it day?", "time_stamp": "00:00:01",
         "answer": "B", "options": ["A. No.", "B. Yes.", "C. Dawn.", "D. Dusk."]}],
     "video_categories": "cartoon", "video_path": "./videos/bigbuckbunny.mp4"},
]]

PROACTIVE = [
    {"time": "[0:00:00 - 0:00:30]", "questions": [
        {"task_type": "Proactive Output", "question": "When a second cyclist appears, output \"two\".",
         "time_stamp": "00:00:01", "ground_truth_time_stamp": "00:00:07", "ground_truth_output": "two",
         "required_ability": "working memory"}],
     "video_categories": "sports", "video_path": "./videos/bikes.mp4"},
]

# Shaped like OVO-Bench's ovo_bench_new.json: a backward, a real-time and the three forward item kinds.
OVO = [
    {"id": 0, "task": "EPM", "video": "bikes.mp4", "realtime": 9, "question": "Who passed first?",
     "answer": "a cyclist in red", "options": ["a cyclist in blue", "a runner", "a cyclist in red", "a car"], "gt": 2},
    {"id": 631, "task": "STU", "video": "bigbuckbunny.mp4", "realtime": 4.5, "question": "Where is the rabbit?",
     "answer": "left", "options": ["left", "right"], "gt": 0},
    {"id": 1558, "task": "REC", "video": "bikes.mp4", "activity": "ride past", "start_times": [1, 5],
     "end_times": [3, 7], "test_info": [{"realtime": 3, "count": 1}, {"realtime": 8.0, "count": 2}]},
    {"id": 1516, "task": "SSR", "video": "bikes.mp4", "tutorial": "Ride", "all_steps": ["mount the bike", "ride away"],
     "start_time": [0, 4], "end_time": [3, 9], "test_info": [
         {"realtime": 2, "step": "mount the bike", "type": 1}, {"realtime": 2, "step": "ride away", "type": 0}]},
    {"id": 1468, "task": "CRR", "video": "bikes.mp4", "question": "Where does the last cyclist go?",
     "answer": "Out of the frame.", "ask_time": 2, "clue_time": 8,
     "test_info": [{"realtime": 2, "type": 0}, {"realtime": 9, "type": 1}]},
]


def write_json(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data, indent=2), encoding="utf-8")
    return path


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def test_clock_times_read_the_official_way():
    assert parse_clock("00:01:05") == 65.0
    assert parse_clock("1:02:03") == 3723.0
    assert parse_clock("00:24") == 24.0 and parse_clock("00:00:8") == 8.0
    assert parse_clock(" 00:00:02.5 ") == 2.5
    for bad in ("1m05s", "", "00:xx", None, 12):
        with pytest.raises(ValueError, match="clock time"):
            parse_clock(bad)


def test_letters_and_task_table():
    assert letters(4) == ("A", "B", "C", "D") and letters(0) == ()
    with pytest.raises(ValueError, match="number of options"):
        letters(11)
    # Both copies' spellings land on one canonical task; OVO's codes are scoped to OVO.
    assert canonical_task("streamingbench", "Object Recognition") == ("Object Perception", "Real-Time Visual Understanding")
    assert canonical_task("streamingbench", "object  perception") == ("Object Perception", "Real-Time Visual Understanding")
    assert canonical_task("streamingbench", "Clips Summarize")[0] == "Clips Summarization"
    assert canonical_task("streamingbench", "Action Recognition")[0] == "Action Perception"
    assert canonical_task("streamingbench", "Source Discrimination")[1] == "Omni-Source Understanding"
    assert canonical_task("streamingbench", "Proactive Output")[1] == "Contextual Understanding"
    assert canonical_task("ovo", "EPM") == ("EPM", "Backward Tracing")
    assert canonical_task("ovo", "OJR") == ("OJR", "Real-Time Visual Perception")
    assert canonical_task("ovo", "CRR") == ("CRR", "Forward Active Responding")
    assert canonical_task("ovo", "Object Recognition") == ("OJR", "Real-Time Visual Perception")
    assert canonical_task("streamingbench", "EPM") is None


def test_streamingbench_real_json(tmp_path: Path):
    path = write_json(tmp_path / "questions_real.json", REAL)
    assert detect_format(path) == "streamingbench"
    items = load_items(path)
    assert [i.id for i in items] == ["questions_real/0/0", "questions_real/0/1", "questions_real/1/0"]
    first = items[0]
    assert first == EvalItem(id="questions_real/0/0", benchmark="streamingbench", task="Object Perception",
                             group="Real-Time Visual Understanding", video="./videos/bikes.mp4", t=5.0,
                             question="What is the person riding?", options=("A horse.", "A bicycle.", "A car.", "A boat."),
                             answer="B", kind="choice", raw_task="Object Recognition")
    assert items[1].t == 65.0 and items[1].options == ("Bikes passed by.", "Nothing.", "It rained.", "A dog ran.")
    assert items[1].task == "Clips Summarization" and items[1].raw_task == "Clips Summarize"
    assert items[2].t == 8.0 and items[2].video == "./videos/bigbuckbunny.mp4" and items[2].task == "Counting"


def test_untidy_options_of_the_real_files(tmp_path: Path):
    """The real omni / SQA files hold option lists split over lines, empty strings, letters out of order
    and repeated letters; they load as the official prompt shows them."""
    def options_of(raw: list[str], answer: str = "A") -> tuple[str, ...]:
        data = [{"video_path": "./videos/bikes.mp4", "questions": [
            {"task_type": "Scene Understanding", "question": "Q?", "time_stamp": "00:00:01", "answer": answer, "options": raw}]}]
        return load_items(write_json(tmp_path / "questions_omni.json", data))[0].options

    split = ["A. one", "", "B. two, said", "'hi'.", "C. three", "D. four"]
    assert options_of(split) == ("one", "two, said 'hi'.", "three", "four")
    assert options_of(["A. one", "C. three", "B. two", "D. four"]) == ("one", "two", "three", "four")
    assert options_of(["A. 107.", "B. 93.", "B. 91.", "D. 99."]) == ("107.", "93.", "91.", "99.")
    # One bare option that happens to start like a letter: the list is bare, kept as written.
    assert options_of(["A.Lebrun.", "Fan Z.D.", "Xu xin.", "Ma Lin."]) == ("A.Lebrun.", "Fan Z.D.", "Xu xin.", "Ma Lin.")
    with pytest.raises(EvalFormatError,
                       match=r"questions_omni.json: entry 0, question 0: answer must be one of the option letters A, B"):
        options_of(["A. yes", "B. no"], answer="C")


def test_streamingbench_sqa_gets_earlier_questions_as_context(tmp_path: Path):
    items = load_items(write_json(tmp_path / "questions_sqa.json", SQA))
    assert [i.id for i in items] == ["questions_sqa/0/0/0", "questions_sqa/0/1/0", "questions_sqa/1/0/0"]
    assert items[0].context == ()
    assert items[0].options == ("The man in red.", "The woman.", "Nobody.", "A child.")
    assert items[1].context == (("Who rides first? Options: A. The man in red., B. The woman., C. Nobody., D. A child.", "A"),)
    assert items[1].task == "Sequential Question Answering" and items[1].group == "Contextual Understanding"
    assert items[2].context == () and items[2].options == ("No.", "Yes.", "Dawn.", "Dusk.")  # a new video starts over


def test_streamingbench_proactive(tmp_path: Path):
    (item,) = load_items(write_json(tmp_path / "questions_proactive.json", PROACTIVE))
    assert item.kind == "proactive" and item.t == 1.0 and item.gt_time == 7.0
    assert item.answer == "two" and item.options == () and item.task == "Proactive Output"


def test_streamingbench_hf_csv(tmp_path: Path):
    header = ["question_id", "task_type", "question", "time_stamp", "answer", "options", "frames_required",
              "temporal_clue_type"]
    rows = [["real_sample_1_1", "Object Perception", "What is the person riding?", "00:00:05", "B",
             "['A. A horse.', 'B. A bicycle.', 'C. A car.', 'D. A boat.']", "single", "Prior"],
            ["real_sample_1_2", "Attribute Perception", "What colour is the sky?", "00:01:05", "A",
             '["A. Blue.", "B. Red."]', "single", "Concurrent"]]
    path = write_csv(tmp_path / "Real_Time_Visual_Understanding.csv", header, rows)
    assert detect_format(path) == "streamingbench"
    items = load_items(path)
    assert items[0] == EvalItem(id="real_sample_1_1", benchmark="streamingbench", task="Object Perception",
                                group="Real-Time Visual Understanding", video="sample_1/video.mp4", t=5.0,
                                question="What is the person riding?", options=("A horse.", "A bicycle.", "A car.", "A boat."),
                                answer="B", kind="choice", raw_task="Object Perception")
    assert items[1].t == 65.0 and items[1].options == ("Blue.", "Red.")
    # A video column wins over the question id; the GitHub copy's spelling maps to the same task.
    path = write_csv(tmp_path / "with_video.csv", ["question_id", "task_type", "question", "time_stamp", "answer",
                                                   "options", "video_id"],
                     [["q1", "Object Recognition", "Riding?", "00:00:02", "A", "['A. yes', 'B. no']", "bikes.mp4"]])
    (item,) = load_items(path)
    assert item.video == "bikes.mp4" and item.task == "Object Perception" and item.raw_task == "Object Recognition"


def test_csv_options_are_never_evaluated(tmp_path: Path):
    marker = tmp_path / "ran"
    path = write_csv(tmp_path / "bad.csv", ["question_id", "task_type", "question", "time_stamp", "answer", "options"],
                     [["real_sample_1_1", "Counting", "How many?", "00:00:01", "A",
                       f"__import__('pathlib').Path('{marker}').touch()"]])
    with pytest.raises(EvalFormatError, match=r"bad.csv: line 2 \(real_sample_1_1\): options must be a Python list"):
        load_items(path)
    assert not marker.exists()
    path = write_csv(tmp_path / "nocol.csv", ["question_id", "question"], [["a", "b"]])
    with pytest.raises(EvalFormatError, match="missing column.*task_type, time_stamp"):
        load_items(path)


def test_ovo_bench(tmp_path: Path):
    path = write_json(tmp_path / "ovo_bench_new.json", OVO)
    assert detect_format(path) == "ovo"
    items = {i.id: i for i in load_items(path)}
    assert list(items) == ["ovo/0", "ovo/631", "ovo/1558/0", "ovo/1558/1", "ovo/1516/0", "ovo/1516/1", "ovo/1468/0", "ovo/1468/1"]
    epm = items["ovo/0"]
    assert (epm.kind, epm.answer, epm.t, epm.group) == ("choice", "C", 9.0, "Backward Tracing")
    assert epm.options == ("a cyclist in blue", "a runner", "a cyclist in red", "a car")
    assert (items["ovo/631"].answer, items["ovo/631"].t, items["ovo/631"].group) == ("A", 4.5, "Real-Time Visual Perception")
    rec = items["ovo/1558/1"]
    assert (rec.kind, rec.answer, rec.t, rec.task) == ("count", "2", 8.0, "REC")
    assert rec.question == "How many times did they ride past?" and rec.evidence == ((1.0, 3.0), (5.0, 7.0))
    ssr_yes, ssr_no = items["ovo/1516/0"], items["ovo/1516/1"]
    assert (ssr_yes.kind, ssr_yes.answer, ssr_no.answer) == ("yesno", "Yes", "No")
    assert "mount the bike" in ssr_yes.question and ssr_yes.evidence == ((0.0, 3.0),) and ssr_no.evidence == ((4.0, 9.0),)
    crr = items["ovo/1468/0"]
    assert (crr.answer, items["ovo/1468/1"].answer, items["ovo/1468/1"].t) == ("No", "Yes", 9.0)
    assert crr.question.startswith("Where does the last cyclist go?") and crr.group == "Forward Active Responding"


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda d: d[0].pop("gt"), r"item 0 \(id 0\): missing field 'gt'"),
    (lambda d: d[0].update(gt=4), r"item 0 \(id 0\): gt must be an option index in \[0, 3\]; got 4"),
    (lambda d: d[1].update(realtime="soon"), r"item 1 \(id 631\): realtime must be a number of seconds >= 0; got 'soon'"),
    (lambda d: d[1].update(task="XYZ"), r"item 1 \(id 631\): task 'XYZ' is not a task of OVO-Bench"),
    (lambda d: d[2]["test_info"][1].update(count=-1), r"item 2 \(id 1558\), test_info\[1\]: count must be a count >= 0"),
    (lambda d: d[3]["test_info"][0].update(type=2), r"item 3 \(id 1516\), test_info\[0\]: type must be 0 \(No\) or 1 \(Yes\)"),
    (lambda d: d[4].update(id=0), r"item 4 \(id 0\): id 0 appears twice"),
])
def test_ovo_bad_records_are_refused_by_name(tmp_path: Path, mutate, message):
    data = json.loads(json.dumps(OVO))
    mutate(data)
    with pytest.raises(EvalFormatError, match=r"ovo_bench_new.json: " + message):
        load_items(write_json(tmp_path / "ovo_bench_new.json", data), format="ovo")


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda d: d[0]["questions"][0].update(time_stamp="five"), r"entry 0, question 0: time_stamp must be a clock time"),
    (lambda d: d[0]["questions"][1].pop("answer"), r"entry 0, question 1: answer must be one of the option letters"),
    (lambda d: d[1].pop("video_path"), r"entry 1: missing field 'video_path'"),
    (lambda d: d[1]["questions"][0].update(task_type="Juggling"),
     r"entry 1, question 0: task_type 'Juggling' is not a task of StreamingBench"),
    (lambda d: d[1]["questions"][0].update(options="A. x"), r"entry 1, question 0: options must be a list of strings"),
])
def test_streamingbench_bad_records_are_refused_by_name(tmp_path: Path, mutate, message):
    data = json.loads(json.dumps(REAL))
    mutate(data)
    with pytest.raises(EvalFormatError, match=r"questions_real.json: " + message):
        load_items(write_json(tmp_path / "questions_real.json", data))


def test_livesight_jsonl(tmp_path: Path):
    lines = [
        {"video": "bikes.mp4", "t": "00:00:06", "question": "What passed?", "options": ["A bike", "A bus"], "answer": "A",
         "evidence": [[1, 3.5]], "notes": [[4, "a bell rings"], [2.0, "someone shouts"]]},
        {"video": "bikes.mp4", "t": 7, "question": "What rang?", "answer": "a bell", "task": "sound"},
        {"id": "mine", "video": "bigbuckbunny.mp4", "t": "1m05s", "question": "Is it day?", "answer": "Yes", "kind": "yesno"},
        {"video": "bikes.mp4", "t": 3, "question": "Vehicle?", "options": ["A. car", "B. bike"], "answer": "bike"},
    ]
    path = tmp_path / "mine.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines[:2]) + "\n\n" + "\n".join(json.dumps(x) for x in lines[2:]) + "\n")
    assert detect_format(path) == "jsonl"
    a, b, c, d = load_items(path)
    assert a == EvalItem(id="jsonl/1", benchmark="jsonl", task="choice", group="LiveSight", video="bikes.mp4", t=6.0,
                         question="What passed?", options=("A bike", "A bus"), answer="A", kind="choice",
                         evidence=((1.0, 3.5),), raw_task="choice", notes=((2.0, "someone shouts"), (4.0, "a bell rings")))
    assert (b.id, b.kind, b.task, b.answer, b.t, b.options) == ("jsonl/2", "open", "sound", "a bell", 7.0, ())
    assert (c.id, c.kind, c.answer, c.t) == ("mine", "yesno", "Yes", 65.0)  # line 3 is blank: ids follow line numbers
    assert (d.id, d.options, d.answer) == ("jsonl/5", ("car", "bike"), "B")  # the answer given as the option's text


@pytest.mark.parametrize(("line", "message"), [
    ("{not json", r"line 2: not valid JSON"),
    ('{"video": "bikes.mp4", "t": -1, "question": "q", "answer": "a"}', r"line 2: t must be seconds >= 0"),
    ('{"video": "bikes.mp4", "t": 1, "question": "q"}', r"line 2: missing field 'answer'"),
    ('{"video": "bikes.mp4", "t": 1, "question": "q", "answer": "C", "options": ["x", "y"]}',
     r"line 2: answer must be one of the option letters A, B; got 'C'"),
    ('{"video": "bikes.mp4", "t": 1, "question": "q", "answer": "a", "evidence": [[3, 1]]}',
     r"line 2: evidence\[0\] must have t0 <= t1"),
    ('{"video": "bikes.mp4", "t": 1, "question": "q", "answer": "a", "notes": [[5, "late"]]}',
     r"line 2: notes\[0\] at 5 s comes after the question's t = 1 s"),
    ('{"video": "bikes.mp4", "t": 1, "question": "q", "answer": "a", "colour": "red"}', r"line 2: unknown field\(s\) colour"),
    ('[1, 2]', r"line 2: must be a JSON object; got list"),
])
def test_jsonl_malformed_line_names_file_and_line(tmp_path: Path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"video": "bikes.mp4", "t": 1, "question": "q", "answer": "a"}\n' + line + "\n")
    with pytest.raises(EvalFormatError, match=r"bad.jsonl: " + message):
        load_items(path)


def test_detection_and_unknown_files(tmp_path: Path):
    assert detect_format(write_json(tmp_path / "questions_sqa.json", SQA)) == "streamingbench"
    other = write_json(tmp_path / "other.json", [{"name": "x"}])
    with pytest.raises(EvalFormatError, match="not a StreamingBench, OVO-Bench or LiveSight JSONL file"):
        load_items(other)
    with pytest.raises(EvalFormatError, match="no such file"):
        load_items(tmp_path / "missing.json")
    with pytest.raises(EvalFormatError, match="format must be one of streamingbench, ovo, jsonl; got 'mmlu'"):
        load_items(other, format="mmlu")
    broken = tmp_path / "broken.json"
    broken.write_text("[{")
    with pytest.raises(EvalFormatError, match=r"broken.json: not valid JSON"):
        load_items(broken, format="ovo")
