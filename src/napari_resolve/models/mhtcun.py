"""MHTCUN: Modified Hybrid Task Cascade U-Net (paper 003, Gong et al. 2021).

Follows §2 (Figs. 1-6) and §4.6 of the paper:

* the LR image is upsampled and a 3×3 conv makes the feature maps ``x``
  (Fig. 1);
* a U-Net (Fig. 3) extracts deep features: encoder of Fourier channel
  attention blocks (FCAB, Fig. 4b: two depthwise-separable convs + swish,
  Fourier channel attention, residual) with stride-2 conv downsampling;
  decoder of FCABs, PixelShuffle upsampling, 3×3 conv reducing the channels,
  skip connections; channels 64/128/256, input and output 64 (§4.6);
* three Feature Refinement Modules (FRM, Fig. 2b): channel concat with ``x``,
  3×3 conv reduce, U-Net;
* three pixel branches (Fig. 5): FRM features + previous pixel-branch
  features + spatial-context features (sum), four depthwise-separable convs,
  a 3×3 reconstruction conv; each gives one stage output, coarse to fine;
* a spatial-context branch modelled on a feature pyramid (Fig. 6): stride-2
  3×3 convs, 1×1 laterals, transposed-conv upsampling, sum, four
  depthwise-separable convs, 1×1 conv.

``forward`` returns ``"stages"`` (three outputs at SR size, coarse to fine; the
paper supervises them with the HR image blurred ×4, blurred ×2 and the HR
image itself, §3 — the loss is in :mod:`napari_resolve.losses`) and ``"sr"`` =
the last stage.

Choices the paper leaves open, and ours:

* **Input upsampling.** Fig. 1 upsamples the LR image "by a factor of two"
  (BioSR is ×2) without naming the interpolation; we use MATLAB-exact
  bicubic (the project's standard, :func:`~napari_resolve.data.degrade.imresize_torch`).
  For ×4 the input is upsampled by 4 (by the scale) by default: the whole
  network then works at SR resolution exactly as for ×2 (4× the compute of
  ×2 per LR pixel). ``feature_scale=2`` at ×4 (ours) takes Fig. 1's "factor
  of two" literally: the cascade works at 2× the LR size and each stage's
  reconstruction conv ends in a PixelShuffle(2) (the upsampling the paper's
  U-Net decoder uses) to the SR size, where the ×4-bicubic global residual
  is added. A quarter of the compute per step, and the U-Net levels reach
  twice as far in LR pixels.
* **Global residual.** Each reconstruction conv predicts a residual added to
  the upsampled input (VDSR-style); the paper does not say. It makes the
  untrained net start from bicubic and speeds up training; switch off with
  ``global_residual=False``.
* **FCABs per level** (``blocks``): not given. Encoder: ``blocks`` FCABs at
  every level (bottom included); decoder: ``blocks`` FCABs at each level
  before its PixelShuffle. ``blocks=3`` brings the default to 26.0 M
  parameters, the closest to the paper's 26.4 M (Table 1) of any integer.
* **Decoder fusion.** PixelShuffle(2) turns C channels into C/4 at twice the
  size; they are concatenated with the skip features and the 3×3 conv
  "reduces the dimensions" to the skip's channel count.
* **Activations.** Swish (SiLU) after every depthwise-separable conv of the
  pixel and context branches and after the pyramid's stride-2 convs (the paper
  names swish for FCAB only); no normalisation layers.
* **Spatial-context pyramid.** As many levels as the U-Net, same channels;
  laterals map to ``channels[0]``; 2×2 stride-2 transposed convs (no
  overlapping kernels, so no checkerboard from uneven overlap).
* **Attention.** Channel reduction 16 (DFCAN's), FFT details in
  :class:`~napari_resolve.models.blocks.FourierChannelAttention`.
* **Size rule.** The U-Net needs SR sizes divisible by ``2**(levels-1)``; the
  upsampled input is reflect-padded to that inside and the outputs cropped
  back, so any LR size works.

FCAB's FFT and global pooling see the whole image: MHTCUN has no finite
receptive field (``receptive_field = 0``, ``global_ops = True``) and a tiled
prediction differs slightly from an untiled one (use generous overlaps).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from napari_resolve.data.degrade import imresize_torch
from napari_resolve.errors import InputError
from napari_resolve.models import register
from napari_resolve.models.base import SRModel
from napari_resolve.models.blocks import FCAB, DepthwiseSeparableConv, HazeRemoval, conv

__all__ = ["MHTCUN", "FCABUNet", "SpatialContextBranch", "PixelBranch"]


def _fcabs(channels: int, blocks: int, reduction: int, gamma: float) -> nn.Sequential:
    return nn.Sequential(
        *(
            FCAB(channels, conv_kind="dwsep", act="swish", reduction=reduction, gamma=gamma)
            for _ in range(blocks)
        )
    )


def _dwsep_stack(channels: int, n: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(n):
        layers += [DepthwiseSeparableConv(channels, channels, 3), nn.SiLU()]
    return nn.Sequential(*layers)


class FCABUNet(nn.Module):
    """The U-Net of paper 003 Fig. 3 (input and output ``channels[0]`` channels).

    Encoder: at each level ``blocks`` FCABs, then a 3×3 stride-2 conv to the
    next level's channels. Decoder, from the bottom up: ``blocks`` FCABs,
    PixelShuffle(2), concat with the skip, 3×3 conv to the skip's channels.
    Sizes must be multiples of ``2 ** (len(channels) - 1)``.
    """

    def __init__(self, channels=(64, 128, 256), blocks: int = 3, reduction: int = 16,
                 gamma: float = 0.8):
        super().__init__()
        channels = tuple(int(c) for c in channels)
        if len(channels) < 2:
            raise ValueError(f"MHTCUN U-Net needs at least 2 levels, got channels={channels}")
        if any(c % 4 for c in channels[1:]):
            raise ValueError(
                f"channels below the top must be multiples of 4 (PixelShuffle), got {channels}"
            )
        self.size_multiple = 2 ** (len(channels) - 1)
        self.encoders = nn.ModuleList(_fcabs(c, blocks, reduction, gamma) for c in channels)
        self.downs = nn.ModuleList(
            conv(channels[i], channels[i + 1], 3, stride=2) for i in range(len(channels) - 1)
        )
        self.decoders = nn.ModuleList(
            _fcabs(channels[i], blocks, reduction, gamma) for i in range(len(channels) - 1, 0, -1)
        )
        self.shuffle = nn.PixelShuffle(2)
        self.fuse = nn.ModuleList(
            conv(channels[i] // 4 + channels[i - 1], channels[i - 1], 3)
            for i in range(len(channels) - 1, 0, -1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for enc, down in zip(self.encoders[:-1], self.downs):
            x = enc(x)
            skips.append(x)
            x = down(x)
        x = self.encoders[-1](x)
        for dec, fuse, skip in zip(self.decoders, self.fuse, reversed(skips)):
            x = self.shuffle(dec(x))
            x = fuse(torch.cat([x, skip], dim=1))
        return x


class SpatialContextBranch(nn.Module):
    """Feature-pyramid spatial-context branch (paper 003 Fig. 6, after Lin 2017).

    Bottom-up: 3×3 stride-2 convs (+ swish) through ``channels``; 1×1 laterals
    to ``channels[0]``; top-down: 2×2 stride-2 transposed conv, summed with the
    lateral; then four depthwise-separable convs (+ swish) and a 1×1 conv.
    """

    def __init__(self, channels=(64, 128, 256)):
        super().__init__()
        c0 = channels[0]
        self.bottom_up = nn.ModuleList(
            nn.Sequential(conv(channels[i], channels[i + 1], 3, stride=2), nn.SiLU())
            for i in range(len(channels) - 1)
        )
        self.laterals = nn.ModuleList(nn.Conv2d(c, c0, 1) for c in channels)
        self.top_down = nn.ModuleList(
            nn.ConvTranspose2d(c0, c0, 2, stride=2) for _ in range(len(channels) - 1)
        )
        self.refine = _dwsep_stack(c0, 4)
        self.out = nn.Conv2d(c0, c0, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        levels = [x]
        for step in self.bottom_up:
            levels.append(step(levels[-1]))
        y = self.laterals[-1](levels[-1])
        for lateral, up, feat in zip(
            reversed(self.laterals[:-1]), reversed(self.top_down), reversed(levels[:-1])
        ):
            y = lateral(feat) + up(y)
        return self.out(self.refine(y))


class PixelBranch(nn.Module):
    """Pixel branch (paper 003 Fig. 5): four depthwise-separable convs + 3×3 reconstruction.

    ``forward(features)`` takes the summed input (FRM + previous pixel
    features + context) and returns ``(pixel_features, image_residual)``.
    """

    def __init__(self, channels: int, out_channels: int):
        super().__init__()
        self.body = _dwsep_stack(channels, 4)
        self.reconstruct = conv(channels, out_channels, 3)

    def forward(self, x: torch.Tensor):
        feats = self.body(x)
        return feats, self.reconstruct(feats)


@register(
    "mhtcun",
    paper="Gong et al. 2021, PIER M 107 (paper 003)",
    description="MHTCUN: 3-stage cascade of FCAB U-Nets with pixel and spatial-context branches",
    scale=2,
    in_channels=1,
    channels=(64, 128, 256),
    blocks=3,
    reduction=16,
)
@register(
    "mhtcun-lite",
    paper="Gong et al. 2021, PIER M 107 (paper 003)",
    description="MHTCUN with 16/32/64 channels and one FCAB per level: trainable on a CPU",
    scale=2,
    in_channels=1,
    channels=(16, 32, 64),
    blocks=1,
    reduction=4,
)
class MHTCUN(SRModel):
    """Modified Hybrid Task Cascade U-Net (paper 003 §2). See the module docstring.

    Parameters
    ----------
    scale : 2 or 4
    in_channels : channels of the image (1: grey / Y, as the paper's BioSR)
    channels : U-Net channels per level, top first (paper: 64, 128, 256)
    blocks : FCABs per U-Net level and direction
    reduction : channel reduction of the Fourier channel attention
    gamma : exponent of the power spectrum in the attention (0.8, DFCAN)
    global_residual : add the upsampled input to every stage output
    feature_scale : the factor the input is upsampled by before the network
        (default: ``scale``); a smaller divisor of ``scale`` makes each stage
        end in a PixelShuffle of ``scale // feature_scale``
    haze_sigma, haze_weight : out-of-focus background removal on ``"sr"``
        (:class:`~napari_resolve.models.blocks.HazeRemoval`, ours; 0 = off),
        applied in eval mode only: the training losses see the cascade's own
        stages, the stage is calibrated afterwards (issue 13)
    """

    paper = "Gong et al. 2021 (paper 003)"
    receptive_field = 0
    global_ops = True
    upsamples_input = True
    n_stages = 3

    def __init__(
        self,
        scale: int = 2,
        in_channels: int = 1,
        channels=(64, 128, 256),
        blocks: int = 3,
        reduction: int = 16,
        gamma: float = 0.8,
        global_residual: bool = True,
        feature_scale: int | None = None,
        haze_sigma: float = 0.0,
        haze_weight: float = 0.0,
    ):
        if scale not in (2, 4):
            raise InputError(f"MHTCUN supports scale 2 or 4, got {scale}")
        if int(blocks) < 1:
            raise InputError(f"MHTCUN needs blocks >= 1, got {blocks}")
        feature_scale = scale if feature_scale is None else int(feature_scale)
        if feature_scale < 1 or scale % feature_scale:
            raise InputError(f"MHTCUN feature_scale must divide the scale {scale}, got {feature_scale}")
        super().__init__(scale, in_channels)
        channels = tuple(int(c) for c in channels)
        c0 = channels[0]
        self.global_residual = bool(global_residual)
        self.feature_scale = feature_scale
        shuffle = scale // feature_scale
        # feature sizes must divide by 2**(levels-1); in LR pixels that is this multiple
        sr_multiple = 2 ** (len(channels) - 1)
        self.sr_multiple = sr_multiple
        self.size_multiple = sr_multiple // math.gcd(sr_multiple, feature_scale)

        self.head = conv(in_channels, c0, 3)
        self.unet = FCABUNet(channels, blocks, reduction, gamma)
        self.frm_reduce = nn.ModuleList(conv(2 * c0, c0, 3) for _ in range(self.n_stages))
        self.frm_unets = nn.ModuleList(
            FCABUNet(channels, blocks, reduction, gamma) for _ in range(self.n_stages)
        )
        self.context = SpatialContextBranch(channels)
        self.pixel_branches = nn.ModuleList(
            PixelBranch(c0, in_channels * shuffle**2) for _ in range(self.n_stages)
        )
        self.to_sr = nn.PixelShuffle(shuffle) if shuffle > 1 else nn.Identity()
        self.haze = HazeRemoval(haze_sigma, haze_weight) if haze_weight else None

    def forward(self, x: torch.Tensor, prior=None) -> dict:
        self.check_input(x)
        if prior is not None:
            raise InputError(f"{self.arch or 'mhtcun'} takes no prior (parsing map)")
        up = imresize_torch(x, self.scale)
        inp = up if self.feature_scale == self.scale else imresize_torch(x, self.feature_scale)
        inp, _ = self.pad_input(inp, self.sr_multiple)
        hw = up.shape[-2:]
        feats = self.head(inp)
        context = self.context(feats)
        deep = self.unet(feats)
        stages = []
        pixel = None
        for reduce, unet, branch in zip(self.frm_reduce, self.frm_unets, self.pixel_branches):
            deep = unet(reduce(torch.cat([deep, feats], dim=1)))
            summed = deep + context if pixel is None else deep + context + pixel
            pixel, image = branch(summed)
            image = self.to_sr(image)[..., : hw[0], : hw[1]]
            if self.global_residual:
                image = image + up
            stages.append(image)
        sr = stages[-1] if self.haze is None or self.training else self.haze(stages[-1])
        return {"sr": sr, "stages": stages}
