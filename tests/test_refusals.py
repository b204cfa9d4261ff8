"""Misuse refused before anything starts: `raysearch run` with a bad search space or degenerate data ends
with one line and exit code 2, creates no results folder and starts no Ray."""

from __future__ import annotations

from pathlib import Path

import pytest
import ray
from conftest import TINY_PHANTOM

from raysearch.cli import main
from raysearch.data.phantom import write_phantom


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small phantom dataset (YOLO polygons + masks)."""
    return write_phantom(tmp_path_factory.mktemp("refusals") / "phantom", TINY_PHANTOM, progress=False)


def refused(capsys: pytest.CaptureFixture[str], results: Path, *args: str) -> str:
    """Run the CLI in this process; assert exit code 2, one line on stderr, no results folder, no Ray."""
    code = main(["run", *args, "--results", str(results), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("raysearch: error: "), err
    assert not results.exists()
    assert not ray.is_initialized()
    return lines[0].removeprefix("raysearch: error: ")


@pytest.mark.parametrize(("fixed", "message"), [
    ("optimizer: adamz", "fixed.optimizer: unknown 'adamz'; valid: adam, adamw, sgd"),
    ("augment: 3.0", "fixed.augment: must be <= 1.0, got 3.0"),
    ("batch_size: 0", "fixed.batch_size: must be >= 1, got 0"),
    ("model: not_a_model", "fixed.model: 'not_a_model' is neither 'vgg' nor a timm model name"),
])
def test_bad_fixed_value_is_refused_naming_file_and_key(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                        phantom: Path, fixed: str, message: str) -> None:
    space = tmp_path / "space.yaml"
    space.write_text(f"task: multitask\nparameters:\n  lr: {{type: float, low: 1.0e-3, high: 1.0e-2}}\n"
                     f"fixed:\n  {fixed}\n")
    line = refused(capsys, tmp_path / "results", "multitask", "--data", str(phantom), "--space", str(space))
    assert line.startswith(f"{space}: {message}")


def test_choice_that_is_a_mapping_is_refused(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                             phantom: Path) -> None:
    space = tmp_path / "space.yaml"
    space.write_text("task: multitask\nparameters:\n  optimizer: {type: categorical, choices: [adam, {sgd: 0.9}]}\n")
    line = refused(capsys, tmp_path / "results", "multitask", "--data", str(phantom), "--space", str(space))
    assert line == f"{space}: parameters.optimizer.choices: expected a name, got {{'sgd': 0.9}}"
