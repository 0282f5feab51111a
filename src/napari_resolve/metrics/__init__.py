"""Image-quality metrics (PSNR, SSIM) and resolution estimates.

``from napari_resolve.metrics import psnr, ssim, evaluate_pair`` (see
:mod:`napari_resolve.metrics.quality`).
"""

from napari_resolve.metrics.quality import evaluate_pair, psnr, ssim

__all__ = ["psnr", "ssim", "evaluate_pair"]
