"""How close a raysearch trial comes to a plain PyTorch loop on the same device, and what augmentation costs.

In one process, on the GPU when there is one (else the CPU), with the same model, batch size, image size
and data (the real bone-fracture split when present, else the phantom X-rays):

(a) a plain PyTorch loop on tensors already on the device (normalised once, indexed per batch);
(b) a raysearch trial (the `Trainer`, one worker, with an in-process session) at `augment` 0 and 0.5;

each in fp32 and in the default precision (`auto`: bf16 on a GPU that supports it, fp32 on a CPU, where
the two are the same run). An epoch is training plus validation in both; images/s = training images ÷
the median epoch time of the epochs after the first. The runs are interleaved round by round so that a
noisy machine slows them alike. The last two lines are the ones scripts read:

    augment cost: <epoch time at augment 0.5 ÷ epoch time at augment 0, default precision>
    trial vs plain loop: <trial images/s ÷ plain-loop images/s, augment 0, default precision>

With `--json PATH`, the images/s of every setting and its ratio to the plain loop of its precision are also
written there (benchmarks/gpu_acceptance.py reads them).

    python benchmarks/gpu_throughput.py [--image-size 64] [--model vgg] [--batch-size 32] [--epochs 4] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from raysearch.core.files import write_text_atomic
from raysearch.data.cache import CachedDataset, dataset_fingerprint, ensure_cache, load_cache
from raysearch.data.formats import load_dataset
from raysearch.data.phantom import PhantomSpec, write_phantom
from raysearch.tasks import create_task
from raysearch.tasks.base import TaskContext
from raysearch.training.batches import make_batch
from raysearch.training.hparams import defaults, preprocessing_of
from raysearch.training.precision import AUTOCAST_DTYPES, resolve_precision
from raysearch.training.session import LocalSession
from raysearch.training.trainer import LoopSettings, Trainer
from raysearch.training.validation import baseline_apd

REAL_DATASET = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "bone-fracture-yolo"
TASK = "multitask"


def synchronise(device: torch.device) -> None:
    """Wait for the device's queued work (timing boundaries only)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PlainLoop:
    """A hand-written training loop over device-resident tensors: the ceiling a trial is measured against."""

    def __init__(self, data: CachedDataset, hp: dict[str, Any], device: torch.device, precision: str) -> None:
        torch.manual_seed(0)
        self.task, self.hp, self.device = create_task(TASK), hp, device
        train_rows = self.task.usable(data, data.indices("train"))
        val_rows = self.task.usable(data, data.indices("val"))
        self.context = TaskContext(len(data.classes), hp["channels"], baseline_apd(data, train_rows, val_rows))
        self.train = make_batch(data, train_rows, hp, device)
        self.val = make_batch(data, val_rows, hp, device)
        self.model = self.task.build_model(hp, self.context).to(device)
        if device.type == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=hp["lr"])
        self.autocast = torch.autocast(device.type, dtype=AUTOCAST_DTYPES.get(precision),
                                       enabled=precision != "fp32")
        self.images = len(train_rows)

    def epoch(self) -> float:
        """Seconds for one epoch of training and validation."""
        synchronise(self.device)
        started = time.perf_counter()
        self.model.train()
        order = torch.randperm(self.images, device=self.device)
        size = self.hp["batch_size"]
        for start in range(0, self.images - 1, size):
            index = order[start : start + size]
            batch = {k: v.index_select(0, index) for k, v in self.train.items()}
            with self.autocast:
                loss = self.task.loss(self.model, self.model(batch["image"]), batch, self.hp, self.context)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        self.model.eval()
        with torch.no_grad(), self.autocast:
            for start in range(0, len(self.val["image"]), size):
                self.model(self.val["image"][start : start + size])
        synchronise(self.device)
        return time.perf_counter() - started


