"""The preprocessing cache: one entry per (dataset, preprocessing), hits and misses as trials see them, one builder."""

from __future__ import annotations

import fcntl
import json
import multiprocessing
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import replace
from multiprocessing.process import BaseProcess
from pathlib import Path

import cv2
import numpy as np
import optuna
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raysearch.core.files import staging_name, write_table_atomic
from raysearch.data.cache import (
    META_FILE,
    build_cache,
    cache_issues,
    cache_key,
    dataset_fingerprint,
    ensure_cache,
    load_cache,
)
from raysearch.data.formats import load_dataset
from raysearch.data.phantom import PhantomSpec, write_phantom
from raysearch.data.preprocess import Preprocessing
from raysearch.data.records import issues_table
from raysearch.data.samples import DatasetIndex, Sample
from raysearch.errors import DataError, StorageError
from raysearch.search.space import parse_space
from raysearch.tasks import create_task
from raysearch.training.hparams import defaults, preprocessing_of, schema

SPACE = {
    "task": "multitask",
    "parameters": {
        "clahe": {"type": "categorical", "choices": [True, False]},
        "clahe_clip": {"type": "float", "low": 1.0, "high": 4.0, "when": {"clahe": True}},
        "filter": {"type": "categorical", "choices": ["none", "median", "bilateral"]},
        "resize": {"type": "categorical", "choices": ["stretch", "letterbox"]},
        "normalisation": {"type": "categorical", "choices": ["minus_one_one", "imagenet"]},
        "augment": {"type": "float", "low": 0.0, "high": 1.0},
    },
}


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory) -> DatasetIndex:
    root = write_phantom(tmp_path_factory.mktemp("phantom") / "data", PhantomSpec(8, 4, 4, image_size=32),
                         progress=False)
    return load_dataset(root)


def _trial_cache(index: DatasetIndex, cache_root: Path, values: dict[str, object]) -> tuple[Path, bool]:
    """What run_trial does with a sampled configuration: defaults + sample → Preprocessing → ensure_cache."""
    hp_defaults = {**defaults(create_task("multitask").hyperparameters), "image_size": 32}
    space = parse_space(SPACE, source="test", schema=schema(create_task("multitask").hyperparameters))
    trial = optuna.trial.FixedTrial(values)
    config = {**space.sample(trial), **trial.params}  # what OptunaSearch hands Tune: fixed + sampled values
    return ensure_cache(index, dataset_fingerprint(index), preprocessing_of({**hp_defaults, **config}), cache_root,
                        progress=False)


def test_a_second_trial_with_the_same_preprocessing_hits_and_other_preprocessing_misses(
        index: DatasetIndex, tmp_path: Path) -> None:
    first = {"clahe": True, "clahe_clip": 3.0, "filter": "median", "resize": "stretch",
             "normalisation": "minus_one_one", "augment": 0.2}
    same_pixels = {**first, "normalisation": "imagenet", "augment": 0.9}  # applied per batch, not cached
    other = {**first, "clahe_clip": 1.5}
    built, hit = _trial_cache(index, tmp_path, first)
    assert not hit
    assert _trial_cache(index, tmp_path, first) == (built, True)
    assert _trial_cache(index, tmp_path, same_pixels) == (built, True)
    other_dir, hit = _trial_cache(index, tmp_path, other)
    assert not hit and other_dir != built
    no_clahe, hit = _trial_cache(index, tmp_path, {**first, "clahe": False})
    assert not hit and no_clahe not in (built, other_dir)
    assert not np.array_equal(load_cache(built).images, load_cache(no_clahe).images)


def _ensure_in_child(index: DatasetIndex, fingerprint: str, config: Preprocessing, root: Path,
                     found: multiprocessing.Queue) -> None:
    found.put(ensure_cache(index, fingerprint, config, root, progress=False))


