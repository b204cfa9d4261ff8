"""Experiment tracking through Ray Tune's own logger callbacks: MLflow, Weights & Biases and TensorBoard.

`raysearch run --log mlflow,wandb,tensorboard` adds the matching callback to the Tuner's RunConfig; Tune
calls it on the driver with every trial's config (params) and every epoch's result (metrics). MLflow goes
to `MLFLOW_TRACKING_URI` when set, else to a local store inside the study folder (`mlflow/mlflow.db`, a
SQLite file, with artifacts in `mlflow/artifacts/`: MLflow 3 refuses its plain-folder store by default).
After the search, each trial's MLflow run gets the truth of trials.parquet: its status as the tag
`raysearch.status` (COMPLETED, EARLY_STOPPED, PRUNED, FAILED; a FAILED trial's run also ends with MLflow's own
FAILED status) and its best-epoch metrics as `best.<metric>` beside the per-epoch history; the exported best
model (`<study>/model/`) is logged to its trial's run as an MLflow pyfunc model (raysearch.inference.pyfunc).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from raysearch.core.columns import FAILED
from raysearch.core.layout import MLFLOW_ARTIFACTS, MLFLOW_DB, MLFLOW_DIR, RAY_DIR, WANDB_DIR
from raysearch.errors import ConfigError

# backend -> the module it needs
LOGGERS = {"mlflow": "mlflow", "wandb": "wandb", "tensorboard": "tensorboardX"}
STATUS_TAG = "raysearch.status"
BEST_PREFIX = "best."   # MLflow metric name of a trial's best-epoch value of a metric


def parse_loggers(values: str | Iterable[str]) -> tuple[str, ...]:
    """The backends named in `values` (each a name or a comma list), checked: known and installed."""
    values = [values] if isinstance(values, str) else list(values)
    names = list(dict.fromkeys(name.strip() for value in values for name in value.split(",") if name.strip()))
    for name in names:
        if name not in LOGGERS:
            raise ConfigError(f"--log: unknown backend {name!r}; choose from {', '.join(LOGGERS)}")
        if importlib.util.find_spec(LOGGERS[name]) is None:
            raise ConfigError(f"--log {name}: the {LOGGERS[name]} package is not installed "
                              "(pip install 'raysearch[tracking]')")
    return tuple(names)


def mlflow_tracking_uri(study_dir: Path) -> str:
    """`MLFLOW_TRACKING_URI`, else the SQLite store inside the study folder."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(study_dir / MLFLOW_DIR / MLFLOW_DB).resolve()}"


def tracking_plan(loggers: Iterable[str], study_dir: Path) -> dict[str, str]:
    """Where each backend writes (recorded in study.yaml)."""
    where = {"mlflow": mlflow_tracking_uri(study_dir), "wandb": str((study_dir / WANDB_DIR).resolve()),
             "tensorboard": str((study_dir / RAY_DIR).resolve())}
    return {name: where[name] for name in loggers}


def _prepare_mlflow(study_dir: Path, name: str) -> str:
    """The tracking URI, with the study's MLflow experiment created first when the store is the study's own, so
    that its artifacts land in the study folder too (MLflow would put them under the working directory)."""
    import mlflow

    uri = mlflow_tracking_uri(study_dir)
    if "MLFLOW_TRACKING_URI" not in os.environ:
        (study_dir / MLFLOW_DIR).mkdir(parents=True, exist_ok=True)
        client = mlflow.MlflowClient(tracking_uri=uri)
        if client.get_experiment_by_name(name) is None:
            client.create_experiment(name, artifact_location=(study_dir / MLFLOW_DIR / MLFLOW_ARTIFACTS).resolve()
                                     .as_uri())
    return uri


def logger_callbacks(loggers: Iterable[str], study_dir: Path, name: str) -> list[Any]:
    """Ray Tune's logger callbacks for `loggers`, writing the study `name` kept in `study_dir`."""
    callbacks: list[Any] = []
    for logger in loggers:
        if logger == "mlflow":
            from ray.air.integrations.mlflow import MLflowLoggerCallback

            callbacks.append(MLflowLoggerCallback(tracking_uri=_prepare_mlflow(study_dir, name), experiment_name=name,
                                                  tags={"raysearch.study.spec": name}))
        elif logger == "wandb":
            from ray.air.integrations.wandb import WandbLoggerCallback

            (study_dir / WANDB_DIR).mkdir(parents=True, exist_ok=True)
            callbacks.append(WandbLoggerCallback(project=os.environ.get("WANDB_PROJECT", "raysearch"), group=name,
                                                 dir=str((study_dir / WANDB_DIR).resolve())))
        else:
            from ray.tune.logger import TBXLoggerCallback

            callbacks.append(TBXLoggerCallback())
    return callbacks


def trial_runs(study_dir: Path, name: str) -> dict[str, str]:
    """The MLflow run id of each trial of the study `name` (by Tune's `trial_name` tag; the newest run of each)."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=mlflow_tracking_uri(study_dir))
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return {}
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])
    return {run.data.tags["trial_name"]: run.info.run_id for run in runs if "trial_name" in run.data.tags}


def record_trial_outcomes(loggers: Iterable[str], study_dir: Path, name: str, trials: Any) -> None:
    """Tag each trial's MLflow run with its status in `trials` (trials.parquet's pandas frame) and log its
    best-epoch metrics (`metric.<m>.best` columns as `best.<m>`); a FAILED trial's run ends FAILED."""
    if "mlflow" not in loggers:
        return
    import math
    import time

    import mlflow

    client = mlflow.MlflowClient(tracking_uri=mlflow_tracking_uri(study_dir))
    runs = trial_runs(study_dir, name)
    best = [c for c in trials.columns if c.startswith("metric.") and c.endswith(".best")]
    now = int(time.time() * 1000)
    for record in trials.to_dict("records"):
        run_id = runs.get(record["trial_id"])
        if run_id is None:
            continue
        client.set_tag(run_id, STATUS_TAG, record["status"])
        metrics = [mlflow.entities.Metric(BEST_PREFIX + c.removeprefix("metric.").removesuffix(".best"),
                                          float(record[c]), now, 0)
                   for c in best if isinstance(record[c], int | float) and not math.isnan(record[c])]
        if metrics:
            client.log_batch(run_id, metrics=metrics)
        if record["status"] == FAILED:
            client.set_terminated(run_id, status="FAILED")


