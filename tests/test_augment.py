"""Augmentation keeps labels true (image, mask and polygon move together, per sample, on a whole batch, on the CPU and
on a GPU where there is one); class balance for training batches."""

from __future__ import annotations

from typing import Any

import cv2
import kornia.augmentation as K
import numpy as np
import pytest
import torch

from raysearch.data.augment import Augmentation, augmentation_for, canonical_order_batch
from raysearch.data.cache import CachedDataset, dataset_fingerprint, ensure_cache, load_cache
from raysearch.data.formats import load_dataset
from raysearch.data.phantom import PhantomSpec, write_phantom
from raysearch.data.polygons import canonical_order, signed_area
from raysearch.errors import ConfigError
from raysearch.tasks import create_task
from raysearch.training.batches import class_weights, make_batch, train_batches
from raysearch.training.hparams import defaults, preprocessing_of
from raysearch.training.session import LocalSession
from raysearch.training.trainer import LoopSettings, train

SIZE, SUPERSAMPLE = 96, 8
QUAD = canonical_order(np.array([[0.3, 0.2], [0.75, 0.3], [0.7, 0.8], [0.2, 0.65]], dtype=np.float32))
DEVICES = [pytest.param("cpu"), pytest.param("cuda", marks=pytest.mark.gpu)]


