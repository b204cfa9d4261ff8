"""`raysearch run --log ...`: Ray Tune's own logger callbacks record the study in MLflow (a real local store
in the study folder, read back with `mlflow.search_runs`), TensorBoard and W&B (its offline mode, read back from
the runs' transaction logs); bad backends are one-line errors before anything starts."""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import yaml
from conftest import TINY_STUDY_NAME, TinyStudy
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
        assert run[f"tags.{tracking.STATUS_TAG}"] == trials.loc[trial_id, "status"]
        assert run["metrics.best.val_score"] == pytest.approx(trials.loc[trial_id, "metric.val_score.best"])
        assert float(run["params.lr"]) == pytest.approx(trials.loc[trial_id, "param.lr"])
        assert int(run["params.conv_layers"]) == trials.loc[trial_id, "param.conv_layers"]
        history = [m.value for m in client.get_metric_history(run["run_id"], "val_score")]
        assert history == pytest.approx(epochs[epochs["trial_id"] == trial_id]["val_score"].tolist())
    assert str(tiny_study.study / "mlflow" / "artifacts") in runs.loc[exported_trial(tiny_study), "artifact_uri"]


def exported_trial(tiny_study: TinyStudy) -> str:
    return yaml.safe_load((tiny_study.study / "model" / "config.yaml").read_text())["trial_id"]


@pytest.mark.slow
def test_the_exported_model_is_an_mlflow_pyfunc_model_that_predicts_like_raysearch_predict(
        tiny_study: TinyStudy) -> None:
    import mlflow
    import pandas as pd

    from raysearch.inference.predict import load_model

    uri = yaml.safe_load((tiny_study.study / "study.yaml").read_text())["tracking"]["mlflow"]
    mlflow.set_tracking_uri(uri)
    run_id = tracking.trial_runs(tiny_study.study, TINY_STUDY_NAME)[exported_trial(tiny_study)]
    images = [str(p) for p in sorted((tiny_study.data / "test" / "images").iterdir())[:3]]
    pyfunc = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")
    found = pyfunc.predict(pd.DataFrame({"image": images}))
    expected = [p.to_dict() for p in load_model(tiny_study.study / "model").predict(images)]
    assert found["image"].tolist() == [p["image"] for p in expected]
    assert found["class_name"].tolist() == [p["class_name"] for p in expected]
    assert found["probability"].tolist() == pytest.approx([p["probability"] for p in expected])
    assert [list(p) for p in found["polygon"]] == [pytest.approx(p["polygon"]) for p in expected]


