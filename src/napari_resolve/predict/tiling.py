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


def legacy_tile(model, device="cpu", overlap: int | None = None) -> int:
    """The tile before issue 17: ~1024 SR px on CPU, ~2048 on GPU, at least 4 x overlap.

    With ``4 * overlap`` the stride is at least half a tile; models with a
    large receptive field (PathSRGAN: 109 LR px) therefore get larger tiles
    rather than a computation dominated by overlap. Still the GPU default and
    the CPU floor; ``benchmarks/predict.py`` runs it as the baseline.
    """
    dev = torch.device(device) if not isinstance(device, torch.device) else device
    side = CPU_SR_SIDE if dev.type == "cpu" else GPU_SR_SIDE
    ov = default_overlap(model) if overlap is None else int(overlap)
    tile = max(side // max(int(model.scale), 1), 4 * ov, 64)
    return _snap_down(tile, max(int(getattr(model, "size_multiple", 1) or 1), 1))


# Peak memory of one forward = PEAK_FACTOR x the largest activation of one layer.
# Measured (ru_maxrss growth, 128 x 128 LR, one thread; largest activation 512
# floats per LR px for both): gp-x4 eager 20.6 kB / LR px, onnxruntime 16.0;
# np-x4 eager 16.0, onnxruntime 14.3. 10 x 512 x 4 B = 20.5 kB covers them.
PEAK_FACTOR = 10
MEMORY_SHARE = 0.5  # of the memory available now, for one tile
_BYTES_PER_PX: dict = {}


def bytes_per_pixel(model) -> float:
    """Estimated peak bytes of one forward per LR pixel (probe once per architecture).

    A forward on a small probe records the largest output of any leaf module
    (forward hooks); the peak is :data:`PEAK_FACTOR` times it (activations
    kept for skips and concatenations, the allocator's slack). Models without
    leaf modules (an ONNX graph) use the measured 20.6 kB / px of gp-x4.
    """
    key = (type(model).__qualname__, str(getattr(model, "arch", "")),
           repr(sorted((getattr(model, "config", {}) or {}).items())))
    if key in _BYTES_PER_PX:
        return _BYTES_PER_PX[key]
    leaves = [m for m in model.modules() if not any(True for _ in m.children())]
    if not leaves or not any(True for _ in model.parameters()):
        return 20.6e3
    largest = [0]

    def hook(module, args, output):
        if torch.is_tensor(output):
            largest[0] = max(largest[0], output.numel() * output.element_size())

    mult = max(int(getattr(model, "size_multiple", 1) or 1), 1)
    side = _snap_up(32, mult)
    param = next(model.parameters())
    x = torch.rand(1, int(model.in_channels), side, side, device=param.device, dtype=param.dtype)
    handles = [m.register_forward_hook(hook) for m in leaves]
    was_training = model.training
    try:
        model.eval()
        with torch.inference_mode():
            model(x)
    except Exception:  # noqa: BLE001 - a model that cannot run the probe: the gp-x4 figure
        largest[0] = 0
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    value = PEAK_FACTOR * largest[0] / side**2 if largest[0] else 20.6e3
    _BYTES_PER_PX[key] = value
    return value


def available_memory() -> int:
    """Bytes of memory available now (``psutil``; ``/proc/meminfo``; else 4 GiB)."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception:  # noqa: BLE001 - psutil absent or unsupported platform
        pass
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 << 30


def memory_tile(
    model, overlap: int | None = None, *, share: int = 1, free: int | None = None
) -> int:
    """The largest CPU tile side whose forward fits :data:`MEMORY_SHARE` of the free memory.

    ``share``: tiles that run at the same time (dask workers). Never below
    :func:`legacy_tile` (a machine that short of memory would swap anyway).
    """
    free = available_memory() if free is None else int(free)
    budget = MEMORY_SHARE * free / max(int(share), 1)
    side = int(math.sqrt(max(budget, 0) / max(bytes_per_pixel(model), 1.0)))
    floor = legacy_tile(model, "cpu", overlap)
    return max(_snap_down(side, max(int(getattr(model, "size_multiple", 1) or 1), 1)), floor)


def default_tile(model, device="cpu", overlap: int | None = None, *, share: int = 1) -> int:
    """LR tile side: on the CPU the largest that fits the free memory (:func:`memory_tile`),
    so an ordinary image is one tile with no overlap cost; on a GPU ~2048 SR px
    (:func:`legacy_tile`, halved on out-of-memory)."""
    dev = torch.device(device) if not isinstance(device, torch.device) else device
    if dev.type == "cpu":
        return memory_tile(model, overlap, share=share)
    return legacy_tile(model, dev, overlap)


def fit_tile(side: int, h: int, w: int, multiple: int = 1) -> tuple[int, int]:
    """The tile shape for an ``h`` x ``w`` plane from a memory budget of ``side``² px.

    The budget is an area, not a square: a 480 x 640 smear fits a 605² budget
    (366 k px) in one piece, where a square 605-px tile would cut it in two
    and pay the overlap twice (15 % of the time, issue 17). A plane larger
    than the budget is cut in full-height (or full-width) strips when its
    short side fits, else in square tiles.
    """
    area = int(side) * int(side)
    if h * w <= area:
        return (h, w)
    m = max(int(multiple), 1)
    if h <= side:
        return (h, max(_snap_down(area // h, m), side))
    if w <= side:
        return (max(_snap_down(area // w, m), side), w)
    return (side, side)


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
