"""SRSEG and SRResNet (paper 004: Rad et al. 2019, "Benefiting from multitask
learning to improve single image super-resolution", Neurocomputing).

* ``srseg`` — the SRResNet-style generator of §3.1 with the segmentation
  extension used only in training (``forward(x, with_segmentation=True)``).
* ``srresnet`` — the same generator without the extension: the SRResNet-16
  baseline of papers 000 (§3.4) and 004 (§4.2).
* :class:`SRGANDiscriminator` — the discriminator of §3.1 (as SRGAN, Ledig
  2017), for adversarial training; not a registry model.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from napari_resolve.errors import InputError
from napari_resolve.models import register
from napari_resolve.models.base import SRModel
from napari_resolve.models.blocks import ResidualBlock, activation, conv, conv_act

__all__ = ["SRResNet", "SRGANDiscriminator"]

_PAPER = "Rad et al. 2019, Neurocomputing (paper 004)"


def _upsample_stages(scale) -> int:
    if scale not in (2, 4, 8):
        raise InputError(f"scale must be 2, 4 or 8 (x2 PixelShuffle stages), got {scale}")
    return int(math.log2(scale))


@register(
    "srseg",
    paper=_PAPER,
    description="SRResNet generator trained with a segmentation extension (used in training only)",
    scale=4,
    in_channels=3,
    segmentation_classes=3,
)
@register(
    "srresnet",
    paper="Ledig et al. 2017 (SRResNet-16); as in papers 000 §3.4 and 004 §3.1",
    description="SRResNet-16 baseline: the SRSEG generator without segmentation extension",
    scale=4,
    in_channels=3,
    segmentation_classes=0,
)
class SRResNet(SRModel):
    """SRSEG generator, paper 004 §3.1 (Fig. 2), optionally with its segmentation extension.

    ``forward(x, prior=None, with_segmentation=False)``: ``x`` LR (N, C, h, w);
    returns ``{"sr": (N, C, s·h, s·w)}``; with ``with_segmentation=True`` also
    ``"segmentation"``: class logits (N, K, h, w) at the **LR** size. The
    segmentation layers are not run otherwise: inference never touches them
    (§3.1 "not used during SR run-time", §4.6).

    From the paper: conv + LeakyReLU; 16 residual blocks of two 3×3 convs with
    64 maps, each followed by BN and LeakyReLU, with skip; the last block's
    output concatenated with the first conv's features; two ×2 upsampling
    stages (more or fewer for other scales, §3.1); final conv. Segmentation
    extension: two convs on the features just before the first upsampling.

    Choices the paper leaves open (config options where useful):

    * kernel sizes of the first and last convs: 9×9 as SRGAN (Ledig 2017),
      whose generator SRSEG extends (``head_kernel=9``); 3×3 elsewhere.
    * LeakyReLU slope 0.2 (``negative_slope``); no BN after the first conv
      (SRGAN); the residual block is conv-BN-LReLU-conv-BN-LReLU + skip, as the
      text says ("each one followed by a batch normalization and LeakyReLU"),
      where SRGAN has no activation after the second BN.
    * no conv between the last residual block and the concatenation (SRGAN has
      conv + BN + sum there; SRSEG says concatenation), so the upsampling
      stages read 128 channels.
    * upsampling stage: conv 3×3 to 4·64 maps, PixelShuffle ×2, LeakyReLU
      (sub-pixel conv as SRGAN); scale 2, 4, 8 = 1, 2, 3 stages.
    * no output activation (the pixel loss keeps values in range; a clamp
      would kill gradients at the bounds).
    * segmentation extension: conv 3×3 (128→64) + LReLU, conv 1×1 (64→K);
      small on purpose (§3.1: "as limited as possible"). Logits at the LR size,
      as paper 004 labels the LR image (§3.2); train on labels downsampled
      with nearest neighbour.
    * ``segmentation_classes=3``: our labels (background / cytoplasm /
      nucleus), not the paper's six COCO-Stuff classes (§3.4); ``0`` removes
      the extension (= ``srresnet``).
    * RGB by default (``in_channels=3``; COCO-Stuff images in paper 004).
    * ``bicubic_residual=False`` (paper). ``True`` is a departure for short
      budgets (issue 14): the output is added to the MATLAB-bicubic upsampled
      input and the tail conv starts at zero, so the untrained net *is*
      bicubic and training only corrects it (as GP/NP in paper 000 §2). At
      1 % of the papers' budgets the plain generator is still far below
      bicubic (docs/benchmarks.md).
    """

    paper = _PAPER
    upsamples_input = False
    predicts_parsing = False
    size_multiple = 1
    # default config: 9x9 head (4) + 16 blocks x 2 convs (32) + stage convs (1 + 1/2)
    # + 9x9 tail at x4 (4/4) + sub-pixel offset (3/8) -> 38.9 LR px; per instance below
    receptive_field = 39

    def __init__(
        self,
        scale: int = 4,
        in_channels: int = 3,
        features: int = 64,
        num_blocks: int = 16,
        negative_slope: float = 0.2,
        head_kernel: int = 9,
        segmentation_classes: int = 3,
        bicubic_residual: bool = False,
    ):
        stages = _upsample_stages(scale)
        super().__init__(scale, in_channels)
        kw = dict(act="lrelu", negative_slope=negative_slope)
        self.head = conv_act(in_channels, features, head_kernel, **kw)
        self.body = nn.Sequential(
            *[
                ResidualBlock(features, 3, batch_norm=True, act_after_second=True, **kw)
                for _ in range(num_blocks)
            ]
        )
        ups: list[nn.Module] = []
        cin = 2 * features  # concatenation of head and body features
        for _ in range(stages):
            ups += [conv(cin, 4 * features, 3), nn.PixelShuffle(2),
                    activation("lrelu", negative_slope)]
            cin = features
        self.upsample = nn.Sequential(*ups)
        self.tail = conv(features, in_channels, head_kernel)
        self.bicubic_residual = bool(bicubic_residual)
        if self.bicubic_residual:
            nn.init.zeros_(self.tail.weight)
            if self.tail.bias is not None:
                nn.init.zeros_(self.tail.bias)
        self.segmentation_classes = int(segmentation_classes)
        self.segmentation_head = None
        if self.segmentation_classes > 0:
            self.segmentation_head = nn.Sequential(
                conv_act(2 * features, features, 3, **kw),
                conv(features, self.segmentation_classes, 1),
            )
        # LR radius: head, 2 convs per block, the 3x3 of stage i runs at 2**i, tail at scale
        r = head_kernel // 2 + 2 * num_blocks + sum(1 / 2**i for i in range(stages))
        r += (head_kernel // 2) / self.scale
        # sub-pixel offset: an LR pixel's s x s output block spans +-(1 - 1/s)/2 LR px
        r += (1 - 1 / self.scale) / 2
        self.receptive_field = math.ceil(r)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Shared features before the first upsampling: concat(head, body(head))."""
        shallow = self.head(x)
        return torch.cat([self.body(shallow), shallow], dim=1)

    def forward(self, x: torch.Tensor, prior=None, with_segmentation: bool = False) -> dict:
        self.check_input(x)
        if prior is not None:
            raise InputError(f"{self.arch or 'srresnet'} takes no prior (parsing map)")
        feats = self.features(x)
        sr = self.tail(self.upsample(feats))
        if self.bicubic_residual:
            from napari_resolve.data.degrade import imresize_torch

            sr = sr + imresize_torch(x, self.scale)
        out = {"sr": sr}
        if with_segmentation:
            if self.segmentation_head is None:
                raise InputError(
                    f"{self.arch or 'srresnet'} has no segmentation extension "
                    "(build it with segmentation_classes > 0, e.g. 'srseg')"
                )
            out["segmentation"] = self.segmentation_head(feats)
        return out


