"""The backbone factory: our VGG-style CNN, or any timm model by name (`timm:resnet18` or `resnet18`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from raysearch.errors import ConfigError
from raysearch.models.vgg import VGGBackbone

MODEL_FAMILIES = ("vgg", "resnet18", "resnet50", "vgg16_bn", "densenet121", "efficientnet_b0", "efficientnet_b3",
                  "mobilenetv2_100", "inception_v3")


def _timm_backbone(name: str, *, in_channels: int, pretrained: bool | str) -> nn.Module:
    import timm

    if not timm.is_model(name):
        raise ConfigError(f"model family {name!r} is neither 'vgg' nor a timm model name")
    kwargs: dict[str, Any] = {"num_classes": 0, "in_chans": in_channels}
    if isinstance(pretrained, str):
        path = Path(pretrained).expanduser()
        if not path.is_file():
            raise ConfigError(f"pretrained: weights file {path} not found")
        kwargs["pretrained_cfg_overlay"] = {"file": str(path)}
    try:
        return timm.create_model(name, pretrained=bool(pretrained), **kwargs)
    except (OSError, RuntimeError) as error:
        if not pretrained:
            raise
        raise ConfigError(
            f"pretrained weights for {name} are not on this machine ({type(error).__name__}); put them in the "
            "Hugging Face cache (HF_HOME) or give 'pretrained' a local .safetensors/.pth path"
        ) from None


def create_backbone(family: str, *, in_channels: int, pretrained: bool | str = False, **vgg: Any) -> nn.Module:
    """A feature extractor with a `num_features` attribute that maps (N, C, H, W) to (N, num_features).

    `family` is "vgg" (configured by `conv_layers`, `pool_every`, `width`, `batch_norm`) or a timm model
    name; `pretrained` is False, True (timm's cache only: nothing is downloaded) or a local weights file.
    """
    if family == "vgg":
        return VGGBackbone(in_channels=in_channels, **vgg)
    return _timm_backbone(family.removeprefix("timm:"), in_channels=in_channels, pretrained=pretrained)
