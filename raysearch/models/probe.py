"""A dry run of a new network on one blank image of the trial's size: catches inputs too small for it."""

from __future__ import annotations

import torch
from torch import nn

from raysearch.errors import ConfigError


def probe(model: nn.Module, *, in_channels: int, image_size: int, what: str) -> torch.Tensor:
    """The output of `model` (in eval mode, no gradients) for one zero image of `image_size`² pixels.

    A network whose layers cannot take that size (pooling or valid convolutions shrinking it to nothing,
    decoders whose skip connections no longer line up) raises a one-line ConfigError naming image_size.
    """
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return model(torch.zeros(1, in_channels, image_size, image_size))
    except RuntimeError as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ConfigError(f"image_size: {what} cannot run on {image_size}x{image_size} images ({reason}); "
                          "choose a larger image_size or another model") from None
    finally:
        model.train(was_training)
