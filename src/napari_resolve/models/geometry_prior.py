"""Leukocyte SR with a geometry prior (paper 000: Hua et al. 2020, JBO 25(10) 106501).

Two registry names:

* ``gp`` — geometry-prior network, paper Fig. 1(a): a prior U-Net predicts a
  3-class parsing map (0 background, 1 cytoplasm, 2 nucleus) from the
  bicubic-upsampled image; the SR net encodes image and map and decodes the
  SR image.
* ``np`` — the none-prior ablation, paper Fig. 1(b) and §3.2: the same SR net
  without the prior net and the mask encoder.

Both take the LR image and upsample it inside with MATLAB-exact bicubic
(paper §2: "we first upsample it to the size of the final HR image ... using
bicubic interpolation"), so every layer works at the HR size.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from napari_resolve.data.color import rgb_to_ycbcr_torch, ycbcr_to_rgb_torch
from napari_resolve.data.degrade import imresize_torch
from napari_resolve.errors import InputError
from napari_resolve.models import register
from napari_resolve.models.base import SRModel
from napari_resolve.models.blocks import ResidualBlock, UNet, conv, conv_act

__all__ = ["GeometryPriorSR", "NonePriorSR", "prior_to_mask", "hard_mask", "guided_filter"]

NUM_CLASSES = 3  # background, cytoplasm, nucleus (paper 000 §2.1; docs/architecture.md)
#: what the prior U-Net reads: the bicubic-upsampled image (paper 000 §2.1) or the LR image
PRIOR_INPUTS = ("upsampled", "lr")


def _zooms(zoom) -> tuple[int, ...]:
    return tuple(zoom) if isinstance(zoom, (tuple, list)) else (zoom,)


def _check_zoom(zoom, scale: int, prior_input: str):
    """``prior_zoom`` as an int, or a tuple of distinct ints (a mean over several zooms)."""
    many = isinstance(zoom, (tuple, list))
    values = list(zoom) if many else [zoom]

    def valid(z) -> bool:
        return (isinstance(z, (int, float)) and not isinstance(z, bool) and math.isfinite(z)
                and z == int(z) and z >= 1 and scale % int(z) == 0
                and (z == 1 or prior_input == "lr"))

    if not values or not all(map(valid, values)) or len({int(z) for z in values}) < len(values):
        raise InputError(f"prior_zoom must be a divisor of the scale ({scale}) or a list of "
                         f"distinct divisors, and 1 unless prior_input is 'lr'; got {zoom}")
    out = tuple(int(z) for z in values)
    return out if many else out[0]


def _check_scale(scale) -> int:
    if int(scale) != scale or not 2 <= int(scale) <= 8:
        raise InputError(f"scale must be an integer from 2 to 8, got {scale}")
    return int(scale)


def _lr_radius(hr_radius: int, scale: int) -> int:
    """LR receptive-field radius of a net working on the bicubic-upsampled image.

    ``hr_radius`` HR px are ``ceil(hr_radius / scale)`` LR px, and each HR pixel of
    MATLAB's bicubic (Keys kernel, support ±2) reads LR pixels up to 2 px away.
    """
    return math.ceil(hr_radius / scale) + 2


#: the LR side below which the LR prior reads a reflected copy of the image: its training
#: patches (``train.parsing``, 48 LR px) are reflect-padded crops whenever a cell image is
#: smaller, so a 15-px LR cell (a 120-px data-set-1 cell at x8) is parsed as it was trained;
#: without it the nucleus IoU of those cells fell from 0.8 to 0.0-0.4 (docs/benchmarks.md)
PRIOR_MIN_LR = 48


def _reflect_to_min(x: torch.Tensor, side: int):
    """``x`` reflect-padded on all sides to at least ``side`` px (h and w), and the
    (top, left) offset of the original; a pass reflects at most n - 1 px of a side of n,
    so three passes (7 -> 13 -> 25 -> 49) cover any input from 7 px. Written with tensor sizes so that ONNX
    tracing records the same padding for every input size."""
    tracing = torch.jit.is_tracing()
    top = left = 0
    for _ in range(3):
        need_h, need_w = (torch.as_tensor(side - n).clamp(min=0).minimum(torch.as_tensor(n - 1))
                          for n in x.shape[-2:])
        if not tracing:
            need_h, need_w = int(need_h), int(need_w)
            if need_h == need_w == 0:
                break
        pads = (need_w // 2, need_w - need_w // 2, need_h // 2, need_h - need_h // 2)
        x = F.pad(x, pads, mode="reflect")
        top, left = top + pads[2], left + pads[0]
    return x, top, left


def _box_mean(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Mean over the (2r+1)² window, edges replicated; separable (2·(2r+1) reads per px)."""
    k = 2 * radius + 1
    x = F.pad(x, (radius, radius, radius, radius), mode="replicate")
    return F.avg_pool2d(F.avg_pool2d(x, (1, k), stride=1), (k, 1), stride=1)


