"""Tile sizes, tile plans and blending weights of the tiled engine (paper 002 §IV.D).

Choices the paper leaves open are in :mod:`napari_resolve.predict`'s docstring;
:func:`memory_tile` sizes CPU tiles from the memory actually free (issue 17).
"""

from __future__ import annotations

import math

import numpy as np
import torch

MIN_SIZE = 4  # smallest image side (LR px) accepted
PAD_TO = 16  # image sides below this are mirror-padded up to it
GLOBAL_OVERLAP = 32  # per side; neighbouring tiles share 64 px as in paper 002 §IV.D
MIN_OVERLAP = 8
CPU_SR_SIDE = 1024
GPU_SR_SIDE = 2048


def default_overlap(model) -> int:
    """Per-side context: the receptive field (>= 8) for local models, else 32."""
    rf = int(getattr(model, "receptive_field", 0) or 0)
    if rf > 0 and not getattr(model, "global_ops", False):
        return max(rf, MIN_OVERLAP)
    return max(GLOBAL_OVERLAP, rf)


def _snap_down(v: int, m: int) -> int:
    return max(m, (int(v) // m) * m)


def _snap_up(v: int, m: int) -> int:
    return -(-int(v) // m) * m


def default_tile(model, device="cpu", overlap: int | None = None) -> int:
    """LR tile side: ~1024 SR px on CPU, ~2048 on GPU (memory), at least 4 x overlap.

    With ``4 * overlap`` the stride is at least half a tile; models with a
    large receptive field (PathSRGAN: 109 LR px) therefore get larger tiles
    rather than a computation dominated by overlap.
    """
    dev = torch.device(device) if not isinstance(device, torch.device) else device
    side = CPU_SR_SIDE if dev.type == "cpu" else GPU_SR_SIDE
    ov = default_overlap(model) if overlap is None else int(overlap)
    tile = max(side // max(int(model.scale), 1), 4 * ov, 64)
    return _snap_down(tile, max(int(getattr(model, "size_multiple", 1) or 1), 1))


# ----------------------------------------------------------------------------- tile plan


def tile_plan(n: int, tile: int, overlap: int, multiple: int = 1) -> tuple[int, list[int]]:
    """Tile size and origins along one axis of length ``n`` (LR px).

    Neighbouring tiles share at least ``2 * overlap`` px; tiles have equal
    size (<= ``tile``), origins on multiples of ``multiple`` except the last
    tile, which ends at the image border.
    """
    if n <= tile:
        return n, [0]
    band = 2 * overlap + (multiple - 1)  # origins snapped down may lose up to multiple-1
    if band >= tile:  # no room to align origins: keep the overlap, drop the alignment
        band, multiple = 2 * overlap, 1
    k = math.ceil((n - band) / (tile - band))
    size = math.ceil((n + (k - 1) * band) / k)
    size = min(_snap_up(size, multiple), tile, n)
    starts = [(round(i * (n - size) / (k - 1)) // multiple) * multiple for i in range(k)]
    starts[-1] = n - size
    return size, sorted(set(starts))


def _ramp(d: np.ndarray, band: int, margin: int) -> np.ndarray:
    width = band - 2 * margin
    if width <= 0:
        return (d >= margin).astype(np.float32)
    return np.clip((d - margin) / width, 0.0, 1.0).astype(np.float32)


def _profile(starts, size, i, factor, margin_of) -> np.ndarray:
    """1-D blending weights (SR px) of tile ``i`` along one axis."""
    d = (np.arange(size * factor, dtype=np.float64) + 0.5) / factor  # LR px from the tile origin
    w = np.ones(size * factor, dtype=np.float32)
    if i > 0:
        band = starts[i - 1] + size - starts[i]
        w *= _ramp(d, band, margin_of(band))
    if i < len(starts) - 1:
        band = starts[i] + size - starts[i + 1]
        w *= _ramp(size - d, band, margin_of(band))
    return w
