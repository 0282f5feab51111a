"""Correlation registration of scans of one slide taken with different objectives.

Paper 002 (Ma 2020, PathSRGAN) §II-B pairs 4×, 10× and 20× scans by a two-step
correlation registration, implemented here with scikit-image:

1. **Integer ratio** (§II-B, §IV-A): the low scan is interpolated so that the
   other magnifications are integer multiples of it (the paper's 4× → "5×",
   so that 5×:10×:20× = 1:2:4 and patches are 128 / 256 / 512 px).
2. **Coarse** (§II-B, Fig. 2): ``coarse_patches`` random low patches are each
   matched (:func:`skimage.feature.match_template`, normalised correlation)
   inside the mapped region of the other scan widened by the redundancy Δr
   (``coarse_window``); the offsets are averaged into a global offset.
3. **Fine** (§II-B, Fig. 3): every low patch is matched inside a window of
   redundancy ΔR (``fine_window``) around its coarse position; the pair is kept
   only if the peak correlation exceeds the threshold T (``threshold``) and the
   patch has enough foreground (``min_foreground``), "because the correlation
   of blank images is not reliable". The integer peak is refined to sub-pixel
   precision by :func:`skimage.registration.phase_cross_correlation`
   (``upsample_factor``).

Choices the paper leaves open, made here:

* Matching happens on the low-resolution grid: the other scan is converted to
  grey (luminance) and block-averaged by its integer ratio, which is exactly
  the footprint of one interpolated low pixel. Offsets are in interpolated-low
  pixels ("LR px", 4 HR px for the paper's set-up), (row, col) order.
* The low scan is interpolated with a cubic spline (scipy.ndimage, linear
  time on whole slides) with MATLAB ``imresize``'s pixel-centre convention.
* The coarse average is the mean of the offsets of the coarse patches that
  pass T and the foreground test and lie within 2 LR px of their median (one
  wrong match in a repetitive smear would otherwise drag the mean).
* The patches to pair are a regular grid with step ``stride`` (default: the
  patch size, no overlap) instead of random draws, so a slide is covered
  evenly; ``max_patches`` draws a random subset.
* Foreground: pixels on the object side of Otsu's threshold of the whole low
  scan (darker than it for bright-field, brighter for fluorescence;
  ``background="auto"`` assumes bright-field for RGB, fluorescence for grey).
* The sub-pixel step uses the plain (not phase-normalised) cross-correlation,
  robust to the very different blur and noise of the two objectives, of
  Tukey-windowed patches, iterated up to 3 times on the other scan resampled
  at the current estimate (see :func:`_subpixel`): a single unwindowed FFT
  correlation of non-periodic patches is biased towards the integer peak by
  up to 0.3 px. Estimates beyond one pixel fall back to the integer peak.
* A correlation peak on the border of the ±ΔR window is rejected
  (``"window"``: the true peak may lie beyond it), and so is a patch whose
  window or counterpart leaves a scan (``"outside"``).
* Patches are cut at the nearest whole pixel of each scan (no resampling, so
  the targets keep their real pixels); the report holds both the sub-pixel
  offsets and the cut positions.
* Defaults: T = 0.6, 10 % foreground, Δr = 32 LR px, ΔR = 6 LR px,
  16 coarse patches, ``upsample_factor`` 20.

Every scan is registered to the low one, as in the paper's Table II
(4×–10× and 4×–20×).

Pairs folder written by :func:`write_pairs` (read by the paired-dataset
loader of the trainer)::

    pairs/
      lr/00001.tif   low patch (interpolated grid), patch_size px
      mr/00001.tif   mid patch, patch_size * ratio_mid px (absent without a mid scan)
      hr/00001.tif   high patch, patch_size * ratio_high px
      report.json    parameters, coarse offsets, per-patch offsets / correlations
                     and file names, rejected counts, pixel sizes

The same name in every kind is one pair; patches keep the scans' dtype and
channels (OME-TIFF, with the pixel size when it is known).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from napari_resolve._generators import run_to_end
from napari_resolve.errors import InputError

__all__ = [
    "PatchMatch",
    "RegistrationProgress",
    "RegistrationResult",
    "build_dataset",
    "build_dataset_iter",
    "integer_ratio_magnification",
    "interpolate_to_ratio",
    "register",
    "register_iter",
    "write_pairs",
    "write_pairs_iter",
]

REPORT_FORMAT = "napari-resolve/pairs/1"


@dataclass(frozen=True)
class RegistrationProgress:
    """One step of long work: ``done`` of ``total`` in ``stage``
    (``"coarse"``, ``"fine"`` or ``"write"``)."""

    done: int
    total: int
    stage: str


@dataclass
class PatchMatch:
    """The registration of one low patch against each other scan.

    ``lr``: top-left (row, col) in the interpolated low scan; ``offset[t]``:
    sub-pixel offset (LR px) of the same content in scan ``t``; ``position[t]``:
    the top-left, in ``t``'s own pixels, where its patch is cut;
    ``correlation[t]``: peak normalised correlation; ``reason``: why the pair
    was rejected (``"foreground"``, ``"threshold"``, ``"window"``, ``"outside"``)
    or None when kept.
    """

    lr: tuple[int, int]
    foreground: float
    offset: dict = field(default_factory=dict)
    position: dict = field(default_factory=dict)
    correlation: dict = field(default_factory=dict)
    reason: str | None = None

    @property
    def kept(self) -> bool:
        return self.reason is None

    def as_dict(self) -> dict:
        return {
            "lr": [int(v) for v in self.lr],
            "foreground": round(float(self.foreground), 4),
            "offset": {k: [round(float(x), 4) for x in v] for k, v in self.offset.items()},
            "position": {k: [int(x) for x in v] for k, v in self.position.items()},
            "correlation": {k: round(float(v), 4) for k, v in self.correlation.items()},
            "kept": self.kept,
            "reason": self.reason,
        }


@dataclass
class RegistrationResult:
    """Registered patches of a low scan against its mid and/or high scans.

    ``len(result)`` is the number of kept pairs; ``result[i]`` cuts pair ``i``
    as a dict ``{"lr": ..., "mr": ..., "hr": ...}`` (arrays in the scans' own
    dtypes; "mr" only with a mid scan). ``matches`` holds every candidate,
    kept or not; ``report`` is a JSON-ready summary.
    """

    low: np.ndarray  # the interpolated low scan
    scans: dict  # "mr" / "hr" -> the other scans as given
    ratios: dict  # "mr" / "hr" -> integer ratio to the interpolated low grid
    patch_size: int
    matches: list
    report: dict

    @property
    def kept(self) -> list:
        return [m for m in self.matches if m.kept]

    def __len__(self) -> int:
        return sum(m.kept for m in self.matches)

    def __getitem__(self, i: int) -> dict:
        m = self.kept[i]
        p = self.patch_size
        out = {"lr": self.low[m.lr[0] : m.lr[0] + p, m.lr[1] : m.lr[1] + p]}
        for t, scan in self.scans.items():
            r, c = m.position[t]
            q = p * self.ratios[t]
            out[t] = scan[r : r + q, c : c + q]
        return out

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]


# ----------------------------------------------------------------- helpers


def integer_ratio_magnification(low: float, others) -> float:
    """Smallest magnification >= ``low`` of which every one of ``others`` is an integer multiple.

    The paper's 4× with 10× and 20× gives 5× (§II-B: "we interpolate 4× slides
    to 5× to avoid float numbers in patch size").
    """
    others = [float(o) for o in others]
    top = max(others)
    for k in range(math.floor(top / low + 1e-9), 0, -1):
        m = top / k
        if all(abs(o / m - round(o / m)) < 1e-6 for o in others):
            return m
    raise InputError(f"no magnification >= {low} divides {others}")  # unreachable: k=1 works


def interpolate_to_ratio(image: np.ndarray, factor: float) -> np.ndarray:
    """Rescale (H, W[, C]) by ``factor`` with a cubic spline, keeping dtype and value range.

    Output pixel j samples input position ``(j + 0.5) / factor - 0.5`` (pixel
    centres, as MATLAB ``imresize``), for ``floor(factor * size)`` pixels, so
    the grid is exactly ``factor`` times finer whatever the size.
    """
    from scipy.ndimage import affine_transform

    if abs(factor - 1.0) < 1e-12:
        return image
    arr = np.asarray(image)
    h, w = (math.floor(factor * s + 1e-9) for s in arr.shape[:2])
    step = 1.0 / factor
    start = 0.5 * step - 0.5
    work = arr.astype(np.float32)
    planes = work[..., None] if arr.ndim == 2 else work
    out = np.empty((h, w, planes.shape[2]), dtype=np.float32)
    for ch in range(planes.shape[2]):
        affine_transform(
            planes[..., ch], [step, step], offset=[start, start], output_shape=(h, w),
            output=out[..., ch], order=3, mode="nearest",
        )
    out = out[..., 0] if arr.ndim == 2 else out
    if np.issubdtype(arr.dtype, np.integer):
        info = np.iinfo(arr.dtype)
        return np.clip(np.round(out), info.min, info.max).astype(arr.dtype)
    if arr.dtype == np.float64:
        return out.astype(np.float64)
    return out.astype(arr.dtype, copy=False)


def _check_scan(image, name: str) -> np.ndarray:
    if image is None:
        raise InputError(f"the {name} scan is missing")
    arr = np.asarray(image)
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise InputError(f"the {name} scan must be a real numeric image, got dtype {arr.dtype}")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (3, 4))):
        raise InputError(
            f"the {name} scan must be (rows, cols) or (rows, cols, 3|4) RGB(A), got shape {arr.shape}"
        )
    if arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[..., :3]
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        raise InputError(f"the {name} scan contains NaN or infinite values")
    return arr


def _grey(arr: np.ndarray) -> np.ndarray:
    """Luminance as float32 (the scale does not matter for normalised correlation)."""
    a = arr.astype(np.float32, copy=False)
    if a.ndim == 3:
        a = a @ np.asarray([0.2125, 0.7154, 0.0721], dtype=np.float32)
    return a


def _block_mean(grey: np.ndarray, ratio: int) -> np.ndarray:
    h, w = (grey.shape[0] // ratio) * ratio, (grey.shape[1] // ratio) * ratio
    if ratio == 1:
        return grey[:h, :w]
    return grey[:h, :w].reshape(h // ratio, ratio, w // ratio, ratio).mean(axis=(1, 3))


def _foreground_mask(grey: np.ndarray, background: str, is_rgb: bool) -> np.ndarray:
    from skimage.filters import threshold_otsu

    if background == "auto":
        background = "bright" if is_rgb else "dark"
    if background not in ("bright", "dark"):
        raise InputError(f"background must be 'auto', 'bright' or 'dark', got {background!r}")
    if float(grey.max()) == float(grey.min()):
        return np.zeros(grey.shape, dtype=bool)
    t = threshold_otsu(grey)
    return grey < t if background == "bright" else grey > t


def _box_fraction(mask: np.ndarray, rows, cols, size: int) -> np.ndarray:
    """Fraction of True in each size×size box with top-left (rows[i], cols[i]) (summed-area table)."""
    sat = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), dtype=np.int64)
    sat[1:, 1:] = np.cumsum(np.cumsum(mask, axis=0), axis=1)
    r, c = np.asarray(rows), np.asarray(cols)
    tot = sat[r + size, c + size] - sat[r, c + size] - sat[r + size, c] + sat[r, c]
    return tot / float(size * size)


def _match(region: np.ndarray, template: np.ndarray):
    """Peak of the normalised correlation of ``template`` in ``region``.

    Returns the integer peak (row, col), a parabola-vertex refinement of it
    (a cheap first guess for :func:`_subpixel`; the integer peak on the map's
    border), the peak correlation and the map's shape.
    """
    from skimage.feature import match_template

    ncc = match_template(region, template)
    flat = int(np.argmax(ncc))
    peak = tuple(int(v) for v in np.unravel_index(flat, ncc.shape))
    guess = np.asarray(peak, dtype=np.float64)
    for axis in (0, 1):
        if 0 < peak[axis] < ncc.shape[axis] - 1:
            lo, hi = list(peak), list(peak)
            lo[axis] -= 1
            hi[axis] += 1
            ym, y0, yp = ncc[tuple(lo)], ncc[peak], ncc[tuple(hi)]
            curv = ym - 2.0 * y0 + yp
            if curv < 0:
                guess[axis] += float(np.clip(0.5 * (ym - yp) / curv, -0.5, 0.5))
    return peak, guess, float(ncc.flat[flat]), ncc.shape


def _subpixel(coef: np.ndarray, patch: np.ndarray, top_left, guess, upsample_factor: int,
              iterations: int = 3) -> np.ndarray:
    """Sub-pixel (row, col) of ``patch`` in a scan near the integer ``top_left``, from ``guess``.

    ``coef``: the scan's cubic-spline coefficients (:func:`_spline`);
    ``guess``: the parabola vertex of the correlation peak. Each round samples
    the scan at the current estimate (cubic spline, from the
    surrounding pixels, so no wrap-around) and adds the residual shift that
    :func:`~skimage.registration.phase_cross_correlation` finds between the
    Tukey-windowed, mean-subtracted patches. The window removes the bias of the
    circular correlation towards the integer peak; the rounds remove the pull
    of the window itself towards zero shift. Stops when a round moves less than
    ``1 / upsample_factor``; falls back to the integer peak if the estimate
    leaves the ±1 px cell (a failed refinement).
    """
    from scipy.ndimage import map_coordinates
    from skimage.registration import phase_cross_correlation

    p = patch.shape[0]
    win = _tukey(p)
    mov = (patch - patch.mean()) * win
    start = np.asarray(top_left, dtype=np.float64)
    est = np.asarray(guess, dtype=np.float64).copy()
    grid = np.mgrid[0:p, 0:p].astype(np.float64)
    for _ in range(iterations):
        coords = grid + est[:, None, None]
        sample = map_coordinates(coef, coords, order=3, mode="mirror", prefilter=False)
        sample = (sample - sample.mean()) * win
        # the shift that moves ``mov`` onto ``sample``: where the patch's
        # content lies relative to the current estimate
        step, _, _ = phase_cross_correlation(
            sample, mov, upsample_factor=upsample_factor, normalization=None
        )
        est += step
        if np.all(np.abs(step) < 1.0 / upsample_factor):
            break
    if np.any(np.abs(est - start) > 1.0):
        return start
    return est


@lru_cache(maxsize=8)
def _tukey(size: int, alpha: float = 0.5) -> np.ndarray:
    from skimage.filters import window

    win = window(("tukey", alpha), (size, size)).astype(np.float32)
    win.setflags(write=False)
    return win


# ---------------------------------------------------------------- register


def register_iter(
    low,
    mid=None,
    high=None,
    *,
    magnifications=(4, 10, 20),
    patch_size: int = 128,
    stride: int | None = None,
    threshold: float = 0.6,
    min_foreground: float = 0.1,
    coarse_patches: int = 16,
    coarse_window: int = 32,
    fine_window: int = 6,
    upsample_factor: int = 20,
    background: str = "auto",
    max_patches: int | None = None,
    seed: int | None = 0,
) -> Iterator[RegistrationProgress]:
    """Register ``mid`` and ``high`` scans to the ``low`` scan of the same slide (paper 002 §II-B).

    A generator: yields :class:`RegistrationProgress` and returns a
    :class:`RegistrationResult` (``StopIteration.value``); :func:`register`
    runs it to the end.

    Parameters
    ----------
    low, mid, high : arrays (H, W) or (H, W, 3|4)
        Scans of one slide at ``magnifications`` (low, mid, high). ``mid`` may
        be None (low–high pairs only; then ``magnifications`` may have two
        entries, low and high).
    patch_size : low patch side in interpolated-low pixels (paper: 128; the
        mid and high patches are ``ratio`` times larger, 256 and 512).
    stride : step of the grid of candidate low patches (default patch_size).
    threshold : T, the minimum peak normalised correlation, in every scan.
    min_foreground : minimum fraction of foreground pixels in the low patch.
    coarse_patches, coarse_window : n random patches and the redundancy Δr
        (LR px) of the coarse step.
    fine_window : the redundancy ΔR (LR px) around the coarse position.
    upsample_factor : sub-pixel precision 1/upsample_factor LR px.
    background : "bright" (bright-field), "dark" (fluorescence) or "auto".
    max_patches : register a random subset of at most this many candidates.
    seed : for the coarse and subset draws.
    """
    low = _check_scan(low, "low")
    high = _check_scan(high, "high")
    scans = {"hr": high}
    if mid is not None:
        scans = {"mr": _check_scan(mid, "mid"), "hr": high}
    mags = [float(m) for m in magnifications]
    if mid is None and len(mags) == 3:
        mags = [mags[0], mags[2]]
    if len(mags) != 1 + len(scans) or min(mags) <= 0 or sorted(mags) != mags or len(set(mags)) != len(mags):
        raise InputError(
            f"magnifications must be increasing positive numbers for the low, "
            f"{'mid, ' if mid is not None else ''}high scans, got {list(magnifications)}"
        )
    p = int(patch_size)
    if p < 8:
        raise InputError(f"patch_size must be at least 8 px, got {patch_size}")
    step = p if stride is None else int(stride)
    if step < 1:
        raise InputError(f"stride must be positive, got {stride}")
    if not (-1.0 <= threshold <= 1.0):
        raise InputError(f"threshold T is a correlation in [-1, 1], got {threshold}")
    if not (0.0 <= min_foreground <= 1.0):
        raise InputError(f"min_foreground is a fraction in [0, 1], got {min_foreground}")
    if coarse_window < 1 or fine_window < 1 or coarse_patches < 1 or upsample_factor < 1:
        raise InputError("coarse_patches, coarse_window, fine_window, upsample_factor must be >= 1")

    lr_mag = integer_ratio_magnification(mags[0], mags[1:])
    ratios = {t: round(m / lr_mag) for t, m in zip(scans, mags[1:])}
    factor = lr_mag / mags[0]
    lr = interpolate_to_ratio(low, factor)
    h, w = lr.shape[:2]
    if h < p or w < p:
        raise InputError(
            f"the low scan (interpolated to {lr_mag:g}x: {h}x{w} px) is smaller than one "
            f"{p} px patch; use a smaller patch_size"
        )
    lr_grey = _grey(lr)
    refs = {}
    for t, scan in scans.items():
        refs[t] = _block_mean(_grey(scan), ratios[t])
        rh, rw = refs[t].shape
        if rh < p or rw < p:
            raise InputError(
                f"the {'mid' if t == 'mr' else 'high'} scan ({scan.shape[0]}x{scan.shape[1]} px) "
                f"is smaller than one {p * ratios[t]} px patch"
            )
    fg = _foreground_mask(lr_grey, background, low.ndim == 3)
    rng = np.random.default_rng(seed)

    # ---- coarse: n random foreground patches, each searched within ±Δr
    pc = p
    tries = max(64, 16 * coarse_patches)
    cr = rng.integers(0, h - pc + 1, size=tries)
    cc = rng.integers(0, w - pc + 1, size=tries)
    cfg = _box_fraction(fg, cr, cc, pc)
    order = np.argsort(-(cfg >= min_foreground).astype(int), kind="stable")[:coarse_patches]
    coarse = {}
    total = len(order) * len(scans)
    done = 0
    for t, ref in refs.items():
        offs, cors = [], []
        rh, rw = ref.shape
        for i in order:
            r, c = int(cr[i]), int(cc[i])
            r0, c0 = max(0, r - coarse_window), max(0, c - coarse_window)
            r1, c1 = min(rh, r + pc + coarse_window), min(rw, c + pc + coarse_window)
            done += 1
            yield RegistrationProgress(done, total, "coarse")
            if r1 - r0 < pc or c1 - c0 < pc:
                continue
            (pr, pcl), _, corr, _ = _match(ref[r0:r1, c0:c1], lr_grey[r : r + pc, c : c + pc])
            if cfg[i] >= min_foreground and corr >= threshold:
                offs.append((r0 + pr - r, c0 + pcl - c))
                cors.append(corr)
        name = "mid" if t == "mr" else "high"
        if not offs:
            raise InputError(
                f"coarse registration of the {name} scan failed: none of {len(order)} patches "
                f"correlates above T={threshold} within ±{coarse_window} LR px; check the "
                f"magnifications, lower the threshold or widen the coarse window"
            )
        offs_a = np.asarray(offs, dtype=np.float64)
        med = np.median(offs_a, axis=0)
        close = np.all(np.abs(offs_a - med) <= 2.0, axis=1)
        if not close.any():  # e.g. two matches far apart: their median is neither
            raise InputError(
                f"coarse registration of the {name} scan failed: the {len(offs)} matching "
                f"patches disagree on the offset (none within 2 LR px of their median); use "
                f"more coarse patches, a higher threshold or check the magnifications"
            )
        mean = offs_a[close].mean(axis=0)
        coarse[t] = {
            "offset": [round(float(v), 3) for v in mean],
            "patches": len(offs),
            "inliers": int(close.sum()),
            "correlation": round(float(np.mean(cors)), 4),
        }

    # ---- fine: each grid patch within ±ΔR of its coarse position; the grid
    # covers the part of the low scan whose search windows lie inside every scan
    lo, hi = np.zeros(2, dtype=int), np.array([h - p, w - p])
    coefs = {}
    for t, ref in refs.items():
        shift = np.round(coarse[t]["offset"]).astype(int)
        lo = np.maximum(lo, fine_window - shift)
        hi = np.minimum(hi, np.array(ref.shape) - shift - p - fine_window)
        coefs[t] = _spline(ref)
    rows = np.arange(lo[0], hi[0] + 1, step)
    cols = np.arange(lo[1], hi[1] + 1, step)
    gr, gc = (a.ravel() for a in np.meshgrid(rows, cols, indexing="ij"))
    if max_patches is not None and len(gr) > int(max_patches):
        pick = np.sort(rng.choice(len(gr), size=int(max_patches), replace=False))
        gr, gc = gr[pick], gc[pick]
    fracs = _box_fraction(fg, gr, gc, p)
    matches = []
    n = len(gr)
    for k in range(n):
        r, c = int(gr[k]), int(gc[k])
        m = PatchMatch(lr=(r, c), foreground=float(fracs[k]))
        matches.append(m)
        if fracs[k] < min_foreground:
            m.reason = "foreground"
        else:
            patch = lr_grey[r : r + p, c : c + p]
            for t, ref in refs.items():
                reason = _fine(m, t, patch, ref, coefs[t], coarse[t]["offset"], fine_window, threshold,
                               upsample_factor, ratios[t], scans[t].shape, p)
                if reason:
                    m.reason = reason
                    break
        yield RegistrationProgress(k + 1, n, "fine")

    report = _report(
        matches, coarse, ratios, p, lr_mag, factor, mags, lr.shape,
        {
            "stride": step, "threshold": threshold, "min_foreground": min_foreground,
            "coarse_patches": coarse_patches, "coarse_window": coarse_window,
            "fine_window": fine_window, "upsample_factor": upsample_factor,
            "background": background, "max_patches": max_patches, "seed": seed,
        },
    )
    return RegistrationResult(lr, scans, ratios, p, matches, report)


def _spline(ref: np.ndarray) -> np.ndarray:
    """Cubic-spline coefficients of ``ref``, computed once per scan for :func:`_subpixel`."""
    from scipy.ndimage import spline_filter

    return spline_filter(ref, order=3, mode="mirror", output=np.float32)


def _fine(m, t, patch, ref, coef, coarse_offset, window, threshold, upsample, ratio, scan_shape, p):
    """Register one low ``patch`` in ``ref`` (scan ``t`` at low scale); fill ``m``; return a reason or None."""
    r, c = m.lr
    base_r = r + round(coarse_offset[0])
    base_c = c + round(coarse_offset[1])
    r0, c0 = base_r - window, base_c - window
    r1, c1 = base_r + p + window, base_c + p + window
    if r0 < 0 or c0 < 0 or r1 > ref.shape[0] or c1 > ref.shape[1]:
        return "outside"
    (pr, pc), guess, corr, shape = _match(ref[r0:r1, c0:c1], patch)
    m.correlation[t] = corr
    if corr < threshold:
        return "threshold"
    if pr in (0, shape[0] - 1) or pc in (0, shape[1] - 1):
        return "window"  # the best match may lie beyond ΔR
    found = _subpixel(coef, patch, (r0 + pr, c0 + pc), guess + (r0, c0), upsample)
    off = found - np.array([r, c], dtype=np.float64)
    m.offset[t] = (float(off[0]), float(off[1]))
    pos = (round(ratio * (r + off[0])), round(ratio * (c + off[1])))
    q = p * ratio
    if pos[0] < 0 or pos[1] < 0 or pos[0] + q > scan_shape[0] or pos[1] + q > scan_shape[1]:
        return "outside"
    m.position[t] = pos
    return None


def _report(matches, coarse, ratios, p, lr_mag, factor, mags, lr_shape, params) -> dict:
    reasons = ("foreground", "threshold", "window", "outside")
    rejected = {k: sum(m.reason == k for m in matches) for k in reasons}
    kept = [m for m in matches if m.kept]
    summary = {}
    for t in ratios:
        if kept:
            off = np.asarray([m.offset[t] for m in kept])
            cor = np.asarray([m.correlation[t] for m in kept])
            summary[t] = {
                "offset_mean": [round(float(v), 4) for v in off.mean(axis=0)],
                "offset_std": [round(float(v), 4) for v in off.std(axis=0)],
                "correlation_mean": round(float(cor.mean()), 4),
                "correlation_min": round(float(cor.min()), 4),
            }
    names = ["low"] + (["mid"] if "mr" in ratios else []) + ["high"]
    return {
        "format": REPORT_FORMAT,
        "paper": "Ma et al. 2020, PathSRGAN, section II-B",
        "units": "offsets in interpolated-low pixels (row, col); positions in each scan's pixels",
        "magnifications": dict(zip(names, mags)),
        "low_interpolated_to": lr_mag,
        "low_interpolation_factor": factor,
        "low_interpolated_shape": [int(v) for v in lr_shape[:2]],
        "ratios": {t: int(v) for t, v in ratios.items()},
        "patch_size": {"lr": p, **{t: p * v for t, v in ratios.items()}},
        "params": params,
        "coarse": coarse,
        "candidates": len(matches),
        "kept": len(kept),
        "rejected": rejected,
        "summary": summary,
        "patches": [m.as_dict() for m in matches],
    }


def register(low, mid=None, high=None, *, progress: Callable | None = None, **kwargs):
    """Run :func:`register_iter` to the end; ``progress(event)`` is called for each event."""
    return run_to_end(register_iter(low, mid, high, **kwargs), progress)


# ------------------------------------------------------------------ write


def _is_pairs_folder(path: Path) -> bool:
    try:
        return json.loads((path / "report.json").read_text()).get("format") == REPORT_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def _check_output(out, overwrite: bool) -> Path:
    """Refuse an output that is a file, or a non-empty folder we may not replace."""
    out = Path(out)
    if out.exists():
        if not out.is_dir():
            raise InputError(f"output {out} exists and is not a folder")
        if any(out.iterdir()):
            if not overwrite:
                raise InputError(
                    f"output folder {out} exists and is not empty; use a new folder or overwrite"
                )
            if not _is_pairs_folder(out):
                raise InputError(
                    f"output folder {out} is not a pairs folder (no report.json); not replacing it"
                )
    return out


def write_pairs_iter(result: RegistrationResult, out, *, overwrite: bool = False,
                     pixel_size: float | None = None):
    """Write the kept pairs as TIFFs plus ``report.json`` into the folder ``out``.

    The folder is assembled beside ``out`` and renamed into place
    (:func:`napari_resolve._atomic.atomic_path`): a failure or Ctrl-C leaves no
    partial folder. An existing non-empty ``out`` is replaced only with
    ``overwrite=True`` and only if it is a pairs folder written by this
    function. ``pixel_size``: the high scan's pixel size in µm, if known; each
    kind's pixel size follows from the magnifications and is stored in its
    OME-TIFFs and the report. Yields :class:`RegistrationProgress` (stage
    ``"write"``), returns the folder's path.
    """
    from napari_resolve._atomic import atomic_path
    from napari_resolve.io import write_image

    out = _check_output(out, overwrite)
    n = len(result)
    if n == 0:
        raise InputError(
            f"no pairs kept out of {len(result.matches)} candidates (rejected: "
            f"{result.report['rejected']}); lower the threshold or min_foreground"
        )
    kinds = ("lr", *result.scans)
    sizes = {k: None for k in kinds}
    if pixel_size is not None:
        if not (np.isfinite(pixel_size) and pixel_size > 0):
            raise InputError(f"pixel_size must be a positive number of µm, got {pixel_size}")
        top = max(result.ratios.values())  # the high scan's ratio to the low grid
        sizes = {"lr": pixel_size * top, **{t: pixel_size * top / r for t, r in result.ratios.items()}}
    width = max(5, len(str(n)))
    report = dict(result.report)
    kept_idx = [i for i, m in enumerate(result.matches) if m.kept]
    names = [f"{i + 1:0{width}d}.tif" for i in range(n)]
    report["files"] = {"layout": "<kind>/<name>", "kinds": list(kinds), "count": n}
    report["pixel_size_um"] = sizes
    patches = [dict(d) for d in report["patches"]]
    for name, i in zip(names, kept_idx):
        patches[i]["file"] = name
    report["patches"] = patches
    with atomic_path(out, suffix="") as tmp:
        for kind in kinds:
            (tmp / kind).mkdir(parents=True)
        for k, name in enumerate(names):
            for kind, arr in result[k].items():
                write_image(tmp / kind / name, np.ascontiguousarray(arr), pixel_size=sizes[kind])
            yield RegistrationProgress(k + 1, n, "write")
        (tmp / "report.json").write_text(json.dumps(report, indent=1))
    return out


def write_pairs(result: RegistrationResult, out, *, overwrite: bool = False,
                pixel_size: float | None = None, progress=None) -> Path:
    """Run :func:`write_pairs_iter` to the end."""
    return run_to_end(write_pairs_iter(result, out, overwrite=overwrite, pixel_size=pixel_size), progress)


def build_dataset_iter(low, mid, high, out, *, overwrite: bool = False,
                       pixel_size: float | None = None, **kwargs):
    """Register, then write the pairs folder; yields progress, returns (result, path).

    ``kwargs`` go to :func:`register_iter`; ``pixel_size`` (the high scan's,
    µm) to :func:`write_pairs_iter`.
    """
    out = _check_output(out, overwrite)  # fail before the long registration
    result = yield from register_iter(low, mid, high, **kwargs)
    path = yield from write_pairs_iter(result, out, overwrite=overwrite, pixel_size=pixel_size)
    return result, path


def build_dataset(low, mid, high, out, *, overwrite: bool = False, pixel_size=None,
                  progress=None, **kwargs):
    """Run :func:`build_dataset_iter` to the end; returns (result, path)."""
    gen = build_dataset_iter(low, mid, high, out, overwrite=overwrite, pixel_size=pixel_size, **kwargs)
    return run_to_end(gen, progress)
