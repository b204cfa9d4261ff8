"""The local Ray instance's dashboard port: free, and outside the ports the kernel hands to outgoing connections;
a cluster that can't be reached is said in one line."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from conftest import TINY_PHANTOM
from local_cluster import free_port

from raysearch.data.phantom import write_phantom
from raysearch.search import connection


def test_the_dashboard_port_is_free_and_below_the_ephemeral_range() -> None:
    start = connection._ephemeral_ports_start()
    ports = {connection._free_local_port() for _ in range(20)}
    assert all(connection.LOWEST_PORT <= port < start for port in ports), ports
    for port in ports:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", port))   # free: binds


def test_a_port_in_use_is_never_chosen(monkeypatch) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", connection.LOWEST_PORT))
        held.listen()
        monkeypatch.setattr(connection, "_ephemeral_ports_start", lambda: connection.LOWEST_PORT + 2)
        assert {connection._free_local_port() for _ in range(10)} == {connection.LOWEST_PORT + 1}


def test_an_address_where_no_cluster_answers_ends_in_one_line_naming_it(tmp_path: Path) -> None:
    """Through Ray Client (ray://) to a port nothing listens on; Ray's own connection timeouts shortened to 1 s."""
    data = write_phantom(tmp_path / "phantom", TINY_PHANTOM, progress=False)
    address = f"ray://127.0.0.1:{free_port()}"
    run = subprocess.run([sys.executable, "-m", "raysearch", "run", "classification", "--data", str(data),
                          "--address", address, "--results", str(tmp_path / "results"), "--name", "unreached",
                          "--quiet"], capture_output=True, text=True, timeout=300,
                         env=os.environ | {"RAY_CLIENT_INITIAL_CONNECTION_TIMEOUT_S": "1",
                                           "RAY_CLIENT_MAX_CONNECTION_TIMEOUT_S": "1"})
    assert run.returncode == 2, run.stderr[-3000:]
    assert run.stderr.strip().splitlines() == [
        f"raysearch: error: --address {address}: could not connect to the Ray cluster: ray client connection timeout"]
    assert not (tmp_path / "results" / "unreached").exists()
