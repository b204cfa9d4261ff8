"""A trained model on new radiographs: numpy arrays, image files, folders or glob patterns in, one
`Prediction` per image out. An image that cannot be read gets a Prediction with its `error` set and the
others go on.

A `Model` comes from an exported model folder (`load_model(STUDY/model)`: `config.yaml` + `weights.pt`,
loaded with `weights_only=True`) or from any trial's checkpoint (`Model.from_trial`). A malformed folder (a
key missing from config.yaml, a truncated weights.pt, weights of another network) is a one-line DataError.
"""

from __future__ import annotations

import glob
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import yaml
from torch import nn

from raysearch.core.devices import torch_device
from raysearch.core.files import atomic_folder, check_writable_folder
from raysearch.core.layout import CONFIG_FILE, WEIGHTS_FILE, StudyFolder
from raysearch.core.options import NO_TTA
from raysearch.data.images import ImageError, array_grey8, is_image, read_grey
from raysearch.data.preprocess import Placement, Preprocessing
from raysearch.errors import ConfigError, DataError, RaysearchError
from raysearch.inference.overlay import draw_overlay, write_png
from raysearch.inference.restore import build_model, model_input, restore_trial
from raysearch.models.ensemble import EnsembleNet
from raysearch.tasks import create_task
from raysearch.tasks.base import Task
from raysearch.training.checkpoints import load_weights
from raysearch.training.hparams import preprocessing_of

PREDICTIONS_JSON = "predictions.json"
CONFIG_KEYS: dict[str, type] = {"task": str, "classes": list, "hyperparameters": dict, "preprocessing": dict}
GLOB_CHARACTERS = frozenset("*?[")
BATCH_SIZE = 32

ImageInput = str | Path | np.ndarray
Images = ImageInput | Iterable[ImageInput]


@dataclass
class Prediction:
    """What a model says about one image. Coordinates are normalised to the original image; `mask` is 0/1
    at the original size. `overlay` and `mask_file` are set when the prediction was written to a folder;
    `window` says how the image was mapped to 8-bit grey (the intensity window of a DICOM or 16-bit file);
    `error` when the image could not be read (then nothing else is set)."""

    image: str
    class_name: str | None = None
    probability: float | None = None
    probabilities: dict[str, float] = field(default_factory=dict)
    polygon: list[float] | None = None
    mask: np.ndarray | None = field(default=None, repr=False)
    overlay: str | None = None
    mask_file: str | None = None
    window: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        """Whether the image was read and labelled."""
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        """The prediction as JSON-ready values (the mask array left out: see `mask_file`)."""
        return {k: v for k, v in asdict(self).items() if k != "mask"}


@dataclass(frozen=True)
class _Source:
    """One image to label: its name, and its 8-bit grey pixels and their window, or why there are none."""

    name: str
    pixels: np.ndarray | None
    error: str | None = None
    window: str | None = None