def _wait_until_waiting_for(lock: Path, process: BaseProcess, timeout: float = 120.0) -> None:
    """Return once the kernel lists `process` as blocked on `lock`'s flock (/proc/locks shows waiters as
    `->`); fail if it ends first: then it never waited for the builder holding the lock."""
    inode = f":{lock.stat().st_ino} "
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        waiting = [line for line in Path("/proc/locks").read_text().splitlines()
                   if "->" in line and inode in line and f" {process.pid} " in line]
        if waiting:
            return
        assert process.is_alive(), "the second builder finished without waiting for the lock held by the first"
        time.sleep(0.05)
    raise AssertionError(f"the second builder neither waited for {lock} nor finished in {timeout:.0f} s")


def test_a_trial_that_needs_an_entry_being_built_waits_for_the_builder_and_builds_nothing(
        index: DatasetIndex, tmp_path: Path) -> None:
    config = preprocessing_of({**defaults({}), "image_size": 32, "clahe": True})
    fingerprint = dataset_fingerprint(index)
    directory = tmp_path / cache_key(fingerprint, config)
    lock = tmp_path / f"{directory.name}.lock"
    context = multiprocessing.get_context("spawn")
    found = context.Queue()
    with open(lock, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # this test is the first builder, inside the lock
        second = context.Process(target=_ensure_in_child, args=(index, fingerprint, config, tmp_path, found))
        second.start()
        _wait_until_waiting_for(lock, second)
        build_cache(index, config, directory, progress=False)
        built = (directory / "meta.json").stat()
        fcntl.flock(held, fcntl.LOCK_UN)
    assert found.get(timeout=120) == (directory, True)  # it found the entry built and counts as a hit
    assert ensure_cache(index, fingerprint, config, tmp_path, progress=False) == (directory, True)
    second.join(timeout=60)
    assert second.exitcode == 0
    after = (directory / "meta.json").stat()
    assert (after.st_ino, after.st_mtime_ns) == (built.st_ino, built.st_mtime_ns)  # not built a second time
    assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name] == []


def test_a_loaded_entry_is_memory_mapped_and_knows_its_folder_classes_and_paths(index: DatasetIndex,
                                                                              tmp_path: Path) -> None:
    directory, _ = ensure_cache(index, dataset_fingerprint(index), preprocessing_of({**defaults({}), "image_size": 32}),
                                tmp_path, progress=False)
    data = load_cache(directory)
    assert data.directory == directory and data.classes == index.classes
    assert data.paths == [str(s.image_path) for s in index.samples]
    for array in (data.images, data.masks, data.labels, data.polygons, data.splits):
        assert isinstance(array, np.memmap) and array.mode == "r"  # one copy in memory, shared by every trial
    assert [a.dtype for a in (data.images, data.masks, data.polygons, data.labels, data.splits)] == [
        np.uint8, np.uint8, np.float32, np.int64, np.int8]
    config = preprocessing_of({**defaults({}), "image_size": 32})
    assert json.loads((directory / META_FILE).read_text())["preprocessing"] == config.cache_fields()
    assert data.images.shape == (len(index.samples), 32, 32) and data.polygons.shape == (len(index.samples), 8)
    assert list(data.labels) == [s.class_id for s in index.samples]
    assert [len(data.indices(split)) for split in ("train", "val", "test")] == [8, 4, 4]


def _copy_dataset(root: Path, target: Path) -> Path:
    shutil.copytree(root, target)
    return target


def test_the_fingerprint_changes_with_any_image_s_pixels(index: DatasetIndex, tmp_path: Path) -> None:
    same = load_dataset(_copy_dataset(Path(index.root), tmp_path / "same"))
    assert dataset_fingerprint(same) == dataset_fingerprint(index)
    victim = sorted((tmp_path / "same" / "val" / "images").iterdir())[0]
    changed_root = _copy_dataset(tmp_path / "same", tmp_path / "changed")
    pixels = cv2.imread(str(victim), cv2.IMREAD_GRAYSCALE)
    pixels[0, 0] ^= 0xFF  # one pixel of one image: same names, labels and sizes
    cv2.imwrite(str(changed_root / "val" / "images" / victim.name), pixels)
    changed = load_dataset(changed_root)
    assert dataset_fingerprint(changed) != dataset_fingerprint(index)
    config = preprocessing_of({**defaults({}), "image_size": 32})
    first, _ = ensure_cache(index, dataset_fingerprint(index), config, tmp_path / "cache", progress=False)
    second, hit = ensure_cache(changed, dataset_fingerprint(changed), config, tmp_path / "cache", progress=False)
    assert not hit and second != first  # the second dataset never gets the first one's arrays


