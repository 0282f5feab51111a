"""napari reader: OME-TIFF / TIFF, LabelMe JSON, and ``.safetensors`` model files.

* TIFF / OME-TIFF (:func:`napari_resolve.io.read_image`): the physical pixel
  size (µm) goes into ``layer.scale`` of the two image axes, with ``units``
  µm; files without a calibration open with scale 1 (pixels). Files written by
  our labels writer (OME ``Description`` = :data:`LABELS_MARK`) open as Labels.
* MRC (``.mrc``, e.g. SIM raw data such as rDL-SIM's ``MT.mrc``;
  :func:`napari_resolve.io.read_image` through ``mrcfile``): the pixel size
  from the header goes into ``layer.scale`` (µm), as for TIFF.
* LabelMe JSON (how paper 000 §3.1 annotated nucleus and cytoplasm): polygons
  painted by :func:`napari_resolve.data.labels.labelme_to_labels` into a
  Labels layer with our values (0 background, 1 cytoplasm, 2 nucleus) and the
  parsing colours. JSON files that are not LabelMe are left to other readers.
* ``.safetensors``: opens the Super-resolve widget with that model loaded (no
  layer is added). Pickled checkpoints are never opened.

Reading errors become a notification naming the file and the problem.
"""

from __future__ import annotations

import json
from pathlib import Path

from napari_resolve.errors import ResolveError

LABELS_MARK = "napari-resolve labels"
TIFF_SUFFIXES = (".tif", ".tiff")
MRC_SUFFIXES = (".mrc",)
_MAX_JSON_BYTES = 50 * 1024 * 1024  # a LabelMe file with embedded image data can be large


def _is_labelme(path: Path) -> bool:
    try:
        if path.stat().st_size > _MAX_JSON_BYTES:
            return False
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(doc, dict) and isinstance(doc.get("shapes"), list)


def get_reader(path):
    """npe2 ``get_reader``: a reader function for ``path``, or None if it is not ours."""
    if isinstance(path, (list, tuple)):
        readers = [get_reader(p) for p in path]
        if not readers or any(r is None for r in readers):
            return None
        return lambda paths: [layer for r, p in zip(readers, paths) for layer in r(p)]
    p = Path(path)
    name = p.name.lower()
    if name.endswith(".safetensors"):
        return read_model
    if name.endswith(".json"):
        return read_labelme if p.is_file() and _is_labelme(p) else None
    if name.endswith(TIFF_SUFFIXES):
        return read_tiff
    if name.endswith(MRC_SUFFIXES):
        return read_tiff  # io.read_image reads both, with the pixel size
    return None


def _stem(path: Path) -> str:
    name = path.name
    for sfx in (".ome.tiff", ".ome.tif", ".tiff", ".tif", ".json", ".mrc"):
        if name.lower().endswith(sfx):
            return name[: -len(sfx)]
    return path.stem


def _notify(exc: Exception) -> list:
    from napari.utils.notifications import show_error

    show_error(str(exc))
    return [(None,)]  # napari's "read, nothing to add": no second reader, no traceback


def _ome_description(path: Path) -> str:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            if not (tif.is_ome and tif.ome_metadata):
                return ""
            image = tifffile.xml2dict(tif.ome_metadata)["OME"]["Image"]
            image = image[0] if isinstance(image, list) else image
            return str(image.get("Description") or "")
    except (tifffile.TiffFileError, KeyError, TypeError, ValueError, OSError):
        return ""


def layer_scale(ndim: int, pixel_size_yx) -> tuple[tuple, dict]:
    """``scale`` for an ``ndim``-axis layer with physical pixel size on the last two axes.

    Returns the scale and extra layer keywords (``units``): µm on every axis
    when the file is calibrated (napari wants one unit system), else pixels.
    """
    if not pixel_size_yx:
        return (1.0,) * ndim, {}
    scale = (1.0,) * (ndim - 2) + tuple(float(v) for v in pixel_size_yx)
    return scale, {"units": ("µm",) * ndim}


def read_tiff(path):
    """Read a (OME-)TIFF or MRC as an Image layer (or Labels, for TIFFs our writer marked)."""
    from napari_resolve import io

    path = Path(path)
    try:
        data, meta = io.read_image(path)
    except ResolveError as exc:
        return _notify(exc)
    rgb = bool(meta.get("rgb"))
    spatial_ndim = data.ndim - (1 if rgb else 0)
    scale, extra = layer_scale(spatial_ndim, meta.get("pixel_size_yx"))
    kwargs = {"name": _stem(path), "scale": scale, "metadata": {"io": meta}, **extra}
    if not rgb and path.name.lower().endswith(TIFF_SUFFIXES) and \
            _ome_description(path) == LABELS_MARK:
        from napari_resolve.napari._style import parsing_style

        kwargs.update(parsing_style() if data.max(initial=0) <= 2 else {})
        return [(data, kwargs, "labels")]
    return [(data, {**kwargs, "rgb": rgb}, "image")]


def read_labelme(path):
    """Read LabelMe polygons as a parsing Labels layer (0 background, 1 cytoplasm, 2 nucleus)."""
    from napari_resolve.data.labels import labelme_to_labels
    from napari_resolve.napari._style import parsing_style

    path = Path(path)
    try:
        labels = labelme_to_labels(path)
    except ResolveError as exc:
        return _notify(exc)
    return [(labels, {"name": f"{_stem(path)} parsing", **parsing_style()}, "labels")]


def read_model(path):
    """Open the Super-resolve widget of the current viewer with this model file loaded."""
    import napari

    viewer = napari.current_viewer()
    if viewer is None:
        from napari.utils.notifications import show_error

        show_error(f"{Path(path).name}: open a napari viewer to load a model file")
        return [(None,)]
    _, widget = viewer.window.add_plugin_dock_widget("napari-resolve", "Super-resolve")
    widget.load_model_file(path)  # refusals (pickles, bad files) are notified there
    return [(None,)]
