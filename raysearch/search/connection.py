"""The driver's connection to Ray: the cluster at an address, or a local instance started (and stopped) here.

A local instance gets a dashboard port chosen here, exported as RAY_API_SERVER_ADDRESS to all of its
processes: Ray Train's PlacementGroupCleaner, which frees the workers' CPUs of a trial that Tune stopped,
asks the State API whether the trial's Train controller is still alive, and without that address the
State API guesses the cluster. With several Ray instances on one machine it then fails ("Found multiple
active Ray instances"), the cleaner stops, and the next multi-worker trial never gets its CPUs.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

API_SERVER_VARIABLE = "RAY_API_SERVER_ADDRESS"
LOWEST_PORT = 20000   # Ray's worker processes listen on 10002-19999 by default
PORT_TRIES = 200
EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")


@contextmanager
def connected(address: str | None, *, quiet: bool = False) -> Iterator[None]:
    """Connected to the Ray cluster at `address`, else to a new local instance that is shut down on leaving;
    a process already connected keeps (and stays on) its connection. `quiet`: the workers' output and Ray's
    log lines below errors are not shown on the driver."""
    import ray

    if ray.is_initialized():
        yield
        return
    if quiet:
        logging.getLogger("ray").setLevel(logging.ERROR)
    if address:
        ray.init(address=address, log_to_driver=not quiet, configure_logging=False)
        yield
        return
    port = _free_local_port()
    previous = os.environ.get(API_SERVER_VARIABLE)
    os.environ[API_SERVER_VARIABLE] = f"http://127.0.0.1:{port}"
    try:
        ray.init(include_dashboard=True, dashboard_host="127.0.0.1", dashboard_port=port, log_to_driver=not quiet,
                 configure_logging=False)
        yield
    finally:
        ray.shutdown()
        if previous is None:
            os.environ.pop(API_SERVER_VARIABLE, None)
        else:
            os.environ[API_SERVER_VARIABLE] = previous


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
