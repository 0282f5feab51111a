"""Intensity normalisation: the image's scale <-> float32 [0, 1] inside the networks.

A bundle stores one of (docs/architecture.md, "Intensities")::

    {"mode": "dtype"}                                  # uint8 / 255; other types: by the data
    {"mode": "percentile", "low": 1.0, "high": 99.8}   # CSBDeep
    ... , "intensity": "match-lr" | "as-is"            # optional, see below

The core function pair every caller uses (predict, slide, the napari
widgets, the fine-tune before/after layers)::

    x, norm = to_model_scale(image, bundle_meta["normalization"])   # fitted on the data
    y = model(x)                                                    # network space
    norm = norm.fit_output(y, x, scale)        # only when norm.matches_lr (see below)
    out = from_model_scale(y, norm, image.dtype)                    # the same parameters, inverted

``Normalizer.from_meta(meta).fit(image)`` is the fitted object behind them:
``forward`` maps the image to float32 (about [0, 1]) and ``inverse`` maps
network outputs back to the image's intensity scale.

Choices the papers leave open:

* The SR papers feed 8-bit images divided by 255 (``"dtype"`` on uint8, what
  every ``"dtype"`` bundle was trained on); fluorescence with arbitrary
  offsets and bit depths uses CSBDeep's percentile normalisation (Weigert et
  al. 2018), defaults 1 / 99.8 as in CSBDeep, no clipping (as CSBDeep's
  default ``clip=False``), percentiles over the whole image (all channels
  together, so colour balance is kept).
* ``"dtype"`` on anything but uint8 normalises *by the data*, never by the
  type's range (issue 15: int64's range made every image 0, int32 lost its
  grey levels, int16 and uint16 holding the same pixels disagreed): the
  image's min .. max, computed in float64 (floats already inside [0, 1] are
  taken as they are). Signed data keep their sign; the same pixels give the
  same result in every integer or float type.
* When the two percentiles coincide (a sparse image that is almost all
  background) the data's min .. max are used (``fallback = "dtype"``); a
  constant image has no contrast at all: instead of dividing by zero, the
  span is 1 intensity unit from its value (``fallback = "constant"``), so
  ``inverse(forward(x))`` is still exact.
* ``"intensity": "match-lr"`` (the default of ``"percentile"`` bundles, i.e.
  fluorescence): after the network, one gain and offset in network space are
  fitted by least squares so that the SR output shrunk back by the scale
  (MATLAB bicubic) matches the normalised input; the output is then on the
  input's intensity scale even when the network shifts the level (the
  simulated-data ``mhtcun-lite-x2`` darkened real images by ~25 %). The gain
  is kept within [0.25, 4]. Two numbers for the whole image: the detail the
  network adds is untouched. ``"as-is"`` (the default of ``"dtype"``
  bundles: the 8-bit SR papers measure the raw output) skips it.
* Lazy (dask) images are fitted on a strided subsample of at most ~4 million
  pixels, so fitting never loads a whole slide (min / max of a subsample may
  miss the extremes; the map is not clipped, so nothing is lost).
* Outputs are float32, or float64 for inputs whose values float32 cannot hold
  exactly (float64, and integers of 32 bits or more); for integer inputs they
  are clipped to the type's range (unsigned stays >= 0, signed keeps its sign).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from napari_resolve.errors import InputError

__all__ = ["Normalizer", "to_dtype", "MODES", "INTENSITY", "to_model_scale", "from_model_scale",
           "output_dtype"]

MODES = ("dtype", "percentile")
#: what happens to the network output's level (see the module docstring)
INTENSITY = ("match-lr", "as-is")
_GAIN_RANGE = (0.25, 4.0)
_FIT_MAX_PIXELS = 4_000_000


def _data_range(image, dtype: np.dtype) -> tuple[float, float, str | None]:
    """``(lo, hi, fallback)`` of the ``"dtype"`` mode (module docstring), in float64."""
    if dtype == np.uint8:
        return 0.0, 255.0, None
    sample = _subsample(image if hasattr(image, "compute") else np.asarray(image))
    sample = np.asarray(sample.compute() if hasattr(sample, "compute") else sample)
    if np.issubdtype(sample.dtype, np.floating) and not np.isfinite(sample).all():
        raise InputError("image to normalise contains NaN or infinite values")
    lo, hi = float(np.min(sample)), float(np.max(sample))  # exact for every integer type
    if np.issubdtype(dtype, np.floating) and lo >= 0.0 and hi <= 1.0:
        return 0.0, 1.0, None
    return lo, hi, None


def _has_span(lo: float, hi: float) -> bool:
    """More than float64 rounding between ``lo`` and ``hi`` (int64 offsets of 1e15 included)."""
    return hi - lo > 64 * np.finfo(np.float64).eps * max(1.0, abs(lo), abs(hi))


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
    intensity: str = "as-is"
    lo: float | None = field(default=None, compare=False)
    hi: float | None = field(default=None, compare=False)
    fallback: str | None = field(default=None, compare=False)
    #: network-space gain / offset of ``"match-lr"`` (:meth:`fit_output`); None = not fitted
    out_gain: float | None = field(default=None, compare=False)
    out_offset: float = field(default=0.0, compare=False)

    @classmethod
    def from_meta(cls, meta: dict | None) -> "Normalizer":
        """From a bundle's ``normalization`` dict (``None`` = ``{"mode": "dtype"}``)."""
        if meta is None:
            return cls("dtype")
        if isinstance(meta, Normalizer):
            return replace(meta, lo=None, hi=None, fallback=None, out_gain=None, out_offset=0.0)
        if not isinstance(meta, dict):
            raise InputError(f"normalization must be a dict like {{'mode': 'dtype'}}, got {meta!r}")
        mode = meta.get("mode")
        if mode not in MODES:
            raise InputError(f"unknown normalization mode {mode!r}; use one of {', '.join(MODES)}")
        intensity = meta.get("intensity", "match-lr" if mode == "percentile" else "as-is")
        if intensity not in INTENSITY:
            raise InputError(f"unknown normalization intensity {intensity!r}; use one of "
                             f"{', '.join(INTENSITY)}")
        if mode == "dtype":
            return cls("dtype", intensity=intensity)
        try:
            low, high = float(meta.get("low", 1.0)), float(meta.get("high", 99.8))
        except (TypeError, ValueError):
            raise InputError(f"percentile normalization needs numeric low/high, got {meta!r}") from None
        if not (0.0 <= low < high <= 100.0):
            raise InputError(f"percentiles must satisfy 0 <= low < high <= 100, got {low}, {high}")
        return cls("percentile", low, high, intensity=intensity)

    def to_meta(self) -> dict:
        """The JSON-able dict stored in a bundle (fitted values are per image, not stored)."""
        out = {"mode": "dtype"} if self.mode == "dtype" else {
            "mode": "percentile", "low": self.low, "high": self.high}
        if self.intensity != ("match-lr" if self.mode == "percentile" else "as-is"):
            out["intensity"] = self.intensity
        return out

    @property
    def matches_lr(self) -> bool:
        """True when the output level is to be fitted to the input (:meth:`fit_output`)."""
        return self.intensity == "match-lr" and self.out_gain is None

    def fit_output(self, sr, lr, scale: int) -> "Normalizer":
        """Fit the ``"match-lr"`` gain / offset: ``sr`` shrunk by ``scale`` ~ ``lr``.

        ``sr`` (..., sH, sW) and ``lr`` (..., H, W) are network-space arrays
        with the same leading axes (e.g. (Z, C, H, W)); returns a copy whose
        :meth:`adjust` applies ``gain * y + offset``. Without contrast in the
        shrunk output only the offset is fitted.
        """
        from napari_resolve.data.degrade import imresize

        sr = np.asarray(sr, dtype=np.float64)
        lr = np.asarray(lr, dtype=np.float64)
        down = imresize(sr, output_shape=lr.shape[-2:]) if sr.shape[-2:] != lr.shape[-2:] else sr
        d, t = down.ravel(), lr.ravel()
        dm, tm = float(d.mean()), float(t.mean())
        var = float(((d - dm) ** 2).mean())
        gain = float(((d - dm) * (t - tm)).mean() / var) if var > 1e-12 else 1.0
        gain = float(np.clip(gain, *_GAIN_RANGE)) if np.isfinite(gain) else 1.0
        return replace(self, out_gain=gain, out_offset=tm - gain * dm)

    def adjust(self, y):
        """Apply the fitted ``"match-lr"`` gain / offset to a network output (identity if none)."""
        if self.out_gain is None:
            return y
        return (y * np.float32(self.out_gain) + np.float32(self.out_offset)).astype(
            np.float32, copy=False)

    @property
    def fitted(self) -> bool:
        return self.lo is not None

    def fit(self, image) -> "Normalizer":
        """Fit to ``image`` (NumPy or dask array); returns a fitted copy."""
        dtype = _check_numeric(image, "image to normalise")
        if 0 in tuple(np.shape(image)):
            raise InputError(f"image to normalise is empty (shape {np.shape(image)})")
        fallback = None
        if self.mode == "percentile":
            sample = _subsample(image if hasattr(image, "compute") else np.asarray(image))
            sample = np.asarray(sample.compute() if hasattr(sample, "compute") else sample)
            if np.issubdtype(sample.dtype, np.floating) and not np.isfinite(sample).all():
                raise InputError("image to normalise contains NaN or infinite values")
            # float64: int64 / uint64 values beyond 2**24 stay distinct
            lo, hi = (float(v) for v in np.percentile(sample.astype(np.float64),
                                                       [self.low, self.high]))
            if not _has_span(lo, hi):  # mostly background: the data's min .. max
                lo, hi, _ = _data_range(image, dtype)
                fallback = "dtype"
        else:
            lo, hi, fallback = _data_range(image, dtype)
        # constant image: nothing to stretch, a span of one intensity unit
        if not _has_span(lo, hi):
            lo, hi, fallback = lo, lo + 1.0, "constant"
        return replace(self, lo=lo, hi=hi, fallback=fallback)

    def _require_fit(self):
        if not self.fitted:
            raise RuntimeError("Normalizer.fit(image) must be called before forward/inverse")

    def _apply(self, x, offset: float, gain: float, what: str, out_dtype=np.float32):
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
        if hasattr(arr, "compute"):  # dask: lazy, element-wise
            return ((arr.astype(np.float64) - offset) * gain).astype(out_dtype)
        # float64 maths only where float32 would lose values (wide inputs or outputs);
        # in place, so a region costs one working copy
        wide = np.dtype(out_dtype) == np.float64 or output_dtype(arr.dtype) == np.float64
        out = arr.astype(np.float64 if wide else np.float32)  # a copy: the input is never modified
        out -= offset
        out *= gain
        return out.astype(out_dtype, copy=False)

    def forward(self, x):
        """Image intensities -> float32 network input, about [0, 1] (not clipped)."""
        self._require_fit()
        return self._apply(x, self.lo, 1.0 / (self.hi - self.lo), "image to normalise")

    def restore(self, y, like_dtype) -> np.ndarray:
        """Invert to ``like_dtype``'s scale: float64 maths, clipped to an integer type's range.

        Returns :func:`output_dtype` (float32, or float64 for wide types). The
        ``"match-lr"`` level is *not* applied here (see :func:`from_model_scale`).
        """
        dtype = np.dtype(like_dtype)
        out = self.inverse(y, out_dtype=output_dtype(dtype))
        if np.issubdtype(dtype, np.integer) and not _is_torch(out):
            info = np.iinfo(dtype)
            np.clip(out, float(info.min), float(info.max), out=out)
        return out

    def inverse(self, y, out_dtype=np.float32):
        """Network output -> the fitted image's intensity scale (``out_dtype``, not clipped)."""
        self._require_fit()
        span = self.hi - self.lo
        # (y - a) * g with a = -lo / span, g = span  ==  y * span + lo
        return self._apply(y, -self.lo / span, span, "network output", out_dtype)


