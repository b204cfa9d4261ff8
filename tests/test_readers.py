"""The three dataset readers on generated fixtures (malformed cases included), format detection, the real export."""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import TinyStudy

from raysearch import cli
from raysearch.core.layout import DATA_ISSUES_FILE
from raysearch.data.cache import build_cache, load_cache
from raysearch.data.formats import detect_format
from raysearch.data.formats import load_dataset as read_dataset
from raysearch.data.loading import load_dataset
from raysearch.data.polygons import signed_area
from raysearch.data.preprocess import Preprocessing
from raysearch.data.records import BACKGROUND_CLASS, Scan, SplitRatios, index_from
from raysearch.data.yolo import scan_yolo
from raysearch.errors import ConfigError, DataError

RING = "0 0.2 0.2 0.8 0.2 0.8 0.8 0.2 0.8 0.2 0.2"  # closed ring: 5 points, the first repeated


def _image(path: Path, size: tuple[int, int] = (32, 32), channels: int = 1, value: int = 128) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (size[1], size[0]) if channels == 1 else (size[1], size[0], channels)
    cv2.imwrite(str(path), np.full(shape, value, np.uint8))
    return path


def _yolo(root: Path, labels: dict[str, dict[str, str | None]], val_folder: str = "valid") -> Path:
    """A Roboflow-style export: author's absolute `path:`, `../split/images` entries, `valid` for val."""
    config = {"path": "/home/author/datasets/fractures", "train": "../train/images", "val": f"../{val_folder}/images",
              "test": "../test/images", "nc": 2, "names": ["elbow positive", "wrist positive"]}
    root.mkdir(parents=True)
    (root / "data.yaml").write_text(yaml.safe_dump(config))
    for split, files in labels.items():
        folder = root / (val_folder if split == "val" else split)
        for stem, text in files.items():
            _image(folder / "images" / f"{stem}.jpg")
            if text is not None:
                (folder / "labels").mkdir(parents=True, exist_ok=True)
                (folder / "labels" / f"{stem}.txt").write_text(text)
    return root


@pytest.fixture
def good_yolo(tmp_path: Path) -> Path:
    return _yolo(tmp_path / "yolo", {
        "train": {"a": RING + "\n", "b": "1 0.1 0.1 0.5 0.1 0.3 0.6\n0 0.5 0.5 0.9 0.5 0.9 0.9 0.5 0.9\n", "c": ""},
        "val": {"d": "1 0.3 0.3 0.6 0.3 0.6 0.6 0.3 0.6"},
        "test": {"e": "0 0.1 0.1 0.4 0.1 0.4 0.4 0.1 0.4 0.05 0.25"},
    })


def test_yolo_reads_a_roboflow_export_whose_path_points_elsewhere(good_yolo: Path) -> None:
    index = read_dataset(good_yolo)
    assert index.format == "yolo" and index.root == good_yolo
    assert index.classes == ["elbow positive", "wrist positive"]
    assert [(s.split, s.image_path.stem, s.class_id) for s in index.samples] == [
        ("train", "a", 0), ("train", "b", 1), ("val", "d", 1), ("test", "e", 0)]
    ring = index.samples[0]
    np.testing.assert_allclose(ring.polygon, [[0.2, 0.2], [0.8, 0.2], [0.8, 0.8], [0.2, 0.8]])
    assert len(index.samples[1].shapes) == 2  # every polygon is kept for masks and audits
    assert all(s.polygon.shape == (4, 2) and signed_area(s.polygon) > 0 for s in index.samples)
    assert index.skipped_empty == 1 and not index.issues


def test_empty_label_files_become_a_background_class_on_request(good_yolo: Path) -> None:
    index = read_dataset(good_yolo, empty_labels="background")
    assert index.classes[-1] == BACKGROUND_CLASS and index.skipped_empty == 0
    empty = next(s for s in index.samples if s.image_path.stem == "c")
    assert empty.class_id == 2 and empty.polygon is None


def test_load_dataset_says_what_it_skipped(good_yolo: Path) -> None:
    out = io.StringIO()
    load_dataset(str(good_yolo), out=out)
    assert "train 2, val 1, test 1 images" in out.getvalue()
    assert "1 images with empty label files skipped" in out.getvalue()
    out = io.StringIO()
    load_dataset(str(good_yolo), empty_labels="background", out=out)
    assert f"1 images with empty label files used as class {BACKGROUND_CLASS!r}" in out.getvalue()


