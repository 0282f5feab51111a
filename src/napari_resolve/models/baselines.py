"""Baselines: MATLAB-exact bicubic interpolation (no weights).

SRCNN, DFCAN are added here too (issue 3); SRResNet lives in ``srseg`` because
it is SRSEG's generator.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from napari_resolve.data.degrade import imresize_torch
from napari_resolve.errors import InputError
from napari_resolve.models import register
from napari_resolve.models.base import SRModel
from napari_resolve.models.blocks import FCAB, HazeRemoval, conv


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


@register(
    "srcnn",
    paper="Dong et al. 2016, IEEE TPAMI 38(2):295 (SRCNN 9-5-5); baseline in paper 000 §3.4",
    description="SRCNN 9-5-5 (64, 32 filters) on the bicubic-upsampled image",
    scale=4,
    in_channels=1,
)
class SRCNN(SRModel):
    """SRCNN 9-5-5 (Dong et al. 2016), the baseline of paper 000 §3.4 ("the most
    powerful version 9-5-5").

    Bicubic upsampling inside (MATLAB-exact), then conv 9×9 (64) + ReLU,
    conv 5×5 (32) + ReLU, conv 5×5 to ``in_channels``. One channel (Y or grey)
    by default, as SRCNN and paper 000 §2.4.

    Choices: convs zero-pad ("same"), so the output is the HR size; the
    original used valid convs and its output lost 8 px per side. No global
    residual (the original has none). Any integer scale 2–8.
    """

    paper = "Dong et al. 2016 (SRCNN)"
    upsamples_input = True
    size_multiple = 1
    receptive_field = 6  # HR radius 4 + 2 + 2 = 8 -> ceil(8 / 2) + 2 bicubic taps at x2

    def __init__(self, scale: int = 4, in_channels: int = 1, filters: tuple = (64, 32),
                 kernels: tuple = (9, 5, 5)):
        if int(scale) != scale or not 2 <= int(scale) <= 8:
            raise InputError(f"scale must be an integer from 2 to 8, got {scale}")
        super().__init__(int(scale), in_channels)
        if len(filters) != 2 or len(kernels) != 3:
            raise InputError("SRCNN needs two filter counts and three kernel sizes")
        f1, f2 = (int(f) for f in filters)
        k1, k2, k3 = (int(k) for k in kernels)
        self.body = nn.Sequential(
            conv(in_channels, f1, k1), nn.ReLU(),
            conv(f1, f2, k2), nn.ReLU(),
            conv(f2, in_channels, k3),
        )
        hr_radius = (k1 + k2 + k3 - 3) // 2
        self.receptive_field = math.ceil(hr_radius / self.scale) + 2  # + bicubic support

    def forward(self, x: torch.Tensor, prior=None) -> dict:
        self.check_input(x)
        if prior is not None:
            raise InputError(f"{self.arch or 'srcnn'} takes no prior (parsing map)")
        return {"sr": self.body(imresize_torch(x, self.scale))}


@register(
    "dfcan",
    paper="Qiao et al. 2021, Nature Methods 18:194 (DFCAN); the BioSR baseline of paper 003 §4.4",
    description="DFCAN: 4 residual groups of 4 Fourier channel attention blocks, PixelShuffle",
    scale=2,
    in_channels=1,
)
class DFCAN(SRModel):
    """Deep Fourier channel attention network (Qiao et al. 2021), the model paper 003
    §4.4 compares MHTCUN with on BioSR F-actin.

    Conv 3×3 (``channels``) + GELU; ``groups`` residual groups, each ``blocks``
    FCABs (two full 3×3 convs with GELU, Fourier channel attention: centred
    ``|FFT|^0.8``, conv + ReLU, global pooling, 1×1 down/up, sigmoid; residual)
    plus the group's input; conv 3×3 to ``channels·s²`` + GELU, PixelShuffle(s),
    conv 3×3 to ``in_channels``. Works on the LR image (no pre-upsampling).

    Choices: 64 channels, 4 groups × 4 FCABs, reduction 16 (Qiao's published
    configuration); linear output (Qiao ends with a sigmoid; percentile-
    normalised microscopy can exceed 1, which a sigmoid cannot reach), FFT
    normalised "ortho" and computed in float32 (see
    :class:`~napari_resolve.models.blocks.FourierChannelAttention`). Scales 2-4.
    The FFT attention is global: ``receptive_field = 0``, ``global_ops = True``,
    and tiled inference differs slightly from untiled. ``haze_sigma`` /
    ``haze_weight``: MHTCUN's optional output stage (ours, issue 13).
    """

    paper = "Qiao et al. 2021 (DFCAN)"
    receptive_field = 0
    global_ops = True

    def __init__(
        self,
        scale: int = 2,
        in_channels: int = 1,
        channels: int = 64,
        groups: int = 4,
        blocks: int = 4,
        reduction: int = 16,
        gamma: float = 0.8,
        haze_sigma: float = 0.0,
        haze_weight: float = 0.0,
    ):
        if int(scale) != scale or not 2 <= int(scale) <= 4:
            raise InputError(f"DFCAN supports scale 2, 3 or 4, got {scale}")
        if groups < 1 or blocks < 1:
            raise InputError(f"DFCAN needs groups >= 1 and blocks >= 1, got {groups}, {blocks}")
        super().__init__(int(scale), in_channels)
        self.head = nn.Sequential(conv(in_channels, channels, 3), nn.GELU())
        self.groups = nn.ModuleList(
            nn.Sequential(
                *(
                    FCAB(channels, conv_kind="full", act="gelu", reduction=reduction, gamma=gamma)
                    for _ in range(blocks)
                )
            )
            for _ in range(groups)
        )
        self.tail = nn.Sequential(
            conv(channels, channels * self.scale**2, 3),
            nn.GELU(),
            nn.PixelShuffle(self.scale),
            conv(channels, in_channels, 3),
        )
        # the same calibrated output stage as MHTCUN's (models.mhtcun), for a fair baseline
        self.haze = HazeRemoval(haze_sigma, haze_weight) if haze_weight else None

    def forward(self, x: torch.Tensor, prior=None) -> dict:
        self.check_input(x)
        if prior is not None:
            raise InputError(f"{self.arch or 'dfcan'} takes no prior (parsing map)")
        y = self.head(x)
        for group in self.groups:
            y = y + group(y)
        sr = self.tail(y)
        return {"sr": sr if self.haze is None or self.training else self.haze(sr)}
