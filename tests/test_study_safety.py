"""A study lives inside --results, a failed command destroys nothing, a study where nothing finished is a one-line
result, and a local study's Ray listens on this machine only (issue 24)."""

from __future__ import annotations

import hashlib
import ipaddress
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import TINY_PHANTOM, TinyStudy
from streamlit.testing.v1 import AppTest

from raysearch.cli import main
from raysearch.core.columns import FAILED, no_trial_finished
from raysearch.core.layout import CACHE_DIR, IMAGE_INDEX_DIR
from raysearch.data.phantom import write_phantom
from raysearch.errors import ConfigError, DataError
from raysearch.study.spec import StudySpec

DASHBOARD = Path(__file__).resolve().parents[1] / "dashboard"
FAILING_SPACE = """task: multitask
parameters:
  lr: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}
fixed:
  model: inception_v3
  batch_size: 16
"""  # inception_v3 cannot run on 32 px images: every trial fails at its first batch
DASHBOARD_PAGES = ("views/leaderboard.py", "views/curves.py", "views/progress.py", "views/importance.py",
                   "views/tradeoffs.py", "views/models.py", "views/audit.py")


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_phantom(tmp_path_factory.mktemp("safety") / "phantom", TINY_PHANTOM, progress=False)


def tree(root: Path) -> dict[str, str]:
    """Every file under `root` (relative path → content hash), and every folder (→ '')."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else ""
            for p in sorted(root.rglob("*"))}


def one_line(capsys: pytest.CaptureFixture[str], argv: list[str], code: int = 2) -> str:
    """Run the CLI in this process; assert its exit code and a single `raysearch: error:` line on stderr."""
    assert main(argv) == code
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("raysearch: error: "), lines
    return lines[0].removeprefix("raysearch: error: ")


@pytest.mark.parametrize("name", ["{abs}", "../x", "a/b", "n" * 300, "..", ".hidden", "a b"])
def test_a_name_that_is_not_one_folder_is_refused_and_nothing_is_created(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, phantom: Path, name: str) -> None:
    name = name.replace("{abs}", str(tmp_path / "elsewhere"))
    before = tree(tmp_path)
    line = one_line(capsys, ["run", "multitask", "--data", str(phantom), "--name", name,
                             "--results", str(tmp_path / "results"), "--quiet"])
    assert line.startswith("--name: ") and "is not a study name" in line
    assert tree(tmp_path) == before  # not the results folder, not the absolute target, not ../x beside it
    with pytest.raises(ConfigError, match="is not a study name"):  # the Python API goes through the same check
        StudySpec(task="multitask", name=name)


def test_a_derived_name_is_one_portable_folder_name() -> None:
    name = StudySpec(task="multitask", space="my space ü.yaml").study_name("task: multitask\n")
    assert name.startswith("multitask-my-space-") and "/" not in name and " " not in name


@pytest.mark.parametrize("where", ["file", "under-a-file", "unwritable"])
def test_results_that_cannot_hold_a_study_are_refused_in_one_line(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, phantom: Path, where: str) -> None:
    (tmp_path / "a-file").write_text("not a folder")
    results = {"file": tmp_path / "a-file", "under-a-file": tmp_path / "a-file" / "results",
               "unwritable": Path("/proc/raysearch-results")}[where]  # /proc takes no new file, not even root's
    before = tree(tmp_path)
    line = one_line(capsys, ["run", "multitask", "--data", str(phantom), "--results", str(results), "--quiet"])
    assert line.startswith(f"--results {results}: ")
    assert {"file": "is a file, not a folder", "under-a-file": "which is a file, not a folder",
            "unwritable": "/proc cannot be written"}[where] in line
    assert tree(tmp_path) == before and not results.is_dir()


def test_no_trial_finished_names_the_commonest_reason() -> None:
    frame = pd.DataFrame({"trial_id": ["a", "b", "c"], "status": [FAILED] * 3,
                          "error": ["OutOfMemoryError: CUDA", "ValueError: x", "OutOfMemoryError: CUDA"]})
    assert no_trial_finished(frame) == ("no trial finished (3 of 3 failed; commonest reason, 2 of them: "
                                        "OutOfMemoryError: CUDA)")


@pytest.mark.slow
def test_a_failed_evaluate_leaves_the_predictions_as_they_were(capsys: pytest.CaptureFixture[str],
                                                               tiny_study_copy: TinyStudy) -> None:
    study = tiny_study_copy.study
    kept = {name: tree(study / name) for name in ("predictions",)}
    tables = {name: (study / name).read_bytes() for name in ("predictions.parquet", "trials.parquet")}
    spec = yaml.safe_load((study / "study.yaml").read_text())
    spec["data"]["root"] = str(tiny_study_copy.results.parent / "moved-away")  # the dataset is gone...
    (study / "study.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    shutil.rmtree(tiny_study_copy.results / "cache")  # ...and so is its cache
    line = one_line(capsys, ["evaluate", str(study), "--top", "2", "--quiet"])
    assert "moved-away" in line
    assert {name: tree(study / name) for name in kept} == kept
    assert {name: (study / name).read_bytes() for name in tables} == tables
    assert not [p.name for p in study.iterdir() if p.name.startswith(".predictions")]  # no staging left


@pytest.mark.slow
def test_a_failed_export_leaves_the_model_folder_as_it_was(capsys: pytest.CaptureFixture[str],
                                                           tiny_study_copy: TinyStudy) -> None:
    study = tiny_study_copy.study
    model = tree(study / "model")
    other = pd.read_parquet(study / "trials.parquet")["trial_id"].iloc[-1]
    for best in [*study.rglob("best_model.pt")]:
        if other in best.as_posix():
            best.write_bytes(best.read_bytes()[:100])  # the trial's checkpoint is damaged
    line = one_line(capsys, ["export", str(study), "--trial", str(other), "--format", "torchscript"])
    assert "best_model.pt: not a readable weights file" in line
    assert tree(study / "model") == model
    assert not [p.name for p in study.iterdir() if p.name.startswith(".model")]


@pytest.mark.slow
def test_predict_never_replaces_a_folder_of_other_files(capsys: pytest.CaptureFixture[str], tiny_study: TinyStudy,
                                                        tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    image = next((tiny_study.data / "test" / "images").iterdir())
    line = one_line(capsys, ["predict", str(tiny_study.study), str(image), "--out", str(tmp_path / "mine")])
    assert "holds files that are not raysearch predictions" in line
    assert tree(tmp_path / "mine") == {"notes.txt": hashlib.sha256(b"keep me").hexdigest()}
    out = tmp_path / "labelled"
    assert main(["predict", str(tiny_study.study), str(image), "--out", str(out)]) == 0
    first = tree(out)
    assert main(["predict", str(tiny_study.study), str(image), "--out", str(out)]) == 0  # an earlier one: replaced
    assert tree(out) == first and "predictions.json" in first
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


@dataclass(frozen=True)
class FailedStudy:
    """A study every trial of which failed, run as a user would, with what its Ray processes listened on."""

    results: Path
    study: Path
    returncode: int
    stderr: str
    listening: list[tuple[str, str, int]]  # (process name, address, port)


def _listening(root: int) -> set[tuple[str, str, int]]:
    """The listening TCP sockets of `root` and every process below it."""
    import psutil  # ships with Ray (ray/thirdparty_files, on the path once conftest imported ray)

    found = set()
    try:
        processes = [psutil.Process(root), *psutil.Process(root).children(recursive=True)]
    except psutil.NoSuchProcess:
        return found
    for process in processes:
        try:
            found |= {(process.name(), c.laddr.ip, c.laddr.port) for c in process.net_connections(kind="inet")
                      if c.status == psutil.CONN_LISTEN}
        except psutil.Error:
            continue
    return found


@pytest.fixture(scope="module")
def failed_study(tmp_path_factory: pytest.TempPathFactory, phantom: Path) -> FailedStudy:
    """`raysearch run` (local Ray) of a trial that fails (no retry: `--max-failures 0`), its processes' listening
    sockets read meanwhile."""
    root = tmp_path_factory.mktemp("failed-study")
    (root / "space.yaml").write_text(FAILING_SPACE)
    results = root / "results"
    environment = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    command = [sys.executable, "-m", "raysearch", "run", "multitask", "--data", str(phantom), "--space",
               str(root / "space.yaml"), "--trials", "1", "--max-epochs", "1", "--image-size", "32", "--results",
               str(results), "--name", "failed", "--max-failures", "0", "--quiet"]
    driver = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=environment | {"RAY_USAGE_STATS_ENABLED": "0"})
    listening: set[tuple[str, str, int]] = set()
    deadline = time.monotonic() + 600
    while driver.poll() is None and time.monotonic() < deadline:
        listening |= _listening(driver.pid)
        time.sleep(0.5)
    _, stderr = driver.communicate(timeout=60)
    return FailedStudy(results, results / "failed", driver.returncode, stderr, sorted(listening))


@pytest.mark.slow
def test_a_study_where_every_trial_failed_ends_in_one_line_and_keeps_its_folder(failed_study: FailedStudy) -> None:
    assert failed_study.returncode == 1, failed_study.stderr[-3000:]
    ours = [line for line in failed_study.stderr.splitlines() if line.startswith("raysearch: ")]
    assert ours == [failed_study.stderr.strip().splitlines()[-1]]
    assert ours[0].startswith(f"raysearch: error: {failed_study.study}: no trial finished (1 of 1 failed; "
                              "commonest reason, 1 of them: ")
    assert "inception_v3" in ours[0] and "32x32" in ours[0]
    trials = pd.read_parquet(failed_study.study / "trials.parquet")
    assert list(trials["status"]) == [FAILED]
    assert (failed_study.study / "study.yaml").is_file() and not (failed_study.study / "model").exists()


@pytest.mark.slow
@pytest.mark.parametrize(("command", "doing"), [("evaluate", "evaluate"), ("export", "export")])
def test_evaluate_and_export_say_in_one_line_that_nothing_finished(
        capsys: pytest.CaptureFixture[str], failed_study: FailedStudy, command: str, doing: str) -> None:
    before = tree(failed_study.study)
    line = one_line(capsys, [command, str(failed_study.study)])
    assert line.startswith(f"{failed_study.study}: no trial finished (1 of 1 failed; commonest reason")
    assert line.endswith(f"; nothing to {doing}")
    assert tree(failed_study.study) == before


@pytest.mark.slow
def test_every_dashboard_page_says_nothing_finished(failed_study: FailedStudy, monkeypatch: pytest.MonkeyPatch
                                                   ) -> None:
    monkeypatch.syspath_prepend(str(DASHBOARD))
    monkeypatch.setenv("RAYSEARCH_RESULTS", str(failed_study.results))
    app = AppTest.from_file(str(DASHBOARD / "app.py"), default_timeout=120)
    app.run()
    assert not app.exception, app.exception
    for path in DASHBOARD_PAGES:
        app.switch_page(path).run()
        assert not app.exception, (path, app.exception)
        notices = [w.value for w in app.main.warning if "no trial finished" in w.value]
        assert len(notices) == 1 and notices[0].startswith("Study failed: no trial finished (1 of 1 failed"), path


def _loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    return ip.is_loopback or bool(getattr(ip, "ipv4_mapped", None) and ip.ipv4_mapped.is_loopback)


@pytest.mark.slow
def test_a_local_studys_ray_listens_on_loopback_only(failed_study: FailedStudy) -> None:
    names = {name for name, _, _ in failed_study.listening}
    assert {"gcs_server", "raylet"} <= names, failed_study.listening  # Ray was seen while it ran
    exposed = [entry for entry in failed_study.listening if not _loopback(entry[1])]
    assert exposed == [], exposed


def test_resume_on_changed_data_is_refused_before_any_cache_is_built(tmp_path: Path, phantom: Path) -> None:
    from raysearch.study.run import _plan, _space_for
    from raysearch.tasks import create_task
    from raysearch.training.hparams import schema

    spec = StudySpec(task="multitask", data=str(phantom), name="s", results=str(tmp_path / "results"))
    experiment = tmp_path / "results" / "s" / "ray" / "s"
    experiment.mkdir(parents=True)
    (experiment / "tuner.pkl").write_bytes(b"")  # what Tuner.can_restore looks for (never unpickled here)
    space, _ = _space_for(spec, schema(create_task("multitask").hyperparameters))
    recorded = {"name": "s", "search_space": space.to_dict(), "data": {"fingerprint": "of-the-data-it-ran-on"}}
    with pytest.raises(ConfigError, match="study.yaml: data.fingerprint: the dataset at .* changed since the study"):
        _plan(spec, progress=False, resuming=True, recorded=recorded)
    # no preprocessing cache built: beside the study, at most the image index the fingerprint was read from
    assert {p.name for p in (tmp_path / "results").iterdir()} <= {"s", CACHE_DIR}
    cache = tmp_path / "results" / CACHE_DIR
    assert not cache.exists() or [p.name for p in cache.iterdir()] == [IMAGE_INDEX_DIR]


def test_a_crafted_trial_id_cannot_name_a_path_outside_the_study(tmp_path: Path) -> None:
    from raysearch.core.layout import StudyFolder
    from raysearch.study.evaluate import PredictionFolder

    folder = StudyFolder(tmp_path / "study")
    assert folder.trial_dir("a1b2") == tmp_path / "study" / "train" / "a1b2"
    with pytest.raises(DataError, match=r"\.\./\.\./escape: refused, the path lies outside the folder"):
        folder.trial_dir("../../escape")  # a trial id read from a received trials.parquet
    staging = tmp_path / "study" / ".predictions.tmp-1"
    with pytest.raises(DataError, match="refused, the path lies outside the folder"):
        PredictionFolder(staging, tmp_path / "study" / "predictions").target(Path("masks/../../../x-r0/1.png"))
    assert not (tmp_path / "x-r0").exists()