def guided_filter(guide: torch.Tensor, src: torch.Tensor, radius: int, eps: float) -> torch.Tensor:
    """He, Sun & Tang's guided filter (ECCV 2010, Alg. 1) of ``src`` (N, C, H, W) with a
    one-channel ``guide`` (N, 1, H, W): per window the best affine map of the guide onto
    ``src`` (``eps`` regularises the slope), averaged over the windows of a pixel.

    Written here, not taken from kornia (``kornia.filters.guided_blur``, which the
    tests use as the reference), because the model packages' architecture file
    may need only torch and numpy (:mod:`napari_resolve.interop._vendor`). It
    maps channels that sum to one onto channels that sum to one.
    """
    mean_g, mean_s = _box_mean(guide, radius), _box_mean(src, radius)
    var_g = _box_mean(guide * guide, radius) - mean_g * mean_g
    slope = (_box_mean(guide * src, radius) - mean_g * mean_s) / (var_g + eps)
    offset = mean_s - slope * mean_g
    return _box_mean(slope, radius) * guide + _box_mean(offset, radius)


def prior_to_mask(prior, batch: int, hw: tuple[int, int], num_classes: int = NUM_CLASSES,
                  *, device=None, dtype=torch.float32) -> torch.Tensor:
    """Turn a user parsing map into the (N, num_classes, H, W) mask the encoder reads.

    ``prior`` is labels (N, H, W) or (N, 1, H, W) with integer values in
    ``[0, num_classes)``, or a one-hot / probability map (N, num_classes, H, W)
    with values in [0, 1]; torch tensor or anything ``torch.as_tensor`` takes.
    ``hw`` is the SR size. Raises :class:`InputError` naming what is wrong.
    """
    try:
        t = torch.as_tensor(prior)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise InputError(f"prior must be an array of labels or a one-hot map: {exc}") from None
    h, w = hw
    want = (f"labels ({batch}, {h}, {w}) or one-hot ({batch}, {num_classes}, {h}, {w}) "
            "at the SR size")
    integer = not (t.is_floating_point() or t.is_complex())
    if t.dtype == torch.bool:
        t = t.to(torch.uint8)
    if integer and t.ndim == 4 and t.shape[1] == 1:
        t = t[:, 0]
    if t.ndim == 3:
        if not integer:
            if not torch.isfinite(t).all() or (t != t.round()).any():
                raise InputError(f"prior labels must be integers, got dtype {t.dtype}")
        if tuple(t.shape) != (batch, h, w):
            raise InputError(f"prior has shape {tuple(t.shape)}; expected {want}")
        t = t.to(torch.int64)
        if t.numel() and (t.min() < 0 or t.max() >= num_classes):
            raise InputError(
                f"prior labels must be in 0..{num_classes - 1} (0 background, 1 cytoplasm, "
                f"2 nucleus), got {int(t.min())}..{int(t.max())}"
            )
        onehot = F.one_hot(t, num_classes).permute(0, 3, 1, 2)
        return onehot.to(device=device, dtype=dtype)
    if t.ndim == 4:
        if tuple(t.shape) != (batch, num_classes, h, w):
            raise InputError(f"prior has shape {tuple(t.shape)}; expected {want}")
        t = t.to(dtype)
        if not torch.isfinite(t).all() or t.min() < 0 or t.max() > 1:
            raise InputError("a one-hot prior must hold values in [0, 1]")
        return t.to(device=device)
    raise InputError(f"prior has shape {tuple(t.shape)}; expected {want}")