@pytest.fixture
def bad_yolo(tmp_path: Path) -> Path:
    root = _yolo(tmp_path / "bad", {
        "train": {"ok": RING, "words": "0 0.1 0.1 x 0.2 0.3 0.3", "outside": f"{RING}\n1 0.1 0.1 1.2 0.1 0.5 0.5",
                  "class": "7 0.1 0.1 0.5 0.1 0.5 0.5", "odd": "0 0.1 0.1 0.5 0.1 0.5", "nolabel": None,
                  "line": "1 0.1 0.1 0.5 0.5 0.9 0.9"},
        "val": {"v": RING}, "test": {"t": RING},
    })
    (root / "train" / "images" / "corrupt.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (root / "train" / "labels" / "corrupt.txt").write_text(RING)
    return root


def test_malformed_files_are_skipped_and_listed_with_file_and_line(bad_yolo: Path) -> None:
    index = read_dataset(bad_yolo)
    assert [s.image_path.stem for s in index.split("train")] == ["ok"]
    found = {(i.path.name, i.line): i.message for i in index.issues}
    assert "not numbers" in found[("words.txt", 1)]
    assert "coordinate outside [0, 1]" in found[("outside.txt", 2)]
    assert "class 7 outside 0..1" in found[("class.txt", 1)]
    assert "even count of at least 6" in found[("odd.txt", 1)]
    assert "collinear" in found[("line.txt", 1)]
    assert "label file missing" in found[("nolabel.txt", None)]
    assert "corrupt" in found[("corrupt.jpg", None)]


def test_load_dataset_reports_the_problems_it_skipped(bad_yolo: Path) -> None:
    out = io.StringIO()
    load_dataset(str(bad_yolo), out=out)
    assert "7 problems in 7 files; their images skipped" in out.getvalue()


def test_malformed_files_stop_the_run_with_one_line_on_request(bad_yolo: Path) -> None:
    with pytest.raises(DataError) as error:
        read_dataset(bad_yolo, on_error="error")
    message = str(error.value)
    assert "\n" not in message and "class.txt:1: class 7 outside 0..1" in message


def test_cli_run_stops_on_bad_data_with_one_line_before_starting_ray(bad_yolo: Path, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["run", "multitask", "--data", str(bad_yolo), "--on-error", "error", "--results",
                     str(tmp_path / "results"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("raysearch: error: ") and ".txt:1:" in err


def test_absolute_split_entries_from_the_authors_machine_resolve_beside_the_yaml(good_yolo: Path) -> None:
    config = yaml.safe_load((good_yolo / "data.yaml").read_text())
    config.update(train="/kaggle/input/fractures/train/images", val="/kaggle/input/fractures/valid/images")
    (good_yolo / "data.yaml").write_text(yaml.safe_dump(config))
    assert [len(read_dataset(good_yolo).split(s)) for s in ("train", "val", "test")] == [2, 1, 1]


def test_yaml_problems_are_one_line_errors(tmp_path: Path) -> None:
    root = _yolo(tmp_path / "y", {"train": {"a": RING}})
    (root / "data.yaml").write_text("train: ../train/images\nnames: []\n")
    with pytest.raises(DataError, match="field 'names'"):
        read_dataset(root)
    (root / "data.yaml").write_text("train: ../nowhere/images\nnames: [a]\n")
    with pytest.raises(DataError, match="train folder '../nowhere/images' not found"):
        read_dataset(root)


def _class_folders(root: Path, layout: dict[str, int], splits: tuple[str, ...] = ()) -> Path:
    for split in splits or ("",):
        for name, count in layout.items():
            for i in range(count):
                _image(root / split / name / f"{name[:3]}{i:02d}.png", channels=3 if i % 2 else 1)
    return root


def test_class_folders_with_split_folders_and_spaces_in_names(tmp_path: Path) -> None:
    root = _class_folders(tmp_path / "cf", {"elbow positive": 3, "no fracture": 2}, ("train", "valid", "test"))
    (root / "train" / "no fracture" / "broken.png").write_bytes(b"garbage")
    _image(root / "train" / "stray.png")
    index = read_dataset(root)
    assert index.format == "class-folders" and index.classes == ["elbow positive", "no fracture"]
    assert [len(index.split(s)) for s in ("train", "val", "test")] == [5, 5, 5]
    assert {s.class_id for s in index.split("val")} == {0, 1}
    assert sorted(i.path.name for i in index.issues) == ["broken.png", "stray.png"]


def test_class_folders_without_splits_are_split_stratified_and_seeded(tmp_path: Path) -> None:
    root = _class_folders(tmp_path / "flat", {"elbow positive": 20, "wrist positive": 10})
    ratios = SplitRatios(0.6, 0.2, 0.2)
    index = read_dataset(root, split_ratios=ratios)
    for class_id, (train, val, test) in enumerate([(12, 4, 4), (6, 2, 2)]):
        counts = [sum(s.class_id == class_id for s in index.split(split)) for split in ("train", "val", "test")]
        assert counts == [train, val, test]
    again = read_dataset(root, split_ratios=ratios)
    other = read_dataset(root, split_ratios=SplitRatios(0.6, 0.2, 0.2, seed=1))
    assignment = [(s.image_path.name, s.split) for s in index.samples]
    assert assignment == [(s.image_path.name, s.split) for s in again.samples]
    assert assignment != [(s.image_path.name, s.split) for s in other.samples]


def test_split_ratios_are_validated() -> None:
    with pytest.raises(ConfigError, match="--split-ratios"):
        SplitRatios.parse("0.8,0.3,0.1")
    with pytest.raises(ConfigError, match="--split-ratios"):
        SplitRatios.parse("80/10/10")


def _mask(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), array)


def test_image_mask_folders_accept_any_mask_encoding_and_image_shape(tmp_path: Path) -> None:
    root = tmp_path / "seg"
    half = np.zeros((30, 40), np.uint8)
    half[:, :20] = 1
    cases = {  # stem: (image channels, mask as written)
        "grey01": (1, half),
        "grey255": (3, half * 255),
        "rgb": (4, np.dstack([half * 255] * 3)),
        "rgba": (3, np.dstack([np.zeros_like(half)] * 3 + [half * 255])),  # only the alpha channel marks it
    }
    for stem, (channels, mask) in cases.items():
        _image(root / "images" / f"{stem}.png", size=(40, 30), channels=channels)
        _mask(root / "masks" / f"{stem}.png", mask)
    _image(root / "images" / "wrongsize.png", size=(40, 30))
    _mask(root / "masks" / "wrongsize.png", np.zeros((32, 32), np.uint8))
    _image(root / "images" / "nomask.jpg", size=(40, 30))
    index = read_dataset(root, split_ratios=SplitRatios(1.0, 0.0, 0.0))
    assert index.format == "image-mask" and detect_format(root) == "image-mask"
    assert sorted(s.image_path.stem for s in index.samples) == sorted(cases)
    assert all(s.class_id is None and s.mask_path is not None for s in index.samples)
    problems = {i.path.name: i.message for i in index.issues}
    assert problems["wrongsize.png"] == "mask is 32x32, its image wrongsize.png is 40x30"
    assert "no mask named nomask.*" in problems["nomask.jpg"]
    with pytest.raises(DataError, match="nomask.jpg: no mask named nomask"):
        read_dataset(root, on_error="error", split_ratios=SplitRatios(1.0, 0.0, 0.0))
    build_cache(index, Preprocessing(image_size=32, resize="stretch"), tmp_path / "cache", progress=False)
    masks = np.asarray(load_cache(tmp_path / "cache").masks)
    assert set(np.unique(masks)) == {0, 1}
    np.testing.assert_allclose(masks.mean(axis=(1, 2)), 0.5, atol=0.05)


def test_image_mask_folders_per_split(tmp_path: Path) -> None:
    for split in ("train", "val", "test"):
        _image(tmp_path / "s" / split / "images" / f"{split}.png")
        _mask(tmp_path / "s" / split / "masks" / f"{split}.png", np.ones((32, 32), np.uint8))
    index = read_dataset(tmp_path / "s")
    assert [s.split for s in index.samples] == ["train", "val", "test"]


def test_unknown_layouts_and_format_names_are_one_line_errors(tmp_path: Path) -> None:
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("hello")
    with pytest.raises(DataError, match="unknown dataset format .*--format yolo|class-folders|image-mask"):
        read_dataset(tmp_path / "notes")
    with pytest.raises(ConfigError, match="--format: unknown format 'coco'"):
        read_dataset(tmp_path / "notes", format="coco")
    with pytest.raises(DataError, match="does not exist"):
        read_dataset(tmp_path / "missing")


def test_formats_are_detected(good_yolo: Path, tmp_path: Path) -> None:
    assert detect_format(good_yolo) == "yolo" and detect_format(good_yolo / "data.yaml") == "yolo"
    assert detect_format(_class_folders(tmp_path / "c", {"a b": 1})) == "class-folders"


@pytest.fixture(scope="module")
def real_scan(real_dataset: Path) -> Scan:
    return scan_yolo(real_dataset)


def test_real_export_is_read_with_its_empty_labels_counted(real_scan: Scan, real_dataset: Path) -> None:
    index = index_from(real_scan)
    assert index.root == real_dataset  # data.yaml's `path:` is the author's machine; resolved beside the YAML
    assert len(index.classes) == 7 and not index.issues
    assert [len(index.split(s)) for s in ("train", "val", "test")] == [1345, 173, 83]
    assert index.skipped_empty == 2286 + 175 + 86
    assert all(s.polygon.shape == (4, 2) and signed_area(s.polygon) > 0 for s in index.samples)
    assert {s.class_id for s in index.samples} == {0, 1, 2, 4, 5, 6}  # "humerus fracture" is never an image's class
    background = index_from(real_scan, empty_labels="background")
    assert [len(background.split(s)) for s in ("train", "val", "test")] == [3631, 348, 169]
    assert sum(s.class_id == 7 for s in background.samples) == 2547


@pytest.mark.slow
def test_a_study_writes_its_data_issues_table(tiny_study: TinyStudy) -> None:
    table = pq.read_table(tiny_study.study / DATA_ISSUES_FILE)
    assert table.column_names == ["path", "line", "message"]
    [row] = table.to_pylist()  # the one malformed label file conftest puts in the tiny study's data
    assert Path(row["path"]).name == "malformed.txt" and row["line"] == 1 and "not numbers" in row["message"]
    [listed] = yaml.safe_load((tiny_study.study / "study.yaml").read_text())["data"]["issues"]
    assert "malformed.txt" in listed and "not numbers" in listed
