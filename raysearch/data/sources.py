"""Which images come from the same source radiograph: Roboflow `.rf.` file-name stems and perceptual near-duplicates.

One definition, used by the audit (`raysearch data audit`) and by the split policies (`raysearch run --splits`).

Near-duplicates: a 256-bit DCT perceptual hash (imagehash.phash, hash_size 16) within `NEAR_DUPLICATE_BITS`
bits. On the bone-fracture export, Roboflow's augmented copies of one source image lie 0-30 bits apart,
while no two different radiographs come closer than 40 bits. Roboflow names every exported copy
`<source>_<ext>.rf.<hash>.<ext>`: the part before `.rf.` names the source image.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

from raysearch.data.images import ImageError, read_grey

HASH_SIZE = 16
NEAR_DUPLICATE_BITS = 32
ROBOFLOW_MARK = ".rf."


def perceptual_hash(raw: np.ndarray) -> np.ndarray:
    """The perceptual hash (packed into uint64 words) of a decoded image of any depth and channel count."""
    import imagehash
    from PIL import Image

    eight_bit = raw if raw.dtype == np.uint8 else cv2.convertScaleAbs(raw, alpha=255.0 / max(float(raw.max()), 1.0))
    grey = eight_bit if eight_bit.ndim == 2 else cv2.cvtColor(eight_bit[..., :3], cv2.COLOR_BGR2GRAY)
    bits = imagehash.phash(Image.fromarray(grey), hash_size=HASH_SIZE).hash
    return np.packbits(bits).view(np.uint64)


def hash_file(path: Path) -> np.ndarray | None:
    """The perceptual hash of one image file (its 8-bit grey, `raysearch.data.images`); None when it cannot be
    decoded."""
    try:
        return perceptual_hash(read_grey(path)[0])
    except ImageError:
        return None


def near_pairs(a: np.ndarray, b: np.ndarray, limit: int = NEAR_DUPLICATE_BITS,
               chunk: int = 256) -> list[tuple[int, int, int]]:
    """(i, j, distance) for every hash a[i], b[j] (rows of packed uint64 bits) within `limit` bits."""
    pairs = []
    for start in range(0, len(a), chunk):
        distance = np.bitwise_count(a[start : start + chunk, None, :] ^ b[None, :, :]).sum(axis=2)
        for i, j in zip(*np.nonzero(distance <= limit), strict=True):
            pairs.append((start + int(i), int(j), int(distance[i, j])))
    return pairs


def roboflow_source(path: Path | str) -> str | None:
    """The source image a Roboflow export copy was made from (`xray_jpg.rf.1a2b.jpg` → `xray_jpg`), else None."""
    name = Path(path).name
    return name.split(ROBOFLOW_MARK, 1)[0] if ROBOFLOW_MARK in name else None


def group_sources(paths: Sequence[Path | str], hashes: Sequence[np.ndarray | None]) -> np.ndarray:
    """A source-group id per image: images sharing a Roboflow source stem or lying within the near-duplicate
    distance of each other (transitively) share a group; an id is the smallest index in its group."""
    parent = list(range(len(paths)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def join(i: int, j: int) -> None:
        a, b = root(i), root(j)
        parent[max(a, b)] = min(a, b)

    first_of: dict[str, int] = {}
    for i, path in enumerate(paths):
        stem = roboflow_source(path)
        if stem is not None:
            join(first_of.setdefault(stem, i), i)
    decoded = [i for i, h in enumerate(hashes) if h is not None]
    if decoded:
        stacked = np.stack([hashes[i] for i in decoded])
        for i, j, _ in near_pairs(stacked, stacked):
            if i < j:
                join(decoded[i], decoded[j])
    return np.array([root(i) for i in range(len(paths))], dtype=np.int64)


def source_groups(paths: Sequence[Path | str], *, progress: bool = True) -> np.ndarray:
    """Hash every image (threaded, with a progress bar) and group them by source (`group_sources`)."""
    from tqdm.auto import tqdm

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        hashes = list(tqdm(pool.map(hash_file, [Path(p) for p in paths]), total=len(paths),
                           desc="splits: hash images by source", disable=not progress))
    return group_sources(paths, hashes)
