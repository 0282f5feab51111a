"""The user's data for fine-tuning: training images, their checks, the held-out set, degradation.

* :class:`TrainingImage` (arrays) in three forms: HR images only
  (self-supervised: the LR input is made with the bundle's degradation,
  :func:`self_supervised_degradation`), registered LR/HR pairs, or HR images
  with a parsing map (labels 0/1/2; paper 000 §2.3, for models that predict
  one), checked by :func:`check_images` with one-line messages;
* a validation set held back *without overlap* (:func:`hold_out`);
* :func:`recorded_degradation`: the degradation a bundle records for HR-only data.

Choices the papers leave open, made here:

* A bundle trained on pairs (``degradation.kind == "paired"``) makes LR
  images from HR-only data with the ``for_hr_only`` spec it records (the
  bundled ``mhtcun-lite-x2`` records its simulator's camera model). When it
  records none, for a grey model with a known pixel size the
  self-supervised LR is made with the wide-field camera model of
  :func:`napari_resolve.data.datasets.degrade` (Gaussian PSF of λ 520 nm,
  NA 1.3 thinned by the target's 2× resolution gain, ``scale``-fold binning,
  Poisson + Gaussian noise: the physics of the fluorescence simulator) at the
  bundle's HR pixel size; otherwise MATLAB bicubic (papers 000 §3.1, 004 §4).
* One training image: the validation part is a band at the end of its
  longer axis (``val_fraction`` of it, at least 64 HR px, at most half);
  several images: the last ``val_fraction`` of them (at least one).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from napari_resolve.errors import InputError

__all__ = [
    "FORMS",
    "TrainingImage",
    "check_images",
    "hold_out",
    "recorded_degradation",
    "self_supervised_degradation",
]

#: the three forms of training data: HR only (self-supervised), LR/HR pairs, HR + parsing map
FORMS = ("hr", "pairs", "labels")
#: smallest validation band cut from a single image (HR px; decorrelation needs 32)
MIN_VAL_SIDE = 64
#: validation images up to this area are validated whole
WHOLE_VAL_AREA = 256 * 256


@dataclass
class TrainingImage:
    """One image of the user's data (a 2-D plane, grey (H, W) or RGB (H, W, 3)).

    ``lr`` (for pairs) is the registered low-resolution image, ``labels`` a
    parsing map on the HR grid (0 background, 1 cytoplasm, 2 nucleus).
    ``pixel_size_nm`` is the HR pixel size (None: uncalibrated); ``origin``
    (HR px) is where this image sits in ``source`` (a layer or file name), so
    results made from a held-out part can be placed back over it.
    """

    name: str
    hr: np.ndarray
    lr: np.ndarray | None = None
    labels: np.ndarray | None = None
    pixel_size_nm: float | None = None
    source: str = ""
    origin: tuple = (0, 0)

    @property
    def form(self) -> str:
        return "pairs" if self.lr is not None else "labels" if self.labels is not None else "hr"

    def describe(self) -> dict:
        out = {"name": self.name, "shape": list(self.hr.shape)}
        if self.lr is not None:
            out["lr_shape"] = list(self.lr.shape)
        if self.labels is not None:
            out["labels"] = True
        if self.source and self.source != self.name:
            out["from"] = self.source
            out["origin"] = [int(v) for v in self.origin]
        out["pixel_size_nm"] = self.pixel_size_nm
        return out


# --------------------------------------------------------------------------- checks
def _plane(arr, what: str) -> np.ndarray:
    try:
        arr = np.asarray(arr)
    except Exception as exc:  # a dask graph that cannot compute, ragged lists
        raise InputError(f"{what} cannot be read as an image: {exc}") from None
    if arr.size == 0:
        raise InputError(f"{what} is empty (shape {arr.shape})")
    if arr.ndim == 3 and arr.shape[-1] == 4:
        arr = arr[..., :3]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] == 3)):
        raise InputError(f"{what} must be one 2-D plane (grey or RGB), got shape {arr.shape}")
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise InputError(f"{what} is not a real-valued image (dtype {arr.dtype})")
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        raise InputError(f"{what} contains NaN or infinite values")
    return arr


def check_images(images, *, scale: int, in_channels: int = 1, predicts_parsing: bool = False,
                 what: str = "training") -> tuple[list[TrainingImage], list[str]]:
    """Validate the user's images for a ×``scale`` model; returns (images, warnings).

    Every image must have the same form (:data:`FORMS`). Problems raise an
    :class:`~napari_resolve.errors.InputError` naming the image: an empty or
    constant image, NaNs, an RGB model given grey data, a pair whose HR is
    not ``scale`` × LR beyond what cropping fixes, labels that are not on the
    HR grid or hold values other than 0, 1, 2, or labels for a model that
    predicts no parsing map. A pair off by less than ``scale`` HR px (an HR
    side that is not a multiple of the scale) is cropped with a warning.
    """
    images = list(images or [])
    if not images:
        raise InputError(f"no {what} images given")
    forms = {im.form for im in images}
    if len(forms) > 1:
        raise InputError(
            f"{what} images mix forms ({', '.join(sorted(forms))}): give all as HR only, "
            "all as LR/HR pairs, or all with parsing labels"
        )
    s = int(scale)
    out, warnings = [], []
    for im in images:
        name = im.name
        hr = _plane(im.hr, f"'{name}'")
        if float(np.ptp(hr)) == 0.0:
            raise InputError(f"'{name}' is empty: every pixel is {hr.flat[0]}")
        if in_channels == 3 and hr.ndim == 2:
            raise InputError(f"'{name}' is grey but the model works on RGB images")
        H, W = hr.shape[:2]
        lr, labels = im.lr, im.labels
        if lr is not None:
            lr = _plane(lr, f"LR '{name}'")
            if (lr.ndim == 3) != (hr.ndim == 3):
                raise InputError(f"LR and HR of '{name}' differ in colour (one RGB, one grey)")
            if float(np.ptp(lr)) == 0.0:
                raise InputError(f"LR of '{name}' is empty: every pixel is {lr.flat[0]}")
            h, w = lr.shape[:2]
            if (H, W) != (s * h, s * w):
                # usable when cropping fixes it: HR up to s-1 px too big, or LR 1 px too big
                if not (0 <= h - H // s <= 1 and 0 <= w - W // s <= 1):
                    raise InputError(
                        f"pair '{name}': HR is {H}×{W} but ×{s} of LR {h}×{w} is {s * h}×{s * w}: "
                        f"for a ×{s} model the HR image must be {s}× the LR image"
                    )
                hh, ww = min(h, H // s), min(w, W // s)
                warnings.append(
                    f"pair '{name}': HR {H}×{W} is not ×{s} of LR {h}×{w}; using the "
                    f"common {s * hh}×{s * ww} / {hh}×{ww} corner"
                )
                hr, lr = hr[: s * hh, : s * ww], lr[:hh, :ww]
                H, W = hr.shape[:2]
        if labels is not None:
            if not predicts_parsing:
                raise InputError(
                    "the model predicts no parsing map: parsing labels need a geometry-prior "
                    "(gp) model; fine-tune this one on HR images or LR/HR pairs"
                )
            from napari_resolve.data.labels import check_labels

            lab = np.asarray(labels)
            if lab.shape[:2] != (H, W) or lab.ndim != 2:
                raise InputError(
                    f"labels of '{name}' are {'×'.join(map(str, lab.shape))} px but the image is "
                    f"{H}×{W}: paint the parsing map on the HR image's grid"
                )
            if lab.size and np.issubdtype(lab.dtype, np.number) and not np.iscomplexobj(lab):
                found = np.unique(lab)
                unknown = [v for v in found.tolist() if v not in (0, 1, 2)]
                if unknown:
                    shown = ", ".join(f"{v:g}" for v in unknown[:5])
                    raise InputError(
                        f"labels of '{name}' hold unknown values {shown}: use 0 background, "
                        "1 cytoplasm, 2 nucleus"
                    )
                if found.size == 1 and found[0] == 0:
                    raise InputError(
                        f"labels of '{name}' are empty (all background): paint 1 cytoplasm and "
                        "2 nucleus"
                    )
            try:
                labels = check_labels(lab, ndim=2)
            except InputError as exc:
                raise InputError(f"labels of '{name}': {exc}") from None
        if H < 4 * s or W < 4 * s:
            raise InputError(f"'{name}' is {H}×{W} px: too small for ×{s} (at least {4 * s} px)")
        out.append(replace(im, hr=hr, lr=lr, labels=labels))
    return out, warnings


# --------------------------------------------------------------------------- validation split
def _cut(im: TrainingImage, axis: int, start: int, stop: int, s: int, suffix: str):
    sl = [slice(None), slice(None)]
    sl[axis] = slice(start, stop)
    lr = None
    if im.lr is not None:
        lsl = [slice(None), slice(None)]
        lsl[axis] = slice(start // s, stop // s)
        lr = im.lr[tuple(lsl)]
    labels = None if im.labels is None else im.labels[tuple(sl)]
    origin = list(im.origin)
    origin[axis] += start
    return replace(im, name=f"{im.name} {suffix}", hr=im.hr[tuple(sl)], lr=lr, labels=labels,
                   source=im.source or im.name, origin=tuple(origin))


def hold_out(images, val_fraction: float, scale: int):
    """(train, validation) without overlap; see the module docstring for the rule."""
    images = list(images)
    f = float(val_fraction)
    if not 0.0 < f < 1.0:
        raise InputError(f"validation fraction must be between 0 and 1, got {val_fraction}")
    s = int(scale)
    if len(images) >= 2:
        k = min(len(images) - 1, max(1, round(len(images) * f)))
        return images[:-k], images[-k:]
    (im,) = images
    H, W = im.hr.shape[:2]
    axis = 0 if H >= W else 1
    length = (H, W)[axis] // s * s
    band = max(math.ceil(f * length), MIN_VAL_SIDE)
    band = min(band, length // 2) // s * s
    if band < 4 * s:
        raise InputError(
            f"'{im.name}' ({H}×{W} px) is too small to hold back a validation part: "
            "choose a validation layer"
        )
    cut = length - band
    part = "rows" if axis == 0 else "columns"
    train = _cut(im, axis, 0, cut, s, f"({part} 0-{cut - 1})")
    val = _cut(im, axis, cut, length, s, f"({part} {cut}-{length - 1}, held out)")
    return [train], [val]


# --------------------------------------------------------------------------- degradation
def _lr_pixel_nm(meta: dict) -> float | None:
    px = meta.get("pixel_size")
    if isinstance(px, dict) and px.get("value"):
        from napari_resolve.io import to_micrometre

        um = to_micrometre(float(px["value"]), px.get("unit") or "µm")
        return None if um is None else 1000.0 * um
    if isinstance(px, (int, float)) and px > 0:
        return 1000.0 * float(px)  # a bare number is µm, as io's metadata
    return None


def self_supervised_degradation(meta: dict) -> dict:
    """How HR-only images become LR inputs for a fine-tuning of the bundle ``meta``.

    The bundle's own ``degradation`` when it has one; for a bundle trained on
    pairs the ``for_hr_only`` spec it records (the bundled ``mhtcun-lite-x2``
    does, :func:`napari_resolve.data.fluorescence.pairs_degradation`), else see
    the module docstring (wide-field camera model for grey models with a pixel
    size, else MATLAB bicubic).
    """
    recorded = recorded_degradation(meta)
    if recorded is not None:
        return recorded
    s = int(meta.get("scale", 1))
    lr_nm = _lr_pixel_nm(meta)
    if meta.get("color_mode", "grey") == "grey" and lr_nm:
        return {"kind": "widefield", "scale": s, "pixel_size": lr_nm / s}
    return {"kind": "matlab-bicubic", "scale": s}


def recorded_degradation(meta: dict) -> dict | None:
    """The :func:`~napari_resolve.data.datasets.degrade` spec a bundle records for HR-only data.

    Its ``degradation`` unless the model was trained on pairs; for pairs the
    ``for_hr_only`` spec when the trainer recorded one (e.g. a simulator's
    camera model), else None. ``scale`` is the bundle's.
    """
    deg = meta.get("degradation")
    if not isinstance(deg, dict):
        return None
    if deg.get("kind") not in (None, "paired"):
        return {**deg, "scale": int(meta.get("scale", deg.get("scale", 1)))}
    if isinstance(deg.get("for_hr_only"), dict):
        return {**deg["for_hr_only"], "scale": int(meta.get("scale", 1))}
    return None
