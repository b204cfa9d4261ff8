"""`--keep-checkpoints`: what a finished study keeps, weights kept once (hard links), and the folder's size."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from conftest import TinyStudy

from raysearch.core.layout import BEST_FILE, CHECKPOINT_GLOB, HISTORY_FILE, STATE_FILE, StudyFolder
from raysearch.errors import ConfigError
from raysearch.inference.export import export_model
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
