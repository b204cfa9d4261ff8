"""Ctrl-C keeps a study's state and says how to resume it: a real SIGINT to a real `raysearch run` while its last
trial runs, then `raysearch resume` finishes the study (each run starts its own local Ray instance)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from ray_processes import wait_for

from raysearch.core.layout import TRAIN_DIR, TRIALS_FILE
from raysearch.data.phantom import PhantomSpec, write_phantom

pytestmark = pytest.mark.slow

SPACE = """task: multitask
parameters:
  lr: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}
  width: {type: categorical, choices: [8, 16]}
fixed: {model: vgg, conv_layers: 2, batch_size: 16}
"""


def _environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"RAY_USAGE_STATS_ENABLED": "0"}


def test_ctrl_c_during_the_last_trial_keeps_the_study_and_says_how_to_resume_it(tmp_path: Path) -> None:
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    # epochs long enough (160 images of 64 px, 8 epochs, no ASHA stop) that the signal lands mid-trial
    data = write_phantom(tmp_path / "phantom", PhantomSpec(train=160, val=16, test=8, image_size=64), progress=False)
    results = tmp_path / "results"
    train = results / "study" / TRAIN_DIR
    command = [sys.executable, "-m", "raysearch", "run", "multitask", "--data", str(data), "--space", str(space),
               "--image-size", "64", "--results", str(results), "--name", "study", "--quiet", "--trials", "2",
               "--max-epochs", "8", "--grace-period", "8", "--concurrency", "1", "--seed", "1"]
    driver = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=_environment())
    try:
        # the second trial has started: the first one finished, the second has its first checkpoint
        wait_for(lambda: driver.poll() is not None or len({c.parent for c in train.glob("*/checkpoint_*")}) >= 2,
                 600, "the second trial's first checkpoint")
        assert driver.poll() is None, "the study ended before it could be interrupted"
        driver.send_signal(signal.SIGINT)  # what Ctrl-C sends to the terminal's foreground process
        out, err = driver.communicate(timeout=300)
    finally:
        if driver.poll() is None:
            driver.kill()
    study = results / "study"
    assert driver.returncode == 2, out[-2000:] + err[-3000:]
    assert f"raysearch resume {study}" in err and "interrupted" in err
    assert not (study / TRIALS_FILE).exists()  # no final results from a part of a search
    assert len([t for t in train.iterdir() if any(t.glob("checkpoint_*"))]) >= 2  # checkpoints kept

    again = subprocess.run(command, capture_output=True, text=True, env=_environment(), timeout=300)
    assert again.returncode == 2 and f"raysearch resume {study}" in again.stderr

    resumed = subprocess.run([sys.executable, "-m", "raysearch", "resume", str(study), "--quiet"],
                             capture_output=True, text=True, env=_environment(), timeout=900)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
    trials = pq.read_table(study / TRIALS_FILE).to_pylist()
    assert len(trials) == 2 and len({t["trial_id"] for t in trials}) == 2
    assert all(t["status"] in ("COMPLETED", "PRUNED") for t in trials)
