"""The dashboard as a person sees it: `streamlit run` on localhost, rendered by headless Chromium."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import cv2
import pandas as pd
import pytest

APP = Path(__file__).resolve().parents[1] / "dashboard" / "app.py"
CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").is_file() else None)
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed (apt-get install chromium)"),
]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_healthy(url: str, server: subprocess.Popen, limit_s: float = 120) -> None:
    """Poll Streamlit's health endpoint until it answers (or the server dies, or the limit passes)."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"streamlit exited: {server.stderr.read()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"streamlit did not answer at {url} within {limit_s} s")


@pytest.fixture
def dashboard_url(tiny_study) -> Iterator[str]:
    """The dashboard served on a free localhost port, on the tiny study's results folder."""
    port = free_port()
    command = [sys.executable, "-m", "streamlit", "run", str(APP), "--server.headless", "true",
               "--server.address", "127.0.0.1", "--server.port", str(port), "--browser.gatherUsageStats", "false",
               "--client.toolbarMode", "minimal", "--", "--results", str(tiny_study.results)]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(url, server)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


def chromium(url: str, profile: Path, *action: str) -> subprocess.CompletedProcess:
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={profile}", "--virtual-time-budget=30000", "--window-size=1400,1000", *action, url]
    return subprocess.run(command, capture_output=True, text=True, timeout=180)


def rendered_dom(url: str, profile: Path, attempts: int = 5) -> str:
    """The page's DOM once the app has drawn it: the first visit runs the app's imports in the server,
    which on a loaded machine can outlast Chromium's virtual-time budget, so later visits retry."""
    dom = ""
    for attempt in range(attempts):
        done = chromium(url, profile / str(attempt), "--dump-dom")
        assert done.returncode == 0, done.stderr[-2000:]
        dom = done.stdout
        if "stDataFrame" in dom and "stMetric" in dom:
            break
    return dom


def test_leaderboard_in_headless_chromium(dashboard_url: str, tiny_study, tmp_path: Path) -> None:
    dom = rendered_dom(dashboard_url, tmp_path / "profiles")
    assert "Leaderboard" in dom
    best = pd.read_parquet(tiny_study.study / "trials.parquet").sort_values(
        "metric.val_score.best", ascending=False)["trial_id"].iloc[0]
    assert f"trial {best}" in dom
    assert "Traceback" not in dom and "stException" not in dom

    screenshot = Path(os.environ.get("RAYSEARCH_SCREENSHOT_DIR", tmp_path)) / "dashboard-leaderboard.png"
    shot = chromium(dashboard_url, tmp_path / "profile-shot", f"--screenshot={screenshot}")
    assert shot.returncode == 0 and screenshot.is_file(), shot.stderr[-2000:]
    image = cv2.imread(str(screenshot))
    assert image.shape[:2] == (1000, 1400)
    assert image.std() > 20 and len(set(map(tuple, image.reshape(-1, 3)[::97]))) > 50  # not a blank page
