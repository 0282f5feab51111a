"""Degradation: MATLAB-exact bicubic ``imresize`` and MHTCUN's blur-downsample.

``imresize`` reproduces MATLAB's ``imresize(I, scale, 'bicubic')`` (the
default, with antialiasing), which every SR paper here uses to make LR images
(paper 000 §3.1, paper 004 §4): Keys cubic kernel with a = -0.5, the kernel
widened by 1/scale when shrinking, symmetric (mirror) edge handling, output
size ``ceil(scale * size)``. Each axis is a matrix product with the weight
matrix of :func:`resize_matrix`, so the same weights drive the NumPy path and
the differentiable torch path (:func:`imresize_torch`).

For whole-number upscaling (every model's bicubic branch) :func:`imresize_torch`
uses :func:`upsample_int_torch` instead: the same MATLAB weights, which repeat
with period ``scale``, as a 5-tap convolution per output phase after a
2-px symmetric pad. It equals the matrix path (float rounding, ~1e-7), costs
O(pixels) instead of O(side x pixels), and reads no tensor size as a Python
number, so ``torch.jit.trace`` and ONNX export with dynamic height and width
work (issue 17 item 4).

As MATLAB, rows are resized first when both axes have the same scale (MATLAB
orders dimensions by scale, smallest first), and integer images are rounded
and clipped to their type after each axis pass, exactly as MATLAB's
``resizeAlongDim`` returns the input class.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from napari_resolve.errors import InputError

__all__ = [
    "cubic",
    "resize_matrix",
    "imresize",
    "imresize_torch",
    "upsample_int_torch",
    "blur_downsample",
    "output_size",
]


def cubic(x: np.ndarray) -> np.ndarray:
    """Keys (1981) cubic convolution kernel with a = -0.5 (MATLAB's ``cubic``)."""
    ax = np.abs(x)
    ax2, ax3 = ax * ax, ax * ax * ax
    return (1.5 * ax3 - 2.5 * ax2 + 1.0) * (ax <= 1) + (
        -0.5 * ax3 + 2.5 * ax2 - 4.0 * ax + 2.0
    ) * ((ax > 1) & (ax <= 2))


def output_size(size: int, scale: float) -> int:
    """MATLAB's output length: ``ceil(scale * size)`` (guarding float noise)."""
    return int(math.ceil(round(scale * size, 9)))


@lru_cache(maxsize=64)
def resize_matrix(in_len: int, out_len: int, scale: float, antialiasing: bool = True) -> np.ndarray:
    """Weight matrix W (out_len, in_len) so that ``W @ column`` resizes one axis.

    Follows MATLAB's ``contributions``: output pixel x (1-based) maps to input
    position ``u = x / scale + 0.5 * (1 - 1 / scale)``; when shrinking with
    antialiasing the kernel is ``scale * cubic(scale * t)`` of width 4 / scale;
    taps outside the image are mirrored (symmetric padding, edge repeated).
    """
    kernel_width = 4.0
    if scale < 1 and antialiasing:
        kernel = lambda t: scale * cubic(scale * t)  # noqa: E731
        kernel_width = kernel_width / scale
    else:
        kernel = cubic
    x = np.arange(1, out_len + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1.0 - 1.0 / scale)
    left = np.floor(u - kernel_width / 2.0)
    taps = int(math.ceil(kernel_width)) + 2
    idx = left[:, None] + np.arange(taps)[None, :]  # 1-based input positions
    weights = kernel(u[:, None] - idx)
    weights = weights / weights.sum(axis=1, keepdims=True)
    mirror = np.concatenate([np.arange(in_len), np.arange(in_len - 1, -1, -1)])
    cols = mirror[np.mod(idx.astype(np.int64) - 1, 2 * in_len)]
    mat = np.zeros((out_len, in_len), dtype=np.float64)
    rows = np.repeat(np.arange(out_len), taps)
    np.add.at(mat, (rows, cols.ravel()), weights.ravel())
    mat.setflags(write=False)
    return mat


def _check_image(image, name="image") -> np.ndarray:
    arr = np.asarray(image)
    if arr.dtype == bool or not (np.issubdtype(arr.dtype, np.number)):
        raise InputError(f"{name} must be numeric, got dtype {arr.dtype}")
    if np.iscomplexobj(arr):
        raise InputError(f"{name} must be real, got complex dtype {arr.dtype}")
    if arr.ndim < 2:
        raise InputError(f"{name} must be at least 2-D (rows, cols), got shape {arr.shape}")
    if arr.size == 0:
        raise InputError(f"{name} is empty (shape {arr.shape})")
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        raise InputError(f"{name} contains NaN or infinite values")
    return arr


#: largest output plane imresize builds (2**28 px = 1 GB as float32): checked before allocating
MAX_OUTPUT_PIXELS = 2**28


def _bounded(sh, sw, oh, ow, shape_hw):
    """Refuse, before any allocation, a resize whose output or kernel would not fit in memory."""
    if sh * shape_hw[0] < 1 or sw * shape_hw[1] < 1:
        raise InputError(f"scale {sh:g} x {sw:g} shrinks a {shape_hw[0]} x {shape_hw[1]} image "
                         "below one pixel")
    if oh * ow > MAX_OUTPUT_PIXELS:
        raise InputError(f"resizing to {oh} x {ow} px ({oh * ow / 1e6:.0f} M px) exceeds the "
                         f"{MAX_OUTPUT_PIXELS / 1e6:.0f} M px limit; use a smaller scale")
    return sh, sw, oh, ow


def _scales(scale, shape_hw, out_shape):
    if out_shape is not None:
        oh, ow = (int(v) for v in out_shape)
        if oh < 1 or ow < 1:
            raise InputError(f"output_shape must be positive, got {out_shape}")
        return _bounded(oh / shape_hw[0], ow / shape_hw[1], oh, ow, shape_hw)
    if isinstance(scale, (tuple, list)):
        sh, sw = (float(s) for s in scale)
    else:
        sh = sw = float(scale)
    if not (np.isfinite(sh) and np.isfinite(sw)) or sh <= 0 or sw <= 0:
        raise InputError(f"scale must be a positive number, got {scale}")
    oh, ow = output_size(shape_hw[0], sh), output_size(shape_hw[1], sw)
    if oh < 1 or ow < 1:
        raise InputError(f"scale {scale} shrinks a {shape_hw} image to nothing")
    return _bounded(sh, sw, oh, ow, shape_hw)


def imresize(image, scale=None, *, output_shape=None, channel_axis=None, antialiasing=True):
    """MATLAB ``imresize(image, scale, 'bicubic')``.

    Parameters
    ----------
    image : array (H, W), (H, W, C) with ``channel_axis=-1``, or (..., H, W)
        Any real dtype. Integer images come back with their dtype, rounded and
        clipped after each axis as in MATLAB; float images stay float (float32
        stays float32, other floats become float64).
    scale : float or (float, float)
        Factor for rows and columns (< 1 shrinks).
    output_shape : (int, int), optional
        Target (rows, cols) instead of ``scale``.
    channel_axis : int, optional
        Axis of colour channels (for (H, W, C) images use ``-1``); every other
        leading axis is a batch axis and the last two are (H, W).
    """
    arr = _check_image(image)
    if scale is None and output_shape is None:
        raise InputError("give scale or output_shape")
    if channel_axis is not None:
        arr = np.moveaxis(arr, channel_axis, 0)
    h, w = arr.shape[-2:]
    sh, sw, oh, ow = _scales(scale, (h, w), output_shape)
    integer = np.issubdtype(arr.dtype, np.integer)
    work = np.float32 if arr.dtype == np.float32 else np.float64
    out = arr.astype(work, copy=False)
    if not integer and sh == sw and sh >= 2 and float(sh).is_integer() and min(h, w) >= 2:
        # whole-number upscale of a float image: the per-phase taps, O(pixels) instead of
        # O(side x pixels) (the chroma of every RGB prediction goes through here)
        for axis in (-2, -1):
            out = _upsample_axis(out, int(sh), axis)
        if channel_axis is not None:
            out = np.moveaxis(out, 0, channel_axis)
        return out

    def finish(a):
        if integer:
            info = np.iinfo(arr.dtype)
            # MATLAB rounds half away from zero (uint8(14.5) == 15); np.round would give 14
            return np.clip(np.sign(a) * np.floor(np.abs(a) + 0.5), info.min, info.max)
        return a

    # MATLAB resizes the dimension with the smaller scale first (rows on ties)
    for axis in ((0, 1) if sh <= sw else (1, 0)):
        if axis == 0:
            mat = resize_matrix(h, oh, sh, antialiasing).astype(work)
            out = finish(np.matmul(mat, out))
        else:
            mat = resize_matrix(w, ow, sw, antialiasing).astype(work)
            out = finish(np.matmul(out, mat.T))
    out = out.astype(arr.dtype) if integer else out.astype(work, copy=False)
    if channel_axis is not None:
        out = np.moveaxis(out, 0, channel_axis)
    return out


@lru_cache(maxsize=64)
def _torch_matrix(in_len, out_len, scale, antialiasing, dtype, device):
    import torch

    # torch.tensor copies: the cached NumPy matrices are read-only (as_tensor would warn)
    return torch.tensor(resize_matrix(in_len, out_len, scale, antialiasing), dtype=dtype, device=device)


@lru_cache(maxsize=16)
def phase_taps(scale: int) -> np.ndarray:
    """MATLAB bicubic weights of an integer upscale, (scale, 5): phase q, input offset -2..2.

    Output pixel ``s * i + q`` (0-based) sits at input position
    ``i + (q + 0.5) / s - 0.5`` (:func:`resize_matrix`'s mapping), so it is a
    weighted sum of inputs ``i - 2 .. i + 2`` with the same weights for every
    ``i``; normalised per row exactly as :func:`resize_matrix`.
    """
    q = np.arange(scale, dtype=np.float64)
    offsets = np.arange(-2, 3, dtype=np.float64)
    t = ((q + 0.5) / scale - 0.5)[:, None] - offsets[None, :]
    w = cubic(t)
    w = w / w.sum(axis=1, keepdims=True)
    w.setflags(write=False)
    return w


def _upsample_axis(a: np.ndarray, s: int, axis: int) -> np.ndarray:
    """NumPy twin of :func:`upsample_int_torch` along one axis (float arrays, side >= 2)."""
    w = phase_taps(s).astype(a.dtype)
    a = np.moveaxis(a, axis, -1)
    n = a.shape[-1]
    pad = np.concatenate([a[..., 1:2], a[..., 0:1], a, a[..., n - 1 :], a[..., n - 2 : n - 1]], -1)
    out = np.empty(a.shape[:-1] + (n, s), dtype=a.dtype)
    for q in range(s):
        acc = w[q, 0] * pad[..., 0:n]
        for o in range(1, 5):
            acc += w[q, o] * pad[..., o : o + n]
        out[..., q] = acc
    return np.moveaxis(out.reshape(a.shape[:-1] + (n * s,)), -1, axis)


def _symmetric_pad2(x, dim: int):
    """Pad 2 px on both ends of ``dim`` with MATLAB's symmetric rule (edge repeated)."""
    import torch

    n = x.shape[dim]
    first, second = x.narrow(dim, 0, 1), x.narrow(dim, 1, 1)
    last, before = x.narrow(dim, n - 1, 1), x.narrow(dim, n - 2, 1)
    return torch.cat([second, first, x, last, before], dim=dim)


def upsample_int_torch(x, scale: int):
    """MATLAB bicubic upscaling of a float tensor (..., H, W) by a whole number (H, W >= 2).

    Rows then columns (MATLAB's order on equal scales); each axis is a 5-tap
    convolution per phase (:func:`phase_taps`) on the symmetric-padded
    tensor, and the phases are interleaved. Traceable with dynamic sizes.
    """
    import torch
    import torch.nn.functional as F

    s = int(scale)
    if s == 1:
        return x
    lead = x.shape[:-2]
    h, w = x.shape[-2], x.shape[-1]
    taps = torch.tensor(phase_taps(s), dtype=x.dtype, device=x.device)  # (s, 5)
    y = x.reshape(-1, 1, h, w)
    # rows: (B, 1, H+4, W) -> (B, s, H, W) -> (B, H, s, W) -> (B, 1, sH, W)
    y = F.conv2d(_symmetric_pad2(y, 2), taps[:, None, :, None])
    y = y.permute(0, 2, 1, 3).flatten(1, 2).unsqueeze(1)
    # columns: (B, 1, sH, W+4) -> (B, s, sH, W) -> (B, sH, W, s) -> (B, sH, sW)
    y = F.conv2d(_symmetric_pad2(y, 3), taps[:, None, None, :])
    y = y.permute(0, 2, 3, 1).flatten(2, 3)
    return y.reshape(*lead, y.shape[-2], y.shape[-1])


def imresize_torch(x, scale=None, *, output_shape=None, antialiasing=True):
    """Differentiable MATLAB bicubic resize of a float tensor (..., H, W).

    Same weights as :func:`imresize` (float path, no rounding), applied as two
    matrix products on the tensor's device and dtype; a whole-number upscale
    of an image at least 2 px wide goes through :func:`upsample_int_torch`
    (same weights as convolutions, traceable).
    """
    import torch

    if not torch.is_tensor(x) or not torch.is_floating_point(x):
        raise InputError("imresize_torch expects a floating-point torch tensor")
    if (
        output_shape is None
        and isinstance(scale, (int, float))
        and not isinstance(scale, bool)
        and float(scale) >= 1
        and float(scale).is_integer()
        and x.ndim >= 2
        and (torch.jit.is_tracing() or min(x.shape[-2:]) >= 2)
    ):
        return upsample_int_torch(x, int(scale))
    if x.ndim < 2 or x.shape[-1] == 0 or x.shape[-2] == 0:
        raise InputError(f"imresize_torch expects (..., H, W), got shape {tuple(x.shape)}")
    h, w = x.shape[-2:]
    sh, sw, oh, ow = _scales(scale, (h, w), output_shape)
    mh = _torch_matrix(h, oh, sh, antialiasing, x.dtype, x.device)
    mw = _torch_matrix(w, ow, sw, antialiasing, x.dtype, x.device)
    if sh <= sw:
        return torch.matmul(torch.matmul(mh, x), mw.T)
    return torch.matmul(mh, torch.matmul(x, mw.T))


def blur_downsample(image, factor: int, *, channel_axis=None):
    """Blur by downsampling by ``factor`` (MATLAB bicubic) and going back up bilinearly.

    Paper 003 §2.3 makes the targets of MHTCUN's first two stages this way
    ("blurred by x4 and x2" versions of the ground truth). The output has the
    input's shape and a float dtype. The paper does not say which interpolation
    brings the image back up; we use bilinear (``skimage.transform.resize``,
    order 1), which adds no ringing of its own.
    """
    from skimage.transform import resize

    arr = _check_image(image)
    if int(factor) != factor or factor < 1:
        raise InputError(f"factor must be a positive integer, got {factor}")
    if factor == 1:
        return arr.astype(np.float32 if arr.dtype == np.float32 else np.float64)
    flt = arr.astype(np.float32 if arr.dtype == np.float32 else np.float64)
    small = imresize(flt, 1.0 / factor, channel_axis=channel_axis)
    shape = arr.shape
    if channel_axis is not None:
        small = np.moveaxis(small, channel_axis, -1)
        shape = np.moveaxis(arr, channel_axis, -1).shape
    back = resize(small, shape, order=1, mode="edge", anti_aliasing=False, preserve_range=True)
    if channel_axis is not None:
        back = np.moveaxis(back, -1, channel_axis)
    return back.astype(flt.dtype, copy=False)
