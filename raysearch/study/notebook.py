"""Studies in a notebook: `load_study(path)` gives a finished study's trials and epochs as DataFrames, its
best trial and that trial's model; `run(task, ...)` runs a study (as `raysearch run` does) and loads it.

```python
import raysearch

study = raysearch.load_study("raysearch-results/multitask-1a2b3c4d")
study.trials                       # one row per trial (pandas)
study.best_trial["trial_id"]
predictions = study.model().predict("new-xrays/")   # arrays, files, folders or glob patterns
```
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, fields
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from raysearch.core.columns import score_column
from raysearch.core.layout import CONFIG_FILE, TRIALS_FILE, StudyFolder, read_parquet
from raysearch.core.options import NO_TTA
from raysearch.errors import ConfigError, DataError

if TYPE_CHECKING:
    import pandas as pd

    from raysearch.inference.predict import Model


@dataclass(frozen=True)
class Study:
    """A finished study, read from its folder (see raysearch.core.layout for what lies where)."""

    folder: StudyFolder
    description: dict[str, Any]
    trials: pd.DataFrame
    epochs: pd.DataFrame

    @property
    def directory(self) -> Path:
        return self.folder.directory

    @property
    def name(self) -> str:
        return str(self.description["name"])

    @property
    def task(self) -> str:
        return str(self.description["task"])

    @property
    def metric(self) -> str:
        """The validation metric trials are ranked by (`metric.<metric>.best` in `trials`)."""
        return str(self.description["scheduler"]["metric"])

    @property
    def mode(self) -> str:
        return str(self.description["scheduler"]["mode"])

    @cached_property
    def ranked(self) -> pd.DataFrame:
        """The trials that did not fail, best first, with a `rank` column."""
        return self.folder.ranked_trials(self.description)

    @property
    def best_trial(self) -> pd.Series:
        """The best trial's row of `trials`."""
        if self.ranked.empty:
            raise DataError(f"{self.directory}: no trial finished")
        return self.ranked.iloc[0]

    def history(self, trial_id: str) -> pd.DataFrame:
        """One trial's epochs."""
        return self.epochs[self.epochs["trial_id"] == trial_id].reset_index(drop=True)

    def model(self, trial_id: str | None = None) -> Model:
        """A trial's trained model (default: the best trial, from the exported `model/` folder when it holds
        that trial), ready to `predict`."""
        from raysearch.inference.predict import Model, load_model, read_model_config

        wanted = str(self.best_trial["trial_id"]) if trial_id is None else trial_id
        exported = self.folder.model_dir / CONFIG_FILE
        if exported.is_file() and read_model_config(exported).get("trial_id") == wanted:
            return load_model(self.folder.model_dir)
        return Model.from_trial(self.directory, wanted)

    def export(self, formats: Sequence[str] = ("onnx", "torchscript"), *,
               trial_id: str | None = None, ensemble: int = 0, tta: str = NO_TTA) -> dict[str, Path]:
        """Export a trial (default: the best), or the ensemble of the `ensemble` best, to `model/` with its ONNX
        and TorchScript files; returns them."""
        from raysearch.inference.export import export_study

        return export_study(self.directory, formats, trial_id=trial_id, ensemble=ensemble, tta=tta)

    def evaluate(self, *, top: int = 1, repeats: int = 1, progress: bool = False, **options: Any) -> pd.DataFrame:
        """Test-split metrics of the `top` best trials (as `raysearch evaluate`; `options`: `positive_class`,
        `target_sensitivity`, `resamples`, `ensemble`, `tta`); trials.parquet is updated."""
        from raysearch.study.evaluate import evaluate_study

        return evaluate_study(self.directory, top=top, repeats=repeats, progress=progress, **options)

    def __repr__(self) -> str:
        score = score_column(self.metric)
        best = f", best {self.best_trial[score]:.4g} ({self.best_trial['trial_id']})" if not self.ranked.empty else ""
        return f"Study({self.name!r}, {self.task}, {len(self.trials)} trials, {self.metric} {self.mode}{best})"


def load_study(path: str | Path) -> Study:
    """A finished study folder (RESULTS/STUDY) as DataFrames and models."""
    import pandas as pd

    folder = StudyFolder(Path(path))
    description = folder.read_study()
    if not folder.trials_file.is_file():
        raise DataError(f"{folder.directory}: no {TRIALS_FILE}: the study has not finished (running, or interrupted: "
                        f"`raysearch resume {folder.directory}`)")
    epochs = read_parquet(folder.epochs_file).to_pandas() if folder.epochs_file.is_file() else pd.DataFrame()
    return Study(folder, description, read_parquet(folder.trials_file).to_pandas(), epochs)


def run(task: str, *, progress: bool = True, out: TextIO = sys.stdout, **options: Any) -> Study:
    """Run a study as `raysearch run TASK` does and load it. `options` are the run flags with underscores
    (`data=`, `trials=`, `max_epochs=`, `image_size=`, `space=`, `results=`, `name=`, ...: see StudySpec)."""
    from raysearch.study.run import run_study
    from raysearch.study.spec import StudySpec

    known = {f.name for f in fields(StudySpec)} - {"task"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(f"raysearch.run: unknown option {', '.join(unknown)}; options: {', '.join(sorted(known))}")
    outcome = run_study(StudySpec(task=task, **options), progress=progress, out=out)
    return load_study(outcome.directory)
