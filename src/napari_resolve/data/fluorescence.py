"""Simulated fluorescence microscopy: ground truth, wide-field image, camera noise.

Paper 003 (MHTCUN) trains on BioSR (wide-field → SIM pairs of F-actin,
microtubules, clathrin-coated pits, ER). Those data are not shipped here, so
``mhtcun-lite`` is trained on a simulator that renders the same kinds of
structures:

* **filaments / microtubules**: worm-like chains (smooth random curves with a
  persistence length), a few µm long;
* **vesicles / CCPs**: hollow rings of 40–90 nm radius (clathrin-coated pits
  are ~100–200 nm across) and a few solid blobs;
* **ER**: a polygonal tubular network (Delaunay edges of random points, a
  subset kept, gently bent) plus faint sheets.

Each structure is splatted as a point density on the target (HR) grid with
bilinear weights (anti-aliased, sub-pixel). Optics:

* the **wide-field** image is the object convolved with the Airy PSF of the
  objective, ``I(r) = (2 J1(v)/v)²``, ``v = 2π·NA·r/λ`` (FWHM ≈ 0.51 λ/NA),
  integrated over each pixel, or its Gaussian approximation σ = 0.21 λ/NA
  (Zhang, Zerubia & Olivo-Marin 2007);
* the camera integrates ``scale × scale`` target pixels into one (binning),
  then **Poisson** shot noise on the expected photon count (peak ``photons``
  plus a ``background``) and **Gaussian** read noise (σ ``read_noise``, in
  photo-electrons);
* the **HR target** is the object seen through a PSF ``hr_gain`` times
  narrower (NA × ``hr_gain``): ``hr_gain=2`` mimics linear SIM (twice the
  OTF support, as BioSR's targets); ``hr_gain=None`` returns the object itself;
* **out-of-focus haze** (``haze > 0``, issue 13): a wide-field image of a
  thick cell also collects the light of structures above and below the
  focal plane, which SIM's and STORM's optical sectioning leave out. It is
  modelled as a second, independent draw of the same structures (the
  out-of-plane layers), weighted by a smooth random thickness envelope (a
  logistic of Gaussian-filtered noise, 4× the haze's σ: thick cell body,
  thin periphery) and blurred by a Gaussian of ``haze_sigma`` LR px, making
  up the share ``haze`` of the wide-field signal; the HR target does not
  contain it. (A 3D PSF would need the axial positions the 2D simulator does
  not have; a Gaussian is the far-defocus limit of the wide-field PSF.)

Everything is drawn from one ``numpy.random.Generator`` so a seed gives the
same sample. A 256×256 target takes a few tens of milliseconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage, special

from napari_resolve.errors import InputError

__all__ = [
    "pairs_degradation",
    "FluorescenceSample",
    "airy_psf",
    "gaussian_psf",
    "psf",
    "psf_fwhm",
    "render_structures",
    "widefield",
    "camera",
    "simulate",
    "simulate_pairs",
    "STRUCTURES",
    "calibrated_pairs",
]

STRUCTURES = ("microtubules", "vesicles", "er")


@dataclass
class FluorescenceSample:
    """One simulated pair.

    ``hr`` (float32, peak 1, noise-free) on the target grid of
    ``hr_pixel_size`` nm; ``lr`` (float32, photo-electrons, noisy) on the
    camera grid of ``lr_pixel_size = scale * hr_pixel_size`` nm; ``truth`` the
    object density before any optics; ``meta`` every parameter used.
    """

    hr: np.ndarray
    lr: np.ndarray
    truth: np.ndarray
    hr_pixel_size: float
    lr_pixel_size: float
    scale: int
    meta: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- PSFs
def psf_fwhm(wavelength: float, na: float, kind: str = "airy") -> float:
    """FWHM (same unit as ``wavelength``) of the wide-field PSF: 0.514 λ/NA (Airy)."""
    if kind == "gaussian":
        return 2.0 * math.sqrt(2.0 * math.log(2.0)) * 0.21 * wavelength / na
    return 0.5145 * wavelength / na


def _check_optics(wavelength, na, pixel_size):
    for name, v in (("wavelength", wavelength), ("NA", na), ("pixel size", pixel_size)):
        if not (np.isfinite(v) and v > 0):
            raise InputError(f"{name} must be a positive number, got {v}")


def airy_psf(
    wavelength: float,
    na: float,
    pixel_size: float,
    radius_px: int | None = None,
    oversample: int = 5,
) -> np.ndarray:
    """Airy intensity PSF sampled on pixels of ``pixel_size`` (same unit as λ), sum 1.

    Each pixel is the mean over ``oversample²`` sub-pixel points (pixel
    integration). The default half-width covers 2 λ/NA (past the third ring).
    """
    _check_optics(wavelength, na, pixel_size)
    if radius_px is None:
        radius_px = max(2, int(math.ceil(2.0 * wavelength / na / pixel_size)))
    n = 2 * radius_px + 1
    sub = (np.arange(n * oversample) + 0.5) / oversample - n / 2.0
    r = np.hypot(sub[:, None], sub[None, :]) * pixel_size
    v = 2.0 * math.pi * na * r / wavelength
    with np.errstate(invalid="ignore", divide="ignore"):
        amp = np.where(v > 1e-9, 2.0 * special.j1(v) / v, 1.0)
    inten = (amp * amp).reshape(n, oversample, n, oversample).mean(axis=(1, 3))
    return (inten / inten.sum()).astype(np.float64)


def gaussian_psf(
    wavelength: float, na: float, pixel_size: float, radius_px: int | None = None
) -> np.ndarray:
    """Gaussian approximation of the wide-field PSF, σ = 0.21 λ/NA, sum 1."""
    _check_optics(wavelength, na, pixel_size)
    sigma = 0.21 * wavelength / na / pixel_size
    if radius_px is None:
        radius_px = max(2, int(math.ceil(4.0 * sigma)))
    ax = np.arange(-radius_px, radius_px + 1, dtype=np.float64)
    g = np.exp(-(ax**2) / (2 * sigma * sigma))
    k = np.outer(g, g)
    return k / k.sum()


def psf(wavelength: float, na: float, pixel_size: float, kind: str = "airy") -> np.ndarray:
    """The PSF of ``kind`` ("airy" or "gaussian") on pixels of ``pixel_size``."""
    if kind == "airy":
        return airy_psf(wavelength, na, pixel_size)
    if kind == "gaussian":
        return gaussian_psf(wavelength, na, pixel_size)
    raise InputError(f"psf kind must be 'airy' or 'gaussian', got {kind!r}")


# --------------------------------------------------------------------------- structures
def _splat(shape, ys, xs, ws) -> np.ndarray:
    """Bilinear splat of weighted points (pixel units, centres at integers)."""
    h, w = shape
    y0 = np.floor(ys).astype(np.int64)
    x0 = np.floor(xs).astype(np.int64)
    fy, fx = ys - y0, xs - x0
    out = np.zeros(h * w, dtype=np.float64)
    for dy, wy in ((0, 1.0 - fy), (1, fy)):
        for dx, wx in ((0, 1.0 - fx), (1, fx)):
            yy, xx = y0 + dy, x0 + dx
            ok = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
            out += np.bincount((yy[ok] * w + xx[ok]), weights=(ws * wy * wx)[ok], minlength=h * w)
    return out.reshape(h, w)


def _worm(rng, start, length_px, persistence_px, step=0.5):
    """A worm-like chain: directions change by N(0, step/persistence) radians per step."""
    n = max(2, int(length_px / step))
    theta0 = rng.uniform(0, 2 * math.pi)
    dtheta = rng.normal(0.0, math.sqrt(step / persistence_px), n)
    theta = theta0 + np.cumsum(dtheta)
    ys = start[0] + np.cumsum(step * np.sin(theta))
    xs = start[1] + np.cumsum(step * np.cos(theta))
    return ys, xs


def _microtubules(rng, shape, px_nm, density):
    h, w = shape
    area_um2 = h * w * (px_nm / 1000.0) ** 2
    count = max(1, rng.poisson(density * 0.6 * area_um2))
    ys_all, xs_all, ws_all = [], [], []
    for _ in range(count):
        length = rng.uniform(3.0, 15.0) * 1000.0 / px_nm  # 3-15 µm
        persist = rng.uniform(5.0, 30.0) * 1000.0 / px_nm  # bends over 5-30 µm
        start = (rng.uniform(-0.1 * h, 1.1 * h), rng.uniform(-0.1 * w, 1.1 * w))
        ys, xs = _worm(rng, start, length, persist)
        ys_all.append(ys)
        xs_all.append(xs)
        ws_all.append(np.full(ys.shape, rng.uniform(0.5, 1.0)))
    return _splat(shape, np.concatenate(ys_all), np.concatenate(xs_all), np.concatenate(ws_all))


def _vesicles(rng, shape, px_nm, density):
    h, w = shape
    area_um2 = h * w * (px_nm / 1000.0) ** 2
    count = max(1, rng.poisson(density * 1.5 * area_um2))
    cy, cx = rng.uniform(0, h, count), rng.uniform(0, w, count)
    radius = rng.uniform(40.0, 90.0, count) / px_nm
    bright = rng.uniform(0.4, 1.0, count)
    solid = rng.random(count) < 0.25  # some filled blobs (endosomes), most hollow rings (CCPs)
    ys_all, xs_all, ws_all = [], [], []
    for y, x, r, b, s in zip(cy, cx, radius, bright, solid):
        n = max(8, int(2 * math.pi * r * 4))
        t = rng.uniform(0, 2 * math.pi, n)
        rr = r * np.sqrt(rng.random(n)) if s else r * (1.0 + 0.1 * rng.standard_normal(n))
        ys_all.append(y + rr * np.sin(t))
        xs_all.append(x + rr * np.cos(t))
        # equal total brightness per vesicle, spread over its points
        ws_all.append(np.full(n, b * 2 * math.pi * r / n * 2.0))
    return _splat(shape, np.concatenate(ys_all), np.concatenate(xs_all), np.concatenate(ws_all))


def _er(rng, shape, px_nm, density):
    from scipy.spatial import Delaunay

    h, w = shape
    area_um2 = h * w * (px_nm / 1000.0) ** 2
    count = max(4, rng.poisson(density * 2.0 * area_um2))
    pts = np.column_stack(
        [rng.uniform(-0.05 * h, 1.05 * h, count), rng.uniform(-0.05 * w, 1.05 * w, count)]
    )
    edges = set()
    for simplex in Delaunay(pts).simplices:
        for a, b in ((0, 1), (1, 2), (0, 2)):
            i, j = sorted((int(simplex[a]), int(simplex[b])))
            edges.add((i, j))
    edges = sorted(edges)
    keep = rng.random(len(edges)) < 0.65  # open polygons, as the ER's three-way junctions
    ys_all, xs_all, ws_all = [], [], []
    for (i, j), k in zip(edges, keep):
        if not k:
            continue
        p, q = pts[i], pts[j]
        length = float(np.hypot(*(q - p)))
        n = max(2, int(length * 2))
        t = np.linspace(0.0, 1.0, n)
        normal = np.array([-(q - p)[1], (q - p)[0]]) / max(length, 1e-9)
        bend = rng.normal(0.0, 0.08) * length  # tubules are gently curved
        curve = (
            p[None] + t[:, None] * (q - p)[None] + (4 * t * (1 - t) * bend)[:, None] * normal[None]
        )
        ys_all.append(curve[:, 0])
        xs_all.append(curve[:, 1])
        ws_all.append(np.full(n, 0.6 * length / n * 2.0))
    tubules = _splat(shape, np.concatenate(ys_all), np.concatenate(xs_all), np.concatenate(ws_all))
    # faint sheets: a smooth random field, thresholded
    field_ = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=max(h, w) / 12.0)
    field_ /= field_.std() + 1e-12
    sheets = np.clip(field_ - 1.5, 0.0, None) * 0.15
    return tubules + sheets


_RENDER = {
    "microtubules": _microtubules,
    "filaments": _microtubules,
    "vesicles": _vesicles,
    "er": _er,
}


def render_structures(
    shape, pixel_size: float, structures=STRUCTURES, density: float = 1.0, rng=None
) -> np.ndarray:
    """Object density (float64, ≥ 0) of the given ``structures`` on a grid of ``pixel_size`` nm.

    ``density`` scales the number of objects per µm² (1 = a moderately
    crowded cell region).
    """
    rng = np.random.default_rng(rng)
    if isinstance(structures, str):
        structures = (structures,)
    unknown = [s for s in structures if s not in _RENDER]
    if unknown or not structures:
        raise InputError(f"unknown structure(s) {unknown}; choose from {sorted(_RENDER)}")
    obj = np.zeros(tuple(int(s) for s in shape), dtype=np.float64)
    for name in structures:
        obj += _RENDER[name](rng, obj.shape, float(pixel_size), float(density))
    return obj


# --------------------------------------------------------------------------- optics + camera
def widefield(
    obj: np.ndarray, wavelength: float, na: float, pixel_size: float, kind: str = "airy"
) -> np.ndarray:
    """``obj`` convolved with the wide-field PSF (same grid, edges reflected)."""
    k = psf(wavelength, na, pixel_size, kind)
    r = k.shape[0] // 2
    padded = np.pad(obj, r, mode="reflect")
    # linear convolution by FFT (numpy's: scipy.signal costs seconds to import)
    shape = (padded.shape[0] + 2 * r, padded.shape[1] + 2 * r)
    full = np.fft.irfft2(np.fft.rfft2(padded, shape) * np.fft.rfft2(k, shape), shape)
    return full[2 * r : 2 * r + obj.shape[0], 2 * r : 2 * r + obj.shape[1]]


def camera(
    image: np.ndarray, scale: int, photons: float, background: float, read_noise: float, rng=None
) -> np.ndarray:
    """Bin ``scale × scale`` pixels, scale to photons, add Poisson and Gaussian noise.

    The binned image is scaled so its brightest pixel expects ``photons``
    photo-electrons above ``background``. Returns float32 counts.
    """
    rng = np.random.default_rng(rng)
    h, w = (image.shape[0] // scale) * scale, (image.shape[1] // scale) * scale
    binned = image[:h, :w].reshape(h // scale, scale, w // scale, scale).sum(axis=(1, 3))
    peak = binned.max()
    expected = background + photons * (binned / peak if peak > 0 else binned)
    counts = rng.poisson(np.clip(expected, 0.0, None)).astype(np.float64)
    if read_noise > 0:
        counts += rng.normal(0.0, read_noise, counts.shape)
    return counts.astype(np.float32)


def simulate(
    shape=(256, 256),
    scale: int = 2,
    *,
    structures=STRUCTURES,
    pixel_size: float = 31.3,
    wavelength: float = 520.0,
    na: float = 1.3,
    psf_kind: str = "airy",
    hr_gain: float | None = 2.0,
    photons: float = 200.0,
    background: float = 10.0,
    read_noise: float = 2.0,
    density: float = 1.0,
    haze: float = 0.0,
    haze_sigma: float = 8.0,
    seed=None,
) -> FluorescenceSample:
    """One (HR, LR) pair of simulated fluorescence.

    Parameters
    ----------
    shape : (int, int)
        HR (target) size in pixels; cropped to a multiple of ``scale``.
    scale : int
        Camera pixel / target pixel; ``lr`` has ``shape // scale``.
    pixel_size : float
        HR pixel size in nm (default 31.3 nm: BioSR's SIM grid, half its
        62.6 nm wide-field camera pixel).
    wavelength, na : float
        Emission wavelength (nm) and numerical aperture of the objective.
    psf_kind : "airy" or "gaussian"
    hr_gain : float or None
        Resolution gain of the target over wide field (2 = SIM-like), or
        None for the bare object.
    photons, background, read_noise : float
        Peak expected signal, constant background (photo-electrons) and the
        read noise σ of the LR camera.
    structures : sequence of "microtubules" / "filaments", "vesicles", "er"
    density : float
        Objects per area relative to the default.
    haze, haze_sigma : float
        Share (0 to <1) of the wide-field signal that is out-of-focus light,
        and the Gaussian σ of that light in LR (camera) pixels; see the
        module docstring. ``haze=0`` draws nothing extra (the same sample as
        before the option existed).
    seed : int, sequence or numpy Generator
    """
    rng = np.random.default_rng(seed)
    scale = int(scale)
    if scale < 1:
        raise InputError(f"scale must be a positive integer, got {scale}")
    h, w = (int(shape[0]) // scale) * scale, (int(shape[1]) // scale) * scale
    if h < 4 * scale or w < 4 * scale:
        raise InputError(f"shape {tuple(shape)} is too small for scale {scale}")
    _check_optics(wavelength, na, pixel_size)
    if not 0.0 <= float(haze) < 1.0 or float(haze_sigma) <= 0:
        raise InputError(f"haze must be in [0, 1) and haze_sigma > 0, got {haze}, {haze_sigma}")
    obj = render_structures((h, w), pixel_size, structures, density, rng)
    wf = widefield(obj, wavelength, na, pixel_size, psf_kind)
    if haze > 0:
        layers = render_structures((h, w), pixel_size, structures, density, rng)
        # the cell is thick in places and thin or absent in others: a smooth random
        # thickness envelope (4x the haze's sigma) weights the out-of-plane layers;
        # without it the blurred layers are a near-flat offset that normalisation removes
        sigma_hr = float(haze_sigma) * scale
        field = ndimage.gaussian_filter(rng.standard_normal((h, w)), 4.0 * sigma_hr, mode="reflect")
        envelope = special.expit(2.0 * (field - field.mean()) / max(field.std(), 1e-12))
        out_of_focus = ndimage.gaussian_filter(layers * envelope, sigma_hr, mode="reflect")
        # the shares are of the mean signal, so the in-focus image keeps its own contrast
        wf_mean, oof_mean = max(wf.mean(), 1e-12), max(out_of_focus.mean(), 1e-12)
        wf = (1.0 - haze) * wf + haze * out_of_focus * (wf_mean / oof_mean)
    lr = camera(wf, scale, photons, background, read_noise, rng)
    hr = (
        obj
        if hr_gain is None
        else widefield(obj, wavelength, na * float(hr_gain), pixel_size, psf_kind)
    )
    hr = np.clip(hr, 0.0, None)
    hr = (hr / max(hr.max(), 1e-12)).astype(np.float32)
    meta = {
        "structures": list(structures) if not isinstance(structures, str) else [structures],
        "wavelength_nm": float(wavelength), "na": float(na), "psf": psf_kind,
        "hr_gain": hr_gain, "photons": float(photons), "background": float(background),
        "read_noise": float(read_noise), "density": float(density),
        "haze": float(haze), "haze_sigma_lr_px": float(haze_sigma),
        "widefield_fwhm_nm": psf_fwhm(wavelength, na, psf_kind),
    }  # fmt: skip
    return FluorescenceSample(
        hr, lr, obj.astype(np.float32), float(pixel_size), float(pixel_size) * scale, scale, meta
    )


def simulate_pairs(n: int, shape=(256, 256), scale: int = 2, seed=0, **kwargs):
    """``n`` independent samples; sample ``i`` uses the seed sequence ``[seed, i]``.

    Photon counts vary per sample (×0.5 to ×2 of ``photons``) unless
    ``vary_photons=False``, so a model sees several signal levels.
    """
    vary = kwargs.pop("vary_photons", True)
    base = float(kwargs.pop("photons", 200.0))
    out = []
    for i in range(int(n)):
        rng = np.random.default_rng([int(seed), i])
        photons = base * (2.0 ** rng.uniform(-1, 1)) if vary else base
        out.append(simulate(shape, scale, photons=photons, seed=rng, **kwargs))
    return out


def pairs_degradation(n: int, scale: int = 2, *, pixel_size: float = 31.3, wavelength: float = 520.0,
                      na: float = 1.3, photons: float = 200.0, background: float = 10.0,
                      read_noise: float = 2.0, hr_gain: float = 2.0, psf_kind: str = "airy") -> dict:
    """Bundle ``degradation`` metadata for a model trained on :func:`simulate_pairs`.

    ``kind`` stays ``"paired"`` (the model saw simulated LR/HR pairs), with the
    simulator's parameters, and ``for_hr_only``: the
    :func:`napari_resolve.data.datasets.degrade` spec that makes matching LR
    inputs from HR-only images when the model is fine-tuned (the same optics,
    binning and noise; the PSF approximated by the Gaussian of the same σ, and
    the photon count fixed at the middle of the simulated range).
    """
    scale = int(scale)
    return {
        "kind": "paired",
        "scale": scale,
        "data": f"{int(n)} simulated fluorescence pairs (napari_resolve.data.fluorescence)",
        "simulator": {
            "pixel_size_nm": pixel_size, "wavelength_nm": wavelength, "na": na,
            "psf": psf_kind, "hr_gain": hr_gain, "photons": f"{photons:g} x 2^U(-1, 1)",
            "background": background, "read_noise": read_noise,
        },
        "for_hr_only": {
            "kind": "widefield", "scale": scale, "pixel_size": pixel_size,
            "wavelength": wavelength, "na": na, "hr_gain": hr_gain, "photons": photons,
            "background": background, "read_noise": read_noise,
        },
    }



def calibrated_pairs(n: int, scale: int, shape=(128, 128), seed=0, calibration: dict | None = None):
    """``n`` pairs drawn over the ranges of a camera/PSF calibration (issue 13).

    ``calibration`` (default :data:`napari_resolve.data.camera.TRAINING_RANGES`
    for ``scale``) gives, per sample, log-uniform ranges of the peak signal
    ``photons`` and ``background`` (photo-electrons), a uniform range of the
    read noise σ and of the wide-field FWHM in LR (camera) pixels, and the
    target's resolution gain ``hr_gain`` (2: SIM-like; 4: STORM-like). The
    FWHM is realised with the Airy PSF of 520 nm / NA 1.3 (206 nm) by choosing
    the HR pixel size, so only the FWHM in pixels matters. Each sample shows 1–3
    of :data:`STRUCTURES`, so a model sees vesicles and ER as well as
    filaments (generalisation beyond the one real field of each data set).
    A calibration with ``haze`` (uniform range of the out-of-focus share) and
    ``haze_sigma_lr_px`` (uniform range of its σ) adds out-of-focus light
    (:func:`simulate`); without these keys there is none.
    """
    from napari_resolve.data.camera import TRAINING_RANGES

    cal = dict(TRAINING_RANGES[int(scale)] if calibration is None else calibration)
    wavelength, na = 520.0, 1.3
    fwhm_nm = psf_fwhm(wavelength, na)
    out = []
    for i in range(int(n)):
        rng = np.random.default_rng([int(seed), i, 13])

        def logu(lo_hi):
            lo, hi = lo_hi
            return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))

        fwhm_lr = float(rng.uniform(*cal["fwhm_lr_px"]))
        k = int(rng.integers(1, len(STRUCTURES) + 1))
        structures = tuple(rng.choice(STRUCTURES, size=k, replace=False).tolist())
        haze = {}
        if "haze" in cal:  # its own stream: with or without haze, the in-focus sample is the same
            hz = np.random.default_rng([int(seed), i, 14])
            haze = {"haze": float(hz.uniform(*cal["haze"])),
                    "haze_sigma": float(hz.uniform(*cal["haze_sigma_lr_px"]))}
        out.append(simulate(
            shape, scale, structures=structures, pixel_size=fwhm_nm / (fwhm_lr * scale),
            wavelength=wavelength, na=na, hr_gain=float(cal["hr_gain"]),
            photons=logu(cal["photons"]), background=logu(cal["background"]),
            read_noise=float(rng.uniform(*cal["read_noise"])),
            density=float(rng.uniform(0.6, 1.6)), seed=rng, **haze,
        ))  # fmt: skip
    return out
