"""benchmarks/gpu_acceptance.py: its parsers of `nvidia-smi dmon` and pytest output, its refusals, and its
`--cpu-smoke` run (every step at toy size on the CPU, so that the GPU run cannot fail for a typo)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_acceptance.py"
_spec = importlib.util.spec_from_file_location("gpu_acceptance", SCRIPT)
acceptance = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = acceptance   # its dataclasses look their module up there
_spec.loader.exec_module(acceptance)

DMON = """# gpu     sm    mem    enc    dec    jpg    ofa
# Idx      %      %      %      %      %      %
    0      0      0      0      0      0      0
    0      0      1      0      0      0      0
    0     80     30      0      0      0      0
    0      0     10      0      0      0      0
    0     90     35      0      0      0      0
    0     70     20      0      0      0      0
    0      -      -      -      -      -      -
    0      0      0      0      0      0      0
"""


def test_dmon_figures_count_from_the_first_to_the_last_busy_second() -> None:
    busy, idle, window = acceptance.dmon_figures(DMON)
    assert window == 4 and busy == pytest.approx(60.0) and idle == pytest.approx(0.25)


def test_dmon_figures_of_a_gpu_never_busy_or_no_samples() -> None:
    header = DMON.split("\n", 2)
    assert acceptance.dmon_figures("\n".join(header[:2]) + "\n    0      0      0      0      0      0      0\n") \
        == (0.0, 1.0, 1)
    assert acceptance.dmon_figures("") == (0.0, 1.0, 0)


def test_pytest_counts_read_the_last_summary_line() -> None:
    output = "tests/test_x.py .F\n1 skipped in setup\n2 passed, 1 failed, 1 error, 40 deselected in 3.20s\n"
    assert acceptance.pytest_counts(output) == {"passed": 2, "failed": 1, "error": 1, "deselected": 40}
    assert acceptance.pytest_counts("no tests ran\n") == {}


def test_refusals_come_before_anything_is_written(tmp_path: Path) -> None:
    out = tmp_path / "out"
    for argv, message in (
            (["--out", str(out), "--data", str(tmp_path / "absent")], "absent: no data.yaml"),
            (["--out", str(out), "--cpu-smoke", "--data", str(tmp_path)], "are for the GPU run"),
            (["--out", str(out), "--trials-per-gpu", "0"], "--trials-per-gpu must be at least 1"),
            (["--out", str(out), "--cpu-smoke", "--steps", "throughput,gpu"], "--steps: unknown step gpu; choose")):
        with pytest.raises(SystemExit, match=message):
            acceptance.main(argv)
    assert not out.exists()


def test_the_gpu_run_s_own_commands_and_space_are_ones_raysearch_accepts(tmp_path: Path) -> None:
    """What only the GPU run uses (the packed space, --trials-per-gpu, the default spaces), checked here."""
    from raysearch.cli import build_parser
    from raysearch.search.space import load_space
    from raysearch.tasks import create_task
    from raysearch.training.hparams import schema

    ctx = acceptance.Context(False, tmp_path, tmp_path, tmp_path, acceptance.GPU_SIZES, 0.0, 2, "127.0.0.1:6379")
    packed = build_parser().parse_args(acceptance.packed_command(ctx)[3:])
    assert (packed.trials_per_gpu, packed.concurrency, packed.scheduler, packed.image_size) == (4, 4, "none", 224)
    space = load_space(Path(packed.space), schema=schema(create_task("classification").hyperparameters))
    assert space.fixed == {"model": "resnet18", "batch_size": 64}
    search = build_parser().parse_args(acceptance.real_search_command(ctx, "multitask", 80)[3:])
    assert (search.task, search.space, search.time_budget, search.trials_per_gpu) == ("multitask", None, "80s", 2)


@pytest.mark.slow
def test_the_cpu_smoke_run_fills_every_row_of_the_summary(tmp_path: Path) -> None:
    """Every step but the classification search (the same `real_search` as multitask's, another task name: left
    out with --steps to keep CI short, so its rows say skipped)."""
    out = tmp_path / "out"
    environment = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"RAY_USAGE_STATS_ENABLED": "0"}
    run_steps = [step.name for step in acceptance.STEPS if step.name != "classification"]
    done = subprocess.run([sys.executable, str(SCRIPT), "--cpu-smoke", "--out", str(out), "--work",
                           str(tmp_path / "work"), "--budget", "1500", "--steps", ",".join(run_steps)],
                          capture_output=True, text=True, timeout=1500, env=environment)
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    table = (out / acceptance.SUMMARY_FILE).read_text()
    rows = [line.split(" | ") for line in table.splitlines() if line.startswith("| ") and " --- " not in line][1:]
    expected = [(step.name, name, target) for step in acceptance.STEPS for name, target in step.rows]
    assert [(r[0].lstrip("| "), r[1], r[3]) for r in rows] == expected
    skipped = [r for r in rows if r[0].lstrip("| ") == "classification"]
    assert skipped and all(r[2] == "left out (--steps)" and r[4].rstrip(" |") == "skipped" for r in skipped)
    ran = [r for r in rows if r[0].lstrip("| ") != "classification"]
    assert all(r[4].rstrip(" |") in ("PASS", "FAIL", "info", "n/a on CPU") for r in ran)
    assert not [r for r in ran if r[2].startswith(("error:", "not run", "not reported", "left out"))]
    figures = {r[1]: (r[2], r[4].rstrip(" |")) for r in rows}
    assert figures["gpu-marked tests"][1] == figures["GPU SM busy, mean"][1] == "n/a on CPU"
    assert "device cpu" in figures["multitask search"][0] and "%" in figures["multitask test accuracy"][0]
    assert table in done.stdout
    assert sorted(p.name for p in out.iterdir()) == sorted([acceptance.SUMMARY_FILE] +
                                                           [f"{name}.log" for name in run_steps])
