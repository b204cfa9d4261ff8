"""A study: what the user asked for, resolved into one deterministic, reproducible description."""

from __future__ import annotations

import hashlib
import json
import platform
import re
from dataclasses import Field, asdict, dataclass, field, fields
from importlib import metadata
from pathlib import Path
from typing import Any

from raysearch.core.bundled import search_spaces_dir
from raysearch.core.layout import DEFAULT_RESULTS, check_study_name, describe_study
from raysearch.data.formats import FORMATS
from raysearch.data.records import BACKGROUND_CLASS, EMPTY_LABELS, ON_ERROR, SplitRatios
from raysearch.data.splits import SPLIT_POLICIES
from raysearch.data.table import parse_columns
from raysearch.errors import ConfigError
from raysearch.search.choices import SCHEDULERS, SEARCHERS
from raysearch.study.retention import DEFAULT_KEEP, parse_keep

VERSIONED_PACKAGES = ("raysearch", "ray", "torch", "torchvision", "timm", "segmentation-models-pytorch", "optuna",
                      "pyarrow", "opencv-python-headless", "numpy")

MAX_SEED = 2**32 - 1
AUTO = "auto"
DURATION_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "": 1.0}
MAX_STEM = 60  # of the space file's name, in a derived study name
RUNTIME_FIELDS = ("name", "results", "address", "concurrency", "wait_for_nodes", "log", "keep_checkpoints")


def flag(help: str, **argparse_options: Any) -> dict[str, Any]:
    """The metadata of a StudySpec field that is a `raysearch run` flag: its help and argparse options (`choices`,
    `type`, `metavar`, `action`, `flag` for another name than the field's, `env` for a default from the
    environment). The field's default is the flag's: the CLI and its reference are built from these fields."""
    return {"help": help, **argparse_options}