@dataclass(frozen=True)
class Model:
    """A trained network with what it needs to label raw radiographs: task, classes, preprocessing."""

    task: Task
    network: nn.Module
    classes: list[str]
    preprocessing: Preprocessing
    config: dict[str, Any]

    @classmethod
    def from_trial(cls, study_dir: Path, trial_id: str) -> Model:
        """Any trial of a finished study, with the weights of its best epoch (from its checkpoint)."""
        folder = StudyFolder(study_dir)
        study = folder.read_study()
        task, network, hp = restore_trial(folder.directory, study, trial_id, folder.trial_row(trial_id), torch_device())
        config = {"study": study["name"], "trial_id": trial_id, "task": study["task"],
                  "classes": study["data"]["classes"], "hyperparameters": hp}
        return cls(task, network, list(config["classes"]), preprocessing_of(hp), config)

    def example_input(self, batch: int = 1) -> torch.Tensor:
        """A (batch, C, S, S) float input of the shape the network takes."""
        size, channels = self.preprocessing.image_size, self.preprocessing.channels
        return torch.zeros(batch, channels, size, size, device=next(self.network.parameters()).device)

    @torch.no_grad()
    def predict(self, images: Images, *, out: Path | None = None) -> list[Prediction]:
        """Label `images`: a grey array (H, W) or a stack (N, H, W) (uint8, uint16 or floats in [0, 1]), image
        files (DICOM and 16-bit ones too), folders (every image in them, recursively), glob patterns, or a list
        of these; images over 8 bits are mapped by the model's intensity window. With `out`, overlay PNGs
        (prediction in green, on the windowed image), mask PNGs and predictions.json are written there too: built
        beside the folder and swapped in for it when complete, so `out` must be new, empty, or an earlier
        prediction folder (checked first)."""
        if out is not None:
            _check_out(Path(out))
        sources = list(_sources(images, self.preprocessing.intensity))
        predictions = [Prediction(image=s.name, error=s.error, window=s.window) for s in sources]
        readable = [(p, s.pixels) for p, s in zip(predictions, sources, strict=True) if s.pixels is not None]
        for start in range(0, len(readable), BATCH_SIZE):
            self._label(readable[start : start + BATCH_SIZE])
        if out is not None:
            _write(predictions, [s.pixels for s in sources], Path(out))
        return predictions

    def _label(self, batch: Sequence[tuple[Prediction, np.ndarray]]) -> None:
        inputs = [model_input(pixels, self.preprocessing) for _, pixels in batch]
        tensor = torch.cat([tensor for tensor, _ in inputs]).to(next(self.network.parameters()).device)
        found = self.task.predictions(self.network(tensor))
        for i, ((prediction, pixels), (_, where)) in enumerate(zip(batch, inputs, strict=True)):
            height, width = pixels.shape
            if "class" in found:
                probabilities = found["probabilities"][i]
                prediction.class_name = self.classes[int(found["class"][i])]
                prediction.probability = float(probabilities.max())
                prediction.probabilities = {c: float(p) for c, p in zip(self.classes, probabilities, strict=True)}
            if "polygon" in found:
                prediction.polygon = polygon_to_source(found["polygon"][i], where, width, height)
            if "mask" in found:
                prediction.mask = _mask_to_source(found["mask"][i], where, width, height)


def load_model(model_dir: Path) -> Model:
    """An exported model folder (config.yaml + weights.pt), ready to predict; DataError naming the file and
    the field when the folder is malformed."""
    model_dir = Path(model_dir)
    config_path, weights = model_dir / CONFIG_FILE, model_dir / WEIGHTS_FILE
    if not config_path.is_file() or not weights.is_file():
        raise DataError(f"{model_dir}: not an exported model (needs {CONFIG_FILE} and {WEIGHTS_FILE})")
    config = read_model_config(config_path)
    try:
        task = create_task(config["task"])
    except RaysearchError as error:
        raise DataError(f"{config_path}: task: {error}") from None
    try:
        preprocessing = Preprocessing(**config["preprocessing"])
    except TypeError as error:
        raise DataError(f"{config_path}: preprocessing: {error}") from None
    try:
        network = _network(task, config)
    except (RaysearchError, KeyError, TypeError, ValueError) as error:
        field = "ensemble" if "ensemble" in config else "hyperparameters"
        raise DataError(f"{config_path}: {field}: cannot build the network ({error})") from None
    return Model(task, load_weights(network, weights, torch_device()), list(config["classes"]), preprocessing, config)


def _network(task: Task, config: Mapping[str, Any]) -> nn.Module:
    """The untrained network of an exported model: the task's, or an ensemble of its members' (config `ensemble`)."""
    if "ensemble" not in config:
        return build_model(task, config["hyperparameters"], len(config["classes"]))
    ensemble = config["ensemble"]
    if not isinstance(ensemble, dict) or not isinstance(ensemble.get("hyperparameters"), list):
        raise ValueError("expected a mapping with a list of members' hyperparameters")
    return EnsembleNet([build_model(task, hp, len(config["classes"])) for hp in ensemble["hyperparameters"]],
                       ensemble.get("tta", NO_TTA))


