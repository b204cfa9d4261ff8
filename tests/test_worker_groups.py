"""Multi-worker trials on a machine that holds exactly one of them, with other Ray instances on the same machine:
a 2-worker trial gets the CPUs of the one before it, and a worker group that cannot start fails its
trial (retried, then FAILED with its error) instead of hanging the study."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from local_cluster import free_port, head_options, node_root, start_node, stop_nodes, token_environment

from raysearch.data.phantom import PhantomSpec, write_phantom

SPACE = """task: multitask
parameters:
  lr: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}
fixed: {model: vgg, conv_layers: 2, width: 8, batch_size: 16}
"""
HOLD_ONE_CPU = """import ray, sys, time
ray.init(address=sys.argv[1])
holder = ray.remote(num_cpus=1)(type("Hold", (), {"ping": lambda self: 1})).remote()
ray.get(holder.ping.remote())
print("holding", flush=True)
time.sleep(600)
"""


@pytest.fixture(scope="module")
def other_ray() -> Iterator[str]:
    """Another Ray instance on this machine (2 CPUs, worker groups given 2 s to start): its GCS address."""
    port = free_port()
    address = f"127.0.0.1:{port}"
    with node_root() as root:
        head = start_node(root, "head", address, *head_options(port), cpus=2,
                          environment={"RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "2"})
        try:
            yield address
        finally:
            stop_nodes(head)


@pytest.fixture(scope="module")
def study_inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("wg-data")
    data = write_phantom(root / "phantom", PhantomSpec(train=32, val=16, test=8, image_size=32), progress=False)
    space = root / "space.yaml"
    space.write_text(SPACE)
    return data, space


def run_two_worker_study(inputs: tuple[Path, Path], results: Path, trials: int, *options: str,
                         timeout: float = 900) -> subprocess.CompletedProcess:
    data, space = inputs
    command = [sys.executable, "-m", "raysearch", "run", "multitask", "--data", str(data), "--space", str(space),
               "--trials", str(trials), "--max-epochs", "1", "--image-size", "32", "--results", str(results),
               "--name", "w2", "--workers-per-trial", "2", "--quiet", *options]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                          env=token_environment() | {"RAY_USAGE_STATS_ENABLED": "0"})


@pytest.mark.slow
def test_two_worker_trials_one_after_the_other_on_a_local_instance(
        other_ray: str, study_inputs: tuple[Path, Path], tmp_path: Path) -> None:
    """Each trial takes every CPU of raysearch's own local instance, so the next one starts only once Ray Train's
    PlacementGroupCleaner has freed the workers' CPUs of the trial that Tune stopped at max_t. With another Ray
    instance on the machine the cleaner's State API could not tell which cluster was its own and gave up, so
    the second trial never started; raysearch now tells it the local instance's own dashboard address."""
    cpus_per_worker = max((os.cpu_count() or 2) // 2, 1)
    done = run_two_worker_study(study_inputs, tmp_path, 2, "--cpus-per-worker", str(cpus_per_worker))
    assert done.returncode == 0, done.stderr[-3000:]
    trials = pq.read_table(tmp_path / "w2" / "trials.parquet").to_pandas()
    assert len(trials) == 2 and (trials["status"] == "COMPLETED").all(), trials[["trial_id", "status", "error"]]


@pytest.mark.slow
def test_worker_group_that_cannot_start_fails_the_trial(other_ray: str, study_inputs: tuple[Path, Path],
                                                        tmp_path: Path) -> None:
    """Another job holds one of the cluster's 2 CPUs: each attempt's worker group times out (after 2 s here), the
    trial is retried per max_failures, then recorded FAILED with that error, and the study ends."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD_ONE_CPU, other_ray], stdout=subprocess.PIPE, text=True,
                              env=token_environment())
    try:
        assert holder.stdout.readline().strip() == "holding"
        done = run_two_worker_study(study_inputs, tmp_path, 1, "--address", other_ray, timeout=600)
    finally:
        holder.kill()
        holder.wait()
    trials = pq.read_table(tmp_path / "w2" / "trials.parquet").to_pandas()
    assert list(trials["status"]) == ["FAILED"], done.stderr[-3000:]
    assert "worker group startup timed out" in trials["error"].iloc[0]