@dataclass(frozen=True)
class StudySpec:
    """Everything `raysearch run` was asked for: each field is one flag (its default, allowed values and help are
    defined here once; raysearch.cli builds the parser and docs/cli.md from them)."""

    task: str = field(metadata=flag("classification, regression, multitask or segmentation", positional=True))
    data: str | None = field(default=None, metadata=flag(
        "dataset folder, data.yaml or labels .csv (default: the built-in phantom X-rays)"))
    space: str | None = field(default=None, metadata=flag("search-space YAML (default: search_spaces/TASK.yaml)"))
    name: str | None = field(default=None, metadata=flag(
        "study name (default: TASK-<hash> of task, space and settings, never a timestamp)"))
    results: str = field(default=DEFAULT_RESULTS, metadata=flag("results root folder; the study goes to RESULTS/NAME"))
    trials: int = field(default=8, metadata=flag("number of trials", type=int))
    max_epochs: int = field(default=6, metadata=flag("epochs per trial at most (ASHA may stop trials earlier)",
                                                     type=int))
    image_size: int = field(default=64, metadata=flag(
        "input size in pixels (a search space may search it as `image_size`)", type=int))
    workers_per_trial: int = field(default=1, metadata=flag(
        "Ray Train DDP workers per trial (gloo on CPU, NCCL on GPU)", type=int))
    cpus_per_worker: float = field(default=1.0, metadata=flag("CPUs per worker", type=float))
    gpus_per_worker: float | str = field(default=AUTO, metadata=flag(
        "GPUs per worker; fractions share a GPU (auto: 1 when the cluster has GPUs, else 0; study.yaml records the "
        "value used)", type="gpus"))
    trials_per_gpu: int | None = field(default=None, metadata=flag(
        "pack K trials on each GPU (each worker takes 1/K GPU), for small models; instead of --gpus-per-worker",
        type=int, metavar="K"))
    concurrency: int | None = field(default=None, metadata=flag(
        "trials at once (default and cap: what the cluster's resources fit)", type=int))
    seed: int = field(default=0, metadata=flag(
        f"seed of the Optuna sampler and of training, 0 to {MAX_SEED}", type=int))
    address: str | None = field(default=None, metadata=flag(
        "Ray cluster to join (`auto` on a cluster node, ray://host:10001 from outside; default: $RAY_ADDRESS, else "
        "a local Ray)", env="RAY_ADDRESS"))
    wait_for_nodes: float = field(default=900.0, metadata=flag(
        "with an autoscaler: seconds to wait for the first node that fits a trial", type=float, metavar="SECONDS"))
    grace_period: int = field(default=1, metadata=flag(
        "ASHA: epochs every trial runs before it can be stopped (at most --max-epochs); the median rule uses it too",
        type=int))
    reduction_factor: int = field(default=2, metadata=flag(
        "ASHA: keep the best 1/N of trials at each rung; HyperBand uses it too", type=int))
    max_failures: int = field(default=2, metadata=flag("retries of a failed trial (a lost node, an OOM)", type=int))
    format: str | None = field(default=None, metadata=flag(
        "dataset format (default: detected from the folder)", choices=tuple(FORMATS)))
    on_error: str = field(default="skip", metadata=flag(
        "a corrupt image or malformed label: skip it (listed in data_issues.parquet) or stop", choices=ON_ERROR))
    empty_labels: str = field(default="skip", metadata=flag(
        f"images with empty label files: skip them (counted) or use them as class '{BACKGROUND_CLASS}'",
        choices=EMPTY_LABELS))
    split_ratios: str = field(default=SplitRatios().text(), metadata=flag(
        "TRAIN,VAL,TEST shares for datasets without split folders"))
    binarise_masks: bool = field(default=False, metadata=flag(
        "accept masks with values other than 0/1/255 (e.g. class labels): nonzero = foreground",
        action="store_true"))
    columns: str | None = field(default=None, metadata=flag(
        "a label table's columns, e.g. path=Image Index,label=Finding,split=set,patient=PID (default: found by "
        "common spellings)", metavar="ROLE=NAME,..."))
    splits_policy: str | None = field(default=None, metadata=flag(
        "published: the dataset's splits, tested also on their leak-free subset; deduplicated: drop val/test images "
        "whose source is in train; grouped: split whole source groups (seeded, stratified by class) (default: "
        "published for a dataset that ships splits, else grouped)", flag="splits", choices=SPLIT_POLICIES))
    test_split: bool = field(default=True, metadata=flag(
        "a dataset without test images: keep none (default: carve one from train, by source)",
        flag="no-test-split", action="store_false"))
    searcher: str | None = field(default=None, metadata=flag(
        "Optuna sampler (default: the space's `searcher:`, else tpe)", choices=SEARCHERS))
    startup_trials: int | None = field(default=None, metadata=flag(
        "tpe: trials sampled at random before TPE models the results (default: a third of --trials, 2 to 10)",
        type=int, metavar="N"))
    scheduler: str | None = field(default=None, metadata=flag(
        "Ray Tune scheduler that stops trials early (default: the space's `scheduler:`, else asha)",
        choices=SCHEDULERS))
    time_budget: str | None = field(default=None, metadata=flag(
        "stop sampling new trials after this long (2h, 30m, 90s); running trials finish", metavar="DURATION"))
    epoch_budget: int | None = field(default=None, metadata=flag(
        "stop sampling new trials once the trials ran N epochs in all; running trials finish", type=int,
        metavar="N"))
    log: tuple[str, ...] = field(default=(), metadata=flag(
        "track the study in mlflow, wandb or tensorboard (repeat the flag or give a comma list); MLflow goes to "
        "$MLFLOW_TRACKING_URI, else to STUDY/mlflow/", action="append", metavar="BACKEND"))
    keep_checkpoints: str = field(default=DEFAULT_KEEP, metadata=flag(
        "as trials end and once the study ends: every trial keeps its best weights, the K best trials everything "
        "(optimizer state included); a running trial keeps its state; best: none keeps more; all: nothing removed",
        metavar="best|top-K|all"))

    def __post_init__(self) -> None:
        from raysearch.search.tracking import parse_loggers

        object.__setattr__(self, "log", parse_loggers(self.log))
        if self.name is not None:
            check_study_name(self.name, "--name")
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
        for spec_field in fields(self):
            allowed, value = spec_field.metadata.get("choices"), getattr(self, spec_field.name)
            if allowed is not None and value is not None and value not in allowed:
                raise ConfigError(f"{flag_name(spec_field)}: must be one of {', '.join(allowed)}, got {value!r}")
        if self.startup_trials is not None and self.startup_trials < 1:
            raise ConfigError(f"--startup-trials: must be at least 1, got {self.startup_trials}")
        if self.epoch_budget is not None and self.epoch_budget < 1:
            raise ConfigError(f"--epoch-budget: must be at least 1, got {self.epoch_budget}")
        self.budget_seconds()
        parse_keep(self.keep_checkpoints)
        self.splits()
        parse_columns(self.columns)

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
        stem = re.sub(r"[^A-Za-z0-9._-]+", "-", self.space_path().stem)[:MAX_STEM]  # a portable folder name
        return f"{self.task}-{digest}" if stem == self.task else f"{self.task}-{stem}-{digest}"


def flag_name(spec_field: Field[Any]) -> str:
    """The command-line flag of a StudySpec field: `--max-epochs` for max_epochs, `--splits` for splits_policy."""
    return "--" + spec_field.metadata.get("flag", spec_field.name.replace("_", "-"))


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
