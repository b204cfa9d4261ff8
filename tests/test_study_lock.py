"""One driver per study: the lock on the study folder, with real processes (two `raysearch run` at once,
a holder killed with SIGKILL, a holder stopped with Ctrl-C)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import TINY_PHANTOM, TINY_SPACE
from test_cli import raysearch

from raysearch.core.layout import LOCK_FILE
from raysearch.data.phantom import write_phantom
from raysearch.study.lock import study_lock

HOLDER = """
import sys, time
from pathlib import Path
from raysearch.study.lock import study_lock
with study_lock(Path(sys.argv[1])):
    print("locked", flush=True)
    time.sleep(120)
"""


def _hold(study: Path) -> subprocess.Popen:
    """A process that takes the lock of an existing study folder and keeps it; returns once the lock is held."""
    study.mkdir(parents=True, exist_ok=True)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(study)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def _wait_for_holder(path: Path, process: subprocess.Popen, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.is_file() and path.read_text().strip():
            return json.loads(path.read_text())
        assert process.poll() is None, process.communicate()
        time.sleep(0.2)
    raise AssertionError(f"{path} never named a holder")


def test_second_driver_is_refused_naming_the_holder(tmp_path: Path) -> None:
    data = write_phantom(tmp_path / "phantom", TINY_PHANTOM, progress=False)
    results, name = tmp_path / "results", "same"
    holder = _hold(results / name)
    (results / name / "trials.parquet").write_bytes(b"")  # what the holder's study looks like is not the point
    try:
        refused = raysearch("run", "multitask", "--data", str(data), "--image-size", "32", "--name", name,
                            "--results", str(results), "--quiet")
    finally:
        holder.send_signal(signal.SIGINT)
        holder.wait(timeout=30)
    assert refused.returncode == 2, refused.stderr
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in refused.stderr
    assert "another raysearch driver runs this study" in lines[0] and f"PID {holder.pid} on " in lines[0]
    assert sorted(p.name for p in (results / name).iterdir()) == [LOCK_FILE, "trials.parquet"]


def test_lock_is_released_on_ctrl_c(tmp_path: Path) -> None:
    holder = _hold(tmp_path / "study")
    holder.send_signal(signal.SIGINT)
    holder.wait(timeout=30)
    assert (tmp_path / "study" / LOCK_FILE).read_text() == ""
    notices: list[str] = []
    with study_lock(tmp_path / "study", out=_Lines(notices)):
        pass
    assert notices == []


def test_lock_of_a_killed_driver_is_taken_over_with_a_notice(tmp_path: Path) -> None:
    holder = _hold(tmp_path / "study")
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    notices: list[str] = []
    with study_lock(tmp_path / "study", out=_Lines(notices)):
        record = json.loads((tmp_path / "study" / LOCK_FILE).read_text())
    assert record["pid"] == os.getpid()
    text = "".join(notices)
    assert text.count("\n") == 1 and f"took over the lock of PID {holder.pid} on " in text


def test_a_folder_the_lock_created_is_removed_when_nothing_else_was_written(tmp_path: Path) -> None:
    """A run refused after taking the lock (say, by the cluster's capacity) leaves no study folder behind."""
    with pytest.raises(RuntimeError), study_lock(tmp_path / "results" / "refused"):
        assert (tmp_path / "results" / "refused" / LOCK_FILE).is_file()
        raise RuntimeError("refused after the lock")
    assert not (tmp_path / "results" / "refused").exists()
    with study_lock(tmp_path / "results" / "ran"):
        (tmp_path / "results" / "ran" / "study.yaml").write_text("name: ran\n")
    assert sorted(p.name for p in (tmp_path / "results" / "ran").iterdir()) == [LOCK_FILE, "study.yaml"]


class _Lines:
    """A text stream that collects what is written to it."""

    def __init__(self, into: list[str]) -> None:
        self.into = into

    def write(self, text: str) -> None:
        self.into.append(text)

    def flush(self) -> None:
        pass


@pytest.mark.slow
def test_two_concurrent_runs_on_one_study(tmp_path: Path) -> None:
    """Two real `raysearch run` drivers on the same --name and --results: the second is refused while the
    first runs, and the first's results hold both its trials."""
    data = write_phantom(tmp_path / "phantom", TINY_PHANTOM, progress=False)
    space = tmp_path / "space.yaml"
    space.write_text(TINY_SPACE)
    results = tmp_path / "results"
    args = ["run", "multitask", "--data", str(data), "--space", str(space), "--trials", "2", "--max-epochs", "1",
            "--image-size", "32", "--results", str(results), "--name", "same", "--quiet"]
    environment = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"RAY_USAGE_STATS_ENABLED": "0"}
    first = subprocess.Popen([sys.executable, "-m", "raysearch", *args], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=environment)
    record = _wait_for_holder(results / "same" / LOCK_FILE, first)
    second = raysearch(*args)
    out, err = first.communicate(timeout=600)
    assert record["pid"] == first.pid
    assert second.returncode == 2 and "Traceback" not in second.stderr
    assert second.stderr.strip().splitlines() == [
        f"raysearch: error: {results / 'same'}: another raysearch driver runs this study: PID {first.pid} on "
        f"{record['host']} (since {record['since']}); wait for it or stop it"]
    assert first.returncode == 0, err[-3000:]
    assert len(pq.read_table(results / "same" / "trials.parquet")) == 2
    assert (results / "same" / LOCK_FILE).read_text() == ""
