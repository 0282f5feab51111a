"""napari writers: Image and Labels layers to OME-TIFF, keeping the pixel size.

The physical pixel size is the layer's ``scale`` on its last two (image) axes
when the layer has physical ``units`` (µm, nm, …, converted to µm); a layer in
pixel units is written without a calibration rather than with a false
"1 µm". The layer's ``translate`` (for example the half-pixel shift of an SR
layer) is not stored: OME-TIFF has no field for it. Labels are marked in the
OME ``Description`` so that our reader opens them as Labels again. Files are
written atomically by :func:`napari_resolve.io.write_image`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from napari_resolve.errors import ResolveError
from napari_resolve.napari._reader import LABELS_MARK


def _pixel_size_um(meta: dict):
    """(y, x) pixel size in µm from the layer's scale and units, or None (pixel units)."""
    scale = meta.get("scale")
    units = meta.get("units")
    if scale is None or len(scale) < 2:
        return None
    import pint  # napari's own unit library

    factors = []
    for unit in list(units or [])[-2:]:
        try:
            quantity = pint.Quantity(1.0, unit)
            if str(quantity.units) == "pixel":
                return None
            factors.append(float(quantity.to("micrometer").magnitude))
        except (pint.errors.PintError, ValueError, TypeError, AttributeError):
            return None  # an unknown or non-length unit: no calibration
    if len(factors) != 2:
        return None
    return tuple(float(s) * f for s, f in zip(scale[-2:], factors))


def _axes(data: np.ndarray, rgb: bool) -> str:
    spatial = data.ndim - (1 if rgb else 0)
    lead = {0: "", 1: "Z", 2: "CZ", 3: "TCZ"}.get(spatial - 2)
    if lead is None:
        raise ResolveError(f"cannot write a layer with {spatial} axes to OME-TIFF (at most 5)")
    return lead + "YX" + ("S" if rgb else "")


def _write(path: str, data, meta: dict, description: str | None) -> list[str]:
    from napari.utils.notifications import show_error

    from napari_resolve import io

    target = Path(path)
    if target.suffix.lower() not in (".tif", ".tiff"):
        target = target.with_name(target.name + ".ome.tif")
    arr = np.asarray(data)
    rgb = bool(meta.get("rgb", False))
    try:
        io.write_image(target, arr, pixel_size=_pixel_size_um(meta), unit="µm",
                       axes=_axes(arr, rgb), description=description)
    except ResolveError as exc:
        show_error(f"cannot save {target.name}: {exc}")
        return []
    return [str(target)]


def write_image(path: str, data, meta: dict) -> list[str]:
    """npe2 single-layer writer for Image layers (grey, RGB, stacks)."""
    return _write(path, data, meta, None)


def write_labels(path: str, data, meta: dict) -> list[str]:
    """npe2 single-layer writer for Labels layers (kept as integers, marked as labels)."""
    arr = np.asarray(data)
    if arr.dtype.kind not in "iu":
        arr = arr.astype(np.int32)
    return _write(path, arr, {**meta, "rgb": False}, LABELS_MARK)
