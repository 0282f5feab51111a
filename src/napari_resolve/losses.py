"""Loss functions of the four papers (differentiable, torch).

Every function takes float tensors (N, C, H, W) in [0, 1] unless said
otherwise and returns a scalar tensor (the batch mean).

=================================  ==========================================
paper 000 (Hua 2020, GP) §2.3        :func:`charbonnier` (ε = 1e-3) +
                                     λ·:func:`parsing_loss` (λ = 1)
paper 002 (Ma 2020, PathSRGAN) §III  MSE + α·:func:`perceptual_loss` +
                                     β·:func:`adversarial_g_loss` (PatchGAN),
                                     :func:`task_loss` (§IV-E)
paper 003 (Gong 2021, MHTCUN) §3     :func:`mse_ssim_loss` per stage,
                                     :func:`staged_loss` (0.3 / 0.3 / 1 against
                                     targets blurred ×4 / ×2 / not)
paper 004 (Rad 2019, SRSEG) §3       MSE + perceptual + adversarial (SRGAN) +
                                     :func:`masked_cross_entropy` with
                                     :func:`boundary_mask`
=================================  ==========================================

Perceptual losses need a feature network. The papers use ImageNet VGG (VGG16
fine-tuned on cytology in 002, VGG16 ReLU4-1 in 004), which cannot be
downloaded here, so the feature network is pluggable (:class:`FeatureExtractor`)
and :class:`ConvEncoder` is one that needs no download: a small convolutional
encoder learned on the user's own images as a denoising autoencoder
(:func:`fit_conv_encoder`), in the spirit of paper 002's fine-tuning of the
feature network on the target domain. :class:`FrozenFeatures` wraps any
trained module (e.g. the trunk of a trained SR or segmentation model).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from napari_resolve.data.degrade import imresize_torch
from napari_resolve.errors import InputError

__all__ = [
    "charbonnier",
    "mse",
    "parsing_loss",
    "ssim",
    "mse_ssim_loss",
    "blur_downsample_torch",
    "staged_loss",
    "boundary_mask",
    "masked_cross_entropy",
    "adversarial_d_loss",
    "adversarial_g_loss",
    "FeatureExtractor",
    "ConvEncoder",
    "FrozenFeatures",
    "fit_conv_encoder",
    "perceptual_loss",
    "task_loss",
    "STAGE_WEIGHTS",
    "STAGE_BLUR",
]

#: paper 003 §3: auxiliary weights a1, a2, a3 of the three stages (coarse to fine)
STAGE_WEIGHTS = (0.3, 0.3, 1.0)
#: paper 003 §3: the targets of stages 1, 2, 3 are the ground truth blurred ×4, ×2, ×1
STAGE_BLUR = (4, 2, 1)


def _same_shape(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    if a.shape != b.shape:
        raise InputError(f"{what}: prediction {tuple(a.shape)} and target {tuple(b.shape)} differ")


# --------------------------------------------------------------------------- pixel losses
def charbonnier(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """Charbonnier penalty ``mean(sqrt((pred - target)² + ε²))``, paper 000 eq. (4).

    ε = 1e-3 as in the paper. The paper writes ``1/N Σ_i ρ(Î_i - I_i)`` without
    saying how pixels are reduced; we average over pixels and channels too
    (LapSRN's convention), so the loss does not grow with the image size.
    """
    _same_shape(pred, target, "charbonnier")
    diff = pred - target
    return torch.sqrt(diff * diff + eps * eps).mean()


def mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error over all elements (paper 002 eq. (2), paper 004 §3.3)."""
    _same_shape(pred, target, "mse")
    return F.mse_loss(pred, target)


def parsing_loss(logits: torch.Tensor, labels: torch.Tensor, mode: str = "ce") -> torch.Tensor:
    """Loss of the parsing (prior) map, paper 000 eq. (3)/(5), weight λ = 1 there.

    The paper "follows the binary cross entropy loss used in U-net"; U-Net's
    loss is a pixel-wise softmax followed by cross entropy, which for the three
    classes (background / cytoplasm / nucleus) is what ``mode="ce"`` computes
    (the default). ``mode="bce"`` is the literal reading: a sigmoid and binary
    cross entropy on each channel against the one-hot labels, averaged over
    channels and pixels.

    ``logits`` (N, K, H, W); ``labels`` (N, H, W) integer class indices;
    pixels labelled -1 (images without a parsing map) are ignored.
    """
    if logits.ndim != 4 or labels.shape != (logits.shape[0], *logits.shape[2:]):
        raise InputError(
            f"parsing loss: logits (N, K, H, W) and labels (N, H, W) expected, "
            f"got {tuple(logits.shape)} and {tuple(labels.shape)}"
        )
    labels = labels.long()
    known = labels >= 0  # -1 marks pixels (images) without labels
    if not bool(known.any()):
        return logits.sum() * 0.0
    if mode == "ce":
        return F.cross_entropy(logits.float(), labels, ignore_index=-1)
    if mode == "bce":
        onehot = F.one_hot(labels.clamp_min(0), logits.shape[1]).permute(0, 3, 1, 2).float()
        per = F.binary_cross_entropy_with_logits(logits.float(), onehot, reduction="none")
        keep = known[:, None].float()
        return (per * keep).sum() / (keep.sum() * logits.shape[1])
    raise InputError(f"parsing loss mode must be 'ce' or 'bce', got {mode!r}")


# --------------------------------------------------------------------------- SSIM
def _gaussian_window(size: int, sigma: float, channels: int, device, dtype) -> torch.Tensor:
    ax = torch.arange(size, dtype=torch.float64) - (size - 1) / 2.0
    g = torch.exp(-(ax**2) / (2.0 * sigma**2))
    g = g / g.sum()
    win = torch.outer(g, g).to(device=device, dtype=dtype)
    return win.expand(channels, 1, size, size).contiguous()


def ssim(
    pred: torch.Tensor,
    target: torch.Tensor,
    data_range: float = 1.0,
    win_size: int = 11,
    sigma: float = 1.5,
) -> torch.Tensor:
    """Differentiable mean SSIM (Wang 2004), as paper 003 eq. (2)–(5).

    Gaussian window 11×11, σ = 1.5, K1 = 0.01, K2 = 0.03 (Wang's constants;
    paper 003 does not give them), population (co)variances, mean over the
    'valid' region (no padding) and over channels. This equals
    ``skimage.metrics.structural_similarity(..., gaussian_weights=True,
    sigma=1.5, use_sample_covariance=False, data_range=1)`` up to float error.
    """
    _same_shape(pred, target, "ssim")
    if pred.ndim != 4:
        raise InputError(f"ssim expects (N, C, H, W) tensors, got {tuple(pred.shape)}")
    size = min(win_size, pred.shape[-1], pred.shape[-2])
    size -= 1 - size % 2  # odd window, smaller for tiny images
    c = pred.shape[1]
    # float64 stays float64; half precision is promoted (variances cancel badly)
    work = torch.float64 if pred.dtype == torch.float64 else torch.float32
    pred = pred.to(work)
    target = target.to(work)
    win = _gaussian_window(size, sigma, c, pred.device, pred.dtype)

    def filt(x):
        return F.conv2d(x, win, groups=c)

    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    mu_x, mu_y = filt(pred), filt(target)
    sxx = filt(pred * pred) - mu_x * mu_x
    syy = filt(target * target) - mu_y * mu_y
    sxy = filt(pred * target) - mu_x * mu_y
    num = (2 * mu_x * mu_y + c1) * (2 * sxy + c2)
    den = (mu_x * mu_x + mu_y * mu_y + c1) * (sxx + syy + c2)
    return (num / den).mean()


def mse_ssim_loss(
    pred: torch.Tensor, target: torch.Tensor, alpha: float = 1.0, beta: float = 0.1
) -> torch.Tensor:
    """``α·MSE + β·(1 − SSIM)``, paper 003 eq. (7) with α = 1, β = 0.1 (β = 0: no SSIM computed)."""
    if beta == 0:
        return alpha * mse(pred, target)
    return alpha * mse(pred, target) + beta * (1.0 - ssim(pred, target))


def blur_downsample_torch(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Torch twin of :func:`napari_resolve.data.degrade.blur_downsample`.

    MATLAB bicubic down by ``factor`` (antialiased), then bilinear back up to
    the input size (half-pixel centres, edge replicated: the same mapping as
    ``skimage.transform.resize(order=1, mode="edge")``). Runs on the tensor's
    device so stage targets of paper 003 §3 are made inside the training step.
    """
    factor = int(factor)
    if factor == 1:
        return x
    h, w = x.shape[-2:]
    small = imresize_torch(x, 1.0 / factor)
    return F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)


def staged_loss(
    stages,
    target: torch.Tensor,
    weights=STAGE_WEIGHTS,
    blur=STAGE_BLUR,
    alpha: float = 1.0,
    beta: float = 0.1,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """MHTCUN's cascade loss ``Σ a_i · L_i(stage_i, blur_i(target))``, paper 003 §3.

    ``stages`` coarse to fine (the model's ``"stages"``); ``L_i`` is
    :func:`mse_ssim_loss`; weights 0.3 / 0.3 / 1 against the target blurred
    ×4 / ×2 / not blurred. Returns the total and the per-stage losses.
    """
    stages = list(stages)
    if not (len(stages) == len(weights) == len(blur)):
        raise InputError(
            f"staged loss: {len(stages)} stages but {len(weights)} weights and {len(blur)} blurs"
        )
    per_stage = []
    total = target.new_zeros(())
    for out, w, f in zip(stages, weights, blur):
        ref = blur_downsample_torch(target, f)
        loss = mse_ssim_loss(out, ref, alpha, beta)
        per_stage.append(loss)
        total = total + w * loss
    return total, per_stage


# --------------------------------------------------------------------------- segmentation
def _disk(radius: int) -> np.ndarray:
    """``skimage.morphology.disk(radius)`` (x² + y² ≤ r²), without importing skimage.morphology."""
    ax = np.arange(-int(radius), int(radius) + 1)
    return (ax[:, None] ** 2 + ax[None, :] ** 2 <= int(radius) ** 2).astype(np.float32)


def boundary_mask(labels: torch.Tensor, radius: int = 2) -> torch.Tensor:
    """Paper 004 §3.2: 1 away from class boundaries, 0 within ``radius`` px of one.

    The paper takes "the derivative of the segmentation label" to find the
    class boundaries and dilates them "with a disk of size d1"; d1 is not
    given, we default to 2 px. A pixel is a boundary pixel when one of its
    4-neighbours has another label (both sides of an edge are marked, as
    ``skimage.segmentation.find_boundaries(mode="thick")``); the dilation uses
    a disk footprint as ``skimage.morphology.disk(radius)``. ``labels`` (N, H, W) or (H, W)
    integer; returns a float mask of the same shape.
    """
    squeeze = labels.ndim == 2
    lab = labels[None] if squeeze else labels
    if lab.ndim != 3:
        raise InputError(f"boundary mask: labels must be (N, H, W), got {tuple(labels.shape)}")
    lab = lab.long()
    edge = torch.zeros(lab.shape, dtype=torch.bool, device=lab.device)
    dv = lab[:, 1:, :] != lab[:, :-1, :]
    dh = lab[:, :, 1:] != lab[:, :, :-1]
    edge[:, 1:, :] |= dv
    edge[:, :-1, :] |= dv
    edge[:, :, 1:] |= dh
    edge[:, :, :-1] |= dh
    if radius > 0:
        fp = torch.as_tensor(_disk(radius), device=lab.device)[None, None]
        grown = F.conv2d(edge[:, None].float(), fp, padding=int(radius))[:, 0] > 0.5
    else:
        grown = edge
    mask = (~grown).float()
    return mask[0] if squeeze else mask


def masked_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Pixel-wise cross entropy kept only where ``mask`` is 1 (paper 004 eq. (1), M·L_seg).

    The paper multiplies the per-pixel loss by the boundary mask; how it is
    then reduced is not said. We average over the kept pixels, so the loss
    scale does not depend on how many pixels the mask removes (0 when none is
    kept).
    """
    if logits.ndim != 4 or labels.shape != (logits.shape[0], *logits.shape[2:]):
        raise InputError(
            f"segmentation loss: logits (N, K, H, W) and labels (N, H, W) expected, "
            f"got {tuple(logits.shape)} and {tuple(labels.shape)}"
        )
    labels = labels.long()
    per_pixel = F.cross_entropy(logits.float(), labels, reduction="none", ignore_index=-1)
    known = (labels >= 0).to(per_pixel.dtype)  # -1: no label there
    mask = known if mask is None else mask.to(per_pixel.dtype) * known
    return (per_pixel * mask).sum() / mask.sum().clamp_min(1.0)


# --------------------------------------------------------------------------- adversarial
def adversarial_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Discriminator loss ``−mean(log D(y) + log(1 − D(G(x))))`` on logits.

    Paper 002 eq. (5) for a PatchGAN (mean over the N×H_D×W_D probability
    map) and SRGAN's (paper 004 §3.3, after Ledig 2017) for a single
    real/fake logit per image: both are binary cross entropy, computed from
    logits for numerical stability (the sigmoid is inside the loss, so
    discriminators return logits).
    """
    real = F.binary_cross_entropy_with_logits(
        real_logits.float(), torch.ones_like(real_logits).float()
    )
    fake = F.binary_cross_entropy_with_logits(
        fake_logits.float(), torch.zeros_like(fake_logits).float()
    )
    return real + fake


def adversarial_g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Generator loss ``−mean(log D(G(x)))`` (non-saturating), paper 002 eq. (4), SRGAN's l_Gen."""
    return F.binary_cross_entropy_with_logits(
        fake_logits.float(), torch.ones_like(fake_logits).float()
    )


# --------------------------------------------------------------------------- perceptual
@runtime_checkable
class FeatureExtractor(Protocol):
    """A frozen feature network for the perceptual loss.

    ``in_channels`` is the channel count it accepts (inputs with 1 channel are
    repeated to 3 when it wants 3, and 3-channel inputs are averaged when it
    wants 1); calling it on (N, C, H, W) in [0, 1] returns feature maps.
    """

    in_channels: int

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...


class ConvEncoder(nn.Module):
    """A small convolutional encoder (no download) for perceptual losses.

    Four 3×3 conv + LeakyReLU(0.2) layers, the second and fourth with stride
    2 (features at 1/4 of the input size, like a shallow VGG block stack).
    Learned on the user's own images by :func:`fit_conv_encoder`; the papers'
    ImageNet VGG (002 §III-A: VGG16 fine-tuned on cytology; 004 §3.3: VGG16
    ReLU4-1) is not available offline.
    """

    def __init__(self, in_channels: int = 1, width: int = 32):
        super().__init__()
        self.in_channels = int(in_channels)
        self.width = int(width)
        w = self.width

        def act():
            return nn.LeakyReLU(0.2, inplace=True)

        self.features = nn.Sequential(
            nn.Conv2d(in_channels, w, 3, padding=1), act(),
            nn.Conv2d(w, w, 3, stride=2, padding=1), act(),
            nn.Conv2d(w, 2 * w, 3, padding=1), act(),
            nn.Conv2d(2 * w, 2 * w, 3, stride=2, padding=1), act(),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


class _Decoder(nn.Module):
    def __init__(self, out_channels: int, width: int):
        super().__init__()
        w = width
        self.body = nn.Sequential(
            nn.ConvTranspose2d(2 * w, w, 4, stride=2, padding=1), nn.LeakyReLU(0.2, inplace=True),
            nn.ConvTranspose2d(w, w, 4, stride=2, padding=1), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(w, out_channels, 3, padding=1),
        )  # fmt: skip

    def forward(self, f):
        return self.body(f)


def fit_conv_encoder(
    patches,
    *,
    in_channels: int | None = None,
    width: int = 32,
    steps: int = 200,
    batch_size: int = 16,
    lr: float = 1e-3,
    noise: float = 0.05,
    seed: int = 0,
    device="cpu",
) -> ConvEncoder:
    """Learn a :class:`ConvEncoder` as a denoising autoencoder on ``patches``; return it frozen.

    ``patches``: tensor or array (N, C, H, W) in [0, 1] with H, W multiples of
    4 (e.g. HR training patches). Self-supervised: the encoder sees the patch
    plus Gaussian noise (σ = ``noise``) and a light decoder must give back the
    clean patch (MSE), so the features describe the structures of the user's
    own domain, not ImageNet's. Deterministic for a given ``seed``.
    """
    x = torch.as_tensor(np.asarray(patches) if not torch.is_tensor(patches) else patches)
    if x.ndim != 4 or x.shape[-1] % 4 or x.shape[-2] % 4 or x.shape[0] == 0:
        raise InputError(
            f"encoder patches must be (N, C, H, W) with H, W multiples of 4, got {tuple(x.shape)}"
        )
    x = x.float().to(device)
    c = int(in_channels or x.shape[1])
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        enc = ConvEncoder(c, width).to(device)
        dec = _Decoder(c, width).to(device)
    opt = torch.optim.Adam([*enc.parameters(), *dec.parameters()], lr=lr)
    for _ in range(int(steps)):
        idx = torch.randint(0, x.shape[0], (min(batch_size, x.shape[0]),), generator=gen)
        clean = x[idx.to(x.device)]
        noisy = clean + noise * torch.randn(clean.shape, generator=gen).to(device)
        loss = F.mse_loss(dec(enc(noisy)), clean)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    enc.eval().requires_grad_(False)
    return enc


class FrozenFeatures(nn.Module):
    """Any trained module used as a frozen feature network (e.g. a trained model's trunk).

    ``module(x)`` must return a tensor (or a dict, then ``key`` picks one).
    Its weights are frozen; gradients still flow to the input.
    """

    def __init__(self, module: nn.Module, in_channels: int, key: str | None = None):
        super().__init__()
        self.module = module.eval().requires_grad_(False)
        self.in_channels = int(in_channels)
        self.key = key

    def train(self, mode: bool = True):  # stays in eval mode (BN/dropout frozen)
        super().train(False)
        return self

    def forward(self, x):
        out = self.module(x)
        return out[self.key] if self.key is not None else out


def _match_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    if x.shape[1] == channels:
        return x
    if x.shape[1] == 1:
        return x.expand(-1, channels, -1, -1)
    if channels == 1:
        return x.mean(dim=1, keepdim=True)
    raise InputError(f"feature network wants {channels} channels, image has {x.shape[1]}")


def perceptual_loss(extractor, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MSE between feature maps, paper 002 eq. (3) / paper 004 §3.3 (L2 of features).

    ``extractor`` is a :class:`FeatureExtractor`; the target's features carry
    no gradient.
    """
    _same_shape(pred, target, "perceptual loss")
    c = int(getattr(extractor, "in_channels", pred.shape[1]))
    f_pred = extractor(_match_channels(pred, c))
    with torch.no_grad():
        f_ref = extractor(_match_channels(target, c))
    return F.mse_loss(f_pred.float(), f_ref.float())


# --------------------------------------------------------------------------- task loss
def task_loss(task_model: nn.Module, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Loss of a frozen task model on the SR output, paper 002 §IV-E eq. (7)/(8).

    ``task_model(pred)`` gives logits; ``target`` holds the task labels:
    float 0/1 of the logits' shape → binary cross entropy (lesion
    classification eq. (7), nucleus segmentation eq. (8)); integer class
    indices (N,) or (N, H, W) → cross entropy. The task model is not updated
    (paper: "the lesion classification model is not updated"), only the
    generator receives the gradient.
    """
    was_training = task_model.training
    task_model.eval()
    for p in task_model.parameters():
        p.requires_grad_(False)
    try:
        logits = task_model(pred)
        if isinstance(logits, dict):
            logits = logits.get("logits", next(iter(logits.values())))
    finally:
        task_model.train(was_training)
    if torch.is_floating_point(target):
        if target.shape != logits.shape:
            raise InputError(
                f"task loss: targets {tuple(target.shape)} do not match the task model's "
                f"output {tuple(logits.shape)}"
            )
        return F.binary_cross_entropy_with_logits(logits.float(), target.float())
    return F.cross_entropy(logits.float(), target.long())