def rasterise(polygon: np.ndarray) -> np.ndarray:
    """Pixels (SIZE × SIZE, 0/1) whose area lies mostly inside a normalised polygon (supersampled fill)."""
    big = np.zeros((SIZE * SUPERSAMPLE, SIZE * SUPERSAMPLE), np.uint8)
    points = np.round(polygon.reshape(-1, 2) * SIZE * SUPERSAMPLE * 16).astype(np.int32)
    cv2.fillPoly(big, [points], 255, shift=4)
    return (cv2.resize(big, (SIZE, SIZE), interpolation=cv2.INTER_AREA) > 127).astype(np.uint8)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def augment(augmentation: Augmentation, images: np.ndarray, masks: np.ndarray, polygons: np.ndarray,
            device: str = "cpu") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run an augmentation on numpy arrays moved to `device`; uint8 images, masks and polygons back as numpy."""
    out = augmentation(*(torch.as_tensor(a, device=device) for a in (images, masks, polygons)))
    return ((out[0] * 255).round().to(torch.uint8).cpu().numpy(), out[1].cpu().numpy(), out[2].cpu().numpy())


def only(step: K.GeometricAugmentationBase2D) -> Augmentation:
    """An augmentation made of one geometric kornia step and no photometric one."""
    augmentation = Augmentation(1.0)
    augmentation.geometric, augmentation.photometric = [step], torch.nn.Sequential()
    return augmentation


@pytest.mark.parametrize("seed", range(12))
def test_augmented_polygon_encloses_the_same_pixels_as_the_drawn_shape(seed: int) -> None:
    mask = rasterise(QUAD)
    image = mask * np.uint8(200) + np.uint8(20)
    torch.manual_seed(seed)
    images, masks, polygons = augment(Augmentation(1.0), image[None], mask[None], QUAD.ravel()[None])
    moved = images[0]
    bright = cv2.threshold(moved, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)[1]
    drawn = rasterise(polygons[0])
    assert iou(drawn, bright) > 0.9
    assert iou(drawn, masks[0]) > 0.9
    np.testing.assert_array_equal(polygons[0].reshape(4, 2), canonical_order(polygons[0].reshape(4, 2)))


@pytest.mark.parametrize("device", DEVICES)
def test_on_a_batch_every_sample_draws_its_own_parameters_and_masks_and_polygons_follow(device: str) -> None:
    """One batch of 16 copies of the same sample: each comes out moved differently, its mask and polygon with it;
    a sample without a polygon keeps NaN and still moves its mask."""
    count = 16
    mask = rasterise(QUAD)
    images = np.repeat((mask * np.uint8(200) + np.uint8(20))[None], count, axis=0)
    polygons = np.repeat(QUAD.ravel()[None], count, axis=0)
    polygons[-1] = np.nan
    torch.manual_seed(3)
    moved, masks, out = augment(Augmentation(1.0), images, np.repeat(mask[None], count, axis=0), polygons, device)
    assert len({moved[k].tobytes() for k in range(count)}) == count  # per-sample parameters, not one per batch
    assert len({np.round(out[k], 4).tobytes() for k in range(count - 1)}) == count - 1
    for k in range(count - 1):
        bright = cv2.threshold(moved[k], 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)[1]
        drawn = rasterise(out[k])
        assert iou(drawn, bright) > 0.9 and iou(drawn, masks[k]) > 0.9, k
        np.testing.assert_array_equal(out[k].reshape(4, 2), canonical_order(out[k].reshape(4, 2)))
    bright = cv2.threshold(moved[-1], 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)[1]
    assert np.isnan(out[-1]).all() and iou(masks[-1], bright) > 0.9


@pytest.mark.parametrize("seed", range(5))
def test_batched_canonical_order_equals_the_numpy_one(seed: int) -> None:
    rng = np.random.default_rng(seed)
    points = rng.random((64, 4, 2)).astype(np.float32)
    points[:8] = points[:8, ::-1]  # some turning the other way
    points[8:12] = np.roll(QUAD, seed % 4, axis=0)  # a tie-free known polygon, started anywhere
    expected = np.stack([canonical_order(p) for p in points])
    np.testing.assert_array_equal(canonical_order_batch(torch.from_numpy(points)).numpy(), expected)


def test_a_flip_mirrors_the_polygon_exactly_and_restores_its_order() -> None:
    mask = rasterise(QUAD)
    images, masks, polygons = augment(only(K.RandomHorizontalFlip(p=1.0)), mask[None] * np.uint8(255), mask[None],
                                      QUAD.ravel()[None])
    mirrored = QUAD * [-1, 1] + [1, 0]
    assert signed_area(mirrored) < 0  # a mirror image turns the other way...
    out = polygons[0].reshape(4, 2)
    np.testing.assert_allclose(out, canonical_order(mirrored), atol=1e-6)  # ...so the order is made canonical again
    assert signed_area(out) > 0
    np.testing.assert_array_equal(masks[0], mask[:, ::-1])
    np.testing.assert_array_equal(images[0], mask[:, ::-1] * 255)


def test_samples_without_a_polygon_still_move_their_mask() -> None:
    mask = rasterise(QUAD)
    _, masks, polygons = augment(only(K.RandomVerticalFlip(p=1.0)), mask[None], mask[None],
                                 np.full((1, 8), np.nan, np.float32))
    assert np.isnan(polygons).all()
    np.testing.assert_array_equal(masks[0], mask[::-1])


def test_strength_scales_everything_and_zero_turns_it_off() -> None:
    assert augmentation_for(0.0) is None
    with pytest.raises(ConfigError, match="augment: must be between 0 and 1"):
        Augmentation(1.5)
    image = np.tile(np.arange(SIZE, dtype=np.uint8) * 2, (SIZE, 1))
    mask = rasterise(QUAD)
    changed = []
    for strength in (0.05, 1.0):
        torch.manual_seed(0)
        runs = [augment(Augmentation(strength), image[None], mask[None], QUAD.ravel()[None]) for _ in range(20)]
        changed.append(np.mean([np.abs(r[2][0] - QUAD.ravel()).max() for r in runs]))
    assert changed[0] < changed[1] / 5


@pytest.fixture(scope="module")
def cached(tmp_path_factory: pytest.TempPathFactory) -> tuple[CachedDataset, dict[str, Any]]:
    root = write_phantom(tmp_path_factory.mktemp("phantom") / "data", PhantomSpec(12, 4, 4, image_size=32),
                         progress=False)
    index = load_dataset(root)
    hp = {**defaults({}), "image_size": 32}
    directory, _ = ensure_cache(index, dataset_fingerprint(index), preprocessing_of(hp),
                                tmp_path_factory.mktemp("cache"), progress=False)
    return load_cache(directory), hp


def test_make_batch_augments_only_when_given_an_augmentation(cached: tuple[CachedDataset, dict[str, Any]]) -> None:
    data, hp = cached
    rows = data.indices("train")[:6]
    plain = make_batch(data, rows, hp, torch.device("cpu"))
    again = make_batch(data, rows, hp, torch.device("cpu"))
    torch.manual_seed(1)
    augmented = make_batch(data, rows, hp, torch.device("cpu"), Augmentation(1.0))
    assert torch.equal(plain["image"], again["image"])
    assert plain["image"].shape == augmented["image"].shape and not torch.equal(plain["image"], augmented["image"])
    assert torch.equal(plain["label"], augmented["label"])
    assert set(augmented["mask"].unique().tolist()) <= {0.0, 1.0}


def test_class_weights_are_inverse_frequencies_of_present_classes() -> None:
    weights = class_weights(np.array([0, 0, 0, 1, -1]), num_classes=3)
    np.testing.assert_allclose(weights.numpy(), [4 / (2 * 3), 4 / (2 * 1), 0.0])


def test_the_balanced_sampler_draws_rare_classes_as_often_as_common_ones() -> None:
    labels = np.array([0] * 90 + [1] * 10)
    rows = np.arange(100)
    hp = {"batch_size": 10, "class_balance": "sampler"}
    drawn = np.concatenate([np.concatenate(list(train_batches(rows, hp, epoch, 0, 0, 1, labels)))
                            for epoch in range(10)])
    assert len(drawn) == 1000
    assert 0.4 < np.mean(labels[drawn] == 1) < 0.6
    plain = np.concatenate(list(train_batches(rows, {**hp, "class_balance": "none"}, 0, 0, 0, 1, labels)))
    assert sorted(plain) == list(rows)
    with pytest.raises(ConfigError, match="class_balance: must be one of none, weighted_loss, sampler"):
        next(train_batches(rows, {**hp, "class_balance": "oversample"}, 0, 0, 0, 1, labels))


def test_balanced_epochs_give_every_worker_the_same_batches_count() -> None:
    labels = np.array([0] * 30 + [1] * 6)
    hp = {"batch_size": 6, "class_balance": "sampler"}
    shards = [list(train_batches(np.arange(36), hp, 0, 0, rank, 2, labels)) for rank in range(2)]
    assert len(shards[0]) == len(shards[1])
    assert all(len(batch) == 3 for shard in shards for batch in shard)


@pytest.mark.parametrize("balance", ["sampler", "weighted_loss"])
def test_a_trial_trains_with_augmentation_and_class_balance(cached: tuple[CachedDataset, dict[str, Any]],
                                                            balance: str) -> None:
    data, hp = cached
    session = LocalSession()
    hp = {**defaults(create_task("multitask").hyperparameters), **hp, "augment": 0.5, "class_balance": balance,
          "batch_size": 4, "conv_layers": 2, "width": 8}
    train(hp, LoopSettings("multitask", str(data.directory), max_epochs=1, seed=0), session)
    assert session.history[0]["epoch"] == 1 and np.isfinite(session.history[0]["train_loss"])
