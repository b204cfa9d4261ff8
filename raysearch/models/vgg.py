"""A configurable VGG-style CNN: the small from-scratch network of the reference work, made searchable."""

from __future__ import annotations

from torch import nn

MAX_WIDTH = 256


class VGGBackbone(nn.Sequential):
    """`conv_layers` 3×3 conv blocks, a 2×2 max-pool after every `pool_every` of them (width doubling at
    each pool, capped at 256), optional batch norm, then global average pooling to `num_features`."""

    def __init__(
        self, *, in_channels: int, conv_layers: int = 4, pool_every: int = 1, width: int = 16, batch_norm: bool = True
    ) -> None:
        layers: list[nn.Module] = []
        channels, out = in_channels, width
        for i in range(conv_layers):
            layers.append(nn.Conv2d(channels, out, 3, padding=1, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm2d(out))
            layers.append(nn.ReLU(inplace=True))
            channels = out
            if (i + 1) % pool_every == 0:
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
                out = min(out * 2, MAX_WIDTH)
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        super().__init__(*layers)
        self.num_features = channels
