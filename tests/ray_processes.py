"""Find and stop exactly the Ray processes a test started (Linux /proc), never another test's.

`ray stop` would stop every Ray process on the machine, including the local instances of tests that
run beside these ones; so the fault and cluster tests walk the process tree of what they started.
A Ray process sets its title (`ray::RayTrainWorker`, `ray::IDLE`, ...), which /proc shows as its cmdline.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path


def _parent(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


def title(pid: int) -> str:
    """The process's command line (or title), '' when it is gone."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def descendants(root: int) -> list[int]:
    """Every live process below `root` in the process tree."""
    parents = {int(p): _parent(int(p)) for p in os.listdir("/proc") if p.isdigit()}
    found, frontier = [], [root]
    while frontier:
        children = [pid for pid, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def titled(root: int, prefix: str) -> list[int]:
    """The processes below `root` whose title starts with `prefix` (e.g. 'ray::RayTrainWorker')."""
    return [pid for pid in descendants(root) if title(pid).startswith(prefix)]


def alive(pid: int) -> bool:
    """Whether `pid` is a live process (not a zombie)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_for(condition, timeout: float, what: str, every: float = 0.2) -> None:
    """Poll `condition()` until it holds; AssertionError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(every)


def kill_all(pids: list[int], sig: int = signal.SIGKILL) -> None:
    """Send `sig` to each of `pids` that is still alive."""
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def kill_driver_when(command: list[str], condition: Callable[[], bool], what: str, env: dict[str, str],
                     every: float = 0.2) -> dict[int, str]:
    """Start a `raysearch` driver, SIGKILL it once `condition()` holds (within 600 s), and return the titles of
    the processes it had started (its local Ray instance), so that the caller can stop exactly those.
    AssertionError when the driver ended by itself before it could be killed."""
    driver = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        wait_for(lambda: condition() or driver.poll() is not None, 600, what, every=every)
        started = {pid: title(pid) for pid in descendants(driver.pid)}
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=60)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == -signal.SIGKILL, "the study was still running when its driver was killed"
    return started
