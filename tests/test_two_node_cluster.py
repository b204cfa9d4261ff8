"""`raysearch run --address` against a real 2-node Ray cluster on this machine, with 2-worker trials whose
DDP workers must span both nodes (each node has one CPU).

Both nodes are `ray start --block` processes with their own temp dirs and ports. Ray resolves
--node-ip-address 127.0.0.1 to this machine's own address (`services.resolve_ip_for_localhost`), so the
nodes and the driver all run here and join nothing outside; the dashboard listens on 127.0.0.1 only.
The cluster is stopped by terminating those two processes, which stop the processes of their node;
`ray stop` would also stop the Ray instances of other tests running beside this one.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from ray_processes import alive, descendants, kill_all, wait_for

from raysearch.data.phantom import PhantomSpec, write_phantom


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _start_node(root: Path, name: str, address: str, *options: str) -> subprocess.Popen:
    """One `ray start --block` node of the cluster at `address`, with its own temp dir under `root` and its
    own ports; returns once the node is up. `root` must be short: Ray's Unix sockets live below it (at most
    107 bytes of path). RAY_ADDRESS tells the node's processes which cluster is theirs: Ray Train's
    PlacementGroupCleaner otherwise finds every Ray instance on the machine, cannot choose, and never frees
    a finished trial's workers, so the next trial waits forever."""
    temp, log = root / name, root / f"{name}.log"
    temp.mkdir()
    command = [sys.executable, "-m", "ray.scripts.scripts", "start", "--block", "--num-cpus=1",
               "--node-ip-address=127.0.0.1", f"--temp-dir={temp}", "--disable-usage-stats",
               f"--dashboard-agent-listen-port={_free_port()}", f"--metrics-export-port={_free_port()}", *options]
    with log.open("w") as output:
        node = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT,
                                env=_environment() | {"RAY_ADDRESS": address})
    try:
        wait_for(lambda: "Ray runtime started" in log.read_text() or node.poll() is not None, 300,
                 f"the {name} node to start")
        assert node.poll() is None, log.read_text()[-3000:]
    except AssertionError:
        _stop(node)
        raise
    return node


def _stop(*nodes: subprocess.Popen) -> None:
    """Stop nodes: SIGTERM to their `ray start --block` processes, which stop their node's processes
    (SIGKILL to what is left after a minute)."""
    below = [pid for node in nodes for pid in descendants(node.pid)]
    for node in nodes:
        node.send_signal(signal.SIGTERM)
    try:
        wait_for(lambda: not any(alive(pid) for pid in [*below, *(node.pid for node in nodes)]), 60,
                 "the nodes' processes to exit")
    except AssertionError:
        kill_all([*below, *(node.pid for node in nodes)])
    for node in nodes:
        node.wait(timeout=60)


def _environment() -> dict[str, str]:
    """This environment, with Ray's token authentication on for nodes and driver alike (as in cluster.yaml)."""
    return {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"RAY_AUTH_MODE": "token"}


@pytest.fixture
def two_nodes() -> Iterator[str]:
    """A head node and a worker node of one CPU each; yields the cluster's address."""
    root = Path(tempfile.mkdtemp(prefix="rs-", dir="/tmp"))
    port = _free_port()
    address = f"127.0.0.1:{port}"
    head = _start_node(root, "head", address, "--head", f"--port={port}", "--include-dashboard=true",
                       "--dashboard-host=127.0.0.1", f"--dashboard-port={_free_port()}",
                       f"--ray-client-server-port={_free_port()}")
    nodes = [head]
    try:
        nodes.append(_start_node(root, "worker", address, f"--address={address}"))
        yield address
    finally:
        _stop(*nodes)
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
def test_two_worker_trials_on_a_two_node_cluster(two_nodes: str, tmp_path: Path) -> None:
    data = write_phantom(tmp_path / "phantom", PhantomSpec(train=64, val=16, test=8, image_size=64), progress=False)
    space = tmp_path / "space.yaml"
    space.write_text("task: multitask\nparameters:\n  lr: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}\n"
                     "fixed: {model: vgg, conv_layers: 3, width: 8, patience: 0}\n")
    results = tmp_path / "results"
    run = subprocess.run([sys.executable, "-m", "raysearch", "run", "multitask", "--data", str(data), "--space",
                          str(space), "--trials", "2", "--max-epochs", "2", "--image-size", "32",
                          "--workers-per-trial", "2", "--address", two_nodes, "--results", str(results),
                          "--name", "two-nodes", "--quiet"],
                         capture_output=True, text=True, env=_environment(), timeout=900)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-4000:]
    workers = subprocess.run([sys.executable, "-m", "ray.scripts.scripts", "list", "actors", "--address", two_nodes,
                              "--filter", "class_name=RayTrainWorker", "--format", "json", "--limit", "100"],
                             capture_output=True, text=True, env=_environment(), timeout=120)
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
