"""Shared fixtures.

`tiny_study`: ONE real results folder, made once per test run (by whichever pytest-xdist process asks first: the
other waits for it and reads the same folder) by running `raysearch run multitask` as
a user would (subprocess, local Ray) on a tiny phantom dataset, for the tests that read finished results
(evaluation, export, dashboard, Ray's result tools, MLflow tracking: it runs with `--log mlflow,tensorboard`).
Tests that change the folder work on `tiny_study_copy`. `two_worker_study`: the same study with 3 2-worker trials
under ASHA and `--log wandb` (offline), for Ray's result tools on multi-worker trials, their epochs against Tune's,
and W&B tracking.

Suite rules kept by the hooks below: a test that runs a Ray study (a study fixture, or `ray.init` in this
process) must be marked `slow`, so that `pytest -m "not slow"` stays fast; `gpu` tests are deselected, not
skipped, where CUDA is absent; with RAYSEARCH_FAIL_ON_SKIP=1 (set by CI) a skipped test fails the run.
"""

from __future__ import annotations

import os

# Tests never reach the network: pretrained weights come from the Hugging Face cache only (huggingface_hub
# reads this once, at import; subprocesses inherit it).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import ray  # imported once here, so that the guard below costs nothing per test (and forked runners inherit it)
from filelock import FileLock

from raysearch.data.cache import CachedDataset, dataset_fingerprint, ensure_cache, load_cache
from raysearch.data.formats import load_dataset
from raysearch.data.phantom import PhantomSpec, write_phantom
from raysearch.training.hparams import defaults, preprocessing_of

STUDY_FIXTURES = frozenset({"tiny_study", "tiny_study_copy", "two_worker_study"})
FAIL_ON_SKIP = "RAYSEARCH_FAIL_ON_SKIP"
TINY_STUDY_NAME = "tiny"
SHARED_STUDY_DONE = "done"
TINY_MALFORMED_LABEL = "0 0.1 0.1 x 0.2 0.3 0.3\n"  # one bad label file in the tiny study's data: skipped, listed
TINY_PHANTOM = PhantomSpec(train=48, val=16, test=16, image_size=64)
# Small VGGs only, so that every trial, evaluation and retraining of the tiny study takes seconds on a CPU.
TINY_SPACE = """task: multitask
metric: val_score
mode: max
parameters:
  conv_layers: {type: int, low: 2, high: 4}
  width: {type: categorical, choices: [8, 16]}
  lr: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}
  scheduler: {type: categorical, choices: [none, step]}
  step_size: {type: int, low: 1, high: 2, when: {scheduler: step}}
fixed:
  model: vgg
  batch_size: 16
"""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Refuse unmarked study tests; deselect `gpu` tests (reported as deselected, never as skipped) without CUDA."""
    unmarked = [item.nodeid for item in items
                if STUDY_FIXTURES & set(getattr(item, "fixturenames", ())) and item.get_closest_marker("slow") is None]
    if unmarked:
        raise pytest.UsageError(f"tests that run a Ray study must be marked slow: {', '.join(unmarked)}")
    import torch

    if torch.cuda.is_available():
        return
    gpu = [item for item in items if item.get_closest_marker("gpu") is not None]
    if gpu:
        config.hook.pytest_deselected(items=gpu)
        items[:] = [item for item in items if item.get_closest_marker("gpu") is None]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> pytest.TestReport:
    """With RAYSEARCH_FAIL_ON_SKIP=1, a skipped test is reported as failed, with the skip's reason."""
    report = yield
    if report.skipped and not hasattr(report, "wasxfail") and os.environ.get(FAIL_ON_SKIP) == "1":
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped, but {FAIL_ON_SKIP}=1 forbids skips: {reason}"
    return report


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """With RAYSEARCH_FAIL_ON_SKIP=1, any skip left (e.g. a module skipped at collection) fails the run."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if os.environ.get(FAIL_ON_SKIP) == "1" and reporter is not None and reporter.stats.get("skipped"):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(autouse=True)
def _fast_tests_start_no_ray(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """A test not marked slow that calls `ray.init` fails: fast tests run no Ray study."""
    if request.node.get_closest_marker("slow") is not None:
        return

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"{request.node.nodeid} starts Ray (ray.init) but is not marked slow")

    monkeypatch.setattr(ray, "init", refuse)


@pytest.fixture(autouse=True)
def _main_module_kept() -> Iterator[None]:
    """Streamlit's AppTest runs the dashboard script as `__main__` and leaves it in `sys.modules`; a process that
    multiprocessing spawns afterwards would run that script instead of the test runner. Put the real one back."""
    main = sys.modules["__main__"]
    yield
    sys.modules["__main__"] = main


@dataclass(frozen=True)
class TinyStudy:
    """A finished tiny study: its results root, study folder, phantom dataset and `raysearch run` output."""

    results: Path
    study: Path
    data: Path
    stdout: str
    stderr: str = ""


def _run_tiny_study(root: Path, *options: str, environment: dict[str, str] | None = None,
                    console: tuple[str, ...] = ("--quiet",)) -> TinyStudy:
    """`raysearch run multitask` on the tiny phantom data and space (2 trials, 2 epochs, 32 px) with `options`, its
    console in the mode `console` chooses (`--quiet` unless told)."""
    data = write_phantom(root / "phantom", TINY_PHANTOM, progress=False)
    template = sorted((data / "train" / "images").iterdir())[0]
    shutil.copyfile(template, template.with_name(f"malformed{template.suffix}"))
    (data / "train" / "labels" / "malformed.txt").write_text(TINY_MALFORMED_LABEL)
    space = root / "tiny-space.yaml"
    space.write_text(TINY_SPACE)
    results = root / "results"
    environment = ({k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
                   | {"RAY_USAGE_STATS_ENABLED": "0"} | (environment or {}))
    command = [sys.executable, "-m", "raysearch", "run", "multitask", "--data", str(data), "--space", str(space),
               "--trials", "2", "--max-epochs", "2", "--image-size", "32", "--results", str(results),
               "--name", TINY_STUDY_NAME, *options, *console]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, env=environment)
    assert done.returncode == 0, f"tiny study failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    return TinyStudy(results, results / TINY_STUDY_NAME, data, done.stdout, done.stderr)


def cached_phantom(factory: pytest.TempPathFactory, spec: PhantomSpec) -> CachedDataset:
    """A phantom dataset of `spec` written and preprocessed (default preprocessing at its image size) under
    `factory`'s temporary folders, memory-mapped as a trial reads it."""
    root = write_phantom(factory.mktemp("phantom") / "data", spec, progress=False)
    index = load_dataset(root)
    preprocessing = preprocessing_of({**defaults({}), "image_size": spec.image_size})
    directory, _ = ensure_cache(index, dataset_fingerprint(index), preprocessing, factory.mktemp("cache"),
                                progress=False)
    return load_cache(directory)


