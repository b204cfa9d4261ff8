"""Exporting a study's model for use without the study, the dataset or Ray.

`<study>/model/` holds `config.yaml` (task, hyperparameters, classes, preprocessing, provenance) and
`weights.pt` (the state dict under layout.WEIGHTS_KEY, loaded with `weights_only=True`), written at the end
of every run.
`export_ensemble` writes the K best trials as one model there instead (config.yaml's `ensemble`: members, test-time
augmentation, each member's hyperparameters).
`export_formats` adds deployment formats beside them: ONNX (`model.onnx`, for onnxruntime; needs the
`export` extra) and TorchScript (`model.torchscript.pt`, for `torch.jit.load`). Both take the preprocessed
image batch `image` (float32, N x C x S x S: config.yaml's `preprocessing` applied, as `Model.predict` does:
its `intensity` window first for DICOM and 16-bit images, raysearch.data.images.read_grey / array_grey8)
and return the task's heads by name: `logits` (N x classes), `polygon` (N x 8, points in [0, 1] of the
input square) and `mask` (N x 1 x S x S logits), whichever the task has.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict
from importlib.util import find_spec
from pathlib import Path

import torch
import yaml
from torch import nn

from raysearch.core.columns import score_column
from raysearch.core.files import atomic_file, atomic_folder
from raysearch.core.layout import (
    CONFIG_FILE,
    ONNX_FILE,
    TORCHSCRIPT_FILE,
    WEIGHTS_FILE,
    StudyFolder,
)
from raysearch.core.options import NO_TTA, check_tta, ensemble_name
from raysearch.errors import ConfigError, DataError
from raysearch.inference.restore import build_model, check_ensemble, trial_hyperparameters
from raysearch.tasks import create_task
from raysearch.training.checkpoints import load_weights, read_weights, save_weights
from raysearch.training.hparams import preprocessing_of

INPUT_NAME = "image"
ONNX_OPSET = 18
ONNX_PACKAGES = ("onnx", "onnxscript")


def export_model(study_dir: Path, trial_id: str | None = None) -> Path:
    """Export a trial (default: the best by the study's metric) to `<study>/model/`, built beside the old one and
    swapped in when complete; returns that folder."""
    folder = StudyFolder(study_dir)
    with atomic_folder(folder.model_dir) as staging:
        write_model(folder.directory, staging, trial_id)
    return folder.model_dir


def write_model(study_dir: Path, out: Path, trial_id: str | None = None) -> None:
    """`config.yaml` and `weights.pt` of a trial (default: the best by the study's metric) in the folder `out`;
    a one-line DataError, before anything is written, when there is no such trial or checkpoint."""
    study_dir = Path(study_dir)
    folder = StudyFolder(study_dir)
    study = folder.read_study()
    metric = study["scheduler"]["metric"]
    if trial_id is None:
        folder.require_finished_trial("export", study)
        trial_id = str(folder.ranked_trials(study)["trial_id"].iloc[0])
    row = folder.trial_row(trial_id)
    checkpoint = folder.best_checkpoint(trial_id)
    if checkpoint is None:
        raise DataError(f"{study_dir}: trial {trial_id} has no checkpoint to export")
    hp = trial_hyperparameters(study, row)
    config = {
        "study": study["name"], "trial_id": trial_id, "task": study["task"], "classes": study["data"]["classes"],
        "hyperparameters": hp, "preprocessing": asdict(preprocessing_of(hp)),
        "validation": {metric: row.get(score_column(metric))},
        "test": {k: v for k, v in row.items() if k.startswith(("test.", "test_clean.")) and v is not None},
        "params": row.get("params"), "latency_ms": row.get("latency_ms"),
    }
    weights = read_weights(checkpoint, torch.device("cpu"))
    save_weights(weights, out / WEIGHTS_FILE)
    (out / CONFIG_FILE).write_text(yaml.safe_dump(config, sort_keys=False))


def export_ensemble(study_dir: Path, ensemble: int, tta: str = NO_TTA) -> Path:
    """Export the `ensemble` best trials as one model to `<study>/model/` (see `write_ensemble`), built beside the
    old folder and swapped in when complete; returns that folder."""
    folder = StudyFolder(study_dir)
    with atomic_folder(folder.model_dir) as staging:
        write_ensemble(folder.directory, staging, ensemble, tta)
    return folder.model_dir


def write_ensemble(study_dir: Path, out: Path, ensemble: int, tta: str = NO_TTA) -> None:
    """The `ensemble` best trials as one model (`models.ensemble.EnsembleNet`, with `tta`) in the folder `out`:
    config.yaml names the members and keeps each one's hyperparameters under `ensemble`, weights.pt holds the
    ensemble's state dict; `predict`, `Model` and ONNX then run it as one network."""
    from raysearch.models.ensemble import EnsembleNet

    if ensemble < 1:
        raise ConfigError(f"--ensemble: must be at least 1, got {ensemble}")
    check_tta(tta)
    folder = StudyFolder(Path(study_dir))
    study = folder.read_study()
    members = [folder.trial_row(t) for t in folder.ranked_trials(study)["trial_id"][:ensemble]]
    check_ensemble(study, members, ensemble)
    task = create_task(study["task"])
    networks, hps = [], []
    for row in members:
        checkpoint = folder.best_checkpoint(row["trial_id"])
        if checkpoint is None:
            raise DataError(f"{study_dir}: trial {row['trial_id']} has no checkpoint to export")
        hps.append(trial_hyperparameters(study, row))
        networks.append(load_weights(build_model(task, hps[-1], len(study["data"]["classes"])), checkpoint,
                                     torch.device("cpu")))
    name = ensemble_name(ensemble, tta)
    config = {
        "study": study["name"], "trial_id": name, "task": study["task"], "classes": study["data"]["classes"],
        "hyperparameters": hps[0], "preprocessing": asdict(preprocessing_of(hps[0])),
        "ensemble": {"members": [row["trial_id"] for row in members], "tta": tta, "hyperparameters": hps},
    }
    save_weights(EnsembleNet(networks, tta).state_dict(), out / WEIGHTS_FILE)
    (out / CONFIG_FILE).write_text(yaml.safe_dump(config, sort_keys=False))


class NamedOutputs(nn.Module):
    """A task network whose dict of heads is returned as a tuple in `names` order (what tracing and the
    ONNX exporter need)."""

    def __init__(self, network: nn.Module, names: Sequence[str]) -> None:
        super().__init__()
        self.network, self.names = network, tuple(names)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        output = self.network(image)
        return tuple(output[name] for name in self.names)


def head_names(network: nn.Module, example: torch.Tensor) -> list[str]:
    """The names of the network's heads (its output keys), sorted."""
    with torch.no_grad():
        return sorted(network(example))


def export_onnx(network: nn.Module, example: torch.Tensor, path: Path) -> None:
    """`network` as ONNX at `path` (torch.onnx's dynamo exporter), weights inside the file, with a dynamic batch
    dimension."""
    missing = [name for name in ONNX_PACKAGES if find_spec(name) is None]
    if missing:
        raise ConfigError(f"ONNX export needs {', '.join(missing)}: pip install 'raysearch[export]'")
    names = head_names(network, example)
    batch = torch.export.Dim("batch", min=1)
    torch.onnx.export(NamedOutputs(network, names).eval(), (example,), str(path), input_names=[INPUT_NAME],
                      output_names=names, dynamic_shapes=({0: batch},), opset_version=ONNX_OPSET, dynamo=True,
                      external_data=False, verbose=False)


def export_torchscript(network: nn.Module, example: torch.Tensor, path: Path) -> None:
    """`network` traced to TorchScript at `path`; it returns the heads as a dict, as the network does."""
    with torch.no_grad():
        traced = torch.jit.trace(network.eval(), example, strict=False)
    traced.save(str(path))


FORMATS: dict[str, tuple[str, Callable[[nn.Module, torch.Tensor, Path], None]]] = {
    "onnx": (ONNX_FILE, export_onnx),
    "torchscript": (TORCHSCRIPT_FILE, export_torchscript),
}


def parse_formats(text: str) -> list[str]:
    """`onnx,torchscript` → the format names, each checked (ConfigError naming an unknown one)."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in FORMATS]
    if unknown or not names:
        raise ConfigError(f"--format: unknown format {', '.join(unknown) or repr(text)}; "
                          f"choose from {', '.join(FORMATS)}")
    return list(dict.fromkeys(names))


def export_formats(model_dir: Path, formats: Sequence[str]) -> dict[str, Path]:
    """Write the exported model in `model_dir` in each of `formats` (ONNX, TorchScript) beside its weights,
    each file via a temporary sibling and a rename; returns the files by format."""
    from raysearch.inference.predict import load_model

    formats = parse_formats(",".join(formats))
    model = load_model(model_dir)
    network = model.network.to("cpu").eval()
    example = model.example_input(batch=2).to("cpu")
    written = {}
    for name in formats:
        file_name, export = FORMATS[name]
        target = Path(model_dir) / file_name
        with atomic_file(target) as staging:
            export(network, example, staging)
        written[name] = target
    return written


def export_study(path: Path, formats: Sequence[str], *, trial_id: str | None = None, ensemble: int = 0,
                 tta: str = NO_TTA) -> dict[str, Path]:
    """Write `formats` for a study's model: `path` is a study folder (its `model/` is exported first when
    absent, or replaced by `trial_id`'s, or by the ensemble of the `ensemble` best trials) or an exported model
    folder itself; returns the files by format.

    The whole model folder is built beside the old one (its files copied, or the trial's or ensemble's written)
    and swapped in only when every format is written: a failed export leaves the earlier folder as it was."""
    formats = parse_formats(",".join(formats))
    path = Path(path)
    if trial_id is not None and ensemble:
        raise ConfigError("--trial and --ensemble: export one trial or an ensemble, not both")
    reexport = (path / CONFIG_FILE).is_file() and trial_id is None and not ensemble
    model_dir = path if reexport else StudyFolder(path).model_dir
    with atomic_folder(model_dir) as staging:
        if ensemble:
            write_ensemble(path, staging, ensemble, tta)
        elif reexport or (trial_id is None and model_dir.is_dir()):
            shutil.copytree(model_dir, staging, dirs_exist_ok=True, symlinks=True)
        else:
            write_model(path, staging, trial_id)
        written = export_formats(staging, formats)
    return {name: model_dir / file.name for name, file in written.items()}