def _d4(t: torch.Tensor, k: int, mirror: bool) -> torch.Tensor:
    """``t`` rotated by ``k`` quarter turns (as ``torch.rot90(t, k, (2, 3))``), then mirrored
    left-right; transposes and flips only, which every exporter knows."""
    for _ in range(k % 4):
        t = t.transpose(2, 3).flip(2)
    return t.flip(3) if mirror else t


def _d4_inverse(t: torch.Tensor, k: int, mirror: bool) -> torch.Tensor:
    t = t.flip(3) if mirror else t
    for _ in range(k % 4):
        t = t.flip(2).transpose(2, 3)
    return t


def hard_mask(parsing: torch.Tensor) -> torch.Tensor:
    """One-hot argmax of parsing logits, with the gradient of their softmax (straight-through).

    The forward value is exactly the one-hot map a user's labels give
    (:func:`prior_to_mask`), so the predicted and the given prior take one
    path; the backward pass lets the SR loss train the prior net (paper 000
    §2.5). Ties go to the lower class, as ``argmax`` of the labels does.
    """
    soft = torch.softmax(parsing, dim=1)
    hard = F.one_hot(parsing.argmax(dim=1), parsing.shape[1]).permute(0, 3, 1, 2).to(soft.dtype)
    if not soft.requires_grad:
        return hard
    return hard + (soft - soft.detach())


