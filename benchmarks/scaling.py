"""How raysearch scales: one trial over 1 and 2 Train workers, and a study with 1 and 2 trials at once.

(a) Data parallelism: the steady-state images/s of one trial (median epoch after the first) with
    --workers-per-trial 1 and 2, same model, data and global batch size.
(b) Trial parallelism: trials per hour of a study of one-worker trials with --concurrency 1 and 2, every
    trial running all its epochs (ASHA's grace period is the whole budget), wall time of the search.
Prints the figures and each ratio (2 over 1). On a GPU machine pass --gpus-per-worker (e.g. 0.5, so that
two workers or two trials share one GPU).

    python benchmarks/scaling.py [--epochs 4] [--trials 4] [--image-size 64] [--gpus-per-worker 0]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import pyarrow.parquet as pq
import yaml

from raysearch.data.phantom import PhantomSpec, write_phantom
from raysearch.data.yolo import read_yolo
from raysearch.study.run import StudyOutcome, run_study
from raysearch.study.spec import StudySpec

FIXED = {"model": "vgg", "conv_layers": 4, "pool_every": 1, "width": 16, "batch_norm": True, "dropout": 0.2,
         "lr": 1e-3, "batch_size": 32, "scheduler": "none", "optimizer": "adam", "patience": 0}


def study(data: Path, results: Path, name: str, *, workers: int, concurrency: int, trials: int, epochs: int,
          image_size: int, gpus_per_worker: float) -> StudyOutcome:
    """One study of the fixed configuration, every trial running all `epochs`."""
    space = results / "fixed.yaml"
    results.mkdir(parents=True, exist_ok=True)
    space.write_text(yaml.safe_dump({"task": "multitask", "fixed": FIXED}))
    spec = StudySpec(task="multitask", data=str(data), space=str(space), name=name, results=str(results),
                     trials=trials, max_epochs=epochs, image_size=image_size, workers_per_trial=workers,
                     gpus_per_worker=gpus_per_worker, concurrency=concurrency, grace_period=epochs)
    return run_study(spec, progress=False, out=open(os.devnull, "w"))


def trial_throughput(outcome: StudyOutcome, train_images: int) -> float:
    """Steady-state images/s: train images over the median epoch time, epochs after the first."""
    epochs = pq.read_table(outcome.directory / "epochs.parquet").to_pandas()
    return train_images / float(epochs[epochs["epoch"] > 1]["epoch_time_s"].median())


def main() -> None:
    """Measure and print the figures and ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--gpus-per-worker", type=float, default=0.0)
    args = parser.parse_args()
    settings = {"epochs": args.epochs, "image_size": args.image_size, "gpus_per_worker": args.gpus_per_worker}
    with tempfile.TemporaryDirectory() as tmp:
        data = write_phantom(Path(tmp, "phantom"), PhantomSpec(train=480, val=120, test=24), progress=False)
        results = Path(tmp, "results")
        train_images = len(read_yolo(data).split("train"))
        print(f"model: VGG (4 conv, width 16), global batch 32, {args.image_size}px, {train_images} train images, "
              f"{args.epochs} epochs, {os.cpu_count()} CPUs, {args.gpus_per_worker:g} GPU per worker")

        rate = {w: trial_throughput(study(data, results, f"workers-{w}", workers=w, concurrency=1, trials=1,
                                          **settings), train_images) for w in (1, 2)}
        print(f"(a) one trial: 1 worker {rate[1]:7.1f} img/s | 2 workers {rate[2]:7.1f} img/s | "
              f"ratio 2/1 {rate[2] / rate[1]:.2f}")

        hourly = {}
        for concurrency in (1, 2):
            outcome = study(data, results, f"concurrency-{concurrency}", workers=1, concurrency=concurrency,
                            trials=args.trials, **settings)
            hourly[concurrency] = args.trials / outcome.search_seconds * 3600
        print(f"(b) {args.trials} one-worker trials: concurrency 1 {hourly[1]:6.0f} trials/h | concurrency 2 "
              f"{hourly[2]:6.0f} trials/h | ratio 2/1 {hourly[2] / hourly[1]:.2f}")


if __name__ == "__main__":
    main()
