"""What the dashboard computes, without Streamlit: ranking, filtering, Pareto fronts, hyperparameter
importance, confusion matrices (every file it reads goes through raysearch.core.files.inside).

Only pandas, numpy and Optuna are imported here, so the dashboard starts without the training stack (the ROC
and reliability points import torchmetrics inside their functions, on the models page only).
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import pandas as pd

from raysearch.core.columns import EARLY_STOPPED, FINISHED, PAIRED_PREFIX, PRUNED, TEST_PREFIXES, is_count
from raysearch.core.layout import AUDIT_DIR, AUDIT_FILE

CONFUSION_CELL = re.compile(r"^metric\.val_confusion_(\d+)_(\d+)\.best$")
BONE_FRACTURE_CLASSES = {"elbow positive", "fingers positive", "forearm fracture", "humerus fracture", "humerus",
                         "shoulder fracture", "wrist positive"}
BONE_FRACTURE_ATTRIBUTION = (
    "Radiographs: Bone Fracture Detection dataset (Roboflow Universe, version 4), licensed CC BY 4.0 "
    "(https://creativecommons.org/licenses/by/4.0/).")
IMPORTANCE_EVALUATORS = ("fANOVA", "MeanDecreaseImpurity")


def metric_columns(frame: pd.DataFrame) -> list[str]:
    """The numeric columns a leaderboard can be ranked by: test metrics first, then validation, then cost
    (confusion-matrix cells left out)."""
    numeric = [c for c in frame.columns if pd.api.types.is_numeric_dtype(frame[c]) and not c.startswith("param.")
               and "confusion_" not in c]
    test = [c for c in numeric if c.startswith(TEST_PREFIXES) and not is_count(c)]
    best = [c for c in numeric if c.startswith("metric.") and c.endswith(".best")]
    cost = [c for c in ("params", "latency_ms", "wall_time_s", "epochs") if c in numeric]
    return test + best + cost


def filter_trials(frame: pd.DataFrame, *, statuses: Iterable[str] | None = None, tasks: Iterable[str] | None = None,
                  choices: Mapping[str, Iterable[Any]] | None = None,
                  ranges: Mapping[str, tuple[float, float]] | None = None) -> pd.DataFrame:
    """Trials whose status, task, categorical parameters (`choices`) and numeric parameters (`ranges`,
    inclusive) match. A trial without a value for a conditional parameter is kept."""
    keep = pd.Series(True, index=frame.index)
    if statuses is not None:
        keep &= frame["status"].isin(list(statuses))
    if tasks is not None and "task" in frame:
        keep &= frame["task"].isin(list(tasks))
    for column, allowed in (choices or {}).items():
        keep &= frame[column].isna() | frame[column].isin(list(allowed))
    for column, (low, high) in (ranges or {}).items():
        keep &= frame[column].isna() | frame[column].between(low, high)
    return frame if keep.all() else frame[keep]  # no copy of a big table when nothing is filtered out


def pareto_front(frame: pd.DataFrame, objective: str, mode: str, costs: Sequence[str]) -> pd.Series:
    """True for trials no other trial beats: at least as good on `objective` and every cost (lower is
    better), strictly better on one. Trials with a missing value are never on the front."""
    columns = [objective, *costs]
    complete = frame[columns].notna().all(axis=1)
    values = frame.loc[complete, columns].to_numpy(dtype=float, copy=True)
    if mode == "max":
        values[:, 0] = -values[:, 0]
    on_front = np.array([
        not np.any(np.all(values <= point, axis=1) & np.any(values < point, axis=1)) for point in values
    ], dtype=bool)
    result = pd.Series(False, index=frame.index)
    result[complete[complete].index] = on_front
    return result


def study_distributions(study: Mapping[str, Any]) -> dict[str, Any]:
    """The search space's Optuna distributions, from study.yaml (Optuna's own JSON form)."""
    from optuna.distributions import json_to_distribution

    parameters = study.get("search_space", {}).get("parameters", {})
    return {name: json_to_distribution(json.dumps(spec["distribution"])) for name, spec in parameters.items()}


def _param_value(value: Any, distribution: Any) -> Any:
    """A value from a Parquet column as the distribution expects it (ints from floats, matching choices)."""
    from optuna.distributions import CategoricalDistribution, IntDistribution

    if isinstance(distribution, CategoricalDistribution):
        matches = [c for c in distribution.choices if c == value or str(c) == str(value)]
        return matches[0] if matches else value
    if isinstance(distribution, IntDistribution):
        return int(value)
    return float(value)


def typed_params(row: Mapping[str, Any], distributions: Mapping[str, Any]) -> dict[str, Any]:
    """A trials-table row's sampled parameters (name → value, typed by their distribution), skipping the
    conditional ones the trial did not use (missing values)."""
    return {name: _param_value(row[f"param.{name}"], d) for name, d in distributions.items()
            if f"param.{name}" in row and pd.notna(row[f"param.{name}"])}


def importance_study(frame: pd.DataFrame, distributions: Mapping[str, Any], score: str, mode: str, *,
                     include_pruned: bool = True) -> Any:
    """An in-memory Optuna study of the finished trials (value = `score`), for Optuna's importance tools.

    Trials stopped by ASHA count with their best score when `include_pruned`; failed trials never do.
    """
    import optuna

    statuses = {*FINISHED, PRUNED} if include_pruned else set(FINISHED)
    study = optuna.create_study(direction="maximize" if mode == "max" else "minimize")
    for _, row in frame[frame["status"].isin(statuses) & frame[score].notna()].iterrows():
        params = typed_params(row, distributions)
        study.add_trial(optuna.trial.create_trial(
            params=params, distributions={n: distributions[n] for n in params}, value=float(row[score])))
    return study


FEW_TRIALS = 10   # below this many scored trials, importances and their ranking are mostly noise


def importance_notice(frame: pd.DataFrame, score: str, *, include_pruned: bool = True) -> tuple[bool, str | None]:
    """Whether importances can be computed from `frame`'s trials, and one line saying why not or warning that
    they rest on too few trials (None when there are enough)."""
    statuses = {"COMPLETED", "EARLY_STOPPED"} | ({"PRUNED"} if include_pruned else set())
    scores = frame[frame["status"].isin(statuses)][score].dropna() if score in frame else pd.Series(dtype=float)
    if len(scores) < 2:
        return False, f"Importance needs at least two finished trials with a score; this study has {len(scores)}."
    if scores.nunique() == 1:
        return False, (f"All {len(scores)} scored trials have the same {score} ({scores.iloc[0]:.4g}): no "
                       "hyperparameter explains a difference.")
    if len(scores) < FEW_TRIALS:
        return True, (f"Only {len(scores)} scored trials: importances and the parameters' ranking from so few are "
                      f"mostly noise (about {FEW_TRIALS} or more are needed).")
    return True, None


def param_importances(frame: pd.DataFrame, distributions: Mapping[str, Any], score: str, mode: str, *,
                      evaluator: str = "fANOVA", include_pruned: bool = True, seed: int = 0) -> dict[str, float]:
    """Optuna's importance of each sampled hyperparameter for `score` (fANOVA or MeanDecreaseImpurity),
    normalised to sum to 1; empty when fewer than two trials qualify or they all score the same (fANOVA fails
    on zero variance)."""
    from optuna.importance import (
        FanovaImportanceEvaluator,
        MeanDecreaseImpurityImportanceEvaluator,
        get_param_importances,
    )

    evaluators = {"fANOVA": FanovaImportanceEvaluator, "MeanDecreaseImpurity": MeanDecreaseImpurityImportanceEvaluator}
    if evaluator not in evaluators:
        raise ValueError(f"evaluator must be one of {', '.join(evaluators)}, got {evaluator!r}")
    if not importance_notice(frame, score, include_pruned=include_pruned)[0]:
        return {}
    study = importance_study(frame, distributions, score, mode, include_pruned=include_pruned)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return dict(get_param_importances(study, evaluator=evaluators[evaluator](seed=seed)))


def parallel_dimensions(frame: pd.DataFrame, params: Sequence[str]) -> list[dict[str, Any]]:
    """Plotly Parcoords dimensions for the given parameter columns: numbers as they are, categories as
    codes with their names as tick labels (missing values as the label "—")."""
    dimensions = []
    for column in params:
        values = frame[column]
        label = column.removeprefix("param.")
        if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
            dimensions.append({"label": label, "values": values.astype(float).tolist()})
            continue
        names = values.map(lambda v: "—" if pd.isna(v) else str(v))
        categories = sorted(names.unique())
        dimensions.append({"label": label, "values": names.map(categories.index).tolist(),
                           "tickvals": list(range(len(categories))), "ticktext": categories})
    return dimensions


def stop_points(trials: pd.DataFrame, epochs: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The last epoch of every trial that was stopped early (by ASHA or by patience), with its status."""
    stopped = trials.loc[trials["status"].isin([PRUNED, EARLY_STOPPED]), ["trial_id", "status"]]
    last = epochs.sort_values("epoch").groupby("trial_id", as_index=False).last()
    return last.merge(stopped, on="trial_id")[["trial_id", "status", "epoch", metric]]


