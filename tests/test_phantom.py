"""The phantom X-ray generator: determinism, on-disk format, labels, masks, caching and spec validation."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from raysearch.data.phantom import (
    CLASS_NAMES,
    PhantomSpec,
    default_phantom_dir,
    ensure_phantom,
    render_phantom,
    write_phantom,
)
from raysearch.errors import ConfigError

SPEC = PhantomSpec(train=12, val=6, test=6, image_size=64, seed=3)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One small phantom dataset shared by the read-only tests."""
    return write_phantom(tmp_path_factory.mktemp("phantom") / "data", SPEC, progress=False)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _labels(root: Path, split: str) -> list[tuple[int, np.ndarray]]:
    out = []
    for path in sorted((root / split / "labels").glob("*.txt")):
        fields = path.read_text().split()
        assert len(fields) == 9, path
        out.append((int(fields[0]), np.array(fields[1:], float).reshape(4, 2)))
    return out


def _signed_area(points: np.ndarray) -> float:
    """Shoelace area in image coordinates (y down): positive when the points run clockwise on screen."""
    x, y = points[:, 0], points[:, 1]
    return float(np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y) / 2)


def _read(path: Path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


def test_layout_and_data_yaml(dataset: Path) -> None:
    meta = yaml.safe_load((dataset / "data.yaml").read_text())
    assert meta["nc"] == 6 and meta["names"] == list(CLASS_NAMES)
    assert meta["train"] == "train/images" and meta["path"] == "."
    assert meta["phantom"] == {"train": 12, "val": 6, "test": 6, "image_size": 64, "seed": 3, "version": 1}
    for split in ("train", "val", "test"):
        stems = {p.stem for p in (dataset / split / "images").glob("*.png")}
        assert len(stems) == getattr(SPEC, split)
        assert stems == {p.stem for p in (dataset / split / "labels").glob("*.txt")}
        assert stems == {p.stem for p in (dataset / split / "masks").glob("*.png")}
    image = _read(dataset / "train" / "images" / "phantom_000000.png")
    assert image.dtype == np.uint8 and image.shape == (64, 64)


def test_deterministic_for_a_seed(tmp_path: Path, dataset: Path) -> None:
    again = write_phantom(tmp_path / "again", SPEC, progress=False)
    assert _files(again) == _files(dataset)
    other = write_phantom(tmp_path / "other", PhantomSpec(train=12, val=6, test=6, image_size=64, seed=4),
                          progress=False)
    images = [k for k in _files(dataset) if "/images/" in k]
    assert all(_files(other)[k] != _files(dataset)[k] for k in images)


def test_image_independent_of_counts(tmp_path: Path, dataset: Path) -> None:
    fewer = write_phantom(tmp_path / "fewer", PhantomSpec(train=3, val=0, test=0, image_size=64, seed=3),
                          progress=False)
    name = "train/images/phantom_000002.png"
    assert (fewer / name).read_bytes() == (dataset / name).read_bytes()


def test_labels_are_yolo_polygons_in_canonical_order(dataset: Path) -> None:
    for split in ("train", "val", "test"):
        for class_id, points in _labels(dataset, split):
            assert 0 <= class_id < len(CLASS_NAMES)
            assert points.min() >= 0.0 and points.max() <= 1.0
            assert _signed_area(points) > 0
            assert np.argmin(points.sum(axis=1)) == 0


def test_classes_balanced(dataset: Path) -> None:
    for split in ("train", "val", "test"):
        counts = np.bincount([c for c, _ in _labels(dataset, split)], minlength=len(CLASS_NAMES))
        assert counts.max() - counts.min() <= 1


def test_mask_matches_bones(dataset: Path) -> None:
    for path in sorted((dataset / "train" / "masks").glob("*.png")):
        mask = _read(path)
        assert set(np.unique(mask)) <= {0, 255}
        bone = mask > 0
        assert 0.02 < bone.mean() < 0.6, path
        image = _read(dataset / "train" / "images" / path.name).astype(float)
        assert image[bone].mean() > image[~bone].mean() + 20, path


def test_polygon_covers_bone_at_the_fracture(dataset: Path) -> None:
    for path in sorted((dataset / "train" / "labels").glob("*.txt")):
        points = np.array(path.read_text().split()[1:], float).reshape(4, 2)
        region = cv2.fillPoly(np.zeros((64, 64), np.uint8), [np.round(points * 64).astype(np.int32)], 1)
        mask = _read(dataset / "train" / "masks" / f"{path.stem}.png") > 0
        assert region.sum() > 0 and mask[region > 0].mean() > 0.3, path


def test_render_phantom_types() -> None:
    sample = render_phantom(np.random.default_rng(0), 2, 48)
    assert sample.image.shape == sample.mask.shape == (48, 48)
    assert sample.image.dtype == sample.mask.dtype == np.uint8
    assert set(np.unique(sample.mask)) <= {0, 1}
    assert sample.polygon.shape == (4, 2) and sample.polygon.dtype == np.float32
    assert sample.class_id == 2


def test_classes_distinguishable_but_not_trivially() -> None:
    """Class mean images differ, yet a nearest-class-mean classifier on raw pixels is far from perfect."""
    per_class = 24
    images = np.array([[render_phantom(np.random.default_rng([9, c, i]), c, 48).image.ravel() / 255.0
                        for i in range(per_class)] for c in range(len(CLASS_NAMES))])
    train, held = images[:, : per_class // 2], images[:, per_class // 2:]
    means = train.mean(axis=1)
    gaps = np.abs(means[:, None] - means[None]).mean(axis=-1)
    assert gaps[~np.eye(len(CLASS_NAMES), dtype=bool)].min() > 0.01
    distances = ((held[:, :, None] - means[None, None]) ** 2).sum(axis=-1)
    accuracy = (distances.argmin(axis=-1) == np.arange(len(CLASS_NAMES))[:, None]).mean()
    assert 1.5 / len(CLASS_NAMES) < accuracy < 0.9


def test_second_write_is_a_no_op(tmp_path: Path) -> None:
    out = write_phantom(tmp_path / "once", SPEC, progress=False)
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    assert write_phantom(out, SPEC, progress=False) == out
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == stamps
    assert [p.name for p in tmp_path.iterdir()] == ["once"]


def test_existing_folder_with_other_content_is_refused(tmp_path: Path, dataset: Path) -> None:
    with pytest.raises(ConfigError, match=str(dataset)):
        write_phantom(dataset, PhantomSpec(train=12, val=6, test=6, image_size=64, seed=5), progress=False)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="busy"):
        write_phantom(tmp_path / "busy", SPEC, progress=False)


@pytest.mark.parametrize("field, value", [("train", -1), ("val", -2), ("test", -3), ("image_size", 16)])
def test_invalid_spec_names_the_field(field: str, value: int) -> None:
    with pytest.raises(ConfigError, match=field):
        PhantomSpec(**{field: value})


def test_ensure_phantom_uses_the_cache_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAYSEARCH_CACHE", str(tmp_path / "cache"))
    spec = PhantomSpec(train=6, val=0, test=0, image_size=32, seed=1)
    path = ensure_phantom(spec, progress=False)
    assert path == default_phantom_dir(spec)
    assert path.parent == tmp_path / "cache" / "phantom"
    assert (path / "data.yaml").is_file()
    assert ensure_phantom(spec, progress=False) == path
    assert default_phantom_dir(PhantomSpec(seed=2)) != default_phantom_dir(PhantomSpec(seed=1))
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]
