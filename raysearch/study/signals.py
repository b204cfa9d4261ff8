"""SIGTERM and SIGHUP stop a study the way Ctrl-C does: what Slurm, Kubernetes, systemd and Ray's autoscaler send.

The first signal is passed to whatever handles Ctrl-C at that moment: during the search that is Ray Tune's own
SIGINT handler, which ends the search after one last experiment snapshot (signed like every other, see
raysearch.search.signing); elsewhere it is Python's KeyboardInterrupt. A second signal stops at once. The study
then ends with `StudyInterrupted` carrying exit code 128 + the signal's number (143 for SIGTERM), whose one line
says how to resume.

`ray.init` replaces the process's SIGTERM handler (Ray's C++ failure-signal handler, which dumps a stack and
aborts), so `reinstall` puts this one back once connected to Ray.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

from raysearch.errors import StudyInterrupted

STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)
_received: list[int] | None = None   # the stop signals received inside `stop_signals`; None outside it


def _handle(number: int, frame: FrameType | None) -> None:
    """Pass the first stop signal on as Ctrl-C; a second one raises KeyboardInterrupt (stop at once)."""
    if _received is None:
        raise KeyboardInterrupt
    _received.append(number)
    name = signal.Signals(number).name
    if len(_received) > 1:
        print(f"raysearch: {name} again: stopping at once", file=sys.stderr, flush=True)
        raise KeyboardInterrupt
    print(f"raysearch: {name} received: stopping the study and saving its state (send it again to stop at once)",
          file=sys.stderr, flush=True)
    on_interrupt = signal.getsignal(signal.SIGINT)
    if not callable(on_interrupt):
        raise KeyboardInterrupt
    on_interrupt(signal.SIGINT, frame)


def reinstall() -> None:
    """Handle the stop signals here again (after `ray.init` took SIGTERM over); nothing outside `stop_signals`
    or off the main thread."""
    if _received is not None and threading.current_thread() is threading.main_thread():
        for number in STOP_SIGNALS:
            signal.signal(number, _handle)


@contextmanager
def stop_signals(study_dir: Path) -> Iterator[None]:
    """SIGTERM and SIGHUP stop the study in `study_dir` like Ctrl-C while the block runs (main thread only; a
    notebook's or a thread's caller keeps its own handlers); on leaving, the earlier handlers come back, and an
    interruption a signal caused becomes `StudyInterrupted` with exit code 128 + its number."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    global _received
    previous = {number: signal.getsignal(number) for number in STOP_SIGNALS}
    _received = received = []
    reinstall()
    try:
        yield
    except (StudyInterrupted, KeyboardInterrupt) as error:
        if not received:
            raise
        message = str(error) if isinstance(error, StudyInterrupted) else (
            f"study stopped at once; continue it with `raysearch resume {study_dir}`")
        raise StudyInterrupted(f"{signal.Signals(received[0]).name}: {message}",
                               exit_code=128 + received[0]) from None
    finally:
        _received = None
        for number, handler in previous.items():
            signal.signal(number, handler)
