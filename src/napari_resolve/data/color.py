"""MATLAB-exact ``rgb2ycbcr`` / ``ycbcr2rgb`` (ITU-R BT.601, studio swing).

The SR papers work on the luminance (Y) channel of MATLAB's YCbCr (paper 000
§2.4: "All images are converted to the YCbCr format. Our network only
super-resolves the luminance channel"), and SR benchmarks report PSNR/SSIM on
that Y (paper 000 §3.2). MATLAB's transform, for R, G, B in [0, 1]::

    Y  =  16/255 + ( 65.481 R + 128.553 G +  24.966 B) / 255
    Cb = 128/255 + (-37.797 R -  74.203 G + 112.000 B) / 255
    Cr = 128/255 + (112.000 R -  93.786 G -  18.214 B) / 255

so Y lies in [16/255, 235/255] and Cb, Cr in [16/255, 240/255].

``skimage.color.rgb2ycbcr`` uses the same matrix and offsets but returns the
0..255 scale for every input (and ``ycbcr2rgb`` expects that scale and breaks
on uint8 input, which it shifts in place with wrap-around); we therefore call
skimage on float data (float32 for float32 input, else float64) and rescale,
and keep MATLAB's dtype rules:

* float in [0, 1] -> float in [0, 1] (float32 stays float32, other floats give
  float64); like MATLAB, ``rgb_to_ycbcr`` does not clip, ``ycbcr_to_rgb`` clips
  RGB to [0, 1];
* uint8 -> uint8 and uint16 -> uint16, rounded half away from zero and
  saturated, as MATLAB's ``imlincomb`` does (uint16 uses 257 x the uint8
  offsets, i.e. the same float transform scaled by 65535).

Other dtypes are refused. Colour is on the last axis (``channel_axis`` moves
it there); any leading axes are batch axes.
"""

from __future__ import annotations

import numpy as np

from napari_resolve.errors import InputError

__all__ = ["rgb_to_ycbcr", "ycbcr_to_rgb", "rgb_to_y", "round_half_away", "rgb_to_ycbcr_torch",
           "ycbcr_to_rgb_torch"]

_INT_SCALE = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}


def round_half_away(x: np.ndarray) -> np.ndarray:
    """Round half away from zero (MATLAB ``round``), unlike NumPy's half-to-even."""
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


def _check_rgb(img, channel_axis: int, name: str) -> np.ndarray:
    arr = np.asarray(img)
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise InputError(f"{name} must be a real numeric image, got dtype {arr.dtype}")
    if arr.ndim < 1 or arr.size == 0:
        raise InputError(f"{name} is empty (shape {arr.shape})")
    try:
        arr = np.moveaxis(arr, channel_axis, -1)
    except np.exceptions.AxisError:
        raise InputError(f"{name}: channel_axis {channel_axis} does not exist for shape {arr.shape}")
    if arr.ndim < 2 or arr.shape[-1] != 3:
        raise InputError(
            f"{name} must have 3 colour channels on axis {channel_axis}, got shape {np.shape(img)}"
        )
    if np.issubdtype(arr.dtype, np.integer) and arr.dtype not in _INT_SCALE:
        raise InputError(f"{name}: dtype {arr.dtype} not supported (use uint8, uint16 or float)")
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        raise InputError(f"{name} contains NaN or infinite values")
    return arr


def _to_unit_float(arr: np.ndarray) -> np.ndarray:
    if arr.dtype in _INT_SCALE:
        return arr.astype(np.float64) / _INT_SCALE[arr.dtype]
    # float32 stays float32 (its result is float32 anyway): half the memory traffic of
    # a whole-slide SR image, and errors ~1e-7 of the range
    return arr.astype(np.float32 if arr.dtype == np.float32 else np.float64)


def _from_unit_float(out: np.ndarray, like: np.dtype) -> np.ndarray:
    if like in _INT_SCALE:
        scale = _INT_SCALE[like]
        return np.clip(round_half_away(out * scale), 0, scale).astype(like)
    return out.astype(np.float32 if like == np.float32 else np.float64)


def rgb_to_ycbcr(img, *, channel_axis: int = -1) -> np.ndarray:
    """MATLAB ``rgb2ycbcr``: RGB -> YCbCr (BT.601), same dtype rules as MATLAB.

    Parameters
    ----------
    img : array (..., 3) uint8, uint16 or float in [0, 1]
    channel_axis : int
        Axis holding R, G, B; the output has Y, Cb, Cr on the same axis.
    """
    from skimage.color import rgb2ycbcr

    arr = _check_rgb(img, channel_axis, "rgb_to_ycbcr input")
    # skimage: same BT.601 matrix and offsets, on the 0..255 scale
    out = rgb2ycbcr(_to_unit_float(arr)) / 255.0
    return np.moveaxis(_from_unit_float(out, arr.dtype), -1, channel_axis)


def ycbcr_to_rgb(img, *, channel_axis: int = -1) -> np.ndarray:
    """MATLAB ``ycbcr2rgb``: YCbCr (BT.601) -> RGB, clipped to the valid range."""
    from skimage.color import ycbcr2rgb

    arr = _check_rgb(img, channel_axis, "ycbcr_to_rgb input")
    out = np.clip(ycbcr2rgb(_to_unit_float(arr) * 255.0), 0.0, 1.0)
    return np.moveaxis(_from_unit_float(out, arr.dtype), -1, channel_axis)


def rgb_to_y(img, *, channel_axis: int = -1) -> np.ndarray:
    """The Y (luma) channel of :func:`rgb_to_ycbcr`, channel axis removed."""
    ycc = rgb_to_ycbcr(img, channel_axis=channel_axis)
    return np.take(ycc, 0, axis=channel_axis)


#: BT.601 of MATLAB ``rgb2ycbcr`` for RGB in [0, 1]: YCbCr = OFFSET + MATRIX @ RGB (the
#: constants of the module docstring, divided by 255)
_YCBCR_MATRIX = np.array([[65.481, 128.553, 24.966],
                          [-37.797, -74.203, 112.0],
                          [112.0, -93.786, -18.214]]) / 255.0
_YCBCR_OFFSET = np.array([16.0, 128.0, 128.0]) / 255.0
_RGB_FROM_YCBCR = np.linalg.inv(_YCBCR_MATRIX)


def rgb_to_ycbcr_torch(x):
    """:func:`rgb_to_ycbcr` of a float tensor (N, 3, H, W) in [0, 1], differentiable."""
    import torch

    m = torch.as_tensor(_YCBCR_MATRIX, dtype=x.dtype, device=x.device)
    off = torch.as_tensor(_YCBCR_OFFSET, dtype=x.dtype, device=x.device)
    return torch.einsum("ij,njhw->nihw", m, x) + off[None, :, None, None]


def ycbcr_to_rgb_torch(x):
    """:func:`ycbcr_to_rgb` of a float tensor (N, 3, H, W), without the clipping."""
    import torch

    inv = torch.as_tensor(_RGB_FROM_YCBCR, dtype=x.dtype, device=x.device)
    off = torch.as_tensor(_YCBCR_OFFSET, dtype=x.dtype, device=x.device)
    return torch.einsum("ij,njhw->nihw", inv, x - off[None, :, None, None])
