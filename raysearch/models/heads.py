"""Image-level networks: a backbone's pooled features through dropout into linear heads."""

from __future__ import annotations

import torch
from torch import nn


class HeadNet(nn.Module):
    """Backbone → dropout → a class head ("logits", raw scores) and/or a polygon head ("polygon": 8 values
    through a sigmoid, so in [0, 1] like the normalised targets)."""

    def __init__(self, backbone: nn.Module, *, dropout: float, num_classes: int = 0, polygon: bool = False) -> None:
        super().__init__()
        self.backbone = backbone
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(backbone.num_features, num_classes) if num_classes else None
        self.polygon = nn.Linear(backbone.num_features, 8) if polygon else None

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.dropout(self.backbone(images))
        output = {}
        if self.classifier is not None:
            output["logits"] = self.classifier(features)
        if self.polygon is not None:
            output["polygon"] = torch.sigmoid(self.polygon(features))
        return output