def output_dtype(dtype) -> np.dtype:
    """float32, or float64 when float32 cannot hold the input's values exactly."""
    dtype = np.dtype(dtype)
    if dtype == np.float64 or (np.issubdtype(dtype, np.integer) and dtype.itemsize >= 4):
        return np.dtype(np.float64)
    return np.dtype(np.float32)


def to_model_scale(image, normalization) -> tuple[np.ndarray, "Normalizer"]:
    """Normalise ``image`` with parameters fitted on it: ``(float32 network input, fitted)``.

    ``normalization`` is a bundle's ``normalization`` dict (or a
    :class:`Normalizer`, or None = ``"dtype"``). Give the fitted normaliser
    to :func:`from_model_scale` to bring the network's output back.
    """
    norm = Normalizer.from_meta(normalization).fit(image)
    return norm.forward(image), norm


def from_model_scale(output, norm: "Normalizer", like_dtype) -> np.ndarray:
    """Network output -> the input's intensity scale, with the parameters ``norm`` was fitted with.

    Applies the ``"match-lr"`` gain / offset when fitted (:meth:`Normalizer.fit_output`),
    inverts the normalisation in float64, clips to ``like_dtype``'s range for
    integers (unsigned stays >= 0, signed keeps its sign) and returns
    :func:`output_dtype` (float32, or float64 for wide types).
    """
    return norm.restore(norm.adjust(output), like_dtype)


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
