"""A finished trial outside the study's top K gives up its resumable state as soon as it ends (`--keep-checkpoints`).

While a trial runs, its checkpoint folders under `train/<trial id>/` hold its resumable state (`state.pt`) beside
its best weights and epoch history. `ThinFinishedTrials` is a Ray Tune Callback: whenever a trial ends, every
finished trial whose best score is strictly worse than the K-th best of the finished trials so far keeps only
`KEPT_OF_OTHERS` (a trial that falls out of the top K later is thinned then). Ties are left whole: the study's
end (`raysearch.study.retention.keep_checkpoints`) ranks the trials once more, by the one ranking rule, and thins
whatever is left over. Failed and unfinished trials keep everything (a resume continues them).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ray.tune import Callback
from ray.tune.experiment import Trial

from raysearch.core.columns import BEST_SO_FAR
from raysearch.core.layout import BEST_FILE, CHECKPOINT_GLOB, HISTORY_FILE

KEPT_OF_OTHERS = (BEST_FILE, HISTORY_FILE)  # what a trial outside the top K keeps of its checkpoints


def thin_trial(trial_dir: Path) -> list[Path]:
    """Remove everything of a trial's checkpoints but its best weights and history; returns the files removed."""
    removed = []
    for checkpoint in sorted(trial_dir.glob(CHECKPOINT_GLOB)):
        for path in sorted(checkpoint.rglob("*")):
            if path.is_file() and path.name not in KEPT_OF_OTHERS:
                path.unlink()
                removed.append(path)
    return removed


class ThinFinishedTrials(Callback):
    """Thins (`thin_trial`) each finished trial whose best `BEST_SO_FAR` is strictly worse than the `top`-th best
    among the finished trials, each time a trial ends (`top` 0: every finished trial)."""

    def __init__(self, train_dir: Path, top: int, mode: str) -> None:
        self.train_dir, self.top, self.mode = Path(train_dir), top, mode

    def on_trial_complete(self, iteration: int, trials: Sequence[Trial], trial: Trial, **info: Any) -> None:
        finished = {t.trial_id: float(t.last_result[BEST_SO_FAR]) for t in trials  # Tune marks `trial` TERMINATED
                    if (t is trial or t.status == Trial.TERMINATED)  # only after its callbacks ran
                    and BEST_SO_FAR in (t.last_result or {})}
        if len(finished) <= self.top:
            return
        ranked = sorted(finished.values(), reverse=self.mode == "max")
        bar = ranked[self.top - 1] if self.top else None
        for trial_id, best in finished.items():
            worse = bar is None or (best < bar if self.mode == "max" else best > bar)
            if worse:
                thin_trial(self.train_dir / trial_id)  # nothing left to remove in a trial thinned before