def confusion_from_metrics(row: Mapping[str, Any], num_classes: int) -> np.ndarray | None:
    """The validation confusion matrix from `metric.val_confusion_<true>_<pred>.best` values, if reported."""
    cells = {(int(m.group(1)), int(m.group(2))): v for k, v in row.items() if (m := CONFUSION_CELL.match(k))}
    if not cells:
        return None
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    for (true, predicted), value in cells.items():
        if true < num_classes and predicted < num_classes and pd.notna(value):
            matrix[true, predicted] = int(value)
    return matrix


def confusion_from_predictions(predictions: pd.DataFrame, num_classes: int) -> np.ndarray:
    """Counts of (true class, predicted class) over the predictions that have both."""
    both = predictions.dropna(subset=["true_class", "pred_class"])
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (both["true_class"].astype(int), both["pred_class"].astype(int)), 1)
    return matrix


def prediction_errors(predictions: pd.DataFrame, *, apd_limit: float, iou_limit: float) -> pd.Series:
    """True for a wrong prediction: wrong class, polygon further than `apd_limit` (mean point distance,
    normalised units), or mask IoU below `iou_limit`."""
    wrong = pd.Series(False, index=predictions.index)
    if "pred_class" in predictions:
        known = predictions["true_class"].notna() & predictions["pred_class"].notna()
        wrong |= known & (predictions["true_class"] != predictions["pred_class"])
    if "apd" in predictions:
        wrong |= predictions["apd"].notna() & (predictions["apd"] > apd_limit)
    if "iou" in predictions:
        wrong |= predictions["iou"].notna() & (predictions["iou"] < iou_limit)
    return wrong


