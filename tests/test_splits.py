"""Split policies on a phantom dataset with planted cross-split duplicates (exact, near, same Roboflow source),
the test split carved for a dataset without one, and the counts on the published bone-fracture export."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from raysearch.data.cache import dataset_fingerprint
from raysearch.data.formats import load_dataset
from raysearch.data.phantom import PhantomSpec, write_phantom
from raysearch.data.records import SplitRatios
from raysearch.data.samples import DatasetIndex
from raysearch.data.sources import roboflow_source, source_groups
from raysearch.data.splits import SplitOutcome, apply_split_policy
from raysearch.errors import ConfigError
from raysearch.study.spec import StudySpec

PLANTED = {"val": {"exact_copy.png"}, "test": {"exact_copy2.png", "near_copy.png", "xray7_jpg.rf.bbbb.png"}}


def _move(root: Path, split: str, stem: str, to_split: str, to_stem: str, *, copy: bool = False,
          change: bool = False) -> None:
    """Copy or move one phantom image (and its label) to another split and name; `change` makes it a near copy."""
    source = root / split / "images" / f"{stem}.png"
    target = root / to_split / "images" / f"{to_stem}.png"
    image = cv2.imread(str(source), cv2.IMREAD_GRAYSCALE)
    if change:
        image = cv2.GaussianBlur(np.clip(image.astype(int) + 10, 0, 255).astype(np.uint8), (3, 3), 0)
    cv2.imwrite(str(target), image)
    (copy and shutil.copyfile or shutil.move)(root / split / "labels" / f"{stem}.txt",
                                              root / to_split / "labels" / f"{to_stem}.txt")
    if not copy:
        source.unlink()


def planted_dataset(root: Path) -> Path:
    """A phantom dataset plus a val image identical to a train image, a test image identical to another, a
    test image that is a blurred, brightened copy of a third, and a train/test pair of different pixels that
    share a Roboflow source name (`xray7_jpg.rf.*`)."""
    write_phantom(root, PhantomSpec(train=48, val=16, test=16, image_size=64), progress=False)
    _move(root, "train", "phantom_000000", "val", "exact_copy", copy=True)
    _move(root, "train", "phantom_000001", "test", "exact_copy2", copy=True)
    _move(root, "train", "phantom_000002", "test", "near_copy", copy=True, change=True)
    _move(root, "train", "phantom_000003", "train", "xray7_jpg.rf.aaaa")
    _move(root, "test", "phantom_000005", "test", "xray7_jpg.rf.bbbb")
    return root


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> DatasetIndex:
    return load_dataset(planted_dataset(tmp_path_factory.mktemp("splits") / "planted"))


def _policy(index: DatasetIndex, policy: str, **options: object) -> SplitOutcome:
    return apply_split_policy(index, policy, ratios=SplitRatios(), seed=0, progress=False, **options)


def _names(index: DatasetIndex, split: str) -> set[str]:
    return {s.image_path.name for s in index.split(split)}


def test_roboflow_source_is_the_stem_before_rf() -> None:
    assert roboflow_source("a/b/distal-humerus-fracture-1_jpg.rf.831cb1.jpg") == "distal-humerus-fracture-1_jpg"
    assert roboflow_source("phantom_000001.png") is None


def test_published_keeps_the_splits_and_flags_exactly_the_planted_images(planted: DatasetIndex) -> None:
    outcome = _policy(planted, "published")
    assert [s.split for s in outcome.index.samples] == [s.split for s in planted.samples]
    assert outcome.leaked == {"val": 1, "test": 3}
    table = outcome.table().to_pydict()
    flagged = {_where(image) for image, flag in zip(table["image"], table["source_in_train"], strict=True) if flag}
    assert flagged == {f"{split}/{name}" for split, names in PLANTED.items() for name in names}


def test_deduplicated_drops_exactly_the_planted_images(planted: DatasetIndex) -> None:
    outcome = _policy(planted, "deduplicated")
    for split in ("val", "test"):
        assert _names(outcome.index, split) == _names(planted, split) - PLANTED[split]
    assert _names(outcome.index, "train") == _names(planted, "train")
    assert outcome.removed == {"val": 1, "test": 3}
    assert "removed from val: 1, test: 3" in outcome.describe()


def test_grouped_never_lets_a_group_cross_a_split(planted: DatasetIndex) -> None:
    outcome = _policy(planted, "grouped")
    table = outcome.table().to_pydict()
    splits_of: dict[int, set[str]] = defaultdict(set)
    for group, split in zip(table["group"], table["split"], strict=True):
        splits_of[group].add(split)
    assert all(len(splits) == 1 for splits in splits_of.values())
    split_of = {_where(i): s for i, s in zip(table["image"], table["split"], strict=True)}
    pairs = [("train/phantom_000000.png", "val/exact_copy.png"), ("train/phantom_000001.png", "test/exact_copy2.png"),
             ("train/phantom_000002.png", "test/near_copy.png"),
             ("train/xray7_jpg.rf.aaaa.png", "test/xray7_jpg.rf.bbbb.png")]
    assert all(split_of[a] == split_of[b] for a, b in pairs)
    assert sum(len(members) > 1 for members in _members(table).values()) == len(pairs)
    assert len(outcome.index.samples) == len(planted.samples)
    assert not any(outcome.table().to_pydict()["source_in_train"][i] for i, s in enumerate(table["split"])
                   if s != "train")
    counts = outcome.counts()
    assert 5 <= counts["val"] <= 12 and 5 <= counts["test"] <= 12  # 0.1 each of 76 groups, rounded per class


def _where(image: str) -> str:
    """`split/name` of an image path (phantom names repeat across splits)."""
    return f"{Path(image).parent.parent.name}/{Path(image).name}"


def _members(table: dict[str, list]) -> dict[int, list[str]]:
    members: dict[int, list[str]] = defaultdict(list)
    for image, group in zip(table["image"], table["group"], strict=True):
        members[group].append(image)
    return members


def test_grouped_is_seeded_and_stratified_by_class(planted: DatasetIndex) -> None:
    first, again = _policy(planted, "grouped"), _policy(planted, "grouped")
    assert [s.split for s in first.index.samples] == [s.split for s in again.index.samples]
    other = apply_split_policy(planted, "grouped", ratios=SplitRatios(), seed=1, progress=False)
    assert [s.split for s in other.index.samples] != [s.split for s in first.index.samples]
    for class_id in {s.class_id for s in planted.samples}:
        in_class = [s for s in first.index.samples if s.class_id == class_id]
        if len(in_class) >= 6:
            assert {"train", "val", "test"} <= {s.split for s in in_class}


def test_the_fingerprint_knows_the_policy(planted: DatasetIndex) -> None:
    published = dataset_fingerprint(_policy(planted, "published").index)
    assert published == dataset_fingerprint(planted)
    assert len({published, *(dataset_fingerprint(_policy(planted, p).index) for p in ("deduplicated", "grouped"))}) == 3


def test_a_dataset_without_test_images_gets_a_carved_group_aware_test_split(planted: DatasetIndex,
                                                                             tmp_path: Path) -> None:
    root = tmp_path / "no-test"
    shutil.copytree(planted.root, root)
    config = yaml.safe_load((root / "data.yaml").read_text())
    del config["test"]
    (root / "data.yaml").write_text(yaml.safe_dump(config))
    index = load_dataset(root)
    outcome = _policy(index, "published")
    counts = outcome.counts()
    assert counts["test"] == outcome.carved_test >= 4 and counts["val"] == len(index.split("val"))
    assert counts["train"] + counts["test"] == len(index.split("train"))
    table = outcome.table().to_pydict()
    splits_of: dict[int, set[str]] = defaultdict(set)
    for group, split in zip(table["group"], table["split"], strict=True):
        splits_of[group].add(split)
    assert not any({"train", "test"} <= splits for splits in splits_of.values())
    assert "carved" in outcome.describe() and outcome.record()["carved_test"] == counts["test"]
    kept = _policy(index, "published", test_split=False)
    assert kept.counts()["test"] == 0 and "--no-test-split" in kept.describe()


def test_an_unknown_policy_is_a_one_line_error() -> None:
    with pytest.raises(ConfigError, match="--splits: must be one of published, deduplicated, grouped"):
        StudySpec(task="classification", splits_policy="random")


REAL_COUNTS = {  # labelled images (images with empty label files are skipped by default)
    "published": {"train": 1345, "val": 173, "test": 83},
    "deduplicated": {"train": 1345, "val": 160, "test": 76},
    "grouped": {"train": 1282, "val": 167, "test": 152},
}


@pytest.mark.slow
def test_counts_per_split_on_the_published_export(real_dataset: Path) -> None:
    """The README's table: images per split under each policy on bone-fracture-yolo (seed 0, 0.8/0.1/0.1)."""
    index = load_dataset(real_dataset)
    groups = source_groups([s.image_path for s in index.samples], progress=False)
    found = {policy: _policy(index, policy, groups=groups) for policy in REAL_COUNTS}
    assert {policy: outcome.counts() for policy, outcome in found.items()} == REAL_COUNTS
    assert found["published"].leaked == {"val": 13, "test": 7}


