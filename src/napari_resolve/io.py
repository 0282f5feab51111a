"""Reading and writing images with their physical pixel size.

``read_image(path) -> (array, meta)`` reads

* TIFF / OME-TIFF (``tifffile``): the first series, as stored (axes in
  ``meta["axes"]``, tifffile's letters: ``S`` = RGB samples). The pixel size
  comes from, in order, the OME ``PhysicalSizeX/Y`` (with their units), the
  ImageJ ``unit`` + resolution tags, or resolution tags in centimetres.
  Resolution in dots per inch is ignored: it is a print setting (72, 96,
  300 dpi) far more often than a microscope calibration.
* PNG / JPEG / BMP / GIF (``imageio``): no pixel size.
* MRC (``mrcfile``): the standard header stores the cell in ångström; the
  Priism / DeltaVision variant used by SIM software (and by ``MT.mrc`` of
  rDL-SIM; recognised by its ID -16224 at byte 96) stores it in µm.
* ``.npy`` with ``allow_pickle=False``.

``meta`` is a dict: ``pixel_size`` (µm, float, X = Y for square pixels, or ``None``),
``pixel_size_yx`` (µm, (y, x) or ``None``), ``unit`` ("µm"), ``axes``,
``rgb`` (bool), ``format``, ``path``.

``write_image(path, array, pixel_size=..., unit=..., axes=...)`` writes an
OME-TIFF with ``PhysicalSizeX/Y`` (or a PNG / ``.npy`` when the name says so)
through :func:`napari_resolve._atomic.atomic_path`.

Pickle-based files (``.pt``, ``.pth``, ``.ckpt``, ``.pkl``, ...) are refused
without being opened: unpickling runs arbitrary code.

Bounded memory (issue 15): the image size is read from the file's header
(TIFF series, ``.npy`` header, MRC header, Pillow's lazy open) and an image
of more than :func:`pixel_limit` values (all planes and channels; default
:data:`MAX_PIXELS`, 2**27 = 134 M, 512 MB as float32: an 11585² grey or
6688² RGB image) is refused *before* it
is decoded, so a deflate bomb or a ``.npy`` header claiming 100000² never
allocates. Bigger images go through the lazy zarr path, or raise the limit
with ``--max-pixels`` / ``$NAPARI_RESOLVE_MAX_PIXELS`` / :func:`set_pixel_limit`.
A ``.npy`` whose header claims more data than the file holds is refused as
truncated.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from napari_resolve._atomic import atomic_path
from napari_resolve.errors import InputError

__all__ = ["read_image", "write_image", "READ_SUFFIXES", "WRITE_SUFFIXES", "to_micrometre",
           "MAX_PIXELS", "pixel_limit", "set_pixel_limit", "check_pixels"]

#: default limit of values (pixels x planes x channels) read into memory
MAX_PIXELS = 2**27
ENV_MAX_PIXELS = "NAPARI_RESOLVE_MAX_PIXELS"
_LIMIT: list = [None]


def set_pixel_limit(n: int | None) -> None:
    """Set this process's limit (``None``: ``$NAPARI_RESOLVE_MAX_PIXELS`` or the default)."""
    if n is not None and int(n) < 1:
        raise InputError(f"--max-pixels must be positive, got {n}")
    _LIMIT[0] = None if n is None else int(n)


def pixel_limit() -> int:
    """The number of values an in-memory image may hold (see the module docstring)."""
    if _LIMIT[0] is not None:
        return _LIMIT[0]
    env = os.environ.get(ENV_MAX_PIXELS)
    if env:
        try:
            return max(1, int(float(env)))
        except ValueError:
            raise InputError(f"{ENV_MAX_PIXELS}={env!r} is not a number") from None
    return MAX_PIXELS


_ZARR_HINT = "use a zarr input, which is read lazily (predict IN.zarr -o OUT.zarr)"


def check_pixels(shape, what: str, *, factor: int = 1, hint: str = "") -> None:
    """Refuse an array of ``shape`` (times ``factor``) above :func:`pixel_limit`, in one line."""
    n = int(np.prod([int(d) for d in shape], dtype=object)) * int(factor)
    limit = pixel_limit()
    if n > limit:
        raise InputError(
            f"{what} holds {n:,} values ({'x'.join(str(int(d)) for d in shape)}"
            f"{f' x {factor}' if factor != 1 else ''}), above the {limit:,} limit for "
            f"in-memory work; {hint or _ZARR_HINT}"
            f", or raise the limit with --max-pixels N (or {ENV_MAX_PIXELS})"
        )

TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".tf8", ".tf2")
PLAIN_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
MRC_SUFFIXES = (".mrc", ".mrcs", ".map", ".rec", ".st", ".ali")
PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".joblib", ".bin", ".h5model")
READ_SUFFIXES = TIFF_SUFFIXES + PLAIN_SUFFIXES + MRC_SUFFIXES + (".npy",)
WRITE_SUFFIXES = (".tif", ".tiff", ".png", ".npy")

#: micrometres per unit (OME UnitsLength symbols and ImageJ spellings)
_UM_PER_UNIT = {
    "µm": 1.0, "μm": 1.0, "um": 1.0, "micron": 1.0, "microns": 1.0, "micrometer": 1.0,
    "micrometre": 1.0, "\\u00b5m": 1.0, "nm": 1e-3, "nanometer": 1e-3, "nanometre": 1e-3,
    "pm": 1e-6, "å": 1e-4, "angstrom": 1e-4, "mm": 1e3, "cm": 1e4, "m": 1e6,
}
_PRIISM_ID = -16224


def to_micrometre(value, unit) -> float | None:
    """``value`` in ``unit`` -> µm, or ``None`` when the unit is unknown / the value unusable."""
    if value is None or unit is None:
        return None
    factor = _UM_PER_UNIT.get(str(unit).strip().lower().replace("\u00c5", "å"))
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    if factor is None or not np.isfinite(value) or value <= 0:
        return None
    return value * factor


def _one_line(exc) -> str:
    return " ".join(str(exc).split())[:200] or type(exc).__name__


def _suffix(path: Path) -> str:
    return path.suffix.lower()


def _refuse_pickle(path: Path) -> None:
    if _suffix(path) in PICKLE_SUFFIXES:
        raise InputError(
            f"{path.name}: pickle-based files ({', '.join(PICKLE_SUFFIXES[:5])}) are never "
            "opened, because loading them can run arbitrary code; save images as TIFF"
        )


def _meta(path: Path, fmt: str, axes: str, arr: np.ndarray, yx=None) -> dict:
    py, px = yx if yx is not None else (None, None)
    if py is None and px is None:
        size_yx = None
    else:
        py, px = (py or px), (px or py)  # one given: assume square pixels
        size_yx = (float(py), float(px))
    return {
        # X size (= Y for square pixels); pixel_size_yx keeps both
        "pixel_size": None if size_yx is None else size_yx[1],
        "pixel_size_yx": size_yx,
        "unit": "µm",
        "axes": axes,
        "rgb": bool(axes.endswith("S") and arr.ndim >= 3 and arr.shape[-1] in (3, 4)),
        "format": fmt,
        "path": str(path),
    }


def _tiff_pixel_size(tif) -> tuple | None:
    import tifffile

    if tif.is_ome and tif.ome_metadata:
        try:
            ome = tifffile.xml2dict(tif.ome_metadata)["OME"]
            image = ome["Image"][0] if isinstance(ome["Image"], list) else ome["Image"]
            pixels = image["Pixels"]
            px = to_micrometre(pixels.get("PhysicalSizeX"), pixels.get("PhysicalSizeXUnit", "µm"))
            py = to_micrometre(pixels.get("PhysicalSizeY"), pixels.get("PhysicalSizeYUnit", "µm"))
            if px or py:
                return py, px
        except (KeyError, TypeError, IndexError, ValueError):
            pass  # malformed OME-XML: try the plain tags below
    page = tif.pages.first if hasattr(tif.pages, "first") else tif.pages[0]
    tags = page.tags
    if "XResolution" not in tags:
        return None

    def per_unit(tag):
        num, den = tags[tag].value if tag in tags else tags["XResolution"].value
        return num / den if num and den else 0.0

    rx, ry = per_unit("XResolution"), per_unit("YResolution")
    if rx <= 0 or ry <= 0:
        return None
    ij_unit = (tif.imagej_metadata or {}).get("unit") if tif.is_imagej else None
    if ij_unit:
        return to_micrometre(1.0 / ry, ij_unit), to_micrometre(1.0 / rx, ij_unit)
    unit = int(tags["ResolutionUnit"].value) if "ResolutionUnit" in tags else 2
    if unit == 3:  # centimetre
        return to_micrometre(1.0 / ry, "cm"), to_micrometre(1.0 / rx, "cm")
    return None  # inch (a print setting) or no unit


