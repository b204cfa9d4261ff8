"""Study folders that cannot run code: `raysearch resume` unpickles Ray Tune's state only when the user's own
driver signed it. A received folder with a crafted pickle is refused in one line and the pickle never runs; a
study of one's own that was killed (SIGKILL) resumes without --trust, with tampered or unsigned state files put
back to the last signed snapshot."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from ray_processes import alive, kill_all, kill_driver_when, title, wait_for

from raysearch.core.layout import SIGNED_DIR
from raysearch.data.phantom import PhantomSpec, write_phantom
from raysearch.search.signing import KEY_VARIABLE, MANIFEST_FILE, load_key


class RunsCode:
    """Unpickling this runs a shell command that creates `marker`, as a crafted tuner.pkl would."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return os.system, (f"touch {self.marker}",)


def crafted(marker: Path) -> bytes:
    return pickle.dumps(RunsCode(marker))


def resume(study: Path, *options: str, key: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    if key is not None:
        environment[KEY_VARIABLE] = str(key)
    return subprocess.run([sys.executable, "-m", "raysearch", "resume", str(study), "--quiet", *options],
                          capture_output=True, text=True, env=environment, timeout=timeout)


def test_crafted_pickle_is_live(tmp_path: Path) -> None:
    """The control: the crafted file really runs its command when something unpickles it."""
    marker = tmp_path / "ran"
    pickle.loads(crafted(marker))
    assert marker.exists()


def test_key_is_private_and_refused_when_others_can_read_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = tmp_path / "config" / "raysearch" / "signing.key"
    monkeypatch.setenv(KEY_VARIABLE, str(key))
    assert load_key() == load_key() and len(load_key()) == 32
    assert key.stat().st_mode & 0o777 == 0o600
    key.chmod(0o644)
    with pytest.raises(Exception, match="readable by others; run `chmod 600"):
        load_key()


@pytest.mark.slow
@pytest.mark.parametrize("received", ["signed by someone else", "unsigned"])
def test_received_study_with_a_crafted_pickle_is_refused(tiny_study_copy, tmp_path: Path, received: str) -> None:
    study = tiny_study_copy.study
    (study / "trials.parquet").unlink()  # as if its driver had been stopped: `resume` would restore it
    marker = tmp_path / "ran"
    (study / "ray" / study.name / "tuner.pkl").write_bytes(crafted(marker))
    if received == "unsigned":
        shutil.rmtree(study / SIGNED_DIR)
    before = sorted(p.relative_to(study) for p in study.rglob("*"))

    done = resume(study, key=tmp_path / "receiver.key")  # the receiver's own key, not the author's

    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("raysearch: error: ") and "--trust" in lines[0], done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert not marker.exists()
    assert sorted(p.relative_to(study) for p in study.rglob("*")) == before, "nothing created or removed"


@pytest.mark.slow
def test_own_study_killed_then_resumed_without_trust_puts_back_signed_state(tmp_path: Path) -> None:
    data = write_phantom(tmp_path / "phantom", PhantomSpec(train=240, val=16, test=8, image_size=64), progress=False)
    space = tmp_path / "space.yaml"
    space.write_text("task: multitask\nparameters:\n  lr: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}\n"
                     "fixed: {model: vgg, conv_layers: 2, width: 8, patience: 0}\n")
    results, study = tmp_path / "results", tmp_path / "results" / "killed"
    experiment, manifest = study / "ray" / "killed", study / SIGNED_DIR / MANIFEST_FILE
    command = [sys.executable, "-m", "raysearch", "run", "multitask", "--data", str(data), "--space", str(space),
               "--trials", "3", "--max-epochs", "3", "--image-size", "64", "--concurrency", "1",
               "--results", str(results), "--name", "killed", "--quiet"]
    environment = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}

    def snapshot_signed() -> bool:
        try:
            files = json.loads(manifest.read_text())["files"]
        except (OSError, ValueError):
            return False
        return any(name.startswith("experiment_state-") for name in files) and any((study / "train").glob("*/*"))

    local_ray = kill_driver_when(command, snapshot_signed, "a signed snapshot with a trial", environment)
    core = [pid for pid, name in local_ray.items() if name.split(" ")[0].endswith(("gcs_server", "raylet"))]
    wait_for(lambda: not any(alive(pid) for pid in core), 60, "the killed driver's GCS and raylet to exit")
    kill_all([pid for pid, name in local_ray.items() if title(pid) == name])

    # Someone with write access swaps tuner.pkl and plants a newer searcher state: both would run on restore.
    marker = tmp_path / "ran"
    signed_tuner = (experiment / "tuner.pkl").read_bytes()
    (experiment / "tuner.pkl").write_bytes(crafted(marker))
    planted = experiment / "searcher-state-2099-01-01_00-00-00.pkl"
    planted.write_bytes(crafted(marker))

    done = resume(study, timeout=900)

    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert not marker.exists()
    assert "Put back the signed copies of" in done.stdout
    assert not planted.exists() and (experiment / "tuner.pkl").read_bytes() == signed_tuner
    trials = pq.read_table(study / "trials.parquet").to_pandas()
    assert len(trials) == 3 and trials["trial_id"].is_unique
