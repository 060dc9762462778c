"""The layering rule: streaming, compression and memory never import transformers or gradio."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

PROBE = """
import importlib, json, pkgutil, sys
import streaming, compression, memory
loaded = []
for package in (streaming, compression, memory):
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        importlib.import_module(info.name)
        loaded.append(info.name)
print(json.dumps({"loaded": loaded, "heavy": sorted(m for m in sys.modules
                  if m.split(".")[0] in ("transformers", "gradio"))}))
"""


def test_core_packages_do_not_import_transformers_or_gradio():
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert "streaming.sampler" in report["loaded"] and "streaming.url_source" in report["loaded"]
    assert report["heavy"] == []


def test_importing_streaming_alone_loads_neither_av_nor_cv2():
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    code = "import sys, streaming; from streaming.frame import Frame; print(sorted({'av', 'cv2'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
