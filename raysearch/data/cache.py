"""Preprocessed arrays, computed once per (dataset content, preprocessing) and shared by every trial.

A cache entry is a folder `<cache_root>/<key>/` of `.npy` arrays plus `meta.json`, written into a
temporary sibling and renamed into place, so a reader never sees half of one. A builder holds an
exclusive lock on `<cache_root>/<key>.lock` (fcntl.flock), so trials that need the same entry at the same
time build it once: the others wait, then find it built. Trials memory-map the arrays, so every trial and
worker on a machine shares the same pages.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from raysearch.core.files import atomic_folder, require_space, storage_error, write_text_atomic
from raysearch.data.imageindex import file_digest, image_facts
from raysearch.data.images import ImageError, read_grey
from raysearch.data.masklevels import mask_levels
from raysearch.data.preprocess import Preprocessing, enhance, fit, placement
from raysearch.data.samples import SPLITS, DataIssue, DatasetIndex, Sample
from raysearch.errors import DataError

CACHE_VERSION = 2
META_FILE = "meta.json"  # what a complete cache entry holds beside its arrays
PARTIAL_SUFFIX = ".partial"  # `<key>.partial/`: the arrays of a build in progress
BUILD_CHUNK = 256  # samples a build decodes before it records them done: its memory, and what a kill loses
ROW_BYTES = 8 * 4 + 8 + 1  # a sample's polygon (float32 x 8), label (int64) and split (int8) beside its pixels


@dataclass(frozen=True)
class CachedDataset:
    """The arrays of one cache entry; `polygons` is NaN and `labels` -1 where a sample has none."""

    directory: Path
    images: np.ndarray
    masks: np.ndarray
    labels: np.ndarray
    polygons: np.ndarray
    splits: np.ndarray
    classes: list[str]
    paths: list[str]

    def indices(self, split: str) -> np.ndarray:
        """Row numbers of one split."""
        return np.flatnonzero(self.splits == SPLITS.index(split))


def dataset_fingerprint(index: DatasetIndex, index_file: Path | None = None, *, progress: bool = True) -> str:
    """A hash of the split policy and every sample's split, image bytes, labels and mask bytes: equal datasets
    under equal policies, equal keys. The images' byte digests come from the dataset's image index
    `index_file` (`raysearch.data.imageindex`): unchanged files are not read again."""
    paths = [sample.image_path for sample in index.samples]
    digests = ([f.file_digest for f in image_facts(paths, index_file, progress=progress)] if index_file is not None
               else [file_digest(path) for path in paths])
    digest = hashlib.blake2b(digest_size=16)
    digest.update(json.dumps([index.format, index.classes, index.split_policy]).encode())
    for sample, image_digest in zip(index.samples, digests, strict=True):
        digest.update(f"{sample.split}|{sample.image_path.name}|{sample.class_id}".encode())
        digest.update(bytes.fromhex(image_digest))
        if sample.polygon is not None:
            digest.update(np.ascontiguousarray(sample.polygon, dtype=np.float32).tobytes())
        for shape in sample.shapes:
            digest.update(np.ascontiguousarray(shape.points, dtype=np.float32).tobytes())
        if sample.mask_path is not None:
            digest.update(sample.mask_path.read_bytes())
    return digest.hexdigest()


def cache_key(fingerprint: str, preprocessing: Preprocessing) -> str:
    """The folder name of a cache entry."""
    payload = json.dumps([CACHE_VERSION, fingerprint, preprocessing.cache_fields()], sort_keys=True)
    return hashlib.blake2b(payload.encode(), digest_size=10).hexdigest()


def read_mask(path: Path) -> np.ndarray | None:
    """A binary mask (H, W) uint8 0/1 from a 0/1 or 0/255 grey, RGB or RGBA image; None if unreadable."""
    levels = mask_levels(path)
    return None if levels is None else (levels > 0).astype(np.uint8)


def _rasterise(sample: Sample, width: int, height: int) -> np.ndarray:
    mask = np.zeros((height, width), dtype=np.uint8)
    for shape in sample.shapes:
        points = np.round(shape.points * [width, height]).astype(np.int32)
        cv2.fillPoly(mask, [points], 1)
    return mask


def process_sample(sample: Sample, config: Preprocessing) -> tuple[np.ndarray, np.ndarray, np.ndarray] | str:
    """Decode and preprocess one sample: (image, mask, polygon (4, 2)) at the cache's size, or what went wrong."""
    try:
        image, _ = read_grey(sample.image_path, config.intensity)
    except ImageError as error:
        return str(error)
    height, width = image.shape
    if sample.mask_path is not None:
        mask = read_mask(sample.mask_path)
        if mask is None:
            return f"unreadable mask {sample.mask_path.name}"
        if mask.shape != image.shape:
            return f"mask {sample.mask_path.name} is {mask.shape[1]}x{mask.shape[0]}, image {width}x{height}"
    else:
        mask = _rasterise(sample, width, height)
    where = placement(width, height, config.image_size, config.resize)
    pixels = enhance(fit(image, where), config)
    mask = fit(mask, where, cv2.INTER_NEAREST)
    polygon = (
        where.points(sample.polygon, width, height)
        if sample.polygon is not None
        else np.full((4, 2), np.nan, dtype=np.float32)
    )
    return pixels, mask, polygon