class SRGANDiscriminator(nn.Module):
    """Discriminator of paper 004 §3.1, "similar to" SRGAN's (Ledig 2017, Fig. 4).

    Eight 3×3 convs, 64→128→256→512 maps, stride 2 on every second conv
    (the image shrinks 16×), LeakyReLU 0.2, BN after every conv but the first;
    then two dense layers (512→1024, LeakyReLU, 1024→1) and a sigmoid.

    Open choice: SRGAN flattens a fixed 6×6×512 map (96 px patches); to accept
    any patch size we average-pool the 512 maps globally before the dense
    layers (``forward`` works for any input ≥ 1 px). ``forward(x)`` returns the
    probability "real" (N, 1) as in the paper; ``forward(x, logits=True)``
    returns the logit for a numerically stable ``BCEWithLogitsLoss``.
    """

    def __init__(self, in_channels: int = 3, features: int = 64, negative_slope: float = 0.2,
                 dense_features: int = 1024):
        super().__init__()
        kw = dict(act="lrelu", negative_slope=negative_slope)
        layers: list[nn.Module] = [conv_act(in_channels, features, 3, **kw)]
        widths = [features, features * 2, features * 2, features * 4, features * 4,
                  features * 8, features * 8]
        cin = features
        for i, wdt in enumerate(widths):
            stride = 2 if i % 2 == 0 else 1  # k3n64s2, k3n128s1, k3n128s2, ...
            layers.append(conv_act(cin, wdt, 3, stride=stride, batch_norm=True, **kw))
            cin = wdt
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(cin, dense_features),
            activation("lrelu", negative_slope),
            nn.Linear(dense_features, 1),
        )

    def forward(self, x: torch.Tensor, logits: bool = False) -> torch.Tensor:
        if x.ndim != 4:
            raise InputError(f"discriminator input must be (N, C, H, W), got {tuple(x.shape)}")
        z = self.classifier(self.pool(self.features(x)))
        return z if logits else torch.sigmoid(z)
