"""Intensity normalisation: the image's scale <-> float32 [0, 1] inside the networks.

A bundle stores one of (docs/architecture.md, "Intensities")::

    {"mode": "dtype"}                                  # uint8 / 255, uint16 / 65535, floats as they are
    {"mode": "percentile", "low": 1.0, "high": 99.8}   # CSBDeep

``Normalizer.from_meta(meta).fit(image)`` returns a fitted normaliser whose
``forward`` maps the image to float32 (about [0, 1]) and whose ``inverse``
maps network outputs back to the image's intensity scale (float32; use
:func:`to_dtype` to get integers back).

Choices the papers leave open:

* The SR papers feed 8-bit images divided by 255 (``"dtype"``); fluorescence
  with arbitrary offsets and bit depths uses CSBDeep's percentile
  normalisation (Weigert et al. 2018), defaults 1 / 99.8 as in CSBDeep, no
  clipping (as CSBDeep's default ``clip=False``), percentiles over the whole
  image (all channels together, so colour balance is kept).
* Other integer types in ``"dtype"`` mode map their full range
  (``iinfo.min .. iinfo.max``) to [0, 1]; floats are taken as they are.
* A constant image (or one whose two percentiles coincide, e.g. a sparse
  image that is almost all background) has no contrast to normalise: instead
  of dividing by zero, the normaliser falls back to the ``"dtype"`` range for
  that image (and records ``fallback = "dtype"``), so ``inverse(forward(x))``
  is still exact.
* Lazy (dask) images are fitted on a strided subsample of at most ~4 million
  pixels, so fitting never loads a whole slide.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from napari_resolve.errors import InputError

__all__ = ["Normalizer", "to_dtype", "MODES"]

MODES = ("dtype", "percentile")
_FIT_MAX_PIXELS = 4_000_000


def _dtype_range(dtype: np.dtype) -> tuple[float, float]:
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        if info.min == 0:
            return 0.0, float(info.max)
        return float(info.min), float(info.max)
    return 0.0, 1.0


def _check_numeric(x, what: str):
    dtype = np.dtype(getattr(x, "dtype", np.asarray(x).dtype))
    if dtype == bool or not np.issubdtype(dtype, np.number) or np.issubdtype(dtype, np.complexfloating):
        raise InputError(f"{what} must be a real numeric image, got dtype {dtype}")
    return dtype


def _subsample(image):
    """A strided view of ``image`` with at most ~_FIT_MAX_PIXELS elements (dask stays lazy)."""
    size = int(np.prod(image.shape))
    if size <= _FIT_MAX_PIXELS:
        return image
    step = math.ceil((size / _FIT_MAX_PIXELS) ** (1.0 / max(image.ndim, 1)))
    return image[tuple(slice(None, None, step) for _ in image.shape)]


@dataclass(frozen=True)
class Normalizer:
    """Affine map ``(x - lo) / (hi - lo)`` fitted to one image.

    Build with :meth:`from_meta`, then :meth:`fit` (returns a new, fitted
    object; the unfitted one can be reused for other images).
    """

    mode: str = "dtype"
    low: float = 1.0
    high: float = 99.8
    lo: float | None = field(default=None, compare=False)
    hi: float | None = field(default=None, compare=False)
    fallback: str | None = field(default=None, compare=False)

    @classmethod
    def from_meta(cls, meta: dict | None) -> "Normalizer":
        """From a bundle's ``normalization`` dict (``None`` = ``{"mode": "dtype"}``)."""
        if meta is None:
            return cls("dtype")
        if isinstance(meta, Normalizer):
            return replace(meta, lo=None, hi=None, fallback=None)
        if not isinstance(meta, dict):
            raise InputError(f"normalization must be a dict like {{'mode': 'dtype'}}, got {meta!r}")
        mode = meta.get("mode")
        if mode not in MODES:
            raise InputError(f"unknown normalization mode {mode!r}; use one of {', '.join(MODES)}")
        if mode == "dtype":
            return cls("dtype")
        try:
            low, high = float(meta.get("low", 1.0)), float(meta.get("high", 99.8))
        except (TypeError, ValueError):
            raise InputError(f"percentile normalization needs numeric low/high, got {meta!r}") from None
        if not (0.0 <= low < high <= 100.0):
            raise InputError(f"percentiles must satisfy 0 <= low < high <= 100, got {low}, {high}")
        return cls("percentile", low, high)

    def to_meta(self) -> dict:
        """The JSON-able dict stored in a bundle (fitted values are per image, not stored)."""
        if self.mode == "dtype":
            return {"mode": "dtype"}
        return {"mode": "percentile", "low": self.low, "high": self.high}

    @property
    def fitted(self) -> bool:
        return self.lo is not None

    def fit(self, image) -> "Normalizer":
        """Fit to ``image`` (NumPy or dask array); returns a fitted copy."""
        dtype = _check_numeric(image, "image to normalise")
        if 0 in tuple(np.shape(image)):
            raise InputError(f"image to normalise is empty (shape {np.shape(image)})")
        lo, hi = _dtype_range(dtype)
        fallback = None
        if self.mode == "percentile":
            sample = _subsample(image if hasattr(image, "compute") else np.asarray(image))
            sample = np.asarray(sample.compute() if hasattr(sample, "compute") else sample)
            if np.issubdtype(sample.dtype, np.floating) and not np.isfinite(sample).all():
                raise InputError("image to normalise contains NaN or infinite values")
            plo, phi = (float(v) for v in np.percentile(sample, [self.low, self.high]))
            # constant (or nearly all-equal) image: nothing to stretch, keep the dtype range
            if phi - plo > 1e-6 * max(1.0, abs(plo), abs(phi)):
                lo, hi = plo, phi
            else:
                fallback = "dtype"
        elif np.issubdtype(dtype, np.floating) and not hasattr(image, "compute"):
            if not np.isfinite(np.asarray(image)).all():
                raise InputError("image to normalise contains NaN or infinite values")
        return replace(self, lo=lo, hi=hi, fallback=fallback)

    def _require_fit(self):
        if not self.fitted:
            raise RuntimeError("Normalizer.fit(image) must be called before forward/inverse")

    def _apply(self, x, offset: float, gain: float, what: str):
        if _is_torch(x):
            if not x.is_floating_point():
                x = x.float()
            if not bool(x.isfinite().all()):
                raise InputError(f"{what} contains NaN or infinite values")
            return (x - offset) * gain
        _check_numeric(x, what)
        arr = x if hasattr(x, "compute") else np.asarray(x)
        if np.issubdtype(arr.dtype, np.floating) and not hasattr(arr, "compute"):
            if not np.isfinite(arr).all():
                raise InputError(f"{what} contains NaN or infinite values")
        out = (arr.astype(np.float64) - offset) * gain
        return out.astype(np.float32)

    def forward(self, x):
        """Image intensities -> float32 network input, about [0, 1] (not clipped)."""
        self._require_fit()
        return self._apply(x, self.lo, 1.0 / (self.hi - self.lo), "image to normalise")

    def inverse(self, y):
        """Network output -> the fitted image's intensity scale (float32, not clipped)."""
        self._require_fit()
        span = self.hi - self.lo
        # (y - a) * g with a = -lo / span, g = span  ==  y * span + lo
        return self._apply(y, -self.lo / span, span, "network output")


def _is_torch(x) -> bool:
    mod = type(x).__module__
    return mod.startswith("torch") and hasattr(x, "is_floating_point")


def to_dtype(image, dtype) -> np.ndarray:
    """Cast a float image to ``dtype``; integer types are clipped to their range and rounded.

    Rounding is half away from zero (MATLAB's), NaN is refused.
    """
    from napari_resolve.data.color import round_half_away

    dtype = np.dtype(dtype)
    arr = np.asarray(image)
    _check_numeric(arr, "image")
    if np.issubdtype(dtype, np.integer):
        if np.issubdtype(arr.dtype, np.integer):
            info = np.iinfo(dtype)
            return np.clip(arr.astype(np.int64), info.min, info.max).astype(dtype)
        if not np.isfinite(arr).all():
            raise InputError("image contains NaN or infinite values; cannot convert to integers")
        info = np.iinfo(dtype)
        return np.clip(round_half_away(arr.astype(np.float64)), info.min, info.max).astype(dtype)
    if dtype == bool or not np.issubdtype(dtype, np.floating):
        raise InputError(f"cannot convert an image to dtype {dtype}")
    return arr.astype(dtype)
