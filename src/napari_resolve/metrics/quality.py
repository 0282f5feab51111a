"""PSNR and SSIM the way SR papers compute them.

Paper 000 reports PSNR on the luminance channel (§3.2) and PSNR and SSIM
(Wang et al. 2004) at x4 and x8 "in a float32 format" (§3.4); paper 003
(§3, eq. 9) defines ``PSNR = 10 log10(MAX^2 / MSE)``. Conventions the papers leave open, chosen as
in common SR practice (e.g. the benchmark code of EDSR / BasicSR):

* RGB images are compared on the Y of MATLAB's YCbCr
  (:func:`napari_resolve.data.color.rgb_to_y`), computed in float without
  rounding Y to integers; ``y_channel=False`` compares all channels (SSIM:
  the mean over channels).
* ``crop`` pixels are removed from every border before measuring (callers
  pass ``crop=scale``: the border is where padding, not the method, decides).
* ``data_range`` (MAX) defaults from the reference ``hr``: 255 for uint8,
  65535 for uint16, 1.0 for floats inside [0, 1]; for every other type
  (int16, int32, int64, uint32, uint64, floats beyond [0, 1]) the range of
  ``hr``'s values (max - min, at least 1 for integers): the full range of
  int64 made any error read as ~150 dB (issue 15).
  ``sr`` is compared on ``hr``'s intensity scale (a float SR output of an
  8-bit image is expected on 0..255).
* SSIM: ``skimage.metrics.structural_similarity`` with an 11 x 11 Gaussian
  window of sigma 1.5, population covariances (``use_sample_covariance=False``),
  K1 = 0.01, K2 = 0.03: Wang et al. 2004 and their ``ssim_index.m``,
  averaged over the "valid" part of the image (5 px in from the edge).
  Images must be at least 11 x 11 after the crop.
* Identical images have PSNR ``inf``.

Fluorescence (:func:`fit_metrics`): raw intensities of a microscope image
have an arbitrary offset and gain (camera offset, laser power, a model's
output scale), so PSNR on them mostly measures that. CARE / CSBDeep
(Weigert et al. 2018, Nat. Methods 15:1090, "Evaluation") compare instead:
the ground truth is percentile-normalised (0.1 / 99.9 %, not clipped), the
prediction is mapped onto it by the least-squares affine fit ``a·x + b``
(closed form: ``a = cov(x, gt) / var(x)``, ``b = mean(gt) − a·mean(x)``),
then PSNR (MAX 1, the normalised range), SSIM (same window as above, data
range 1) and NRMSE (``‖gt − fit‖ / ‖gt‖``, skimage's "euclidean") are taken.
"""

from __future__ import annotations

import numpy as np

from napari_resolve.errors import InputError

__all__ = ["psnr", "ssim", "evaluate_pair", "default_data_range", "SSIM_WINDOW"]

SSIM_WINDOW = 11  # 2 * int(3.5 * sigma + 0.5) + 1 for sigma = 1.5, as skimage computes it


def default_data_range(dtype, hr=None) -> float:
    """MAX of the PSNR: 255 (uint8), 65535 (uint16), 1.0 (floats in [0, 1]), else ``hr``'s range.

    Without ``hr`` other integers get their type's range (the old rule, kept
    for callers that only know the dtype).
    """
    dtype = np.dtype(dtype)
    if dtype == np.uint8:
        return 255.0
    if dtype == np.uint16:
        return 65535.0
    if hr is not None:
        vals = np.asarray(hr)
        lo, hi = float(vals.min()), float(vals.max())
        if np.issubdtype(dtype, np.floating) and lo >= 0.0 and hi <= 1.0:
            return 1.0
        span = hi - lo
        return max(span, 1.0) if np.issubdtype(dtype, np.integer) else (span if span > 0 else 1.0)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return float(info.max) - float(min(info.min, 0))
    return 1.0


def _as_image(x, name: str) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().numpy()
    try:
        arr = np.asarray(x)
    except Exception:
        raise InputError(f"{name} cannot be read as an image") from None
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise InputError(f"{name} must be a real numeric image, got dtype {arr.dtype}")
    if arr.size == 0:
        raise InputError(f"{name} is empty (shape {arr.shape})")
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3):
        raise InputError(f"{name} must be (H, W) or (H, W, C), got shape {arr.shape}")
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        raise InputError(f"{name} contains NaN or infinite values")
    return arr