def _read_tiff(path: Path):
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            check_pixels(series.shape, path.name)  # from the header, before decoding
            arr = series.asarray()
            axes = series.axes
            yx = _tiff_pixel_size(tif)
    except (MemoryError, InputError):
        raise
    except Exception as exc:  # noqa: BLE001 - corrupt data: zlib.error, struct.error, codecs...
        raise InputError(f"{path.name} is not a readable TIFF: {_one_line(exc)}") from None
    return arr, _meta(path, "tiff", axes, arr, yx)


def _read_plain(path: Path):
    import imageio.v3 as iio

    try:
        from PIL import Image

        with Image.open(path) as im:  # lazy: the size from the header
            size = (im.size[1], im.size[0], len(im.getbands()))
    except Exception:  # noqa: BLE001 - unreadable: the reader below says why
        size = None
    if size is not None:
        check_pixels(size, path.name)
    try:
        # Pillow only: imageio would otherwise try every plugin (DICOM...) on a broken file
        arr = np.asarray(iio.imread(path, plugin="pillow", index=0 if _suffix(path) == ".gif" else None))
    except Exception as exc:  # imageio/Pillow raise many types for corrupt files
        raise InputError(f"{path.name} is not a readable {_suffix(path)[1:].upper()} image: {exc}") from None
    axes = "YX" if arr.ndim == 2 else "YXS"
    return arr, _meta(path, _suffix(path)[1:], axes, arr)


def _read_mrc(path: Path):
    import mrcfile

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # non-standard headers warn; we check below
            with mrcfile.mmap(path, permissive=True, mode="r") as mrc:
                if mrc.data is None:
                    raise ValueError("no data block")
                check_pixels(mrc.data.shape, path.name)  # mapped, not read yet
                arr = np.array(mrc.data)
                header = mrc.header
                # header floats are float32: str() gives the shortest decimal (0.0626, not 0.06260000169)
                cell = np.array([float(str(header.cella.x)), float(str(header.cella.y))])
                grid = np.array([int(header.mx), int(header.my)])
    except (MemoryError, InputError):
        raise
    except Exception as exc:  # noqa: BLE001 - malformed headers raise many types
        raise InputError(f"{path.name} is not a readable MRC file: {_one_line(exc)}") from None
    with open(path, "rb") as fh:
        head = fh.read(98)
    ids = {int.from_bytes(head[96:98], order, signed=True) for order in ("little", "big")}
    unit = "µm" if _PRIISM_ID in ids else "å"
    with np.errstate(divide="ignore", invalid="ignore"):
        size_xy = np.where(grid > 0, cell / np.maximum(grid, 1), 0.0)
    yx = (to_micrometre(size_xy[1], unit), to_micrometre(size_xy[0], unit))
    axes = ("Q" * max(arr.ndim - 3, 0) + "ZYX")[-arr.ndim:]
    return arr, _meta(path, "mrc", axes, arr, yx)


def _npy_header(path: Path) -> None:
    """Shape and size from the ``.npy`` header: refuse oversized or truncated files unread."""
    from numpy.lib import format as npformat

    try:
        with open(path, "rb") as fh:
            version = npformat.read_magic(fh)
            read = {(1, 0): npformat.read_array_header_1_0,
                    (2, 0): npformat.read_array_header_2_0}.get(version)
            if read is None:
                return  # other versions: np.load decides
            shape, _, dtype = read(fh, max_header_size=10000)
            offset = fh.tell()
    except (ValueError, OSError, SyntaxError):
        return  # np.load gives the one-line reason
    if dtype.hasobject:
        return  # refused by np.load(allow_pickle=False)
    check_pixels(shape, path.name)
    need = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if offset + need > path.stat().st_size:
        raise InputError(f"{path.name} is truncated: its header claims {need} bytes of data, "
                         f"the file holds {path.stat().st_size - offset}")


def _read_npy(path: Path):
    _npy_header(path)
    try:
        arr = np.load(path, allow_pickle=False)
    except ValueError as exc:
        raise InputError(f"{path.name}: cannot read without unpickling ({exc})") from None
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - truncated or malformed file
        raise InputError(f"{path.name} is not a readable .npy file: {_one_line(exc)}") from None
    if not isinstance(arr, np.ndarray):
        raise InputError(f"{path.name} holds several arrays; save one image per .npy file")
    axes = "YX" if arr.ndim == 2 else ("YXS" if arr.ndim == 3 and arr.shape[-1] in (3, 4) else "")
    return arr, _meta(path, "npy", axes or "Q" * arr.ndim, arr)