class Trial:
    """A raysearch trial run epoch by epoch through the Trainer, as a one-worker Tune trial runs it."""

    def __init__(self, data: CachedDataset, hp: dict[str, Any], device: torch.device, threads: int) -> None:
        self.session = LocalSession(device)
        settings = LoopSettings(TASK, str(data.directory), max_epochs=1, seed=0, threads=threads)
        self.trainer = Trainer(hp, settings, self.session)
        self.trainer.setup()
        self.images = len(self.trainer.train_rows)

    def epoch(self) -> float:
        """Seconds for one epoch as the trial reports it (training and validation)."""
        self.trainer.run_epoch()
        return self.session.history[-1]["epoch_time_s"]


def dataset(work: Path, data: Path | None, image_size: int) -> tuple[CachedDataset, str]:
    """The cache of the real dataset when present (else the phantom), and where it came from."""
    root = data if data is not None else REAL_DATASET if REAL_DATASET.is_dir() else None
    if root is None:
        root, label = write_phantom(work / "phantom", PhantomSpec(train=480, val=120, test=24), progress=False), \
            "phantom (480 train)"
    else:
        label = str(root)
    index = load_dataset(root)
    hp = {**defaults(create_task(TASK).hyperparameters), "image_size": image_size}
    directory, _ = ensure_cache(index, dataset_fingerprint(index), preprocessing_of(hp), work / "cache",
                                progress=False)
    return load_cache(directory), label


def main() -> None:
    """Measure every setting round by round, print the table, then the two ratio lines."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="dataset (default: the real split when present, else phantom)")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--model", default="vgg", help="vgg (the default small CNN) or a timm name, e.g. resnet18")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=4, help="epochs per setting (the first is not counted)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (a trial's default: 1 per CPU)")
    parser.add_argument("--json", type=Path, help="also write every setting's images/s and ratio here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    default = resolve_precision("auto", device)
    precisions = list(dict.fromkeys(["fp32", default]))
    with tempfile.TemporaryDirectory() as tmp:
        data, label = dataset(Path(tmp), args.data, args.image_size)
        hp = {**defaults(create_task(TASK).hyperparameters), "image_size": args.image_size, "model": args.model,
              "batch_size": args.batch_size}
        runs: dict[tuple[str, str], Any] = {}
        for precision in precisions:
            runs[(precision, "plain loop")] = PlainLoop(data, hp, device, precision)
            for strength in (0.0, 0.5):
                runs[(precision, f"trial, augment {strength:g}")] = Trial(
                    data, {**hp, "precision": precision, "augment": strength}, device, args.threads)
        times: dict[tuple[str, str], list[float]] = {key: [] for key in runs}
        for _ in range(args.epochs):
            for key, run in runs.items():
                times[key].append(run.epoch())
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "CPU"
        print(f"device: {device} ({name}), {os.cpu_count()} CPUs, {args.threads} thread(s); data: {label}; "
              f"{TASK}, model {args.model}, batch {args.batch_size}, {args.image_size} px, {args.epochs} epochs "
              "(median of all but the first)")
        rate = {key: runs[key].images / float(np.median(t[1:] or t)) for key, t in times.items()}
        for (precision, setting), images_per_s in rate.items():
            print(f"  {precision:>5} {setting:<20} epoch {runs[(precision, setting)].images / images_per_s:7.3f} s"
                  f"  {images_per_s:9.1f} images/s  ÷ plain loop {images_per_s / rate[(precision, 'plain loop')]:5.2f}")
        print(f"augment cost: {rate[(default, 'trial, augment 0')] / rate[(default, 'trial, augment 0.5')]:.2f}")
        print(f"trial vs plain loop: {rate[(default, 'trial, augment 0')] / rate[(default, 'plain loop')]:.2f}")
        if args.json is not None:
            settings = [{"precision": precision, "setting": setting, "images_per_s": images_per_s,
                         "vs_plain_loop": images_per_s / rate[(precision, "plain loop")]}
                        for (precision, setting), images_per_s in rate.items()]
            write_text_atomic(json.dumps({"device": f"{device} ({name})", "default_precision": default,
                                          "settings": settings}, indent=1), args.json)


if __name__ == "__main__":
    main()