def _prepare(sr, hr, data_range, crop, y_channel):
    """Validated float64 (sr, hr) on a common scale, cropped, Y if asked; and MAX."""
    sr_arr, hr_arr = _as_image(sr, "sr"), _as_image(hr, "hr")
    if sr_arr.shape != hr_arr.shape:
        raise InputError(f"sr {sr_arr.shape} and hr {hr_arr.shape} must have the same shape")
    rng = default_data_range(hr_arr.dtype, hr_arr) if data_range is None else data_range
    try:
        rng = float(rng)
    except (TypeError, ValueError):
        raise InputError(f"data_range must be a number, got {data_range!r}") from None
    if not np.isfinite(rng) or rng <= 0:
        raise InputError(f"data_range must be positive, got {data_range!r}")
    if int(crop) != crop or crop < 0:
        raise InputError(f"crop must be a non-negative integer, got {crop!r}")
    crop = int(crop)
    h, w = hr_arr.shape[:2]
    if 2 * crop >= min(h, w):
        raise InputError(f"crop {crop} leaves nothing of a {h} x {w} image")
    sr_f, hr_f = sr_arr.astype(np.float64), hr_arr.astype(np.float64)
    if crop:
        sr_f, hr_f = sr_f[crop:-crop, crop:-crop], hr_f[crop:-crop, crop:-crop]
    if y_channel and hr_f.ndim == 3 and hr_f.shape[-1] == 3:
        from napari_resolve.data.color import rgb_to_y

        # Y of MATLAB YCbCr needs [0, 1] input; measure Y on that scale with MAX 1
        sr_f, hr_f, rng = rgb_to_y(sr_f / rng), rgb_to_y(hr_f / rng), 1.0
    return sr_f, hr_f, rng


def psnr(sr, hr, *, data_range=None, crop: int = 0, y_channel: bool = True) -> float:
    """Peak signal-to-noise ratio of ``sr`` against the reference ``hr``, in dB.

    ``10 log10(MAX^2 / MSE)`` (paper 003 §3, eq. 9) via
    ``skimage.metrics.peak_signal_noise_ratio``; see the module notes for
    ``data_range``, ``crop`` and ``y_channel``.
    """
    from skimage.metrics import peak_signal_noise_ratio

    sr_f, hr_f, rng = _prepare(sr, hr, data_range, crop, y_channel)
    with np.errstate(divide="ignore"):
        return float(peak_signal_noise_ratio(hr_f, sr_f, data_range=rng))


def ssim(sr, hr, *, data_range=None, crop: int = 0, y_channel: bool = True) -> float:
    """Structural similarity (Wang et al. 2004) of ``sr`` against ``hr``, in [-1, 1].

    Gaussian window sigma 1.5 (11 x 11), population statistics, K1 0.01,
    K2 0.03; multichannel images (``y_channel=False``) average the channels.
    """
    from skimage.metrics import structural_similarity

    sr_f, hr_f, rng = _prepare(sr, hr, data_range, crop, y_channel)
    if min(hr_f.shape[:2]) < SSIM_WINDOW:
        raise InputError(
            f"SSIM needs images of at least {SSIM_WINDOW} x {SSIM_WINDOW} px after cropping, "
            f"got {hr_f.shape[0]} x {hr_f.shape[1]}"
        )
    return float(
        structural_similarity(
            hr_f, sr_f, data_range=rng, gaussian_weights=True, sigma=1.5,
            use_sample_covariance=False, channel_axis=-1 if hr_f.ndim == 3 else None,
        )
    )


