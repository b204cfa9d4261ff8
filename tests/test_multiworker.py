"""Trials across workers: what one trial reserves, how many fit per node, the limit that follows the
cluster, and a 2-worker DDP run that reaches the same validation metrics as 1 worker."""

from __future__ import annotations

from pathlib import Path

import pytest
from ray.tune.search.optuna import OptunaSearch

from raysearch.core.schema import HParams
from raysearch.data.cache import dataset_fingerprint, ensure_cache
from raysearch.data.loading import load_dataset
from raysearch.data.phantom import PhantomSpec, write_phantom
from raysearch.errors import ConfigError
from raysearch.search.autoscaling import trial_bundles, wait_for_first_trial
from raysearch.search.resources import (
    TRIAL_FUNCTION_MEMORY,
    ElasticConcurrency,
    TrialShape,
    concurrency_limit,
    device_plan,
    resolve_gpus_per_worker,
    trials_that_fit,
)
from raysearch.tasks import create_task
from raysearch.training.hparams import preprocessing_of, schema
from raysearch.training.session import LocalSession
from raysearch.training.trainer import LoopSettings, train

CPU_NODE = {"CPU": 4.0, "memory": 8e9}
GPU_NODE = {"CPU": 8.0, "GPU": 1.0, "memory": 32e9}


def test_one_worker_trial_reserves_its_worker_and_multi_worker_only_memory() -> None:
    one = TrialShape(workers=1, cpus_per_worker=2, gpus_per_worker=0.5)
    assert one.trial_function() == one.worker() == {"CPU": 2, "GPU": 0.5}
    four = TrialShape(workers=4, cpus_per_worker=1, gpus_per_worker=0)
    assert four.worker() == {"CPU": 1}
    assert four.trial_function() == {"CPU": 0.0, "memory": float(TRIAL_FUNCTION_MEMORY)}


def test_workers_fit_per_node_not_by_cluster_totals() -> None:
    nodes = [{"CPU": 3.0}, {"CPU": 3.0}]
    # Totals say 6 CPU = three 2-CPU trials, but a 2-CPU worker fits only once on each 3-CPU node.
    assert trials_that_fit(nodes, TrialShape(1, 2, 0)) == 2
    assert trials_that_fit(nodes, TrialShape(2, 2, 0)) == 1
    assert trials_that_fit(nodes, TrialShape(2, 1, 0)) == 3


def test_gpu_fractions_share_a_gpu() -> None:
    assert trials_that_fit([GPU_NODE], TrialShape(1, 1, 0.25)) == 4
    assert trials_that_fit([GPU_NODE, GPU_NODE], TrialShape(2, 1, 0.5)) == 2
    assert trials_that_fit([GPU_NODE, CPU_NODE], TrialShape(2, 1, 1)) == 0


def test_gpus_per_worker_auto_follows_the_cluster_and_trials_per_gpu_shares_one() -> None:
    assert resolve_gpus_per_worker("auto", None, cluster_gpus=0.0) == 0.0
    assert resolve_gpus_per_worker("auto", None, cluster_gpus=8.0) == 1.0
    assert resolve_gpus_per_worker(0.5, None, cluster_gpus=8.0) == 0.5
    assert resolve_gpus_per_worker(0.0, None, cluster_gpus=8.0) == 0.0
    assert resolve_gpus_per_worker("auto", 4, cluster_gpus=1.0) == 0.25
    assert trials_that_fit([GPU_NODE], TrialShape(1, 2, resolve_gpus_per_worker("auto", 4, 1.0))) == 4
    with pytest.raises(ConfigError, match="--trials-per-gpu: the cluster has no GPU"):
        resolve_gpus_per_worker("auto", 4, cluster_gpus=0.0)


def test_device_plan_names_trials_at_once_and_gpu_share_and_warns_of_idle_gpus() -> None:
    assert device_plan(TrialShape(1, 3, 0.25), 4, cluster_gpus=1.0) == [
        "Device plan: 4 trials at once, 0.25 GPU per trial, device cuda (1 worker of 3 CPU, 0.25 GPU; the cluster "
        "has 1 GPU)"]
    assert device_plan(TrialShape(2, 1, 0.5), 1, cluster_gpus=2.0)[0].startswith(
        "Device plan: 1 trial at once, 1 GPU per trial, device cuda")
    assert device_plan(TrialShape(1, 1, 0), 2, cluster_gpus=0.0) == [
        "Device plan: 2 trials at once, no GPU, device cpu (1 worker of 1 CPU; the cluster has 0 GPU)"]
    idle = device_plan(TrialShape(1, 1, 0), 2, cluster_gpus=8.0)
    assert len(idle) == 2 and idle[1].startswith("Warning: the cluster has 8 GPU but this run uses none")