def read_model_config(path: Path) -> dict[str, Any]:
    """An exported model's config.yaml, with every key a model needs, of the right type (else a DataError)."""
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise DataError(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from None
    if not isinstance(config, dict):
        raise DataError(f"{path}: not a mapping of {', '.join(CONFIG_KEYS)}")
    missing = [key for key in CONFIG_KEYS if key not in config]
    if missing:
        raise DataError(f"{path}: missing {', '.join(missing)} (an exported model needs {', '.join(CONFIG_KEYS)})")
    for key, kind in CONFIG_KEYS.items():
        if not isinstance(config[key], kind):
            raise DataError(f"{path}: {key}: expected a {kind.__name__}, got {type(config[key]).__name__}")
    return config


def _sources(images: Images, intensity: str) -> Iterator[_Source]:
    """The images named by `images`, in order (see Model.predict); missing or unreadable ones with an error."""
    if isinstance(images, np.ndarray):
        yield from _array_sources(images, intensity)
        return
    if isinstance(images, (str, Path)):
        yield from _path_sources(images, intensity)
        return
    for item in images:
        yield from _sources(item, intensity)


def _array_sources(array: np.ndarray, intensity: str) -> Iterator[_Source]:
    if array.ndim not in (2, 3):
        raise DataError(f"an image array must be (H, W) or (N, H, W) grey levels, got shape {array.shape}")
    named = [("array", array)] if array.ndim == 2 else [(f"array[{i}]", image) for i, image in enumerate(array)]
    for name, image in named:
        pixels, window = array_grey8(image, intensity)
        yield _Source(name, pixels, window=window)


def _path_sources(given: str | Path, intensity: str) -> Iterator[_Source]:
    path = Path(given)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if is_image(p))
        if not files:
            yield _Source(str(path), None, f"{path}: no image files in this folder")
        for file in files:
            yield _read(file, intensity)
    elif path.exists():
        yield _read(path, intensity)
    elif GLOB_CHARACTERS & set(str(given)):
        matches = sorted(Path(m) for m in glob.glob(str(given), recursive=True) if Path(m).is_file())
        if not matches:
            yield _Source(str(given), None, f"{given}: no file matches this pattern")
        for match in matches:
            yield _read(match, intensity)
    else:
        yield _Source(str(path), None, f"{path}: no such file or folder")


def _read(path: Path, intensity: str) -> _Source:
    try:
        pixels, window = read_grey(path, intensity)
    except ImageError as error:
        return _Source(str(path), None, f"{path}: not a readable image ({error})")
    return _Source(str(path), pixels, window=window)


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


def _output_names(predictions: Sequence[Prediction]) -> Iterator[str]:
    """A distinct file stem per prediction (`name`, `name-2`, ... for repeated stems)."""
    used: dict[str, int] = {}
    for prediction in predictions:
        stem = Path(prediction.image).stem.replace("[", "-").replace("]", "")
        used[stem] = used.get(stem, 0) + 1
        yield stem if used[stem] == 1 else f"{stem}-{used[stem]}"


def _check_out(out: Path) -> None:
    """ConfigError unless `out` can be replaced as a whole: absent, empty, or an earlier prediction folder (one
    holding predictions.json), and writable."""
    check_writable_folder(out, "--out")
    if out.is_dir() and any(out.iterdir()) and not (out / PREDICTIONS_JSON).is_file():
        raise ConfigError(f"--out {out}: holds files that are not raysearch predictions (no {PREDICTIONS_JSON}); "
                          "give a new or empty folder")


def _write(predictions: Sequence[Prediction], pixels: Sequence[np.ndarray | None], out: Path) -> None:
    """Overlay and mask PNGs of the labelled images, and predictions.json with every prediction, built beside
    `out` and swapped in for it when complete (a failure leaves the earlier predictions as they were)."""
    with atomic_folder(out) as staging:
        for prediction, image, name in zip(predictions, pixels, _output_names(predictions), strict=True):
            if image is None:
                continue
            if prediction.mask is not None:
                prediction.mask_file = str(out / f"{name}_mask.png")
                write_png(staging / f"{name}_mask.png", prediction.mask * np.uint8(255))
            label = f"{prediction.class_name} {prediction.probability:.0%}" if prediction.class_name else None
            prediction.overlay = str(out / f"{name}.png")
            write_png(staging / f"{name}.png", draw_overlay(image, predicted_polygon=prediction.polygon,
                                                       mask=prediction.mask, label=label))
        (staging / PREDICTIONS_JSON).write_text(json.dumps([p.to_dict() for p in predictions], indent=2))


