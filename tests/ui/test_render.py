"""The page's HTML pieces: evidence cards, progress, stats, alerts (pure functions, real data types)."""

from __future__ import annotations

import base64
import io
import re

import numpy as np
import pytest
from PIL import Image

from app.engine.types import Alert, Answer, Evidence, WatchRule
from ui import render


def _jpeg(colour: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((72, 96, 3), colour, np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def _memory(t: float, score: float, **kw) -> Evidence:
    return Evidence(t_start=t, t_end=t + 0.5, source="memory", score=score, chunk_id=int(t * 10), **kw)


def test_evidence_cards_show_time_ranges_and_inline_thumbnails():
    red, blue = _jpeg((200, 0, 0)), _jpeg((0, 0, 200))
    html = render.evidence_html([_memory(3.0, 0.42, thumbnail=red),
                                 Evidence(t_start=61.5, t_end=64.0, source="window", thumbnail=blue)])
    srcs = re.findall(r'<img class="ls-thumb" src="data:image/jpeg;base64,([^"]+)"', html)
    assert [base64.b64decode(s) for s in srcs] == [red, blue]
    assert re.findall(r'<b class="ls-ts">([^<]+)</b>', html) == ["00:03-00:03.5", "01:01.5-01:04"]
    assert "memory · score 0.42" in html and "recent window" in html
    assert "Evidence (2)" in html
    assert render.evidence_html([]) == ""


def test_evidence_text_is_escaped_and_text_chunks_quoted():
    ev = Evidence(t_start=1, t_end=1, source="memory", kind="text", score=0.1, text='<script>alert("x")</script> door opens')
    html = render.evidence_html([ev])
    assert "<script>" not in html and "&lt;script&gt;" in html and "door opens" in html
    answer = Answer("q", "a <b>bold</b> claim", (ev,), "eos", 2.0)
    message = render.answer_message(answer)
    assert "<b>bold</b>" not in message and "&lt;b&gt;bold&lt;/b&gt;" in message
    assert "[stopped]" not in message
    assert "[stopped]" in render.answer_message(Answer("q", "", (), "cancelled", 2.0))
    assert "(empty answer)" in render.answer_message(Answer("q", "  ", (), "eos", 2.0))


def test_too_much_evidence_keeps_the_window_and_the_best_chunks_in_time_order():
    evidence = [_memory(float(t), score) for t, score in enumerate([0.1, 0.9, 0.2, 0.8, 0.3, 0.7])]
    evidence.append(Evidence(t_start=10, t_end=12, source="window"))
    picked = render.pick_evidence(evidence, max_cards=4)
    assert [e.source for e in picked] == ["memory", "memory", "memory", "window"]
    assert [e.t_start for e in picked] == [1.0, 3.0, 5.0, 10.0]  # scores 0.9, 0.8, 0.7; time order kept
    html = render.evidence_html(evidence, max_cards=4)
    assert html.count('<figure class="ls-ev') == 4 and "+3 more" in html and "Evidence (7)" in html
    assert render.pick_evidence(evidence[:3], max_cards=4) == evidence[:3]


def test_progress_of_a_file_a_live_url_and_an_error():
    half = render.progress_html({"pts": 5.0, "duration_s": 10.0, "fraction": 0.5, "finished": False, "error": None}, "clip.mp4")
    assert "<b>clip.mp4</b>" in half and "50%" in half and "width:50.0%" in half and "00:05 / 00:10" in half
    done = render.progress_html({"pts": 9.9, "duration_s": 10.0, "fraction": 1.0, "finished": True, "error": None})
    assert "finished" in done and "100%" in done
    live = render.progress_html({"pts": 75.0, "duration_s": None, "fraction": None, "finished": False, "error": None})
    assert "01:15" in live and "live" in live and "ls-bar" not in live
    err = render.progress_html({"error": "SourceUnreachable: rtsp://cam <refused>"}, "rtsp://cam")
    assert "ls-error" in err and "&lt;refused&gt;" in err
    assert "No server-side source" in render.progress_html(None)


def test_stats_cards_read_the_manager_stats():
    stats = {
        "frames": 42, "kept_ratio": 0.375, "bank_chunks": 7, "encode_ms_per_step": 12.4,
        "memory_bytes": {"window": 2048, "ram": 1536, "disk": 0},
        "ingest": {"fps": 1.96, "lag_s": 0.25, "dropped_total": 3, "dropped": {"backlog": 3}},
    }
    cards = {label: value for label, value, _ in render.stats_cards(stats)}
    assert cards["ingest"] == "2.0 fps" and cards["lag"] == "0.25 s" and cards["dropped"] == "3"
    assert cards["frames"] == "42" and cards["kept tokens"] == "38%" and cards["encode"] == "12 ms"
    assert cards["window"] == "2.0 KiB" and cards["memory RAM"] == "1.5 KiB" and cards["memory disk"] == "0 B"
    # before the session is built the manager has only the ingest part
    empty = {label: value for label, value, _ in render.stats_cards({"ingest": {"fps": 0.0}}, webcam_fps=2.0)}
    assert empty["ingest"] == "2.0 fps" and empty["frames"] == "0" and empty["kept tokens"] == "-"
    assert empty["window"] == "-"
    assert "No session" in render.stats_html(None)


@pytest.mark.parametrize("n, text", [(0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (5 * 2**20, "5.0 MiB"),
                                     (3 * 2**40, "3072.0 GiB"), (None, "-"), (-1, "-"), (float("nan"), "-")])
def test_format_bytes(n, text):
    assert render.format_bytes(n) == text


def test_kept_ratio_frame_is_thinned_and_keeps_the_newest_point():
    history = [(i * 0.5, (i % 4) / 4) for i in range(1000)]
    df = render.kept_frame(history, max_points=100)
    assert list(df.columns) == [render.KEPT_X, render.KEPT_Y] and len(df) == 100
    assert df[render.KEPT_X].iloc[0] == 0.0 and df[render.KEPT_X].iloc[-1] == 499.5
    assert df[render.KEPT_X].is_monotonic_increasing
    assert len(render.kept_frame(history[:10])) == 10
    empty = render.kept_frame([])
    assert empty.empty and all(str(t) == "float64" for t in empty.dtypes)  # numeric axes even before data


def test_alerts_newest_first_and_rules_listed():
    alerts = [Alert("r1", "a <person> enters", 12.0, "yes", 0.0), Alert("r2", "door opens", 75.5, "Yes.", 1.0)]
    html = render.alerts_html(alerts)
    assert html.index("door opens") < html.index("enters") and "&lt;person&gt;" in html
    assert "01:15.5" in html and "00:12" in html
    rules = [WatchRule("ab12", "a person enters"), WatchRule("cd34", "x" * 100)]
    assert render.rule_choices(rules)[0] == ("1. a person enters", "ab12")  # numbered as the list shows them
    assert len(render.rule_choices(rules)[1][0]) == len("2. ") + 60
    assert "cd34" not in render.rules_html(rules) and "<ol>" in render.rules_html(rules)  # no internal ids
    assert "No watch rules" in render.rules_html([]) and "No alerts" in render.alerts_html([])


def test_notice_and_header():
    assert render.notice_html(None) == ""
    notice = render.notice_html("weights are <random>")
    assert 'role="alert"' in notice and "&lt;random&gt;" in notice
    header = render.header_html("tiny-smolvlm", "sess_1")
    assert "<code>tiny-smolvlm</code>" in header and "<code>sess_1</code>" in header


def test_source_panel_keeps_the_error_above_the_running_source():
    playing = {"pts": 4.0, "duration_s": 8.0, "fraction": 0.5, "finished": False, "error": None}
    html = render.source_html(playing, "clip.mp4", error="file:///etc/passwd: SchemeNotAllowed: <file> refused")
    assert html.index("ls-error") < html.index("clip.mp4") and "50%" in html and "&lt;file&gt;" in html
    only_error = render.source_html(None, error="SourceUnreachable: rtsp://cam")
    assert "SourceUnreachable" in only_error and "No server-side source" not in only_error
    cam = render.source_html(None, webcam="streaming · 12 frames sent")
    assert "<b>webcam</b>" in cam and "12 frames sent" in cam
    assert "No server-side source" in render.source_html(None)


def test_speech_evidence_shows_its_words_heard_at_their_time():
    heard = Evidence(t_start=62.5, t_end=65.0, source="memory", kind="speech", score=0.5,
                     text="The licence plate is <KL4 7XQ>", thumbnail=_jpeg((0, 200, 0)))
    html = render.evidence_html([heard, Evidence(t_start=70, t_end=71, source="window", kind="mixed")])
    assert 'class="ls-thumb ls-note ls-speech">🎙 “The licence plate is &lt;KL4 7XQ&gt;”' in html
    assert 'heard at <b class="ls-ts">01:02.5</b>' in html  # the time stays alone in its stamp
    assert "<img" not in html.split("ls-ev-window")[0]  # the words, not the frame on screen, stand for speech


def test_transcript_shows_the_newest_lines_with_their_times_escaped():
    from app.engine.speech import SpeechSegment

    segments = [SpeechSegment(float(i), float(i) + 0.5, f"line {i}") for i in range(20)]
    html = render.transcript_html([*segments, {"t_start": 75.0, "t_end": 76.0, "text": "<b>hi</b>"}], lines=3)
    assert re.findall(r'<b class="ls-ts">([^<]+)</b> ([^<]*)', html)[:2] == [("00:18", "line 18"), ("00:19", "line 19")]
    assert "01:15" in html and "&lt;b&gt;hi&lt;/b&gt;" in html and "line 17" not in html
    assert "nothing heard yet" in render.transcript_html([])
    assert "--asr" in render.transcript_html(segments, speech=False)


def test_speech_stats_cards_only_with_speech_on():
    labels = [c[0] for c in render.stats_cards({"frames": 3})]
    assert "heard" not in labels
    cards = {c[0]: c for c in render.stats_cards({"audio": {"speech": True, "audio_s": 12.4, "speech_s": 5.0, "rtf": 0.2,
                                                            "lag_s": 1.5, "behind": True, "committed": 3}})}
    assert cards["heard"][1] == "12 s" and "5 s of it speech" in cards["heard"][2]
    assert cards["transcripts"][1] == "3"
    assert cards["speech lag"][1] == "1.5 s (behind)" and "real-time factor 0.20" in cards["speech lag"][2]


def test_evidence_cards_name_their_source_escaped():
    cards = render.evidence_html([
        Evidence(t_start=1, t_end=2, source="memory", score=0.5, input_source="file <b>bikes</b>.mp4"),
        Evidence(t_start=9, t_end=10, source="window", kind="mixed", input_source="websocket frames + note"),
        Evidence(t_start=11, t_end=11, source="window"),
    ])
    assert "file &lt;b&gt;bikes&lt;/b&gt;.mp4" in cards and "<b>bikes</b>" not in cards
    assert "websocket frames + note" in cards
    assert cards.count('class="ls-src"') == 2  # an item without a known source names none