def _partial_arrays(partial: Path, count: int, side: int) -> dict[str, np.ndarray]:
    """The memory-mapped arrays of a build in progress in `partial` (a killed build's, if its shapes fit), with
    `done` marking the samples already processed; new (zeroed) ones otherwise."""
    shapes = {"images": ((count, side, side), np.uint8), "masks": ((count, side, side), np.uint8),
              "polygons": ((count, 8), np.float32), "done": ((count,), np.bool_)}
    paths = {name: partial / f"{name}.npy" for name in shapes}
    try:
        found = {name: np.load(path, mmap_mode="r+") for name, path in paths.items()}
        if all(found[name].shape == shape and found[name].dtype == dtype for name, (shape, dtype) in shapes.items()):
            return found
    except (OSError, ValueError):
        pass
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    arrays = {name: np.lib.format.open_memmap(paths[name], mode="w+", dtype=dtype, shape=shape)
              for name, (shape, dtype) in shapes.items()}
    for path in paths.values():  # the pages up front: a full disk is ENOSPC here, not SIGBUS on a later write
        with open(path, "r+b") as file:
            os.posix_fallocate(file.fileno(), 0, os.fstat(file.fileno()).st_size)
    return arrays


def _stage(source: np.ndarray, rows: np.ndarray, path: Path) -> None:
    """Write `source[rows]` as the .npy file `path` (renamed from the build's file when every row is kept),
    BUILD_CHUNK rows at a time."""
    if len(rows) == len(source):
        source.flush()
        os.replace(source.filename, path)
        return
    target = np.lib.format.open_memmap(path, mode="w+", dtype=source.dtype, shape=(len(rows), *source.shape[1:]))
    for start in range(0, len(rows), BUILD_CHUNK):
        target[start:start + BUILD_CHUNK] = source[rows[start:start + BUILD_CHUNK]]
    target.flush()


