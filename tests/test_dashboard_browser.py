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
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from playwright.sync_api import Page, sync_playwright

WAIT_LIMIT_MS = 180_000  # the first visit runs the app's imports in the server; a loaded 2-core machine is slow
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


@contextmanager
def browser_page() -> Iterator[Page]:
    """A page in headless Chromium driven by Playwright (the system's Chromium: no browser download), whose waits
    poll the live page in real time until their limit: a loaded machine makes them slower, never wrong."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(WAIT_LIMIT_MS)
            yield page
        finally:
            browser.close()


def wait_for_trials(page: Page, trial_ids: list[str]) -> str:
    """The page's HTML once its leaderboard table has a cell for each of `trial_ids`."""
    page.wait_for_function("ids => ids.every(id => document.body.innerHTML.includes(`>${id}</td>`))", arg=trial_ids)
    return page.content()


def choose_study(page: Page, name: str) -> None:
    """Pick a study in the sidebar's "Study" box, as a person does."""
    page.get_by_test_id("stSidebar").get_by_test_id("stSelectbox").click()
    page.get_by_role("option", name=name, exact=True).click()


def blank(image: np.ndarray) -> bool:
    """Whether a screenshot shows (next to) nothing: one colour, or a handful."""
    return image.std() <= 20 or len(set(map(tuple, image.reshape(-1, 3)[::97]))) <= 50


def test_leaderboard_in_headless_chromium(dashboard_url: str, tiny_study, tmp_path: Path) -> None:
    trials = pd.read_parquet(tiny_study.study / "trials.parquet").sort_values("metric.val_score.best", ascending=False)
    with browser_page() as page:
        page.goto(dashboard_url)
        html = wait_for_trials(page, trials["trial_id"].tolist())  # every trial in the leaderboard table's cells
        assert "Leaderboard" in html
        assert f"trial {trials['trial_id'].iloc[0]}" in html  # the best trial's card
        assert "Traceback" not in html and "stException" not in html

        page.get_by_test_id("stDataFrame").locator("canvas").first.wait_for()
        path = Path(os.environ.get("RAYSEARCH_SCREENSHOT_DIR", tmp_path)) / "dashboard-leaderboard.png"
        page.screenshot(path=str(path))
    image = cv2.imread(str(path))
    assert image.shape[:2] == (1000, 1400)
    assert not blank(image)


def test_switching_studies_in_chromium_shows_every_trial(two_studies, tmp_path: Path) -> None:
    """Switching study in the sidebar, in one browser session, shows all of each study's trials and says so; the
    page's link follows the choice."""
    ids = pd.read_parquet(two_studies.study / "trials.parquet")["trial_id"].tolist()
    with served(two_studies.results) as url, browser_page() as page:
        page.goto(f"{url}/?study=tiny")  # a link to one study opens it
        wait_for_trials(page, ids)
        for name, shown in (("other", [f"o-{i}" for i in ids]), ("tiny", ids)):
            choose_study(page, name)
            html = wait_for_trials(page, shown)
            page.wait_for_url(f"**study={name}**")
            assert f"{len(ids)} of {len(ids)} trials, ranked by" in html and "hidden by filters" not in html
