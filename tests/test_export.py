"""Deployment formats: ONNX (run by onnxruntime) and TorchScript give the same heads as PyTorch for every
task; `raysearch export` writes them into a study's model folder.

Tolerance: |onnxruntime - torch| <= 1e-4 + 1e-3 * |torch| element-wise (float32 kernels differ in
summation order; a wrong graph is off by orders of magnitude more)."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
import torch

from raysearch.cli import main
from raysearch.inference.export import INPUT_NAME, export_onnx, export_torchscript
from raysearch.inference.predict import Model, load_model
from raysearch.inference.restore import build_model, model_input
from raysearch.tasks import create_task
from raysearch.training.hparams import defaults

ATOL, RTOL = 1e-4, 1e-3
SMALL_VGG = {"model": "vgg", "conv_layers": 2, "width": 8}
TASKS = {"classification": SMALL_VGG, "regression": SMALL_VGG, "multitask": SMALL_VGG,
         "segmentation": {"encoder": "resnet18"}}
HEADS = {"classification": ["logits"], "regression": ["polygon"], "multitask": ["logits", "polygon"],
         "segmentation": ["mask"]}


def onnx_outputs(path: Path, image: torch.Tensor) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    return dict(zip(names, session.run(None, {INPUT_NAME: image.numpy()}), strict=True))


def assert_onnx_matches_pytorch(model: Model, study: Path) -> str:
    """The study's exported ONNX file gives the model's heads on its first test image (within ATOL, RTOL);
    that image's path."""
    path = pd.read_parquet(study / "predictions.parquet")["image"].iloc[0]
    image, _ = model_input(cv2.imread(path, cv2.IMREAD_GRAYSCALE), model.preprocessing)
    with torch.no_grad():
        expected = {name: value.numpy() for name, value in model.network(image).items()}
    exported = onnx_outputs(study / "model" / "model.onnx", image)
    assert sorted(exported) == ["logits", "polygon"]
    for name, value in expected.items():
        np.testing.assert_allclose(exported[name], value, atol=ATOL, rtol=RTOL, err_msg=name)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("task_name", list(TASKS))
def test_onnx_and_torchscript_match_torch_for_every_task_head(task_name: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    task = create_task(task_name)
    hp = {**defaults(task.hyperparameters), "image_size": 32, **TASKS[task_name]}
    network = build_model(task, hp, num_classes=3).eval()
    export_onnx(network, torch.zeros(2, hp["channels"], 32, 32), tmp_path / "model.onnx")
    export_torchscript(network, torch.zeros(2, hp["channels"], 32, 32), tmp_path / "model.pt")
    image = torch.randn(3, hp["channels"], 32, 32)  # another batch size than the export's example
    with torch.no_grad():
        expected = {name: value.numpy() for name, value in network(image).items()}
        scripted = {name: value.numpy() for name, value in torch.jit.load(str(tmp_path / "model.pt"))(image).items()}
    exported = onnx_outputs(tmp_path / "model.onnx", image)
    assert sorted(exported) == sorted(expected) == HEADS[task_name]
    for name, value in expected.items():
        np.testing.assert_allclose(exported[name], value, atol=ATOL, rtol=RTOL, err_msg=name)
        np.testing.assert_allclose(scripted[name], value, atol=ATOL, rtol=RTOL, err_msg=name)


@pytest.mark.slow
def test_export_command_writes_the_best_model_in_both_formats(tiny_study, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture) -> None:
    study = tmp_path / "study"
    shutil.copytree(tiny_study.study, study, symlinks=True)
    assert main(["export", str(study), "--format", "onnx,torchscript"]) == 0
    assert capsys.readouterr().out.split() == ["onnx:", str(study / "model" / "model.onnx"), "torchscript:",
                                               str(study / "model" / "model.torchscript.pt")]
    model = load_model(study / "model")
    assert_onnx_matches_pytorch(model, study)

    other = next(t for t in pd.read_parquet(study / "trials.parquet")["trial_id"] if t != model.config["trial_id"])
    assert main(["export", str(study), "--trial", other, "--format", "torchscript"]) == 0
    assert load_model(study / "model").config["trial_id"] == other
    assert not (study / "model" / "model.onnx").exists()  # the other trial's model replaced the folder
    assert main(["export", str(study / "model"), "--format", "onnx"]) == 0
    assert (study / "model" / "model.onnx").is_file()


def test_export_refuses_an_unknown_format(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["export", str(tmp_path), "--format", "onnx,tflite"]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert error == ["raysearch: error: --format: unknown format tflite; choose from onnx, torchscript"]