def audit_locations(study_dir: Path, results: Path, study: Mapping[str, Any]) -> list[Path]:
    """Where a study's data audit may be, in order: the study folder, `raysearch data audit`'s default
    `<results>/audit/<dataset folder name>/`, then the results folder itself."""
    root = str(study.get("data", {}).get("root") or "")
    name = Path(root.rstrip("/")).name
    if name.endswith((".yaml", ".yml")):
        name = Path(root).parent.name
    named = [results / AUDIT_DIR / name / AUDIT_FILE] if name else []
    return [study_dir / AUDIT_FILE, *named, results / AUDIT_FILE]


def dataset_attribution(study: Mapping[str, Any]) -> str | None:
    """The license attribution to show with results on the real bone-fracture radiographs, else None."""
    data = study.get("data", {})
    real = "bone-fracture" in str(data.get("root", "")).lower() or set(data.get("classes", [])) == BONE_FRACTURE_CLASSES
    return BONE_FRACTURE_ATTRIBUTION if real else None


def ray_dashboard_candidates(environment: Mapping[str, str], passed: str | None = None) -> list[str]:
    """Where a live Ray dashboard may be, from what the user gave only (never from a results file, which may
    come from someone else): `passed` (`raysearch dashboard --ray-dashboard URL`), $RAY_DASHBOARD_URL, the
    host of $RAY_ADDRESS on port 8265, then the local default."""
    candidates = [passed or "", environment.get("RAY_DASHBOARD_URL", "")]
    address = environment.get("RAY_ADDRESS", "")
    if address and address != "auto":
        parsed = urlparse(address if "://" in address else f"ray://{address}")
        scheme = parsed.scheme if parsed.scheme in ("http", "https") else "http"
        port = parsed.port if parsed.scheme in ("http", "https") and parsed.port else 8265
        candidates.append(f"{scheme}://{parsed.hostname}:{port}")
    candidates.append("http://127.0.0.1:8265")
    return list(dict.fromkeys(c for c in candidates if c))


