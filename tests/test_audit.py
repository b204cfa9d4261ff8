"""`raysearch data audit` on a fixture with known defects, on the published export, and through the CLI."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from raysearch import cli
from raysearch.data.audit import AUDIT_FILE, Audit, audit_dataset

RING = "0 0.2 0.2 0.8 0.2 0.8 0.8 0.2 0.8 0.2 0.2"
SQUARE = "0 0.2 0.2 0.8 0.2 0.8 0.8 0.2 0.8"


def _texture(seed: int, size: tuple[int, int] = (64, 64)) -> np.ndarray:
    """A random smooth image: distinct seeds give perceptually unrelated images."""
    noise = np.random.default_rng(seed).random((size[1] // 8, size[0] // 8))
    return (cv2.resize(noise, size, interpolation=cv2.INTER_CUBIC).clip(0, 1) * 255).astype(np.uint8)


def _write(root: Path, split: str, stem: str, image: np.ndarray, label: str | None) -> None:
    (root / split / "images").mkdir(parents=True, exist_ok=True)
    (root / split / "labels").mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(root / split / "images" / f"{stem}.png"), image)
    if label is not None:
        (root / split / "labels" / f"{stem}.txt").write_text(label)


def _dataset(root: Path, train_labels: bool = True) -> Path:
    root.mkdir(parents=True)
    (root / "data.yaml").write_text(yaml.safe_dump({"train": "train/images", "val": "val/images",
                                                    "test": "test/images", "names": ["elbow", "wrist"]}))
    first = _texture(1)
    _write(root, "train", "a", first, RING if train_labels else "")
    _write(root, "train", "a_copy", first, SQUARE if train_labels else "")
    _write(root, "train", "b", np.dstack([_texture(2, (64, 48))] * 3),
           f"{SQUARE}\n1 0.1 0.1 0.4 0.1 0.4 0.4" if train_labels else "")
    _write(root, "train", "c", _texture(3), "")
    _write(root, "train", "d", _texture(4), None)
    _write(root, "train", "e", _texture(5), f"{SQUARE}\n0 0.1 0.1 1.5 0.1 0.4 0.4")
    _write(root, "train", "f", _texture(6), SQUARE)
    _write(root, "val", "leak", first, SQUARE)
    near = cv2.GaussianBlur(np.clip(_texture(6).astype(int) + 12, 0, 255).astype(np.uint8), (3, 3), 0)
    _write(root, "val", "near", near, SQUARE)
    _write(root, "test", "t", _texture(7), "0 0.1 0.1 0.5 0.1 0.5 0.5")
    return root


@pytest.fixture(scope="module")
def audit(tmp_path_factory: pytest.TempPathFactory) -> Audit:
    return audit_dataset(_dataset(tmp_path_factory.mktemp("audit") / "fixture"), progress=False)


def test_files_per_split(audit: Audit) -> None:
    assert [audit.value("files", k, "train") for k in ("images", "label_files", "labelled", "empty", "missing",
                                                       "malformed", "multi_instance")] == [7, 6, 4, 1, 1, 1, 1]
    assert [audit.value("files", "images", s) for s in ("val", "test")] == [2, 1]


def test_classes_per_split_and_their_warnings(audit: Audit) -> None:
    assert [audit.value("classes", k, "train", "elbow") for k in ("instances", "images", "targets")] == [4, 4, 4]
    assert [audit.value("classes", k, "train", "wrist") for k in ("instances", "images", "targets")] == [1, 1, 0]
    warnings = {(f.split, f.class_name, f.key) for f in audit.rows("class_warnings")}
    assert warnings == {("train", "wrist", "nearly_empty"), ("train", "wrist", "never_target"),
                        ("val", "wrist", "absent"), ("test", "wrist", "absent"),
                        ("train", "elbow", "nearly_empty"), ("val", "elbow", "nearly_empty"),
                        ("test", "elbow", "nearly_empty")}  # fewer than 5 images


def test_problems_name_file_and_line(audit: Audit) -> None:
    found = {(Path(f.path).name, f.line, f.key) for f in audit.rows("issues")}
    assert found == {("e.txt", 2, "malformed_line"), ("d.txt", None, "problem")}


def test_sizes_channels_and_polygons(audit: Audit) -> None:
    assert {f.key: f.value for f in audit.rows("image_sizes") if f.split == "train"} == {"64x64": 6, "64x48": 1}
    assert {f.key: f.value for f in audit.rows("channels") if f.split == "train"} == {"1": 6, "3": 1}
    polygons = {f.key: f.value for f in audit.rows("polygons") if f.split == "train"}
    assert polygons == {"3_points": 1, "4_points": 3, "5_points": 1, "closed_rings": 1}


def test_exact_and_near_duplicates(audit: Audit) -> None:
    assert audit.value("duplicates", "exact_within", "train") == 1
    assert audit.value("duplicates", "exact_across", "train/val") == 1  # val images found in train
    assert audit.value("duplicates", "near_across", "train/val") == 1
    assert audit.value("duplicates", "near_across", "train/test") == 0
    pairs = {(f.key, Path(f.path).stem, Path(f.detail).stem) for f in audit.rows("duplicate_pairs")}
    assert pairs == {("exact", "a", "a_copy"), ("exact", "a", "leak"), ("exact", "a_copy", "leak"),
                     ("near", "f", "near")}
    assert not audit.fatal


def test_cli_prints_and_writes_audit_parquet(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _dataset(tmp_path / "fixture")
    assert cli.main(["data", "audit", str(root), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "Files per split:" in printed and "near-duplicates across splits 1" in printed
    table = pq.read_table(tmp_path / "out" / AUDIT_FILE)
    assert table.column_names == ["section", "split", "class", "key", "value", "detail", "path", "line"]
    assert {"files", "classes", "issues", "duplicates"} <= set(table.column("section").to_pylist())


def test_cli_fails_only_when_training_is_impossible(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _dataset(tmp_path / "unlabelled", train_labels=False)
    for stem in ("e", "f"):
        (root / "train" / "labels" / f"{stem}.txt").write_text("")
    assert cli.main(["data", "audit", str(root), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "the train split has no labelled images" in err
    assert (tmp_path / "out" / AUDIT_FILE).is_file()


@pytest.fixture(scope="module")
def real_audit(real_dataset: Path) -> Audit:
    return audit_dataset(real_dataset, progress=False)


CLASSES = ["elbow positive", "fingers positive", "forearm fracture", "humerus fracture", "humerus",
           "shoulder fracture", "wrist positive"]
# Counted independently from the label files (a throwaway script, not this code): per split, per class.
INSTANCES = {"train": [282, 513, 146, 3, 149, 263, 228], "val": [29, 48, 43, 0, 36, 20, 28],
             "test": [17, 27, 14, 0, 15, 17, 6]}
IMAGES = {"train": [252, 418, 128, 3, 143, 236, 168], "val": [28, 41, 37, 0, 31, 19, 17],
          "test": [13, 22, 13, 0, 14, 15, 6]}


def test_real_export_files(real_audit: Audit) -> None:
    figures = {s: [real_audit.value("files", k, s) for k in ("images", "label_files", "labelled", "empty", "missing",
                                                             "malformed", "multi_instance", "mixed_classes")]
               for s in ("train", "val", "test")}
    assert figures == {"train": [3631, 3631, 1345, 2286, 0, 0, 233, 3], "val": [348, 348, 173, 175, 0, 0, 27, 0],
                       "test": [169, 169, 83, 86, 0, 0, 11, 0]}
    assert not real_audit.rows("issues") and not real_audit.fatal


def test_real_export_classes(real_audit: Audit) -> None:
    for split in ("train", "val", "test"):
        assert [real_audit.value("classes", "instances", split, c) for c in CLASSES] == INSTANCES[split]
        assert [real_audit.value("classes", "images", split, c) for c in CLASSES] == IMAGES[split]
    # "humerus fracture" appears in 3 training images, never as their first polygon, and nowhere else.
    assert real_audit.value("classes", "targets", "train", "humerus fracture") == 0
    warnings = {(f.split, f.class_name, f.key) for f in real_audit.rows("class_warnings")}
    assert warnings == {("train", "humerus fracture", "nearly_empty"), ("train", "humerus fracture", "never_target"),
                        ("val", "humerus fracture", "absent"), ("test", "humerus fracture", "absent")}


def test_real_export_pixels_polygons_and_duplicates(real_audit: Audit) -> None:
    sizes = {s: len([f for f in real_audit.rows("image_sizes") if f.split == s]) for s in ("train", "val", "test")}
    assert sizes == {"train": 359, "val": 157, "test": 92}
    assert {(f.split, f.key, f.value) for f in real_audit.rows("channels")} == {
        ("train", "3", 3631), ("val", "3", 348), ("test", "3", 169)}
    points = {(f.split, f.key): f.value for f in real_audit.rows("polygons")}
    assert points == {("train", "4_points"): 453, ("train", "5_points"): 994, ("train", "6_points"): 122,
                      ("train", "7_points"): 13, ("train", "8_points"): 2, ("train", "closed_rings"): 1056,
                      ("val", "3_points"): 3, ("val", "4_points"): 175, ("val", "5_points"): 22,
                      ("val", "6_points"): 4, ("val", "closed_rings"): 0, ("test", "3_points"): 1,
                      ("test", "4_points"): 84, ("test", "5_points"): 10, ("test", "6_points"): 1,
                      ("test", "closed_rings"): 1}
    assert not real_audit.rows("duplicate_pairs")
    assert sum(f.value for f in real_audit.rows("duplicates")) == 0
