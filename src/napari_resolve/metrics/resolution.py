"""Image resolution without a ground truth: decorrelation analysis and FRC.

Decorrelation analysis (Descloux, Grußmayer & Radenovic, *Parameter-free image
resolution estimation based on decorrelation analysis*, Nature Methods 16,
918–924, 2019; paper 003 §4 uses it to report MHTCUN's resolution) estimates
the highest spatial frequency that still carries signal from a *single*
image. Fourier ring correlation (FRC; Saxton & Baumeister 1982, Nieuwenhuizen
et al. 2013) does the same from *two* independent acquisitions of the same
field, or from a checkerboard split of one image.

Frequencies are normalised so that 1 is the Nyquist frequency
(1 / (2 pixel)); a cut-off ``kc`` therefore means a resolution of
``2 * pixel_size / kc``. Every step and every choice is listed in
``docs/resolution.md``; the short version is in :func:`decorrelation`.

The module is NumPy/SciPy only (matplotlib for :func:`plot_decorrelation`,
imported when called), so it runs on a server or a dask worker.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import scipy.fft

from napari_resolve.errors import InputError

__all__ = [
    "DecorrelationResult",
    "FRCResult",
    "decorrelation",
    "frc",
    "edge_taper",
    "plot_decorrelation",
    "plot_frc",
    "MIN_SIZE",
    "VARIANTS",
]

#: Smallest side (pixels) accepted: below it the 20 px edge taper and 50 radii
#: leave too few independent frequencies for a meaningful peak.
MIN_SIZE = 32
#: The reference's edge apodisation width (MATLAB ``apodImRect(image, 20)``).
TAPER_WIDTH = 20
#: A local maximum must exceed the minimum of the curve after it by this much.
PEAK_SIGNIFICANCE = 5e-4
#: Peaks lower than this amplitude are treated as noise (Descloux 2019, Methods).
MIN_AMPLITUDE = 0.05
#: Strongest high-pass filter of the first pass (reference value).
G_MIN = 0.15
#: Algorithms of :func:`decorrelation`: the MATLAB reference (default) and the ImageJ plugin.
VARIANTS = ("reference", "imagej")
#: FRC fixed threshold (Rosenthal & Henderson 2003).
ONE_SEVENTH = 1.0 / 7.0


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class DecorrelationResult:
    """Outcome of :func:`decorrelation` on one 2D plane.

    ``resolution`` is in ``unit`` (``"px"`` when no pixel size was given);
    ``math.inf`` when no significant peak was found (``kc == 0``). ``kc`` is
    the cut-off in normalised frequency (1 = Nyquist), ``amplitude`` the
    height of the chosen peak, ``amplitude0`` the peak height of the
    unfiltered curve d0 (the paper's A0, a proxy for the image's SNR).

    Curves for plotting: ``d0`` on ``radii``; the first pass ``curves``
    (one row per high-pass filter ``sigmas``) on ``radii``; the refined pass
    ``refined_curves`` (one row per ``refined_sigmas``) on ``refined_radii``.
    ``peaks`` is (M, 2): (kc, amplitude) of every curve's local maximum in the
    order d0, first pass, refined pass (zeros where rejected); ``chosen`` is
    the row of ``peaks`` that gave ``kc``. ``plane`` is the index of this
    plane in the leading axes of a stack (``()`` for a 2D image).
    ``variant`` is the algorithm (``"reference"`` or ``"imagej"``, see
    :func:`decorrelation`); in the ImageJ variant ``sigmas`` are real-space
    blur widths in pixels.
    """

    resolution: float
    kc: float
    amplitude: float
    amplitude0: float
    unit: str
    pixel_size: float
    radii: np.ndarray
    d0: np.ndarray
    sigmas: np.ndarray
    curves: np.ndarray
    refined_radii: np.ndarray
    refined_sigmas: np.ndarray
    refined_curves: np.ndarray
    peaks: np.ndarray
    chosen: int
    shape: tuple
    plane: tuple = ()
    variant: str = "reference"

    @property
    def found(self) -> bool:
        """Whether a significant peak (amplitude >= 0.05) was found."""
        return self.kc > 0

    def summary(self) -> str:
        """One line: resolution, kc and amplitudes."""
        where = f"plane {self.plane}: " if self.plane else ""
        if not self.found:
            return f"{where}no significant decorrelation peak (A0 = {self.amplitude0:.3f})"
        return (
            f"{where}resolution {self.resolution:.4g} {self.unit} "
            f"(kc = {self.kc:.4f} of Nyquist, A = {self.amplitude:.3f}, A0 = {self.amplitude0:.3f})"
        )


@dataclass(frozen=True)
class FRCResult:
    """Outcome of :func:`frc`.

    ``frequencies`` are ring centres in normalised frequency of the input
    image (1 = Nyquist); ``correlation`` the FRC per ring; ``n_pixels`` the
    number of Fourier pixels per ring (full plane); ``half_bit`` the half-bit
    threshold per ring. ``k_one_seventh`` / ``k_half_bit`` are the first
    crossings (linear interpolation between rings; NaN when the curve never
    drops below the threshold), ``resolution_*`` the matching
    ``2 * pixel_size / k`` in ``unit``. ``split`` is ``"checkerboard"`` for the
    single-image FRC, ``"pair"`` for two images.
    """

    frequencies: np.ndarray
    correlation: np.ndarray
    n_pixels: np.ndarray
    half_bit: np.ndarray
    k_one_seventh: float
    k_half_bit: float
    resolution_one_seventh: float
    resolution_half_bit: float
    unit: str
    pixel_size: float
    split: str
    max_frequency: float = field(default=1.0)

    @property
    def resolution(self) -> float:
        """The 1/7-threshold resolution (the usual single number)."""
        return self.resolution_one_seventh

    def summary(self) -> str:
        def fmt(res, k):
            if math.isnan(k):
                return f"not crossed up to kc = {self.max_frequency:.3g}"
            return f"{res:.4g} {self.unit} (kc = {k:.4f})"

        return (
            f"FRC ({self.split}): 1/7 threshold {fmt(self.resolution_one_seventh, self.k_one_seventh)}; "
            f"half-bit {fmt(self.resolution_half_bit, self.k_half_bit)}"
        )


# --------------------------------------------------------------------------- validation


def _check_pixel_size(pixel_size, unit):
    if pixel_size is None:
        return 1.0, "px" if unit is None else str(unit)
    try:
        value = float(pixel_size)
    except (TypeError, ValueError):
        raise InputError(f"pixel size must be a number, got {pixel_size!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise InputError(f"pixel size must be a positive number, got {pixel_size!r}")
    return value, "um" if unit is None else str(unit)


def _as_planes(image, name="image"):
    """Validate ``image`` and return (its planes as an (P, H, W) array, leading shape)."""
    try:
        arr = np.asarray(image)
    except Exception as exc:  # e.g. a dask graph that cannot compute
        raise InputError(f"{name} cannot be read as an array: {exc}") from None
    if arr.dtype == object or not (
        np.issubdtype(arr.dtype, np.number) or arr.dtype == bool
    ):
        raise InputError(f"{name} must be numeric, got dtype {arr.dtype}")
    if np.iscomplexobj(arr):
        raise InputError(f"{name} must be real-valued, got complex dtype {arr.dtype}")
    if arr.ndim < 2:
        raise InputError(f"{name} must be 2D (or a stack of 2D planes), got shape {arr.shape}")
    h, w = arr.shape[-2:]
    if min(h, w) < MIN_SIZE:
        raise InputError(
            f"{name} is {h}x{w} pixels; resolution estimation needs at least "
            f"{MIN_SIZE}x{MIN_SIZE}"
        )
    if arr.size == 0:
        raise InputError(f"{name} is empty")
    lead = arr.shape[:-2]
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    planes = arr.reshape((-1, h, w))
    for i, plane in enumerate(planes):
        where = f" (plane {tuple(int(j) for j in np.unravel_index(i, lead))})" if lead else ""
        if plane.dtype.kind == "f" and not np.isfinite(plane).all():
            raise InputError(f"{name} contains NaN or infinite values{where}")
        if plane.min() == plane.max():
            raise InputError(f"{name} is constant{where}: there is no structure to measure")
    return planes, lead


# --------------------------------------------------------------------------- apodisation


def _taper_1d(n: int, width: float) -> np.ndarray:
    """Raised-sine ramp from 0 at the border to 1 at ``width`` px inside."""
    # Pixel positions as in the reference (linspace(-n/2, n/2, n)); distance
    # from the nearest border is 0 on the first and last pixel.
    x = np.linspace(-n / 2.0, n / 2.0, n)
    dist = n / 2.0 - np.abs(x)
    t = np.clip(dist / float(width), 0.0, 1.0)
    return 0.5 * (1.0 - np.cos(np.pi * t))


def edge_taper(image: np.ndarray, width: float = TAPER_WIDTH, *, dtype=np.float64) -> np.ndarray:
    """Apodise the borders of a 2D image towards its mean (Descloux 2019, Methods).

    A separable raised-sine window falls from 1 to 0 over ``width`` pixels at
    each border, so the periodic continuation the FFT assumes has no jump
    (which would put a cross of false high frequencies into the spectrum):
    ``out = (image - mean) * window + mean``. ``width = 0`` disables it.
    Returns a new array of ``dtype``.
    """
    out = np.array(image, dtype=dtype)  # a copy: the caller's image is never modified
    if width <= 0:
        return out
    mean = out.mean(dtype=np.float64)
    out -= mean
    out *= _taper_1d(out.shape[0], width).astype(dtype)[:, None]
    out *= _taper_1d(out.shape[1], width).astype(dtype)[None, :]
    out += mean
    return out


# --------------------------------------------------------------------------- decorrelation


def _local_max(curve: np.ndarray) -> tuple[int, float]:
    """Index and height of the decorrelation peak of ``curve``; (0, 0.0) when there is none.

    The highest sample is the peak if it is not the last one and exceeds the
    minimum of the curve after it by :data:`PEAK_SIGNIFICANCE` (5e-4). A
    maximum on the last sample (the curve still rises at the end of the
    range) is dropped and the search repeats on the rest; an insignificant
    maximum is dropped with everything after it (nothing there can exceed its
    own tail by more). Unlike the reference, which tests significance only
    after dropping a last-sample maximum, an interior maximum is tested too:
    otherwise a flat end (two equal samples after the 3-decimal floor) is
    taken for a peak at the edge of the disk.
    """
    end = len(curve)
    while end > 1:
        idx = int(np.argmax(curve[:end]))
        if idx < end - 1 and curve[idx] - curve[idx:].min() >= PEAK_SIGNIFICANCE:
            return idx, float(curve[idx])
        end = idx if idx < end - 1 else end - 1
    return 0, 0.0


@lru_cache(maxsize=4)
def _disk_geometry(h: int, w: int):
    """Radial order of the Fourier pixels of an odd (h, w) image inside the unit disk.

    Pixels with the same radius fall into the same masks, so they are summed
    before sorting: the rfft2 half plane is folded onto its quadrant
    (ky, kx) >= 0 (rows ky and -ky added), and for square images the quadrant
    onto its triangle ky <= kx (pixel (ky, kx) plus its mirror (kx, ky)).
    Returns, sorted by radius with the zero frequency left out: ``idx`` (flat
    index into the quadrant), ``weight`` (pixels of the full plane it stands
    for: 2 for kx > 0, the -kx half that rfft2 leaves out), ``idx_t`` and
    ``weight_t`` for the mirror pixel (None for non-square images; weight 0 on
    the diagonal, which has no mirror), ``count`` (pixels of the full plane
    behind each entry) and ``r2`` (squared radius). Cached per
    shape, so stacks and repeated calls sort once.
    """
    ky = 2.0 * np.arange(h // 2 + 1) / h  # the non-negative part of 2 * fftfreq(h)
    kx = 2.0 * np.arange(w // 2 + 1) / w
    r2 = (ky[:, None] ** 2 + kx[None, :] ** 2).ravel()
    cols = kx.size
    if h == w:
        flat = np.flatnonzero(np.triu(np.ones((ky.size, kx.size), dtype=bool)))
    else:
        flat = np.arange(r2.size)
    order = np.argsort(r2[flat], kind="stable")
    idx = flat[order]
    r2_sorted = r2[idx]
    stop = int(np.searchsorted(r2_sorted, 1.0, side="left"))
    idx, r2_sorted = idx[1:stop], r2_sorted[1:stop]  # [0] is the zero frequency
    row, col = np.divmod(idx, cols)
    weight = np.where(col == 0, 1.0, 2.0)
    # pixels of the full plane behind each sorted entry (rows ky and -ky, columns kx and -kx)
    count = weight * np.where(row == 0, 1.0, 2.0)
    idx_t = weight_t = None
    if h == w:
        idx_t = col * cols + row
        weight_t = np.where(row == 0, 1.0, 2.0) * (row != col)
        count += weight_t * np.where(col == 0, 1.0, 2.0)
    out = (idx, weight, idx_t, weight_t, count, r2_sorted)
    for arr in out:
        if arr is not None:
            arr.setflags(write=False)  # shared through the cache
    return out


def _prefix_sums(values: np.ndarray, stops: np.ndarray) -> np.ndarray:
    """``values[:s].sum()`` for every s in ``stops`` (non-decreasing), in one pass."""
    out = np.zeros(len(stops))
    uniq = np.unique(stops[stops > 0])
    if uniq.size:
        starts = np.concatenate([[0], uniq[:-1]])
        partial = np.cumsum(np.add.reduceat(values[: uniq[-1]], starts))
        out[stops > 0] = partial[np.searchsorted(uniq, stops[stops > 0])]
    return out


class _Spectrum:
    """|FFT| of one apodised, odd-cropped plane, sorted by radius inside the unit disk.

    Because the normalised spectrum In = I/|I| has the phase of I, the
    correlation Re(I_g · conj(In)) of a high-passed spectrum I_g = H·I (H real,
    >= 0) with In is just H·|I|; so d(r) = sum_{k<r} H|I| /
    (||H·I||_{k<1} · sqrt(#{k<r, I != 0})) needs only the magnitudes, one FFT
    for all filters. With the Fourier pixels sorted by radius, every masked sum
    is a prefix sum read at ``searchsorted(r**2)``.
    """

    def __init__(self, plane: np.ndarray):
        h, w = plane.shape  # both odd
        idx, weight, idx_t, weight_t, count, self.r2 = _disk_geometry(h, w)
        mag = np.abs(scipy.fft.rfft2(plane))  # (h, w // 2 + 1); w odd: no Nyquist column

        def fold(x):
            """Quadrant ky >= 0 plus the mirrored rows ky < 0, then gathered in radial order."""
            quad = x[: h // 2 + 1].copy()
            quad[1:] += x[h - 1 : h // 2 : -1]
            quad = quad.ravel()
            folded = weight * quad[idx]
            if idx_t is not None:
                folded += weight_t * quad[idx_t]
            return folded

        self.wmag = fold(mag)
        self.wmag2 = fold(mag * mag)
        # Pixels where I == 0 have In = 0 (the reference's NaN -> 0): they do not count.
        if mag.all():
            self.wnonzero = count
        else:
            self.wnonzero = fold((mag > 0).astype(np.float32))
        self._counts = {}

    def curve(self, radii: np.ndarray, sigma: float | None) -> np.ndarray:
        """d(r) for the Gaussian high-pass 1 - exp(-2 sigma^2 k^2) (``None``: no filter)."""
        stops = np.searchsorted(self.r2, np.asarray(radii, dtype=np.float64) ** 2, side="left")
        if sigma is None:
            num = self.wmag
            norm2 = float(self.wmag2.sum())
        else:
            hp = np.multiply(self.r2, -2.0 * sigma * sigma)
            np.exp(hp, out=hp)
            np.subtract(1.0, hp, out=hp)
            num = self.wmag * hp
            hp *= hp
            norm2 = float(np.dot(self.wmag2, hp))
        key = stops.tobytes()
        if key not in self._counts:  # the same radii serve many filters
            self._counts[key] = _prefix_sums(self.wnonzero, stops)
        counts = self._counts[key]
        with np.errstate(invalid="ignore", divide="ignore"):
            d = _prefix_sums(num, stops) / (math.sqrt(norm2) * np.sqrt(counts))
        d[~np.isfinite(d)] = 0.0
        # Floor to 3 decimals as the reference, so that numerical noise cannot
        # create a spurious local maximum.
        return np.floor(d * 1000.0) / 1000.0


def _decorrelation_plane(plane, n_r, n_g, taper, pixel_size, unit, index, variant="reference"):
    if variant == "imagej":
        from napari_resolve.metrics import _decorrelation_imagej

        fields = _decorrelation_imagej.measure(plane, n_r, n_g)
    else:
        fields = _measure_reference(plane, n_r, n_g, taper)
    kc = fields["kc"]
    return DecorrelationResult(
        resolution=2.0 * pixel_size / kc if kc > 0 else math.inf,
        unit=unit, pixel_size=pixel_size, shape=tuple(plane.shape), plane=index,
        variant=variant, **fields,
    )


def result_fields(peaks, chosen, a0, radii, d0, sigmas, curves,
                  refined_radii, refined_sigmas, refined_curves) -> dict:
    """The per-plane fields of a :class:`DecorrelationResult`, from either variant's curves."""
    return dict(
        kc=float(peaks[chosen, 0]), amplitude=float(peaks[chosen, 1]), amplitude0=float(a0),
        radii=radii, d0=d0, sigmas=sigmas, curves=curves, refined_radii=refined_radii,
        refined_sigmas=refined_sigmas, refined_curves=refined_curves, peaks=peaks, chosen=chosen,
    )


def _measure_reference(plane, n_r, n_g, taper) -> dict:
    """The reference algorithm on one plane: the fields of a DecorrelationResult (see decorrelation)."""
    # float32 halves the memory traffic of the FFT; every sum is taken in float64.
    apodised = edge_taper(plane, taper, dtype=np.float32)
    h, w = apodised.shape
    # Odd sizes put the zero frequency at the centre of a symmetric grid.
    apodised = apodised[: h - (h % 2 == 0), : w - (w % 2 == 0)]
    spectrum = _Spectrum(apodised)

    radii = np.linspace(0.0, 1.0, n_r)
    d0 = spectrum.curve(radii, None)
    i0, a0 = _local_max(d0)
    k0 = float(radii[i0])

    # First pass: the weakest filter at rows/4, then Ng filters log-spaced from
    # 2/k0 (a high-pass just below the d0 peak) down to 0.15 (strongest).
    g_max = 2.0 / k0 if k0 > 0 else max(apodised.shape) / 2.0
    sigmas = np.concatenate(
        [[apodised.shape[0] / 4.0], np.exp(np.linspace(np.log(g_max), np.log(G_MIN), n_g))]
    )
    curves = np.stack([spectrum.curve(radii, g) for g in sigmas])
    peaks = [(k0, a0)] + [
        (float(radii[i]), a) for i, a in (_local_max(c) for c in curves)
    ]

    # Refinement around the highest significant peak (d0 counts as candidate 0).
    cand = np.array(peaks)
    kc_valid = np.where(cand[:, 1] >= MIN_AMPLITUDE, cand[:, 0], 0.0)
    best = int(np.flatnonzero(kc_valid == kc_valid.max())[-1])
    if best == 0:  # d0 wins: refine between almost no filtering and the weakest filter
        g_lo, g_hi = float(apodised.shape[0]), float(sigmas[0])
    else:
        j = best - 1
        if j + 1 < len(sigmas):
            g_lo, g_hi = float(sigmas[j]), float(sigmas[j + 1])
        else:
            g_lo, g_hi = float(sigmas[j - 1]), float(sigmas[j])
    refined_sigmas = np.exp(np.linspace(np.log(g_lo), np.log(g_hi), n_g))
    k_best = float(cand[best, 0])
    r_lo = max(k_best - (radii[1] - radii[0]), 0.0)
    r_hi = min(k_best + 0.4, 1.0)
    refined_radii = np.linspace(r_lo, r_hi, n_r)
    refined_curves = np.stack([spectrum.curve(refined_radii, g) for g in refined_sigmas])
    peaks += [(float(refined_radii[i]), a) for i, a in (_local_max(c) for c in refined_curves)]

    peaks = np.array(peaks, dtype=np.float64)
    peaks[peaks[:, 1] < MIN_AMPLITUDE] = 0.0  # unphysical peaks (Methods)
    chosen = int(np.argmax(peaks[:, 0]))
    return result_fields(peaks, chosen, a0, radii, d0, sigmas, curves,
                         refined_radii, refined_sigmas, refined_curves)


def decorrelation(
    image,
    *,
    pixel_size: float | None = None,
    unit: str | None = None,
    n_r: int = 50,
    n_g: int = 10,
    taper: float = TAPER_WIDTH,
    variant: str = "reference",
):
    """Resolution of an image by decorrelation analysis (Descloux et al. 2019).

    Follows the Methods of the paper and the reference implementation's
    defaults (ImDecorr 1.1.8), in this order:

    1. apodise the borders with a raised-sine taper of ``taper`` (20) px
       towards the mean; crop to odd sizes; remove the mean (the zero
       frequency is excluded from every sum — the reference MATLAB code keeps
       it, its ImageJ plugin removes it; with it a bright offset would drown
       every correlation);
    2. I(k) = FFT, In(k) = I/|I| (phase only; 0 where I = 0), both restricted
       to the unit disk |k| < 1 (1 = Nyquist on each axis, so the disk is
       circular in physical frequency for non-square images);
    3. d(r) = Re sum I·conj(In)·[|k| < r] / (||I|| · ||In·[|k| < r]||) for
       ``n_r`` radii linspace(0, 1); values floored to 3 decimals;
    4. peak of d: the highest sample that is not the last one and exceeds the
       minimum after it by 5e-4 (see :func:`_local_max`); gives (k0, A0);
    5. Gaussian high-pass filters I·(1 - exp(-2 g² k²)): the first with
       g = rows/4, then ``n_g`` filters with g log-spaced from 2/k0 to 0.15;
       a peak (kc_g, A_g) per filter;
    6. refinement: around the highest peak with A >= 0.05, ``n_g`` filters
       log-spaced between the winning g and the next stronger one (the
       previous one when the winner is the strongest; between rows and
       rows/4 when d0 wins), radii linspace(kc - Δr, kc + 0.4) clipped to [0, 1];
    7. peaks with amplitude < 0.05 are discarded; kc = the highest remaining
       peak (d0 included); resolution = 2 · pixel_size / kc.

    Choices the paper leaves open (all listed in docs/resolution.md):
    frequencies are the exact FFT frequencies (the reference's
    linspace(-1, 1, n) grid overstates them by n/(n-1)); every candidate
    maximum gets the 5e-4 significance test (the reference tests only those
    found after dropping a last-sample maximum, which lets a flat curve end
    pass as a peak at the disk's edge); peaks below 0.05 are ignored when
    choosing where to refine; ties between equal kc go to the first curve (d0,
    then the filters in order). A stack is measured plane by plane.

    Parameters
    ----------
    image : array-like, 2D (H, W) or a stack (..., H, W); at least 32 px a side.
    pixel_size : size of a pixel in ``unit``; ``None`` gives the result in pixels.
    unit : unit of ``pixel_size`` (default ``"um"`` with a pixel size, ``"px"`` without).
    n_r, n_g : radii sampled per curve and high-pass filters per pass.
    taper : apodisation width in pixels (0 disables it).
    variant : ``"reference"`` (default: the steps above, the MATLAB reference
        implementation) or ``"imagej"``: the algorithm of the ImageJ plugin
        that paper 003 used and NanoPyx ports (real-space Gaussian high-pass,
        power-of-two padding, nearest-radius bins, result from the refined
        pass only; every difference is listed in
        :mod:`napari_resolve.metrics._decorrelation_imagej`). ``taper`` is
        fixed at 20 px there.

    Returns
    -------
    :class:`DecorrelationResult` for a 2D image; for a stack a list of them,
    one per plane in C order of the leading axes (each with ``.plane``).

    Raises
    ------
    InputError : non-numeric, NaN/inf, constant or too small images, bad
        parameters.
    """
    pixel_size, unit = _check_pixel_size(pixel_size, unit)
    for value, name, minimum in ((n_r, "n_r", 10), (n_g, "n_g", 2)):
        try:
            ok = int(value) == value and int(value) >= minimum
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise InputError(f"{name} must be an integer >= {minimum}, got {value!r}")
    try:
        taper = float(taper)
    except (TypeError, ValueError):
        raise InputError(f"taper must be a number of pixels, got {taper!r}") from None
    if not math.isfinite(taper) or taper < 0:
        raise InputError(f"taper must be >= 0 pixels, got {taper!r}")
    if variant not in VARIANTS:
        raise InputError(f"variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
    planes, lead = _as_planes(image)
    results = [
        _decorrelation_plane(
            p, int(n_r), int(n_g), taper, pixel_size, unit,
            tuple(int(i) for i in np.unravel_index(k, lead)) if lead else (),
            variant,
        )
        for k, p in enumerate(planes)
    ]
    return results if lead else results[0]


# --------------------------------------------------------------------------- FRC


def _half_bit(n_pixels: np.ndarray) -> np.ndarray:
    """Half-bit threshold (van Heel & Schatz 2005, eq. 17) for rings of n pixels."""
    s = 1.0 / np.sqrt(np.maximum(n_pixels, 1.0))
    return (0.2071 + 1.9102 * s) / (1.2071 + 0.9102 * s)


def _first_crossing(freq, curve, threshold) -> float:
    """First frequency (ring >= 1) where ``curve`` falls below ``threshold``."""
    diff = curve - threshold
    for i in range(1, len(diff)):
        if diff[i] < 0:
            if diff[i - 1] <= 0:  # already below at the first ring
                return float(freq[i - 1])
            t = diff[i - 1] / (diff[i - 1] - diff[i])
            return float(freq[i - 1] + t * (freq[i] - freq[i - 1]))
    return float("nan")


def frc(
    image_a,
    image_b=None,
    *,
    pixel_size: float | None = None,
    unit: str | None = None,
    taper: float = TAPER_WIDTH,
) -> FRCResult:
    """Fourier ring correlation of two images, or of a checkerboard split of one.

    FRC(k) = Re sum_ring A·conj(B) / sqrt(sum_ring |A|² · sum_ring |B|²) over
    rings one Fourier pixel wide (of the shorter side), after the same edge
    taper as :func:`decorrelation` (``taper`` px) and mean removal. The
    resolution is where FRC first drops below 1/7 (Rosenthal & Henderson
    2003) and below the half-bit curve (van Heel & Schatz 2005, with n the
    number of Fourier pixels in the ring).

    With ``image_b=None`` the image is split into its (even, even) and
    (odd, odd) pixels (Koho et al. 2019 style); the one-pixel diagonal shift
    between the halves is undone by a Fourier phase ramp. The halves have half
    the sampling, so the curve stops at half the input's Nyquist
    (``max_frequency = 0.5``) and content above it aliases: use it on images
    sampled at or above Nyquist.

    Frequencies and resolutions refer to the input pixel grid (1 = Nyquist,
    resolution = 2 · pixel_size / k). Stacks are not accepted: pass 2D planes.
    """
    pixel_size, unit = _check_pixel_size(pixel_size, unit)
    a, _lead = _as_planes(image_a, "image_a")
    if a.shape[0] != 1:
        raise InputError(f"FRC needs 2D images, image_a has shape {np.shape(image_a)}")
    a = a[0]
    if image_b is None:
        h, w = (a.shape[0] // 2) * 2, (a.shape[1] // 2) * 2
        b = a[1:h:2, 1:w:2]
        a = a[0:h:2, 0:w:2]
        split, scale = "checkerboard", 0.5
        if min(a.shape) < MIN_SIZE // 2:
            raise InputError("image is too small for a checkerboard FRC (needs 32x32)")
    else:
        b, _ = _as_planes(image_b, "image_b")
        if b.shape[0] != 1 or b.shape[1:] != a.shape:
            raise InputError(
                f"FRC needs two 2D images of the same shape, got {np.shape(image_a)} "
                f"and {np.shape(image_b)}"
            )
        b = b[0]
        split, scale = "pair", 1.0
    h, w = a.shape
    fa = scipy.fft.rfft2(edge_taper(a, taper))
    fb = scipy.fft.rfft2(edge_taper(b, taper))
    fa[0, 0] = fb[0, 0] = 0.0  # the mean
    ky = 2.0 * scipy.fft.fftfreq(h)[:, None]
    kx = 2.0 * scipy.fft.rfftfreq(w)[None, :]
    if split == "checkerboard":
        # b sits half a (sub-sampled) pixel further along both axes: undo it.
        fb = fb * np.exp(-0.5j * np.pi * (ky + kx))
    weight = np.where((kx > 0) & ~((w % 2 == 0) & (kx == 1.0)), 2.0, 1.0) * np.ones((h, 1))
    radius = np.sqrt(ky * ky + kx * kx)
    step = 2.0 / min(h, w)
    ring = np.rint(radius / step).astype(np.int64).ravel()
    n_rings = int(math.floor(1.0 / step)) + 1
    keep = ring < n_rings
    ring, weight = ring[keep], weight.ravel()[keep]
    fa, fb = fa.ravel()[keep], fb.ravel()[keep]
    num = np.bincount(ring, weight * (fa * fb.conj()).real, n_rings)
    pa = np.bincount(ring, weight * np.abs(fa) ** 2, n_rings)
    pb = np.bincount(ring, weight * np.abs(fb) ** 2, n_rings)
    npx = np.bincount(ring, weight, n_rings)
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = num / np.sqrt(pa * pb)
    corr[~np.isfinite(corr)] = 0.0
    corr[0] = 1.0  # the DC ring (mean removed): by convention fully correlated
    freq = np.arange(n_rings) * step * scale
    hb = _half_bit(npx)
    k7 = _first_crossing(freq, corr, ONE_SEVENTH)
    khb = _first_crossing(freq, corr, hb)

    def res(k):
        return 2.0 * pixel_size / k if k > 0 else float("nan")

    return FRCResult(
        frequencies=freq,
        correlation=corr,
        n_pixels=npx,
        half_bit=hb,
        k_one_seventh=k7,
        k_half_bit=khb,
        resolution_one_seventh=res(k7),
        resolution_half_bit=res(khb),
        unit=unit,
        pixel_size=pixel_size,
        split=split,
        max_frequency=float(freq[-1]),
    )


# --------------------------------------------------------------------------- plots


def plot_decorrelation(result: DecorrelationResult, ax=None, *, title: str | None = None):
    """Draw the d(r) curves of ``result`` with the chosen peak marked.

    Grey: first-pass high-pass curves; blue: refined curves; green: d0; red
    cross and dashed line: the chosen kc. ``ax`` is a matplotlib Axes (a new
    :class:`matplotlib.figure.Figure` is made when ``None``, no pyplot, so it
    works without a display). Returns the Axes.
    """
    if ax is None:
        from matplotlib.figure import Figure

        ax = Figure(figsize=(6, 4), layout="constrained").add_subplot()
    for c in result.curves:
        ax.plot(result.radii, c, color="0.6", lw=0.8)
    n = len(result.refined_curves)
    for i, c in enumerate(result.refined_curves):
        ax.plot(result.refined_radii, c, color=(0.1, 0.3, 0.4 + 0.6 * i / max(n - 1, 1)), lw=0.8)
    ax.plot(result.radii, result.d0, color="tab:green", lw=2, label="d0 (no filter)")
    valid = result.peaks[:, 0] > 0
    ax.plot(result.peaks[valid, 0], result.peaks[valid, 1], "x", color="0.3", ms=4, label="peaks")
    if result.found:
        ax.axvline(result.kc, color="tab:red", ls="--", lw=1)
        ax.plot(result.kc, result.amplitude, "x", color="tab:red", ms=10, mew=2,
                label=f"kc = {result.kc:.3f} → {result.resolution:.3g} {result.unit}")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, max(1e-3, float(np.max(result.peaks[:, 1], initial=0)), float(result.d0.max())) * 1.15)
    ax.set_xlabel("normalised frequency (1 = Nyquist)")
    ax.set_ylabel("decorrelation d(r)")
    ax.set_title(title or "Decorrelation analysis")
    ax.legend(loc="upper right", fontsize="small")
    return ax


def plot_frc(result: FRCResult, ax=None, *, title: str | None = None):
    """Draw an FRC curve with its 1/7 and half-bit thresholds; returns the Axes."""
    if ax is None:
        from matplotlib.figure import Figure

        ax = Figure(figsize=(6, 4), layout="constrained").add_subplot()
    ax.plot(result.frequencies, result.correlation, color="tab:blue", label="FRC")
    ax.axhline(ONE_SEVENTH, color="tab:orange", ls="--", lw=1, label="1/7")
    ax.plot(result.frequencies, result.half_bit, color="tab:purple", ls=":", label="half-bit")
    if not math.isnan(result.k_one_seventh):
        ax.axvline(result.k_one_seventh, color="tab:red", lw=1,
                   label=f"{result.resolution_one_seventh:.3g} {result.unit}")
    ax.set_xlim(0, result.max_frequency)
    ax.set_ylim(-0.1, 1.05)
    ax.set_xlabel("normalised frequency (1 = Nyquist)")
    ax.set_ylabel("FRC")
    ax.set_title(title or f"Fourier ring correlation ({result.split})")
    ax.legend(loc="upper right", fontsize="small")
    return ax
