"""Simulated multi-objective scans of one slide, with known offsets.

PathSRGAN (paper 002 §II-B, §IV-A) scans each slide with three objectives,
4×/0.1 NA, 10×/0.25 NA and 20×/0.75 NA (1.465, 0.586, 0.293 µm/px), and the
three scans are offset by "non-global offsets in the vertical and horizontal
directions without distortion or rotation". :func:`simulate_scans` makes such
scans from one real image so that registration error can be measured:

* the image is the high-magnification scan (HR), its pixel size
  ``pixel_size_um`` (default 0.293 µm, the paper's 20×);
* each lower objective sees the image blurred by the in-focus Airy pattern of
  its NA (wavelength 0.55 µm by default, green, for bright-field RGB; the
  image's own blur is taken as the 0.75 NA one, so the Airy pattern of the
  lower NA is applied as it is),
* displaced by its own smooth random offset field (a global stage offset plus
  a low-frequency local component of a few HR pixels),
* integrated over its camera pixels (mean of ``high / mag`` × ``high / mag``
  HR pixels: 2 for 10×, 5 for 4×; the field is taken constant over one pixel),
* with Poisson (shot) and Gaussian (read) noise, quantised back to the image's
  dtype.

Choices the paper leaves open (it uses real scans): the PSF is the in-focus
Airy pattern (no defocus, no depth-of-field difference), one wavelength for
all colour channels, a cubic-spline offset field on a control grid of spacing
``correlation_length``, and the noise model above.

Coordinates: every scan is described on the HR pixel grid ("HR units"). A scan
pixel of size ``f`` HR pixels numbered ``i`` covers HR units ``[f·i, f·i + f)``.
The scan's offset field ``d`` maps a scan position ``u`` to the slide position
``u + d(u)`` that it images, so the content a low scan shows at ``u`` lies in
the HR image at ``u + d_low(u)``: :meth:`SimulatedScans.true_offset` returns
these displacements, which registration must recover.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from napari_resolve.errors import InputError

__all__ = ["OffsetField", "SimulatedScans", "airy_psf", "simulate_scans"]


def airy_psf(
    numerical_aperture: float,
    wavelength_um: float,
    pixel_size_um: float,
    *,
    rings: int = 4,
    oversample: int = 5,
) -> np.ndarray:
    """In-focus Airy pattern ``(2 J1(v) / v)²``, ``v = 2π·NA·r / λ``, normalised to sum 1.

    Sampled on pixels of ``pixel_size_um`` (each pixel the mean of
    ``oversample``² sub-samples) out to the ``rings``-th dark ring, which holds
    about 97 % of the energy at the default 4 rings.
    """
    from scipy.special import j1, jn_zeros

    if numerical_aperture <= 0 or wavelength_um <= 0 or pixel_size_um <= 0:
        raise InputError("numerical aperture, wavelength and pixel size must be positive")
    k = 2.0 * math.pi * numerical_aperture / wavelength_um  # v per µm
    radius_um = float(jn_zeros(1, rings)[-1]) / k
    half = max(1, math.ceil(radius_um / pixel_size_um))
    sub = (np.arange(oversample) + 0.5) / oversample - 0.5
    axis = (np.arange(-half, half + 1)[:, None] + sub[None, :]).ravel() * pixel_size_um
    r = np.hypot(axis[:, None], axis[None, :])
    v = k * r
    with np.errstate(invalid="ignore", divide="ignore"):
        amp = np.where(v > 1e-12, 2.0 * j1(v) / v, 1.0)
    intensity = np.where(r <= radius_um, amp * amp, 0.0)
    n = 2 * half + 1
    psf = intensity.reshape(n, oversample, n, oversample).mean(axis=(1, 3))
    return (psf / psf.sum()).astype(np.float64)


@dataclass
class OffsetField:
    """A smooth displacement field ``d(u) = global_shift + local(u)`` in HR pixels.

    ``local`` is a cubic-spline interpolation of independent normal values
    (standard deviation ``amplitude``) on a control grid of spacing
    ``spacing`` HR pixels; ``control`` has shape (2, rows, cols) for (dy, dx).
    """

    global_shift: tuple[float, float]
    control: np.ndarray
    spacing: float

    @classmethod
    def random(cls, shape, *, global_shift, amplitude, correlation_length, rng):
        spacing = float(correlation_length)
        rows = math.ceil(shape[0] / spacing) + 3
        cols = math.ceil(shape[1] / spacing) + 3
        control = rng.normal(0.0, float(amplitude), size=(2, rows, cols))
        return cls((float(global_shift[0]), float(global_shift[1])), control, spacing)

    def __call__(self, rows, cols) -> np.ndarray:
        """(dy, dx) at HR positions ``rows``, ``cols`` (any equal shapes): array (2, *shape)."""
        from scipy.ndimage import map_coordinates

        rows = np.asarray(rows, dtype=np.float64)
        cols = np.asarray(cols, dtype=np.float64)
        # control point k sits at HR position (k - 1) * spacing: one spare point before 0
        coords = np.stack([rows / self.spacing + 1.0, cols / self.spacing + 1.0])
        out = np.empty((2, *rows.shape), dtype=np.float64)
        for axis in (0, 1):
            local = map_coordinates(self.control[axis], coords, order=3, mode="nearest")
            out[axis] = local + self.global_shift[axis]
        return out


@dataclass
class SimulatedScans:
    """Three scans of one slide and the offset fields that displaced them.

    ``low``, ``mid``, ``high``: images at ``magnifications`` (low to high);
    ``factors``: HR pixels per scan pixel (``high/mag``); ``fields``: the
    :class:`OffsetField` of ``"low"`` and ``"mid"`` (``high`` is the slide).
    """

    low: np.ndarray
    mid: np.ndarray
    high: np.ndarray
    magnifications: tuple[float, float, float]
    numerical_apertures: tuple[float, float, float]
    pixel_size_um: tuple[float, float, float]
    factors: tuple[int, int, int]
    fields: dict = field(default_factory=dict)

    def true_offset(self, target: str, points) -> np.ndarray:
        """Where the content the low scan shows at ``points`` lies in ``target``.

        ``points``: (N, 2) positions (row, col) in HR units on the low scan;
        returns (N, 2) displacements in HR units, so that the same content is
        at ``points + result`` in the ``target`` scan ("mid" or "high"), again
        in HR units. For "mid", solves ``v + d_mid(v) = u + d_low(u)`` by
        fixed-point iteration (the fields are smooth, so it converges fast).
        """
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        slide = pts + self.fields["low"](pts[:, 0], pts[:, 1]).T
        if target == "high":
            return slide - pts
        if target != "mid":
            raise InputError(f"target must be 'mid' or 'high', got {target!r}")
        v = slide.copy()
        for _ in range(8):
            v = slide - self.fields["mid"](v[:, 0], v[:, 1]).T
        return v - pts


def _scan(image, psf, factor, offsets, rng, photons, read_noise, dtype):
    """Blur ``image`` (H, W, C float) by ``psf``, displace, integrate pixels, add noise.

    The camera pixel integral is a forward box filter of ``factor`` HR pixels
    on the blurred image, sampled (cubic spline) only at the displaced top-left
    corner of each scan pixel; the offset field is taken at the pixel's centre
    (it is constant over a few pixels), which is ``factor``² times cheaper than
    warping every HR pixel.
    """
    from scipy.ndimage import map_coordinates, uniform_filter
    from scipy.signal import fftconvolve

    h, w, channels = image.shape
    rows = factor * np.arange(h // factor, dtype=np.float64)
    cols = factor * np.arange(w // factor, dtype=np.float64)
    rr, cc = np.meshgrid(rows, cols, indexing="ij")
    centre = (factor - 1) / 2.0
    d = offsets(rr + centre, cc + centre)
    # mirror-pad by the PSF radius plus the largest displacement, so that every
    # sample lies where the convolution saw real (mirrored) slide, not zeros
    pad = psf.shape[0] // 2 + factor + int(np.ceil(np.abs(d).max())) + 4
    coords = np.stack([rr + d[0] + pad, cc + d[1] + pad])
    out = np.empty((h // factor, w // factor, channels), dtype=np.float64)
    for ch in range(channels):
        # mirror padding avoids the dark rim of zero-padded convolution
        padded = np.pad(image[..., ch], pad, mode="reflect")
        blurred = fftconvolve(padded, psf, mode="same")
        # origin -(factor // 2): output[i] = mean(blurred[i : i + factor])
        pixel = uniform_filter(blurred, size=factor, origin=-(factor // 2), mode="reflect")
        out[..., ch] = map_coordinates(pixel, coords, order=3, mode="mirror")
    out = np.clip(out, 0.0, 1.0)
    if photons:
        out = rng.poisson(out * photons).astype(np.float64)
        out += rng.normal(0.0, read_noise, size=out.shape)
        out /= photons
    return _to_dtype(np.clip(out, 0.0, 1.0), dtype)


def _to_dtype(img01, dtype):
    if np.issubdtype(dtype, np.integer):
        top = np.iinfo(dtype).max
        return np.round(img01 * top).astype(dtype)
    return img01.astype(dtype)


def simulate_scans(
    image,
    *,
    magnifications=(4, 10, 20),
    numerical_apertures=(0.1, 0.25, 0.75),
    pixel_size_um: float = 0.293,
    wavelength_um: float = 0.55,
    global_shift=None,
    max_global_shift: float = 24.0,
    local_amplitude: float = 3.0,
    correlation_length: float = 1024.0,
    photons: float = 1000.0,
    read_noise: float = 3.0,
    seed: int | None = 0,
) -> SimulatedScans:
    """Simulate low / mid / high objective scans of the slide ``image``.

    Parameters
    ----------
    image : array (H, W) or (H, W, C)
        The high-magnification scan (uint8, uint16 or float in [0, 1]). It is
        cropped to a multiple of both downsampling factors.
    magnifications, numerical_apertures : (low, mid, high)
        Objectives; ``high / low`` and ``high / mid`` must be integers (the
        paper's 4×, 10×, 20× give 5 and 2). NAs default to the paper's.
    pixel_size_um : HR pixel size (the paper's 20× scanner: 0.293 µm).
    global_shift : (dy, dx) HR pixels of the low scan's stage offset, or None
        for a random one, uniform in ±``max_global_shift`` per axis (the mid
        scan always gets a random one).
    local_amplitude, correlation_length : the non-global part of each offset
        field: standard deviation (HR px) of its control values and their
        spacing (HR px). 0 amplitude gives a purely global offset.
    photons, read_noise : expected photo-electrons at full intensity and the
        read-noise standard deviation (electrons); ``photons=0`` disables noise.
    seed : for the offsets and the noise.
    """
    arr = np.asarray(image)
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 3, 4)):
        raise InputError(f"image must be (H, W) or (H, W, C) with C in 1, 3, 4; got {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number) or arr.dtype == bool:
        raise InputError(f"image must be numeric, got dtype {arr.dtype}")
    grey = arr.ndim == 2
    if arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[..., :3]
    mags = tuple(float(m) for m in magnifications)
    nas = tuple(float(a) for a in numerical_apertures)
    if len(mags) != 3 or len(nas) != 3 or min(mags) <= 0 or min(nas) <= 0:
        raise InputError("magnifications and numerical_apertures must be three positive numbers")
    factors = []
    for m in mags:
        f = mags[2] / m
        if abs(f - round(f)) > 1e-9:
            raise InputError(f"high/low magnification ratios must be integers, got {mags}")
        factors.append(round(f))
    lcm = math.lcm(*factors)
    h, w = (arr.shape[0] // lcm) * lcm, (arr.shape[1] // lcm) * lcm
    if h < 4 * lcm or w < 4 * lcm:
        raise InputError(f"image {arr.shape[:2]} is too small to simulate {mags} scans")
    arr = arr[:h, :w]
    if np.issubdtype(arr.dtype, np.integer):
        img = arr.astype(np.float64) / np.iinfo(arr.dtype).max
    else:
        img = np.clip(arr.astype(np.float64), 0.0, 1.0)
    if img.ndim == 2:
        img = img[..., None]
    rng = np.random.default_rng(seed)

    def random_global():
        return rng.uniform(-max_global_shift, max_global_shift, size=2)

    low_shift = random_global() if global_shift is None else np.asarray(global_shift, float)
    fields = {
        "low": OffsetField.random(
            (h, w), global_shift=low_shift, amplitude=local_amplitude,
            correlation_length=correlation_length, rng=rng,
        ),
        "mid": OffsetField.random(
            (h, w), global_shift=random_global(), amplitude=local_amplitude,
            correlation_length=correlation_length, rng=rng,
        ),
    }
    scans = {}
    for name, na, f in (("low", nas[0], factors[0]), ("mid", nas[1], factors[1])):
        psf = airy_psf(na, wavelength_um, pixel_size_um)
        scan = _scan(img, psf, f, fields[name], rng, photons, read_noise, arr.dtype)
        scans[name] = scan[..., 0] if grey else scan
    return SimulatedScans(
        low=scans["low"],
        mid=scans["mid"],
        high=arr[..., 0] if (arr.ndim == 3 and grey) else arr,
        magnifications=mags,
        numerical_apertures=nas,
        pixel_size_um=tuple(pixel_size_um * f for f in factors),
        factors=tuple(factors),
        fields=fields,
    )
