"""The figures of a radiology paper against independent computations: AUROC, kappa and ECE against
scikit-learn and the definition, the bootstrap against the binomial, the paired bootstrap, Youden's threshold,
surface distances of shifted masks."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from image_files import write_dicom
from scipy import stats
from sklearn.metrics import balanced_accuracy_score, cohen_kappa_score, f1_score, roc_auc_score, roc_curve
from torch import nn

from raysearch.data.polygons import canonical_order
from raysearch.errors import ConfigError
from raysearch.models.ensemble import EnsembleNet, mirrored_polygons
from raysearch.study.scoring import mm_per_pixel, point_figures, scoring_for, surface_distances_mm
from raysearch.tasks.bootstrap import ImageFigures, interval, paired, replicates, resample_counts
from raysearch.tasks.metrics import operating_point, probability_metrics, surface_distances, youden_threshold


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """ECE by its definition: |accuracy − confidence| per equal-width bin of the top probability, weighted by
    the bin's share of the images."""
    confidence, correct = probabilities.max(axis=1), probabilities.argmax(axis=1) == labels
    edges = np.linspace(0, 1, bins + 1)
    total = 0.0
    for low, high in zip(edges[:-1], edges[1:], strict=True):
        inside = (confidence >= low) & ((confidence < high) | (high == 1.0))
        if inside.any():
            total += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    return total