class _SRNet(nn.Module):
    """The SR network of paper 000 §2.2 / Fig. 1 (without the prior net).

    feature extractor: conv k3n64 + LeakyReLU(0.2) on the upsampled image;
    LR feature encoder: ``blocks`` residual blocks (conv-LReLU-conv-LReLU + skip,
    no BN); mask encoder (only with ``with_mask``): conv k3n64 + LReLU on the
    parsing map, then ``blocks`` residual blocks ("the same depth as the LR
    feature encoder"); concatenation shallow + deep (+ mask) = 192 (128) channels;
    SR decoder: conv k3n64 + LReLU, ``decoder_blocks`` residual blocks, conv 1×1
    to ``out_channels``.
    """

    def __init__(self, in_channels, features, blocks, decoder_blocks, negative_slope, with_mask,
                 num_classes=NUM_CLASSES):
        super().__init__()
        kw = dict(act="lrelu", negative_slope=negative_slope)
        self.extract = conv_act(in_channels, features, 3, **kw)
        self.lr_encoder = nn.Sequential(*[ResidualBlock(features, 3, **kw) for _ in range(blocks)])
        self.mask_encoder = None
        if with_mask:
            self.mask_encoder = nn.Sequential(
                conv_act(num_classes, features, 3, **kw),
                *[ResidualBlock(features, 3, **kw) for _ in range(blocks)],
            )
        cat = features * (3 if with_mask else 2)
        self.decoder = nn.Sequential(
            conv_act(cat, features, 3, **kw),
            *[ResidualBlock(features, 3, **kw) for _ in range(decoder_blocks)],
            conv(features, in_channels, 1),
        )
        # HR-px radius: 3x3 convs add 1 each (residual block = 2 convs)
        self.image_radius = 1 + 2 * blocks
        self.mask_radius = (1 + 2 * blocks) if with_mask else 0
        self.decoder_radius = 1 + 2 * decoder_blocks

    def zero_last(self) -> None:
        """Zero the last 1x1 conv: with the global residual the untrained net is bicubic."""
        nn.init.zeros_(self.decoder[-1].weight)
        if self.decoder[-1].bias is not None:
            nn.init.zeros_(self.decoder[-1].bias)

    def forward(self, up: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        shallow = self.extract(up)
        feats = [shallow, self.lr_encoder(shallow)]
        if self.mask_encoder is not None:
            feats.append(self.mask_encoder(mask))
        return self.decoder(torch.cat(feats, dim=1))


@register(
    "gp",
    paper="Hua et al. 2020, J. Biomed. Opt. 25(10):106501 (paper 000)",
    description="Geometry-prior leukocyte SR: prior U-Net parsing map + SR net with mask encoder",
    scale=4,
    in_channels=1,
)
class GeometryPriorSR(SRModel):
    """Geometry-prior SR network ("GP"), paper 000 §2 and Fig. 1(a).

    ``forward(x, prior=None)`` takes the LR image (N, C, h, w) in [0, 1] and
    returns ``{"sr": (N, C, s·h, s·w), "parsing": (N, 3, s·h, s·w) logits}``.

    What the paper fixes and we follow:

    * input: the LR image bicubic-upsampled to the HR size (§2), MATLAB
      ``imresize`` (§3.1); one channel, the Y of YCbCr (§2.4); ``in_channels``
      lets other channel counts through;
    * prior net: U-Net (Ronneberger 2015) with half its channels (32…512),
      zero padding so sizes are kept (§2.1); output 3 classes — background,
      cytoplasm, nucleus; trained end to end with the SR net (§2.5);
    * SR net (§2.2, §2.4): every conv 3×3 with 64 filters and zero padding
      except the last (1×1 to one channel); LeakyReLU slope 0.2; residual blocks
      conv-LReLU-conv-LReLU + skip without BN; LR feature encoder of 3 blocks;
      mask encoder of the same depth; decoder input = shallow + deep + mask
      features = 192 channels.

    What the paper leaves open and we chose (all config options):

    * ``decoder_blocks=3``: the decoder is conv k3n64 + LReLU (192→64), three
      residual blocks, conv 1×1. §3.4 says the SR branch has "6 blocks in
      total": 3 in the LR encoder + 3 in the decoder.
    * ``global_residual=True``: the net predicts the correction to the bicubic
      image (VDSR-style skip, cited in §1.1); the last 1x1 conv starts at zero,
      so the untrained net *is* MATLAB bicubic (the "good starting point" of
      §2) and training only improves on it (with random init the untrained
      net was ~10 dB below bicubic on WBC images and needed hundreds of
      steps to catch up).
    * the mask encoder starts with conv k3n64 + LReLU (3→64) before its blocks,
      mirroring the feature extractor, so "same depth" holds.
    * one prior path (issue 14): the mask encoder always reads a *hard*
      one-hot map, the argmax of the prior net's logits or the user's map
      given as ``prior=`` (labels or one-hot). So the predicted map handed
      back unchanged as ``prior=`` gives exactly the same SR, and an edit
      changes the SR only within :attr:`prior_radius` HR px of it. For the
      end-to-end training of §2.5 the SR loss still reaches the prior net
      through a straight-through estimator: forward = one-hot(argmax),
      gradient = that of ``softmax(parsing)`` (Bengio et al. 2013). (The
      earlier choice, softmax probabilities, made the SR branch see soft
      boundaries it never sees in a user's map, and the SR changed along
      every cell outline when the own map was given back.)
    * prior U-Net details: ReLU (as Ronneberger; §2.2's LeakyReLU is stated for
      the SR network), no BN, 2×2 max-pool down and 2×2 transposed conv up,
      ``prior_depth=4`` poolings. Sizes are made a multiple of 16 inside by
      reflection padding of the upsampled image (bottom/right), cropped back,
      inside ``forward`` (so the model has no size rule of its own).
    * the prior net always runs, also when ``prior=`` is given, so that
      ``"parsing"`` is always the network's own prediction (the widget shows it
      beside the edited one).
    * scales: any integer 2–8 (the paper evaluates ×4 and ×8).
    * ``prior_tta=True`` (ours; the bundles since issue 14's ninth session):
      the prior net reads the image in all 8 orientations of the square
      (4 quarter turns, each also mirrored, of the padded LR image), and the
      map is the argmax of the mean of the 8 softmax outputs turned back
      (test-time augmentation; the pre-training already draws these
      orientations). It is part of the
      model, so the one prior path holds as before. It makes the map exactly
      equivariant to those turns on sizes the U-Net needs no padding for.
      Measured on the fourth-stage prior: cytoplasm IoU +0.035 on the 12
      sample cells at ×4 (0.634 → 0.669), +0.01 on the 31 others, nucleus
      +0.008; ×8 +0.006 cytoplasm (docs/benchmarks.md, "Prior, fourth
      stage"). The prior reads the LR image, so the 8 passes
      add about 0.1 s per 128² LR px at ×4 to an SR pass of several
      seconds. Default False: the paper's single pass.
    * ``prior_guide_radius`` > 0 (ours; the bundles since issue 14's tenth
      session): the upsampled map is refined by :func:`guided_filter` with the
      bicubic-upsampled image (mean of its channels) as the guide, window
      radius ``prior_guide_radius`` HR px, ``prior_guide_eps`` on the guide's
      [0, 1] scale: the map read at the LR size and upsampled bilinearly has
      soft, shifted boundaries; the filter moves them onto the image's edges
      (joint upsampling, as a map read at the HR size would have them). It is
      part of ``parsing_logits`` (log of the filtered probabilities), so the
      one prior path holds; the pre-training reads the U-Net alone. Radius and
      eps of each bundle were chosen on training cells
      (``benchmarks/prior_guide.py``; ``train.leukocyte.GP_PRIOR_GUIDE``). Default 0: off.
    * ``prior_input="lr"`` (ours; the bundles since issue 14's seventh session):
      the prior U-Net reads the LR image itself, centred (``x - 0.5``), and
      its logits are upsampled ×s bilinearly (``align_corners=False``) to
      the SR size. Bicubic upsampling adds no information, so this sees what
      the paper's prior sees at 1/s² of the cost, which on a CPU buys a
      wider prior and ten times the pre-training steps. An LR image under
      :data:`PRIOR_MIN_LR` px on a side is reflect-padded to it first (as
      the pre-training crops of small cell images were). Default
      ``"upsampled"``: the paper's.
    * ``prior_zoom`` (ours; ``gp-x8`` since issue 14's twelfth session):
      with ``prior_input="lr"``, the prior reads the LR image MATLAB-bicubic
      enlarged ``prior_zoom`` times (clipped to [0, 1]) and its logits are
      upsampled ×(s / zoom); a list of zooms gives the mean of their
      probabilities (multi-scale test-time augmentation). At ×8 a 120-px
      data-set-1 cell is 15 LR px; the net, pre-trained on ×4 and ×8 LR
      patches, parses it better at twice that size: on 60 training cells
      zoom 2 raised the ×8 IoU from 0.787 / 0.840 to 0.815 / 0.875
      (cytoplasm / nucleus), but on an image twice as magnified (a ×4 LR
      image given to ×8) it painted red cells as nucleus (0.4 % of the
      background, 1.7 % on the sample cells); the mean of zooms 1 and 2
      keeps most of the gain and is the best of the three on the two
      magnifications together (``gp-x8``: ``[1, 2]``; docs/benchmarks.md,
      "Prior zoom"). Default 1.
    * ``luma_sr=True`` with ``in_channels=3`` (ours): the model takes and
      returns RGB; the prior net reads the colour (the stains tell a pink red
      cell from lilac cytoplasm, which Y alone does not), the SR branch works
      on Y of BT.601 (MATLAB ``rgb2ycbcr``) as §2.4 says, Cb / Cr stay
      bicubic, and the result is clipped to [0, 1] — exactly what predict's
      Y path does for a one-channel model, moved inside. In training mode
      the clipping is left out, so the loss on Y (``train.objectives``)
      sees the SR branch's Y unchanged (with it, the gradient of clipped
      pixels pulled Y off: measured, the Y PSNR fell below bicubic in 8 steps).
    """

    paper = "Hua et al. 2020 (paper 000)"
    upsamples_input = True
    predicts_parsing = True
    global_ops = False
    size_multiple = 1  # the U-Net's multiple of 16 is padded inside forward
    receptive_field = _lr_radius(136, 2)  # bound for the smallest scale; per instance below

    def __init__(
        self,
        scale: int = 4,
        in_channels: int = 1,
        features: int = 64,
        encoder_blocks: int = 3,
        decoder_blocks: int = 3,
        negative_slope: float = 0.2,
        global_residual: bool = True,
        prior_base_channels: int = 32,
        prior_depth: int = 4,
        prior_act: str = "relu",
        prior_input: str = "upsampled",
        luma_sr: bool = False,
        prior_tta: bool = False,
        prior_guide_radius: int = 0,
        prior_guide_eps: float = 1e-3,
        prior_zoom: int | tuple[int, ...] = 1,
    ):
        super().__init__(_check_scale(scale), in_channels)
        if prior_input not in PRIOR_INPUTS:
            raise InputError(f"prior_input must be one of {', '.join(PRIOR_INPUTS)}, "
                             f"got {prior_input!r}")
        if luma_sr and in_channels != 3:
            raise InputError(f"luma_sr needs an RGB model (in_channels=3), got {in_channels}")
        self.global_residual = bool(global_residual)
        self.prior_input = prior_input
        self.luma_sr = bool(luma_sr)
        self.prior_tta = bool(prior_tta)
        if int(prior_guide_radius) < 0 or not float(prior_guide_eps) > 0:
            raise InputError("prior_guide_radius must be >= 0 and prior_guide_eps > 0, got "
                             f"{prior_guide_radius} and {prior_guide_eps}")
        if prior_input == "lr":
            # predict pads only sides under 7 LR px: the prior reflects small images to
            # PRIOR_MIN_LR itself, centred, as it was trained (predict's padding of a 15-px
            # x8 cell to 16 px changed 2-10 % of its map against the model's own)
            self.pad_to = 7
        self.prior_guide_radius = int(prior_guide_radius)
        self.prior_guide_eps = float(prior_guide_eps)
        self.prior_zoom = _check_zoom(prior_zoom, self.scale, prior_input)
        self.prior_net = UNet(
            in_channels, NUM_CLASSES, prior_base_channels, prior_depth,
            act=prior_act, padding_mode="zeros",
        )
        sr_channels = 1 if self.luma_sr else in_channels
        self.sr_net = _SRNet(sr_channels, features, encoder_blocks, decoder_blocks,
                             negative_slope, with_mask=True)
        if self.global_residual:
            self.sr_net.zero_last()
        # the U-Net's size multiple (at the size it reads); forward pads for it and crops
        # back, so any LR size works; a size rule here would make predict pad the LR image
        # and a user's prior (with edge values), where the own map has the net's values
        self.prior_multiple = self.prior_net.size_multiple
        self.size_multiple = 1
        s = self.sr_net
        image = _lr_radius(s.image_radius + s.decoder_radius, self.scale)
        if prior_input == "lr":  # U-Net in LR px (+2 for a zoom's bicubic), +1 for the bilinear
            # upsampling of its logits
            prior = max(math.ceil(self.prior_net.receptive_field / z) + (2 if z > 1 else 0)
                        for z in _zooms(self.prior_zoom)) + 1 + math.ceil(
                (s.mask_radius + s.decoder_radius + 2 * self.prior_guide_radius) / self.scale) + 1
        else:  # HR radius: the decoder reads the mask path (U-Net + encoder)
            prior = _lr_radius(self.prior_net.receptive_field + s.mask_radius + s.decoder_radius,
                               self.scale)
        self.receptive_field = max(image, prior)

    @property
    def prior_radius(self) -> int:
        """HR px around an edit of the parsing map within which the SR can change.

        The map reaches the SR only through the mask encoder and the decoder
        (3×3 convolutions; each adds one pixel of radius).
        """
        return self.sr_net.mask_radius + self.sr_net.decoder_radius

    def parsing_logits(self, x: torch.Tensor, scale: int | None = None, up=None) -> torch.Tensor:
        """The prior net's parsing logits (N, 3, s·h, s·w) for the LR input ``x``.

        ``scale`` defaults to the model's (the prior pre-training draws ×4 and
        ×8 for one net); ``up``: ``x`` bicubic-upsampled, when already computed.
        With ``prior_guide_radius`` the log of the guided-filtered probabilities.
        """
        logits = self._parsing(x, scale, up, self.prior_tta)
        if not self.prior_guide_radius:
            return logits
        if up is None or up.shape[-2:] != logits.shape[-2:]:
            up = imresize_torch(x, logits.shape[-1] // x.shape[-1])
        probs = guided_filter(up.mean(dim=1, keepdim=True), torch.softmax(logits, dim=1),
                              self.prior_guide_radius, self.prior_guide_eps)
        return torch.log(probs.clamp_min(1e-12))

    def parsing_logits_one_pass(self, x: torch.Tensor, scale: int | None = None,
                                up=None) -> torch.Tensor:
        """The prior net's logits from one pass, whatever ``prior_tta`` says, and without the
        guided filter (pre-training)."""
        return self._parsing(x, scale, up, False)

    def _prior_net(self, padded: torch.Tensor, tta: bool) -> torch.Tensor:
        """The U-Net on its padded input; with ``tta`` the log of the mean softmax of the 8
        orientations turned back (its argmax is the ensemble's, its softmax the mean).

        Only the U-Net sees turned tensors: the padding, cropping and resizing
        around it read the input's own sizes, which keeps the exported graph's
        shapes inferable (OpenVINO could not bound sizes read after a flip).
        The padded sides are multiples of the U-Net's, so any turn of them is too.
        """
        if not tta:
            return self.prior_net(padded)
        probs = 0
        for k in range(4):
            for mirror in (False, True):
                p = torch.softmax(self.prior_net(_d4(padded, k, mirror)), dim=1)
                probs = probs + _d4_inverse(p, k, mirror)
        return torch.log((probs / 8.0).clamp_min(1e-12))

    def _parsing(self, x: torch.Tensor, scale, up, tta: bool) -> torch.Tensor:
        s = self.scale if scale is None else int(scale)
        h, w = x.shape[-2:]
        hw = (h * s, w * s)
        if self.prior_input == "lr":
            zooms = _zooms(self.prior_zoom)
            if len(zooms) == 1:
                return self._lr_parsing(x, zooms[0], hw, tta)
            # several zooms: the mean of their probabilities at the SR size
            probs = sum(torch.softmax(self._lr_parsing(x, z, hw, tta), dim=1) for z in zooms)
            return torch.log((probs / len(zooms)).clamp_min(1e-12))
        up = imresize_torch(x, s) if up is None else up
        padded, _ = self.pad_input(up, self.prior_multiple)
        return self._prior_net(padded, tta)[..., : hw[0], : hw[1]]

    def _lr_parsing(self, x: torch.Tensor, zoom: int, hw, tta: bool) -> torch.Tensor:
        """Logits at the SR size ``hw`` of the prior reading the LR image enlarged ``zoom``×."""
        if zoom > 1:
            x = imresize_torch(x, zoom).clamp(0.0, 1.0)
        h, w = x.shape[-2:]
        big, top, left = _reflect_to_min(x - 0.5, PRIOR_MIN_LR)
        padded, _ = self.pad_input(big, self.prior_multiple)
        logits = self._prior_net(padded, tta)[..., top : top + h, left : left + w]
        return F.interpolate(logits, size=hw, mode="bilinear", align_corners=False)

    def forward(self, x: torch.Tensor, prior=None) -> dict:
        self.check_input(x)
        n, _, h, w = x.shape
        hw = (h * self.scale, w * self.scale)
        mask = None
        if prior is not None:  # validate before any work
            mask = prior_to_mask(prior, n, hw, NUM_CLASSES, device=x.device, dtype=x.dtype)
        up = imresize_torch(x, self.scale)
        parsing = self.parsing_logits(x, up=up)
        if mask is None:
            mask = hard_mask(parsing)
        if self.luma_sr:  # paper 000 §2.4: SR of Y; chroma stays bicubic (as predict's Y path)
            ycc = rgb_to_ycbcr_torch(up)
            luma = ycc[:, :1]
            sr = self.sr_net(luma, mask) + (luma if self.global_residual else 0)
            sr = ycbcr_to_rgb_torch(torch.cat([sr, ycc[:, 1:]], dim=1))
            if not self.training:  # training: Y of the output is exactly the SR branch's Y
                sr = sr.clamp(0.0, 1.0)
        else:
            sr = self.sr_net(up, mask)
            if self.global_residual:
                sr = sr + up
        return {"sr": sr, "parsing": parsing}


@register(
    "np",
    paper="Hua et al. 2020, J. Biomed. Opt. 25(10):106501 (paper 000)",
    description="None-prior ablation of GP (Fig. 1b): SR net without prior net and mask encoder",
    scale=4,
    in_channels=1,
)
class NonePriorSR(SRModel):
    """None-prior SR network ("NP"), paper 000 Fig. 1(b) and §3.2.

    The GP SR net without the prior net and the mask encoder: bicubic
    upsampling inside, feature extractor, 3-block LR encoder, decoder on
    shallow + deep features (128 channels), conv 1×1. Every choice left open
    is the same as :class:`GeometryPriorSR` (``decoder_blocks=3``,
    ``global_residual=True``). No size rule; takes no ``prior``.
    """

    paper = "Hua et al. 2020 (paper 000)"
    upsamples_input = True
    predicts_parsing = False
    size_multiple = 1
    receptive_field = _lr_radius(1 + 2 * 3 + 1 + 2 * 3, 2)  # default depths, smallest scale

    def __init__(
        self,
        scale: int = 4,
        in_channels: int = 1,
        features: int = 64,
        encoder_blocks: int = 3,
        decoder_blocks: int = 3,
        negative_slope: float = 0.2,
        global_residual: bool = True,
    ):
        super().__init__(_check_scale(scale), in_channels)
        self.global_residual = bool(global_residual)
        self.sr_net = _SRNet(in_channels, features, encoder_blocks, decoder_blocks,
                             negative_slope, with_mask=False)
        if self.global_residual:
            self.sr_net.zero_last()
        self.receptive_field = _lr_radius(
            self.sr_net.image_radius + self.sr_net.decoder_radius, self.scale
        )

    def forward(self, x: torch.Tensor, prior=None) -> dict:
        self.check_input(x)
        if prior is not None:
            raise InputError(f"{self.arch or 'np'} takes no prior (parsing map); use 'gp'")
        up = imresize_torch(x, self.scale)
        sr = self.sr_net(up)
        if self.global_residual:
            sr = sr + up
        return {"sr": sr}
