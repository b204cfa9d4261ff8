"""Several trained networks run as one model: their class probabilities, polygons and mask probabilities
averaged, optionally with horizontal-flip test-time augmentation (each network also sees the mirrored image,
and its polygon and mask are mirrored back before averaging)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from raysearch.core.options import FLIP_TTA, NO_TTA, TTA_MODES

EPSILON = 1e-7


def mirrored_polygons(polygons: torch.Tensor) -> torch.Tensor:
    """(N, 8) polygons in [0, 1] of a horizontally mirrored image mapped back onto the original: x → 1 − x,
    then the points put back in the canonical order (clockwise on screen from the smallest x + y, as
    `raysearch.data.polygons.canonical_order`), since mirroring reverses the direction of travel."""
    points = polygons.view(-1, 4, 2) * torch.tensor([-1.0, 1.0], device=polygons.device)
    points = points + torch.tensor([1.0, 0.0], device=polygons.device)
    x, y = points[..., 0], points[..., 1]
    area = 0.5 * (x * y.roll(-1, dims=1) - x.roll(-1, dims=1) * y).sum(dim=1)
    points = torch.where((area < 0)[:, None, None], points.flip(1), points)
    start = (points[..., 0] + points[..., 1]).argmin(dim=1)
    order = (start[:, None] + torch.arange(4, device=polygons.device)[None]) % 4
    return points.gather(1, order[..., None].expand(-1, -1, 2)).reshape(-1, 8)


class EnsembleNet(nn.Module):
    """The mean prediction of `networks` (same input geometry and output heads), output as one network's:
    `logits` = log of the mean class probabilities (so softmax gives that mean), `polygon` = the mean polygon,
    `mask` = the logit of the mean mask probability (so logit > 0 is mean probability > ½)."""

    def __init__(self, networks: Sequence[nn.Module], tta: str = NO_TTA) -> None:
        super().__init__()
        if tta not in TTA_MODES:
            raise ValueError(f"tta must be one of {', '.join(TTA_MODES)}, got {tta!r}")
        self.networks = nn.ModuleList(networks)
        self.tta = tta

    def _views(self, image: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """Each network's output on the image and, with flip TTA, on its mirror mapped back."""
        views = []
        for network in self.networks:
            views.append(network(image))
            if self.tta == FLIP_TTA:
                mirrored = dict(network(image.flip(-1)))
                if "polygon" in mirrored:
                    mirrored["polygon"] = mirrored_polygons(mirrored["polygon"])
                if "mask" in mirrored:
                    mirrored["mask"] = mirrored["mask"].flip(-1)
                views.append(mirrored)
        return views

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        views = self._views(image)
        output: dict[str, torch.Tensor] = {}
        if "logits" in views[0]:
            probabilities = torch.stack([v["logits"].float().softmax(dim=1) for v in views]).mean(dim=0)
            output["logits"] = probabilities.clamp_min(EPSILON).log()
        if "polygon" in views[0]:
            output["polygon"] = torch.stack([v["polygon"].float() for v in views]).mean(dim=0)
        if "mask" in views[0]:
            probability = torch.stack([v["mask"].float().sigmoid() for v in views]).mean(dim=0)
            output["mask"] = torch.logit(probability.clamp(EPSILON, 1 - EPSILON))
        return output