def test_trial_outcomes_tag_each_run_with_its_status_and_best_metrics(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A real MLflow store: the runs Tune's callback made get trials.parquet's status (FAILED as MLflow's own)."""
    import mlflow
    import pandas as pd

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = tracking.mlflow_tracking_uri(tmp_path)
    (tmp_path / "mlflow").mkdir()
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("study")
    for trial_id in ("t1", "t2", "t3"):
        client.set_terminated(client.create_run(experiment, tags={"trial_name": trial_id}).info.run_id)
    trials = pd.DataFrame({"trial_id": ["t1", "t2", "t3"], "status": ["COMPLETED", "PRUNED", "FAILED"],
                           "metric.val_score.best": [0.8, 0.4, float("nan")]})
    tracking.record_trial_outcomes(("mlflow",), tmp_path, "study", trials)
    runs = {r.data.tags["trial_name"]: r for r in client.search_runs([experiment])}
    assert {t: r.data.tags[tracking.STATUS_TAG] for t, r in runs.items()} == {
        "t1": "COMPLETED", "t2": "PRUNED", "t3": "FAILED"}
    assert {t: r.info.status for t, r in runs.items()} == {"t1": "FINISHED", "t2": "FINISHED", "t3": "FAILED"}
    assert runs["t2"].data.metrics == {"best.val_score": 0.4} and runs["t3"].data.metrics == {}


# The layout of a W&B run's transaction log (`run-<id>.wandb`): a 7-byte header (":W&B", magic 0xBEE1, version 0),
# then LevelDB-log chunks in 32 KiB blocks, each a 7-byte header (CRC-32 of type and data, length, type) and data;
# a record is one FULL chunk or FIRST, MIDDLE..., LAST. wandb 0.31 reads these files in its Go core only (the Python
# reader, wandb.sdk.internal.datastore, is gone), so the test reads them here, with wandb's own protobuf records.
WANDB_HEADER, WANDB_BLOCK, WANDB_CHUNK = struct.Struct("<4sHB"), 32768, struct.Struct("<IHB")
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def wandb_records(path: Path) -> Iterator[Any]:
    """The `wandb_internal_pb2.Record`s of an offline run's transaction log, CRCs checked."""
    from wandb.proto.wandb_internal_pb2 import Record

    data = path.read_bytes()
    assert WANDB_HEADER.unpack_from(data) == (b":W&B", 0xBEE1, 0), f"{path}: not a W&B transaction log"
    position, pending = WANDB_HEADER.size, b""
    while position + WANDB_CHUNK.size <= len(data):
        if WANDB_BLOCK - position % WANDB_BLOCK < WANDB_CHUNK.size:
            position += WANDB_BLOCK - position % WANDB_BLOCK
            continue
        checksum, length, kind = WANDB_CHUNK.unpack_from(data, position)
        chunk = data[position + WANDB_CHUNK.size:position + WANDB_CHUNK.size + length]
        position += WANDB_CHUNK.size + length
        if kind == 0:
            continue
        assert zlib.crc32(bytes([kind]) + chunk) == checksum, f"{path}: corrupt chunk before byte {position}"
        pending = chunk if kind in (FULL, FIRST) else pending + chunk
        if kind in (FULL, LAST):
            yield Record.FromString(pending)


def _wandb_value(item: Any) -> tuple[str, Any]:
    """A W&B config, summary or history item as (key, value)."""
    return item.key or "/".join(item.nested_key), json.loads(item.value_json)


@pytest.mark.slow
def test_wandb_offline_runs_hold_every_trials_params_and_epochs(two_worker_study: TinyStudy) -> None:
    study = yaml.safe_load((two_worker_study.study / "study.yaml").read_text())
    assert study["spec"]["log"] == ["wandb"]
    assert study["tracking"]["wandb"] == str(two_worker_study.study / "wandb")
    trials = pq.read_table(two_worker_study.study / "trials.parquet").to_pandas().set_index("trial_id")
    epochs = pq.read_table(two_worker_study.study / "epochs.parquet").to_pandas()

    logs = sorted((two_worker_study.study / "wandb").glob("wandb/offline-run-*/run-*.wandb"))
    runs: dict[str, dict[str, Any]] = {}
    for log in logs:
        records = list(wandb_records(log))
        [run] = [record.run for record in records if record.WhichOneof("record_type") == "run"]
        history = [dict(map(_wandb_value, record.history.item)) for record in records
                   if record.WhichOneof("record_type") == "history"]
        runs[run.run_id] = {"group": run.run_group, "config": dict(map(_wandb_value, run.config.update)),
                            "history": history}
    assert sorted(runs) == sorted(trials.index), f"one offline W&B run per trial, named by its id: {logs}"
    for trial_id, run in runs.items():
        assert run["group"] == study["name"]
        assert run["config"]["lr"] == pytest.approx(trials.loc[trial_id, "param.lr"])
        assert run["config"]["conv_layers"] == trials.loc[trial_id, "param.conv_layers"]
        recorded = epochs[epochs["trial_id"] == trial_id]
        assert [step["epoch"] for step in run["history"]] == recorded["epoch"].tolist()
        assert [step["val_score"] for step in run["history"]] == pytest.approx(recorded["val_score"].tolist())
        assert [step["train_loss"] for step in run["history"]] == pytest.approx(recorded["train_loss"].tolist())


@pytest.mark.slow
def test_the_experiment_analysis_example_of_the_operations_page_runs_as_written(
        tiny_study: TinyStudy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/operations.md's Ray example, from a working directory whose `raysearch-results` is the tiny study's."""
    page = (Path(__file__).parents[1] / "docs" / "operations.md").read_text()
    blocks = [b.split("```", 1)[0] for b in page.split("```python\n")[1:] if "ExperimentAnalysis" in b]
    assert len(blocks) == 1
    (tmp_path / "raysearch-results").symlink_to(tiny_study.results)
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, Any] = {}
    exec(blocks[0].replace("<study>", TINY_STUDY_NAME), namespace)
    trials = pq.read_table(tiny_study.study / "trials.parquet").to_pandas()
    assert namespace["best"].trial_id in set(trials["trial_id"])
    assert namespace["checkpoint"] is not None
