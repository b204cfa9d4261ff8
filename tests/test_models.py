"""Every model family and segmentation network builds and runs at a small input size; bad choices fail clearly."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from huggingface_hub import constants

from raysearch.errors import ConfigError
from raysearch.models import (
    ARCHITECTURES,
    ENCODERS,
    MODEL_FAMILIES,
    HeadNet,
    create_backbone,
    create_segmentation_model,
)

VGG = {"conv_layers": 3, "pool_every": 1, "width": 8, "batch_norm": True}
SMALLEST = {"inception_v3": 75}


@pytest.fixture
def empty_weights_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An offline Hugging Face cache with nothing in it, whatever this machine has cached (huggingface_hub reads
    HF_HOME and HF_HUB_OFFLINE once, at import: these are the values it took from them)."""
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


@pytest.mark.parametrize("family", MODEL_FAMILIES)
def test_every_model_family_builds_and_runs(family: str) -> None:
    size = SMALLEST.get(family, 32)
    backbone = create_backbone(family, in_channels=1, image_size=size, **VGG)
    model = HeadNet(backbone, dropout=0.1, num_classes=3, polygon=True)
    output = model(torch.randn(2, 1, size, size))
    assert output["logits"].shape == (2, 3) and output["polygon"].shape == (2, 8)
    assert backbone(torch.randn(2, 1, size, size)).shape == (2, backbone.num_features)


def test_any_timm_name_works_and_unknown_names_are_refused() -> None:
    assert create_backbone("timm:resnet10t", in_channels=3, image_size=32).num_features == 512
    with pytest.raises(ConfigError, match="model: 'resnet_9000' is neither 'vgg' nor a timm model name"):
        create_backbone("resnet_9000", in_channels=1, image_size=32)


def test_too_small_input_is_a_config_error_naming_image_size() -> None:
    with pytest.raises(ConfigError, match=r"^image_size: model 'inception_v3' cannot run on 64x64 images"):
        create_backbone("inception_v3", in_channels=1, image_size=64)


@pytest.mark.usefixtures("empty_weights_cache")
def test_missing_pretrained_weights_fail_with_where_to_put_them(tmp_path: Path) -> None:
    absent = (f"pretrained: weights for resnet18 are not in the Hugging Face cache {tmp_path / 'hub'} and "
              "HF_HUB_OFFLINE is set; run `raysearch weights fetch resnet18`")
    with pytest.raises(ConfigError, match=re.escape(absent)):
        create_backbone("resnet18", in_channels=1, image_size=32, pretrained=True)
    with pytest.raises(ConfigError, match="pretrained: weights file .*missing.pth not found"):
        create_backbone("resnet18", in_channels=1, image_size=32, pretrained=str(tmp_path / "missing.pth"))
    with pytest.raises(ConfigError, match="pretrained: the 'vgg' family is trained from scratch"):
        create_backbone("vgg", in_channels=1, image_size=32, pretrained=True, **VGG)
    with pytest.raises(ConfigError, match="pretrained: weights for encoder mobilenet_v2 are not in the Hugging Face "
                       r"cache .*`raysearch weights fetch --encoder mobilenet_v2`"):
        create_segmentation_model("unet", "mobilenet_v2", in_channels=1, image_size=32, pretrained=True)


def test_a_local_weights_file_is_loaded(tmp_path: Path) -> None:
    import timm

    source = timm.create_model("resnet10t", num_classes=0)
    torch.save(source.state_dict(), tmp_path / "resnet10t.pth")
    backbone = create_backbone("resnet10t", in_channels=3, image_size=32, pretrained=str(tmp_path / "resnet10t.pth"))
    assert torch.equal(backbone.model.conv1[0].weight, source.conv1[0].weight)
    torch.save({"unrelated": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(ConfigError, match="pretrained: .*other.pth does not hold weights for resnet10t"):
        create_backbone("resnet10t", in_channels=3, image_size=32, pretrained=str(tmp_path / "other.pth"))


@pytest.mark.parametrize("encoder", [*ENCODERS, "tu-resnet10t"])
def test_every_reference_encoder_builds_a_unet(encoder: str) -> None:
    model = create_segmentation_model("unet", encoder, in_channels=1, image_size=32)
    assert model(torch.randn(2, 1, 32, 32))["mask"].shape == (2, 1, 32, 32)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_every_architecture_builds_with_dropout(architecture: str) -> None:
    model = create_segmentation_model(architecture, "mobilenet_v2", in_channels=1, image_size=64, dropout=0.2)
    assert model(torch.randn(2, 1, 64, 64))["mask"].shape == (2, 1, 64, 64)
    assert any(isinstance(m, torch.nn.Dropout2d) for m in model.modules())


def test_segmentation_sizes_and_names_are_checked() -> None:
    with pytest.raises(ConfigError, match=r"^image_size: fpn needs a multiple of 32 .* got 48; use 32 or 64$"):
        create_segmentation_model("fpn", "mobilenet_v2", in_channels=1, image_size=48)
    assert create_segmentation_model("unet", "mobilenet_v2", in_channels=1, image_size=48)(
        torch.zeros(1, 1, 48, 48))["mask"].shape == (1, 1, 48, 48)
    with pytest.raises(ConfigError, match="^architecture: unknown 'segnet'; valid: unet, unetplusplus"):
        create_segmentation_model("segnet", "mobilenet_v2", in_channels=1, image_size=32)
    with pytest.raises(ConfigError, match="^encoder: unknown 'tu-nonet'"):
        create_segmentation_model("unet", "tu-nonet", in_channels=1, image_size=32)
