"""`--seed` reproduces a study: two real `raysearch run` processes on a tiny phantom dataset (each starts its own
local Ray instance) with the same seed give the same trials, parameters and metrics."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from raysearch.core.layout import TRIALS_FILE
from raysearch.data.phantom import PhantomSpec, write_phantom

pytestmark = pytest.mark.slow

SPACE = """task: multitask
parameters:
  lr: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}
  width: {type: categorical, choices: [8, 16]}
  dropout: {type: float, low: 0.0, high: 0.5}
fixed: {model: vgg, conv_layers: 2, batch_size: 16}
"""
# Measured, so they differ from run to run whatever the seed.
TIMINGS = {"metric.epoch_time_s.best", "metric.epoch_time_s.last", "latency_ms", "wall_time_s",
           "metric.cache_hit.best", "metric.cache_hit.last"}


def _environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"RAY_USAGE_STATS_ENABLED": "0"}


def _command(data: Path, space: Path, results: Path, *flags: str) -> list[str]:
    return [sys.executable, "-m", "raysearch", "run", "multitask", "--data", str(data), "--space", str(space),
            "--image-size", "32", "--results", str(results), "--name", "study", "--quiet", *flags]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("reproducible")
    data = write_phantom(root / "phantom", PhantomSpec(train=32, val=8, test=8, image_size=32), progress=False)
    space = root / "space.yaml"
    space.write_text(SPACE)
    return data, space


def _trials(results: Path) -> list[dict[str, object]]:
    """Each trial's parameters and measured metrics (not its id, path or timings), in parameter order."""
    rows = pq.read_table(results / "study" / TRIALS_FILE).to_pylist()
    kept = [{k: v for k, v in row.items() if k.startswith(("param.", "metric.", "test.")) and k not in TIMINGS}
            for row in rows]
    return sorted(kept, key=lambda row: repr(sorted((k, v) for k, v in row.items() if k.startswith("param."))))


def test_the_same_seed_reproduces_a_study(inputs: tuple[Path, Path], tmp_path: Path) -> None:
    data, space = inputs
    flags = ("--trials", "2", "--max-epochs", "1", "--concurrency", "1", "--seed", "7")
    for run in ("first", "second"):
        done = subprocess.run(_command(data, space, tmp_path / run, *flags), capture_output=True, text=True,
                              env=_environment(), timeout=900)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    first, second = _trials(tmp_path / "first"), _trials(tmp_path / "second")
    assert len(first) == 2 and first[0] != first[1]
    assert any(k.startswith("param.lr") for k in first[0]) and any(k.startswith("metric.val_") for k in first[0])
    assert first == second