def scikit_figures(probabilities: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """AUROC per class and macro, kappa, ECE, accuracy figures, computed without raysearch."""
    classes = probabilities.shape[1]
    predicted = probabilities.argmax(axis=1)
    figures = {f"auroc_{i}": roc_auc_score(labels == i, probabilities[:, i]) for i in range(classes)}
    figures["auroc"] = float(np.mean([figures[f"auroc_{i}"] for i in range(classes)]))
    figures["kappa"] = cohen_kappa_score(labels, predicted)
    figures["ece"] = expected_calibration_error(probabilities, labels)
    figures["accuracy"] = float(np.mean(predicted == labels))
    figures["balanced_accuracy"] = balanced_accuracy_score(labels, predicted)
    figures["macro_f1"] = f1_score(labels, predicted, average="macro")
    return figures


def scored_images(n: int = 120, classes: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities that carry some signal, rounded to 2 decimals so that scores tie, and their labels."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    logits = rng.normal(size=(n, classes)) + 1.5 * np.eye(classes)[labels]
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return np.round(probabilities, 2).astype(np.float32), labels


def test_auroc_kappa_and_ece_equal_scikit_learn_on_tied_scores() -> None:
    probabilities, labels = scored_images()
    expected = scikit_figures(probabilities, labels)
    reported = probability_metrics(torch.from_numpy(probabilities), torch.from_numpy(labels))
    plain = replicates(np.ones((1, len(labels))), ImageFigures(probabilities=probabilities, labels=labels))
    for name in ("auroc", "auroc_0", "auroc_2", "kappa", "ece"):
        assert reported[name] == pytest.approx(expected[name], abs=1e-5), name
    for name, value in expected.items():
        assert plain[name][0] == pytest.approx(value, abs=1e-5), name


def test_a_class_absent_from_the_split_has_no_auroc_and_is_left_out_of_the_macro() -> None:
    probabilities, labels = scored_images()
    labels = np.where(labels == 2, 0, labels)
    reported = probability_metrics(torch.from_numpy(probabilities), torch.from_numpy(labels))
    plain = replicates(np.ones((1, len(labels))), ImageFigures(probabilities=probabilities, labels=labels))
    assert np.isnan(reported["auroc_2"]) and np.isnan(plain["auroc_2"][0]) and np.isnan(reported["sensitivity_2"])
    both = [roc_auc_score(labels == i, probabilities[:, i]) for i in (0, 1)]
    assert reported["auroc"] == pytest.approx(np.mean(both), abs=1e-5) == plain["auroc"][0]


def test_bootstrap_of_90_correct_of_100_matches_the_binomial_interval() -> None:
    labels = np.zeros(100, dtype=np.int64)
    probabilities = np.tile([0.8, 0.2], (100, 1)).astype(np.float32)
    probabilities[:10] = [0.2, 0.8]   # 10 wrong
    counts = resample_counts(labels, resamples=4000, seed=1)
    low, high = interval(replicates(counts, ImageFigures(probabilities=probabilities, labels=labels))["accuracy"])
    # resampling 100 images of which 90 are right is drawing Binomial(100, 0.9) / 100: its 2.5 % and 97.5 %
    # quantiles, within one image (the Monte-Carlo error of a percentile of 4000 replicates is below that)
    expected = stats.binom.ppf([0.025, 0.975], 100, 0.9) / 100
    assert low == pytest.approx(expected[0], abs=0.0101) and high == pytest.approx(expected[1], abs=0.0101)


def test_resamples_are_stratified_and_seeded() -> None:
    strata = np.array([0] * 30 + [1] * 10)
    counts = resample_counts(strata, resamples=50, seed=3)
    assert (counts[:, :30].sum(axis=1) == 30).all() and (counts[:, 30:].sum(axis=1) == 10).all()
    assert np.array_equal(counts, resample_counts(strata, resamples=50, seed=3))
    assert not np.array_equal(counts, resample_counts(strata, resamples=50, seed=4))


def test_paired_bootstrap_of_a_model_against_itself_and_against_one_changed_image() -> None:
    probabilities, labels = scored_images(n=100, classes=2)
    counts = resample_counts(labels, seed=0)
    best = replicates(counts, ImageFigures(probabilities=probabilities, labels=labels))["accuracy"]
    same = paired(best, best, 0.0, higher_is_better=True)
    assert (same.difference, same.ci_low, same.ci_high, same.share_better) == (0.0, 0.0, 0.0, 0.0)
    wrong = int(np.flatnonzero(probabilities.argmax(axis=1) == labels)[0])
    other = probabilities.copy()
    other[wrong] = other[wrong][::-1]
    runner_up = replicates(counts, ImageFigures(probabilities=other, labels=labels))["accuracy"]
    comparison = paired(best, runner_up, -0.01, higher_is_better=True)
    assert comparison.ci_low <= 0 <= comparison.ci_high and comparison.share_better == 0.0


def test_the_threshold_chosen_on_validation_is_youdens() -> None:
    rng = np.random.default_rng(5)
    positive = rng.random(200) < 0.3
    scores = np.clip(rng.normal(0.35 + 0.3 * positive, 0.15), 0, 1).round(2)
    fpr, tpr, thresholds = roc_curve(positive, scores)
    assert youden_threshold(scores, positive) == pytest.approx(thresholds[np.argmax(tpr - fpr)])
    threshold = youden_threshold(scores, positive, target_sensitivity=0.95)
    assert threshold == pytest.approx(thresholds[np.argmax(tpr >= 0.95)])
    point = operating_point(scores, positive, threshold)
    assert point["op_sensitivity"] >= 0.95
    assert point["op_ppv"] == pytest.approx(np.mean(positive[scores >= threshold]))


@pytest.mark.parametrize("k", [1, 3, 6])
def test_hd95_and_assd_of_a_mask_shifted_by_k_pixels(k: int) -> None:
    true = np.zeros((1, 48, 48), dtype=bool)
    true[0, 10:30, 12:28] = True
    shifted = np.roll(true, k, axis=2)
    hd95, assd = surface_distances(shifted, true)
    assert hd95[0] == pytest.approx(k)
    assert 0 < assd[0] <= k
    hd95_mm, _ = surface_distances(shifted, true, spacing=(0.5, 0.5))
    assert hd95_mm[0] == pytest.approx(0.5 * k)


def test_millimetres_come_from_each_dicom_s_pixel_spacing_at_its_place_in_the_cache(tmp_path: Path) -> None:
    dicom = write_dicom(tmp_path / "a.dcm", np.zeros((48, 64), np.uint16), PixelSpacing=[0.2, 0.3])
    png = tmp_path / "b.png"
    cv2.imwrite(str(png), np.zeros((48, 64), np.uint8))
    spacing = mm_per_pixel([str(dicom), str(png)], 32, "letterbox")  # 64 px wide into 32: a cache pixel is 2 px
    assert spacing[0] == pytest.approx([0.4, 0.6]) and np.isnan(spacing[1]).all()
    assert mm_per_pixel([str(png)], 32, "letterbox") is None
    true = np.zeros((2, 32, 32), dtype=bool)
    true[:, 8:20, 8:20] = True
    shifted = np.roll(true, 3, axis=2)  # three cache pixels along the columns
    hd95, assd = surface_distances_mm(shifted, true, spacing)
    assert hd95[0] == pytest.approx(3 * 0.6) and 0 < assd[0] <= 3 * 0.6
    assert np.isnan(hd95[1]) and np.isnan(assd[1])  # no spacing, no millimetres
    assert point_figures(ImageFigures(hd95_mm=hd95, assd_mm=assd))["hd95_mm"] == pytest.approx(1.8)


def test_surface_distances_of_empty_masks() -> None:
    empty, filled = np.zeros((1, 16, 16), dtype=bool), np.ones((1, 16, 16), dtype=bool)
    assert surface_distances(empty, empty) == (0.0, 0.0)
    assert all(np.isnan(value[0]) for value in surface_distances(empty, filled))


class MirrorSymmetricNet(nn.Module):
    """A flip-equivariant network: class logits from image means, a polygon symmetric about x = ½ scaled by
    the image mean, and a mask from a convolution whose kernel is mirror-symmetric."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(1, 3)
        self.conv = nn.Conv2d(1, 1, 3, padding=1, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([[[[1.0, 2.0, 1.0], [0.5, -3.0, 0.5], [1.0, 2.0, 1.0]]]]))

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        level = image.mean(dim=(1, 2, 3))[:, None]
        half = 0.1 + 0.2 * level.sigmoid()
        polygon = torch.cat([0.5 - half, 0.3 + 0 * half, 0.5 + half, 0.3 + 0 * half,
                             0.5 + half, 0.7 + 0 * half, 0.5 - half, 0.7 + 0 * half], dim=1)
        return {"logits": self.head(level), "polygon": polygon, "mask": self.conv(image)}


def test_an_ensemble_of_one_network_is_that_network() -> None:
    net, image = MirrorSymmetricNet().eval(), torch.rand(4, 1, 16, 16)
    alone, ensemble = net(image), EnsembleNet([net])(image)
    assert torch.allclose(ensemble["logits"].softmax(dim=1), alone["logits"].softmax(dim=1), atol=1e-6)
    assert torch.allclose(ensemble["polygon"], alone["polygon"])
    assert torch.equal(ensemble["mask"] > 0, alone["mask"] > 0)


def test_flip_tta_of_a_mirror_symmetric_network_equals_no_tta() -> None:
    net, image = MirrorSymmetricNet().eval(), torch.rand(4, 1, 16, 16)
    plain, flipped = EnsembleNet([net])(image), EnsembleNet([net], tta="flip")(image)
    assert torch.allclose(flipped["logits"], plain["logits"], atol=1e-6)
    assert torch.allclose(flipped["polygon"], plain["polygon"], atol=1e-6)
    assert torch.allclose(flipped["mask"], plain["mask"], atol=1e-4)


def test_mirrored_polygons_are_mapped_back_in_canonical_order() -> None:
    polygon = np.array([[0.1, 0.2], [0.6, 0.1], [0.7, 0.8], [0.2, 0.7]], dtype=np.float32)
    mirror = canonical_order(polygon * [-1, 1] + [1, 0])
    back = mirrored_polygons(torch.from_numpy(mirror.reshape(1, 8)))
    assert np.allclose(back.numpy().reshape(4, 2), canonical_order(polygon))


def test_scoring_options_are_checked_and_default_to_the_second_class() -> None:
    assert scoring_for(["negative", "positive"], seed=0).positive == 1
    assert scoring_for(["fracture", "normal"], seed=0, positive_class="fracture").positive == 0
    assert scoring_for(["a", "b", "c"], seed=0).positive is None
    with pytest.raises(ConfigError, match="--positive-class: 'x' is not a class"):
        scoring_for(["a", "b"], seed=0, positive_class="x")
    with pytest.raises(ConfigError, match="--positive-class: the study has 3 classes"):
        scoring_for(["a", "b", "c"], seed=0, positive_class="a")
    with pytest.raises(ConfigError, match="--target-sensitivity: must be in"):
        scoring_for(["a", "b"], seed=0, target_sensitivity=1.5)
    with pytest.raises(ConfigError, match="--resamples: at least 100"):
        scoring_for(["a", "b"], seed=0, resamples=10)
