"""Misuse refused before anything starts: `raysearch run` with a bad search space or degenerate data ends
with one line and exit code 2, creates no results folder and starts no Ray."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest
import ray
from conftest import TINY_PHANTOM

from raysearch.cli import main
from raysearch.data.audit import audit_dataset, format_audit
from raysearch.data.loading import load_dataset
from raysearch.data.phantom import write_phantom
from raysearch.data.records import issues_table
from raysearch.errors import DataError


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small phantom dataset (YOLO polygons + masks)."""
    return write_phantom(tmp_path_factory.mktemp("refusals") / "phantom", TINY_PHANTOM, progress=False)


def refused(capsys: pytest.CaptureFixture[str], results: Path, *args: str) -> str:
    """Run the CLI in this process; assert exit code 2, one line on stderr, no results folder, no Ray."""
    code = main(["run", *args, "--results", str(results), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("raysearch: error: "), err
    assert not results.exists()
    assert not ray.is_initialized()
    return lines[0].removeprefix("raysearch: error: ")


@pytest.mark.parametrize(("fixed", "message"), [
    ("optimizer: adamz", "fixed.optimizer: unknown 'adamz'; valid: adam, adamw, sgd"),
    ("augment: 3.0", "fixed.augment: must be <= 1.0, got 3.0"),
    ("batch_size: 0", "fixed.batch_size: must be >= 1, got 0"),
    ("model: not_a_model", "fixed.model: 'not_a_model' is neither 'vgg' nor a timm model name"),
])
def test_bad_fixed_value_is_refused_naming_file_and_key(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                        phantom: Path, fixed: str, message: str) -> None:
    space = tmp_path / "space.yaml"
    space.write_text(f"task: multitask\nparameters:\n  lr: {{type: float, low: 1.0e-3, high: 1.0e-2}}\n"
                     f"fixed:\n  {fixed}\n")
    line = refused(capsys, tmp_path / "results", "multitask", "--data", str(phantom), "--space", str(space))
    assert line.startswith(f"{space}: {message}")


def test_choice_that_is_a_mapping_is_refused(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                             phantom: Path) -> None:
    space = tmp_path / "space.yaml"
    space.write_text("task: multitask\nparameters:\n  optimizer: {type: categorical, choices: [adam, {sgd: 0.9}]}\n")
    line = refused(capsys, tmp_path / "results", "multitask", "--data", str(phantom), "--space", str(space))
    assert line == f"{space}: parameters.optimizer.choices: expected a name, got {{'sgd': 0.9}}"


def _class_folders(root: Path, phantom: Path, classes: tuple[str, ...], per_class: int = 6,
                   suffix: str = ".png") -> Path:
    """Class folders (no split folders) made of phantom images, `per_class` per class."""
    images = sorted((phantom / "train" / "images").glob("*.png"))
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for image in images[c * per_class:(c + 1) * per_class]:
            cv2.imwrite(str(root / name / f"{image.stem}{suffix}"), cv2.imread(str(image), cv2.IMREAD_GRAYSCALE))
    return root


def _image_masks(root: Path, phantom: Path, count: int = 12) -> Path:
    """Image + mask folders (no split folders) made of phantom images and their bone masks."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for image in sorted((phantom / "train" / "images").glob("*.png"))[:count]:
        shutil.copy(image, root / "images" / image.name)
        shutil.copy(phantom / "train" / "masks" / image.name, root / "masks" / image.name)
    return root


def test_single_class_folder_is_refused(capsys: pytest.CaptureFixture[str], tmp_path: Path, phantom: Path) -> None:
    data = _class_folders(tmp_path / "one-class", phantom, ("fractured",))
    line = refused(capsys, tmp_path / "results", "classification", "--data", str(data))
    assert line == (f"{data.resolve()}: task classification needs at least two classes in the train split, found 1 "
                    "('fractured')")


def test_classification_on_image_mask_folders_is_refused(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                         phantom: Path) -> None:
    data = _image_masks(tmp_path / "masks", phantom)
    line = refused(capsys, tmp_path / "results", "classification", "--data", str(data))
    assert line == (f"{data.resolve()}: task classification needs image classes (class folders or YOLO labels), "
                    "but the train split of this image-mask data has none")


def test_regression_on_class_folders_is_refused(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                phantom: Path) -> None:
    data = _class_folders(tmp_path / "classes", phantom, ("a", "b"))
    line = refused(capsys, tmp_path / "results", "regression", "--data", str(data))
    assert line.endswith("task regression needs polygons (YOLO labels), but the train split of this class-folders "
                         "data has none")


def test_data_yaml_with_only_train_gets_a_carved_validation_split(tmp_path: Path, phantom: Path) -> None:
    data = tmp_path / "train-only"
    shutil.copytree(phantom / "train", data / "train")
    (data / "data.yaml").write_text("train: train/images\nnames: [finger, wrist, forearm, elbow, humerus, shoulder]\n")
    said = io.StringIO()
    index = load_dataset(str(data), split_ratios="0.75,0.25,0", progress=False, out=said)
    val = index.split("val")
    assert len(val) >= TINY_PHANTOM.train // 4 and len(index.split("train")) + len(val) == TINY_PHANTOM.train
    assert {s.class_id for s in val} == {s.class_id for s in index.samples}, "stratified: every class in val"
    assert f"no validation split: {len(val)} train images carved as val" in said.getvalue()
    again = load_dataset(str(data), split_ratios="0.75,0.25,0", progress=False, out=io.StringIO())
    assert [s.image_path for s in again.split("val")] == [s.image_path for s in val], "seeded"
    with pytest.raises(DataError, match="no validation split, and none can be carved"):
        load_dataset(str(data), split_ratios="1,0,0", progress=False, out=io.StringIO())
    audit = audit_dataset(data, progress=False)
    assert [f.detail for f in audit.rows("split_warnings")] == [
        "no labelled validation images: raysearch run carves a seeded validation split from train"]
    assert "Split warning: no labelled validation images" in format_audit(audit)


def test_data_yaml_without_train_images_is_refused(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                   phantom: Path) -> None:
    data = tmp_path / "val-only"
    shutil.copytree(phantom / "val", data / "val")
    (data / "data.yaml").write_text("val: val/images\nnames: [finger, wrist, forearm, elbow, humerus, shoulder]\n")
    line = refused(capsys, tmp_path / "results", "multitask", "--data", str(data))
    assert line == f"{data.resolve()}: the train split has no usable images (of {TINY_PHANTOM.val} usable in all)"


def test_truncated_jpeg_is_listed_in_the_issues_and_by_the_audit(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                                phantom: Path) -> None:
    data = _class_folders(tmp_path / "jpegs", phantom, ("a", "b"), suffix=".jpg")
    victim = sorted((data / "a").iterdir())[0]
    content = victim.read_bytes()
    victim.write_bytes(content[: int(len(content) * 0.3)])
    assert cv2.imread(str(victim)) is not None, "OpenCV decodes the cut file (only a warning)"
    expected = (str(victim.resolve()), "truncated image: no JPEG end-of-image marker at the end of the file")

    index = load_dataset(str(data), progress=False, out=io.StringIO())
    table = issues_table(index.issues).to_pylist()
    assert [(row["path"], row["message"]) for row in table] == [expected]
    assert victim.resolve() not in {s.image_path for s in index.samples}

    assert main(["data", "audit", str(data), "--out", str(tmp_path / "audit"), "--quiet"]) == 0
    assert f"{expected[0]}: {expected[1]}" in capsys.readouterr().out
    rows = pq.read_table(tmp_path / "audit" / "audit.parquet").to_pandas()
    problems = rows[rows["section"] == "issues"]
    assert problems[["path", "detail"]].values.tolist() == [list(expected)]


def test_truncated_mask_beside_yolo_labels_is_listed(tmp_path: Path, phantom: Path) -> None:
    data = tmp_path / "phantom"
    shutil.copytree(phantom, data)
    mask = sorted((data / "train" / "masks").iterdir())[0]
    mask.write_bytes(mask.read_bytes()[:100])
    index = load_dataset(str(data), progress=False, out=io.StringIO())
    assert [(i.path, i.message) for i in index.issues] == [
        (mask.resolve(), "mask: truncated image: no PNG IEND chunk at the end of the file")]
    assert len(index.split("train")) == TINY_PHANTOM.train - 1


def _label_masks(data: Path) -> Path:
    """Rewrite the first mask with class labels 0..5 instead of 0/1."""
    mask_path = sorted((data / "masks").iterdir())[0]
    mask = cv2.imread(str(mask_path), cv2.IMREAD_UNCHANGED)
    labels = (np.arange(mask.size).reshape(mask.shape) % 6).astype(np.uint8)
    cv2.imwrite(str(mask_path), labels)
    return mask_path


def test_mask_with_label_values_is_refused_unless_binarised(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                            phantom: Path) -> None:
    data = _image_masks(tmp_path / "masks", phantom)
    mask_path = _label_masks(data)
    line = refused(capsys, tmp_path / "results", "segmentation", "--data", str(data))
    assert line == (f"{mask_path.resolve()}: mask values 0, 1, 2, 3, 4, 5 are not 0/1/255 (1 such masks); "
                    "--binarise-masks treats every nonzero value as foreground")
    audit = audit_dataset(data, progress=False)
    assert [(f.key, f.path) for f in audit.rows("issues")] == [("mask_values", str(mask_path.resolve()))]
    assert "mask values 0, 1, 2, 3, 4, 5 are not 0/1/255 (raysearch run needs --binarise-masks)" in format_audit(audit)
    said = io.StringIO()
    index = load_dataset(str(data), binarise_masks=True, progress=False, out=said)
    assert len(index.samples) == 12
    assert "1 masks with values other than 0/1/255 binarised (nonzero = foreground" in said.getvalue()


def test_phantom_into_an_unwritable_folder_is_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert main(["data", "phantom", str(blocker / "phantom"), "--train", "4", "--val", "2", "--test", "2"]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err
    assert lines[0].startswith(f"raysearch: error: {blocker / 'phantom'}: cannot write the phantom dataset (")
    assert blocker.read_text() == "not a folder"


@pytest.mark.parametrize(("space_searcher", "flags", "searcher"), [
    ("", ("--searcher", "qmc"), "qmc"), ("searcher: random\n", (), "random")])
def test_startup_trials_are_refused_for_a_searcher_without_them(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                                 phantom: Path, space_searcher: str,
                                                                 flags: tuple[str, ...], searcher: str) -> None:
    space = tmp_path / "space.yaml"
    space.write_text(f"task: multitask\n{space_searcher}"
                     "parameters:\n  lr: {type: float, low: 1.0e-3, high: 1.0e-2}\n")
    line = refused(capsys, tmp_path / "results", "multitask", "--data", str(phantom), "--space", str(space),
                   "--startup-trials", "3", *flags)
    assert line == f"--startup-trials: only the tpe searcher has start-up trials; this study uses {searcher}"
