"""Pretrained weights through the Hugging Face cache, offline: a locally saved weights file in the cache's own
layout is what timm loads, `raysearch weights fetch` finds it, the input normalisation follows the weights'
statistics, and `pretrained` is a search dimension of the reference spaces. (The download itself needs the
network, which these machines do not reach.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from huggingface_hub import constants

from raysearch.core.bundled import search_spaces_dir
from raysearch.data.preprocess import Preprocessing, normalise
from raysearch.models import create_backbone
from raysearch.search.space import load_space
from raysearch.training.hparams import preprocessing_of, pretrained_weights_of

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def cache_timm_weights(hub: Path, model: str) -> dict[str, torch.Tensor]:
    """Save a freshly initialised timm `model`'s weights where the Hugging Face cache keeps its default pretrained
    tag's `model.safetensors` (refs/main → snapshots/<commit>/); returns them."""
    import timm
    from safetensors.torch import save_file

    repo = timm.models.get_pretrained_cfg(model).hf_hub_id
    folder = hub / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(COMMIT)
    (folder / "snapshots" / COMMIT).mkdir(parents=True)
    weights = {k: v.contiguous() for k, v in timm.create_model(model).state_dict().items()}
    save_file(weights, folder / "snapshots" / COMMIT / "model.safetensors")
    return weights


@pytest.fixture
def offline_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This process's Hugging Face cache, moved to an empty folder and offline (the values huggingface_hub
    took from HF_HOME and HF_HUB_OFFLINE at import)."""
    hub = tmp_path / "hf" / "hub"
    hub.mkdir(parents=True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return hub


def test_pretrained_timm_weights_load_from_the_cache_offline(offline_hub: Path) -> None:
    saved = cache_timm_weights(offline_hub, "resnet18")
    rgb = create_backbone("resnet18", in_channels=3, image_size=32, pretrained=True)
    assert torch.equal(rgb.model.conv1.weight, saved["conv1.weight"])
    assert torch.equal(rgb.model.layer4[1].conv2.weight, saved["layer4.1.conv2.weight"])
    grey = create_backbone("resnet18", in_channels=1, image_size=32, pretrained=True)
    assert torch.allclose(grey.model.conv1.weight, saved["conv1.weight"].sum(dim=1, keepdim=True))


def test_pretrained_normalisation_follows_the_weights_statistics() -> None:
    import timm

    mean, std = timm.models.get_pretrained_cfg("resnet18").mean, timm.models.get_pretrained_cfg("resnet18").std
    hp = {**vars(Preprocessing(channels=3, normalisation="minus_one_one")), "model": "resnet18", "pretrained": True}
    config = preprocessing_of(hp)
    assert (config.normalisation, config.mean, config.std) == ("pretrained", tuple(mean), tuple(std))
    image = torch.full((1, 4, 4), 51, dtype=torch.uint8)  # 0.2 after scaling to [0, 1]
    rgb = normalise(image, config)
    for channel in range(3):
        assert rgb[0, channel] == pytest.approx(torch.full((4, 4), (0.2 - mean[channel]) / std[channel]), abs=1e-6)
    grey = normalise(image, preprocessing_of({**hp, "channels": 1}))
    assert grey.shape == (1, 1, 4, 4)
    assert grey[0, 0, 0, 0].item() == pytest.approx((0.2 - sum(mean) / 3) / (sum(std) / 3), abs=1e-6)
    assert preprocessing_of({**hp, "pretrained": False}).normalisation == "minus_one_one"
    assert preprocessing_of(hp).cache_fields() == preprocessing_of({**hp, "pretrained": False}).cache_fields()


def test_an_smp_encoders_normalisation_comes_with_its_weights_files(offline_hub: Path) -> None:
    """smp's own encoders (not timm's) keep their mean and std in the `config.json` beside their weights."""
    import segmentation_models_pytorch as smp

    from raysearch.models.hub import pretrained_statistics

    hub_entry = smp.encoders.encoders["mobilenet_v2"]["pretrained_settings"]["imagenet"]
    snapshot = offline_hub / f"models--{hub_entry['repo_id'].replace('/', '--')}" / "snapshots" / hub_entry["revision"]
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text(json.dumps({"mean": [0.1, 0.2, 0.3], "std": [0.4, 0.5, 0.6]}))
    pretrained_statistics.cache_clear()
    hp = {**vars(Preprocessing(channels=3)), "model": "unet", "encoder": "mobilenet_v2", "pretrained": True}
    config = preprocessing_of(hp)
    assert (config.normalisation, config.mean, config.std) == ("pretrained", (0.1, 0.2, 0.3), (0.4, 0.5, 0.6))


@pytest.mark.parametrize(("hp", "weights"), [
    ({"model": "resnet18", "pretrained": True}, ("resnet18", False)),
    ({"model": "unet", "encoder": "resnet34", "pretrained": True}, ("resnet34", True)),  # the encoder's weights
    ({"model": "vgg", "pretrained": True}, None),  # the from-scratch family has none
    ({"model": "resnet18", "pretrained": False}, None),
    ({"model": "resnet18"}, None),  # a space without the dimension
])
def test_the_weights_a_trial_loads(hp: dict, weights: tuple[str, bool] | None) -> None:
    assert pretrained_weights_of(hp) == weights


def _fetch(*models: str, hf_home: Path) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k != "HF_HUB_CACHE"} | {"HF_HOME": str(hf_home),
                                                                                   "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "raysearch", "weights", "fetch", *models], capture_output=True,
                          text=True, timeout=300, env=environment)


def test_weights_fetch_finds_cached_weights_and_says_where_absent_ones_go(tmp_path: Path) -> None:
    hf_home = tmp_path / "hf"
    cache_timm_weights(hf_home / "hub", "resnet18")
    found = _fetch("resnet18", hf_home=hf_home)
    assert found.returncode == 0, found.stderr[-2000:]
    assert found.stdout.strip().splitlines() == [f"resnet18: in {hf_home / 'hub'}"]

    absent = _fetch("resnet18", "efficientnet_b0", hf_home=hf_home)
    assert absent.returncode == 2
    assert absent.stderr.strip().splitlines() == [
        f"raysearch: error: pretrained: weights for efficientnet_b0 are not in the Hugging Face cache "
        f"{hf_home / 'hub'} and HF_HUB_OFFLINE is set; run `raysearch weights fetch efficientnet_b0` where the "
        "Hugging Face Hub is reachable (into the same HF_HOME), or give 'pretrained' a local weights file"]
    unknown = _fetch("resnet_9000", hf_home=hf_home)
    assert unknown.returncode == 2 and "'resnet_9000' is not a timm model with pretrained weights" in unknown.stderr


@pytest.mark.parametrize("task", ["classification", "regression", "multitask", "segmentation"])
def test_pretrained_is_a_dimension_of_every_reference_space(task: str) -> None:
    from raysearch.tasks import create_task
    from raysearch.training.hparams import schema

    reference = search_spaces_dir() / "reference" / f"{task}.yaml"
    space = load_space(reference, schema=schema(create_task(task).hyperparameters))
    pretrained = next(p for p in space.parameters if p.name == "pretrained")
    assert set(pretrained.distribution.choices) == {False, True}
    if task != "segmentation":
        assert "vgg" not in pretrained.when["model"], "the from-scratch VGG family cannot load weights"