def test_concurrency_is_capped_by_request_and_refuses_what_cannot_run() -> None:
    assert concurrency_limit([CPU_NODE, CPU_NODE], TrialShape(2, 1, 0), None) == 4
    assert concurrency_limit([CPU_NODE, CPU_NODE], TrialShape(2, 1, 0), 3) == 3
    with pytest.raises(ConfigError, match="2 workers of 1 CPU, 1 GPU.*--gpus-per-worker") as error:
        concurrency_limit([CPU_NODE, GPU_NODE], TrialShape(2, 1, 1), None)
    assert "\n" not in str(error.value)


def test_elastic_limit_follows_nodes_joining_and_leaving() -> None:
    nodes = [dict(GPU_NODE)]
    limiter = ElasticConcurrency(OptunaSearch(metric="val_score", mode="max"), TrialShape(2, 2, 0.5), None,
                                 limit=1, nodes=lambda: nodes)
    assert limiter.max_concurrent == 1
    nodes += [dict(GPU_NODE), dict(GPU_NODE)]
    assert limiter.refresh() == 3 and limiter.max_concurrent == 3
    nodes.clear()
    assert limiter.refresh() == 1, "never below one: the study waits for nodes to come back"
    capped = ElasticConcurrency(OptunaSearch(metric="val_score", mode="max"), TrialShape(1, 1, 0), 2, limit=1,
                                nodes=lambda: [CPU_NODE, CPU_NODE])
    assert capped.refresh() == 2


def test_autoscaler_request_has_one_bundle_per_worker_of_each_trial() -> None:
    assert trial_bundles(TrialShape(2, 4, 0.5), 3) == [{"CPU": 4, "GPU": 0.5}] * 6


def test_waiting_for_nodes_ends_when_one_trial_fits_and_fails_when_none_comes() -> None:
    polls: list[int] = []

    def nodes() -> list[dict[str, float]]:
        polls.append(1)
        return [GPU_NODE, GPU_NODE] if len(polls) == 3 else []

    assert wait_for_first_trial(TrialShape(1, 2, 0.5), None, wait_s=60, nodes=nodes, poll_s=0.01) == 4
    assert len(polls) == 3, "polled until the third look found two nodes"
    assert wait_for_first_trial(TrialShape(1, 2, 0.5), 3, wait_s=60, nodes=lambda: [GPU_NODE] * 2) == 3
    with pytest.raises(ConfigError, match=r"^--wait-for-nodes: .*\(1 worker of 1 CPU, 1 GPU\).* within 0.05 s"):
        wait_for_first_trial(TrialShape(1, 1, 1), None, wait_s=0.05, nodes=lambda: [CPU_NODE], poll_s=0.01)


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, HParams]:
    """A 32 px cache of a small phantom dataset, and a trial's frozen hyperparameters without batch norm or dropout
    (what Ray Train sends each worker)."""
    root = tmp_path_factory.mktemp("ddp")
    index = load_dataset(str(write_phantom(root / "phantom", PhantomSpec(train=64, val=30, test=4, image_size=64),
                                           progress=False)), progress=False)
    task = create_task("multitask")
    hp = HParams(schema(task.hyperparameters), {"image_size": 32, "batch_norm": False, "dropout": 0.0,
                                                "batch_size": 16, "lr": 3e-3, "conv_layers": 3, "width": 8})
    cache, _ = ensure_cache(index, dataset_fingerprint(index), preprocessing_of(hp), root / "cache", progress=False)
    return cache, hp


@pytest.mark.slow
def test_two_worker_ddp_matches_one_worker(tiny_cache: tuple[Path, HParams], tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Without batch norm or dropout, each step of 2 workers × 8 images averages the same gradient as 1 worker
    × 16 images, and validation sums over both workers' shards: the metrics agree up to float rounding. (No Tune
    trial here: both epochs are acknowledged up front, as a trial does once Tune lets it go on.)"""
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.util.queue import Queue

    from raysearch.search.trial import train_worker

    cache, hp = tiny_cache
    loop = LoopSettings("multitask", str(cache), max_epochs=2, seed=7)
    alone = LocalSession()
    train(hp, loop, alone)

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False)
    try:
        acks = Queue()
        for epoch in range(1, loop.max_epochs + 1):
            acks.put(epoch)
        result = TorchTrainer(
            train_worker, train_loop_config={"hp": hp, "loop": loop, "acks": acks},
            scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1}),
            run_config=RunConfig(name="ddp", storage_path=str(tmp_path)),
        ).fit()
    finally:
        ray.shutdown()

    one, two = alone.history[-1], result.metrics
    assert two["epoch"] == one["epoch"] == 2
    assert one["val_loss"] != alone.history[0]["val_loss"], "the model trained"
    for name in ("val_loss", "val_accuracy", "val_apd", "val_mse", "val_score"):
        assert two[name] == pytest.approx(one[name], rel=1e-3, abs=1e-4), name
