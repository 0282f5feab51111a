"""``napari-resolve predict IN -o OUT --model NAME|FILE``: super-resolve an image file.

* TIFF / OME-TIFF, PNG, JPEG, BMP, MRC, ``.npy`` in (read with
  :func:`napari_resolve.io.read_image`) -> OME-TIFF out (``.tif``) whose
  pixel size is the input's divided by the scale; RGB stays RGB, stacks
  (ZYX) are run plane by plane, a channel-first CYX / CZYX image keeps its
  order. The result is float32 on the input's intensity scale.
* zarr / OME-Zarr in (a folder) or ``.zarr`` out: lazy, chunk by chunk
  (:func:`napari_resolve.predict.predict_to_zarr`), OME-NGFF 0.4 out.
* For models that predict a parsing map (``gp``) the labels are also written
  to ``OUT_labels.tif`` (uint8, 0 background, 1 cytoplasm, 2 nucleus).

``--backend`` picks the CPU runtime (:mod:`napari_resolve.runtime`) and
``--threads`` the thread count (default: the cores free now,
:mod:`napari_resolve.threads`).

``--model`` is a pretrained name, a ``.safetensors`` file, an ``.onnx`` file
written by :func:`napari_resolve.runtime.onnx.export_onnx`, or a registered
architecture without weights (``bicubic``, whose ``--scale`` sets the
factor). For a trained model ``--scale`` must equal the model's scale.
Outputs are written to a temporary file and renamed at the end; an existing
OUT is refused unless ``--overwrite``. A tqdm progress bar goes to stderr.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from napari_resolve.errors import InputError

#: largest SR factor a command accepts (the papers go to x8; bundles may declare up to x16)
MAX_SCALE = 16

NAME = "predict"
HELP = "super-resolve an image (TIFF, PNG/JPEG, zarr) with a model"


def add_arguments(parser) -> None:
    parser.add_argument(
        "input", type=Path, metavar="IN", help="input image: TIFF, PNG, JPEG, zarr ..."
    )
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        required=True,
        metavar="OUT",
        help="output .tif (OME-TIFF) or .zarr (OME-Zarr)",
    )
    parser.add_argument(
        "--model",
        required=True,
        metavar="NAME|FILE",
        help="pretrained name, .safetensors or .onnx file (exported by napari-resolve), or 'bicubic'",
    )
    parser.add_argument(
        "--scale",
        type=int,
        default=None,
        metavar="N",
        help="SR factor: must match the model's; sets it for 'bicubic'",
    )
    parser.add_argument(
        "--tile",
        type=int,
        default=None,
        metavar="PX",
        help="LR tile side (default: the largest that fits the free memory on the CPU; 0 = no tiling)",
    )
    parser.add_argument(
        "--overlap",
        type=int,
        default=None,
        metavar="PX",
        help="LR context per tile side (default: the model's receptive field, or 32)",
    )
    parser.add_argument("--batch", type=int, default=None, metavar="N", help="tiles per batch")
    parser.add_argument(
        "--device", default="auto", help="auto (CUDA, MPS, CPU), cpu, cuda, cuda:N, mps"
    )
    parser.add_argument("--no-amp", action="store_true", help="no mixed precision on the GPU")
    parser.add_argument(
        "--backend",
        default="auto",
        choices=["auto", "eager", "onnxruntime", "openvino", "compile"],
        help="CPU runtime (default auto: the fastest installed one, measured once per model)",
    )
    add_threads_argument(parser)
    parser.add_argument(
        "--prior",
        type=Path,
        default=None,
        metavar="FILE",
        help="parsing-map labels (0/1/2) at the SR size, for geometry-prior models",
    )
    parser.add_argument(
        "--no-background-removal",
        action="store_true",
        help="leave out the model's out-of-focus background-removal stage (the x4 fluorescence "
        "bundles have one; a thin or TIRF-like sample has no out-of-focus light)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")


def add_threads_argument(parser) -> None:
    """``--threads N`` (shared by predict, train and fine-tune)."""
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="CPU threads (default: the cores free now; see docs/architecture.md, Threads)",
    )


def _is_zarr(path: Path) -> bool:
    if path.suffix.lower() == ".zarr":
        return True
    return path.is_dir() and any(
        (path / name).exists() for name in ("zarr.json", ".zarray", ".zgroup", ".zattrs")
    )


def _load_model(args):
    """(model, meta) honouring --scale."""
    from napari_resolve import bundle, models
    from napari_resolve.predict import resolve_model

    model_arg = args.model
    scale = args.scale
    if scale is not None and not 1 <= scale <= MAX_SCALE:
        raise InputError(f"--scale must be a positive integer (at most {MAX_SCALE}), got {scale}")
    path = Path(model_arg)
    is_file_or_pretrained = path.exists() or any(
        p["name"] == model_arg for p in bundle.pretrained()
    )
    if not is_file_or_pretrained and "/" not in model_arg and path.suffix == "":
        try:
            info = models.info(model_arg)
        except Exception:
            info = None
        if info is not None and info.parameters == 0:  # weight-free: --scale picks the factor
            model = models.build(model_arg, **({"scale": scale} if scale else {}))
            return model, bundle.default_meta(model)
    model, meta = resolve_model(model_arg)
    if scale is not None and scale != int(model.scale):
        raise InputError(
            f"--scale {scale} does not match model {model_arg!r}, which is x{model.scale}; "
            f"drop --scale or pick a x{scale} model"
        )
    return model, meta


def _layout_for_axes(arr: np.ndarray, axes: str):
    """Squeeze singleton axes and return (array, channel_axis, out_axes) for predict."""
    axes = axes.upper() if axes else ""
    if len(axes) != arr.ndim:
        return arr, None, None
    keep = [i for i, a in enumerate(axes) if arr.shape[i] > 1 or a in "YX"]
    arr = arr.reshape([arr.shape[i] for i in keep])
    axes = "".join(axes[i] for i in keep)
    allowed = {
        "YX": None,
        "YXS": 2,
        "YXC": 2,
        "ZYX": None,
        "TYX": None,
        "QYX": None,
        "CYX": 0,
        "SYX": 0,
        "ZYXS": 3,
        "ZYXC": 3,
        "CZYX": 0,
        "ZCYX": None,
    }
    if axes not in allowed:
        raise InputError(
            f"cannot super-resolve an image with axes {axes} (shape {arr.shape}); "
            "give YX, YXS (RGB), ZYX, CYX or CZYX"
        )
    if axes == "ZCYX":  # channels after Z: make them last
        arr = np.moveaxis(arr, 1, -1)
        return arr, 3, "ZYXC"
    return arr, allowed[axes], axes


def _output_axes(axes, arr):
    """OME-TIFF axes of the result (tifffile letters; RGB as samples ``S``)."""
    if not axes:
        return None
    if axes.endswith("C") and arr.shape[-1] == 3:
        axes = axes[:-1] + "S"
    if axes.startswith("S"):
        axes = "C" + axes[1:]
    return axes.replace("Q", "Z")


class _Bar:
    """A tqdm bar on stderr, opened at the first progress event (after the inputs are checked)."""

    def __init__(self, unit: str):
        self.unit = unit
        self.bar = None

    def __call__(self, event) -> None:
        from tqdm import tqdm

        if self.bar is None:
            self.bar = tqdm(
                total=event.total, unit=self.unit, desc="predict", file=sys.stderr, mininterval=0.5
            )
        if self.bar.total != event.total:
            self.bar.total = event.total
        frac = getattr(event, "fraction", None)
        # inside a tile the engine reports a fraction: show it (tqdm takes a float n)
        self.bar.n = round(frac * event.total, 2) if frac is not None else event.done
        eta = getattr(event, "eta_s", None)
        if eta is not None:
            self.bar.set_postfix_str(f"~{eta:.0f} s left", refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _model_inputs(args) -> list:
    """The model file among the inputs (a pretrained name is not a path of the user's)."""
    path = Path(str(args.model))
    return [path] if path.exists() else []


def _check_paths(args, *, kind: str = "file") -> tuple[Path, Path]:
    """``(input, output)`` of a command that reads one image and writes another.

    Checked before any work (:func:`napari_resolve.commands._paths.check_outputs`):
    the output is no input (path, link, inside an input folder, containing
    it), does not exist unless ``--overwrite``, and its folder is writable.
    """
    from napari_resolve.commands._paths import check_outputs

    src, dst = Path(args.input), Path(args.output)
    if not src.exists():
        raise InputError(f"input not found: {src}")
    inputs = [src, getattr(args, "prior", None), *_model_inputs(args)]
    kind = "folder" if kind == "folder" or _is_zarr(dst) else "file"
    check_outputs(inputs, [(dst, "output", kind)], overwrite=args.overwrite)
    return src, dst


def labels_path_for(dst: Path) -> Path:
    """``OUT.tif`` -> ``OUT_labels.tif`` (``OUT.ome.tif`` -> ``OUT_labels.tif``)."""
    return dst.with_name(f"{dst.name[: -len(''.join(dst.suffixes))] or dst.stem}_labels.tif")


def run(args) -> int:
    src, dst = _check_paths(args)
    if not _is_zarr(dst) and dst.suffix.lower() not in (".tif", ".tiff"):
        raise InputError(f"output must be a .tif (OME-TIFF) or a .zarr folder, got {dst.name}")
    from napari_resolve._atomic import output_lock

    with output_lock(dst):  # a second run to the same output is refused, not raced
        return _run_locked(args, src, dst)


def _run_locked(args, src, dst) -> int:
    from napari_resolve.io import read_image, write_image
    from napari_resolve.predict import predict, predict_to_zarr

    model, meta = _load_model(args)
    if args.no_background_removal:
        if getattr(model, "haze", None) is None:
            print(f"note: {args.model} has no background-removal stage; nothing left out",
                  file=sys.stderr)
        else:  # a copy without it, for the TIFF and the zarr paths alike
            import copy

            model = copy.deepcopy(model)
            model.haze = None
    labels_path = labels_path_for(dst)
    if getattr(model, "predicts_parsing", False) and not _is_zarr(dst):
        from napari_resolve.commands._paths import check_outputs

        check_outputs([src, args.prior, *_model_inputs(args)],
                      [(dst, "output", "file"), (labels_path, "labels output", "file")],
                      overwrite=args.overwrite)
    s = int(model.scale)
    kwargs = dict(
        tile=args.tile,
        overlap=args.overlap,
        batch=args.batch,
        device=args.device,
        amp=False if args.no_amp else None,
        backend=getattr(args, "backend", "auto"),
        threads=getattr(args, "threads", None),
    )
    out_zarr = _is_zarr(dst)
    if _is_zarr(src) or out_zarr:
        if not out_zarr:
            raise InputError(f"a zarr input needs a .zarr output, got {dst.name}")
        if args.prior is not None:
            raise InputError("--prior works with TIFF/PNG inputs, not zarr")
        if _is_zarr(src):
            source, pixel = src, None
        else:
            arr, info = read_image(src)
            arr, channel_axis, _ = _layout_for_axes(arr, info.get("axes", ""))
            if channel_axis not in (None, arr.ndim - 1):
                arr = np.moveaxis(arr, channel_axis, -1)
            source, pixel = arr, info.get("pixel_size_yx")
        bar = _Bar("task")
        try:
            predict_to_zarr(
                source,
                dst,
                (model, meta),
                pixel_size=pixel,
                unit="micrometer" if pixel else None,
                overwrite=args.overwrite,
                progress=bar,
                **kwargs,
            )
        finally:
            bar.close()
        print(f"wrote {dst}", file=sys.stderr)
        return 0

    arr, info = read_image(src)
    if info.get("rgb") and arr.ndim == 3 and arr.shape[-1] == 4:
        arr = arr[..., :3]  # alpha carries no image content
    arr, channel_axis, axes = _layout_for_axes(arr, info.get("axes", ""))
    from napari_resolve.io import check_pixels

    # the SR image (float32, s^2 x the input) is held in memory too: estimate before allocating
    check_pixels(arr.shape, f"the x{s} result of {src.name}", factor=s * s // 4 or 1,
                 hint="write a .zarr output instead (computed chunk by chunk)")
    prior = None
    if args.prior is not None:
        prior, _ = read_image(args.prior)
        prior = np.squeeze(prior)

    bar = _Bar("tile")
    try:
        result = predict(
            (model, meta), arr, progress=bar, prior=prior, channel_axis=channel_axis, **kwargs
        )
    finally:
        bar.close()
    pixel = info.get("pixel_size_yx")
    out_pixel = None if pixel is None else (pixel[0] / s, pixel[1] / s)
    out_axes = _output_axes(axes, arr)
    write_image(dst, result.image, pixel_size=out_pixel, unit="µm", axes=out_axes)
    print(f"wrote {dst} ({'x'.join(map(str, result.image.shape))}, x{s})", file=sys.stderr)
    if result.labels is not None:
        lab_axes = "ZYX" if result.labels.ndim == 3 else "YX"
        write_image(labels_path, result.labels, pixel_size=out_pixel, unit="µm", axes=lab_axes)
        print(f"wrote {labels_path}", file=sys.stderr)
    return 0
