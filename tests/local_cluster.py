"""Real Ray nodes on this machine for the cluster tests: `ray start --block` processes with their own temp
dirs and ports, joined over loopback, stopped by the tests that started them.

Ray resolves --node-ip-address 127.0.0.1 to this machine's own address (`services.resolve_ip_for_localhost`),
so the nodes and the driver all run here and join nothing outside; dashboards listen on 127.0.0.1 only.
Nodes are stopped by terminating their `ray start --block` processes, which stop the processes of their
node; `ray stop` would also stop the Ray instances of other tests running beside these ones.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ray_processes import alive, descendants, kill_all, wait_for

STOP_GRACE_S = 10


@contextmanager
def node_root() -> Iterator[Path]:
    """A short folder under /tmp for nodes' temp dirs (Ray's Unix sockets live below it, at most 107 bytes of
    path: pytest's own temporary folders are too deep under pytest-xdist), removed on leaving."""
    root = Path(tempfile.mkdtemp(prefix="rs-", dir="/tmp"))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def free_port() -> int:
    """A TCP port on loopback that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def token_environment() -> dict[str, str]:
    """This environment, with Ray's token authentication on for nodes and driver alike (as in cluster.yaml)."""
    return {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"RAY_AUTH_MODE": "token"}


def head_options(port: int, client_port: int | None = None) -> list[str]:
    """`ray start` options of a head node on `port` with its Ray Client server on `client_port` (ray://),
    its dashboard on loopback and its other ports free."""
    return ["--head", f"--port={port}", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
            f"--dashboard-port={free_port()}", f"--ray-client-server-port={client_port or free_port()}"]


def start_node(root: Path, name: str, address: str, *options: str, cpus: int = 1,
               environment: dict[str, str] | None = None) -> subprocess.Popen:
    """One `ray start --block` node of `cpus` CPUs in the cluster at `address`, with its own temp dir under
    `root` (`node_root`) and its own ports; returns once the node is up. RAY_ADDRESS tells the node's processes
    which cluster is theirs: Ray Train's PlacementGroupCleaner otherwise finds every Ray instance on the machine,
    cannot choose, and never frees a finished trial's workers, so the next trial waits forever."""
    temp, log = root / name, root / f"{name}.log"
    temp.mkdir()
    command = [sys.executable, "-m", "ray.scripts.scripts", "start", "--block", f"--num-cpus={cpus}",
               "--node-ip-address=127.0.0.1", f"--temp-dir={temp}", "--disable-usage-stats",
               f"--dashboard-agent-listen-port={free_port()}", f"--metrics-export-port={free_port()}", *options]
    with log.open("w") as output:
        node = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT,
                                env=token_environment() | (environment or {}) | {"RAY_ADDRESS": address})
    try:
        wait_for(lambda: "Ray runtime started" in log.read_text() or node.poll() is not None, 300,
                 f"the {name} node to start")
        assert node.poll() is None, log.read_text()[-3000:]
    except AssertionError:
        stop_nodes(node)
        raise
    return node


def stop_nodes(*nodes: subprocess.Popen) -> None:
    """Stop nodes: SIGTERM to their `ray start --block` processes, which stop their node's processes
    (SIGKILL to what is left after STOP_GRACE_S, nodes an autoscaler started below them included: an idle node
    stops in about 2 s, but after a study some of its processes took 30 s)."""
    below = [pid for node in nodes for pid in descendants(node.pid)]
    for node in nodes:
        node.send_signal(signal.SIGTERM)
    try:
        wait_for(lambda: not any(alive(pid) for pid in [*below, *(node.pid for node in nodes)]), STOP_GRACE_S,
                 "the nodes' processes to exit")
    except AssertionError:
        kill_all([*below, *(node.pid for node in nodes)])
    for node in nodes:
        node.wait(timeout=60)
