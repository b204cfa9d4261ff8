"""The backbone factory: our VGG-style CNN, or any timm model by name (`timm:resnet18` or `resnet18`)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from raysearch.errors import ConfigError
from raysearch.models.hub import create_pretrained
from raysearch.models.probe import probe
from raysearch.models.vgg import VGGBackbone

MODEL_FAMILIES = ("vgg", "resnet18", "resnet50", "vgg16_bn", "densenet121", "efficientnet_b0", "efficientnet_b3",
                  "mobilenetv2_100", "inception_v3")


class TimmBackbone(nn.Module):
    """A timm model without its classifier; `num_features` is the width of what it really returns (timm's own
    attribute of that name is not, e.g. for vgg16_bn's 4096-wide pre-logits)."""

    def __init__(self, model: nn.Module, num_features: int) -> None:
        super().__init__()
        self.model = model
        self.num_features = num_features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)


def _from_file(name: str, path: Path, kwargs: dict[str, Any]) -> nn.Module:
    """A timm model with the weights of a local file (timm adapts the first convolution to the channels and
    drops the file's classifier, so it loads leniently: every other tensor of the model must be in the file)."""
    import timm
    from timm.models import load_state_dict

    if not path.is_file():
        raise ConfigError(f"pretrained: weights file {path} not found")
    try:
        model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": str(path)}, **kwargs)
        stored = load_state_dict(str(path))
    except (RuntimeError, KeyError) as error:
        reason = str(error).splitlines()[0]
        raise ConfigError(f"pretrained: {path} does not hold weights for {name} ({reason})") from None
    missing = [k for k in model.state_dict() if k not in stored and not k.endswith("num_batches_tracked")]
    if missing:
        raise ConfigError(f"pretrained: {path} does not hold weights for {name} ({len(missing)} tensors missing, "
                          f"e.g. {missing[0]})")
    return model


def model_problem(family: str) -> str | None:
    """Why `family` is neither 'vgg' nor a timm model name (`timm:` prefix allowed), or None when it is one."""
    import timm

    if family == "vgg" or timm.is_model(family.removeprefix("timm:")):
        return None
    return f"{family!r} is neither 'vgg' nor a timm model name (see timm.list_models())"


def _timm_backbone(name: str, *, in_channels: int, image_size: int, pretrained: bool | str) -> TimmBackbone:
    import timm

    problem = model_problem(name)
    if problem is not None:
        raise ConfigError(f"model: {problem}")
    kwargs: dict[str, Any] = {"num_classes": 0, "in_chans": in_channels}
    if isinstance(pretrained, str):
        model = _from_file(name, Path(pretrained).expanduser(), kwargs)
    else:
        model = create_pretrained(lambda: timm.create_model(name, pretrained=pretrained, **kwargs),
                                  pretrained=pretrained, what=name, name=name)
    features = probe(model, in_channels=in_channels, image_size=image_size, what=f"model {name!r}")
    return TimmBackbone(model, features.shape[1])


def create_backbone(
    family: str, *, in_channels: int, image_size: int, pretrained: bool | str = False, **vgg: Any
) -> nn.Module:
    """A feature extractor with a `num_features` attribute that maps (N, C, S, S) to (N, num_features).

    `family` is "vgg" (configured by `conv_layers`, `pool_every`, `width`, `batch_norm`) or a timm model
    name; `pretrained` is False, True (ImageNet weights through the Hugging Face Hub and its cache, see
    raysearch.models.hub) or a local weights file. A timm model that cannot take `image_size` (inception_v3
    needs at least 75 pixels, vgg16_bn and densenet121 32) is refused with a ConfigError naming image_size.
    """
    if family == "vgg":
        if pretrained:
            raise ConfigError("pretrained: the 'vgg' family is trained from scratch; use a timm model for weights")
        return VGGBackbone(in_channels=in_channels, **vgg)
    return _timm_backbone(family.removeprefix("timm:"), in_channels=in_channels, image_size=image_size,
                          pretrained=pretrained)


def backbone_from(hp: Mapping[str, Any], in_channels: int) -> nn.Module:
    """The trial's backbone from its hyperparameters: `model`, `pretrained`, `image_size` and the VGG shape."""
    return create_backbone(
        hp["model"], in_channels=in_channels, image_size=hp["image_size"], pretrained=hp["pretrained"],
        conv_layers=hp["conv_layers"], pool_every=hp["pool_every"], width=hp["width"], batch_norm=hp["batch_norm"],
    )
