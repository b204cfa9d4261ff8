"""How raysearch's costs grow with the data and the trials (docs/performance.md).

For each size N, a generated class-folder set of N radiograph-like images (smooth anatomy-like phantoms, JPEG,
`--side` x 1.25 `--side` px, 3 classes, 2 % of them near-duplicate copies: shifted in brightness, re-encoded),
then the start-up work of `raysearch run` on it: scanning, source groups under the default split policy
(perceptual hashes), the data fingerprint. Printed per size:

- first start-up s: a fresh results root (every image decoded and hashed, the image index written);
- second start-up s: again on the same root (the image index read; nothing decoded); its share of the first;
- near-duplicate search s: `near_pairs` over all N hashes (multi-index hashing), beside the all-pairs search;
- cache build s: the preprocessing cache at `--image-size` px (`build_cache`), and its size on disk;

then the growth exponent of each (the slope of log seconds against log N, least squares). With `--study-trials T`
it also runs a T-trial study on the built-in phantom data (32 px, 2 epochs, default `--keep-checkpoints`) and
prints the disk per finished trial outside the top K against its best weights.

    python benchmarks/scale.py [--sizes 1000,4000,16000] [--side 2000] [--image-size 224] [--study-trials 10]
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import cv2
import numpy as np

from raysearch.core.layout import BEST_FILE, CHECKPOINT_GLOB, StudyFolder, image_index_file
from raysearch.data.cache import build_cache, dataset_fingerprint
from raysearch.data.imageindex import image_facts
from raysearch.data.loading import load_dataset
from raysearch.data.preprocess import Preprocessing
from raysearch.data.records import SplitRatios
from raysearch.data.sources import near_pairs
from raysearch.data.splits import apply_split_policy
from raysearch.study.retention import DEFAULT_KEEP, folder_size, parse_keep

CLASSES = ("elbow", "wrist", "shoulder")
DUPLICATE_SHARE = 0.02
ORIGINALS = 200  # duplicates copy one of the first ORIGINALS images


def phantom(rng: np.random.Generator, side: int) -> np.ndarray:
    """One radiograph-like grey image: a soft background, two or three bright bone-like ellipses, noise."""
    height, width = int(side * 1.25), side
    small = cv2.resize(rng.random((10, 8)).astype(np.float32), (width // 8, height // 8))
    image = cv2.resize(small, (width, height)) * 60 + 20
    for _ in range(rng.integers(2, 4)):
        centre = (int(rng.integers(width // 4, 3 * width // 4)), int(rng.integers(height // 5, 4 * height // 5)))
        axes = (int(rng.integers(width // 20, width // 8)), int(rng.integers(height // 6, height // 3)))
        cv2.ellipse(image, centre, axes, float(rng.uniform(0, 180)), 0, 360, float(rng.uniform(120, 200)), -1)
    image = cv2.GaussianBlur(image, (0, 0), side / 200) + rng.normal(0, 4, image.shape).astype(np.float32)
    return image.clip(0, 255).astype(np.uint8)


def _image(index: int, side: int, seed: int) -> np.ndarray:
    """Image `index` of a generated set: a phantom of its own seed, or (DUPLICATE_SHARE of them) a brighter copy
    of one of the first ORIGINALS images' phantoms."""
    rng = np.random.default_rng((seed, index))
    if index and rng.random() < DUPLICATE_SHARE:
        source = int(rng.integers(min(index, ORIGINALS)))
        return cv2.add(phantom(np.random.default_rng((seed, source, 0)), side), int(rng.integers(5, 20)))
    return phantom(np.random.default_rng((seed, index, 0)), side)


def _write_images(root: Path, indices: range, side: int, seed: int) -> None:
    for i in indices:
        path = root / CLASSES[i % len(CLASSES)] / f"{i:06d}.jpg"
        cv2.imwrite(str(path), _image(i, side, seed), [cv2.IMWRITE_JPEG_QUALITY, 90])


def write_set(root: Path, count: int, side: int, seed: int = 0) -> None:
    """`count` images in class folders under `root`, written by one process per CPU (kept between runs:
    generated once per size and side)."""
    if (root / ".complete").is_file():
        return
    for name in CLASSES:
        (root / name).mkdir(parents=True, exist_ok=True)
    step = 256
    with ProcessPoolExecutor() as pool:
        for done in [pool.submit(_write_images, root, range(start, min(start + step, count)), side, seed)
                     for start in range(0, count, step)]:
            done.result()
    (root / ".complete").touch()


def start_up(data: Path, results: Path) -> tuple[float, list]:
    """What `raysearch run` does with the images before Ray starts; seconds, and the samples."""
    started = time.perf_counter()
    index = load_dataset(str(data), format="class-folders", results=results, progress=False, out=io.StringIO())
    index_file = image_index_file(results, index.root)
    outcome = apply_split_policy(index, None, ratios=SplitRatios(), seed=0, index_file=index_file, progress=False)
    dataset_fingerprint(outcome.index, index_file, progress=False)
    return time.perf_counter() - started, outcome.index


def all_pairs_seconds(hashes: np.ndarray, chunk: int = 256) -> float:
    """The all-pairs search that `near_pairs` replaced (chunks of rows against all), timed."""
    started = time.perf_counter()
    for start in range(0, len(hashes), chunk):
        np.nonzero(np.bitwise_count(hashes[start:start + chunk, None, :] ^ hashes[None]).sum(axis=2) <= 32)
    return time.perf_counter() - started


