"""``napari-resolve resolution``: image resolution by decorrelation analysis or FRC.

Decorrelation analysis (Descloux et al. 2019) needs one image; Fourier ring
correlation needs two independent acquisitions (``--second``) or splits one
image in a checkerboard (``--method frc`` alone). See
:mod:`napari_resolve.metrics.resolution` and ``docs/resolution.md``.

The pixel size comes from ``--pixel-size`` (in ``--unit``, default µm), else
from the file (OME / ImageJ TIFF, MRC header), else the result is in pixels.
RGB images are measured on their luminance (Y of YCbCr, BT.601). A stack is
measured plane by plane, or on its mean with ``--mean`` (e.g. the 9 raw SIM
frames of a wide-field image).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from napari_resolve.errors import InputError

NAME = "resolution"
HELP = "estimate image resolution (decorrelation analysis, or FRC of two images / one split)"

#: the plot shows at most this many planes of a stack
MAX_PLOTTED_PLANES = 16


def add_arguments(parser) -> None:
    parser.add_argument("image", type=Path, metavar="IMAGE", help="image file (TIFF, PNG, MRC, .npy, ...)")
    parser.add_argument("--method", choices=("decorrelation", "frc"), default=None,
                        help="decorrelation (default with one image) or frc (default with --second)")
    parser.add_argument("--second", type=Path, default=None, metavar="IMAGE_B",
                        help="an independent second acquisition of the same field, for FRC")
    parser.add_argument("--pixel-size", type=float, default=None, metavar="SIZE",
                        help="pixel size in --unit (default: from the file, else results in pixels)")
    parser.add_argument("--unit", default=None, metavar="UNIT",
                        help="unit of --pixel-size (default: um)")
    parser.add_argument("--mean", action="store_true",
                        help="average a stack over its leading axes before measuring")
    parser.add_argument("--n-r", type=int, default=50, metavar="N",
                        help="radii sampled per decorrelation curve (default: 50)")
    parser.add_argument("--n-g", type=int, default=10, metavar="N",
                        help="high-pass filters per pass (default: 10)")
    parser.add_argument("--variant", choices=("reference", "imagej"), default="reference",
                        help="decorrelation algorithm: the published reference (default) or the "
                             "ImageJ plugin's, as paper 003 and NanoPyx use")
    parser.add_argument("--plot", type=Path, default=None, metavar="PNG",
                        help="save the decorrelation (or FRC) curves to this image file")
    parser.add_argument("--json", type=Path, default=None, metavar="FILE",
                        help="also write the results to this JSON file")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing --plot / --json file")


def _load(path: Path, *, mean: bool) -> tuple[np.ndarray, dict]:
    from napari_resolve.data.color import rgb_to_y
    from napari_resolve.io import read_image

    arr, meta = read_image(path)
    if meta.get("rgb") and arr.ndim >= 3 and arr.shape[-1] in (3, 4):
        # Resolution is a property of the luminance; alpha carries no image content.
        arr = rgb_to_y(np.asarray(arr)[..., :3])
    arr = np.asarray(arr)
    if arr.ndim > 2 and mean:
        arr = arr.reshape((-1,) + arr.shape[-2:]).astype(np.float64).mean(axis=0)
    return arr, meta


def _pixel_size(args, meta) -> tuple[float | None, str | None, str]:
    """(pixel size, unit, where it came from)."""
    if args.pixel_size is not None:
        from napari_resolve.io import to_micrometre

        if not (args.pixel_size > 0 and math.isfinite(args.pixel_size)):
            raise InputError(f"--pixel-size must be a positive number, got {args.pixel_size}")
        if to_micrometre(1.0, args.unit or "um") is None:
            raise InputError(f"unknown --unit {args.unit!r}; use nm, um (µm) or mm")
        return args.pixel_size, args.unit or "um", "--pixel-size"
    if args.unit is not None:
        raise InputError("--unit needs --pixel-size")
    if meta.get("pixel_size"):
        return float(meta["pixel_size"]), "um", "file"
    return None, None, "unknown: results in pixels"


def _with_nm(value: float, unit: str) -> str:
    text = f"{value:.4g} {unit}"
    if unit in ("um", "µm", "μm", "micron") and math.isfinite(value):
        text = f"{value * 1000:.1f} nm ({text})"
    return text


def _save_plot(path: Path, draw, n_axes: int) -> None:
    from matplotlib.figure import Figure

    from napari_resolve._atomic import atomic_path

    cols = int(math.ceil(math.sqrt(n_axes)))
    rows = int(math.ceil(n_axes / cols))
    fig = Figure(figsize=(5.5 * cols, 3.8 * rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    for i, ax in enumerate(axes):
        if i < n_axes:
            draw(i, ax)
        else:
            ax.set_visible(False)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format=path.suffix.lstrip(".").lower() or "png")
    print(f"curves saved to {path}")


def _decorrelation(args, image, pixel_size, unit) -> dict:
    from napari_resolve.metrics.resolution import decorrelation, plot_decorrelation

    out = decorrelation(image, pixel_size=pixel_size, unit=unit, n_r=args.n_r, n_g=args.n_g,
                       variant=args.variant)
    results = out if isinstance(out, list) else [out]
    for r in results:
        where = f"plane {r.plane}: " if r.plane else ""
        if r.found:
            print(f"{where}resolution {_with_nm(r.resolution, r.unit)}, kc = {r.kc:.4f} "
                  f"(1 = Nyquist), A = {r.amplitude:.3f}, A0 = {r.amplitude0:.3f}")
        else:
            print(f"{where}no significant decorrelation peak (A0 = {r.amplitude0:.3f}): "
                  "resolution undetermined")
    if args.plot is not None:
        shown = results[:MAX_PLOTTED_PLANES]
        if len(results) > len(shown):
            print(f"the plot shows the first {len(shown)} of {len(results)} planes")
        _save_plot(args.plot, lambda i, ax: plot_decorrelation(
            shown[i], ax, title=f"{args.image.name} {shown[i].plane or ''}".strip()), len(shown))
    return {
        "method": "decorrelation",
        "variant": args.variant,
        "results": [
            {"plane": list(r.plane), "resolution": r.resolution if r.found else None,
             "unit": r.unit, "kc": r.kc, "amplitude": r.amplitude, "amplitude0": r.amplitude0}
            for r in results
        ],
    }


def _frc(args, image, pixel_size, unit) -> dict:
    from napari_resolve.metrics.resolution import frc, plot_frc

    second = None
    if args.second is not None:
        second, _ = _load(args.second, mean=args.mean)
    r = frc(image, second, pixel_size=pixel_size, unit=unit)

    def fmt(res, k):
        if math.isnan(k):
            return f"not reached up to kc = {r.max_frequency:.3g}"
        return f"{_with_nm(res, r.unit)} (kc = {k:.4f})"

    print(f"FRC ({r.split}): 1/7 threshold {fmt(r.resolution_one_seventh, r.k_one_seventh)}")
    print(f"FRC ({r.split}): half-bit threshold {fmt(r.resolution_half_bit, r.k_half_bit)}")
    if args.plot is not None:
        _save_plot(args.plot, lambda i, ax: plot_frc(r, ax, title=f"FRC {args.image.name}"), 1)

    def num(x):
        return None if math.isnan(x) else x

    return {
        "method": "frc", "split": r.split, "unit": r.unit,
        "resolution_one_seventh": num(r.resolution_one_seventh), "kc_one_seventh": num(r.k_one_seventh),
        "resolution_half_bit": num(r.resolution_half_bit), "kc_half_bit": num(r.k_half_bit),
    }


def run(args) -> int:
    method = args.method or ("frc" if args.second is not None else "decorrelation")
    if args.second is not None and method != "frc":
        raise InputError("--second is for FRC; use --method frc (or leave --method out)")
    if args.plot is not None and args.plot.suffix.lower() not in (".png", ".pdf", ".svg", ".jpg", ".jpeg"):
        raise InputError(f"--plot must end in .png, .pdf, .svg or .jpg, got {args.plot.name}")
    from napari_resolve.commands._paths import check_outputs

    if not Path(args.image).exists():
        raise InputError(f"image file not found: {args.image}")
    check_outputs([args.image, args.second],
                  [(args.plot, "--plot", "file"), (args.json, "--json", "file")],
                  overwrite=getattr(args, "overwrite", False))
    image, meta = _load(args.image, mean=args.mean)
    pixel_size, unit, origin = _pixel_size(args, meta)
    if pixel_size is not None:
        print(f"pixel size {pixel_size:g} {unit} ({origin})")
    else:
        print(f"pixel size {origin}")
    if method == "frc":
        report = _frc(args, image, pixel_size, unit)
    else:
        report = _decorrelation(args, image, pixel_size, unit)
    if args.json is not None:
        from napari_resolve._atomic import atomic_path

        report.update(image=str(args.image), pixel_size=pixel_size,
                      pixel_size_source=origin)
        with atomic_path(args.json) as tmp:
            tmp.write_text(json.dumps(report, indent=2))
    return 0
