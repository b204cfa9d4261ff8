"""How much faster the vectorised bootstrap (raysearch.tasks.bootstrap) is than resampling in a loop and
recomputing each figure with scikit-learn, for the classification figures of one model.

    python benchmarks/bootstrap_speed.py [--images 500] [--classes 3] [--resamples 1000] [--loop 100]

The loop is timed on `--loop` resamples and scaled to `--resamples`; it prints both times and their ratio.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from sklearn.metrics import accuracy_score, balanced_accuracy_score, cohen_kappa_score, f1_score, roc_auc_score

from raysearch.tasks.bootstrap import ImageFigures, replicates, resample_counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--classes", type=int, default=3)
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--loop", type=int, default=100)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    labels = rng.integers(0, args.classes, args.images)
    logits = rng.normal(size=(args.images, args.classes)) + np.eye(args.classes)[labels]
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    figures = ImageFigures(probabilities=probabilities, labels=labels)

    start = time.perf_counter()
    counts = resample_counts(labels, args.resamples, seed=0)
    replicates(counts, figures)
    vectorised = time.perf_counter() - start

    start = time.perf_counter()
    for row in resample_counts(labels, args.loop, seed=0):
        index = np.repeat(np.arange(args.images), row.astype(int))
        truth, scores = labels[index], probabilities[index]
        predicted = scores.argmax(axis=1)
        accuracy_score(truth, predicted), balanced_accuracy_score(truth, predicted)
        f1_score(truth, predicted, average="macro"), cohen_kappa_score(truth, predicted)
        for c in range(args.classes):
            roc_auc_score(truth == c, scores[:, c])
    looped = (time.perf_counter() - start) * args.resamples / args.loop
    print(f"{args.images} images, {args.classes} classes, {args.resamples} resamples: vectorised {vectorised:.2f} s, "
          f"scikit-learn loop {looped:.1f} s (scaled from {args.loop}); {looped / vectorised:.0f}x faster")


if __name__ == "__main__":
    main()
