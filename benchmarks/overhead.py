"""What a raysearch trial costs over a plain PyTorch loop: steady-state throughput and fixed overhead.

Runs the same model, data and batch size (a) in a plain PyTorch training loop in this process and
(b) as raysearch trials (one-worker: in the Tune trial; two-worker: a Ray Train TorchTrainer), then
prints the steady-state images/s ratio (b)/(a) and the fixed per-trial overhead in seconds:
(search wall time − Σ epoch times) / trials, with trials run one at a time.

    python benchmarks/overhead.py [--epochs 4] [--trials 3] [--image-size 64]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
import yaml
from torch.nn import functional as F

from raysearch.data.cache import dataset_fingerprint, ensure_cache, load_cache
from raysearch.data.phantom import PhantomSpec, write_phantom
from raysearch.data.preprocess import Preprocessing, normalise
from raysearch.data.yolo import read_yolo
from raysearch.study.run import run_study
from raysearch.study.spec import StudySpec
from raysearch.tasks import create_task
from raysearch.tasks.base import TaskContext
from raysearch.training.hparams import defaults

FIXED = {"model": "vgg", "conv_layers": 4, "pool_every": 1, "width": 16, "batch_norm": True, "dropout": 0.2,
         "lr": 1e-3, "batch_size": 32, "scheduler": "none", "optimizer": "adam"}


def plain_loop(cache_dir: Path, image_size: int, epochs: int, threads: int) -> float:
    """Images/s of a hand-written PyTorch loop (train + validation per epoch), epochs after the first."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    data = load_cache(cache_dir)
    train_rows, val_rows = data.indices("train"), data.indices("val")
    task = create_task("multitask")
    hp = {**defaults(task.hyperparameters), **FIXED, "image_size": image_size}
    model = task.build_model(hp, TaskContext(len(data.classes), 1, 0.2))
    optimizer = torch.optim.Adam(model.parameters(), lr=hp["lr"])
    preprocessing = Preprocessing(image_size=image_size)
    times = []
    for epoch in range(epochs):
        started = time.perf_counter()
        model.train()
        order = np.random.default_rng(epoch).permutation(train_rows)
        for start in range(0, len(order), hp["batch_size"]):
            rows = np.sort(order[start : start + hp["batch_size"]])
            images = normalise(data.images[rows], preprocessing)
            labels = torch.from_numpy(np.asarray(data.labels[rows]))
            polygons = torch.from_numpy(np.asarray(data.polygons[rows]))
            output = model(images)
            loss = F.cross_entropy(output["logits"], labels) + F.smooth_l1_loss(output["polygon"], polygons)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            for start in range(0, len(val_rows), hp["batch_size"]):
                model(normalise(data.images[val_rows[start : start + hp["batch_size"]]], preprocessing))
        times.append(time.perf_counter() - started)
    return len(train_rows) / float(np.median(times[1:]))


def raysearch_trials(
    data: Path, results: Path, image_size: int, epochs: int, trials: int, workers: int
) -> tuple[float, float]:
    """(steady-state images/s, fixed seconds per trial) of raysearch trials run one at a time."""
    space = results / "fixed.yaml"
    space.write_text(yaml.safe_dump({"task": "multitask", "fixed": FIXED}))
    spec = StudySpec(task="multitask", data=str(data), space=str(space), name=f"overhead-{workers}w",
                     results=str(results), trials=trials, max_epochs=epochs, image_size=image_size,
                     workers_per_trial=workers, concurrency=1, grace_period=epochs)
    outcome = run_study(spec, progress=False, out=open(os.devnull, "w"))
    epoch_table = pq.read_table(outcome.directory / "epochs.parquet").to_pandas()
    train_images = len(read_yolo(data).split("train"))
    steady = epoch_table[epoch_table["epoch"] > 1]["epoch_time_s"].median()
    fixed = (outcome.search_seconds - epoch_table["epoch_time_s"].sum()) / trials
    return train_images / steady, fixed


def measure(workers: int, epochs: int, trials: int, image_size: int) -> None:
    """Print one line: the plain loop against raysearch trials with `workers` workers each."""
    with tempfile.TemporaryDirectory() as tmp:
        data = write_phantom(Path(tmp, "phantom"), PhantomSpec(train=480, val=120, test=24), progress=False)
        index = read_yolo(data)
        cache_dir, _ = ensure_cache(index, dataset_fingerprint(index), Preprocessing(image_size=image_size),
                                    Path(tmp, "results", "cache"), progress=False)
        plain = plain_loop(cache_dir, image_size, epochs, threads=workers)
        trial_rate, fixed = raysearch_trials(data, Path(tmp, "results"), image_size, epochs, trials, workers)
        print(f"{workers}-worker trial: plain loop ({workers} thread(s)) {plain:7.1f} img/s | "
              f"raysearch trial {trial_rate:7.1f} img/s | ratio (b)/(a) {trial_rate / plain:.2f} | "
              f"fixed overhead {fixed:.1f} s/trial", flush=True)


def main() -> None:
    """Measure and print the ratios; each worker count runs in its own process (its own local Ray)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--workers", type=int, help="measure only this worker count (in this process)")
    args = parser.parse_args()
    if args.workers:
        measure(args.workers, args.epochs, args.trials, args.image_size)
        return
    print(f"model: default VGG (4 conv, width 16), batch 32, {args.image_size}px, 480 train images, "
          f"{args.epochs} epochs, {args.trials} trials per setting, {os.cpu_count()} CPUs", flush=True)
    for workers in (1, 2):
        subprocess.run([sys.executable, __file__, "--workers", str(workers), "--epochs", str(args.epochs),
                        "--trials", str(args.trials), "--image-size", str(args.image_size)], check=True,
                       stderr=subprocess.DEVNULL)


if __name__ == "__main__":
    main()
