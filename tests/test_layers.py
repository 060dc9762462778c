"""The layering rule, read from the import graph: arrows only point down.

    cli  >  ui, bench  >  serving  >  engine  >  memory  >  compression  >  streaming

Every module under app/, ui/, streaming/, memory/ and compression/ is parsed with ``ast``; every
import counts, at module level or inside a function (a lazy import is still a dependency), and so
does ``importlib.import_module("literal")``. ``streaming.checks`` depends on nothing and serves
every layer: compression and memory may import it and nothing else of streaming.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: Top-level packages whose modules are checked.
PACKAGES = ("app", "ui", "streaming", "memory", "compression")
#: Third-party libraries the lowest layers never import.
HEAVY = ("transformers", "gradio")

#: Module prefix -> layer, longest prefix first.
LAYER_OF = (
    ("app.cli", "cli"),
    ("app.bench", "bench"),
    ("app.eval", "bench"),
    ("app.serving", "serving"),
    ("app.engine", "engine"),
    ("ui", "ui"),
    ("memory", "memory"),
    ("compression", "compression"),
    ("streaming", "streaming"),
)

#: Layer -> what it must not import (module prefixes, or layer names marked ``layer:``).
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "streaming": ("app", "ui", "memory", "compression", *HEAVY),
    "compression": ("app", "ui", "memory", "streaming", *HEAVY),
    "memory": ("app", "ui", "streaming", *HEAVY),
    "engine": ("layer:serving", "layer:cli", "layer:ui", "layer:bench"),
    "serving": ("layer:cli", "layer:ui", "layer:bench"),
    "ui": ("layer:cli", "layer:bench"),
    "bench": ("layer:serving", "layer:cli", "layer:ui"),
    "cli": (),
}
#: Modules any layer may import, whatever FORBIDDEN says of their package.
ALWAYS_ALLOWED = ("streaming.checks",)


def layer_of(module: str) -> str | None:
    for prefix, layer in LAYER_OF:
        if module == prefix or module.startswith(prefix + "."):
            return layer
    return None


def _under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


@dataclass(frozen=True)
class Edge:
    source: str  # importing module
    target: str  # imported module
    path: Path
    line: int

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.source} imports {self.target}"


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve_relative(source: str, is_package: bool, level: int, module: str | None) -> str:
    base = source.split(".") if is_package else source.split(".")[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join([*base, module] if module else base)


def imports_of(root: Path, path: Path, known: set[str]) -> list[Edge]:
    """Every import in ``path`` (a module under ``root``), function-level ones included."""
    source = module_name(root, path)
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    edges = []
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = _resolve_relative(source, path.name == "__init__.py", node.level, node.module)
            # ``from pkg import sub`` depends on pkg.sub when that is a module, else on pkg itself
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "import_module"
              and isinstance(node.func.value, ast.Name) and node.func.value.id == "importlib"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            targets = [node.args[0].value]
        edges += [Edge(source, t, path, node.lineno) for t in dict.fromkeys(targets) if t]
    return edges


def layer_violations(root: Path) -> list[str]:
    """The imports under ``root`` that point up (or into a heavy library from a low layer)."""
    files = [p for pkg in PACKAGES if (root / pkg).is_dir() for p in sorted((root / pkg).rglob("*.py"))]
    known = {module_name(root, p) for p in files}
    problems = []
    for path in files:
        for edge in imports_of(root, path, known):
            layer = layer_of(edge.source)
            if layer is None or any(_under(edge.target, ok) for ok in ALWAYS_ALLOWED):
                continue
            target_layer = layer_of(edge.target)
            for rule in FORBIDDEN[layer]:
                hit = (target_layer == rule[len("layer:"):]) if rule.startswith("layer:") else _under(edge.target, rule)
                if hit:
                    problems.append(f"{edge} ({layer} must not import {rule.removeprefix('layer:')})")
                    break
    return problems


def test_arrows_only_point_down():
    problems = layer_violations(REPO)
    assert problems == [], "imports against the layering rule:\n" + "\n".join(problems)


def _plant(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


@pytest.mark.parametrize(
    ("name", "text", "needle"),
    [
        ("memory/leak.py", "def f():\n    import gradio\n", "memory.leak imports gradio"),
        ("compression/leak.py", "from transformers import AutoModel\n", "compression.leak imports transformers"),
        ("compression/up.py", "import memory.bank\n", "compression.up imports memory.bank"),
        ("compression/frames.py", "from streaming.frame import Frame\n", "compression.frames imports streaming.frame"),
        ("streaming/up.py", "def f():\n    from compression import droppers\n", "streaming.up imports compression"),
        ("app/engine/up.py", "def f():\n    from app.serving import manager\n", "app.engine.up imports app.serving.manager"),
        ("app/engine/rel.py", "from ..serving.manager import X\n", "app.engine.rel imports app.serving.manager"),
        ("app/serving/up.py", "import importlib\nimportlib.import_module('ui.page')\n", "app.serving.up imports ui.page"),
        ("app/serving/cli.py", "from app.cli import main\n", "app.serving.cli imports app.cli.main"),
        ("ui/up.py", "from app.bench import runtime\n", "ui.up imports app.bench.runtime"),
        ("app/bench/up.py", "from app.serving.manager import SessionManager\n", "app.bench.up imports app.serving.manager"),
    ],
)
def test_a_planted_violation_is_found(tmp_path, name, text, needle):
    tree = {
        "app/__init__.py": "", "app/engine/__init__.py": "", "app/serving/__init__.py": "", "app/cli/__init__.py": "",
        "app/bench/__init__.py": "", "app/serving/manager.py": "", "app/cli/main.py": "", "app/bench/runtime.py": "",
        "ui/__init__.py": "", "ui/page.py": "", "memory/__init__.py": "", "memory/bank.py": "",
        "compression/__init__.py": "", "compression/droppers.py": "", "streaming/__init__.py": "",
        "streaming/frame.py": "", "streaming/checks.py": "",
        name: text,
    }
    _plant(tmp_path, tree)
    problems = layer_violations(tmp_path)
    assert len(problems) == 1 and needle in problems[0], problems


def test_what_the_rule_allows_is_not_reported(tmp_path):
    _plant(tmp_path, {
        "streaming/__init__.py": "", "streaming/checks.py": "import math\n", "streaming/frame.py": "import numpy\n",
        "compression/__init__.py": "", "compression/a.py": "import torch\nfrom streaming.checks import check_int\n",
        "compression/b.py": "from streaming import checks\nfrom . import a\n",
        "memory/__init__.py": "", "memory/c.py": "import faiss\nfrom compression.a import x\nfrom streaming.checks import y\n",
        "app/__init__.py": "", "app/engine/__init__.py": "",
        "app/engine/d.py": "import transformers\nfrom memory.c import z\nfrom streaming.frame import Frame\n",
        "app/serving/__init__.py": "", "app/serving/e.py": "from app.engine.d import q\n",
        "app/bench/__init__.py": "", "app/bench/f.py": "def g():\n    from app.engine import d\n",
        "ui/__init__.py": "", "ui/g.py": "import gradio\nfrom app.serving.e import r\n",
        "app/cli/__init__.py": "", "app/cli/h.py": "from ui import g\nfrom app.bench import f\nfrom app.serving import e\n",
    })
    assert layer_violations(tmp_path) == []


#: Run in a fresh interpreter: import every module of one layer, then list what got loaded from above it.
RUNTIME_PROBE = """
import importlib, json, pkgutil, sys
package = importlib.import_module(sys.argv[1])
for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
    importlib.import_module(info.name)
above = tuple(sys.argv[2:])
print(json.dumps(sorted(m for m in sys.modules if any(m == a or m.startswith(a + ".") for a in above))))
"""


@pytest.mark.parametrize(
    ("package", "above"),
    [
        ("app.engine", ("app.serving", "app.cli", "app.bench", "ui")),
        ("app.serving", ("app.cli", "app.bench", "ui")),
        ("ui", ("app.cli", "app.bench")),
    ],
)
def test_importing_a_layer_loads_nothing_above_it(package, above):
    """The same rule at run time, in a subprocess: what a layer's modules import when loaded."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", RUNTIME_PROBE, package, *above], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []
