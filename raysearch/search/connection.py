"""The driver's connection to Ray: the cluster at an address, or a local instance started (and stopped) here.

A local instance gets a dashboard port chosen here, exported as RAY_API_SERVER_ADDRESS to all of its
processes: Ray Train's PlacementGroupCleaner, which frees the workers' CPUs of a trial that Tune stopped,
asks the State API whether the trial's Train controller is still alive, and without that address the
State API guesses the cluster. With several Ray instances on one machine it then fails ("Found multiple
active Ray instances"), the cleaner stops, and the next multi-worker trial never gets its CPUs.

A local instance is private: every process of it (driver, GCS, raylet and object manager, dashboard and its agent,
runtime-env agent, workers) listens on 127.0.0.1 only. Ray 2.60 binds its servers to the node's IP address when
that is loopback, and makes the node IP loopback only where it runs single-machine (macOS and Windows, or
RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0): on Linux it turns a loopback `_node_ip_address` back into the machine's
network address. So the local instance starts in that single-machine mode, the setting exported to the processes
it starts (they inherit the environment) and restored when it stops. Joining a cluster (`address`) changes nothing.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from raysearch.errors import ClusterError
from raysearch.search.console import DEFAULT, VERBOSE, connection_levels, logger_levels, scoped_environment

API_SERVER_VARIABLE = "RAY_API_SERVER_ADDRESS"
LOOPBACK = "127.0.0.1"
LOWEST_PORT = 20000   # Ray's worker processes listen on 10002-19999 by default
PORT_TRIES = 200
EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")


@contextmanager
def connected(address: str | None, *, console: int = DEFAULT) -> Iterator[None]:
    """Connected to the Ray cluster at `address`, else to a new local instance that is shut down on leaving;
    a process already connected keeps (and stays on) its connection. The workers' output reaches the driver's
    console only in the VERBOSE `console` mode (raysearch.search.console): below it a failed trial is said in one
    line pointing at its error file, and the rest stays in Ray's session logs; the Ray loggers named by
    `connection_levels` are quieter while connected."""
    import ray

    if ray.is_initialized():
        yield
        return
    log_to_driver = console == VERBOSE
    with logger_levels(connection_levels(console)):
        if address:
            _join(address, log_to_driver=log_to_driver)
            yield
            return
        port = _free_local_port()
        with scoped_environment({API_SERVER_VARIABLE: f"http://{LOOPBACK}:{port}"}), _single_machine():
            try:
                ray.init(include_dashboard=True, dashboard_host=LOOPBACK, dashboard_port=port,
                         _node_ip_address=LOOPBACK, log_to_driver=log_to_driver, configure_logging=False)
                yield
            finally:
                ray.shutdown()


def _join(address: str, *, log_to_driver: bool) -> None:
    """Connect to the cluster at `address`; ClusterError with Ray's reason in one line where it can't (no cluster
    there, or a Ray Client server on the head that failed to start for this connection). Ray Client's warning
    that the connection timed out is not shown: the error says it."""
    import ray

    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Ray Client connection timed out", category=UserWarning)
            ray.init(address=address, log_to_driver=log_to_driver, configure_logging=False)
    except ConnectionError as error:
        raise ClusterError(f"--address {address}: could not connect to the Ray cluster: {_reason(error)}") from None


def _reason(error: Exception) -> str:
    """The last line of an error's message: Ray Client sends the head's whole traceback, whose last line says why."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


@contextmanager
def _single_machine() -> Iterator[None]:
    """Ray's single-machine mode (see the module docstring): its node IP is loopback, so all of it listens there."""
    from ray._private import ray_constants

    previous = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        with scoped_environment({ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR: "0"}):
            yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = previous


def _free_local_port() -> int:
    """A TCP port on loopback that nothing listens on now, above Ray's worker ports and below the kernel's
    ephemeral range: outgoing connections (Ray's own processes open many while the instance starts) draw their
    local ports from that range, so a free port taken from it can be in use again by the time the dashboard
    binds it, and the instance fails to start."""
    import random
    import socket

    candidates = list(range(LOWEST_PORT, _ephemeral_ports_start()))
    for port in random.sample(candidates, min(PORT_TRIES, len(candidates))):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as probe:   # no free port there: any the kernel gives
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _ephemeral_ports_start() -> int:
    """The first port of the kernel's ephemeral range (Linux's default where /proc does not say)."""
    try:
        return int(EPHEMERAL_RANGE_FILE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768
