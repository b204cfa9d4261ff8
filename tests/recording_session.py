"""An in-process, one-worker runtime for the training loop (the loop's `Session` protocol, no Ray): it keeps
every epoch's metrics (and whether it improved the trial's score), and can resume from a checkpoint folder it
was given."""

from __future__ import annotations

import shutil
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch


class RecordingSession:
    """Runs the loop in this process on the CPU; `metrics` holds what each epoch reported, `kept` (when given)
    receives a copy of each reported checkpoint folder as `epoch_<N>`."""

    world_rank, world_size, device = 0, 1, torch.device("cpu")

    def __init__(self, kept: Path | None = None, resume_from: Path | None = None) -> None:
        self.metrics: list[dict[str, Any]] = []
        self.improved: list[bool] = []
        self.kept, self.resume_from = kept, resume_from

    def restored(self) -> nullcontext[Path | None]:
        return nullcontext(self.resume_from)

    def report(self, metrics: dict[str, Any], checkpoint: Path | None, *, improved: bool = False) -> None:
        self.metrics.append(metrics)
        self.improved.append(improved)
        if self.kept is not None and checkpoint is not None:
            shutil.copytree(checkpoint, self.kept / f"epoch_{metrics['epoch']}")
