"""`raysearch run --log ...`: Ray Tune's own logger callbacks record the study in MLflow (a real local store
in the study folder, read back with `mlflow.search_runs`), TensorBoard and W&B; bad backends are one-line
errors before anything starts."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest
import yaml
from conftest import TinyStudy
from test_cli import raysearch

from raysearch.errors import ConfigError
from raysearch.search import tracking
from raysearch.search.tracking import parse_loggers


def test_log_backends_are_parsed_from_repeated_flags_and_comma_lists() -> None:
    assert parse_loggers(["mlflow, tensorboard", "mlflow", "wandb"]) == ("mlflow", "tensorboard", "wandb")
    assert parse_loggers("tensorboard") == ("tensorboard",)


def test_a_backend_that_is_not_installed_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(tracking.LOGGERS, "wandb", "wandb_is_not_installed_here")
    with pytest.raises(ConfigError, match=r"^--log wandb: the wandb_is_not_installed_here package is not installed"):
        parse_loggers(["mlflow,wandb"])


def test_unknown_log_backend_exits_with_one_line(tmp_path) -> None:
    result = raysearch("run", "multitask", "--log", "mlflow,comet", "--results", str(tmp_path / "r"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "raysearch: error: --log: unknown backend 'comet'; choose from mlflow, wandb, tensorboard"]
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_mlflow_holds_every_trials_params_epochs_and_the_exported_model(tiny_study: TinyStudy) -> None:
    import mlflow

    study = yaml.safe_load((tiny_study.study / "study.yaml").read_text())
    assert study["spec"]["log"] == ["mlflow", "tensorboard"]
    uri = study["tracking"]["mlflow"]
    assert uri == f"sqlite:///{tiny_study.study / 'mlflow' / 'mlflow.db'}"
    trials = pq.read_table(tiny_study.study / "trials.parquet").to_pandas().set_index("trial_id")
    epochs = pq.read_table(tiny_study.study / "epochs.parquet").to_pandas()

    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=[study["name"]]).set_index("tags.trial_name")
    assert sorted(runs.index) == sorted(trials.index)
    client = mlflow.MlflowClient(tracking_uri=uri)
    for trial_id, run in runs.iterrows():
        assert run["status"] == "FINISHED"
        assert float(run["params.lr"]) == pytest.approx(trials.loc[trial_id, "param.lr"])
        assert int(run["params.conv_layers"]) == trials.loc[trial_id, "param.conv_layers"]
        history = [m.value for m in client.get_metric_history(run["run_id"], "val_score")]
        assert history == pytest.approx(epochs[epochs["trial_id"] == trial_id]["val_score"].tolist())

    exported = yaml.safe_load((tiny_study.study / "model" / "config.yaml").read_text())["trial_id"]
    artifacts = {a.path for a in client.list_artifacts(runs.loc[exported, "run_id"], "model")}
    assert artifacts == {"model/config.yaml", "model/weights.pt"}
    assert str(tiny_study.study / "mlflow" / "artifacts") in runs.loc[exported, "artifact_uri"]
