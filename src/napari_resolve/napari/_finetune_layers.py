"""Layers to training data for the Fine-tune panel, copied in the GUI thread (no widgets here).

:func:`layer_images` turns an image layer (and its LR partner or its Labels
layer, the parsing-map supervision of paper 000 §2.3) into
:class:`~napari_resolve.train.finetuning.TrainingImage` s, one per plane of a
stack; :func:`_free_path` picks an output name that overwrites nothing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from napari.layers import Image, Labels

from napari_resolve.errors import InputError

__all__ = ["layer_images"]



def _planes(layer, what: str) -> list[np.ndarray]:
    """The 2-D planes (grey or RGB) of a layer, copied (the run must not see later edits)."""
    if layer.multiscale:
        raise InputError(f"'{layer.name}' is a multiscale (pyramid) layer: fine-tune on a crop")
    data = np.array(layer.data, copy=True)
    if data.size == 0:
        raise InputError(f"{what} '{layer.name}' is empty (shape {data.shape})")
    rgb = bool(getattr(layer, "rgb", False))
    plane_ndim = 3 if rgb else 2
    if data.ndim < plane_ndim:
        raise InputError(f"{what} '{layer.name}' is not an image (shape {data.shape})")
    flat = data.reshape((-1,) + data.shape[data.ndim - plane_ndim:])
    return [flat[i] for i in range(flat.shape[0])]


def _pixel_size_nm(layer) -> float | None:
    from napari_resolve.napari.resolution_widget import pixel_sizes_nm

    sizes, unit, _ = pixel_sizes_nm([layer])
    return float(sizes[0]) if unit == "nm" else None


def layer_images(hr_layer, partner=None, form: str = "hr"):
    """:class:`~napari_resolve.train.finetuning.TrainingImage` s of one layer (and its partner).

    ``partner``: the LR Image layer (``form="pairs"``) or the Labels layer
    (``form="labels"``); planes of stacks are paired in order.
    """
    from napari_resolve.train.finetuning import TrainingImage

    if hr_layer is None:
        raise InputError("a training row has no image layer: choose one or remove the row")
    if not isinstance(hr_layer, Image):
        raise InputError(f"'{hr_layer.name}' is not an image layer")
    if form != "hr" and partner is None:
        what = "LR image" if form == "pairs" else "parsing Labels layer"
        raise InputError(f"choose the {what} for '{hr_layer.name}'")
    if form == "labels" and not isinstance(partner, Labels):
        raise InputError(f"'{partner.name}' is not a Labels layer")
    if form == "pairs" and not isinstance(partner, Image):
        raise InputError(f"'{partner.name}' is not an image layer")
    hr = _planes(hr_layer, "image")
    others = [None] * len(hr)
    if partner is not None and form != "hr":
        others = _planes(partner, "LR image" if form == "pairs" else "labels layer")
        if len(others) != len(hr):
            raise InputError(
                f"'{hr_layer.name}' has {len(hr)} plane(s) but '{partner.name}' has {len(others)}"
            )
    px = _pixel_size_nm(hr_layer)
    out = []
    for i, (plane, other) in enumerate(zip(hr, others)):
        name = hr_layer.name if len(hr) == 1 else f"{hr_layer.name} [{i}]"
        out.append(TrainingImage(
            name, plane,
            lr=other if form == "pairs" else None,
            labels=other if form == "labels" else None,
            pixel_size_nm=px, source=hr_layer.name,
        ))
    return out


def _free_path(path: Path) -> Path:
    """``path``, or ``name-2.safetensors``, ``name-3…`` when it exists (nothing is overwritten)."""
    if not path.exists():
        return path
    stem = path.stem
    for i in range(2, 10_000):
        cand = path.with_name(f"{stem}-{i}{path.suffix}")
        if not cand.exists():
            return cand
    raise InputError(f"no free file name beside {path}")