def test_every_label_fact_and_file_byte_shapes_the_fingerprint(index: DatasetIndex, tmp_path: Path) -> None:
    mask = tmp_path / "mask.png"
    cv2.imwrite(str(mask), np.eye(8, dtype=np.uint8) * 255)
    first = index.samples[0]
    base = DatasetIndex(index.root, index.format, index.classes, [replace(first, mask_path=mask), *index.samples[1:]])
    reference = dataset_fingerprint(base)
    assert dataset_fingerprint(DatasetIndex(index.root, index.format, list(index.classes), list(base.samples))) == \
        reference

    def with_first(**changes: object) -> DatasetIndex:
        return DatasetIndex(base.root, base.format, base.classes, [replace(base.samples[0], **changes),
                                                                    *base.samples[1:]])

    other_mask = tmp_path / "other-mask.png"
    cv2.imwrite(str(other_mask), np.eye(8, dtype=np.uint8)[::-1] * 255)
    shape = first.shapes[0]
    variants = {
        "format": DatasetIndex(base.root, "folders", base.classes, base.samples),
        "class names": DatasetIndex(base.root, base.format, [*base.classes[:-1], "other"], base.samples),
        "split": with_first(split="test" if first.split != "test" else "val"),
        "file name": with_first(image_path=first.image_path.with_name("renamed.png")),
        "class": with_first(class_id=(first.class_id + 1) % len(base.classes)),
        "polygon": with_first(polygon=first.polygon + np.float32(0.01)),
        "shape points": with_first(shapes=(replace(shape, points=shape.points + 0.01), *first.shapes[1:])),
        "mask bytes": with_first(mask_path=other_mask),
        "sample order": DatasetIndex(base.root, base.format, base.classes, base.samples[::-1]),
    }
    (first.image_path.with_name("renamed.png")).write_bytes(first.image_path.read_bytes())
    try:
        found = {what: dataset_fingerprint(changed) for what, changed in variants.items()}
    finally:
        first.image_path.with_name("renamed.png").unlink()
    assert all(value != reference for value in found.values()), [w for w, v in found.items() if v == reference]
    assert len(set(found.values())) == len(found)
    assert re.fullmatch(r"[0-9a-f]{32}", reference)


def test_the_cache_key_changes_with_the_fingerprint_and_the_cached_preprocessing_only() -> None:
    config = preprocessing_of({**defaults({}), "image_size": 32})
    key = cache_key("a" * 32, config)
    assert re.fullmatch(r"[0-9a-f]{20}", key) and cache_key("a" * 32, config) == key
    assert cache_key("b" * 32, config) != key
    assert cache_key("a" * 32, replace(config, image_size=48)) != key
    assert cache_key("a" * 32, replace(config, clahe=not config.clahe)) != key
    assert cache_key("a" * 32, replace(config, normalisation="imagenet")) == key  # applied per batch


def _supersampled(shapes: list[np.ndarray], size: int, factor: int = 8) -> np.ndarray:
    """Pixels (size × size, 0/1) whose area lies mostly inside any of the normalised polygons."""
    big = np.zeros((size * factor, size * factor), np.uint8)
    for points in shapes:
        cv2.fillPoly(big, [np.round(points * size * factor * 16).astype(np.int32)], 255, shift=4)
    return (cv2.resize(big, (size, size), interpolation=cv2.INTER_AREA) > 127).astype(np.uint8)