def exponent(sizes: list[int], seconds: list[float]) -> float:
    """The slope of log seconds against log size."""
    return float(np.polyfit(np.log(sizes), np.log(np.maximum(seconds, 1e-6)), 1)[0])


def measure(sizes: list[int], side: int, image_size: int, work: Path) -> None:
    rows = []
    for size in sizes:
        data = work / f"set-{size}-{side}"
        generated = time.perf_counter()
        write_set(data, size, side)
        generated = time.perf_counter() - generated
        results = Path(tempfile.mkdtemp(dir=work, prefix="results-"))
        first, index = start_up(data, results)
        second, _ = start_up(data, results)
        facts = image_facts([s.image_path for s in index.samples], image_index_file(results, index.root),
                            progress=False)
        hashes = np.stack([f.pixels.phash for f in facts])
        started = time.perf_counter()
        pairs = near_pairs(hashes, hashes)
        near = time.perf_counter() - started
        brute = all_pairs_seconds(hashes)
        cache = results / "cache-entry"
        started = time.perf_counter()
        build_cache(index, Preprocessing(image_size=image_size), cache, progress=False)
        built = time.perf_counter() - started
        rows.append((size, first, second, near, brute, built, folder_size(cache), len(pairs) - len(hashes)))
        print(f"N={size}: generated in {generated:.0f} s; first start-up {first:.2f} s, second {second:.2f} s "
              f"({100 * second / first:.1f} %); near-duplicates {near:.3f} s ({(len(pairs) - len(hashes)) // 2} "
              f"pairs; all pairs {brute:.3f} s); cache build {built:.1f} s, {folder_size(cache) / 1e6:.0f} MB",
              flush=True)
    print(f"\n| images | first start-up s | second start-up s | second/first | near-dup s (all-pairs s) "
          f"| cache build s ({image_size} px) | cache MB |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for size, first, second, near, brute, built, disk, _ in rows:
        print(f"| {size} | {first:.2f} | {second:.2f} | {100 * second / first:.1f} % | {near:.3f} ({brute:.3f}) "
              f"| {built:.1f} | {disk / 1e6:.0f} |")
    if len(rows) > 1:
        ns = [r[0] for r in rows]
        print(f"| growth exponent | {exponent(ns, [r[1] for r in rows]):.2f} | {exponent(ns, [r[2] for r in rows]):.2f}"
              f" | | {exponent(ns, [r[3] for r in rows]):.2f} ({exponent(ns, [r[4] for r in rows]):.2f}) "
              f"| {exponent(ns, [r[5] for r in rows]):.2f} | |")


def study_disk(trials: int, work: Path) -> None:
    """Run a `trials`-trial study on the phantom data and compare each non-top trial's disk to its best weights."""
    results = work / "study-results"
    command = [sys.executable, "-m", "raysearch", "run", "classification", "--trials", str(trials),
               "--max-epochs", "2", "--image-size", "32", "--results", str(results), "--name", "disk", "--quiet"]
    started = time.perf_counter()
    subprocess.run(command, check=True, env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}, stdout=subprocess.DEVNULL)
    folder = StudyFolder(results / "disk")
    top = set(folder.ranked_trials()["trial_id"].head(parse_keep(DEFAULT_KEEP)))
    ratios = []
    for trial in sorted(folder.train_dir.iterdir()):
        best = next(trial.glob(f"{CHECKPOINT_GLOB}/{BEST_FILE}"), None)
        if trial.name in top or best is None:
            continue
        tune_folder = next(folder.directory.glob(f"ray/*/{trial.name}"), None)
        disk = folder_size(trial) + (0 if tune_folder is None else _unshared(tune_folder, trial))
        ratios.append(disk / best.stat().st_size)
    size = folder_size(folder.directory) / 1e6
    print(f"\n{trials}-trial study in {time.perf_counter() - started:.0f} s: folder {size:.1f} MB; a finished trial "
          f"outside the top {len(top)} takes {min(ratios):.2f}-{max(ratios):.2f} x its best weights "
          f"({len(ratios)} trials; its Tune logs included)")


def _unshared(folder: Path, owner: Path) -> int:
    """The bytes of `folder` not hard links of files under `owner`."""
    owned = {(p.stat().st_dev, p.stat().st_ino) for p in owner.rglob("*") if p.is_file()}
    seen, total = set(owned), 0
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            key = (path.stat().st_dev, path.stat().st_ino)
            if key not in seen:
                seen.add(key)
                total += path.stat().st_size
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,4000,16000", help="image counts, comma-separated (\"\": none)")
    parser.add_argument("--side", type=int, default=2000, help="image width in px (height 1.25 x)")
    parser.add_argument("--image-size", type=int, default=224, help="the cache's image size")
    parser.add_argument("--study-trials", type=int, default=0, help="also run a study of this many trials")
    parser.add_argument("--work", type=Path, help="folder for the generated sets (kept; default: a temporary one)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="raysearch-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"{platform.node()}: {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}, "
          f"{time.strftime('%Y-%m-%d %H:%M %Z')}; sets under {work}", flush=True)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    if sizes:
        measure(sizes, args.side, args.image_size, work)
    if args.study_trials:
        study_disk(args.study_trials, work)


if __name__ == "__main__":
    main()
