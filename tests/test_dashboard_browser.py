"""The dashboard as a person sees it: `streamlit run` on localhost, rendered by headless Chromium."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
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


@contextmanager
def served(results: Path) -> Iterator[str]:
    """The dashboard served on a free localhost port, on a results folder."""
    port = free_port()
    command = [sys.executable, "-m", "streamlit", "run", str(APP), "--server.headless", "true",
               "--server.address", "127.0.0.1", "--server.port", str(port), "--browser.gatherUsageStats", "false",
               "--client.toolbarMode", "minimal", "--", "--results", str(results)]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(url, server)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.fixture
def dashboard_url(tiny_study) -> Iterator[str]:
    """The dashboard served on the tiny study's results folder."""
    with served(tiny_study.results) as url:
        yield url


def chromium(url: str, profile: Path, *action: str) -> subprocess.CompletedProcess:
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={profile}", "--virtual-time-budget=30000", "--window-size=1400,1000", *action, url]
    return subprocess.run(command, capture_output=True, text=True, timeout=180)


def rendered_dom(url: str, profile: Path, ready: Callable[[str], bool], attempts: int = 8) -> str:
    """The page's DOM once `ready(dom)` holds, or the last one after `attempts` visits: the first visit runs
    the app's imports in the server, and on a loaded machine the app's data can arrive after Chromium's
    virtual-time budget, so later visits retry."""
    dom = ""
    for attempt in range(attempts):
        done = chromium(url, profile / str(attempt), "--dump-dom")
        assert done.returncode == 0, done.stderr[-2000:]
        dom = done.stdout
        if ready(dom):
            break
    return dom


def shows_trials(trial_ids: list[str]) -> Callable[[str], bool]:
    """Whether a DOM's leaderboard table has a cell for each of `trial_ids`."""
    return lambda dom: all(f">{trial_id}</td>" in dom for trial_id in trial_ids)


def screenshot(url: str, profiles: Path, path: Path, attempts: int = 3, most: int = 8) -> np.ndarray:
    """The most detailed of `attempts` screenshots (more, up to `most`, while all are blank), saved at
    `path`: the table's canvas is painted on a real-time timer that Chromium's virtual time sometimes
    skips, and on a loaded machine a whole page may not be painted in time."""
    best: np.ndarray | None = None
    for attempt in range(most):
        if attempt >= attempts and not blank(best):
            break
        shot = profiles / f"shot-{attempt}.png"
        done = chromium(url, profiles / f"profile-{attempt}", f"--screenshot={shot}")
        assert done.returncode == 0 and shot.is_file(), done.stderr[-2000:]
        image = cv2.imread(str(shot))
        if best is None or detail(image) > detail(best):
            best = image
    cv2.imwrite(str(path), best)
    return best


def blank(image: np.ndarray | None) -> bool:
    """Whether a screenshot shows (next to) nothing: one colour, or a handful."""
    return image is None or image.std() <= 20 or len(set(map(tuple, image.reshape(-1, 3)[::97]))) <= 50


def detail(image: np.ndarray) -> float:
    return float(cv2.Laplacian(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), cv2.CV_64F).var())


def test_leaderboard_in_headless_chromium(dashboard_url: str, tiny_study, tmp_path: Path) -> None:
    trials = pd.read_parquet(tiny_study.study / "trials.parquet").sort_values("metric.val_score.best", ascending=False)
    dom = rendered_dom(dashboard_url, tmp_path / "profiles", shows_trials(trials["trial_id"].tolist()))
    assert "Leaderboard" in dom
    assert f"trial {trials['trial_id'].iloc[0]}" in dom  # the best trial's card
    for trial_id in trials["trial_id"]:  # every trial in the leaderboard table's cells
        assert f">{trial_id}</td>" in dom
    assert "Traceback" not in dom and "stException" not in dom

    path = Path(os.environ.get("RAYSEARCH_SCREENSHOT_DIR", tmp_path)) / "dashboard-leaderboard.png"
    image = screenshot(dashboard_url, tmp_path / "shots", path)
    assert image.shape[:2] == (1000, 1400)
    assert not blank(image)


def test_switching_studies_in_chromium_shows_every_trial(two_studies, tmp_path: Path) -> None:
    """Each study opened by its link (`?study=NAME`, as the sidebar sets it) shows all its trials, and says so."""
    ids = pd.read_parquet(two_studies.study / "trials.parquet")["trial_id"].tolist()
    with served(two_studies.results) as url:
        visits = (("tiny", ids), ("other", [f"o-{i}" for i in ids]), ("tiny", ids))
        for visit, (name, shown) in enumerate(visits):
            dom = rendered_dom(f"{url}/?study={name}", tmp_path / f"visit-{visit}", shows_trials(shown))
            assert all(f">{trial_id}</td>" in dom for trial_id in shown), name
            assert f"{len(ids)} of {len(ids)} trials, ranked by" in dom and "hidden by filters" not in dom
