"""A study: what the user asked for, resolved into one deterministic, reproducible description."""

from __future__ import annotations

import hashlib
import json
import platform
import re
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from raysearch.core.bundled import search_spaces_dir
from raysearch.core.layout import DEFAULT_RESULTS, describe_study
from raysearch.data.records import SplitRatios
from raysearch.data.splits import check_policy
from raysearch.errors import ConfigError
from raysearch.search.choices import SCHEDULERS, SEARCHERS
from raysearch.study.retention import DEFAULT_KEEP, parse_keep

VERSIONED_PACKAGES = ("raysearch", "ray", "torch", "torchvision", "timm", "segmentation-models-pytorch", "optuna",
                      "pyarrow", "opencv-python-headless", "numpy")

MAX_SEED = 2**32 - 1
AUTO = "auto"
DURATION_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "": 1.0}
RUNTIME_FIELDS = ("name", "results", "address", "concurrency", "wait_for_nodes", "log", "keep_checkpoints")


@dataclass(frozen=True)
class StudySpec:
    """Everything `raysearch run` was asked for (CLI flags map one to one onto these fields)."""

    task: str
    data: str | None = None
    space: str | None = None
    name: str | None = None
    results: str = DEFAULT_RESULTS
    trials: int = 8
    max_epochs: int = 6
    image_size: int = 64
    workers_per_trial: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float | str = AUTO
    trials_per_gpu: int | None = None
    concurrency: int | None = None
    seed: int = 0
    address: str | None = None
    wait_for_nodes: float = 900.0
    grace_period: int = 1
    reduction_factor: int = 2
    max_failures: int = 2
    format: str | None = None
    on_error: str = "skip"
    empty_labels: str = "skip"
    split_ratios: str = "0.8,0.1,0.1"
    binarise_masks: bool = False
    splits_policy: str | None = None  # None: published for a dataset that ships splits, else grouped
    test_split: bool = True
    searcher: str | None = None
    startup_trials: int | None = None  # None: raysearch.search.searcher.default_startup_trials
    scheduler: str | None = None
    time_budget: str | None = None
    epoch_budget: int | None = None
    log: tuple[str, ...] = ()
    keep_checkpoints: str = DEFAULT_KEEP  # raysearch.study.retention

    def __post_init__(self) -> None:
        from raysearch.search.tracking import parse_loggers

        object.__setattr__(self, "log", parse_loggers(self.log))
        positive = {"trials": self.trials, "max_epochs": self.max_epochs, "workers_per_trial": self.workers_per_trial,
                    "grace_period": self.grace_period}
        if self.reduction_factor < 2:
            raise ConfigError(f"--reduction-factor: must be at least 2, got {self.reduction_factor}")
        for field_name, value in positive.items():
            if value < 1:
                raise ConfigError(f"--{field_name.replace('_', '-')}: must be at least 1, got {value}")
        if self.grace_period > self.max_epochs:
            raise ConfigError(f"--grace-period: must not exceed --max-epochs ({self.max_epochs}), got "
                              f"{self.grace_period}")
        if not 0 <= self.seed <= MAX_SEED:
            raise ConfigError(f"--seed: must be between 0 and {MAX_SEED} (numpy and Optuna seeds), got {self.seed}")
        if self.max_failures < 0:
            raise ConfigError(f"--max-failures: must not be negative, got {self.max_failures}")
        if self.image_size < 16:
            raise ConfigError(f"--image-size: must be at least 16, got {self.image_size}")
        if self.cpus_per_worker <= 0:
            raise ConfigError(f"--cpus-per-worker: must be positive, got {self.cpus_per_worker}")
        if self.gpus_per_worker != AUTO and (not isinstance(self.gpus_per_worker, (int, float))
                                             or self.gpus_per_worker < 0):
            raise ConfigError(f"--gpus-per-worker: must be auto or a number of at least 0, got {self.gpus_per_worker}")
        if self.trials_per_gpu is not None and self.trials_per_gpu < 1:
            raise ConfigError(f"--trials-per-gpu: must be at least 1, got {self.trials_per_gpu}")
        if self.trials_per_gpu is not None and self.gpus_per_worker != AUTO:
            raise ConfigError("--trials-per-gpu: give it or --gpus-per-worker, not both")
        if self.wait_for_nodes < 0:
            raise ConfigError(f"--wait-for-nodes: must not be negative, got {self.wait_for_nodes}")
        if self.concurrency is not None and self.concurrency < 1:
            raise ConfigError(f"--concurrency: must be at least 1, got {self.concurrency}")
        for flag, value, allowed in (("--searcher", self.searcher, SEARCHERS), ("--scheduler", self.scheduler,
                                                                                 SCHEDULERS)):
            if value is not None and value not in allowed:
                raise ConfigError(f"{flag}: must be one of {', '.join(allowed)}, got {value!r}")
        if self.startup_trials is not None and self.startup_trials < 1:
            raise ConfigError(f"--startup-trials: must be at least 1, got {self.startup_trials}")
        if self.epoch_budget is not None and self.epoch_budget < 1:
            raise ConfigError(f"--epoch-budget: must be at least 1, got {self.epoch_budget}")
        self.budget_seconds()
        parse_keep(self.keep_checkpoints)
        self.splits()
        check_policy(self.splits_policy)

    def budget_seconds(self) -> float | None:
        """--time-budget in seconds (None: no time budget); ConfigError if malformed."""
        return None if self.time_budget is None else parse_duration(self.time_budget, "--time-budget")

    def splits(self) -> SplitRatios:
        """The train/val/test shares for datasets without split folders (ConfigError if malformed)."""
        return SplitRatios.parse(self.split_ratios)

    def space_path(self) -> Path:
        """The search-space file: the one given, or the task's default shipped in search_spaces/."""
        return Path(self.space) if self.space else search_spaces_dir() / f"{self.task}.yaml"

    def study_name(self, space_text: str) -> str:
        """`--name`, or task + space file stem + a short hash of everything that shapes the study."""
        if self.name:
            return self.name
        shaping = {k: v for k, v in asdict(self).items() if k not in RUNTIME_FIELDS}
        digest = hashlib.blake2b(json.dumps([shaping, space_text], sort_keys=True).encode(), digest_size=4).hexdigest()
        stem = self.space_path().stem
        return f"{self.task}-{digest}" if stem == self.task else f"{self.task}-{stem}-{digest}"


