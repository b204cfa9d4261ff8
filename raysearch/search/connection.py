"""The driver's connection to Ray: the cluster at an address, or a local instance started (and stopped) here.

A local instance gets a dashboard port chosen here, exported as RAY_API_SERVER_ADDRESS to all of its
processes: Ray Train's PlacementGroupCleaner, which frees the workers' CPUs of a trial that Tune stopped,
asks the State API whether the trial's Train controller is still alive, and without that address the
State API guesses the cluster. With several Ray instances on one machine it then fails ("Found multiple
active Ray instances"), the cleaner stops, and the next multi-worker trial never gets its CPUs.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

API_SERVER_VARIABLE = "RAY_API_SERVER_ADDRESS"


@contextmanager
def connected(address: str | None) -> Iterator[None]:
    """Connected to the Ray cluster at `address`, else to a new local instance that is shut down on leaving;
    a process already connected keeps (and stays on) its connection."""
    import ray

    if ray.is_initialized():
        yield
        return
    if address:
        ray.init(address=address, log_to_driver=True, configure_logging=False)
        yield
        return
    port = _free_local_port()
    previous = os.environ.get(API_SERVER_VARIABLE)
    os.environ[API_SERVER_VARIABLE] = f"http://127.0.0.1:{port}"
    try:
        ray.init(include_dashboard=True, dashboard_host="127.0.0.1", dashboard_port=port, log_to_driver=True,
                 configure_logging=False)
        yield
    finally:
        ray.shutdown()
        if previous is None:
            os.environ.pop(API_SERVER_VARIABLE, None)
        else:
            os.environ[API_SERVER_VARIABLE] = previous


def _free_local_port() -> int:
    """A TCP port on loopback that nothing listens on now."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
