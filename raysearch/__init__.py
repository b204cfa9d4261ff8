"""raysearch: distributed hyperparameter search for X-ray deep learning on Ray Tune + Optuna.

The Python API (the CLI is a thin layer over it):

- `raysearch.run(task, **options)` runs a study and returns it as a `Study`; `raysearch.load_study(path)`
  loads a finished one (trials and epochs as DataFrames, `best_trial`, `model()`, `export()`).
- `raysearch.load_model(STUDY/model)` loads an exported model; `Model.predict` takes numpy arrays, image
  files, folders or glob patterns and returns one `Prediction` per image.
- `raysearch.run_study(StudySpec(...))` / `raysearch.resume_study(path)` are the lower-level calls.

Importing the package is cheap: these names, and torch, ray and optuna behind them, load on first use.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_STUDY, _NOTEBOOK, _ERRORS = "raysearch.study.run", "raysearch.study.notebook", "raysearch.errors"
_PREDICT = "raysearch.inference.predict"
_EXPORTS = {
    "run": _NOTEBOOK, "load_study": _NOTEBOOK, "Study": _NOTEBOOK,
    "load_model": _PREDICT, "Model": _PREDICT, "Prediction": _PREDICT,
    "StudySpec": "raysearch.study.spec", "run_study": _STUDY, "resume_study": _STUDY,
    "RaysearchError": _ERRORS, "ConfigError": _ERRORS, "DataError": _ERRORS,
}
__all__ = ["ConfigError", "DataError", "Model", "Prediction", "RaysearchError", "Study", "StudySpec", "load_model",
           "load_study", "resume_study", "run", "run_study"]

if TYPE_CHECKING:
    from raysearch.errors import ConfigError, DataError, RaysearchError
    from raysearch.inference.predict import Model, Prediction, load_model
    from raysearch.study.notebook import Study, load_study, run
    from raysearch.study.run import resume_study, run_study
    from raysearch.study.spec import StudySpec


def __getattr__(name: str) -> Any:
    """The public names of the API, imported from their modules on first use."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'raysearch' has no attribute {name!r}")
    value = getattr(import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
