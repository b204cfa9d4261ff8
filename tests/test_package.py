"""The package as users install it: a light `import raysearch`, no import cycles, and (slow) a wheel that
runs a study and the dashboard from a fresh virtual environment outside the checkout."""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.request
import zipfile
from pathlib import Path

import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
WHEEL_VERSION = "0.1.0+wheeltest"  # the wheel is built from a copy of the source with this version, so that
# what runs in the fresh environment can be told apart from the checkout
SHIPPED = {"raysearch": "raysearch", "search_spaces": "raysearch/search_spaces", "dashboard": "raysearch/dashboard"}


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
    assert "raysearch.study.evaluate" in _imported_modules(ROOT / "raysearch" / "study" / "run.py")
    assert "raysearch.study.run" not in _imported_modules(ROOT / "raysearch" / "study" / "evaluate.py")


def test_import_raysearch_is_light() -> None:
    script = ("import sys, raysearch\n"
              "import json; print(json.dumps(sorted(m for m in ('torch', 'ray', 'optuna', 'pandas', 'cv2')"
              " if m in sys.modules)))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []


def _build_wheel(tmp_path: Path) -> Path:
    """A wheel built (no build isolation: offline) from a copy of the source tree stamped WHEEL_VERSION."""
    source = tmp_path / "source"
    for folder in SHIPPED:
        shutil.copytree(ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "README.md", source / "README.md")
    pyproject = (ROOT / "pyproject.toml").read_text()
    (source / "pyproject.toml").write_text(re.sub(r'(?m)^version = ".*"$', f'version = "{WHEEL_VERSION}"', pyproject))
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           str(source), "-w", str(tmp_path / "wheels")], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (wheel,) = (tmp_path / "wheels").glob("raysearch-*.whl")
    return wheel


def _fresh_environment(tmp_path: Path, wheel: Path) -> tuple[Path, Path]:
    """A new virtual environment with the wheel installed (--no-deps) and this environment's third-party
    packages visible through a .pth line (installing torch and Ray again would cost gigabytes). A .pth line
    adds a path only, so the editable install of the checkout in this environment stays inactive there.
    Returns the environment's python and its site-packages."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    shared = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    (site / "shared-packages.pth").write_text("\n".join(shared) + "\n")
    done = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
                           "-q", str(wheel)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return python, site


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _serves(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


WHERE = ("import json, raysearch, raysearch.core.bundled as b, importlib.metadata as m; print(json.dumps("
         "[raysearch.__file__, str(b.search_spaces_dir()), str(b.dashboard_app()), m.version('raysearch')]))")
DASHBOARD_APPTEST = """
import json, sys
from streamlit.testing.v1 import AppTest
from raysearch.core.bundled import dashboard_app
app_file = dashboard_app()
sys.path.insert(0, str(app_file.parent))  # what `streamlit run` does for the app's own modules
app = AppTest.from_file(str(app_file), default_timeout=180).run()
app.switch_page("views/leaderboard.py").run()
print(json.dumps({"app": str(app_file), "exceptions": [str(e.value) for e in app.exception],
                  "trial_ids": sorted(app.dataframe[0].value["trial_id"]) if app.dataframe else []}))
"""


@pytest.mark.slow
def test_wheel_runs_a_study_and_the_dashboard_outside_the_checkout(tmp_path: Path) -> None:
    wheel = _build_wheel(tmp_path)
    shipped = set(zipfile.ZipFile(wheel).namelist())
    for folder, inside in SHIPPED.items():
        sources = [p for p in (ROOT / folder).rglob("*.*") if p.suffix in (".py", ".yaml")]
        expected = {f"{inside}/{p.relative_to(ROOT / folder).as_posix()}" for p in sources}
        assert sorted(expected - shipped) == [], "the wheel lacks these files (list new subpackages in pyproject.toml)"
    python, site = _fresh_environment(tmp_path, wheel)
    raysearch = python.parent / "raysearch"
    work = tmp_path / "work"
    work.mkdir()
    environment = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RAY_ADDRESS")}
    environment |= {"RAY_USAGE_STATS_ENABLED": "0", "RAYSEARCH_RESULTS": str(work / "results")}

    def call(*command: str, timeout: float = 900) -> str:
        done = subprocess.run(command, cwd=work, capture_output=True, text=True, timeout=timeout, env=environment)
        assert done.returncode == 0, (command, done.stdout[-2000:], done.stderr[-3000:])
        return done.stdout

    where = json.loads(call(str(python), "-c", WHERE))
    assert all(Path(path).is_relative_to(site) for path in where[:3]), where
    assert where[3] == WHEEL_VERSION

    call(str(raysearch), "data", "phantom", "phantom", "--train", "48", "--val", "16", "--test", "16",
         "--image-size", "64")
    call(str(raysearch), "run", "multitask", "--data", "phantom", "--trials", "2", "--max-epochs", "1",
         "--image-size", "32", "--results", "results", "--name", "wheel", "--quiet")
    study = work / "results" / "wheel"
    recorded = yaml.safe_load((study / "study.yaml").read_text())
    assert recorded["versions"]["raysearch"] == WHEEL_VERSION and recorded["spec"]["space"] is None
    default_space = yaml.safe_load((Path(where[1]) / "multitask.yaml").read_text())
    assert set(recorded["search_space"]["parameters"]) == set(default_space["parameters"])
    trial_ids = sorted(pd.read_parquet(study / "trials.parquet")["trial_id"])
    assert len(trial_ids) == 2 and (study / "model" / "weights.pt").is_file()

    shown = json.loads(call(str(python), "-c", DASHBOARD_APPTEST).strip().splitlines()[-1])
    assert Path(shown["app"]).is_relative_to(site) and shown["exceptions"] == []
    assert shown["trial_ids"] == trial_ids

    port = _free_port()
    server = subprocess.Popen([str(raysearch), "dashboard", "results", "--port", str(port)], cwd=work, env=environment,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not _serves(f"http://127.0.0.1:{port}/_stcore/health") and time.monotonic() < deadline:
            assert server.poll() is None, server.stderr.read().decode()[-2000:]
            time.sleep(1)
        assert _serves(f"http://127.0.0.1:{port}/_stcore/health")
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
