"""What the preprocessing cache saves, and how much of a training step waits for data.

On the real dataset (labelled training images), with CLAHE on:
(a) one epoch of training batches from the cache (memory-mapped arrays → normalised tensors) versus
    decoding and preprocessing every image again in every batch (what a loop without the cache does),
    printed as a ratio;
(b) the share of a training step spent in `make_batch` (waiting for data) next to the forward/backward
    pass and optimiser step of the default model (the VGG-style CNN of the multitask task), without
    augmentation and with it.

Everything runs on one thread (a trial's default), so each figure is given twice: wall-clock seconds, and
the thread's CPU seconds, which other processes on a shared machine do not inflate.

    python benchmarks/data_pipeline.py [--data ../shared/datasets/bone-fracture-yolo] [--image-size 64]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from raysearch.data.augment import augmentation_for
from raysearch.data.cache import CachedDataset, dataset_fingerprint, ensure_cache, load_cache, process_sample
from raysearch.data.formats import load_dataset
from raysearch.data.preprocess import normalise
from raysearch.data.samples import Sample
from raysearch.tasks import create_task
from raysearch.tasks.base import Batch, TaskContext
from raysearch.training.batches import make_batch, train_batches
from raysearch.training.hparams import defaults, preprocessing_of

REAL_DATASET = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "bone-fracture-yolo"


def decoded_batch(samples: list[Sample], hp: dict[str, Any]) -> Batch:
    """The batch `make_batch` would give, computed from the image files (decode + preprocess each one)."""
    config = preprocessing_of(hp)
    processed = [process_sample(sample, config) for sample in samples]
    images, masks, polygons = (np.stack([p[k] for p in processed]) for k in range(3))
    return {"image": normalise(images, config),
            "label": torch.tensor([s.class_id for s in samples]),
            "polygon": torch.from_numpy(np.nan_to_num(polygons.reshape(-1, 8))),
            "mask": torch.from_numpy(masks).unsqueeze(1).float()}


def now() -> np.ndarray:
    """(wall-clock, this thread's CPU) seconds."""
    return np.array([time.perf_counter(), time.thread_time()])


def epoch_seconds(batches: list[np.ndarray], deliver: Callable[[np.ndarray], Batch], repeats: int) -> np.ndarray:
    """Median (wall, CPU) seconds to deliver every batch of one epoch."""
    timings = []
    for _ in range(repeats):
        started = now()
        for rows in batches:
            deliver(rows)
        timings.append(now() - started)
    return np.median(timings, axis=0)


def step_times(data: CachedDataset, batches: list[np.ndarray], hp: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Median (wall, CPU) seconds per step waiting for data (make_batch) and computing (forward, backward, step)."""
    task = create_task("multitask")
    context = TaskContext(len(data.classes), hp["channels"], 0.2)
    model = task.build_model(hp, context)
    optimizer = torch.optim.Adam(model.parameters(), lr=hp["lr"])
    augmentation = augmentation_for(hp["augment"])
    waits, computes = [], []
    model.train()
    for rows in batches:
        started = now()
        batch = make_batch(data, rows, hp, torch.device("cpu"), augmentation)
        loaded = now()
        loss = task.loss(model, model(batch["image"]), batch, hp, context)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        waits.append(loaded - started)
        computes.append(now() - loaded)
    return np.median(waits[2:], axis=0), np.median(computes[2:], axis=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REAL_DATASET)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (a trial's default: 1)")
    parser.add_argument("--steps", type=int, default=40, help="training steps timed per setting")
    parser.add_argument("--augment", type=float, default=0.5, help="augmentation strength for the second setting")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    torch.manual_seed(0)

    index = load_dataset(args.data)
    task = create_task("multitask")
    hp = {**defaults(task.hyperparameters), "image_size": args.image_size, "batch_size": args.batch_size,
          "clahe": True}
    by_path = {str(s.image_path): s for s in index.samples}
    with tempfile.TemporaryDirectory(prefix="raysearch-bench-") as tmp:
        started = time.perf_counter()
        directory, _ = ensure_cache(index, dataset_fingerprint(index), preprocessing_of(hp), Path(tmp), progress=False)
        build = time.perf_counter() - started
        data = load_cache(directory)
        train_rows = data.indices("train")
        batches = list(train_batches(train_rows, hp, 0, 0, 0, 1))
        cached = epoch_seconds(batches, lambda rows: make_batch(data, rows, hp, torch.device("cpu")), repeats=3)
        decoded = epoch_seconds(
            batches, lambda rows: decoded_batch([by_path[data.paths[r]] for r in np.sort(rows)], hp), repeats=1)
        print(f"dataset: {index.root} ({len(train_rows)} labelled training images, {len(batches)} batches of "
              f"{args.batch_size}), image size {args.image_size}, letterbox + CLAHE, {args.threads} thread(s)")
        print(f"cache build, once per preprocessing configuration ({cv2.getNumThreads()} OpenCV threads, "
              f"pool of workers): {build:.1f} s")
        print("                                        wall-clock      thread CPU")
        print(f"one epoch of batches from the cache:    {cached[0]:8.3f} s      {cached[1]:8.3f} s")
        print(f"one epoch decoding + preprocessing:     {decoded[0]:8.3f} s      {decoded[1]:8.3f} s")
        ratio = decoded / cached
        print(f"ratio: the cache delivers an epoch {ratio[0]:.0f}x faster (CPU: {ratio[1]:.0f}x)")
        steps = (batches * (args.steps // len(batches) + 1))[: args.steps]
        for strength in (0.0, args.augment):
            wait, compute = step_times(data, steps, {**hp, "augment": strength})
            share = wait / (wait + compute)
            print(f"training step, augment {strength:g}: waiting for data {wait[0] * 1000:.1f} ms, forward/backward/"
                  f"step {compute[0] * 1000:.1f} ms -> {share[0]:.1%} of the step waits for data "
                  f"(CPU: {wait[1] * 1000:.1f} ms / {compute[1] * 1000:.1f} ms -> {share[1]:.1%})")


if __name__ == "__main__":
    main()
