"""The work behind the super-resolve widget, without Qt: geometry, planes, the SR job.

Kept apart from the widget so that it can be read (and tested) on its own: the
widget only collects choices, starts :func:`run_sr` in a
``napari.qt.threading.thread_worker`` and turns its :class:`Outcome` into
layers or a notification.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import product
from typing import Any

import numpy as np

from napari_resolve.data.labels import check_labels
from napari_resolve.errors import InputError, ResolveError

# Paper 000 §3.1 (Fig. 2): "We mark the nucleus as blue, cytoplasm as red, and
# background as black". Background is drawn transparent here so the SR image
# stays visible under the map; the RGBA values are ours.
PARSING_COLORS = {
    None: (0.0, 0.0, 0.0, 0.0),
    0: (0.0, 0.0, 0.0, 0.0),
    1: (0.95, 0.25, 0.2, 1.0),  # cytoplasm: red
    2: (0.2, 0.4, 1.0, 1.0),  # nucleus: blue
}
DEFAULT_LABEL_NAMES = {"0": "background", "1": "cytoplasm", "2": "nucleus"}


# ----------------------------------------------------------------------------- geometry


def sr_geometry(scale_in, translate_in, factor: int, n_spatial: int = 2):
    """Scale and translate of an SR layer of ``factor`` that overlays its input exactly.

    docs/architecture.md ("Geometry"): on the last ``n_spatial`` axes
    ``scale = scale_in / s`` and ``translate = translate_in - scale_in * (1 - 1/s) / 2``,
    so that the centre of input pixel i lands on the centre of the s×s block
    [s·i, s·i + s) and both layers cover the same field. Leading axes (planes,
    time) keep their scale and translate.
    """
    scale_in = np.asarray(scale_in, dtype=float)
    translate_in = np.asarray(translate_in, dtype=float)
    scale = scale_in.copy()
    translate = translate_in.copy()
    sp = slice(scale.size - n_spatial, None)
    scale[sp] = scale_in[sp] / factor
    translate[sp] = translate_in[sp] - scale_in[sp] * (1.0 - 1.0 / factor) / 2.0
    return tuple(scale.tolist()), tuple(translate.tolist())


def lr_geometry(scale_hr, translate_hr, factor: int, n_spatial: int = 2):
    """The inverse of :func:`sr_geometry`: where an LR image made from an HR one belongs."""
    scale_hr = np.asarray(scale_hr, dtype=float)
    translate_hr = np.asarray(translate_hr, dtype=float)
    scale = scale_hr.copy()
    translate = translate_hr.copy()
    sp = slice(scale.size - n_spatial, None)
    scale[sp] = scale_hr[sp] * factor
    translate[sp] = translate_hr[sp] + scale_hr[sp] * (factor - 1.0) / 2.0
    return tuple(scale.tolist()), tuple(translate.tolist())


# ----------------------------------------------------------------------------- planes


def leading_shape(shape, rgb: bool) -> tuple[int, ...]:
    """Axes before the image plane: (Z,) for a stack, () for one image."""
    return tuple(shape[: len(shape) - (3 if rgb else 2)])


def current_index(lead: tuple[int, ...], coords) -> tuple[int, ...]:
    """The leading index of the plane at data coordinates ``coords`` (rounded, clipped)."""
    return tuple(int(np.clip(round(float(c)), 0, n - 1)) for c, n in zip(coords, lead))


def check_parsing_prior(labels, plane_shape_sr: tuple[int, int], lead: tuple[int, ...],
                        plane: tuple[int, ...] | None, *, layer_name: str, image_name: str,
                        factor: int) -> np.ndarray:
    """The prior for a run from an edited parsing layer, or an :class:`InputError`.

    The layer must lie on the SR grid of the image (``plane_shape_sr`` =
    (s·h, s·w)) and hold only 0, 1, 2 (paper 000 §2.1: background, cytoplasm,
    nucleus). ``plane`` is the leading index of a one-plane run, or None for
    all planes. Accepted layouts: the whole stack (lead + (sH, sW)); for a
    one-plane run also (sH, sW) or a single-plane stack (1, …, 1, sH, sW) as
    made by a "current plane" run. Returns (sH, sW) for a one-plane run, else
    lead + (sH, sW).
    """
    arr = np.asarray(labels)
    sh, sw = plane_shape_sr
    if arr.ndim < 2 or tuple(arr.shape[-2:]) != (sh, sw):
        got = "×".join(str(n) for n in arr.shape)
        raise InputError(
            f"parsing layer '{layer_name}' is {got} px but the ×{factor} grid of '{image_name}' "
            f"is {sh}×{sw}: use the parsing layer made for this image and model"
        )
    try:
        arr = check_labels(arr, ndim=None)
    except InputError as exc:
        raise InputError(f"parsing layer '{layer_name}': {exc}") from None
    arr_lead = tuple(arr.shape[:-2])
    if arr_lead == tuple(lead):
        return arr if plane is None else arr[plane]
    if plane is not None and all(n == 1 for n in arr_lead):
        return arr.reshape(sh, sw)
    raise InputError(
        f"parsing layer '{layer_name}' has leading axes {arr_lead} but '{image_name}' has "
        f"{tuple(lead)}" + (": choose 'current plane'" if plane is None and not arr_lead else
                            ": use the parsing layer made for this image")
    )


# ----------------------------------------------------------------------------- the job


@dataclass
class SRJob:
    """Everything a run needs, captured on the main thread when the button is clicked."""

    model: Any
    meta: dict
    data: Any  # the layer's array (numpy or dask); planes are read in the worker
    rgb: bool
    plane: tuple | None  # leading index of a one-plane run; None = all planes
    tile: int | None
    overlap: int | None
    device: str
    prior: np.ndarray | None = None  # (sH, sW) for one plane, lead + (sH, sW) for all
    background_removal: bool = True  # the model's out-of-focus stage, if it has one


@dataclass
class Outcome:
    """What a run gave: the SR stack (+ parsing) or a one-line error for the user."""

    image: np.ndarray | None = None
    labels: np.ndarray | None = None
    error: str | None = None
    meta: dict = field(default_factory=dict)
    mr: np.ndarray | None = None  # PathSRGAN's medium-resolution image (paper 002 §III-C)
    mr_factor: int | None = None  # its scale factor (2)


@dataclass
class Step:
    """Progress over all planes: ``done`` of ``total`` tiles, and what is running.

    ``fraction`` (0-1, finer than tiles when the engine reports progress inside
    a tile) and ``eta_s`` (seconds left) are the engine's when its events carry
    them, else None (the panel then estimates the time left from the rate).
    """

    done: int
    total: int
    stage: str
    fraction: float | None = None
    eta_s: float | None = None


class JobFailed(Exception):
    """A bug inside a run. Not a RuntimeError, which the worker would swallow."""


def _is_oom(exc: BaseException) -> bool:
    import torch

    oom = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", ())
    return isinstance(exc, (MemoryError, oom)) or "out of memory" in str(exc).lower()


def _oom_message(job: SRJob) -> str:
    tile = f"tile {job.tile} px" if job.tile else "the whole image as one tile"
    return (
        f"out of memory on {job.device.upper()} with {tile}: choose a smaller tile size "
        "(e.g. 128), or the CPU device"
    )


def _calls(job: SRJob):
    """(leading index, prior) of each ``predict_iter`` call.

    One plane: one 2-D call. All planes: one call per stack of the last
    leading axis, so that predict batches the tiles of its planes and fits the
    intensity normalisation on the stack.
    """
    lead = leading_shape(np.shape(job.data), job.rgb)
    if job.plane is not None or not lead:
        return [(tuple(job.plane or ()), job.prior)]
    outer = list(product(*(range(n) for n in lead[:-1])))
    return [(o, None if job.prior is None else job.prior[o]) for o in outer]


def run_sr(job: SRJob) -> Iterator[Step]:
    """Generator: super-resolve the plane(s) of ``job``.

    Yields :class:`Step` after every tile (from ``predict.predict_iter``) and
    returns an :class:`Outcome`. Problems the user can fix (a
    :class:`~napari_resolve.errors.ResolveError` from the core, running out of
    memory) come back as ``Outcome.error`` so the widget shows one line; a
    stopped worker simply never asks for the next step, and nothing is returned.
    """
    from napari_resolve import predict

    calls = _calls(job)
    n = len(calls)
    images, labels, meta = [], [], {}
    # PathSRGAN also gives its G1 image ("mr", x2): ask for it and show it as a layer too
    mr_factor = getattr(job.model, "mr_scale", None)
    mrs = []
    try:
        for k, (idx, prior) in enumerate(calls):
            # the layer's data (maybe dask) is read here, in the worker thread
            block = np.asarray(job.data[idx] if idx else job.data)
            gen = predict.predict_iter(
                (job.model, job.meta),
                block,
                tile=job.tile,
                overlap=job.overlap,
                device=job.device,
                prior=prior,
                channel_axis=-1 if job.rgb else None,
                extras=bool(mr_factor),
                background_removal=job.background_removal,
            )
            while True:
                try:
                    ev = next(gen)
                except StopIteration as stop:
                    result = stop.value
                    break
                label = f"stack {k + 1}/{n}: {ev.stage}" if n > 1 else str(ev.stage)
                total = max(int(ev.total), 1)
                inner = getattr(ev, "fraction", None)  # engines that report inside a tile
                fraction = None if inner is None else (k + float(inner)) / n
                # the engine's estimate covers this call only: with several calls the panel
                # estimates from the rate over all of them
                eta = getattr(ev, "eta_s", None) if n == 1 else None
                yield Step(k * total + int(ev.done), n * total, label, fraction, eta)
            images.append(result.image)
            labels.append(result.labels)
            mrs.append(result.extras.get("mr") if mr_factor else None)
            meta = dict(result.meta or {})
    except ResolveError as exc:
        return Outcome(error=str(exc))
    except (MemoryError, RuntimeError) as exc:
        if _is_oom(exc):
            return Outcome(error=_oom_message(job))
        raise JobFailed(f"super-resolution failed: {type(exc).__name__}: {exc}") from exc
    lead = leading_shape(np.shape(job.data), job.rgb)
    lead_out = lead if job.plane is None else tuple(1 for _ in lead)

    def assemble(parts):
        if any(p is None for p in parts):
            return None
        arr = np.stack([np.asarray(p) for p in parts])
        plane_shape = arr.shape[1:] if job.plane is not None or not lead else arr.shape[2:]
        return arr.reshape(lead_out + tuple(plane_shape))

    mr = assemble(mrs)
    return Outcome(image=assemble(images), labels=assemble(labels), meta=meta, mr=mr,
                   mr_factor=int(mr_factor) if mr is not None else None)
