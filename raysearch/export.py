"""The best model of a study, exported with its resolved configuration, and `predict` on new radiographs.

`<study>/model/` holds `config.yaml` (task, hyperparameters, classes, preprocessing, provenance) and
`weights.pt` (`{"model": state_dict}`, loaded with `weights_only=True`): everything needed to label new
images without the study, the dataset or Ray.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
import torch
import yaml
from torch import nn

from raysearch.data.preprocess import Placement, Preprocessing
from raysearch.errors import DataError
from raysearch.layout import CONFIG_FILE, MODEL_DIR, WEIGHTS_FILE, StudyFolder
from raysearch.overlay import draw_overlay
from raysearch.results import write_text_atomic
from raysearch.tasks import create_task
from raysearch.tasks.base import Task
from raysearch.trained import build_model, device, load_weights, model_input, trial_hyperparameters
from raysearch.training.hparams import preprocessing_of


@dataclass(frozen=True)
class ExportedModel:
    """A loaded exported model, ready to predict."""

    task: Task
    network: nn.Module
    classes: list[str]
    preprocessing: Preprocessing


@dataclass
class Prediction:
    """What a model says about one image; the polygon is normalised to the original image."""

    image: str
    overlay: str
    class_name: str | None = None
    probability: float | None = None
    polygon: list[float] | None = None
    mask: str | None = None
    probabilities: dict[str, float] = field(default_factory=dict)


def export_model(study_dir: Path, trial_id: str | None = None) -> Path:
    """Export a trial (default: the best by the study's metric) to `<study>/model/`; returns that folder."""
    study_dir = Path(study_dir)
    folder = StudyFolder(study_dir)
    study = folder.read_study()
    metric = study["scheduler"]["metric"]
    if trial_id is None:
        ranked = folder.ranked_trials(study)
        if ranked.empty:
            raise DataError(f"{study_dir}: no finished trial to export")
        trial_id = str(ranked["trial_id"].iloc[0])
    rows = {r["trial_id"]: r for r in pq.read_table(folder.trials_file).to_pylist()}
    if trial_id not in rows:
        raise DataError(f"{study_dir}: no trial {trial_id}")
    checkpoint = folder.best_checkpoint(trial_id)
    if checkpoint is None:
        raise DataError(f"{study_dir}: trial {trial_id} has no checkpoint to export")
    row = rows[trial_id]
    hp = trial_hyperparameters(study, row)
    config = {
        "study": study["name"], "trial_id": trial_id, "task": study["task"], "classes": study["data"]["classes"],
        "hyperparameters": hp, "preprocessing": asdict(preprocessing_of(hp)),
        "validation": {metric: row.get(f"metric.{metric}.best")},
        "test": {k: v for k, v in row.items() if k.startswith("test.") and v is not None},
        "params": row.get("params"), "latency_ms": row.get("latency_ms"),
    }
    target = folder.model_dir
    staging = study_dir / f".{MODEL_DIR}.tmp-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    weights = torch.load(checkpoint, map_location="cpu", weights_only=True)
    torch.save({"model": weights["model"]}, staging / WEIGHTS_FILE)
    write_text_atomic(yaml.safe_dump(config, sort_keys=False), staging / CONFIG_FILE)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(staging, target)
    return target


def load_model(model_dir: Path) -> ExportedModel:
    """An exported model folder, loaded for prediction (weights with `weights_only=True`)."""
    model_dir = Path(model_dir)
    config_path = model_dir / CONFIG_FILE
    if not config_path.is_file() or not (model_dir / WEIGHTS_FILE).is_file():
        raise DataError(f"{model_dir}: not an exported model (needs {CONFIG_FILE} and {WEIGHTS_FILE})")
    config = yaml.safe_load(config_path.read_text())
    task = create_task(config["task"])
    hp = config["hyperparameters"]
    network = load_weights(build_model(task, hp, len(config["classes"])), model_dir / WEIGHTS_FILE, device())
    return ExportedModel(task, network, config["classes"], Preprocessing(**config["preprocessing"]))


def polygon_to_source(polygon: np.ndarray, where: Placement, width: int, height: int) -> list[float]:
    """Points normalised to the model's square input → normalised to the original image."""
    points = polygon.reshape(4, 2).astype(np.float64)
    x = (points[:, 0] * where.size - where.pad_x) / where.scale_x / width
    y = (points[:, 1] * where.size - where.pad_y) / where.scale_y / height
    return np.stack([x, y], axis=1).reshape(-1).tolist()


def _mask_to_source(mask: np.ndarray, where: Placement, width: int, height: int) -> np.ndarray:
    """A mask on the model's square input, cropped to the image's placement and resized to the original."""
    x, y = int(where.pad_x), int(where.pad_y)
    crop = mask[y : y + round(height * where.scale_y), x : x + round(width * where.scale_x)]
    return cv2.resize(crop.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST)


def _output_name(path: Path, used: set[str]) -> str:
    name = path.stem
    while name in used:
        name = f"{name}-{len(used)}"
    used.add(name)
    return name


@torch.no_grad()
def predict(model_dir: Path, images: list[Path], out: Path) -> list[Prediction]:
    """Label each image (class, polygon, mask) and write an overlay PNG (prediction in green) into `out`."""
    model = load_model(model_dir)
    out.mkdir(parents=True, exist_ok=True)
    results, used = [], set()
    for path in images:
        image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        if image is None:
            raise DataError(f"{path}: not a readable image")
        height, width = image.shape
        tensor, where = model_input(image, model.preprocessing)
        found = model.task.predictions(model.network(tensor.to(device())))
        name = _output_name(path, used)
        prediction = Prediction(image=str(path), overlay=str(out / f"{name}.png"))
        if "class" in found:
            probabilities = found["probabilities"][0]
            prediction.class_name = model.classes[int(found["class"][0])]
            prediction.probability = float(probabilities.max())
            prediction.probabilities = {c: float(p) for c, p in zip(model.classes, probabilities, strict=True)}
        if "polygon" in found:
            prediction.polygon = polygon_to_source(found["polygon"][0], where, width, height)
        mask = None
        if "mask" in found:
            mask = _mask_to_source(found["mask"][0], where, width, height)
            prediction.mask = str(out / f"{name}_mask.png")
            cv2.imwrite(prediction.mask, mask * np.uint8(255))
        label = f"{prediction.class_name} {prediction.probability:.0%}" if prediction.class_name else None
        overlay = draw_overlay(image, predicted_polygon=prediction.polygon, mask=mask, label=label)
        cv2.imwrite(prediction.overlay, overlay)
        results.append(prediction)
    (out / "predictions.json").write_text(json.dumps([asdict(r) for r in results], indent=2))
    return results
