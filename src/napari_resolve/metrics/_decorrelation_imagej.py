"""Decorrelation analysis, ImageJ-plugin variant (``decorrelation(..., variant="imagej")``).

Paper 003 (MHTCUN, §4) reports its resolutions with the ImageJ plugin
"ImageDecorrelationAnalysis" (Descloux et al. 2019), whose algorithm differs
from the MATLAB reference that :func:`~napari_resolve.metrics.resolution.decorrelation`
follows by default. This module reproduces the plugin's algorithm so that
numbers can be compared with paper 003 and with tools that port the plugin
(NanoPyx's ``DecorrAnalysis``, checked by ``benchmarks/resolution.py``).
Written from the published description and observed behaviour; no GPL or
other code was copied. The differences from the reference variant:

* **Apodisation** towards the mean of the pixels outside a centred circle of
  radius ``width/2 − 20``; the raised-cosine weight uses the distance to the
  nearest border (min over both axes), not a separable product.
* **Padding** to a power-of-two square with the border value (the apodised
  corner), instead of an odd crop.
* **High-pass** = image − Gaussian blur in real space, blur σ log-spaced from
  0.14 px up to ``2/k0`` (Fourier response ``1 − exp(−π²σ²k²/2)``); no extra
  ``rows/4`` filter. Blurs narrower than scipy's one-pixel kernel (σ < 0.125)
  leave nothing, and their curves have no peak.
* **Radius bins**: each Fourier pixel goes to the *nearest* of the ``n_r``
  radii, pixels below the range to the first; so the mask at radius ``r``
  reaches ``r + Δr/2``. Values are not floored.
* **Peak search**: the highest sample is accepted at once unless it is the
  last one; then the tail is cut sample by sample and a new maximum must
  exceed the minimum after it by 1e-3; no amplitude threshold.
* **Refinement** on radii from ``min(kc_GM, kc_max) − 0.05`` to
  ``max(kc_GM, kc_max) + 0.3`` (``kc_GM`` maximises ``kc·A``), with filters
  between the neighbouring σ of the two winners (from ``2/N`` to 0.14 px when
  d0 is among them). The result is the largest ``kc`` of the refined pass
  alone; a refined curve without a peak reports the window's lower edge, so
  this variant can return ``kc_max − 0.05`` where the first pass was sharper.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import scipy.fft
from scipy.ndimage import gaussian_filter

from napari_resolve.metrics.resolution import _prefix_sums, result_fields

TAPER_WIDTH = 20
G_MIN = 0.14
PEAK_SIGNIFICANCE = 1e-3
REFINE_BELOW = 0.05
REFINE_ABOVE = 0.3


def apodise(image: np.ndarray, width: int = TAPER_WIDTH) -> np.ndarray:
    """The plugin's edge apodisation: raised cosine over ``width`` px towards the edge mean."""
    img = np.asarray(image, dtype=np.float64)
    h, w = img.shape
    y = np.arange(h, dtype=np.float64)[:, None] - h / 2.0
    x = np.arange(w, dtype=np.float64)[None, :] - w / 2.0
    radius = w / 2.0 - width
    outside = (y * y + x * x) > radius * radius
    edge_mean = float(img[outside].mean()) if outside.any() else float(img.mean())
    # distance of each pixel to the nearest border, as the plugin measures it
    dist = np.minimum(np.abs(np.abs(x) - w / 2.0), np.abs(np.abs(y) - h / 2.0))
    weight = np.where(dist <= width, (1.0 - np.cos(dist * np.pi / width)) / 2.0, 1.0)
    return ((img - edge_mean) * weight + edge_mean).astype(np.float32)


def pad_pow2(image: np.ndarray) -> np.ndarray:
    """Pad into a power-of-two square filled with the first pixel's value (|FFT| ignores placement)."""
    h, w = image.shape
    n = 1 << int(math.ceil(math.log2(max(h, w))))
    out = np.full((n, n), image[0, 0], dtype=np.float32)
    ox, oy = (n - w) // 2, (n - h) // 2
    out[oy : oy + h, ox : ox + w] = image
    return out


