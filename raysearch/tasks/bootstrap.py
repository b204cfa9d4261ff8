"""Bootstrap confidence intervals of test figures, vectorised with numpy.

A resample is a vector of how often each test image is drawn (`resample_counts`: within each stratum,
its n images drawn n times with replacement). Every figure raysearch reports is a function of weighted sums
over images (a confusion matrix, sums of per-image errors, the weighted Mann–Whitney statistic for AUROC,
the weighted calibration bins for ECE), so one matrix product per figure evaluates it on all the resamples
at once (`replicates`). With all-ones weights the functions give the plain figures (tests check them against
scikit-learn and torchmetrics). Intervals are percentile intervals (`interval`); a paired comparison draws
the same resamples for both models (`paired`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace

import numpy as np

from raysearch.core.options import RESAMPLES
from raysearch.tasks.metrics import ECE_BINS, calibration_bins

CONFIDENCE = 0.95
SURFACE_FIGURES = ("hd95", "assd", "hd95_mm", "assd_mm")  # per-image surface distances, in pixels and mm
Replicates = dict[str, np.ndarray]  # figure name → (B,) values, one per resample


def resample_counts(strata: np.ndarray, resamples: int = RESAMPLES, seed: int = 0) -> np.ndarray:
    """(resamples, N) draw counts: in each resample, every stratum's n images drawn n times with replacement
    (stratified by the value of `strata`, e.g. the true class; one stratum when all values are equal)."""
    strata = np.asarray(strata)
    rng = np.random.default_rng(seed)
    counts = np.zeros((resamples, len(strata)), dtype=np.float64)
    offsets = np.arange(resamples)[:, None] * len(strata)
    for value in np.unique(strata):
        members = np.flatnonzero(strata == value)
        draws = members[rng.integers(0, len(members), size=(resamples, len(members)))]
        counts += np.bincount((offsets + draws).ravel(), minlength=counts.size).reshape(counts.shape)
    return counts


def interval(values: np.ndarray, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The percentile interval of bootstrap replicates (NaN replicates left out; NaN when all are)."""
    values = np.asarray(values, dtype=np.float64)
    values = values[~np.isnan(values)]
    if not len(values):
        return float("nan"), float("nan")
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


@dataclass(frozen=True)
class PairedComparison:
    """A runner-up's figure minus the best model's over the same resamples."""

    difference: float        # on the test images as they are
    ci_low: float
    ci_high: float
    share_better: float      # the share of resamples in which the runner-up is better


def paired(best: np.ndarray, runner_up: np.ndarray, point: float, higher_is_better: bool) -> PairedComparison:
    """Compare replicates drawn with the same resamples; `point` is runner-up − best on the test images."""
    difference = np.asarray(runner_up, dtype=np.float64) - np.asarray(best, dtype=np.float64)
    defined = difference[~np.isnan(difference)]
    better = defined > 0 if higher_is_better else defined < 0
    return PairedComparison(point, *interval(defined), float(better.mean()) if len(defined) else float("nan"))


@dataclass(frozen=True)
class ImageFigures:
    """A model's per-image test results, the inputs of `replicates` (each optional, (N, ...) rows)."""

    probabilities: np.ndarray | None = None   # (N, C) class probabilities
    labels: np.ndarray | None = None          # (N,) true classes
    apd: np.ndarray | None = None             # (N,) mean point distance of the polygon
    squared_error: np.ndarray | None = None   # (N,) mean squared error of the 8 polygon values
    polygon_iou: np.ndarray | None = None     # (N,)
    baseline_apd: float = 0.0                 # APD of the mean training polygon (polygon skill)
    pixels: np.ndarray | None = None          # (N, 3) mask true positive, false positive, false negative pixels
    hd95: np.ndarray | None = None            # (N,) NaN where undefined
    assd: np.ndarray | None = None            # (N,)
    hd95_mm: np.ndarray | None = None         # (N,) in mm: NaN also where the image has no pixel spacing
    assd_mm: np.ndarray | None = None         # (N,)
    positive: int | None = None               # two classes: the positive class ...
    threshold: float | None = None            # ... and the operating threshold on its probability

    def take(self, index: np.ndarray, baseline_apd: float) -> ImageFigures:
        """These figures for the images at `index` only, with that subset's polygon baseline."""
        arrays = {f.name: getattr(self, f.name)[index] for f in fields(self)
                  if isinstance(getattr(self, f.name), np.ndarray)}
        return replace(self, **arrays, baseline_apd=baseline_apd)