def search_progress(trials: pd.DataFrame, epochs: pd.DataFrame, metric: str, mode: str) -> pd.DataFrame:
    """Best-so-far `metric` against cumulative compute: one row per epoch run, the trials taken in the order
    the searcher sampled them (`number`, else trial id) and each trial's epochs in order, with the compute
    spent so far (`trial_epochs`), that epoch's value, the best value up to it (`best_so_far`) and the
    trial's status (so pruned trials can be marked)."""
    order = trials.sort_values(["number", "trial_id"] if "number" in trials else ["trial_id"], na_position="last")
    rank = {trial_id: position for position, trial_id in enumerate(order["trial_id"])}
    status = dict(zip(trials["trial_id"], trials["status"], strict=True))
    rows = epochs[epochs["trial_id"].isin(rank)][["trial_id", "epoch", metric]].copy()
    rows["order"] = rows["trial_id"].map(rank)
    rows = rows.sort_values(["order", "epoch"]).reset_index(drop=True)
    rows["trial_epochs"] = np.arange(1, len(rows) + 1)
    best = rows[metric].cummax() if mode == "max" else rows[metric].cummin()
    rows["best_so_far"] = best.ffill()
    rows["status"] = rows["trial_id"].map(status)
    return rows.rename(columns={metric: "value"})[["trial_id", "epoch", "trial_epochs", "value", "best_so_far",
                                                   "status"]]


def compute_to_reach(progress: pd.DataFrame, target: float, mode: str) -> float | None:
    """The trial-epochs after which `progress` (from `search_progress`) first reached `target`; None if never."""
    reached = progress["best_so_far"] >= target if mode == "max" else progress["best_so_far"] <= target
    return float(progress.loc[reached, "trial_epochs"].iloc[0]) if reached.any() else None


def filter_scope(study: str, everything: bool) -> str:
    """The key of one leaderboard's filters: each study keeps its own, and comparing all studies has its own."""
    return "filters:all-studies" if everything else f"filters:study:{study}"


def hidden_notice(shown: int, total: int) -> str | None:
    """`N of M shown — K hidden by filters` when a filter hides any trial, else None (nothing to say)."""
    hidden = total - shown
    return f"{shown} of {total} trials shown — {hidden} hidden by filters" if hidden else None


def log_parameters(distributions: Mapping[str, Any]) -> set[str]:
    """The parameters sampled on a log scale (Optuna float or int distributions with `log=True`)."""
    return {name for name, d in distributions.items() if getattr(d, "log", False)}


def log_grid(low: float, high: float, steps: int = 61) -> list[float]:
    """Log-spaced slider stops from `low` to `high`, both ends exact (so the full range hides nothing)."""
    if not 0 < low < high:
        return [low, high] if low != high else [low]
    grid = np.geomspace(low, high, steps).tolist()
    grid[0], grid[-1] = low, high
    return grid


def distinct_labels(values: Sequence[float]) -> list[str]:
    """The values as short numbers with just enough significant digits to tell every two apart (a slider's
    stops must not share a label)."""
    for digits in range(2, 17):
        labels = [f"{v:.{digits}g}" for v in values]
        if len(set(labels)) == len(labels):
            return labels
    return [repr(v) for v in values]


def curve_selection(previous: Sequence[str] | None, ranked: Sequence[str], count: int = 8) -> list[str]:
    """The trials to draw: the ones chosen before that this study has, else its `count` best."""
    kept = [t for t in previous or () if t in set(ranked)]
    return kept or list(ranked[:count])


def top_parameters(importances: Mapping[str, float], columns: Sequence[str], count: int = 6) -> list[str]:
    """The `count` parameter columns (`param.<name>`) that matter most by `importances` (name → importance);
    columns without an importance follow in their own order."""
    order = {name: -value for name, value in importances.items()}
    ranked = sorted(columns, key=lambda c: (order.get(c.removeprefix("param."), 1.0), columns.index(c)))
    return ranked[:count]


