"""Parsing maps (label images): 0 background, 1 cytoplasm, 2 nucleus.

Paper 000 (Hua et al. 2020, §2.1) guides SR of leukocytes with a three-class
parsing map (background / cytoplasm / nucleus), drawn as closed LabelMe
polygons around cytoplasm and nucleus (§3.1); the WBC dataset of Zheng et
al. 2018 ships it as grey masks 0 / 128 / 255. This module converts between
those masks, label images (uint8 0/1/2, as napari's Labels layer edits them),
one-hot maps for the networks, and LabelMe polygons (JSON), the usual format
of hand annotations.

Choices the paper leaves open:

* Grey masks: each pixel goes to the nearest of 0 / 128 / 255 (a few
  dataset-2 masks have stray values such as 7 or 97 from lossy editing); ties
  go to the lower class.
* LabelMe: "cytoplasm" polygons are painted first and "nucleus" polygons on
  top, so a cell is drawn as its outline plus its nucleus; "background"
  polygons are accepted and ignored; polygon, rectangle and circle shapes are
  read. A pixel belongs to a polygon when its centre lies inside (pixel
  centres at integer coordinates, as in LabelMe and ``skimage.draw``).
* :func:`labels_to_labelme` traces, at level 0.5, the outline of the whole
  cell (labels >= 1, the "cytoplasm" shape) and of the nucleus (labels == 2)
  with ``skimage.measure.find_contours``; re-painting those polygons gives the
  labels back exactly except inside holes (LabelMe polygons cannot have
  holes, so background enclosed by a cell comes back as cytoplasm).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from napari_resolve.errors import InputError

__all__ = [
    "LABEL_NAMES",
    "NUM_CLASSES",
    "MASK_VALUES",
    "mask_to_labels",
    "labels_to_mask",
    "check_labels",
    "labels_to_onehot",
    "labelme_to_labels",
    "labels_to_labelme",
]

LABEL_NAMES = {0: "background", 1: "cytoplasm", 2: "nucleus"}
NUM_CLASSES = 3
#: grey value of each class in the WBC masks of Zheng et al. 2018
MASK_VALUES = np.array([0, 128, 255])
_NAME_TO_LABEL = {v: k for k, v in LABEL_NAMES.items()}


def _numeric(arr: np.ndarray, what: str) -> None:
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise InputError(f"{what} must be a real numeric array, got dtype {arr.dtype}")


def mask_to_labels(mask) -> np.ndarray:
    """Grey mask (0 / 128 / 255, stray values to the nearest) -> labels uint8 0 / 1 / 2.

    ``mask`` is 2-D (or H x W x 3/4 with equal colour channels, as some
    editors save grey masks), on the 0..255 scale.
    """
    arr = np.asarray(mask)
    _numeric(arr, "mask")
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        rgb = arr[..., :3]
        if not (rgb == rgb[..., :1]).all():
            raise InputError("mask has colours; expected a grey mask with values 0 / 128 / 255")
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise InputError(f"mask must be 2-D (rows, cols), got shape {np.shape(mask)}")
    if arr.size == 0:
        raise InputError(f"mask is empty (shape {arr.shape})")
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        raise InputError("mask contains NaN or infinite values")
    # nearest class value; the midpoints 64 and 191.5 split the classes (ties -> lower)
    values = arr.astype(np.float64)
    labels = (values > 64).astype(np.uint8) + (values > 191.5).astype(np.uint8)
    return labels


def labels_to_mask(labels) -> np.ndarray:
    """Labels 0 / 1 / 2 -> grey mask uint8 0 / 128 / 255 (the WBC dataset's encoding)."""
    lab = check_labels(labels, ndim=None)
    return MASK_VALUES.astype(np.uint8)[lab]


def check_labels(labels, shape=None, *, ndim: int | None = 2) -> np.ndarray:
    """Validate a label image and return it as uint8.

    Parameters
    ----------
    labels : array of integers 0 (background), 1 (cytoplasm), 2 (nucleus)
        Integer-valued floats are accepted (napari may hand those over).
    shape : tuple, optional
        The exact shape required (e.g. the SR image's (rows, cols)).
    ndim : int or None
        Number of dimensions required when ``shape`` is not given (default 2).
    """
    if labels is None:
        raise InputError("labels are missing")
    try:
        arr = np.asarray(labels)
    except Exception as exc:  # ragged lists and such
        raise InputError(f"labels cannot be read as an array: {exc}") from None
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise InputError(f"labels must be integers 0, 1, 2, got dtype {arr.dtype}")
    if shape is not None:
        shape = tuple(int(s) for s in shape)
        if arr.shape != shape:
            raise InputError(f"labels have shape {arr.shape}, expected {shape}")
    elif ndim is not None and arr.ndim != ndim:
        raise InputError(f"labels must be {ndim}-D, got shape {arr.shape}")
    if arr.size == 0:
        raise InputError(f"labels are empty (shape {arr.shape})")
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise InputError("labels contain NaN or infinite values")
        if (arr != np.round(arr)).any():
            raise InputError("labels must be whole numbers 0, 1, 2, got fractional values")
    lo, hi = arr.min(), arr.max()
    if lo < 0 or hi > NUM_CLASSES - 1:
        bad = int(np.count_nonzero((arr < 0) | (arr > NUM_CLASSES - 1)))
        raise InputError(
            f"labels must be 0 (background), 1 (cytoplasm) or 2 (nucleus); "
            f"{bad} pixel(s) have values in [{lo}, {hi}]"
        )
    return arr.astype(np.uint8, copy=False)


def labels_to_onehot(labels, num_classes: int = NUM_CLASSES):
    """One-hot encode labels: (H, W) -> (3, H, W); (N, H, W) -> (N, 3, H, W).

    NumPy in -> float32 NumPy out; a torch tensor in -> a float tensor on the
    same device (differentiable use is not needed: labels are data).
    """
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        torch = None
    if torch is not None and torch.is_tensor(labels):
        if labels.is_floating_point() or labels.dtype == torch.bool:
            raise InputError(f"labels tensor must be integer, got {labels.dtype}")
        if labels.ndim not in (2, 3) or labels.numel() == 0:
            raise InputError(f"labels must be (H, W) or (N, H, W), got {tuple(labels.shape)}")
        if int(labels.min()) < 0 or int(labels.max()) >= num_classes:
            raise InputError(f"labels must be in 0..{num_classes - 1}")
        onehot = torch.nn.functional.one_hot(labels.long(), num_classes).float()
        return onehot.movedim(-1, -3)
    arr = np.asarray(labels)
    if arr.ndim not in (2, 3):
        raise InputError(f"labels must be (H, W) or (N, H, W), got shape {arr.shape}")
    lab = check_labels(arr, ndim=None) if num_classes == NUM_CLASSES else arr
    eye = np.eye(num_classes, dtype=np.float32)
    return np.moveaxis(eye[lab], -1, -3)


# --- LabelMe -----------------------------------------------------------------


def _read_labelme(src) -> dict:
    if isinstance(src, dict):
        return src
    path = Path(src)
    if not path.is_file():
        raise InputError(f"LabelMe file not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path.name} is not a LabelMe JSON file: {exc}") from None
    if not isinstance(data, dict):
        raise InputError(f"{path.name} is not a LabelMe JSON file (no top-level object)")
    return data


def _shape_pixels(shape: dict, out_shape, index: int):
    from skimage.draw import disk, polygon

    kind = shape.get("shape_type") or "polygon"
    try:
        pts = np.asarray(shape.get("points"), dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"LabelMe shape {index} has unreadable points") from None
    if pts.ndim != 2 or pts.shape[1] != 2 or not np.isfinite(pts).all():
        raise InputError(f"LabelMe shape {index} must have a list of [x, y] points")
    xs, ys = pts[:, 0], pts[:, 1]
    if kind == "polygon":
        if len(pts) < 3:
            raise InputError(f"LabelMe polygon {index} has {len(pts)} point(s); needs 3 or more")
        return polygon(ys, xs, shape=out_shape)
    if kind == "rectangle":
        if len(pts) != 2:
            raise InputError(f"LabelMe rectangle {index} must have 2 points")
        (x0, x1), (y0, y1) = sorted(xs), sorted(ys)
        return polygon([y0, y0, y1, y1], [x0, x1, x1, x0], shape=out_shape)
    if kind == "circle":
        if len(pts) != 2:
            raise InputError(f"LabelMe circle {index} must have 2 points (centre, rim)")
        radius = float(np.hypot(xs[1] - xs[0], ys[1] - ys[0]))
        return disk((ys[0], xs[0]), radius, shape=out_shape)
    raise InputError(
        f"LabelMe shape {index} has type {kind!r}; only polygon, rectangle and circle are supported"
    )


def labelme_to_labels(src, shape=None) -> np.ndarray:
    """Paint LabelMe polygons into labels (uint8 0 / 1 / 2).

    Parameters
    ----------
    src : path to a LabelMe ``.json`` file, or its parsed dict
    shape : (rows, cols), optional
        Output shape; default ``(imageHeight, imageWidth)`` from the file.
    """
    data = _read_labelme(src)
    if shape is None:
        try:
            shape = (int(data["imageHeight"]), int(data["imageWidth"]))
        except (KeyError, TypeError, ValueError):
            raise InputError(
                "LabelMe data has no imageHeight/imageWidth; pass shape=(rows, cols)"
            ) from None
    shape = tuple(int(s) for s in shape)
    if len(shape) != 2 or min(shape) < 1:
        raise InputError(f"labels shape must be (rows, cols) > 0, got {shape}")
    shapes = data.get("shapes")
    if not isinstance(shapes, list):
        raise InputError("LabelMe data has no 'shapes' list")
    by_class: dict[int, list] = {1: [], 2: []}
    for i, shp in enumerate(shapes):
        if not isinstance(shp, dict):
            raise InputError(f"LabelMe shape {i} is not an object")
        name = str(shp.get("label", "")).strip().lower()
        if name not in _NAME_TO_LABEL:
            raise InputError(
                f"LabelMe shape {i} has label {shp.get('label')!r}; "
                "expected 'nucleus', 'cytoplasm' or 'background'"
            )
        if _NAME_TO_LABEL[name]:
            by_class[_NAME_TO_LABEL[name]].append(_shape_pixels(shp, shape, i))
        else:
            _shape_pixels(shp, shape, i)  # validate, paint nothing
    labels = np.zeros(shape, dtype=np.uint8)
    for value in (1, 2):  # cytoplasm first, nucleus on top
        for rr, cc in by_class[value]:
            labels[rr, cc] = value
    return labels


def labels_to_labelme(labels, *, path=None, image_path: str | None = None) -> dict:
    """Trace labels as LabelMe polygons ("cytoplasm" = whole cell, "nucleus").

    Returns the LabelMe dict; with ``path`` it is also written there
    (atomically). Re-reading it with :func:`labelme_to_labels` gives the labels
    back (see the module notes for holes).
    """
    from skimage.measure import approximate_polygon, find_contours

    lab = check_labels(labels)
    h, w = lab.shape
    shapes = []
    for name, region in (("cytoplasm", lab >= 1), ("nucleus", lab == 2)):
        if not region.any():
            continue
        # pad so that regions touching the border give closed contours
        padded = np.pad(region.astype(np.float64), 1)
        for contour in find_contours(padded, 0.5):
            rc = contour[:-1] - 1.0  # drop the closing duplicate, undo the pad
            if len(rc) < 3:
                continue
            outer = _signed_area(rc) < 0
            # find_contours orients outlines so that, in (row, col), regions have a
            # negative signed area and holes a positive one; LabelMe cannot encode holes
            if not outer:
                continue
            # drop points on straight runs (tolerance ~0: the outline is unchanged), which
            # makes the polygon 2-3x shorter and re-painting it as much faster
            rc = approximate_polygon(np.vstack([rc, rc[:1]]), tolerance=1e-6)[:-1]
            points = [[float(c), float(r)] for r, c in rc]
            shapes.append(
                {"label": name, "points": points, "group_id": None,
                 "shape_type": "polygon", "flags": {}, "description": ""}
            )
    doc = {
        "version": "5.4.1",
        "flags": {},
        "shapes": shapes,
        "imagePath": image_path or "",
        "imageData": None,
        "imageHeight": int(h),
        "imageWidth": int(w),
    }
    if path is not None:
        from napari_resolve._atomic import atomic_path

        with atomic_path(path) as tmp:
            Path(tmp).write_text(json.dumps(doc, indent=1), encoding="utf-8")
    return doc


def _signed_area(rc: np.ndarray) -> float:
    r, c = rc[:, 0], rc[:, 1]
    return 0.5 * float(np.dot(r, np.roll(c, -1)) - np.dot(c, np.roll(r, -1)))