def weighted_mean(weights: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Per resample, the weighted mean of the defined (non-NaN) values."""
    defined = ~np.isnan(values)
    total = weights @ defined.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, (weights @ np.where(defined, values, 0.0)) / total, np.nan)


def _ratio(numerator: np.ndarray, denominator: np.ndarray, empty: float) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, numerator / np.where(denominator > 0, denominator, 1), empty)


def auroc(weights: np.ndarray, scores: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """Weighted one-vs-rest AUROC per resample: the weighted Mann–Whitney statistic, a tie counted ½ (as the
    trapezoidal ROC area of torchmetrics and scikit-learn); NaN where one side has no weight."""
    positive = np.asarray(positive, dtype=bool)
    if not len(scores):
        return np.full(len(weights), np.nan)
    order = np.argsort(scores, kind="stable")
    ranked = np.asarray(scores)[order]
    starts = np.flatnonzero(np.r_[True, ranked[1:] != ranked[:-1]])  # first image of each distinct score
    sorted_weights, sorted_positive = weights[:, order], positive[order]
    pos = np.add.reduceat(sorted_weights * sorted_positive, starts, axis=1)  # (B, levels) positive weight per score
    neg = np.add.reduceat(sorted_weights * ~sorted_positive, starts, axis=1)
    below = np.cumsum(neg, axis=1) - neg              # negative weight strictly below each level
    wins = (pos * (below + 0.5 * neg)).sum(axis=1)
    return _ratio(wins, pos.sum(axis=1) * neg.sum(axis=1), np.nan)


def _classification(weights: np.ndarray, probabilities: np.ndarray, labels: np.ndarray) -> Replicates:
    """Accuracy, balanced accuracy, macro F1, per-class precision/recall/sensitivity/specificity/AUROC, AUROC,
    kappa and ECE, with the conventions of `tasks.metrics` (0 or NaN where undefined, as there)."""
    classes = probabilities.shape[1]
    labels = np.asarray(labels, dtype=np.int64)
    predicted = probabilities.argmax(axis=1)
    cells = np.zeros((len(labels), classes * classes))
    cells[np.arange(len(labels)), labels * classes + predicted] = 1.0
    confusion = (weights @ cells).reshape(-1, classes, classes)
    total = confusion.sum(axis=(1, 2))
    tp = np.diagonal(confusion, axis1=1, axis2=2)
    support, called = confusion.sum(axis=2), confusion.sum(axis=1)
    precision, recall = _ratio(tp, called, 0.0), _ratio(tp, support, 0.0)
    present, seen = support > 0, (support > 0) | (called > 0)
    f1 = _ratio(2 * precision * recall, precision + recall, 0.0)
    out: Replicates = {
        "accuracy": _ratio(tp.sum(axis=1), total, 0.0),
        "balanced_accuracy": _ratio((recall * present).sum(axis=1), present.sum(axis=1), 0.0),
        "macro_f1": _ratio((f1 * seen).sum(axis=1), seen.sum(axis=1), 0.0),
    }
    chance = (support * called).sum(axis=1) / np.maximum(total, 1) ** 2
    out["kappa"] = _ratio(out["accuracy"] - chance, 1 - chance, np.nan)
    negatives, tn = total[:, None] - support, total[:, None] - support - called + tp
    aurocs = []
    for i in range(classes):
        out[f"precision_{i}"], out[f"recall_{i}"] = precision[:, i], recall[:, i]
        out[f"sensitivity_{i}"] = _ratio(tp[:, i], support[:, i], np.nan)
        out[f"specificity_{i}"] = _ratio(tn[:, i], negatives[:, i], np.nan)
        out[f"auroc_{i}"] = auroc(weights, probabilities[:, i], labels == i)
        aurocs.append(out[f"auroc_{i}"])
    stacked = np.stack(aurocs, axis=1)
    counted = (~np.isnan(stacked)).sum(axis=1)
    out["auroc"] = _ratio(np.nansum(stacked, axis=1), counted, np.nan)
    confidence = probabilities.max(axis=1)
    bins = calibration_bins(confidence)
    gaps = np.zeros((len(labels), ECE_BINS + 1))
    gaps[np.arange(len(labels)), bins] = (predicted == labels) - confidence
    out["ece"] = _ratio(np.abs(weights @ gaps).sum(axis=1), total, np.nan)
    return out


def _operating_point(weights: np.ndarray, scores: np.ndarray, positive: np.ndarray, threshold: float) -> Replicates:
    """Sensitivity, specificity, PPV and NPV at a fixed threshold (NaN where undefined)."""
    called = scores >= threshold
    tp, fp = weights @ (called & positive), weights @ (called & ~positive)
    fn, tn = weights @ (~called & positive), weights @ (~called & ~positive)
    return {"op_sensitivity": _ratio(tp, tp + fn, np.nan), "op_specificity": _ratio(tn, tn + fp, np.nan),
            "op_ppv": _ratio(tp, tp + fp, np.nan), "op_npv": _ratio(tn, tn + fn, np.nan)}


def replicates(weights: np.ndarray, figures: ImageFigures) -> Replicates:
    """Every figure of `figures` on every resample (rows of `weights`), named as the test metrics are."""
    out: Replicates = {}
    if figures.probabilities is not None and figures.labels is not None:
        out |= _classification(weights, figures.probabilities, figures.labels)
        if figures.positive is not None and figures.threshold is not None:
            out |= _operating_point(weights, figures.probabilities[:, figures.positive],
                                    np.asarray(figures.labels) == figures.positive, figures.threshold)
    if figures.apd is not None:
        out["apd"] = weighted_mean(weights, figures.apd)
        out["polygon_skill"] = (1 - out["apd"] / figures.baseline_apd if figures.baseline_apd > 0
                                else np.zeros(len(weights)))
    for name in ("squared_error", "polygon_iou", *SURFACE_FIGURES):
        values = getattr(figures, name)
        if values is not None:
            out["mse" if name == "squared_error" else name] = weighted_mean(weights, values)
    if figures.pixels is not None:
        tp, fp, fn = (weights @ figures.pixels.astype(np.float64)).T
        out |= {"iou": _ratio(tp, tp + fp + fn, 1.0), "f1": _ratio(2 * tp, 2 * tp + fp + fn, 1.0),
                "precision": _ratio(tp, tp + fp, 1.0), "recall": _ratio(tp, tp + fn, 1.0)}
    return out


def mean_replicates(runs: list[Replicates]) -> Replicates:
    """The mean over several models (seeds) of replicates drawn with the same resamples, figure by figure."""
    names = [name for name in runs[0] if all(name in run for run in runs)]
    return {name: np.mean([run[name] for run in runs], axis=0) for name in names}


def intervals(found: Mapping[str, np.ndarray], prefix: str) -> dict[str, float]:
    """`<prefix>.<figure>.ci_low` / `.ci_high` of each figure's replicates."""
    columns: dict[str, float] = {}
    for name, values in found.items():
        columns[f"{prefix}.{name}.ci_low"], columns[f"{prefix}.{name}.ci_high"] = interval(values)
    return columns
