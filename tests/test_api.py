"""The Python API for notebooks: the example of docs/python-api.md runs as written; `load_study` gives DataFrames, the
best trial and its model; `predict` takes arrays, files, folders and globs, reports unreadable files and
goes on; a malformed model folder is a one-line error."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import TINY_PHANTOM

import raysearch
from raysearch.cli import main
from raysearch.data.phantom import write_phantom
from raysearch.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def readme_python_api() -> str:
    """The python block of the Python API page (docs/python-api.md, linked from the README)."""
    text = ROOT.joinpath("docs", "python-api.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) == 1, "the Python API page has one example"
    return blocks[0]


def test_images(study: Path, count: int) -> list[str]:
    return pd.read_parquet(study / "predictions.parquet")["image"].drop_duplicates().head(count).tolist()


test_images.__test__ = False  # a helper, not a test


@pytest.mark.slow
def test_readme_python_api_example_runs(tmp_path: Path) -> None:
    write_phantom(tmp_path / "phantom", TINY_PHANTOM, progress=False)
    xrays = tmp_path / "new-xrays"
    xrays.mkdir()
    for image in sorted((tmp_path / "phantom" / "test" / "images").iterdir())[:2]:
        shutil.copy(image, xrays / image.name)
    (xrays / "broken.png").write_bytes(b"not a png")
    environment = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"RAY_USAGE_STATS_ENABLED": "0"}
    done = subprocess.run([sys.executable, "-c", readme_python_api()], cwd=tmp_path, capture_output=True, text=True,
                          timeout=900, env=environment)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Study('notebook', multitask, 2 trials, val_score max, best" in done.stdout
    lines = [line for line in done.stdout.splitlines() if "new-xrays" in line]
    assert len(lines) == 3 and sum("not a readable image" in line for line in lines) == 1
    model = tmp_path / "raysearch-results" / "notebook" / "model"
    assert (model / "model.torchscript.pt").is_file()


def test_run_refuses_an_unknown_option_before_starting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="unknown option trails; options: .*trials"):
        raysearch.run("multitask", trails=2)
    assert list(tmp_path.iterdir()) == []


def test_import_raysearch_exposes_the_api_lazily() -> None:
    assert {"run", "load_study", "load_model", "Prediction", "StudySpec"} <= set(dir(raysearch))
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        raysearch.nothing  # noqa: B018


@pytest.mark.slow
def test_load_study_gives_frames_best_trial_and_models(tiny_study) -> None:
    study = raysearch.load_study(tiny_study.study)
    pd.testing.assert_frame_equal(study.trials, pd.read_parquet(tiny_study.study / "trials.parquet"))
    assert len(study.epochs) == study.trials["epochs"].sum()
    exported = yaml.safe_load((tiny_study.study / "model" / "config.yaml").read_text())
    best = study.best_trial
    assert best["trial_id"] == exported["trial_id"]
    assert best["metric.val_score.best"] == study.trials["metric.val_score.best"].max()
    assert study.history(best["trial_id"])["epoch"].tolist() == list(range(1, best["epochs"] + 1))

    model = study.model()
    assert model.config["trial_id"] == best["trial_id"] and model.classes == exported["classes"]
    assert model.config["validation"] == exported["validation"]  # loaded from the exported folder
    path = test_images(tiny_study.study, 1)[0]
    pixels = cv2.imread(path, cv2.IMREAD_GRAYSCALE)
    from_file, from_array, from_stack = model.predict(path)[0], model.predict(pixels)[0], model.predict(
        np.stack([pixels, 255 - pixels]))
    assert from_file.image == path and from_array.image == "array"
    assert [p.image for p in from_stack] == ["array[0]", "array[1]"]
    assert from_array.probabilities == pytest.approx(from_file.probabilities, abs=1e-6)
    assert from_stack[0].polygon == pytest.approx(from_file.polygon, abs=1e-6)
    assert sum(from_file.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    assert model.predict(pixels.astype(np.float32) / 255)[0].probabilities == pytest.approx(
        from_file.probabilities, abs=1e-5)

    other = next(t for t in study.ranked["trial_id"] if t != best["trial_id"])
    assert study.model(other).config["trial_id"] == other


@pytest.mark.slow
def test_predict_takes_folders_and_globs_and_goes_on_past_unreadable_files(tiny_study, tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture) -> None:
    folder, loose = tmp_path / "xrays", tmp_path / "loose"
    (folder / "nested").mkdir(parents=True)
    loose.mkdir()
    images = test_images(tiny_study.study, 4)
    shutil.copy(images[0], folder / "a.png")
    shutil.copy(images[1], folder / "nested" / "b.png")
    (folder / "broken.png").write_bytes(b"\x89PNG cut short")
    (folder / "notes.txt").write_text("not an image, not a candidate")
    for image in images[2:]:
        shutil.copy(image, loose / Path(image).name)
    out = tmp_path / "out"
    code = main(["predict", str(tiny_study.study), str(folder), str(loose / "*.png"), str(tmp_path / "missing.png"),
                 "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 1
    skipped = captured.err.strip().splitlines()
    assert len(skipped) == 2 and "broken.png: not a readable image" in skipped[0]
    assert "missing.png: no such file or folder" in skipped[1]
    assert "Labelled 4 of 6 images" in captured.out
    written = yaml.safe_load((out / "predictions.json").read_text())
    assert [Path(p["image"]).name for p in written] == ["a.png", "broken.png", "b.png", *[Path(i).name for i in
                                                                                          images[2:]], "missing.png"]
    assert all(Path(p["overlay"]).is_file() for p in written if p["error"] is None)


def _drop_key(key: str) -> Callable[[Path], str]:
    def mutate(model: Path) -> str:
        config = yaml.safe_load((model / "config.yaml").read_text())
        del config[key]
        (model / "config.yaml").write_text(yaml.safe_dump(config))
        return f"config.yaml: missing {key}"
    return mutate


def _truncate_weights(model: Path) -> str:
    weights = model / "weights.pt"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 3])
    return "weights.pt: not a readable weights file, truncated or damaged"


def _other_network(model: Path) -> str:
    config = yaml.safe_load((model / "config.yaml").read_text())
    config["hyperparameters"]["width"] = config["hyperparameters"]["width"] * 2
    (model / "config.yaml").write_text(yaml.safe_dump(config))
    return "weights.pt: the weights do not fit the network its configuration builds"


def _bad_preprocessing(model: Path) -> str:
    config = yaml.safe_load((model / "config.yaml").read_text())
    config["preprocessing"]["sharpen"] = True
    (model / "config.yaml").write_text(yaml.safe_dump(config))
    return "config.yaml: preprocessing: Preprocessing.__init__() got an unexpected keyword argument 'sharpen'"


def _not_yaml(model: Path) -> str:
    (model / "config.yaml").write_text("task: [multitask\n")
    return "config.yaml: not valid YAML"


@pytest.mark.slow
@pytest.mark.parametrize("damage", [_drop_key("hyperparameters"), _drop_key("classes"), _truncate_weights,
                                    _other_network, _bad_preprocessing, _not_yaml],
                         ids=["no-hyperparameters", "no-classes", "truncated-weights", "other-network",
                              "unknown-preprocessing", "not-yaml"])
def test_malformed_model_folder_is_a_one_line_error(tiny_study, tmp_path: Path, capsys: pytest.CaptureFixture,
                                                    damage: Callable[[Path], str]) -> None:
    model = tmp_path / "model"
    shutil.copytree(tiny_study.study / "model", model)
    expected = damage(model)
    image = test_images(tiny_study.study, 1)[0]
    assert main(["predict", str(model), image, "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and expected in error[0] and str(model) in error[0], error
    assert not (tmp_path / "out").exists()