def parse_duration(text: str, flag: str) -> float:
    """Seconds in a duration such as `2h`, `30m`, `90s` or `1.5h` (a plain number is seconds)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([hms]?)\s*", str(text))
    if not match or float(match.group(1)) <= 0:
        raise ConfigError(f"{flag}: expected a positive duration such as 2h, 30m or 90s, got {text!r}")
    return float(match.group(1)) * DURATION_UNITS[match.group(2)]


def versions() -> dict[str, str]:
    """Installed versions of Python and the packages that decide a study's results."""
    found = {"python": platform.python_version()}
    for package in VERSIONED_PACKAGES:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "not installed"
    return found


def resolved_study(spec: StudySpec, *, name: str, space: dict[str, Any], data: dict[str, Any],
                   defaults: dict[str, Any], scheduler: dict[str, Any], searcher: dict[str, Any],
                   budget: dict[str, Any], resources: dict[str, Any],
                   tracking: dict[str, str] | None = None) -> dict[str, Any]:
    """The fully resolved study, as written to study.yaml; `tracking`: where each --log backend writes."""
    return describe_study(name=name, task=spec.task, spec=asdict(spec), data=data, search_space=space,
                          defaults=defaults, scheduler=scheduler, searcher=searcher, budget=budget,
                          resources=resources, tracking=tracking or {}, seed=spec.seed, versions=versions())
