"""What one trial reserves, how many trials the cluster's nodes fit, and a concurrency limit that follows
the cluster as nodes join or leave.

Ray Tune counts only the trial function's own resources, not those of the Train workers it starts, so
raysearch caps concurrency itself. It counts per node, not from cluster totals: a worker must fit on a
single node, and a cap from totals would leave a trial waiting forever on fragmented resources.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ray.tune.search import ConcurrencyLimiter, Searcher

from raysearch.errors import ConfigError

logger = logging.getLogger(__name__)

TRIAL_FUNCTION_MEMORY = 256 * 1024**2
REFRESH_S = 10.0
EPSILON = 1e-9


@dataclass(frozen=True)
class TrialShape:
    """The resources of one trial: `workers` Train workers of `cpus_per_worker` and `gpus_per_worker`."""

    workers: int
    cpus_per_worker: float
    gpus_per_worker: float

    def worker(self) -> dict[str, float]:
        """What each worker reserves (with one worker: the trial function, which trains in-process)."""
        return {"CPU": self.cpus_per_worker, **({"GPU": self.gpus_per_worker} if self.gpus_per_worker else {})}

    def trial_function(self) -> dict[str, float]:
        """What Tune reserves for the trial function: the one worker itself, or with N workers no CPU
        (it only waits on its Train run, whose workers reserve their own) and the memory it uses."""
        if self.workers == 1:
            return self.worker()
        return {"CPU": 0.0, "memory": float(TRIAL_FUNCTION_MEMORY)}

    def describe(self) -> str:
        """E.g. '2 workers of 1 CPU, 0.5 GPU'."""
        gpu = f", {self.gpus_per_worker:g} GPU" if self.gpus_per_worker else ""
        return f"{self.workers} worker{'s' if self.workers > 1 else ''} of {self.cpus_per_worker:g} CPU{gpu}"


def resolve_gpus_per_worker(requested: float | str, trials_per_gpu: int | None, cluster_gpus: float) -> float:
    """GPUs per worker: with `trials_per_gpu` K, 1/K; for "auto", one GPU when the cluster has any, else 0;
    otherwise the number asked for. ConfigError for K on a cluster without a GPU."""
    if trials_per_gpu is not None:
        if cluster_gpus <= 0:
            raise ConfigError(f"--trials-per-gpu: the cluster has no GPU to share {trials_per_gpu} ways "
                              "(leave it out to train on the CPU)")
        return 1.0 / trials_per_gpu
    if requested == "auto":
        return 1.0 if cluster_gpus > 0 else 0.0
    return float(requested)


def device_plan(shape: TrialShape, concurrency: int, cluster_gpus: float) -> list[str]:
    """The lines `raysearch run` starts with: trials at once, GPU share per trial and device, and a warning when
    the cluster has GPUs that the run leaves idle."""
    per_trial = shape.workers * shape.gpus_per_worker
    device = f"{per_trial:g} GPU per trial, device cuda" if per_trial else "no GPU, device cpu"
    lines = [f"Device plan: {concurrency} trial{'s' if concurrency != 1 else ''} at once, {device} "
             f"({shape.describe()}; the cluster has {cluster_gpus:g} GPU)"]
    if cluster_gpus > 0 and not per_trial:
        lines.append(f"Warning: the cluster has {cluster_gpus:g} GPU but this run uses none "
                     "(--gpus-per-worker 0); leave the flag at auto to train on them.")
    return lines


def alive_nodes() -> list[dict[str, float]]:
    """The resources of every live node of the connected Ray cluster."""
    import ray

    return [dict(node["Resources"]) for node in ray.nodes() if node["Alive"]]


def trials_that_fit(nodes: Sequence[Mapping[str, float]], shape: TrialShape) -> int:
    """How many trials run at once when each node holds as many whole workers as its resources allow."""
    slots = 0
    for resources in nodes:
        per_node = [resources.get(name, 0.0) / amount for name, amount in shape.worker().items() if amount > 0]
        slots += int(min(per_node) + EPSILON) if per_node else 0
    return slots // shape.workers


def capped(fits: int, requested: int | None) -> int:
    """Trials at once: what fits, or `requested` (--concurrency) when that is fewer."""
    return min(fits, requested) if requested else fits


def concurrency_limit(nodes: Sequence[Mapping[str, float]], shape: TrialShape, requested: int | None) -> int:
    """Trials at once: what the nodes fit, capped by `requested`; ConfigError when not even one trial fits."""
    fits = trials_that_fit(nodes, shape)
    if fits < 1:
        cpus = sum(n.get("CPU", 0.0) for n in nodes)
        gpus = sum(n.get("GPU", 0.0) for n in nodes)
        raise ConfigError(f"one trial needs {shape.describe()} each, but the cluster's {len(nodes)} node(s) "
                          f"({cpus:g} CPU, {gpus:g} GPU) cannot place them (see --workers-per-trial, "
                          "--cpus-per-worker, --gpus-per-worker)")
    return capped(fits, requested)


class ElasticConcurrency(ConcurrencyLimiter):
    """A ConcurrencyLimiter whose limit follows the cluster: when the autoscaler adds nodes (or spot nodes
    go away), the limit is re-derived from the live nodes, at most every `REFRESH_S` seconds, before the
    next trial is suggested. It never drops below 1, so a study waits for lost nodes to come back."""

    def __init__(self, searcher: Searcher, shape: TrialShape, requested: int | None, limit: int,
                 nodes: Callable[[], Sequence[Mapping[str, float]]] = alive_nodes) -> None:
        super().__init__(searcher, max_concurrent=limit)
        self.shape, self.requested, self.nodes = shape, requested, nodes
        self.checked_at = time.time()

    def refresh(self) -> int:
        """Re-derive the limit from the live nodes now; return it."""
        self.checked_at = time.time()
        fits = max(trials_that_fit(self.nodes(), self.shape), 1)
        limit = capped(fits, self.requested)
        if limit != self.max_concurrent:
            logger.warning("raysearch: the cluster now fits %d trial(s) at once (was %d)", limit, self.max_concurrent)
            self.set_max_concurrency(limit)
        return limit

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        """The wrapped searcher's suggestion, within the limit re-derived from the cluster."""
        if time.time() - self.checked_at >= REFRESH_S:
            self.refresh()
        return super().suggest(trial_id)
