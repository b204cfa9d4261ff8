"""The package as users install it: a light `import raysearch`, no import cycles, and (slow) a wheel that
runs a study and the dashboard from a fresh virtual environment outside the checkout."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _imported_modules(path: Path) -> set[str]:
    """Every raysearch module `path` imports, at module level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name.startswith("raysearch")}


def test_evaluate_does_not_import_the_api() -> None:
    assert "raysearch.api" in _imported_modules(ROOT / "raysearch" / "api.py") | {"raysearch.api"}
    assert not {m for m in _imported_modules(ROOT / "raysearch" / "evaluate.py") if m == "raysearch.api"}
    assert "raysearch.evaluate" in _imported_modules(ROOT / "raysearch" / "api.py")


def test_import_raysearch_is_light() -> None:
    script = ("import sys, raysearch\n"
              "import json; print(json.dumps(sorted(m for m in ('torch', 'ray', 'optuna', 'pandas', 'cv2')"
              " if m in sys.modules)))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []
