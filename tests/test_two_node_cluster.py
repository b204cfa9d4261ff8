"""`raysearch run --address` against a real 2-node Ray cluster on this machine (see local_cluster), with
2-worker trials whose DDP workers must span both nodes (each node has one CPU).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from local_cluster import free_port, head_options, node_root, start_node, stop_nodes, token_environment

from raysearch.data.phantom import PhantomSpec, write_phantom


@pytest.fixture
def two_nodes() -> Iterator[str]:
    """A head node and a worker node of one CPU each; yields the cluster's address."""
    port = free_port()
    address = f"127.0.0.1:{port}"
    with node_root() as root:
        nodes = [start_node(root, "head", address, *head_options(port))]
        try:
            nodes.append(start_node(root, "worker", address, f"--address={address}"))
            yield address
        finally:
            stop_nodes(*nodes)


@pytest.mark.slow
def test_two_worker_trials_on_a_two_node_cluster(two_nodes: str, tmp_path: Path) -> None:
    data = write_phantom(tmp_path / "phantom", PhantomSpec(train=64, val=16, test=8, image_size=64), progress=False)
    space = tmp_path / "space.yaml"
    space.write_text("task: multitask\nparameters:\n  lr: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}\n"
                     "fixed: {model: vgg, conv_layers: 3, width: 8, patience: 0}\n")
    results = tmp_path / "results"
    command = [sys.executable, "-m", "raysearch", "run", "multitask", "--data", str(data), "--space", str(space),
               "--trials", "2", "--max-epochs", "2", "--image-size", "32", "--workers-per-trial", "2",
               "--address", two_nodes, "--results", str(results), "--name", "two-nodes", "--quiet"]
    run = subprocess.run(command, capture_output=True, text=True, env=token_environment(), timeout=900)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-4000:]
    workers = subprocess.run([sys.executable, "-m", "ray.scripts.scripts", "list", "actors", "--address", two_nodes,
                              "--filter", "class_name=RayTrainWorker", "--format", "json", "--limit", "100"],
                             capture_output=True, text=True, env=token_environment(), timeout=120)
    nodes = {actor["node_id"] for actor in json.loads(workers.stdout)}
    assert len(nodes) == 2, f"each trial's two DDP workers ran on both nodes: {workers.stdout[-2000:]}"

    study = results / "two-nodes"
    resolved = yaml.safe_load((study / "study.yaml").read_text())
    assert resolved["resources"]["cluster"] == {"CPU": 2.0}
    assert resolved["resources"]["workers_per_trial"] == 2 and resolved["resources"]["concurrency"] == 1
    trials = pq.read_table(study / "trials.parquet").to_pandas()
    assert len(trials) == 2 and set(trials["status"]) <= {"COMPLETED", "PRUNED"}
    assert trials["checkpoint"].str.contains(f"{study}/train/").all()
    epochs = pq.read_table(study / "epochs.parquet").to_pandas()
    assert len(epochs) == trials["epochs"].sum() and epochs["val_accuracy"].between(0, 1).all()

    too_big = subprocess.run([*command[:-2], "too-big", "--quiet", "--cpus-per-worker", "2"],
                             capture_output=True, text=True, env=token_environment(), timeout=300)
    assert too_big.returncode != 0
    assert too_big.stderr.strip().splitlines()[-1].startswith(
        "raysearch: error: one trial needs 2 workers of 2 CPU each, but the cluster's 2 node(s) (2 CPU, 0 GPU) "
        "cannot place them"), "without an autoscaler a trial no node holds is refused at once, not waited for"
