"""Segmentation networks from segmentation_models_pytorch: any smp architecture with any smp encoder.

`ARCHITECTURES` and `ENCODERS` are the named defaults: U-Net, U-Net++ and FPN, and the six encoders of
the reference U-Net study under their smp names. smp has no InceptionV3 encoder of its own: `inceptionv4`
stands for that family in the defaults; timm's InceptionV3 is `tu-inception_v3`, which only U-Net can
decode (its valid convolutions misalign FPN's and U-Net++'s skips) and only from 96 pixels. Any timm
model with feature maps works as an encoder through smp's `tu-<timm name>`.
"""

from __future__ import annotations

import torch
from torch import nn

from raysearch.errors import ConfigError
from raysearch.models.hub import create_pretrained, smp_weights_tag
from raysearch.models.probe import probe

ARCHITECTURES = ("unet", "unetplusplus", "fpn")
ENCODERS = ("inceptionv4", "vgg16_bn", "resnet50", "densenet121", "efficientnet-b3", "mobilenet_v2")


class SegmentationNet(nn.Module):
    """An smp model with the task output convention: {"mask": logits (N, 1, H, W)}."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"mask": self.model(images)}


def architecture_problem(architecture: str) -> str | None:
    """Why `architecture` is not an smp architecture name, or None when it is one."""
    import segmentation_models_pytorch as smp

    if architecture.lower() in smp.MODEL_ARCHITECTURES_MAPPING:
        return None
    return f"unknown {architecture!r}; valid: {', '.join(smp.MODEL_ARCHITECTURES_MAPPING)}"


def encoder_problem(encoder: str) -> str | None:
    """Why `encoder` is neither an smp encoder nor tu-<timm model name>, or None when it is one."""
    import segmentation_models_pytorch as smp
    import timm

    known = timm.is_model(encoder[3:]) if encoder.startswith("tu-") else encoder in smp.encoders.get_encoder_names()
    if known:
        return None
    return (f"unknown {encoder!r}; use an smp encoder name ({', '.join(ENCODERS)}, ...) "
            "or tu-<timm model name>")


def _check_names(architecture: str, encoder: str) -> None:
    for key, problem in (("architecture", architecture_problem(architecture)), ("encoder", encoder_problem(encoder))):
        if problem is not None:
            raise ConfigError(f"{key}: {problem}")


def _encoder_weights(encoder: str, pretrained: bool) -> str | bool | None:
    """What smp's `encoder_weights` must be: None, True for timm encoders, else the encoder's ImageNet tag."""
    if not pretrained:
        return None
    return True if encoder.startswith("tu-") else smp_weights_tag(encoder)


def create_segmentation_model(
    architecture: str, encoder: str, *, in_channels: int, image_size: int, pretrained: bool | str = False,
    dropout: float = 0.0,
) -> SegmentationNet:
    """A binary segmentation network, checked to run on `image_size`² inputs (ConfigError if not).

    `pretrained` True takes the encoder's ImageNet weights through the Hugging Face Hub and its cache;
    `dropout` > 0 puts a channel dropout before the segmentation head.
    """
    import segmentation_models_pytorch as smp

    _check_names(architecture, encoder)
    if isinstance(pretrained, str):
        raise ConfigError("pretrained: segmentation encoders take true or false; put weights files in the "
                          "Hugging Face cache (HF_HOME) instead of naming them")
    weights = _encoder_weights(encoder, pretrained)
    model = create_pretrained(
        lambda: smp.create_model(architecture, encoder_name=encoder, encoder_weights=weights, in_channels=in_channels,
                                 classes=1),
        pretrained=pretrained, what=f"encoder {encoder}", name=f"--encoder {encoder}",
    )
    stride = model.encoder.output_stride
    if model.requires_divisible_input_shape and image_size % stride:
        raise ConfigError(f"image_size: {architecture} needs a multiple of {stride} (its encoder downsamples "
                          f"{stride}x), got {image_size}; use {image_size // stride * stride or stride} or "
                          f"{(image_size // stride + 1) * stride}")
    if dropout > 0:
        model.segmentation_head = nn.Sequential(nn.Dropout2d(dropout), model.segmentation_head)
    network = SegmentationNet(model)
    shape = probe(network, in_channels=in_channels, image_size=image_size,
                  what=f"{architecture} with encoder {encoder!r}")["mask"].shape
    if shape[-2:] != (image_size, image_size):
        raise ConfigError(f"image_size: {architecture} with encoder {encoder!r} turns {image_size}px inputs into "
                          f"{shape[-1]}px masks; choose a multiple of {stride}")
    return network
