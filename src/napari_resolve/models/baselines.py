"""Baselines: MATLAB-exact bicubic interpolation (no weights).

SRCNN, DFCAN are added here too (issue 3); SRResNet lives in ``srseg`` because
it is SRSEG's generator.
"""

from __future__ import annotations

import torch

from napari_resolve.data.degrade import imresize_torch
from napari_resolve.models import register
from napari_resolve.models.base import SRModel


@register(
    "bicubic",
    paper="Keys 1981; MATLAB imresize",
    description="MATLAB-exact bicubic interpolation (a = -0.5, antialiased); no weights",
    scale=4,
    in_channels=1,
)
class Bicubic(SRModel):
    paper = "MATLAB imresize(..., 'bicubic')"
    receptive_field = 2

    def __init__(self, scale: int = 4, in_channels: int = 1):
        super().__init__(scale, in_channels)

    def forward(self, x: torch.Tensor, prior=None) -> dict:
        self.check_input(x)
        return {"sr": imresize_torch(x, self.scale)}