def evaluate_pair(sr, hr, *, scale: int | None = None, crop: int | None = None,
                  y_channel: bool = True, data_range=None) -> dict:
    """PSNR and SSIM of one pair: ``{"psnr", "ssim", "crop", "y_channel", "data_range"}``.

    ``crop`` defaults to ``scale`` (0 without a scale). ``y_channel`` is
    reported as used (False for grey images).
    """
    if crop is None:
        crop = int(scale) if scale else 0
    kw = dict(data_range=data_range, crop=crop, y_channel=y_channel)
    hr_arr = _as_image(hr, "hr")
    used_y = bool(y_channel and hr_arr.ndim == 3 and hr_arr.shape[-1] == 3)
    return {
        "psnr": psnr(sr, hr_arr, **kw),
        "ssim": ssim(sr, hr_arr, **kw),
        "crop": int(crop),
        "y_channel": used_y,
        "data_range": float(default_data_range(hr_arr.dtype, hr_arr) if data_range is None
                            else data_range),
    }


# --------------------------------------------------------------------------- fluorescence (issue 13)
__all__ += ["percentile_normalize", "affine_fit", "fit_metrics", "wants_fit_metric", "FIT_PERCENTILES"]

FIT_PERCENTILES = (0.1, 99.9)  # CSBDeep's normalisation of the ground truth for comparisons


def percentile_normalize(image, low: float = FIT_PERCENTILES[0], high: float = FIT_PERCENTILES[1]):
    """``(x − p_low) / (p_high − p_low)`` in float64, not clipped (CSBDeep ``normalize``)."""
    arr = _as_image(image, "image").astype(np.float64)
    lo, hi = np.percentile(arr, [low, high])
    if not hi > lo:
        raise InputError("the reference image is constant: nothing to normalise against")
    return (arr - lo) / (hi - lo)


def affine_fit(x, target) -> tuple[np.ndarray, float, float]:
    """``a·x + b`` with the least-squares ``a, b`` onto ``target``; returns (fitted, a, b).

    A constant ``x`` gets ``a = 0`` (the best fit is the target's mean).
    """
    x = np.asarray(x, dtype=np.float64)
    t = np.asarray(target, dtype=np.float64)
    xm, tm = x.mean(), t.mean()
    var = float(((x - xm) ** 2).mean())
    a = float(((x - xm) * (t - tm)).mean() / var) if var > 0 else 0.0
    b = float(tm - a * xm)
    return a * x + b, a, b


def fit_metrics(sr, hr, *, crop: int = 0) -> dict:
    """CARE's fair fluorescence comparison of ``sr`` with ``hr`` (module notes).

    Grey images only (a colour image is compared on its Y). Returns
    ``{"psnr", "ssim", "nrmse", "a", "b", "crop"}``; ``psnr``/``ssim`` are on
    the normalised ground truth (MAX 1).
    """
    from skimage.metrics import normalized_root_mse

    sr_f, hr_f, _ = _prepare(sr, hr, None, crop, True)
    if sr_f.ndim == 3:
        raise InputError("the fluorescence fit metric compares grey images; give one channel")
    gt = percentile_normalize(hr_f)
    fitted, a, b = affine_fit(sr_f, gt)
    return {
        "psnr": psnr(fitted, gt, data_range=1.0),
        "ssim": ssim(fitted, gt, data_range=1.0),
        "nrmse": float(normalized_root_mse(gt, fitted)),
        "a": a,
        "b": b,
        "crop": int(crop),
    }


def wants_fit_metric(dtype, channels: int = 1) -> bool:
    """The fit metric is the default for grey images that are not 8-bit (fluorescence)."""
    return int(channels) == 1 and np.dtype(dtype) != np.uint8


__all__ += ["relative_sharpness"]


def relative_sharpness(sr, hr) -> float:
    """Mean Sobel gradient magnitude of ``sr`` over that of ``hr``, on Y for RGB.

    A no-reference-style sharpness figure for the GAN recipes (papers 002 and
    004 warn that PSNR favours blur): 1.0 = as sharp as the reference, below =
    blurrier, above = more (or false) detail. 8-bit RGB is read on the 0–255
    scale, other data as given.
    """
    from skimage.filters import sobel

    from napari_resolve.data.color import rgb_to_ycbcr

    def luma(a):
        a = np.asarray(a, np.float64)
        return rgb_to_ycbcr(np.clip(a / 255.0, 0, 1))[..., 0] if a.ndim == 3 else a

    return float(sobel(luma(sr)).mean() / max(sobel(luma(hr)).mean(), 1e-12))
