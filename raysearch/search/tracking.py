"""Experiment tracking through Ray Tune's own logger callbacks: MLflow, Weights & Biases and TensorBoard.

`raysearch run --log mlflow,wandb,tensorboard` adds the matching callback to the Tuner's RunConfig; Tune
calls it on the driver with every trial's config (params) and every epoch's result (metrics). MLflow goes
to `MLFLOW_TRACKING_URI` when set, else to a local store inside the study folder (`mlflow/mlflow.db`, a
SQLite file, with artifacts in `mlflow/artifacts/`: MLflow 3 refuses its plain-folder store by default).
After the search, the exported best model (`<study>/model/`) is logged as an artifact of its trial's
MLflow run.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from raysearch.core.layout import CONFIG_FILE, MLFLOW_ARTIFACTS, MLFLOW_DB, MLFLOW_DIR, RAY_DIR, WANDB_DIR
from raysearch.errors import ConfigError

# backend -> the module it needs
LOGGERS = {"mlflow": "mlflow", "wandb": "wandb", "tensorboard": "tensorboardX"}
MODEL_ARTIFACT = "model"


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


def log_exported_model(loggers: Iterable[str], study_dir: Path, name: str, model_dir: Path) -> None:
    """Log the exported model folder as the `model` artifact of its trial's MLflow run (when MLflow is on)."""
    if "mlflow" not in loggers:
        return
    import mlflow
    import yaml

    trial_id = yaml.safe_load((model_dir / CONFIG_FILE).read_text())["trial_id"]
    client = mlflow.MlflowClient(tracking_uri=mlflow_tracking_uri(study_dir))
    experiment = client.get_experiment_by_name(name)
    runs = [] if experiment is None else client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.trial_name = '{trial_id}'", max_results=1,
        order_by=["attributes.start_time DESC"])
    if runs:
        client.log_artifacts(runs[0].info.run_id, str(model_dir), MODEL_ARTIFACT)
