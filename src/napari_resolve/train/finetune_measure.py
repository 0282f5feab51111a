"""A model measured on a fine-tuning validation set, before and after training.

:func:`measure`: validation PSNR / SSIM as the training engine computes them
(:func:`napari_resolve.train.objectives._quality`), the PSNR after an
intensity fit, and the decorrelation resolution (Descloux 2019, the estimate
paper 003 §4.4 reports) of each super-resolved validation image;
:func:`measure_references`: the same resolution of the LR inputs and HR targets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

__all__ = ["Measurement", "add_resolutions", "measure", "measure_references"]

@dataclass
class Measurement:
    """A model on the validation set: mean PSNR / SSIM and decorrelation resolutions.

    ``resolutions``: one per validation image, in ``unit`` (nm when the data
    are calibrated, else SR pixels), None where no peak was found or the
    image is under 32 px. ``resolution``: their mean over the images with a
    peak. ``images``: the SR outputs (normalised [0, 1], channel 0) for display.
    ``psnr_affine``: mean PSNR after the least-squares intensity fit ``a·SR + b``
    to the target (as CARE, Weigert et al. 2018, compares fluorescence
    images whose absolute intensities are arbitrary): what the model gets
    right apart from a global intensity mapping.
    """

    psnr: float
    ssim: float
    resolutions: list
    unit: str
    images: list = field(default_factory=list, repr=False)
    psnrs: list = field(default_factory=list)
    psnr_affine: float = math.nan

    @property
    def resolution(self) -> float | None:
        found = [r for r in self.resolutions if r is not None]
        return float(np.mean(found)) if found else None

    def to_dict(self) -> dict:
        def num(v):
            return None if v is None or not math.isfinite(v) else round(float(v), 4)

        return {"val_psnr": num(self.psnr), "val_ssim": num(self.ssim),
                "val_psnr_intensity_fit": num(self.psnr_affine),
                "val_psnrs": [num(p) for p in self.psnrs], "resolution": num(self.resolution),
                "resolutions": [num(r) for r in self.resolutions], "unit": self.unit}


def _resolution(image: np.ndarray, pixel_nm: float | None):
    from napari_resolve.metrics.resolution import MIN_SIZE, decorrelation

    if min(image.shape) < MIN_SIZE or image.min() == image.max():
        return None  # too small, or a constant output (e.g. a barely trained model): no estimate
    res = decorrelation(image, pixel_size=pixel_nm, unit="nm" if pixel_nm else None)
    return float(res.resolution) if res.found else None


def _psnr_affine(sr: np.ndarray, hr: np.ndarray, crop: int) -> float:
    """PSNR (range 1) of the least-squares fit ``a·sr + b`` to ``hr`` (2-D, border cropped)."""
    if crop and min(sr.shape) > 2 * crop + 1:
        sr, hr = sr[crop:-crop, crop:-crop], hr[crop:-crop, crop:-crop]
    design = np.stack([sr.ravel(), np.ones(sr.size)], axis=1).astype(np.float64)
    coef, *_ = np.linalg.lstsq(design, hr.ravel().astype(np.float64), rcond=None)
    mse = float(np.mean((design @ coef - hr.ravel()) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(1.0 / mse)


def _grey(chw: np.ndarray) -> np.ndarray:
    if chw.shape[0] == 1:
        return chw[0]
    from napari_resolve.data.color import rgb_to_y

    return rgb_to_y(np.clip(np.moveaxis(chw, 0, -1), 0.0, 1.0))


def measure(model, val_ds, pixel_size_nm: float | None = None, device="cpu", *,
            resolution: bool = True) -> Measurement:
    """``model`` on every sample of the validation dataset ``val_ds`` (see :class:`Measurement`).

    PSNR / SSIM as the training engine validates (Y / grey channel, ``scale``
    px border cropped, outputs clipped); resolution of each SR image at the HR
    pixel size ``pixel_size_nm`` (None: in SR pixels). ``resolution=False``
    leaves the (slower) decorrelation estimates for :func:`add_resolutions`.
    """
    import torch

    from napari_resolve.train.objectives import _quality

    dev = torch.device(device)
    was = model.training
    model.eval()
    model.to(dev)
    psnrs, ssims, resolutions, images, fitted = [], [], [], [], []
    with torch.no_grad():
        for i in range(len(val_ds)):
            smp = val_ds[i]
            sr = model(smp["lr"][None].to(dev))["sr"][0].float().cpu()
            p, q = _quality(sr, smp["hr"], model.scale)
            psnrs.append(p)
            ssims.append(q)
            fitted.append(_psnr_affine(_grey(sr.numpy()), _grey(smp["hr"].numpy()), model.scale))
            img = np.clip(sr[0].numpy(), 0.0, None)
            images.append(img)
            resolutions.append(_resolution(img, pixel_size_nm) if resolution else None)
    model.train(was)
    finite = [p for p in psnrs if math.isfinite(p)]
    return Measurement(
        float(np.mean(finite)) if finite else math.nan,
        float(np.mean(ssims)) if ssims else math.nan,
        resolutions, "nm" if pixel_size_nm else "px", images, psnrs,
        float(np.mean([f for f in fitted if math.isfinite(f)] or [math.nan])),
    )


def add_resolutions(m: Measurement, pixel_size_nm: float | None = None) -> Measurement:
    """Fill ``m.resolutions`` from its SR images (a measurement made with ``resolution=False``)."""
    m.resolutions = [_resolution(img, pixel_size_nm) for img in m.images]
    return m


def measure_references(val_ds, pixel_size_nm: float | None = None) -> dict:
    """Decorrelation resolution of the validation inputs and targets, for context.

    ``{"lr": [...], "hr": [...], "unit": ...}``: the LR input at its own pixel
    size (``scale`` × the HR one) and the HR target; None where no peak.
    """
    s = int(val_ds.scale)
    lr_res, hr_res = [], []
    for i in range(len(val_ds)):
        smp = val_ds[i]
        lr_px = None if pixel_size_nm is None else pixel_size_nm * s
        lr = _resolution(smp["lr"][0].numpy(), lr_px)
        # uncalibrated: the LR resolution in HR (= SR) pixels, comparable with the SR results
        lr_res.append(lr if (lr is None or pixel_size_nm) else lr * s)
        hr_res.append(_resolution(smp["hr"][0].numpy(), pixel_size_nm))
    return {"lr": lr_res, "hr": hr_res, "unit": "nm" if pixel_size_nm else "px"}
