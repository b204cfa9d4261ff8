"""End to end on DICOM: an image + mask set of DICOM radiographs (a third MONOCHROME1) and one decompression bomb
trains with `raysearch run segmentation`, lists the bomb in data_issues.parquet, and `raysearch predict` labels
its DICOM files with the window it used."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from image_files import bomb_png, write_dicom

SPACE = """task: segmentation
metric: val_score
mode: max
parameters:
  lr: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}
fixed:
  architecture: unet
  encoder: resnet18
  batch_size: 8
"""


def _dicom_set(root: Path, count: int = 12) -> list[Path]:
    rng = np.random.default_rng(1)
    for folder in ("images", "masks"):
        (root / folder).mkdir(parents=True)
    written = []
    for i in range(count):
        mask = np.zeros((40, 48), np.uint8)
        top, left = rng.integers(4, 20), rng.integers(4, 28)
        mask[top : top + 14, left : left + 16] = 1
        pixels = (800 + rng.normal(0, 80, mask.shape) + 2200.0 * mask).clip(0, 4095).astype(np.uint16)
        mono1 = i % 3 == 0
        written.append(write_dicom(root / "images" / f"r{i}.dcm", 4095 - pixels if mono1 else pixels,
                                   photometric="MONOCHROME1" if mono1 else "MONOCHROME2", patient=f"P{i // 2}",
                                   window=(2048, 4096)))
        cv2.imwrite(str(root / "masks" / f"r{i}.png"), mask * 255)
    return written


@pytest.mark.slow
def test_a_dicom_image_mask_set_trains_and_predicts(tmp_path: Path) -> None:
    data = tmp_path / "dicom"
    files = _dicom_set(data)
    bomb = bomb_png(data / "images" / "bomb.png")
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    environment = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"RAY_USAGE_STATS_ENABLED": "0"}

    def raysearch(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "raysearch", *args], capture_output=True, text=True,
                              timeout=600, env=environment)

    results = tmp_path / "results"
    done = raysearch("run", "segmentation", "--data", str(data), "--space", str(space), "--trials", "1",
                     "--max-epochs", "1", "--image-size", "32", "--results", str(results), "--name", "dicom",
                     "--split-ratios", "0.5,0.25,0.25", "--quiet")
    assert done.returncode == 0, f"{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    study = results / "dicom"
    issues = pd.read_parquet(study / "data_issues.parquet")
    assert issues["path"].tolist() == [str(bomb.resolve())] and "decompression bomb" in issues["message"].iloc[0]
    out = tmp_path / "labelled"
    done = raysearch("predict", str(study), *map(str, files[:3]), "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads((out / "predictions.json").read_text())
    assert [f["image"] for f in found] == list(map(str, files[:3]))
    assert found[0]["window"] == "DICOM window centre 2048 width 4096, inverted (MONOCHROME1)"
    assert found[1]["window"] == "DICOM window centre 2048 width 4096"
    for item in found:
        assert cv2.imread(item["mask_file"], cv2.IMREAD_GRAYSCALE).shape == (40, 48)
        assert cv2.imread(item["overlay"]).shape == (40, 48, 3)