def unranked_parameters(study: Mapping[str, Any], importances: Mapping[str, float]) -> dict[str, str]:
    """Why each searched parameter has no importance: conditional ones (`when`) are set in some trials only,
    and Optuna's evaluators rank only the parameters every scored trial has."""
    reasons = {}
    for name, spec in study.get("search_space", {}).get("parameters", {}).items():
        if name in importances:
            continue
        when = spec.get("when") or {}
        if when:
            condition = " and ".join(f"{k} is {' or '.join(map(str, v))}" for k, v in when.items())
            reasons[name] = f"conditional (sampled only when {condition}): not in every trial, so not ranked"
        else:
            reasons[name] = "not ranked: too few scored trials with distinct values"
    return reasons


def importance_range(importances: Mapping[str, float]) -> list[float]:
    """The importance axis: from 0 to a little beyond the largest importance (not a fixed [0, 1])."""
    return [0.0, max(importances.values(), default=1.0) * 1.15 or 1.0]


def model_names(trials: pd.DataFrame, study: Mapping[str, Any]) -> pd.Series:
    """Each trial's model: its sampled `param.model`, else the space's fixed model, else the task's default."""
    fixed = study.get("search_space", {}).get("fixed", {}).get("model") or study.get("defaults", {}).get("model")
    sampled = trials["param.model"] if "param.model" in trials else pd.Series(None, index=trials.index, dtype=object)
    return sampled.astype(object).where(sampled.notna(), fixed)


def with_intervals(columns: Sequence[str], available: Iterable[str]) -> list[str]:
    """`columns` with each one's 95 % bootstrap interval (`<column>.ci_low`, `.ci_high`, the `.mean` of repeats
    dropped) right after it, where the table has them."""
    present = set(available)
    ordered: list[str] = []
    for column in columns:
        base = column.removesuffix(".mean")
        ordered += [column, *(c for c in (f"{base}.ci_low", f"{base}.ci_high") if c in present)]
    return ordered


def interval_text(row: Mapping[str, Any], column: str) -> str | None:
    """`[low, high]` of a test column's bootstrap interval, None without one."""
    base = column.removesuffix(".mean")
    low, high = row.get(f"{base}.ci_low"), row.get(f"{base}.ci_high")
    return None if low is None or high is None or pd.isna(low) or pd.isna(high) else f"[{low:.3f}, {high:.3f}]"


def paired_comparisons(trials: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Each runner-up against the best trial on the same test resamples (`paired.<metric>.*`), best first."""
    prefix = f"{PAIRED_PREFIX}{metric.removeprefix('val_')}"
    columns = [f"{prefix}.{part}" for part in ("difference", "ci_low", "ci_high", "share_better")]
    if columns[0] not in trials:
        return pd.DataFrame(columns=["trial_id", "difference", "ci_low", "ci_high", "share_better"])
    found = trials[trials[columns[0]].notna()][["trial_id", *columns]]
    return found.rename(columns=dict(zip(columns, ["difference", "ci_low", "ci_high", "share_better"], strict=True)))


def roc_curves(predictions: pd.DataFrame, classes: Sequence[str]) -> pd.DataFrame:
    """One-vs-rest ROC points of each class present in a model's test predictions (torchmetrics, imported
    here only), as rows of class, false positive rate and true positive rate."""
    from raysearch.tasks.metrics import roc_points

    labelled = predictions[predictions["true_class"].notna() & predictions["probabilities"].notna()]
    if labelled.empty:
        return pd.DataFrame(columns=["class", "fpr", "tpr"])
    probabilities, labels = np.stack(labelled["probabilities"]), labelled["true_class"].to_numpy(dtype=int)
    parts = []
    for i, name in enumerate(classes):
        fpr, tpr = roc_points(probabilities[:, i], labels == i)
        if len(fpr):
            parts.append(pd.DataFrame({"class": name, "fpr": fpr, "tpr": tpr}))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["class", "fpr", "tpr"])


def reliability(predictions: pd.DataFrame) -> pd.DataFrame:
    """The reliability diagram of a model's test predictions: per confidence bin of the ECE, its mean
    confidence, accuracy and images."""
    from raysearch.tasks.metrics import reliability_points

    labelled = predictions[predictions["true_class"].notna() & predictions["probabilities"].notna()]
    if labelled.empty:
        return pd.DataFrame(columns=["confidence", "accuracy", "images"])
    return pd.DataFrame(reliability_points(np.stack(labelled["probabilities"]),
                                           labelled["true_class"].to_numpy(dtype=int)))