TINY_CLASSIFICATION = """task: classification
metric: val_score
mode: max
parameters:
  lr: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}
fixed:
  model: vgg
  conv_layers: 2
  width: 8
  batch_size: 16
"""


@pytest.mark.slow
def test_run_reports_the_test_metrics_on_the_whole_split_and_on_its_clean_subset(planted: DatasetIndex,
                                                                                  tmp_path: Path) -> None:
    """`raysearch run` under `published`: test.* on all 18 test images, test_clean.* on the 15 without a source
    in train, each equal to the accuracy of the saved predictions on exactly those images."""
    space = tmp_path / "space.yaml"
    space.write_text(TINY_CLASSIFICATION)
    environment = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"RAY_USAGE_STATS_ENABLED": "0"}
    done = subprocess.run([sys.executable, "-m", "raysearch", "run", "classification", "--data", str(planted.root),
                           "--space", str(space), "--trials", "1", "--max-epochs", "1", "--image-size", "32",
                           "--results", str(tmp_path / "results"), "--name", "leaky", "--quiet"],
                          capture_output=True, text=True, timeout=600, env=environment)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "1 of 17 val, 3 of 18 test images have a source or near-duplicate in train" in done.stdout
    study = tmp_path / "results" / "leaky"
    recorded = yaml.safe_load((study / "study.yaml").read_text())["data"]["splits"]
    assert recorded["policy"] == "published" and recorded["in_train_source"] == {"val": 1, "test": 3}
    best = pq.read_table(study / "trials.parquet").to_pandas().iloc[0]
    assert (best["test.images"], best["test_clean.images"]) == (18, 15)
    predictions = pq.read_table(study / "predictions.parquet").to_pandas()
    correct = predictions["pred_class"] == predictions["true_class"]
    clean = ~predictions["image"].map(_where).isin({f"test/{name}" for name in PLANTED["test"]})
    assert best["test.accuracy"] == pytest.approx(correct.mean())
    assert best["test_clean.accuracy"] == pytest.approx(correct[clean].mean())
    assert "clean accuracy" in done.stdout


def test_the_default_policy_is_published_only_for_a_dataset_that_ships_splits(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for layout in ("flat/{c}", "split/train/{c}", "split/val/{c}", "split/test/{c}"):
        for c in ("wrist", "elbow"):
            folder = tmp_path / layout.format(c=c)
            folder.mkdir(parents=True)
            for i in range(5):
                cv2.imwrite(str(folder / f"{i}.png"), cv2.resize(rng.random((8, 8)), (64, 64)) * 255)
    assert _policy(load_dataset(tmp_path / "split"), None).policy == "published"
    assert _policy(load_dataset(tmp_path / "flat"), None).policy == "grouped"  # split per image by the reader