def test_segmentation_masks_of_a_yolo_dataset_are_its_polygons_rasterised(tmp_path: Path) -> None:
    shapes = {
        "square": [np.array([[0.25, 0.25], [0.75, 0.25], [0.75, 0.75], [0.25, 0.75]])],
        "two": [np.array([[0.1, 0.1], [0.5, 0.1], [0.3, 0.6]]),
                np.array([[0.55, 0.55], [0.95, 0.6], [0.9, 0.95], [0.6, 0.9], [0.5, 0.75]])],
        "val": [np.array([[0.2, 0.3], [0.8, 0.2], [0.7, 0.9]])],
    }
    root = tmp_path / "yolo"
    (root / "data.yaml").parent.mkdir()
    (root / "data.yaml").write_text("train: train/images\nval: val/images\nnames: [fracture]\n")
    for stem, polygons in shapes.items():
        split = "val" if stem == "val" else "train"
        for folder in ("images", "labels"):
            (root / split / folder).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / split / "images" / f"{stem}.png"), np.full((256, 192), 100, np.uint8))
        lines = ["0 " + " ".join(f"{v:.4f}" for v in points.ravel()) for points in polygons]
        (root / split / "labels" / f"{stem}.txt").write_text("\n".join(lines) + "\n")
    index = load_dataset(root)
    config = preprocessing_of({**defaults({}), "image_size": 64, "resize": "stretch"})
    directory, _ = ensure_cache(index, dataset_fingerprint(index), config, tmp_path / "cache", progress=False)
    data = load_cache(directory)
    for row, path in enumerate(data.paths):
        expected = _supersampled(shapes[Path(path).stem], 64)
        mask = np.asarray(data.masks[row])
        assert set(np.unique(mask)) <= {0, 1}
        agreement = (mask & expected).sum() / (mask | expected).sum()
        assert agreement > 0.9, f"{path}: mask and polygons overlap by IoU {agreement:.2f}"


def test_skipped_files_are_listed_with_their_reason_in_the_data_issues_table(tmp_path: Path) -> None:
    root = write_phantom(tmp_path / "data", PhantomSpec(4, 2, 2, image_size=32), progress=False)
    labels = root / "train" / "labels"
    first = sorted(labels.iterdir())[0]
    first.write_text("0 0.1 0.1 x 0.2 0.3 0.3\n")
    missing = sorted(labels.iterdir())[1]
    missing.unlink()
    table = issues_table(load_dataset(root).issues).to_pylist()
    assert len(table) == 2
    by_file = {Path(row["path"]).name: row for row in table}
    assert by_file[first.name]["line"] == 1 and "not numbers" in by_file[first.name]["message"]
    assert by_file[missing.name]["line"] is None and "label file missing" in by_file[missing.name]["message"]


