"""``livesight client`` and ``livesight serve`` as real subprocesses."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from app.serving.client import SyncLiveSightClient
from tests import media

pytestmark = pytest.mark.network

ROOT = Path(__file__).resolve().parents[2]


def livesight(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "app.cli.main", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=kw.pop("timeout", 180), **kw)


def test_client_streams_a_file_and_answers_piped_questions(make_server, bikes_path):
    srv = make_server(max_fps=10.0)
    proc = livesight("client", str(bikes_path), "--url", srv.url, "--fps", "4", "--ask-after", "1.0",
                     "--max-new-tokens", "3", "--stats-every", "0.5", "--watch", "a rider falls",
                     input="What is happening?\n\nWho is riding?\n")
    out = proc.stdout
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"connected: session sess_\w+, model tiny-smolvlm", out)
    assert "note: tiny-smolvlm has random weights" in out
    assert "watching: a rider falls" in out
    assert "source: " in out and "640x272, h264, 10.0 s" in out
    questions = re.findall(r"\[(\d\d:\d\d(?:\.\d)?)\] Q: (.+)", out)
    assert [q for _, q in questions] == ["What is happening?", "Who is riding?"]  # the blank line is skipped
    assert all(stamp >= "00:01" for stamp, _ in questions)  # --ask-after: after 1 s of stream
    assert out.count("   evidence: ") == 2 and "(recent window)" in out
    assert re.search(r"\[stats\] frames \d+/\d+ processed", out)
    sent = int(re.search(r"sent (\d+) frames; bye", out).group(1))
    assert sent >= 4
    deadline = time.monotonic() + 10
    while srv.manager.sessions() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert srv.manager.sessions() == []  # the session closed with the connection


def test_client_with_a_wrong_token_is_refused(make_server, bikes_path):
    srv = make_server(token="right-token-123")
    proc = livesight("client", str(bikes_path), "--url", srv.url, "--token", "wrong-token-456", input="Hi?\n")
    assert proc.returncode == 1
    assert "HTTP 401" in proc.stderr and "--token" in proc.stderr
    proc = livesight("client", str(bikes_path.with_name("no-such-clip.mp4")), "--url", srv.url)
    assert proc.returncode == 2 and "error:" in proc.stderr


def test_serve_refuses_a_public_host_without_a_token():
    proc = livesight("serve", "--host", "0.0.0.0", "--no-ui", "--model", "tiny-smolvlm",
                     env={**os.environ, "LIVESIGHT_TOKEN": ""})
    assert proc.returncode == 2
    assert "needs a token" in proc.stderr


@pytest.mark.slow
@pytest.mark.real_weights
def test_serve_falls_back_to_real_smollm2_with_vision_off_says_so_and_stops_cleanly(tmp_path):
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "LIVESIGHT_TOKEN": ""}
    proc = subprocess.Popen([sys.executable, "-m", "app.cli.main", "serve", "--no-ui", "--offline", "--ws-port", "0",
                             "--model", "HuggingFaceTB/SmolVLM2-256M-Video-Instruct", "--max-new-tokens", "2"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    lines: queue.Queue = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True)
    reader.start()
    out: list[str] = []
    try:
        while not any(line.startswith("ready") for line in out):
            try:
                out.append(lines.get(timeout=300))
            except queue.Empty:
                pytest.fail(f"livesight serve did not get ready: {out} (exit status {proc.poll()})")
        text = "".join(out)
        url = re.search(r"websocket API: (ws://\S+)", text).group(1)
        model_line = next(line for line in out if line.startswith("model: "))
        assert model_line.startswith("model: smolvlm2-256m-smollm2  (")
        assert "speech: tiny.en-offline" in text  # speech is on by default
        with SyncLiveSightClient(url) as client:
            notice = client.client.model["notice"]
            # one sentence: what it can do, what it cannot, and how to get the real model
            assert notice in model_line and notice.count(". ") == 0 and notice.endswith(".")
            assert "could not be loaded" in notice and "real SmolLM2 text weights" in notice
            assert "loaded (" not in notice and "Error" not in notice  # the cause is in the log, not the banner
            assert "hears" in notice and "reads notes" in notice and "does not see" in notice
            assert "run once with a network or pass --model DIR" in notice
            assert client.client.model["random_weights"] is False
            assert client.session["vision"] is False  # the manager's default session for this backend
            assert client.client.limits["speech"] is True
            assert client.answer("Anything?")["usage"]["completion_tokens"] == 2
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(10)
    while not lines.empty():
        out.append(lines.get())
    err = proc.stderr.read()
    assert out[-1].startswith("stopped")
    assert re.search(r"WARNING app.serving.process: The model HuggingFaceTB/SmolVLM2-256M-Video-Instruct "
                     r"could not be loaded", err)


def test_serve_without_fallback_fails_with_a_clear_error(tmp_path):
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "LIVESIGHT_TOKEN": ""}
    proc = livesight("serve", "--no-ui", "--offline", "--no-fallback", "--ws-port", "0", "--asr", "off",
                     "--model", "HuggingFaceTB/SmolVLM2-256M-Video-Instruct", env=env)
    assert proc.returncode == 2 and proc.stderr.startswith("error: ")
    assert "fell back" not in proc.stdout


def test_serve_with_an_unknown_speech_model_fails_before_loading_the_model(tmp_path):
    proc = livesight("serve", "--no-ui", "--offline", "--ws-port", "0", "--model", "tiny-smolvlm",
                     "--asr", str(tmp_path / "no-such-model"))
    assert proc.returncode == 2
    assert "error: speech model" in proc.stderr and "CTranslate2" in proc.stderr


def test_client_exits_when_the_server_closes_its_session(make_server, bikes_path):
    srv = make_server(max_fps=100.0, session_ttl_s=1.0)
    proc = subprocess.Popen([sys.executable, "-m", "app.cli.main", "client", str(bikes_path), "--url", srv.url, "--fast",
                             "--fps", "2"], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:  # stdin stays open (a terminal nobody types into): the session expires once the clip has been sent
        proc.wait(timeout=120)
        out, err = proc.stdout.read(), proc.stderr.read()
        proc.stdin.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1
    assert "[session closed: expired]" in out and "server closed the connection (1000 session expired)" in err
    assert re.search(r"sent 20 frames; bye", out)


def test_client_sends_the_sound_of_a_clip_and_the_answer_cites_it(make_server, speech_media):
    from app.engine.config import SessionConfig
    from app.engine.speech import ASRConfig

    srv = make_server(max_fps=50.0, asr=ASRConfig(), default_session=SessionConfig(window_tokens=32, top_k=64,
                                                                                   max_new_tokens=3))
    proc = livesight("client", str(speech_media.clip), "--url", srv.url, "--fast", "--fps", "1", "--ask-after", "30",
                     "--stats-every", "0", input="What was the licence plate?\n")
    out = proc.stdout
    assert proc.returncode == 0, proc.stderr
    heard = re.findall(r"\[heard (\d\d):(\d\d(?:\.\d)?)\] (.+)", out)
    plate = [(int(m) * 60 + float(s), text) for m, s, text in heard if media.mentions(text, "KL47XQ")]
    assert plate and abs(plate[0][0] - 2.0) <= 1.0, out
    evidence = re.search(r"   evidence: (.+)", out).group(1)
    assert re.search(r'\(speech "[^"]*KL4 ?7XQ[^"]*", (memory|recent window)', evidence), evidence
    assert re.search(r"sent \d+ frames and 1\d\.\d s of sound; bye", out)
