"""ASHA whose rungs survive `raysearch resume`.

Ray Tune saves no scheduler state in its experiment snapshot: a restored study would start ASHA with
empty rungs, so the trials continued after a resume would be compared against nothing and none pruned.
When Tune re-adds the trials of an interrupted study, this scheduler replays each one's epochs (kept in
its latest checkpoint, see raysearch.training.session) into its bracket, restoring the rungs as they were.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ray.tune.schedulers import ASHAScheduler

from raysearch.layout import latest_checkpoint, read_history


class ResumableASHA(ASHAScheduler):
    """ASHAScheduler that refills its rungs from the recorded epochs of trials added with a history."""

    def __init__(self, train_dir: str, **asha: Any) -> None:
        super().__init__(**asha)
        self.train_dir = train_dir

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        """Assign the trial a bracket, then record its past epochs at the rungs they reached."""
        super().on_trial_add(tune_controller, trial)
        bracket = self._trial_info[trial.trial_id]
        for epoch in read_history(latest_checkpoint(Path(self.train_dir) / trial.trial_id)):
            value = epoch.get(self._metric)
            if value is not None and value == value and self._time_attr in epoch:
                bracket.on_result(trial, epoch[self._time_attr], self._metric_op * value)
