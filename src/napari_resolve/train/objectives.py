"""What a training run optimises and measures: loss terms, discriminators, optimisers, quality.

:class:`_Terms` computes a recipe phase's weighted loss terms
(:mod:`napari_resolve.losses`) on one batch, the generator's and the
discriminators'; terms a model or the data cannot serve (no labels, no
parsing or segmentation output, no task model) are left out with a reason.
:func:`_make_discriminator` builds PathSRGAN's patch discriminator (paper 002)
or SRGAN's (paper 004); :func:`_auto_features` fits the feature network of
perceptual terms on the training images (no download); :func:`_quality` is
the validation PSNR / SSIM of one pair and :func:`_validate` its mean over a
validation set (:mod:`napari_resolve.metrics.quality`, on the
Y / grey channel, border of ``scale`` px cropped).
"""

from __future__ import annotations

import inspect
import math

import numpy as np
import torch
from torch import nn

from napari_resolve import losses as L
from napari_resolve.errors import InputError
from napari_resolve.train import recipes as R
from napari_resolve.train.devices import _unwrap


def _make_discriminator(
    kind: str, channels: int, patch: int, width: int | None = None
) -> nn.Module:
    # width: recipe option "discriminator_channels" (first level; default 64)
    if kind == "patchgan":
        from napari_resolve.models.pathsrgan import PatchDiscriminator

        # paper 002: 8×8 patch responses; pools = log2(size / 8), at least 1
        pools = max(1, int(math.floor(math.log2(max(patch, 16) / 8))))
        extra = {"base_channels": int(width)} if width else {}
        return PatchDiscriminator(in_channels=channels, pools=pools, **extra)
    if kind == "srgan":
        from napari_resolve.models.srseg import SRGANDiscriminator

        return SRGANDiscriminator(in_channels=channels, **({"features": int(width)} if width else {}))
    raise InputError(f"unknown discriminator kind {kind!r}")


def _disc_logits(disc: nn.Module, x: torch.Tensor) -> torch.Tensor:
    inner = _unwrap(disc)
    if "logits" in inspect.signature(inner.forward).parameters:
        return disc(x, logits=True)
    return disc(x)


def _optimizer(rec: R.Recipe, params, lr: float) -> torch.optim.Optimizer:
    if rec.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, betas=tuple(rec.betas))
    if rec.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr)
    raise InputError(f"unknown optimizer {rec.optimizer!r}; use 'adam' or 'sgd'")


def _quality(sr: torch.Tensor, hr: torch.Tensor, scale: int, fit: bool = False) -> tuple[float, float]:
    """Validation PSNR / SSIM of one (C, H, W) pair in [0, 1] (Y for RGB, border cropped).

    ``fit``: the fair fluorescence comparison instead
    (:func:`napari_resolve.metrics.quality.fit_metrics`, CARE's affine fit; grey
    images), for recipes whose held-out figure is fit-PSNR (recipe option
    ``val_metric="fit"``): a checkpoint is then chosen on what is reported, not
    on the output's offset and gain.
    """
    from napari_resolve.metrics import quality

    a = sr.detach().float().cpu().numpy()
    b = hr.detach().float().cpu().numpy()
    a = a[0] if a.shape[0] == 1 else np.moveaxis(a, 0, -1)
    b = b[0] if b.shape[0] == 1 else np.moveaxis(b, 0, -1)
    if fit and a.ndim == 2:
        crop = scale if min(a.shape[:2]) - 2 * scale >= 11 else 0
        m = quality.fit_metrics(a, b, crop=crop)
        return float(m["psnr"]), float(m["ssim"])
    # SR outputs are clipped to the displayable range, as SR benchmarks quantise them
    a = np.clip(a, min(0.0, float(b.min())), max(1.0, float(b.max())))
    crop = scale if min(a.shape[:2]) - 2 * scale >= 11 else 0
    kw = dict(data_range=1.0, crop=crop)
    return float(quality.psnr(a, b, **kw)), float(quality.ssim(a, b, **kw))


def _validate(model, val_ds, dev, amp_dtype=torch.float16, use_amp: bool = False,
              fit: bool = False) -> dict:
    """Mean :func:`_quality` of ``model`` over ``val_ds``: ``{"psnr", "ssim"}``.

    Non-finite PSNRs (a perfect match) are left out of the mean; all of them
    non-finite gives inf. ``use_amp``: autocast to ``amp_dtype`` (CUDA). The
    model's train / eval mode is restored.
    """
    was = model.training
    model.eval()
    ps_, ss_ = [], []
    with torch.no_grad():
        for i in range(len(val_ds)):
            smp = val_ds[i]
            with torch.autocast(dev.type, dtype=amp_dtype, enabled=use_amp):
                out = model(smp["lr"][None].to(dev))
            p, s_ = _quality(out["sr"][0].float(), smp["hr"], model.scale, fit=fit)
            ps_.append(p)
            ss_.append(s_)
    if was:
        model.train()
    finite = [p for p in ps_ if math.isfinite(p)]
    psnr = float(np.mean(finite)) if finite else (math.inf if ps_ else math.nan)
    return {"psnr": psnr, "ssim": float(np.mean(ss_)) if ss_ else math.nan}


