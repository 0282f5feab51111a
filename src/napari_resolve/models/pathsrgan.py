"""PathSRGAN: two-stage multi-supervised generator and PatchGAN discriminator (paper 002).

Ma et al. 2020, §III-C (Figs. 4-6):

* **G1** (LR → MR, ×2; Fig. 5): a U-Net whose plain convs are replaced by
  DenseBlocks (β = 0.5 residual scaling). DownBlock = 3×3 conv + two
  DenseBlocks; UpBlock = two 3×3 convs + two DenseBlocks; skips are
  concatenated ("integrated in a stacked manner"); the first and last convs
  are 9×9. G1 returns the MR image and the feature maps before its last conv.
* **G2** (MR → HR, ×2; Fig. 6): fed G1's *feature maps* (not its image, the
  ablation of Table IV): a residual-in-residual dense structure — two
  DenseBlocks inside a cross-layer skip connection — then PixelShuffle and
  convs; LeakyReLU with slope 0.1.
* **D1, D2**: PatchGAN discriminators (:class:`PatchDiscriminator`), "a simple
  full convolution model with several max-pooling layers" giving 8×8 patch
  responses; they are not SR models and are not registered.

``PathSRGAN.forward`` returns ``"mr"`` (×2) and ``"sr"`` (×4). Training phase 2
("train G2 with freezing G1", §IV-C) freezes ``model.g1`` (``requires_grad_(False)``
and ``eval()``) and trains ``model.g2``; ``model.g1(x)`` returns ``(mr, features)``
and ``model.g2(features)`` the HR image for sizes that are multiples of
:attr:`PathSRGAN.size_multiple` (``forward`` pads any size and crops back).

Choices the paper leaves open, and ours:

* **Channels.** G1 levels 64/128/256 (U-Net doubling from 64, ESRGAN's width at
  the top), DenseBlocks of 4 layers with growth 32 and a 1×1 fusion
  (:class:`~napari_resolve.models.blocks.DenseBlock`); G2 at 64 channels.
  About 5 M parameters: trainable in tiny tests on a CPU, faithful in layout.
* **Levels.** Three (two stride-2 downsamplings), so the bottom of G1 sees
  128-px training patches at 32 px; ``channels`` sets the depth.
* **Downsampling** in a DownBlock is its 3×3 conv with stride 2 (the top
  DownBlock keeps stride 1); upsampling in an UpBlock is nearest ×2 followed
  by its first 3×3 conv (resize-convolution: no checkerboard), then concat
  with the skip and the second 3×3 conv.
* **How G1 gets to ×2.** The decoder climbs back to LR size, then one more
  UpBlock (no skip) brings the features to MR size; the MR image is the 9×9
  conv of those features, which are what G2 receives. The paper trains on a
  4× image interpolated to 5× (128 px) with 10× (256 px) and 20× (512 px)
  targets, so G1 and G2 are ×2 each and the model is ×4 overall (the only
  scale supported).
* **G2 layout.** 3×3 conv → two DenseBlocks → 3×3 conv, plus the cross-layer
  skip from the first conv → 3×3 conv to 4C, PixelShuffle(2), LeakyReLU →
  3×3 conv, LeakyReLU → 3×3 conv to the image.
* **Activations** LeakyReLU(0.1) everywhere in G1 and G2 (stated for G2's
  DenseBlocks); no normalisation layers (as ESRGAN); linear outputs, no
  global residual (real 4×/0.1-NA input differs from 10× and 20× in depth of
  field, not only in sampling, so bicubic is not a useful baseline to add).
* **Global residual** (option ``global_residual``, off by default as in the
  paper): MR and HR become MATLAB bicubic ×2 / ×4 of the input plus the
  networks' outputs, whose last convs start at zero, so an untrained model
  is bicubic. For short CPU trainings on data where bicubic is a fair start
  (the bundled ``pathsrgan-x4``: minutes instead of days); without it the
  small bundled generator stayed 8-11 dB below bicubic after 5 minutes.
* **Discriminator.** Per level a 3×3 conv + LeakyReLU(0.2) + 2×2 max-pool,
  channels 64·2^i up to 512; then 3×3 conv + LeakyReLU and a 1×1 conv to one
  logit per patch; no normalisation. ``pools`` = log2(input / 8): 5 for D1
  on 256-px MR patches, 6 for D2 on 512-px HR patches
  (:meth:`PatchDiscriminator.for_patch_size`). It returns logits; the
  probability map of Eqs. (4)-(5) is their sigmoid (train with
  ``BCEWithLogits``, which is the same loss, numerically stable).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from napari_resolve.errors import InputError
from napari_resolve.models import register
from napari_resolve.models.base import SRModel
from napari_resolve.models.blocks import DenseBlock, activation, conv

__all__ = ["PathSRGAN", "Generator1", "Generator2", "PatchDiscriminator"]

_SLOPE = 0.1  # paper 002 §III-C: LeakyReLU with coefficient 0.1


def _conv_lrelu(cin: int, cout: int, k: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(conv(cin, cout, k, stride=stride), activation("lrelu", _SLOPE))


class DownBlock(nn.Module):
    """3×3 conv (stride 1 or 2) + LeakyReLU + two DenseBlocks (paper 002 Fig. 5)."""

    def __init__(self, cin: int, cout: int, stride: int, growth: int, dense_layers: int,
                 beta: float):
        super().__init__()
        self.conv = _conv_lrelu(cin, cout, 3, stride)
        self.dense = nn.Sequential(
            *(DenseBlock(cout, growth, dense_layers, beta=beta, negative_slope=_SLOPE)
              for _ in range(2))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense(self.conv(x))


class UpBlock(nn.Module):
    """Nearest ×2, two 3×3 convs (the second after concatenating the skip), two DenseBlocks."""

    def __init__(self, cin: int, cout: int, skip: int, growth: int, dense_layers: int,
                 beta: float):
        super().__init__()
        self.conv1 = _conv_lrelu(cin, cout, 3)
        self.conv2 = _conv_lrelu(cout + skip, cout, 3)
        self.dense = nn.Sequential(
            *(DenseBlock(cout, growth, dense_layers, beta=beta, negative_slope=_SLOPE)
              for _ in range(2))
        )

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        x = self.conv1(F.interpolate(x, scale_factor=2, mode="nearest"))
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.dense(self.conv2(x))


class Generator1(nn.Module):
    """G1: dense U-Net, LR → MR (×2); ``forward`` returns ``(mr_image, mr_features)``."""

    def __init__(self, in_channels: int = 3, channels=(64, 128, 256), growth: int = 32,
                 dense_layers: int = 4, beta: float = 0.5):
        super().__init__()
        channels = tuple(int(c) for c in channels)
        kw = dict(growth=growth, dense_layers=dense_layers, beta=beta)
        self.size_multiple = 2 ** (len(channels) - 1)
        self.head = _conv_lrelu(in_channels, channels[0], 9)
        self.downs = nn.ModuleList(
            DownBlock(channels[max(i - 1, 0)], c, 1 if i == 0 else 2, **kw)
            for i, c in enumerate(channels)
        )
        self.ups = nn.ModuleList(
            UpBlock(channels[i], channels[i - 1], channels[i - 1], **kw)
            for i in range(len(channels) - 1, 0, -1)
        )
        self.to_mr = UpBlock(channels[0], channels[0], 0, **kw)
        self.tail = conv(channels[0], in_channels, 9)
        self.feature_channels = channels[0]

    def forward(self, x: torch.Tensor):
        x = self.head(x)
        skips = []
        for down in self.downs:
            x = down(x)
            skips.append(x)
        x = skips.pop()
        for up in self.ups:
            x = up(x, skips.pop())
        feats = self.to_mr(x)
        return self.tail(feats), feats


class Generator2(nn.Module):
    """G2: two DenseBlocks in a cross-layer skip, PixelShuffle ×2; features → HR image."""

    def __init__(self, feature_channels: int = 64, out_channels: int = 3, channels: int = 64,
                 growth: int = 32, dense_layers: int = 4, dense_blocks: int = 2,
                 beta: float = 0.5):
        super().__init__()
        self.head = conv(feature_channels, channels, 3)
        self.body = nn.Sequential(
            *(DenseBlock(channels, growth, dense_layers, beta=beta, negative_slope=_SLOPE)
              for _ in range(dense_blocks)),
            conv(channels, channels, 3),
        )
        self.upsample = nn.Sequential(
            conv(channels, 4 * channels, 3), nn.PixelShuffle(2), activation("lrelu", _SLOPE)
        )
        self.tail = nn.Sequential(
            _conv_lrelu(channels, channels, 3), conv(channels, out_channels, 3)
        )

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        h = self.head(feats)
        return self.tail(self.upsample(h + self.body(h)))


@register(
    "pathsrgan",
    paper="Ma et al. 2020, IEEE TMI 39(12) (paper 002)",
    description="PathSRGAN generator: dense U-Net G1 (x2, MR) + RRDB G2 on G1's features (x4)",
    scale=4,
    in_channels=3,
)
class PathSRGAN(SRModel):
    """PathSRGAN two-stage generator (paper 002 §III-C); see the module docstring.

    Parameters
    ----------
    scale : 4 (G1 ×2 to MR, G2 ×2 to HR)
    in_channels : 3 (RGB, as the paper) or 1
    channels : G1 channels per U-Net level, top first
    growth, dense_layers : DenseBlock growth rate and number of conv layers
    beta : DenseBlock residual scaling (0.5, Fig. 5)
    g2_channels, g2_dense_blocks : width and DenseBlock count of G2
    global_residual : add bicubic of the input to MR and HR (see the module docstring)
    """

    paper = "Ma et al. 2020 (paper 002)"
    mr_scale = 2

    def __init__(self, scale: int = 4, in_channels: int = 3, channels=(64, 128, 256),
                 growth: int = 32, dense_layers: int = 4, beta: float = 0.5,
                 g2_channels: int = 64, g2_dense_blocks: int = 2,
                 global_residual: bool = False):
        if scale != 4:
            raise InputError(f"PathSRGAN is x4 (G1 x2 to MR, G2 x2 to HR), got scale {scale}")
        if len(tuple(channels)) < 1 or dense_layers < 1 or g2_dense_blocks < 1:
            raise InputError("PathSRGAN needs at least one level, dense layer and G2 block")
        super().__init__(scale, in_channels)
        self.g1 = Generator1(in_channels, channels, growth, dense_layers, beta)
        self.g2 = Generator2(self.g1.feature_channels, in_channels, g2_channels, growth,
                             dense_layers, g2_dense_blocks, beta)
        self.global_residual = bool(global_residual)
        if self.global_residual:  # start as bicubic: the last convs of G1 and G2 give zero
            for last in (self.g1.tail, self.g2.tail[-1]):
                nn.init.zeros_(last.weight)
                nn.init.zeros_(last.bias)
        self.size_multiple = self.g1.size_multiple
        self.receptive_field = self._receptive_field(len(tuple(channels)), dense_layers,
                                                     g2_dense_blocks)

    @staticmethod
    def _receptive_field(levels: int, dense_layers: int, g2_dense_blocks: int) -> int:
        """Upper bound of the receptive-field radius in LR pixels, layer by layer.

        ``step`` is the size of one feature pixel in LR pixels; a k×k conv adds
        ``(k // 2) * step``; a nearest ×2 upsampling adds at most one fine pixel.
        """
        two_dense = 2 * dense_layers  # 3×3 convs in two DenseBlocks (the 1×1 fusions add 0)
        r, step = 4.0, 1.0  # 9×9 head
        r += (1 + two_dense) * step  # top DownBlock
        for _ in range(levels - 1):
            r += step  # stride-2 conv, on the finer grid
            step *= 2
            r += two_dense * step
        for _ in range(levels):  # UpBlocks back to LR size, then to MR size
            step /= 2
            r += step + (2 + two_dense) * step
        r_mr = r + 4 * step  # G1's 9×9 tail (it does not feed G2)
        # G2 at MR: head conv, dense layers, body conv, upsampling conv
        r_sr = r + (3 + g2_dense_blocks * dense_layers) * step
        step /= 2
        r_sr += step + 2 * step  # PixelShuffle (≤ one HR pixel), two tail convs
        return int(math.ceil(max(r_sr, r_mr)))

    def forward(self, x: torch.Tensor, prior=None) -> dict:
        self.check_input(x)
        if prior is not None:
            raise InputError(f"{self.arch or 'pathsrgan'} takes no prior (parsing map)")
        xp, hw = self.pad_input(x)
        mr, feats = self.g1(xp)
        sr = self.crop_output(self.g2(feats), hw)
        mr = self.crop_output(mr, hw, self.mr_scale)
        if self.global_residual:  # bicubic of the unpadded input: MATLAB's borders
            from napari_resolve.data.degrade import imresize_torch

            mr = mr + imresize_torch(x, self.mr_scale)
            sr = sr + imresize_torch(x, self.scale)
        return {"sr": sr, "mr": mr}


class PatchDiscriminator(nn.Module):
    """PatchGAN discriminator of paper 002 §III-C: fully convolutional with max-pooling.

    ``forward(image)`` returns logits (N, 1, H / 2**pools, W / 2**pools), one
    per patch; with ``pools = log2(H / 8)`` that is the paper's 8×8 map.
    Use :meth:`for_patch_size` to build D1 (256-px MR) and D2 (512-px HR).
    """

    def __init__(self, in_channels: int = 3, pools: int = 5, base_channels: int = 64,
                 max_channels: int = 512, negative_slope: float = 0.2):
        super().__init__()
        if pools < 1:
            raise InputError(f"PatchDiscriminator needs pools >= 1, got {pools}")
        self.pools = int(pools)
        layers: list[nn.Module] = []
        cin = in_channels
        for i in range(self.pools):
            cout = min(base_channels * 2**i, max_channels)
            layers += [conv(cin, cout, 3), activation("lrelu", negative_slope), nn.MaxPool2d(2)]
            cin = cout
        layers += [conv(cin, cin, 3), activation("lrelu", negative_slope), nn.Conv2d(cin, 1, 1)]
        self.net = nn.Sequential(*layers)

    @classmethod
    def for_patch_size(cls, size: int, responses: int = 8, **kwargs) -> PatchDiscriminator:
        """Discriminator whose output is ``responses``×``responses`` for ``size``-px inputs."""
        ratio = size / responses
        pools = int(round(math.log2(ratio))) if ratio >= 2 else 0
        if pools < 1 or 2**pools != ratio:
            raise InputError(
                f"patch size {size} is not {responses} times a power of two (>= 2)"
            )
        return cls(pools=pools, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = 2**self.pools
        if x.ndim != 4 or x.shape[-2] < m or x.shape[-1] < m:
            raise InputError(
                f"discriminator input must be (N, C, h, w) with h, w >= {m}, got {tuple(x.shape)}"
            )
        return self.net(x)