def read_image(path):
    """Read an image and its metadata: ``(array, meta)`` (see the module docstring)."""
    path = Path(path)
    _refuse_pickle(path)
    if not path.exists():
        raise InputError(f"image file not found: {path}")
    if path.is_dir():
        raise InputError(f"{path} is a folder, not an image file")
    sfx = _suffix(path)
    if sfx in TIFF_SUFFIXES:
        arr, meta = _read_tiff(path)
    elif sfx in PLAIN_SUFFIXES:
        arr, meta = _read_plain(path)
    elif sfx in MRC_SUFFIXES:
        arr, meta = _read_mrc(path)
    elif sfx == ".npy":
        arr, meta = _read_npy(path)
    else:
        raise InputError(
            f"{path.name}: unknown image format {sfx or '(no extension)'}; "
            f"supported: {', '.join(READ_SUFFIXES)}"
        )
    if arr.size == 0:
        raise InputError(f"{path.name} holds an empty image (shape {arr.shape})")
    return arr, meta


def _default_axes(arr: np.ndarray) -> str:
    rgb = arr.shape[-1] in (3, 4) and arr.ndim >= 3
    if arr.ndim == 2:
        return "YX"
    if arr.ndim == 3:
        return "YXS" if rgb else "ZYX"
    if arr.ndim == 4:
        return "ZYXS" if rgb else "CZYX"
    if arr.ndim == 5:
        return "TCZYX"
    raise InputError(f"cannot write a {arr.ndim}-D image; give at most 5 axes")


def write_image(path, array, *, pixel_size=None, unit: str = "µm", axes: str | None = None,
                description: str | None = None) -> Path:
    """Write ``array`` to ``path`` atomically; returns the path.

    ``.tif``/``.tiff`` (incl. ``.ome.tif``): OME-TIFF with ``PhysicalSizeX/Y``
    from ``pixel_size`` (a float, or (y, x)) in ``unit``; ``axes`` default:
    YX, YXS (RGB: last axis 3 or 4), ZYX, CZYX, TCZYX by ndim. ``.png``:
    uint8/uint16 grey or RGB(A), no pixel size. ``.npy``: plain array.
    """
    import tifffile

    path = Path(path)
    _refuse_pickle(path)
    arr = np.asarray(array)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise InputError(f"cannot write an image of dtype {arr.dtype}")
    if arr.ndim < 2 or arr.size == 0:
        raise InputError(f"image to write must be at least 2-D and non-empty, got shape {arr.shape}")
    sfx = _suffix(path)
    if sfx not in WRITE_SUFFIXES:
        raise InputError(f"{path.name}: cannot write {sfx or 'files without extension'}; use "
                         f"{', '.join(WRITE_SUFFIXES)}")
    if sfx == ".npy":
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, arr, allow_pickle=False)
        return path
    if sfx == ".png":
        import imageio.v3 as iio

        if arr.dtype not in (np.uint8, np.uint16) or not (
            arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] in (3, 4))
        ):
            raise InputError("PNG holds uint8/uint16 grey or RGB(A) images; write a .tif instead")
        with atomic_path(path) as tmp:
            iio.imwrite(tmp, arr, plugin="pillow", extension=".png")
        return path
    axes = (axes or _default_axes(arr)).upper()
    if len(axes) != arr.ndim:
        raise InputError(f"axes {axes!r} do not match an image with {arr.ndim} dimensions")
    metadata = {"axes": axes}
    if description:  # OME Image Description (the napari writer marks label images with it)
        metadata["Description"] = str(description)
    if pixel_size is not None:
        sizes = np.broadcast_to(np.asarray(pixel_size, dtype=np.float64), (2,))
        if not np.isfinite(sizes).all() or (sizes <= 0).any():
            raise InputError(f"pixel_size must be positive, got {pixel_size}")
        ome_unit = {"um": "µm", "micron": "µm", "μm": "µm"}.get(str(unit).lower(), str(unit))
        if to_micrometre(1.0, ome_unit) is None:
            raise InputError(f"unknown pixel size unit {unit!r}; use nm, µm or mm")
        metadata.update(
            PhysicalSizeY=float(sizes[0]), PhysicalSizeX=float(sizes[1]),
            PhysicalSizeYUnit=ome_unit, PhysicalSizeXUnit=ome_unit,
        )
    photometric = "rgb" if axes.endswith("S") and arr.shape[-1] in (3, 4) else "minisblack"
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, arr, ome=True, photometric=photometric, metadata=metadata,
                         bigtiff=arr.nbytes > 2**31)
    return path
