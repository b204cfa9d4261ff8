"""The dashboard's logic without Streamlit: path guard, ranking, filtering, Pareto front, importance."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raysearch.core.columns import lower_is_better
from raysearch.core.files import inside
from raysearch.dashboard.logic import (
    BONE_FRACTURE_ATTRIBUTION,
    audit_locations,
    confusion_from_metrics,
    confusion_from_predictions,
    curve_selection,
    dataset_attribution,
    distinct_labels,
    filter_scope,
    filter_trials,
    hidden_notice,
    importance_notice,
    importance_range,
    importance_study,
    log_grid,
    log_parameters,
    metric_columns,
    model_names,
    parallel_dimensions,
    param_importances,
    pareto_front,
    prediction_errors,
    ray_dashboard_candidates,
    stop_points,
    study_distributions,
    top_parameters,
    unranked_parameters,
)
from raysearch.errors import DataError
from raysearch.search.space import parse_space

SPACE = parse_space({
    "task": "multitask",
    "parameters": {
        "lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
        "width": {"type": "categorical", "choices": [8, 16, 32]},
        "conv_layers": {"type": "int", "low": 2, "high": 6},
        "scheduler": {"type": "categorical", "choices": ["step", "cosine"]},
        "step_size": {"type": "int", "low": 1, "high": 4, "when": {"scheduler": "step"}},
    },
    "fixed": {"model": "vgg"},
}, source="test")
STUDY = {"search_space": SPACE.to_dict()}


def trials(n: int = 40, seed: int = 0) -> pd.DataFrame:
    """Synthetic finished trials whose score depends on lr only (best near lr = 1e-2)."""
    rng = np.random.default_rng(seed)
    lr = 10 ** rng.uniform(-4, -1, n)
    scheduler = rng.choice(["step", "cosine"], n)
    return pd.DataFrame({
        "trial_id": [f"t{i:02d}" for i in range(n)],
        "status": rng.choice(["COMPLETED", "PRUNED"], n, p=[0.5, 0.5]),
        "param.lr": lr,
        "param.width": rng.choice([8, 16, 32], n),
        "param.conv_layers": rng.integers(2, 7, n),
        "param.scheduler": scheduler,
        "param.step_size": np.where(scheduler == "step", rng.integers(1, 5, n), np.nan),
        "param.model": "vgg",
        "metric.val_score.best": 1 - np.abs(np.log10(lr) + 2) / 3 + rng.normal(0, 0.01, n),
        "params": rng.integers(1_000, 100_000, n),
        "latency_ms": rng.uniform(0.1, 3, n),
    })


def test_inside_accepts_inside_and_refuses_outside(tmp_path: Path) -> None:
    root = tmp_path / "results"
    (root / "study" / "predictions").mkdir(parents=True)
    expected = root / "study" / "predictions" / "a.png"
    assert inside(root, "study/predictions/a.png") == expected
    assert inside(root, expected) == expected
    for crafted in ("study/../../secret.png", "../results-other/x.png", "/etc/passwd", str(tmp_path / "x.png")):
        with pytest.raises(DataError, match="refused, the path lies outside the folder"):
            inside(root, crafted)
    (root / "study" / "link.png").symlink_to(tmp_path / "elsewhere.png")
    with pytest.raises(DataError, match="outside"):
        inside(root, "study/link.png")


def test_crafted_parquet_path_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "results"
    (root / "study").mkdir(parents=True)
    (tmp_path / "outside.png").write_bytes(b"secret")
    pq.write_table(pa.table({"view": ["predictions/ok.png", "../../outside.png"]}), root / "study" / "p.parquet")
    views = pd.read_parquet(root / "study" / "p.parquet")["view"]
    assert inside(root, root / "study" / views[0]) == root / "study" / "predictions" / "ok.png"
    with pytest.raises(DataError, match="outside.png: refused"):
        inside(root, root / "study" / views[1])


def test_filter_trials_by_status_task_choices_and_ranges() -> None:
    frame = trials().assign(task=["multitask", "classification"] * 20)
    kept = filter_trials(frame, statuses=["COMPLETED"], tasks=["multitask"], choices={"param.width": [8, 16]},
                         ranges={"param.lr": (1e-3, 1e-2), "param.step_size": (2, 3)})
    assert not kept.empty
    assert (kept["status"] == "COMPLETED").all() and (kept["task"] == "multitask").all()
    assert kept["param.width"].isin([8, 16]).all() and kept["param.lr"].between(1e-3, 1e-2).all()
    assert (kept["param.step_size"].isna() | kept["param.step_size"].between(2, 3)).all()
    assert kept["param.step_size"].isna().any()  # trials without the conditional parameter are kept
    assert len(filter_trials(frame)) == len(frame)


def test_pareto_front_marks_undominated_trials() -> None:
    frame = pd.DataFrame({"score": [0.9, 0.8, 0.7, 0.95, 0.6, np.nan], "params": [100, 10, 5, 1000, 50, 1]})
    front = pareto_front(frame, "score", "max", ["params"])
    assert front.tolist() == [True, True, True, True, False, False]
    lower = pareto_front(frame, "score", "min", ["params"])  # a loss: low is good
    assert lower.tolist() == [False, False, True, False, True, False]


def test_column_helpers() -> None:
    frame = trials().assign(**{"test.score": 0.5, "metric.val_loss.best": 1.0})
    columns = metric_columns(frame)
    assert columns[0] == "test.score" and "metric.val_score.best" in columns and columns[-1] == "latency_ms"
    assert not any(c.startswith("param.") for c in columns)
    assert lower_is_better("metric.val_loss.best") and lower_is_better("test.apd") and lower_is_better("params")
    assert lower_is_better("test.score.std") and not lower_is_better("test.score.mean")
    assert not lower_is_better("metric.val_accuracy.best")


def test_importance_finds_the_parameter_that_matters() -> None:
    distributions = study_distributions(STUDY)
    assert set(distributions) == {"lr", "width", "conv_layers", "scheduler", "step_size"}
    frame = trials()
    for evaluator in ("fANOVA", "MeanDecreaseImpurity"):
        found = param_importances(frame, distributions, "metric.val_score.best", "max", evaluator=evaluator)
        assert max(found, key=found.get) == "lr", (evaluator, found)
        assert sum(found.values()) == pytest.approx(1.0)
        assert "step_size" not in found  # conditional: not in every trial


def test_importance_study_counts_pruned_trials_only_when_asked() -> None:
    frame = trials()
    distributions = study_distributions(STUDY)
    everything = importance_study(frame, distributions, "metric.val_score.best", "max")
    finished = importance_study(frame, distributions, "metric.val_score.best", "max", include_pruned=False)
    assert len(everything.trials) == len(frame)
    assert len(finished.trials) == (frame["status"] == "COMPLETED").sum()
    assert isinstance(everything.trials[0].params["conv_layers"], int)
    assert param_importances(frame.head(1), distributions, "metric.val_score.best", "max") == {}


def test_parallel_dimensions_encode_categories() -> None:
    frame = pd.DataFrame({"param.lr": [0.1, 0.01], "param.scheduler": ["step", None], "param.bn": [True, False]})
    lr, scheduler, bn = parallel_dimensions(frame, ["param.lr", "param.scheduler", "param.bn"])
    assert lr == {"label": "lr", "values": [0.1, 0.01]}
    assert scheduler["ticktext"] == ["step", "—"] and scheduler["values"] == [0, 1]
    assert bn["ticktext"] == ["False", "True"] and bn["values"] == [1, 0]


def test_stop_points_are_last_epochs_of_stopped_trials() -> None:
    trials_frame = pd.DataFrame({"trial_id": ["a", "b", "c"], "status": ["PRUNED", "COMPLETED", "EARLY_STOPPED"]})
    epochs = pd.DataFrame({"trial_id": ["a", "a", "b", "b", "b", "c"], "epoch": [1, 2, 1, 2, 3, 1],
                           "val_score": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]})
    stops = stop_points(trials_frame, epochs, "val_score")
    assert stops.set_index("trial_id")[["status", "epoch", "val_score"]].to_dict("index") == {
        "a": {"status": "PRUNED", "epoch": 2, "val_score": 0.2},
        "c": {"status": "EARLY_STOPPED", "epoch": 1, "val_score": 0.6}}


def test_confusion_matrices() -> None:
    predictions = pd.DataFrame({"true_class": [0, 0, 1, 2, None], "pred_class": [0, 1, 1, 2, 0]})
    assert confusion_from_predictions(predictions, 3).tolist() == [[1, 1, 0], [0, 1, 0], [0, 0, 1]]
    row = {"metric.val_confusion_0_0.best": 4.0, "metric.val_confusion_1_0.best": 2.0, "metric.val_score.best": 1}
    assert confusion_from_metrics(row, 2).tolist() == [[4, 0], [2, 0]]
    assert confusion_from_metrics({"metric.val_score.best": 1}, 2) is None


def test_prediction_errors() -> None:
    predictions = pd.DataFrame({"true_class": [0, 1, 1, 2], "pred_class": [0, 0, 1, 2],
                                "apd": [0.01, 0.01, 0.3, np.nan], "iou": [np.nan, 0.9, 0.9, 0.2]})
    assert prediction_errors(predictions, apd_limit=0.1, iou_limit=0.5).tolist() == [False, True, True, True]


def test_attribution_only_for_the_real_dataset() -> None:
    real = {"data": {"root": "/data/shared/datasets/bone-fracture-yolo", "classes": ["a"]}}
    assert dataset_attribution(real) == BONE_FRACTURE_ATTRIBUTION and "CC BY 4.0" in BONE_FRACTURE_ATTRIBUTION
    assert dataset_attribution({"data": {"root": "/tmp/phantom", "classes": ["finger", "wrist"]}}) is None


def test_ray_dashboard_candidates() -> None:
    found = ray_dashboard_candidates({"RAY_ADDRESS": "ray://head:10001"}, "http://passed:8265")
    assert found == ["http://passed:8265", "http://head:8265", "http://127.0.0.1:8265"]
    assert ray_dashboard_candidates({"RAY_DASHBOARD_URL": "http://h:9000", "RAY_ADDRESS": "auto"}) == [
        "http://h:9000", "http://127.0.0.1:8265"]


def test_audit_locations(tmp_path: Path) -> None:
    study = tmp_path / "study"
    for root, name in (("/data/bone-fracture-yolo", "bone-fracture-yolo"), ("/data/xr/data.yaml", "xr")):
        assert audit_locations(study, tmp_path, {"data": {"root": root}}) == [
            study / "audit.parquet", tmp_path / "audit" / name / "audit.parquet", tmp_path / "audit.parquet"]
    assert audit_locations(study, tmp_path, {}) == [study / "audit.parquet", tmp_path / "audit.parquet"]


def test_filters_are_scoped_per_study_and_hidden_trials_are_counted() -> None:
    assert filter_scope("a", False) != filter_scope("b", False) != filter_scope("a", True)
    assert hidden_notice(11, 16) == "11 of 16 trials shown — 5 hidden by filters"
    assert hidden_notice(16, 16) is None


def test_log_parameters_get_a_log_spaced_grid_with_exact_ends() -> None:
    assert log_parameters(study_distributions(STUDY)) == {"lr"}
    grid = log_grid(1e-4, 2e-2)
    assert grid[0] == 1e-4 and grid[-1] == 2e-2
    ratios = np.diff(np.log(grid))
    assert np.allclose(ratios, ratios[0])  # evenly spaced in log: the slider reads 1e-4 … 2e-2, not 0.00 – 0.02
    narrow = distinct_labels(log_grid(0.0035, 0.0062))  # two digits would name neighbouring stops alike
    assert len(set(narrow)) == len(narrow) and narrow[0] == "0.0035" and narrow[-1] == "0.0062"
    assert distinct_labels([1e-4, 2e-2]) == ["0.0001", "0.02"]


def test_curve_selection_keeps_what_the_study_has_else_its_best() -> None:
    ranked = ["b1", "b2", "b3"]
    assert curve_selection(["a1", "b3"], ranked) == ["b3"]
    assert curve_selection(["a1", "a2"], ranked, count=2) == ["b1", "b2"]
    assert curve_selection(None, ranked) == ranked


def test_parallel_axes_start_with_the_most_important_parameters() -> None:
    columns = ["param.width", "param.lr", "param.scheduler", "param.dropout"]
    assert top_parameters({"lr": 0.7, "scheduler": 0.2, "width": 0.1}, columns, 2) == ["param.lr", "param.scheduler"]
    assert top_parameters({}, columns, 3) == columns[:3]


def test_importance_axis_and_unranked_parameters_are_explained() -> None:
    found = param_importances(trials(), study_distributions(STUDY), "metric.val_score.best", "max")
    low, high = importance_range(found)
    assert low == 0 and max(found.values()) < high < 1.2 * max(found.values())
    reasons = unranked_parameters(STUDY, found)
    assert set(reasons) == {"step_size"} and "scheduler is step" in reasons["step_size"]


def test_model_names_from_the_trials_or_the_fixed_space() -> None:
    frame = trials(4)
    assert model_names(frame, STUDY).tolist() == ["vgg"] * 4
    sampled = frame.assign(**{"param.model": ["resnet18", None, "vgg", None]})
    assert model_names(sampled, STUDY).tolist() == ["resnet18", "vgg", "vgg", "vgg"]
    assert model_names(frame.drop(columns="param.model"), STUDY).tolist() == ["vgg"] * 4


def test_importance_says_why_not_or_warns_with_too_few_or_equal_trials() -> None:
    frame, score = trials(), "metric.val_score.best"
    distributions = study_distributions(STUDY)
    scored = frame[frame["status"].isin({"COMPLETED", "EARLY_STOPPED", "PRUNED"})][score].notna().sum()
    possible, notice = importance_notice(frame, score)
    assert possible and (notice is None) == (scored >= 10)
    equal = frame.head(2).assign(**{score: 0.5, "status": "COMPLETED"})
    assert importance_notice(equal, score) == (
        False, f"All 2 scored trials have the same {score} (0.5): no hyperparameter explains a difference.")
    assert param_importances(equal, distributions, score, "max") == {}   # fANOVA would fail on zero variance
    few = frame.head(3).assign(status="COMPLETED")
    assert importance_notice(few, score)[1].startswith("Only 3 scored trials: importances")
    assert importance_notice(frame.head(1), score)[0] is False
