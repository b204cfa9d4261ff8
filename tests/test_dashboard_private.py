"""The dashboard stays private: `raysearch dashboard` becomes a Streamlit server bound to localhost with usage
statistics off (stopping it stops the server), and it never connects to an address read from a results folder."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
import yaml
from ray_processes import alive, wait_for
from streamlit.testing.v1 import AppTest

DASHBOARD = Path(__file__).resolve().parents[1] / "dashboard"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _address(hex_address: str) -> str:
    """An address of /proc/net/tcp{,6} ('0100007F:1F90') as text ('127.0.0.1')."""
    raw = bytes.fromhex(hex_address.split(":")[0])
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return socket.inet_ntop(socket.AF_INET if len(words) == 4 else socket.AF_INET6, words)


def listening_addresses(pid: int) -> set[tuple[str, int]]:
    """The (address, port) pairs that process `pid` listens on over TCP, read from /proc."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        target = os.readlink(fd) if fd.is_symlink() else ""
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            fields = row.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                found.add((_address(fields[1]), int(fields[1].split(":")[1], 16)))
    return found


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[subprocess.Popen, int]]:
    """`raysearch dashboard` on an empty results folder, as a user starts it; killed at the end if still there."""
    results, port = tmp_path / "results", free_port()
    results.mkdir()
    environment = {**os.environ, "STREAMLIT_SERVER_HEADLESS": "true"}
    process = subprocess.Popen([sys.executable, "-m", "raysearch", "dashboard", str(results), "--port", str(port)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment)
    try:
        wait_for(lambda: answers(f"http://127.0.0.1:{port}") or process.poll() is not None, 120,
                 "the dashboard to answer")
        assert process.poll() is None, process.stderr.read()[-2000:]
        yield process, port
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)


def test_dashboard_listens_on_localhost_only_and_stops_with_raysearch(served) -> None:
    process, port = served
    command = Path(f"/proc/{process.pid}/cmdline").read_bytes().split(b"\0")
    # The raysearch process became the Streamlit server itself (no child left behind when it is stopped) ...
    assert b"streamlit" in command and command[command.index(b"--browser.gatherUsageStats") + 1] == b"false"
    # ... listening on the loopback address only, never on every interface.
    assert listening_addresses(process.pid) == {("127.0.0.1", port)}
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=60)
    assert not alive(process.pid)
    assert not answers(f"http://127.0.0.1:{port}")
    # What the user sees: Streamlit's URL lines, not its server's log (that takes --verbose).
    said = process.stdout.read() + process.stderr.read()
    assert f"URL: http://127.0.0.1:{port}" in said and "Uvicorn" not in said and "INFO" not in said, said


class _RayDashboard(BaseHTTPRequestHandler):
    """Answers like a Ray dashboard (GET /api/version)."""

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.send_response(200 if self.path == "/api/version" else 404)
        self.end_headers()
        self.wfile.write(b'{"version": "4"}')

    def log_message(self, *args: object) -> None:
        return


@pytest.fixture
def fake_ray_dashboard() -> Iterator[tuple[HTTPServer, list[str]]]:
    """A local HTTP server that answers like a Ray dashboard and records every request it gets."""
    requests: list[str] = []

    class Recording(_RayDashboard):
        def do_GET(self) -> None:  # noqa: N802
            requests.append(self.path)
            super().do_GET()

    server = HTTPServer(("127.0.0.1", 0), Recording)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server, requests
    server.shutdown()
    server.server_close()


def open_app(results: Path, monkeypatch: pytest.MonkeyPatch, *arguments: str) -> AppTest:
    monkeypatch.syspath_prepend(str(DASHBOARD))
    for name in ("RAY_ADDRESS", "RAY_DASHBOARD_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(sys, "argv", ["app.py", "--results", str(results), *arguments])
    app = AppTest.from_file(str(DASHBOARD / "app.py"), default_timeout=120)
    app.run()
    assert not app.exception, app.exception
    return app


@pytest.mark.slow
def test_address_in_a_received_study_yaml_is_never_contacted(tiny_study_copy, fake_ray_dashboard,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    server, requests = fake_ray_dashboard
    crafted = f"http://127.0.0.1:{server.server_port}"
    study_file = tiny_study_copy.study / "study.yaml"
    study = yaml.safe_load(study_file.read_text())
    study["spec"]["address"] = crafted
    study_file.write_text(yaml.safe_dump(study))

    app = open_app(tiny_study_copy.results, monkeypatch)
    time.sleep(1)
    assert requests == []
    assert not app.sidebar.success and crafted not in " ".join(c.value for c in app.sidebar.caption)


@pytest.mark.slow
def test_ray_dashboard_passed_by_the_user_is_linked(tiny_study_copy, fake_ray_dashboard,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    server, requests = fake_ray_dashboard
    url = f"http://127.0.0.1:{server.server_port}"
    app = open_app(tiny_study_copy.results, monkeypatch, "--ray-dashboard", url)
    assert requests == ["/api/version"]
    assert url in app.sidebar.success[0].value
