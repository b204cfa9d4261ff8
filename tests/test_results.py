"""`trials.parquet` and `epochs.parquet` from trial records: the best epoch by the study's score and mode,
`metric.<name>.best` taken at that epoch, statuses, typed parameter columns, atomic writes."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raysearch.core.files import write_table_atomic, write_text_atomic
from raysearch.search.results import (
    TrialRecord,
    epochs_table,
    trial_status,
    trials_table,
)
from raysearch.search.space import parse_space

SPACE = parse_space({"task": "multitask", "parameters": {
    "lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
    "width": {"type": "categorical", "choices": [8, 16]},
    "pretrained": {"type": "categorical", "choices": [True, False]},
    "optimizer": {"type": "categorical", "choices": ["adam", "sgd"]},
}, "fixed": {"model": "vgg"}}, source="test")


def _epoch(epoch: int, score: float, loss: float, **extra: Any) -> dict[str, Any]:
    return {"epoch": epoch, "val_score": score, "val_loss": loss, "lr": 0.1 / epoch, "params": 1000,
            "latency_ms": 2.5, "stopped_early": 0.0, **extra}


RECORDS = [
    # best score at epoch 2 (not the last), with a NaN score at epoch 4 that must be ignored
    TrialRecord("a", {"lr": 0.01, "width": 8, "pretrained": True, "optimizer": "adam", "model": "vgg"},
                [_epoch(1, 0.2, 1.5), _epoch(2, 0.7, 0.9), _epoch(3, 0.5, 0.8), _epoch(4, math.nan, 0.7)],
                wall_time_s=12.5, checkpoint="/r/a"),
    TrialRecord("b", {"lr": 0.001, "width": 16, "pretrained": False, "optimizer": "sgd", "model": "vgg"},
                [_epoch(1, 0.4, 1.2), _epoch(2, 0.3, 1.0, stopped_early=1.0)], wall_time_s=3.0),
    TrialRecord("c", {"lr": 0.05, "width": 8, "pretrained": False, "optimizer": "adam", "model": "vgg"},
                error="RuntimeError: out of memory"),
]


def _rows(mode: str = "max", score: str = "val_score") -> dict[str, dict[str, Any]]:
    table = trials_table(RECORDS, SPACE, score=score, mode=mode, max_epochs=4)
    return {row["trial_id"]: row for row in table.to_pylist()}


def test_best_metrics_come_from_the_best_scoring_epoch_and_last_from_the_last() -> None:
    rows = _rows()
    assert rows["a"]["best_epoch"] == 2 and rows["b"]["best_epoch"] == 1
    assert rows["a"]["metric.val_score.best"] == 0.7 and rows["a"]["metric.val_loss.best"] == 0.9
    assert rows["a"]["metric.lr.best"] == pytest.approx(0.05)
    assert rows["a"]["metric.val_loss.last"] == 0.7 and math.isnan(rows["a"]["metric.val_score.last"])
    assert rows["b"]["metric.val_score.best"] == 0.4 and rows["b"]["metric.val_loss.best"] == 1.2
    assert rows["c"]["best_epoch"] is None and rows["c"]["metric.val_score.best"] is None
    assert rows["c"]["metric.val_loss.last"] is None


def test_epochs_without_a_numeric_score_are_never_the_best() -> None:
    epochs = [{"epoch": 1, "val_loss": 1.0}, {"epoch": 2, "val_score": None, "val_loss": 0.5},
              {"epoch": 3, "val_score": 0.2, "val_loss": 0.9}, {"epoch": 4, "val_score": math.nan, "val_loss": 0.1}]
    [row] = trials_table([TrialRecord("a", {}, epochs)], SPACE, score="val_score", mode="max", max_epochs=4).to_pylist()
    assert row["best_epoch"] == 3 and row["metric.val_loss.best"] == 0.9


def test_the_best_epoch_follows_the_study_s_mode_and_metric() -> None:
    rows = _rows(mode="min", score="val_loss")
    assert rows["a"]["best_epoch"] == 4 and rows["a"]["metric.val_loss.best"] == 0.7
    assert rows["b"]["best_epoch"] == 2 and rows["b"]["metric.val_score.best"] == 0.3
    assert _rows(mode="min")["a"]["best_epoch"] == 1  # the lowest val_score


def test_columns_statuses_and_bookkeeping() -> None:
    table = trials_table(RECORDS, SPACE, score="val_score", mode="max", max_epochs=5)
    rows = {row["trial_id"]: row for row in table.to_pylist()}
    assert [rows[t]["status"] for t in "abc"] == ["PRUNED", "EARLY_STOPPED", "FAILED"]
    assert [_rows()[t]["status"] for t in "abc"] == ["COMPLETED", "EARLY_STOPPED", "FAILED"]  # 4 of 4 epochs
    assert [rows[t]["epochs"] for t in "abc"] == [4, 2, 0]
    assert rows["a"]["wall_time_s"] == 12.5 and rows["a"]["checkpoint"] == "/r/a" and rows["b"]["checkpoint"] is None
    assert rows["a"]["params"] == 1000 and rows["a"]["latency_ms"] == 2.5 and rows["c"]["params"] is None
    assert rows["c"]["error"] == "RuntimeError: out of memory" and rows["a"]["error"] is None
    assert table.schema.field("param.lr").type == pa.float64()
    assert table.schema.field("param.width").type == pa.int64()
    assert table.schema.field("param.pretrained").type == pa.bool_()
    assert table.schema.field("param.optimizer").type == pa.string()
    assert table.schema.field("param.model").type == pa.string() and rows["a"]["param.model"] == "vgg"
    for bookkeeping in ("epoch", "params", "latency_ms", "stopped_early"):
        assert f"metric.{bookkeeping}.best" not in table.column_names
    assert trial_status(TrialRecord("d", {}, [_epoch(1, 0.1, 1.0), _epoch(2, 0.2, 0.9)]), max_epochs=2) == "COMPLETED"
    [single] = trials_table([TrialRecord("s", {}, [_epoch(1, 0.1, 1.0)])], SPACE, score="val_score", mode="max",
                            max_epochs=1).to_pylist()
    assert (single["params"], single["latency_ms"], single["status"]) == (1000, 2.5, "COMPLETED")
    assert trial_status(TrialRecord("e", {}, [_epoch(1, 0.1, 1.0)], error="boom"), max_epochs=1) == "FAILED"
    assert trial_status(TrialRecord("f", {}), max_epochs=1) == "FAILED"  # no error recorded, but no epoch either


def test_mixed_numbers_make_a_float_column_and_anything_else_a_string_column() -> None:
    records = [TrialRecord("a", {"x": 1, "y": 1, "z": None}), TrialRecord("b", {"x": 2.5, "y": "two", "z": None}),
               TrialRecord("c", {"x": None, "y": None, "z": None})]  # a conditional parameter c did not sample
    space = parse_space({"task": "multitask", "fixed": {"x": 0, "y": 0, "z": 0}}, source="test")
    table = trials_table(records, space, score="val_score", mode="max", max_epochs=1)
    assert table.column("param.x").to_pylist() == [1.0, 2.5, None]
    assert table.schema.field("param.x").type == pa.float64()
    assert table.column("param.y").to_pylist() == ["1", "two", None]
    assert table.column("param.z").to_pylist() == [None, None, None]
    assert table.schema.field("param.z").type == pa.string()


def test_epochs_table_has_one_row_per_trial_epoch() -> None:
    table = epochs_table(RECORDS).to_pylist()
    assert [(r["trial_id"], r["epoch"]) for r in table] == [("a", 1), ("a", 2), ("a", 3), ("a", 4), ("b", 1), ("b", 2)]
    assert [r["val_loss"] for r in table] == [1.5, 0.9, 0.8, 0.7, 1.2, 1.0]
    assert "stopped_early" not in table[0] and table[1]["lr"] == pytest.approx(0.05)


def test_columns_keep_their_types_when_there_is_nothing_to_infer_them_from() -> None:
    # an empty study, or trials without epochs, still give typed columns that readers can rely on
    assert epochs_table([]).schema == pa.schema([("trial_id", pa.string()), ("epoch", pa.int64())])
    failed = [TrialRecord("a", {}, error="boom"), TrialRecord("b", {}, [])]
    assert epochs_table(failed).schema == pa.schema([("trial_id", pa.string()), ("epoch", pa.int64())])
    empty = trials_table([], SPACE, score="val_score", mode="max", max_epochs=1)
    typed = {"trial_id": pa.string(), "status": pa.string(), "epochs": pa.int64(), "best_epoch": pa.int64(),
             "wall_time_s": pa.float64(), "params": pa.int64(), "latency_ms": pa.float64(), "checkpoint": pa.string(),
             "error": pa.string()}
    assert {name: empty.schema.field(name).type for name in typed} == typed
    unscored = [TrialRecord("a", {}, [{"epoch": 1, "val_score": math.nan, "val_loss": 1.0}, {"epoch": 2}])]
    [row] = trials_table(unscored, SPACE, score="val_score", mode="max", max_epochs=2).to_pylist()
    assert row["best_epoch"] is None and row["metric.val_loss.best"] is None and row["metric.val_loss.last"] is None
    unscored_table = trials_table(unscored, SPACE, score="val_score", mode="max", max_epochs=2)
    for column in ("metric.val_loss.best", "metric.val_loss.last", "metric.val_score.best"):
        assert unscored_table.schema.field(column).type == pa.float64(), column
    trials = trials_table(failed, SPACE, score="val_score", mode="max", max_epochs=1)
    expected = {"trial_id": pa.string(), "status": pa.string(), "epochs": pa.int64(), "best_epoch": pa.int64(),
                "wall_time_s": pa.float64(), "params": pa.int64(), "latency_ms": pa.float64(),
                "checkpoint": pa.string(), "error": pa.string(), "param.lr": pa.string()}
    assert {name: trials.schema.field(name).type for name in expected} == expected


def test_files_are_written_whole_through_a_temporary_sibling(tmp_path: Path) -> None:
    target = tmp_path / "trials.parquet"
    write_table_atomic(epochs_table(RECORDS), target)
    write_text_atomic("name: tiny\n", tmp_path / "study.yaml")
    assert pq.read_table(target).num_rows == 6 and (tmp_path / "study.yaml").read_text() == "name: tiny\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study.yaml", "trials.parquet"]
