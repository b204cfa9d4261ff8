"""The radiology figures of `evaluate` on a real finished study (conftest.tiny_study, multitask, 6 classes):
recomputed with scikit-learn from predictions.parquet, intervals beside every figure, the paired comparison and
an ensemble of one trial."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import cohen_kappa_score, roc_auc_score
from test_dashboard import chart_text, dashboard, page  # noqa: F401  (dashboard: the fixture)
from test_export import assert_onnx_matches_pytorch

from raysearch.cli import main
from raysearch.inference.predict import load_model
from raysearch.models.ensemble import EnsembleNet
from raysearch.study.evaluate import evaluate_study
from raysearch.tasks.bootstrap import ImageFigures, replicates


@pytest.mark.slow
def test_evaluate_reports_figures_with_intervals_the_paired_comparison_and_an_ensemble(
        tiny_study_copy, dashboard) -> None:  # noqa: F811
    study = tiny_study_copy.study
    out = io.StringIO()
    evaluate_study(study, top=2, ensemble=1, resamples=400, progress=False, out=out)
    trials = pd.read_parquet(study / "trials.parquet").set_index("trial_id")
    predictions = pd.read_parquet(study / "predictions.parquet")
    evaluated = trials[trials["test.score"].notna()]
    best, runner_up = evaluated.sort_values("metric.val_score.best", ascending=False).index[:2]

    # AUROC (over the classes present in the test split), kappa and ECE recomputed from the predictions
    mine = predictions[predictions["trial_id"] == best]
    probabilities, labels = np.stack(mine["probabilities"]).astype(np.float64), mine["true_class"].to_numpy()
    present = [c for c in range(probabilities.shape[1]) if 0 < (labels == c).sum() < len(labels)]
    aurocs = [roc_auc_score(labels == c, probabilities[:, c]) for c in present]
    row = trials.loc[best]
    assert row["test.auroc"] == pytest.approx(np.mean(aurocs), abs=1e-5)
    for c, value in zip(present, aurocs, strict=True):
        assert row[f"test.auroc_{c}"] == pytest.approx(value, abs=1e-5)
    assert row["test.kappa"] == pytest.approx(cohen_kappa_score(labels, probabilities.argmax(axis=1)), abs=1e-5)
    plain = replicates(np.ones((1, len(labels))), ImageFigures(probabilities=probabilities, labels=labels))
    assert row["test.ece"] == pytest.approx(plain["ece"][0], abs=1e-5)

    # a 95 % interval beside each headline figure, around it
    for name in ("score", "accuracy", "auroc", "kappa", "apd", "polygon_iou"):  # not ECE: biased up under resampling
        low, high = row[f"test.{name}.ci_low"], row[f"test.{name}.ci_high"]
        assert low <= row[f"test.{name}"] + 1e-9 and row[f"test.{name}"] - 1e-9 <= high, name
    # the runner-up against the best on the same resamples
    other = trials.loc[runner_up]
    assert other["paired.score.difference"] == pytest.approx(other["test.score"] - row["test.score"])
    assert other["paired.score.ci_low"] <= other["paired.score.ci_high"]
    assert 0 <= other["paired.score.share_better"] <= 1
    assert "Paired bootstrap against the best trial" in out.getvalue()

    # an ensemble of one trial is that trial
    ensemble = pd.read_parquet(study / "ensembles.parquet").iloc[0]
    assert ensemble["ensemble"] == "ensemble-top1" and ensemble["members"] == best
    alone = predictions[predictions["trial_id"] == "ensemble-top1"]
    assert np.allclose(np.stack(alone["probabilities"]), probabilities, atol=1e-5)
    assert np.allclose(np.stack(alone["pred_polygon"]), np.stack(mine["pred_polygon"]), atol=1e-6)
    for name in ("accuracy", "auroc", "apd", "score", "accuracy.ci_low", "score.ci_high"):
        assert ensemble[f"test.{name}"] == pytest.approx(row[f"test.{name}"], abs=1e-5), name
    assert ensemble["paired.score.difference"] == pytest.approx(0, abs=1e-6)

    # the dashboard: intervals, the paired comparison and the ensemble on the leaderboard; ROC curves, the
    # reliability diagram and error bars on the models page, where the ensemble is one more model
    app = page(dashboard(tiny_study_copy.results), "views/leaderboard.py")
    headers = " ".join(h.value for h in app.subheader)
    assert "Paired bootstrap" in headers and "Ensembles" in headers
    assert "test.score.ci_low" in app.dataframe[0].value.columns
    page(app, "views/models.py")
    charts = chart_text(app)
    assert all(text in charts for text in ("sensitivity", "accuracy of the bin", "95 % bootstrap interval"))
    assert "ensemble-top1 (ensemble)" in app.selectbox(key="model").options


@pytest.mark.slow
def test_export_of_an_ensemble_runs_as_one_model_in_predict_and_onnx(tiny_study_copy) -> None:
    study = tiny_study_copy.study
    assert main(["export", str(study), "--ensemble", "2", "--tta", "flip", "--format", "onnx"]) == 0
    model = load_model(study / "model")
    assert isinstance(model.network, EnsembleNet) and len(model.network.networks) == 2
    assert model.config["trial_id"] == "ensemble-top2-flip" and len(model.config["ensemble"]["members"]) == 2
    path = assert_onnx_matches_pytorch(model, study)
    predicted = model.predict([path])[0]
    assert predicted.ok and predicted.class_name in model.classes
