"""ASHA's rungs after `raysearch resume`: refilled from the trials' recorded epochs, so a continued study
prunes against the trials from before the interruption, exactly as an uninterrupted one would."""

from __future__ import annotations

import json
from pathlib import Path

from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from raysearch.core.layout import checkpoint_name
from raysearch.search.scheduler import ResumableASHA

ASHA = {"time_attr": "epoch", "metric": "val_score", "mode": "max", "max_t": 8, "grace_period": 1,
        "reduction_factor": 2}


def _trial(trial_id: str) -> Trial:
    return Trial("run_trial", trial_id=trial_id, stub=True)


def _record(train_dir: Path, trial_id: str, scores: list[float]) -> None:
    """A trial folder whose latest checkpoint holds `scores` as the val_score of epochs 1, 2, ..."""
    folder = train_dir / trial_id / checkpoint_name(len(scores))
    folder.mkdir(parents=True)
    history = [{"epoch": epoch, "val_score": score, "val_loss": 1 - score} for epoch, score in enumerate(scores, 1)]
    (folder / "history.json").write_text(json.dumps(history))


def _decisions(scheduler: ASHAScheduler, history: dict[str, list[float]], newcomer: list[float]) -> list[str]:
    """Add the trials of `history` as a restored study does, then the ASHA decisions on a new trial's epochs."""
    for trial_id in history:
        scheduler.on_trial_add(None, _trial(trial_id))
    new = _trial("new")
    scheduler.on_trial_add(None, new)
    return [scheduler.on_trial_result(None, new, {"epoch": epoch, "val_score": score})
            for epoch, score in enumerate(newcomer, 1)]


def test_restored_trials_refill_the_rungs_so_a_weak_newcomer_is_pruned(tmp_path: Path) -> None:
    history = {"a": [0.6, 0.7, 0.8, 0.85], "b": [0.5, 0.6, 0.65, 0.7], "c": [0.55, 0.62]}
    for trial_id, scores in history.items():
        _record(tmp_path, trial_id, scores)
    weak = [0.3, 0.4, 0.45, 0.5]
    stop, go = TrialScheduler.STOP, TrialScheduler.CONTINUE

    resumed = _decisions(ResumableASHA(str(tmp_path), **ASHA), history, weak)
    assert resumed == [stop, stop, go, stop], "below the restored cutoffs at the rungs of epochs 1, 2 and 4"
    forgetful = _decisions(ASHAScheduler(**ASHA), history, weak)
    assert forgetful == [go] * 4, "plain ASHA forgets the trials from before the resume"

    rungs = dict(ResumableASHA(str(tmp_path), **ASHA)._brackets[0]._rungs)
    assert rungs[1] == {} and rungs[4] == {}, "nothing is recorded before trials are added"


def test_rungs_match_an_uninterrupted_study(tmp_path: Path) -> None:
    history = {"a": [0.6, 0.7, 0.8, 0.85], "b": [0.5, 0.6, 0.65, 0.7], "c": [0.55, float("nan")]}
    for trial_id, scores in history.items():
        _record(tmp_path, trial_id, scores)
    resumed = ResumableASHA(str(tmp_path), **ASHA)
    for trial_id in history:
        resumed.on_trial_add(None, _trial(trial_id))

    live = ASHAScheduler(**ASHA)
    for trial_id, scores in history.items():
        trial = _trial(trial_id)
        live.on_trial_add(None, trial)
        for epoch, score in enumerate(scores, 1):
            if score == score:
                live.on_trial_result(None, trial, {"epoch": epoch, "val_score": score})
    assert resumed._brackets[0]._rungs == live._brackets[0]._rungs
    assert dict(resumed._brackets[0]._rungs)[1] == {"a": 0.6, "b": 0.5, "c": 0.55}


def test_a_new_trial_without_a_folder_starts_with_no_history(tmp_path: Path) -> None:
    scheduler = ResumableASHA(str(tmp_path / "train"), **ASHA)
    scheduler.on_trial_add(None, _trial("fresh"))
    assert all(recorded == {} for _, recorded in scheduler._brackets[0]._rungs)