def build_cache(
    index: DatasetIndex, config: Preprocessing, directory: Path, *, progress: bool = True
) -> list[DataIssue]:
    """Decode and preprocess every sample into `directory` (atomically); returns unreadable samples.

    The build streams: BUILD_CHUNK samples at a time are decoded (in parallel threads) into memory-mapped
    arrays in `<directory>.partial/`, which records after each chunk which samples are done, so memory stays
    bounded whatever the dataset's size, and a build that was killed continues where it stopped. StorageError,
    before any work, when the entry's size (known from the image count and size) does not fit."""
    from tqdm.auto import tqdm

    require_space(directory.parent, cache_bytes(len(index.samples), config.image_size))

    samples = index.samples
    partial = directory.with_name(f"{directory.name}{PARTIAL_SUFFIX}")
    try:
        arrays = _partial_arrays(partial, len(samples), config.image_size)
    except OSError as error:
        shutil.rmtree(partial, ignore_errors=True)
        translated = storage_error(error, directory, cache_bytes(len(samples), config.image_size))
        if translated is None:
            raise
        raise translated from None
    messages_file = partial / "issues.json"
    messages = {int(k): v for k, v in json.loads(messages_file.read_text()).items()} if messages_file.is_file() else {}
    todo = np.flatnonzero(~arrays["done"])
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool, \
            tqdm(total=len(samples), initial=len(samples) - len(todo), desc="preprocess", disable=not progress) as bar:
        for start in range(0, len(todo), BUILD_CHUNK):
            rows = todo[start:start + BUILD_CHUNK]
            for row, result in zip(rows, pool.map(lambda i: process_sample(samples[i], config), rows), strict=True):
                if isinstance(result, str):
                    messages[int(row)] = result
                else:
                    arrays["images"][row], arrays["masks"][row], arrays["polygons"][row] = (
                        result[0], result[1], result[2].reshape(8))
            for name in ("images", "masks", "polygons"):
                arrays[name].flush()
            write_text_atomic(json.dumps(messages), messages_file)
            arrays["done"][rows] = True
            arrays["done"].flush()
            bar.update(len(rows))
    issues = [DataIssue(samples[row].image_path, message) for row, message in sorted(messages.items())]
    kept = np.array([row for row in range(len(samples)) if row not in messages], dtype=np.int64)
    if not len(kept):  # the readers never return an empty index, so every image failed to decode
        shutil.rmtree(partial, ignore_errors=True)
        raise DataError(f"{issues[0]}; none of the {len(issues)} images could be decoded")
    meta = {
        "classes": index.classes,
        "paths": [str(samples[row].image_path) for row in kept],
        "issues": [{"path": str(i.path), "message": i.message, "line": i.line} for i in issues],
        "preprocessing": config.cache_fields(),
    }
    try:  # the build's arrays move into the staging folder: once it is swapped in, or has failed, nothing is left
        with atomic_folder(directory, keep_if=lambda built: (built / META_FILE).is_file()) as staging:
            for name in ("images", "masks", "polygons"):
                _stage(arrays[name], kept, staging / f"{name}.npy")
            labels = [-1 if samples[row].class_id is None else samples[row].class_id for row in kept]
            np.save(staging / "labels.npy", np.array(labels, dtype=np.int64))
            np.save(staging / "splits.npy", np.array([SPLITS.index(samples[row].split) for row in kept],
                                                     dtype=np.int8))
            (staging / META_FILE).write_text(json.dumps(meta))
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return issues


def cache_bytes(images: int, image_size: int) -> int:
    """The bytes a cache entry of `images` images at `image_size` px takes: a uint8 image and mask per image."""
    return images * (2 * image_size * image_size + ROW_BYTES)


def load_cache(directory: Path) -> CachedDataset:
    """Memory-map a cache entry's arrays."""
    meta = json.loads((directory / META_FILE).read_text())
    names = ("images", "masks", "polygons", "labels", "splits")
    arrays = {n: np.load(directory / f"{n}.npy", mmap_mode="r") for n in names}
    return CachedDataset(directory, classes=meta["classes"], paths=meta["paths"], **arrays)


def cache_issues(directory: Path) -> list[DataIssue]:
    """The samples a cache entry left out because their files could not be decoded."""
    meta = json.loads((directory / META_FILE).read_text())
    return [DataIssue(Path(i["path"]), i["message"], i["line"]) for i in meta["issues"]]


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on `path` (created if needed) for the duration of the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_cache(
    index: DatasetIndex, fingerprint: str, config: Preprocessing, cache_root: Path, *, progress: bool = True
) -> tuple[Path, bool]:
    """The cache folder for this preprocessing, building it if absent; returns (folder, was_hit).

    Concurrent callers for the same entry wait for the one building it and count as hits.
    """
    directory = cache_root / cache_key(fingerprint, config)
    if (directory / META_FILE).is_file():
        return directory, True
    with _locked(cache_root / f"{directory.name}.lock"):
        if (directory / META_FILE).is_file():
            return directory, True
        build_cache(index, config, directory, progress=progress)
    return directory, False
