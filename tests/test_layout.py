"""The study-folder layout: file names, study.yaml schema, checkpoints and ranking, defined once."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from raysearch.core.columns import rank_trials
from raysearch.core.layout import BEST_FILE, STUDY_KEYS, StudyFolder, checkpoint_name, describe_study, find_studies
from raysearch.errors import DataError

PACKAGE = Path(__file__).resolve().parents[1]
LAYOUT_NAMES = ("trials.parquet", "epochs.parquet", "study.yaml", "optuna.db", "predictions.parquet",
                "data_issues.parquet", "audit.parquet", "best_model.pt", "history.json", "weights.pt", "config.yaml")


def test_rank_trials_best_first_missing_last() -> None:
    frame = pd.DataFrame({"trial_id": ["a", "b", "c", "d"], "score": [0.5, np.nan, 0.9, 0.1]})
    assert rank_trials(frame, "score", "max")["trial_id"].tolist() == ["c", "a", "d", "b"]
    ranked = rank_trials(frame, "score", "min")
    assert ranked["trial_id"].tolist() == ["d", "a", "c", "b"] and ranked["rank"].tolist() == [1, 2, 3, 4]
    with pytest.raises(ValueError, match="mode"):
        rank_trials(frame, "score", "best")


def test_find_studies(tmp_path: Path) -> None:
    for name in ("b", "a"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "trials.parquet").write_bytes(b"")
    (tmp_path / "cache").mkdir()
    assert [p.name for p in find_studies(tmp_path)] == ["a", "b"]
    assert find_studies(tmp_path / "a") == [tmp_path / "a"]
    assert find_studies(tmp_path / "missing") == []


def test_best_checkpoint_is_the_newest_with_best_weights(tmp_path: Path) -> None:
    folder = StudyFolder(tmp_path / "study")
    for epoch, best in ((1, True), (2, True), (10, True), (11, False)):
        checkpoint = folder.trial_dir("t1") / checkpoint_name(epoch)
        checkpoint.mkdir(parents=True)
        if best:
            (checkpoint / BEST_FILE).write_bytes(b"w")
    assert folder.best_checkpoint("t1") == folder.trial_dir("t1") / "checkpoint_000009" / BEST_FILE
    assert folder.best_checkpoint("t2") is None


def test_read_study_names_the_missing_keys(tmp_path: Path) -> None:
    folder = StudyFolder(tmp_path)
    with pytest.raises(DataError, match="not a study folder"):
        folder.read_study()
    full = describe_study(**{key: key for key in STUDY_KEYS})
    assert list(full) == list(STUDY_KEYS)
    folder.study_file.write_text(yaml.safe_dump({k: v for k, v in full.items() if k != "scheduler"}))
    with pytest.raises(DataError, match=r"study.yaml: missing scheduler"):
        folder.read_study()
    with pytest.raises(ValueError, match="exactly"):
        describe_study(name="x")


def test_ranked_trials_leave_failed_out(tmp_path: Path) -> None:
    folder = StudyFolder(tmp_path)
    study = {"scheduler": {"metric": "val_loss", "mode": "min"}}
    pd.DataFrame({"trial_id": ["a", "b", "c"], "status": ["COMPLETED", "FAILED", "PRUNED"],
                  "metric.val_loss.best": [0.5, 0.1, 0.2]}).to_parquet(folder.trials_file)
    assert folder.ranked_trials(study)["trial_id"].tolist() == ["c", "a"]


def _string_constants(path: Path) -> set[str]:
    return {node.value for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.Constant)
            and isinstance(node.value, str)}


def test_file_names_are_spelled_only_in_the_layout_module() -> None:
    sources = [*PACKAGE.joinpath("raysearch").rglob("*.py"), *PACKAGE.joinpath("dashboard").rglob("*.py")]
    spelled = {path.relative_to(PACKAGE).as_posix(): sorted(_string_constants(path) & set(LAYOUT_NAMES))
               for path in sources if path.name != "layout.py"}
    assert {path: names for path, names in spelled.items() if names} == {}