class _Terms:
    """Computes a phase's weighted loss terms on one batch."""

    def __init__(
        self,
        recipe: R.Recipe,
        phase: R.Phase,
        scale: int,
        features,
        task_model,
        has_labels: bool,
        model: nn.Module,
    ):
        self.recipe = recipe
        self.scale = scale
        self.features = features
        self.task_model = task_model
        self.terms = {}
        self.skipped = []
        base = _unwrap(model)
        wants_seg = "with_segmentation" in inspect.signature(base.forward).parameters
        for key, weight in phase.losses.items():
            term = key.split("@")[0]
            if term in ("parsing", "segmentation") and not has_labels:
                self.skipped.append(f"{key} (no label images)")
                continue
            if term == "parsing" and not getattr(base, "predicts_parsing", False):
                self.skipped.append(f"{key} ({base.arch or 'model'} predicts no parsing map)")
                continue
            if term == "segmentation" and not (
                wants_seg and getattr(base, "segmentation_head", None) is not None
            ):
                self.skipped.append(f"{key} ({base.arch or 'model'} has no segmentation output)")
                continue
            if term == "task" and (task_model is None or not has_labels):
                self.skipped.append(f"{key} (no task model or task labels)")
                continue
            if float(weight) != 0.0:
                self.terms[key] = float(weight)
        self.with_segmentation = any(k.startswith("segmentation") for k in self.terms)
        self.adversarial = sorted(
            {
                k.split("@")[1] if "@" in k else "sr"
                for k in self.terms
                if k.startswith("adversarial")
            }
        )
        self.radius = int(recipe.options.get("boundary_radius", 2))
        # beta of paper 003's MSE + beta (1 - SSIM) (eq. 7: 0.1); option "ssim_weight"
        self.beta = float(recipe.options.get("ssim_weight", 0.1))
        # an RGB model whose SR works on Y (GP ``luma_sr``): its pixel losses compare Y, as
        # paper 000 §2.4 trains on Y. On RGB, the loss would pull Y to offset the (fixed,
        # bicubic) chroma error: measured, a few steps then lowered the Y PSNR below bicubic
        self.luma = bool(getattr(base, "luma_sr", False))

    def _pixels(self, pred: torch.Tensor, target: torch.Tensor, key: str):
        if not (self.luma and key == "sr"):
            return pred, target
        from napari_resolve.data.color import rgb_to_ycbcr_torch

        return rgb_to_ycbcr_torch(pred)[:, :1], rgb_to_ycbcr_torch(target)[:, :1]

    def target(self, out: dict, key: str, batch: dict) -> torch.Tensor:
        hr = batch["hr"]
        if key == "sr":
            return hr
        size = tuple(out[key].shape[-2:])
        if key in batch and tuple(batch[key].shape[-2:]) == size:
            return batch[key]  # a real target (PathSRGAN: the registered 10× scan)
        if size == tuple(hr.shape[-2:]):
            return hr
        # without a real MR scan: the HR image resized to the MR grid (MATLAB bicubic)
        from napari_resolve.data.degrade import imresize_torch

        return imresize_torch(hr, output_shape=size)

    def generator(self, out: dict, batch: dict, discs: dict) -> dict:
        hr, labels = batch["hr"], batch["labels"]
        parts = {}
        for name, w in self.terms.items():
            term, _, key = name.partition("@")
            key = key or "sr"
            if key not in out:
                raise InputError(f"loss {name!r} needs the model output {key!r}")
            pred = out[key]
            if term == "charbonnier":
                v = L.charbonnier(*self._pixels(pred, self.target(out, key, batch), key))
            elif term == "mse":
                v = L.mse(*self._pixels(pred, self.target(out, key, batch), key))
            elif term == "mse_ssim":
                v = L.mse_ssim_loss(*self._pixels(pred, self.target(out, key, batch), key),
                                    beta=self.beta)
            elif term == "staged":
                if "stages" in out:
                    v, _ = L.staged_loss(out["stages"], hr, beta=self.beta)
                else:
                    v = L.mse_ssim_loss(pred, hr, beta=self.beta)
            elif term == "parsing":
                v = L.parsing_loss(out["parsing"], labels)
            elif term == "segmentation":
                seg = out["segmentation"]
                s = labels.shape[-1] // seg.shape[-1]
                lab = labels[:, s // 2 :: s, s // 2 :: s][:, : seg.shape[-2], : seg.shape[-1]]
                mask = L.boundary_mask(lab, self.radius) if self.radius >= 0 else None
                v = L.masked_cross_entropy(seg, lab, mask)
            elif term == "perceptual":
                v = L.perceptual_loss(self.features, pred, self.target(out, key, batch))
            elif term == "adversarial":
                v = L.adversarial_g_loss(_disc_logits(discs[key], pred))
            elif term == "task":
                v = L.task_loss(self.task_model, pred, labels)
            else:
                raise InputError(f"unknown loss term {term!r}")
            parts[name] = (w, v)
        return parts

    def discriminator(self, out: dict, batch: dict, discs: dict) -> dict:
        parts = {}
        for key in self.adversarial:
            real = self.target(out, key, batch)
            fake = out[key].detach()
            parts[f"D@{key}"] = L.adversarial_d_loss(
                _disc_logits(discs[key], real), _disc_logits(discs[key], fake)
            )
        return parts

def _auto_features(train_ds, channels: int, device, seed: int, steps: int):
    """Fit a :class:`~napari_resolve.losses.ConvEncoder` on HR training patches (no download)."""
    rng = np.random.default_rng([seed, 31])
    patches = []
    for i in rng.permutation(len(train_ds))[:64]:
        hr = train_ds[int(i)]["hr"]
        size = min(64, hr.shape[-1] // 4 * 4, hr.shape[-2] // 4 * 4)
        patches.append(hr[:, :size, :size])
    size = min(p.shape[-1] for p in patches)
    batch = torch.stack([p[:, :size, :size] for p in patches])
    return L.fit_conv_encoder(batch, in_channels=channels, steps=steps, seed=seed, device=device)