def test_images_that_fail_to_decode_are_left_out_and_listed(index: DatasetIndex, tmp_path: Path) -> None:
    root = Path(index.root)
    copy = tmp_path / "data"
    copy.mkdir()
    for path in root.rglob("*"):
        target = copy / path.relative_to(root)
        if path.is_dir():
            target.mkdir(exist_ok=True)
        else:
            target.write_bytes(path.read_bytes())
    victim = sorted((copy / "train" / "images").iterdir())[0]
    content = victim.read_bytes()
    victim.write_bytes(content[: len(content) // 2] + content[-12:])  # header and IEND intact, pixels cut out
    damaged = load_dataset(copy)
    assert len(damaged.split("train")) == 8  # the reader only reads headers and trailers
    directory, _ = ensure_cache(damaged, dataset_fingerprint(damaged), preprocessing_of(
        {**defaults({}), "image_size": 32}), tmp_path / "cache", progress=False)
    assert [(i.path, i.message) for i in cache_issues(directory)] == [(victim, "unreadable or corrupt image")]
    assert len(load_cache(directory).indices("train")) == 7


def test_a_dataset_given_by_a_relative_path_caches_from_any_working_directory(
        index: DatasetIndex, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = Path(index.root)
    monkeypatch.chdir(root.parent)
    relative = load_dataset(Path(root.name))
    monkeypatch.chdir(tmp_path)  # a Ray trial runs in its own working directory
    directory, _ = ensure_cache(relative, dataset_fingerprint(relative), preprocessing_of(
        {**defaults({}), "image_size": 32, "resize": "stretch"}), tmp_path / "cache", progress=False)
    assert len(load_cache(directory).images) == len(relative.samples) and not cache_issues(directory)


def test_a_cache_of_nothing_is_refused(index: DatasetIndex, tmp_path: Path) -> None:
    gone = DatasetIndex(index.root, index.format, index.classes,
                        [replace(s, image_path=tmp_path / f"missing-{n}.png") for n, s in enumerate(index.samples)])
    with pytest.raises(DataError, match="missing-0.png: unreadable or corrupt image; none of the 16 images"):
        ensure_cache(gone, dataset_fingerprint(index), preprocessing_of({**defaults({}), "image_size": 32}),
                     tmp_path / "cache", progress=False)
    assert not (tmp_path / "cache").exists() or not any(p.is_dir() for p in (tmp_path / "cache").iterdir())


def test_a_build_shows_its_progress_unless_asked_not_to(index: DatasetIndex, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    config = preprocessing_of({**defaults({}), "image_size": 32})
    fingerprint, total = dataset_fingerprint(index), len(index.samples)
    shown = "preprocess: 100%"
    build_cache(index, config, tmp_path / "default")
    err = capsys.readouterr().err
    assert shown in err and f"{total}/{total}" in err  # the bar names the step and counts the images
    build_cache(index, config, tmp_path / "quiet", progress=False)
    assert capsys.readouterr().err == ""
    ensure_cache(index, fingerprint, config, tmp_path / "ensured")
    assert shown in capsys.readouterr().err
    ensure_cache(index, fingerprint, replace(config, image_size=16), tmp_path / "ensured", progress=True)
    assert shown in capsys.readouterr().err
    ensure_cache(index, fingerprint, config, tmp_path / "quiet-ensured", progress=False)
    assert capsys.readouterr().err == ""


def test_cached_polygons_follow_the_letterbox_and_a_sample_without_one_gets_nan(tmp_path: Path) -> None:
    root = tmp_path / "yolo"
    for split in ("train", "val"):
        for folder in ("images", "labels"):
            (root / split / folder).mkdir(parents=True)
        cv2.imwrite(str(root / split / "images" / f"{split}.png"), np.full((192, 256), 100, np.uint8))
        (root / split / "labels" / f"{split}.txt").write_text("0 0.25 0.25 0.75 0.25 0.75 0.75 0.25 0.75\n")
    (root / "data.yaml").write_text("train: train/images\nval: val/images\nnames: [fracture]\n")
    read = load_dataset(root)
    assert [s.polygon is not None for s in read.samples] == [True, True]
    without = replace(read.samples[1], polygon=None)  # e.g. a background image
    index = DatasetIndex(read.root, read.format, read.classes, [read.samples[0], without])
    config = preprocessing_of({**defaults({}), "image_size": 64, "resize": "letterbox"})
    data = load_cache(ensure_cache(index, dataset_fingerprint(index), config, tmp_path / "cache", progress=False)[0])
    assert data.polygons.dtype == np.float32 and data.polygons.shape == (2, 8)
    # 256×192 → 64×48, 8 px of padding above and below: x unchanged, y = (y · 48 + 8) / 64
    corners = sorted(map(tuple, np.asarray(data.polygons[0]).reshape(4, 2).round(6).tolist()))
    assert corners == [(0.25, 0.3125), (0.25, 0.6875), (0.75, 0.3125), (0.75, 0.6875)]
    assert np.isnan(data.polygons[1]).all()


def test_masks_are_resized_by_picking_labels_and_stale_masks_are_left_out_with_their_reason(tmp_path: Path) -> None:
    labels = (np.random.default_rng(0).random((48, 48)) > 0.5).astype(np.uint8)
    files = {"good": labels * 255, "wrong-size": np.ones((8, 48), np.uint8)}
    samples = []
    for stem in ("good", "wrong-size", "corrupt"):
        image = tmp_path / "images" / f"{stem}.png"
        image.parent.mkdir(exist_ok=True)
        cv2.imwrite(str(image), np.full((48, 48), 100, np.uint8))
        mask = tmp_path / "masks" / f"{stem}.png"
        mask.parent.mkdir(exist_ok=True)
        if stem in files:
            cv2.imwrite(str(mask), files[stem])
        else:
            mask.write_bytes(b"not a png")  # replaced after the dataset was read
        samples.append(Sample(image, "train", mask_path=mask))
    index = DatasetIndex(tmp_path, "image-mask", [], samples)
    directory = tmp_path / "cache"
    build_cache(index, preprocessing_of({**defaults({}), "image_size": 32, "resize": "stretch"}), directory,
                progress=False)
    data = load_cache(directory)
    assert data.paths == [str(samples[0].image_path)] and data.masks.dtype == np.uint8
    assert list(data.labels) == [-1]  # an image-mask sample has no class
    # nearest neighbour: each cached pixel is the label at its source position (48 → 32: every 1.5 px), never a
    # blend of neighbours (bilinear or area resizing would move the boundaries of the labelled regions)
    source = np.floor(np.arange(32) * 1.5).astype(int)
    np.testing.assert_array_equal(data.masks[0], labels[np.ix_(source, source)])
    assert [(i.path.name, i.message) for i in cache_issues(directory)] == [
        ("wrong-size.png", "mask wrong-size.png is 48x8, image 48x48"),
        ("corrupt.png", "unreadable mask corrupt.png"),
    ]


def test_a_build_creates_missing_parent_folders_and_reuses_a_staging_folder_left_by_a_crash(
        index: DatasetIndex, tmp_path: Path) -> None:
    config = preprocessing_of({**defaults({}), "image_size": 32})
    nested = tmp_path / "not" / "yet" / "entry"
    build_cache(index, config, nested, progress=False)
    assert len(load_cache(nested).images) == len(index.samples)
    directory = tmp_path / "entry"
    left = staging_name(directory)  # a builder with this pid crashed mid-build
    left.mkdir()
    build_cache(index, config, directory, progress=False)
    assert len(load_cache(directory).images) == len(index.samples)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["entry", "not"]


def test_building_over_a_finished_entry_keeps_it_and_over_anything_else_fails_cleanly(index: DatasetIndex,
                                                                                      tmp_path: Path) -> None:
    config = preprocessing_of({**defaults({}), "image_size": 32})
    directory = tmp_path / "entry"
    build_cache(index, config, directory, progress=False)
    built = (directory / META_FILE).stat()
    assert build_cache(index, config, directory, progress=False) == []  # another builder finished it first
    after = (directory / META_FILE).stat()
    assert (after.st_ino, after.st_mtime_ns) == (built.st_ino, built.st_mtime_ns)
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("not a cache entry")
    with pytest.raises(OSError):
        build_cache(index, config, stranger, progress=False)
    assert [p.name for p in stranger.iterdir()] == ["notes.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["entry", "stranger"]  # no staging folder left


def test_a_killed_build_continues_where_it_stopped_and_ends_as_a_fresh_build(index: DatasetIndex, tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from raysearch.data import cache

    config = Preprocessing(image_size=32)
    build_cache(index, config, tmp_path / "fresh", progress=False)
    monkeypatch.setattr(cache, "BUILD_CHUNK", 4)
    real, decoded = cache.process_sample, []

    def killed_after_two_chunks(sample: Sample, preprocessing: Preprocessing) -> object:
        if len(decoded) == 8:
            raise KeyboardInterrupt  # what a kill leaves: two chunks recorded, the rest not
        decoded.append(sample)
        return real(sample, preprocessing)

    monkeypatch.setattr(cache, "process_sample", killed_after_two_chunks)
    with pytest.raises(KeyboardInterrupt):
        build_cache(index, config, tmp_path / "entry", progress=False)
    assert not (tmp_path / "entry").exists() and (tmp_path / "entry.partial").is_dir()
    monkeypatch.setattr(cache, "process_sample", lambda s, p: decoded.append(s) or real(s, p))
    build_cache(index, config, tmp_path / "entry", progress=False)
    assert len(decoded) == len(index.samples)  # each sample decoded once over both builds
    assert not (tmp_path / "entry.partial").exists()
    fresh, resumed = load_cache(tmp_path / "fresh"), load_cache(tmp_path / "entry")
    for name in ("images", "masks", "polygons", "labels", "splits"):
        assert np.array_equal(getattr(fresh, name), getattr(resumed, name), equal_nan=name == "polygons")
    assert fresh.paths == resumed.paths


def _mount_tmpfs(mount: Path, options: str) -> None:
    """Mount a tmpfs at `mount` (root only; the test is skipped where the machine does not allow mounts)."""
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode(errors='replace').strip()}")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs for the test; it and a `read-only` mount beside it that the test may add are unmounted after."""
    mounts = [tmp_path / "disk", tmp_path / "read-only"]
    try:
        _mount_tmpfs(mounts[0], "size=1m")
        yield mounts[0]
    finally:
        for mount in mounts:
            subprocess.run(["umount", "-l", str(mount)], capture_output=True, check=False)


def _fill(disk: Path, leave: int) -> None:
    """Fill `disk` until `leave` bytes (rounded to its pages) are free."""
    with open(disk / "filler", "wb") as filler:
        filler.write(b"\0" * (shutil.disk_usage(disk).free - leave))


def test_a_cache_that_cannot_fit_is_refused_before_preprocessing(index: DatasetIndex, small_disk: Path) -> None:
    config = preprocessing_of({**defaults({}), "image_size": 32})
    _fill(small_disk, 16 * 1024)
    directory = small_disk / "cache" / cache_key(dataset_fingerprint(index), config)
    with pytest.raises(StorageError, match=r"^.*cache: needs 0\.0334 MB but 0\.0164 MB is free") as refused:
        build_cache(index, config, directory, progress=False)
    assert "\n" not in str(refused.value)
    assert not (small_disk / "cache").exists(), "nothing created"


def test_a_disk_that_fills_during_a_cache_build_is_one_line_and_leaves_no_staging(index: DatasetIndex,
                                                                               small_disk: Path) -> None:
    """The estimate fits, the files' pages do not: numpy's short write (an OSError without errno) is one line."""
    config = preprocessing_of({**defaults({}), "image_size": 32})
    _fill(small_disk, 9 * 4096)
    cache = small_disk / "cache"
    cache.mkdir()
    directory = cache / cache_key(dataset_fingerprint(index), config)
    with pytest.raises(StorageError, match="cannot write: no space left on the device") as full:
        build_cache(index, config, directory, progress=False)
    assert str(full.value).startswith(str(directory)) and "\n" not in str(full.value)
    assert list(cache.iterdir()) == [], "no staging folder left behind"


def test_a_table_written_to_a_full_or_read_only_disk_is_one_line_and_keeps_the_old_file(small_disk: Path) -> None:
    path = small_disk / "trials.parquet"
    write_table_atomic(pa.table({"x": [1]}), path)
    _fill(small_disk, 0)
    big = pa.table({"x": np.random.default_rng(0).random(200_000)})
    with pytest.raises(StorageError, match=f"^{path}: cannot write: no space left on the device"):
        write_table_atomic(big, path)
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler", "trials.parquet"]
    assert pq.read_table(path)["x"].to_pylist() == [1]
    read_only = small_disk.parent / "read-only"
    _mount_tmpfs(read_only, "size=1m,ro")
    with pytest.raises(StorageError, match=f"^{read_only / 'trials.parquet'}: cannot write: read-only file system"):
        write_table_atomic(big, read_only / "trials.parquet")