@lru_cache(maxsize=4)
def _geometry(n: int):
    """rfft2 pixels of an n × n image inside the unit disk (1 = Nyquist), sorted by radius.

    Returns ``(rows, cols, weight, r)``: weight 2 stands for the mirrored
    column that rfft2 leaves out (kx = 0 and kx = Nyquist have none).
    """
    fy = np.fft.fftfreq(n)[:, None]
    fx = np.fft.rfftfreq(n)[None, :]
    r = 2.0 * np.sqrt(fy * fy + fx * fx)
    rows, cols = np.nonzero(r <= 1.0)
    rr = r[rows, cols]
    order = np.argsort(rr, kind="stable")
    rows, cols, rr = rows[order], cols[order], rr[order]
    weight = np.where((cols == 0) | (cols == n // 2), 1.0, 2.0)
    out = (rows, cols, weight, rr)
    for a in out:
        a.setflags(write=False)
    return out


def _curve(mag: np.ndarray, n: int, r_lo: float, r_hi: float, n_r: int) -> np.ndarray:
    """d on ``n_r`` radii linspace(r_lo, r_hi) with nearest-radius binning, from |FFT| ``mag``."""
    rows, cols, weight, rr = _geometry(n)
    g = mag[rows, cols]
    m = g * weight
    norm = math.sqrt(float(np.dot(m, g)))  # sum of w·|I|² over the disk
    nonzero = weight * (g > 0)
    step = (r_hi - r_lo) / (n_r - 1)
    # nearest-bin assignment: bin <= i  <=>  r < r_lo + (i + 1/2)·step; the last bin ends at r_hi
    stops = np.searchsorted(rr, r_lo + (np.arange(n_r) + 0.5) * step, side="left")
    stops[-1] = np.searchsorted(rr, r_hi, side="right")
    num, cnt = _prefix_sums(m, stops), _prefix_sums(nonzero, stops)
    with np.errstate(invalid="ignore", divide="ignore"):
        d = num / (norm * np.sqrt(cnt))
    d[~np.isfinite(d)] = 0.0
    return d


def _peak(curve: np.ndarray) -> tuple[int, float]:
    """The plugin's peak search: (index, height); (0, 0.0) when the whole curve is cut away."""
    t = np.array(curve, dtype=np.float64)
    length = len(t)
    idx = int(np.argmax(t))
    amp = float(t[idx])
    while idx == length - 1:
        t[length - 1] = 0.0
        length -= 1
        if length == 0:
            return 0, 0.0
        idx = int(np.argmax(t))
        amp = float(t[idx])
        tail_min = float(t[idx : length - 1].min()) if idx < length - 1 else amp
        if amp - tail_min > PEAK_SIGNIFICANCE:
            break
        t[idx] = tail_min
        idx = length - 1
    return idx, amp


def _high_passed_magnitude(padded: np.ndarray, sigma: float) -> np.ndarray:
    high = padded - gaussian_filter(padded, sigma)
    return np.abs(scipy.fft.rfft2(high, workers=-1))


def measure(plane: np.ndarray, n_r: int, n_g: int) -> dict:
    """Run the plugin variant on one 2D plane; returns the fields of a DecorrelationResult."""
    padded = pad_pow2(apodise(plane))
    n = padded.shape[0]
    mag0 = np.abs(scipy.fft.rfft2(padded, workers=-1))
    mag0[0, 0] = 0.0  # the zero frequency is removed before d0
    radii = np.linspace(0.0, 1.0, n_r)
    d0 = _curve(mag0, n, 0.0, 1.0, n_r)
    i0, a0 = _peak(d0)
    k0 = float(radii[i0])

    g_lo, g_hi = G_MIN, (2.0 / k0 if k0 > 0 else n / 2.0)

    def sigmas_between(lo, hi, positions):
        return np.exp(np.log(lo) + (np.log(hi) - np.log(lo)) * np.asarray(positions, float) / (n_g - 1))

    sigmas = sigmas_between(g_lo, g_hi, np.arange(n_g))
    curves = np.stack([_curve(_high_passed_magnitude(padded, s), n, 0.0, 1.0, n_r) for s in sigmas])
    first = [(float(radii[i]), a) for i, a in (_peak(c) for c in curves)] + [(k0, a0)]
    kc = np.array([p[0] for p in first])
    amp = np.array([p[1] for p in first])
    i_gm = int(np.argmax(kc * amp))
    i_max = int(np.argmax(kc))
    r_lo = max(min(kc[i_gm], kc[i_max]) - REFINE_BELOW, 0.0)
    r_hi = min(max(kc[i_gm], kc[i_max]) + REFINE_ABOVE, 1.0)
    ind1, ind2 = min(i_gm, i_max) - 1, max(i_gm, i_max)
    if ind2 < n_g:  # both winners are filtered curves: refine between their neighbours
        lo, hi = sigmas_between(g_lo, g_hi, [ind1, ind2])
    else:  # d0 among the winners
        lo, hi = 2.0 / n, G_MIN
    refined_sigmas = sigmas_between(lo, hi, np.arange(n_g))
    refined_radii = np.linspace(r_lo, r_hi, n_r)
    refined_curves = np.stack(
        [_curve(_high_passed_magnitude(padded, s), n, r_lo, r_hi, n_r) for s in refined_sigmas]
    )
    refined = [(float(refined_radii[i]), a) for i, a in (_peak(c) for c in refined_curves)]
    peaks = np.array([(k0, a0)] + first[:-1] + refined, dtype=np.float64)
    chosen = 1 + n_g + int(np.argmax([p[0] for p in refined]))
    return result_fields(peaks, chosen, a0, radii, d0, sigmas, curves,
                         refined_radii, refined_sigmas, refined_curves)
