"""The local Ray instance's dashboard port: free, and outside the ports the kernel hands to outgoing connections."""

from __future__ import annotations

import socket

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
