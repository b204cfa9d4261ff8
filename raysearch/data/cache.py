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
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from raysearch.core.files import atomic_folder, require_space
from raysearch.data.preprocess import Preprocessing, enhance, fit, placement
from raysearch.data.samples import SPLITS, DataIssue, DatasetIndex, Sample
from raysearch.data.suitability import mask_levels
from raysearch.errors import DataError

CACHE_VERSION = 2
META_FILE = "meta.json"  # what a complete cache entry holds beside its arrays
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


def dataset_fingerprint(index: DatasetIndex) -> str:
    """A hash of the split policy and every sample's split, image bytes, labels and mask bytes: equal datasets
    under equal policies, equal keys."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(json.dumps([index.format, index.classes, index.split_policy]).encode())
    for sample in index.samples:
        digest.update(f"{sample.split}|{sample.image_path.name}|{sample.class_id}".encode())
        digest.update(hashlib.blake2b(sample.image_path.read_bytes(), digest_size=16).digest())
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
    image = cv2.imread(str(sample.image_path), cv2.IMREAD_GRAYSCALE)
    if image is None:
        return "unreadable or corrupt image"
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


def build_cache(
    index: DatasetIndex, config: Preprocessing, directory: Path, *, progress: bool = True
) -> list[DataIssue]:
    """Decode and preprocess every sample into `directory` (atomically); returns unreadable samples.
    StorageError, before any work, when the entry's size (known from the image count and size) does not fit."""
    from tqdm.auto import tqdm

    require_space(directory.parent, cache_bytes(len(index.samples), config.image_size))

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        jobs = pool.map(lambda s: process_sample(s, config), index.samples)
        results = list(tqdm(jobs, total=len(index.samples), desc="preprocess", disable=not progress))
    kept = [(s, r) for s, r in zip(index.samples, results, strict=True) if not isinstance(r, str)]
    issues = [DataIssue(s.image_path, r)
              for s, r in zip(index.samples, results, strict=True) if isinstance(r, str)]
    if not kept:  # the readers never return an empty index, so every image failed to decode
        raise DataError(f"{issues[0]}; none of the {len(issues)} images could be decoded")
    arrays = {
        "images": np.stack([r[0] for _, r in kept]),
        "masks": np.stack([r[1] for _, r in kept]),
        "polygons": np.stack([r[2] for _, r in kept]).reshape(-1, 8),
        "labels": np.array([-1 if s.class_id is None else s.class_id for s, _ in kept], dtype=np.int64),
        "splits": np.array([SPLITS.index(s.split) for s, _ in kept], dtype=np.int8),
    }
    meta = {
        "classes": index.classes,
        "paths": [str(s.image_path) for s, _ in kept],
        "issues": [{"path": str(i.path), "message": i.message, "line": i.line} for i in issues],
        "preprocessing": config.cache_fields(),
    }
    size = sum(a.nbytes for a in arrays.values())
    with atomic_folder(directory, keep_existing=True, size=size) as staging:
        for name, array in arrays.items():
            np.save(staging / f"{name}.npy", array)
        (staging / META_FILE).write_text(json.dumps(meta))
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
