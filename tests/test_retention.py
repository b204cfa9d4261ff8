"""`--keep-checkpoints`: what a finished study keeps, weights kept once (hard links), and the folder's size."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from conftest import TinyStudy
from ray.tune.experiment import Trial

from raysearch.core.columns import BEST_SO_FAR
from raysearch.core.layout import BEST_FILE, CHECKPOINT_GLOB, HISTORY_FILE, STATE_FILE, StudyFolder
from raysearch.errors import ConfigError
from raysearch.inference.export import export_model
from raysearch.search.thinning import ThinFinishedTrials
from raysearch.study.retention import folder_size, keep_checkpoints, link_identical, parse_keep
from raysearch.study.spec import StudySpec


def _kept(study: Path) -> dict[str, set[str]]:
    """The file names in each trial's checkpoints, by trial id."""
    return {trial.name: {p.name for p in trial.glob(f"{CHECKPOINT_GLOB}/*")}
            for trial in StudyFolder(study).train_dir.iterdir()}


def test_the_policy_is_best_top_k_or_all_and_anything_else_is_one_line() -> None:
    assert (parse_keep("best"), parse_keep("top-5"), parse_keep("all")) == (0, 5, None)
    for wrong in ("top", "top-x", "everything", "3"):
        with pytest.raises(ConfigError, match="--keep-checkpoints: expected best, top-K"):
            StudySpec(task="classification", keep_checkpoints=wrong)


def test_identical_weights_become_one_file_and_the_size_counts_it_once(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    weights = os.urandom(50_000)
    for path in (tmp_path / "a" / "best_model.pt", tmp_path / "b" / "weights.pt"):
        path.write_bytes(weights)
    (tmp_path / "b" / "other.pt").write_bytes(os.urandom(50_000))
    assert folder_size(tmp_path) == 150_000
    assert link_identical(tmp_path) == 50_000
    assert os.path.samefile(tmp_path / "a" / "best_model.pt", tmp_path / "b" / "weights.pt")
    assert (tmp_path / "b" / "weights.pt").read_bytes() == weights
    assert folder_size(tmp_path) == 100_000 and link_identical(tmp_path) == 0


@pytest.mark.slow
def test_a_finished_study_holds_each_weights_file_once_and_says_its_size(tiny_study: TinyStudy) -> None:
    folder = StudyFolder(tiny_study.study)
    for trial_id in folder.ranked_trials()["trial_id"]:
        tune_copy = next(tiny_study.study.glob(f"ray/*/{trial_id}/{CHECKPOINT_GLOB}/{BEST_FILE}"), None)
        own = next(folder.trial_dir(trial_id).glob(f"{CHECKPOINT_GLOB}/{BEST_FILE}"))
        assert tune_copy is None or os.path.samefile(tune_copy, own)
    assert re.search(r"Results: \S+ \([\d.]+ (kB|MB|GB)\)", tiny_study.stdout)


@pytest.mark.slow
def test_best_and_top_k_keep_exactly_what_they_say_and_the_best_model_still_exports(
        tiny_study_copy: TinyStudy) -> None:
    study = tiny_study_copy.study
    ranked = list(StudyFolder(study).ranked_trials()["trial_id"])
    assert all(STATE_FILE in names for names in _kept(study).values())
    keep_checkpoints(study, "top-1")
    kept = _kept(study)
    assert STATE_FILE in kept[ranked[0]]
    assert all(kept[t] == {BEST_FILE, HISTORY_FILE} for t in kept if t != ranked[0])
    keep_checkpoints(study, "best")
    assert all(names == {BEST_FILE, HISTORY_FILE} for names in _kept(study).values())
    assert (export_model(study) / "weights.pt").is_file()


def _trial_with_checkpoint(train_dir: Path, trial_id: str) -> Trial:
    for name in (STATE_FILE, BEST_FILE, HISTORY_FILE):
        checkpoint = train_dir / trial_id / "checkpoint_000002"
        checkpoint.mkdir(parents=True, exist_ok=True)
        (checkpoint / name).write_bytes(b"x")
    trial = Trial("run_trial", trial_id=trial_id, stub=True)
    trial.set_status(Trial.RUNNING)
    return trial


def test_a_finished_trial_outside_the_top_k_gives_up_its_state_when_it_ends_and_ties_stay_whole(
        tmp_path: Path) -> None:
    trials = [_trial_with_checkpoint(tmp_path, f"t{i}") for i in range(5)]
    thinning = ThinFinishedTrials(tmp_path, top=2, mode="max")

    def end(index: int, best: float) -> None:
        trials[index].update_last_result({"epoch": 2, BEST_SO_FAR: best})
        thinning.on_trial_complete(index, trials, trials[index])  # Tune marks it TERMINATED after the callbacks
        trials[index].set_status(Trial.TERMINATED)

    def state_kept() -> list[str]:
        return sorted(t.trial_id for t in trials if (tmp_path / t.trial_id / "checkpoint_000002" / STATE_FILE).exists())

    end(0, 0.5)
    end(1, 0.3)
    assert state_kept() == ["t0", "t1", "t2", "t3", "t4"]  # two finished: both in the top 2
    end(2, 0.7)
    assert state_kept() == ["t0", "t2", "t3", "t4"]  # t1 fell out of the top 2; t3, t4 still run
    assert {p.name for p in (tmp_path / "t1" / "checkpoint_000002").iterdir()} == {BEST_FILE, HISTORY_FILE}
    end(3, 0.5)  # ties the 2nd best: t0 and t3 stay whole until the study ranks them
    assert state_kept() == ["t0", "t2", "t3", "t4"]
    end(4, 0.9)
    assert state_kept() == ["t2", "t4"]
    best_only = ThinFinishedTrials(tmp_path, top=0, mode="min")
    best_only.on_trial_complete(5, trials, trials[4])
    assert state_kept() == []
