"""Camera noise and PSF width fitted on real fluorescence images (issue 13, item 1).

**Noise: Poisson–Gaussian.** A camera reading is ``x = g·n + o + r`` with
``n ~ Poisson(photo-electrons)``, gain ``g`` (DN per electron), offset
``o`` and read noise ``r ~ N(0, σ²)``, so its variance is a straight line in
its mean: ``var = a·mean + b`` with ``a = g`` and ``b = σ² − g·o``.
:func:`fit_variance_mean` measures that line on real frames:

* The raw SIM frames of a field differ by their illumination pattern, so the
  variance *across* frames is mostly pattern, not noise. Each frame is
  instead measured on its own, as Foi et al. 2008 (IEEE TIP 17:1737) do: in
  every 2×2 block the diagonal difference ``d = (x00 − x01 − x10 + x11)/2``
  has the variance of one pixel for white noise and cancels locally linear
  signal; the signal's mixed derivative left in it is estimated on the grid
  of block means and subtracted (:func:`block_statistics`). Blocks are
  binned by their mean (``n_bins`` quantile bins); a bin's noise variance is
  the variance of its ``d`` after dropping those past 5 robust (MAD) sigmas.
  The line is the least-squares fit over bins weighted by their block
  counts; the frames of a stack are
  pooled.
* One line cannot tell read noise from offset (``b`` mixes both). We report
  the line and its zero-variance level ``m0 = −b/a`` (the offset minus
  ``σ²/g``): a Poisson process of gain ``a`` above ``m0`` reproduces the
  line exactly (above ``m0``). :class:`CameraModel` keeps ``offset`` and
  ``read_noise`` with ``σ² − a·offset = b``; :meth:`CameraModel.from_line`
  takes σ if known (else 0) and sets the offset to match.

**PSF width.** :func:`psf_fwhm_px` turns the decorrelation resolution
(Descloux et al. 2019, :func:`napari_resolve.metrics.resolution.decorrelation`)
of a wide-field image into the FWHM of its PSF in pixels, with the ratio
FWHM / resolution measured on simulated wide-field images of known Airy PSF
(:data:`FWHM_PER_RESOLUTION`, see ``benchmarks/fluorescence.py --calibrate``).

The fitted values of the shipped data and the ranges the training simulator
draws from (:data:`TRAINING_RANGES`) are in ``docs/fluorescence.md``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from napari_resolve.errors import InputError

__all__ = [
    "VarianceMeanLine", "CameraModel", "block_statistics", "fit_variance_mean", "psf_fwhm_px",
    "FWHM_PER_RESOLUTION", "TRAINING_RANGES", "FITTED_LINES", "HAZE_RANGES",
]

# FWHM of the Airy PSF / decorrelation resolution, both in pixels, on simulated
# wide-field microtubules/vesicles/ER at good SNR (benchmarks/fluorescence.py --calibrate)
FWHM_PER_RESOLUTION = 0.87

# Variance-mean lines fitted on the shipped real data (benchmarks/fluorescence.py
# --calibrate reproduces them; docs/fluorescence.md): slope DN/e-, intercept DN^2.
FITTED_LINES = {
    "dlsim-normal-raw": {"slope": 1.0121, "intercept": -99.40, "levels": (170.4, 2100.5)},
    "dlsim-low-raw": {"slope": 0.6742, "intercept": -64.30, "levels": (98.8, 118.6)},
    "rdl-sim-mt-raw": {"slope": 330.84, "intercept": -4119584.1, "levels": (21625.1, 41423.8)},
    "biosr-mt-level1": {"slope": 234.49, "intercept": -579207.9, "levels": (7226.2, 36811.8)},
    "biosr-mt-level9": {"slope": 7.8286, "intercept": -12326.9, "levels": (343.5, 39337.0)},
}

# Ranges the training simulator draws from (data.fluorescence.calibrated_pairs),
# chosen to cover the fits of docs/fluorescence.md: peak signal and background in
# photo-electrons (log-uniform), read noise σ in electrons, wide-field FWHM in LR px.
TRAINING_RANGES = {
    2: {"photons": (30.0, 8000.0), "background": (0.5, 100.0), "read_noise": (0.5, 3.0),
        "fwhm_lr_px": (2.5, 5.0), "hr_gain": 2.0},
    4: {"photons": (30.0, 8000.0), "background": (0.5, 100.0), "read_noise": (0.5, 3.0),
        "fwhm_lr_px": (2.2, 4.0), "hr_gain": 4.0},
}

# Out-of-focus haze (data.fluorescence.simulate ``haze``), added to TRAINING_RANGES by
# the training jobs that use it (scripts/train_fluorescence.py --sim-haze). Fitted on the
# train regions (benchmarks/fluorescence.py --calibrate-haze): wide field ~ c0 + c1 (PSF *
# target) + c2 (Gaussian_sigma * target), binned. The out-of-focus share c2 mean / total
# came out at 0.72-0.79 (DL-SIM, sigma 4-16 LR px) and 0.92-1.0 (SFSRM ER, sigma 8-32;
# shares over 1 at small sigma, where the two terms are collinear), but the fit explains
# only 46-76 % of the wide field's variance (the targets are not linear in the dye density,
# the STORM one is an 8-bit rendering), so the range is wide, reaches down to no haze (thin
# or TIRF-like samples) and stops short of the upper fits.
HAZE_RANGES = {
    2: {"haze": (0.0, 0.7), "haze_sigma_lr_px": (4.0, 16.0)},
    4: {"haze": (0.0, 0.7), "haze_sigma_lr_px": (4.0, 16.0)},
}


@dataclass(frozen=True)
class VarianceMeanLine:
    """``var = slope·mean + intercept`` (DN², DN); ``levels``: (mean, var, count) per bin."""

    slope: float
    intercept: float
    levels: np.ndarray
    r2: float

    @property
    def zero_level(self) -> float:
        """``m0 = −intercept / slope``: where the fitted variance would vanish."""
        return -self.intercept / self.slope if self.slope > 0 else float("nan")

    def variance(self, mean):
        return self.slope * np.asarray(mean, dtype=np.float64) + self.intercept

    def to_dict(self) -> dict:
        return {"slope": self.slope, "intercept": self.intercept, "zero_level": self.zero_level,
                "r2": self.r2, "bins": int(len(self.levels))}


@dataclass(frozen=True)
class CameraModel:
    """Poisson–Gaussian camera: ``gain`` DN/e⁻, ``offset`` DN, ``read_noise`` σ in DN."""

    gain: float
    offset: float
    read_noise: float

    @classmethod
    def from_line(cls, line: VarianceMeanLine, read_noise: float = 0.0) -> "CameraModel":
        """The camera with read noise ``read_noise`` (DN) that reproduces ``line``.

        ``σ² − gain·offset = intercept`` gives ``offset = m0 + σ²/gain``; a line
        cannot tell σ, so 0 (pure Poisson above ``m0``) unless known.
        """
        if not line.slope > 0:
            raise InputError("the variance does not grow with the mean: no Poisson gain to fit")
        offset = line.zero_level + float(read_noise) ** 2 / line.slope
        return cls(float(line.slope), float(offset), float(read_noise))

    def expose(self, electrons, rng=None) -> np.ndarray:
        """Readings (float64 DN) of expected photo-electron counts ``electrons``."""
        rng = np.random.default_rng(rng)
        lam = np.clip(np.asarray(electrons, dtype=np.float64), 0.0, None)
        x = self.gain * rng.poisson(lam) + self.offset
        if self.read_noise > 0:
            x = x + rng.normal(0.0, self.read_noise, lam.shape)
        return x

    def electrons(self, readings) -> np.ndarray:
        """Expected photo-electrons of noise-free readings (inverse of the mean of :meth:`expose`)."""
        return (np.asarray(readings, dtype=np.float64) - self.offset) / self.gain

    def to_dict(self) -> dict:
        return asdict(self)


def block_statistics(frame) -> tuple[np.ndarray, np.ndarray]:
    """(mean, signal-corrected diagonal difference) of every 2×2 block of ``frame``.

    ``d = (x00 − x01 − x10 + x11)/2`` has one pixel's variance for white
    noise but also carries the signal's mixed derivative (``≈ f_xy/2``):
    on filaments that added ~10 % to the variance. The same derivative seen
    on the grid of block means ``M`` (spacing 2 px, so ``≈ 4 f_xy``) is
    subtracted; it is averaged over 16 pixels, so it adds only ~1/1000 of
    the pixel variance.
    """
    a = np.asarray(frame, dtype=np.float64)
    if a.ndim != 2 or min(a.shape) < 4:
        raise InputError(f"noise fit needs 2D frames of at least 4x4 px, got {a.shape}")
    h, w = a.shape[0] // 2 * 2, a.shape[1] // 2 * 2
    b = a[:h, :w].reshape(h // 2, 2, w // 2, 2)
    mean = b.mean(axis=(1, 3))
    diff = (b[:, 0, :, 0] - b[:, 0, :, 1] - b[:, 1, :, 0] + b[:, 1, :, 1]) / 2.0
    pad = np.pad(mean, 1, mode="reflect")
    dxy = (pad[2:, 2:] - pad[2:, :-2] - pad[:-2, 2:] + pad[:-2, :-2]) / 4.0
    return mean.ravel(), (diff - dxy / 8.0).ravel()


def fit_variance_mean(frames, n_bins: int = 24, min_count: int = 50) -> VarianceMeanLine:
    """The variance–mean line of ``frames`` (one 2D frame or a stack), module notes."""
    arr = np.asarray(frames)
    stack = arr[None] if arr.ndim == 2 else arr.reshape(-1, *arr.shape[-2:])
    means, diffs = zip(*(block_statistics(f) for f in stack))
    m, d = np.concatenate(means), np.concatenate(diffs)
    edges = np.unique(np.quantile(m, np.linspace(0.0, 1.0, int(n_bins) + 1)))
    idx = np.clip(np.searchsorted(edges, m, side="right") - 1, 0, len(edges) - 2)
    rows = []
    for k in range(len(edges) - 1):
        sel = idx == k
        n = int(sel.sum())
        if n < min_count:
            continue
        dk = d[sel]
        # plain variance after dropping blocks past 5 robust sigmas (edges, hot pixels):
        # the MAD alone is biased for a bin that mixes several noise levels
        sigma = 1.4826 * np.median(np.abs(dk - np.median(dk)))
        dk = dk[np.abs(dk - np.median(dk)) <= 5.0 * sigma] if sigma > 0 else dk
        rows.append((float(m[sel].mean()), float(dk.var()), n))
    if len(rows) < 3:
        raise InputError("too few intensity levels to fit a variance-mean line (need 3 bins)")
    lev = np.asarray(rows)
    x, y, wgt = lev[:, 0], lev[:, 1], lev[:, 2]
    A = np.stack([x, np.ones_like(x)], axis=1) * np.sqrt(wgt)[:, None]
    (slope, intercept), *_ = np.linalg.lstsq(A, y * np.sqrt(wgt), rcond=None)
    pred = slope * x + intercept
    r2 = 1.0 - float(np.sum(wgt * (y - pred) ** 2) / np.sum(wgt * (y - np.average(y, weights=wgt)) ** 2))
    return VarianceMeanLine(float(slope), float(intercept), lev, r2)


def psf_fwhm_px(image) -> tuple[float, float]:
    """(FWHM of the wide-field PSF in px, decorrelation resolution in px) of ``image``."""
    from napari_resolve.metrics.resolution import decorrelation

    res = decorrelation(np.asarray(image, dtype=np.float64))
    if not res.found:
        raise InputError("no decorrelation peak: the image has no measurable resolution")
    return FWHM_PER_RESOLUTION * float(res.resolution), float(res.resolution)