def wandb_offline_environment(root: Path) -> dict[str, str]:
    """W&B in its offline mode, with its settings, cache and default run folder under `root`."""
    return {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_DIR": str(root / "wandb-dir"),
            "WANDB_CONFIG_DIR": str(root / "wandb-config"), "WANDB_CACHE_DIR": str(root / "wandb-cache"),
            "WANDB_DATA_DIR": str(root / "wandb-data")}


def pytest_configure(config: pytest.Config) -> None:
    """Every driver the tests start signs its Ray Tune state with a key of the test session, never the user's."""
    os.environ.setdefault("RAYSEARCH_KEY_FILE", str(Path(tempfile.mkdtemp(prefix="raysearch-key-")) / "signing.key"))


def _shared_root(factory: pytest.TempPathFactory, name: str) -> Path:
    """The folder `name` in the temporary folder of the whole test run: under pytest-xdist the one its processes
    share (each has its own below it)."""
    base = factory.getbasetemp()
    return (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / name


def _shared_study(root: Path, *options: str, **settings: Any) -> TinyStudy:
    """The tiny study in `root` (`_run_tiny_study` with `options` and `settings`, from `_shared_root`), run once
    per test run: by the first pytest-xdist process to ask while the others wait on its lock; they all read the
    same folder, and the run's output from files beside it."""
    with FileLock(f"{root}.lock"):
        if not (root / SHARED_STUDY_DONE).is_file():
            shutil.rmtree(root, ignore_errors=True)
            root.mkdir()
            study = _run_tiny_study(root, *options, **settings)
            (root / "stdout.txt").write_text(study.stdout)
            (root / "stderr.txt").write_text(study.stderr)
            (root / SHARED_STUDY_DONE).touch()
    results = root / "results"
    return TinyStudy(results, results / TINY_STUDY_NAME, root / "phantom", (root / "stdout.txt").read_text(),
                     (root / "stderr.txt").read_text())


@pytest.fixture(scope="session")
def tiny_study(tmp_path_factory: pytest.TempPathFactory) -> TinyStudy:
    """A real finished study (2 trials, 2 epochs, 32 px): read it, never change it."""
    return _shared_study(_shared_root(tmp_path_factory, "tiny-study"), "--log", "mlflow,tensorboard")


@pytest.fixture(scope="session")
def two_worker_study(tmp_path_factory: pytest.TempPathFactory) -> TinyStudy:
    """The tiny study again with 3 trials, each on 2 Ray Train workers (half a CPU each: two trials at once), under
    ASHA (grace period 1, reduction factor 4: a trial reaching epoch 1 below 3/4 of the way between the others'
    scores is stopped), tracked in W&B's offline mode (W&B's folders under the test's temporary folder), its console
    in the default mode (neither --quiet nor --verbose): read it, never change it."""
    root = _shared_root(tmp_path_factory, "two-worker-study")
    return _shared_study(root, "--trials", "3", "--workers-per-trial", "2", "--cpus-per-worker",
                         "0.5", "--scheduler", "asha", "--grace-period", "1", "--reduction-factor", "4",
                         "--log", "wandb", environment=wandb_offline_environment(root), console=())


@pytest.fixture
def tiny_study_copy(tiny_study: TinyStudy, tmp_path: Path) -> TinyStudy:
    """A private copy of the tiny study's results folder, at another path (as if copied off a cluster)."""
    results = tmp_path / "copied-results"
    shutil.copytree(tiny_study.results, results, symlinks=True)
    return TinyStudy(results, results / TINY_STUDY_NAME, tiny_study.data, tiny_study.stdout)


@pytest.fixture
def two_studies(tiny_study_copy: TinyStudy) -> TinyStudy:
    """The tiny study's copied results folder with a second study `other`: the same trials and epochs under
    other trial ids (`o-<id>`), as two studies a person switches between."""
    import pandas as pd

    other = tiny_study_copy.results / "other"
    other.mkdir()
    for name in ("trials.parquet", "epochs.parquet"):
        frame = pd.read_parquet(tiny_study_copy.study / name)
        frame.assign(trial_id="o-" + frame["trial_id"]).to_parquet(other / name)
    (other / "study.yaml").write_bytes((tiny_study_copy.study / "study.yaml").read_bytes())
    return tiny_study_copy


@pytest.fixture(scope="session")
def real_dataset() -> Path:
    """The published bone-fracture YOLO export beside the project (`../shared/datasets`); skips where absent."""
    path = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "bone-fracture-yolo"
    if not (path / "data.yaml").is_file():
        pytest.skip(f"real dataset not found at {path} (it sits beside the project in CI)")
    return path
