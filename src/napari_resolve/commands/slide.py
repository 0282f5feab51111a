"""``napari-resolve slide IN -o OUT.zarr --model pathsrgan-x4``: whole-slide SR, MR and HR levels.

The whole-slide path of paper 002 §IV-D (:mod:`napari_resolve.slide`): the
slide is read region by region (``--chunk`` LR px plus ``--overlap`` px of
context), super-resolved, and written into an OME-Zarr (NGFF 0.4) whose
levels are the HR result (``0``, ×4) and, for PathSRGAN, the MR result
(``1``, ×2), each with its own pixel size (input / 4, input / 2). Integer
slides keep their dtype (``--dtype float32`` for raw values).

Why a command of its own rather than ``predict --levels``: ``predict`` keeps
one meaning everywhere (one SR image, float32, TIFF or zarr, any layout),
while a slide is one 2-D plane written level by level in its own dtype.
``IN`` is a zarr / OME-Zarr folder (read lazily) or any image file
``predict`` reads (loaded into memory). The output is written to a
temporary folder and renamed at the end; an existing OUT is refused unless
``--overwrite``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from napari_resolve.errors import InputError

NAME = "slide"
HELP = "super-resolve a whole slide into OME-Zarr levels (PathSRGAN: MR x2 and HR x4)"


def add_arguments(parser) -> None:
    parser.add_argument("input", type=Path, metavar="IN", help="slide: zarr / OME-Zarr or image file")
    parser.add_argument("-o", "--output", type=Path, required=True, metavar="OUT",
                        help="output .zarr folder (OME-NGFF)")
    parser.add_argument("--model", required=True, metavar="NAME|FILE",
                        help="pretrained name (pathsrgan-x4), .safetensors file, or 'bicubic'")
    parser.add_argument("--levels", nargs="+", default=None, metavar="LEVEL",
                        choices=("mr", "sr"),
                        help="levels to write: mr (x2, PathSRGAN) and/or sr (the model's scale); "
                        "default: both for PathSRGAN, sr otherwise")
    parser.add_argument("--chunk", type=int, default=512, metavar="PX",
                        help="LR px per region side (default 512)")
    parser.add_argument("--overlap", type=int, default=64, metavar="PX",
                        help="LR px of context per side (default 64, paper 002)")
    parser.add_argument("--tile", type=int, default=None, metavar="PX",
                        help="LR tile side inside a region, to save memory (default: whole region)")
    parser.add_argument("--scale", type=int, default=None, metavar="N",
                        help="SR factor for 'bicubic'; must match a trained model's")
    parser.add_argument("--pixel-size", type=float, default=None, metavar="UM",
                        help="input pixel size in µm when the input does not say")
    parser.add_argument("--dtype", default=None, choices=("uint8", "uint16", "float32"),
                        help="output dtype (default: the input's for integers, else float32)")
    parser.add_argument("--batch", type=int, default=None, metavar="N", help="tiles per batch")
    parser.add_argument("--device", default="auto", help="auto (CUDA, MPS, CPU), cpu, cuda, mps")
    parser.add_argument("--no-amp", action="store_true", help="no mixed precision on the GPU")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")


def run(args) -> int:
    from napari_resolve.commands.predict import _check_paths

    src, dst = _check_paths(args)
    if dst.suffix.lower() != ".zarr":
        raise InputError(f"output must be a .zarr folder, got {dst.name}")
    from napari_resolve._atomic import output_lock

    with output_lock(dst):  # a second run to the same output is refused, not raced
        return _run_locked(args, src, dst)


def _run_locked(args, src, dst) -> int:
    from napari_resolve.commands.predict import (
        _Bar,
        _check_paths,
        _is_zarr,
        _layout_for_axes,
        _load_model,
    )
    from napari_resolve.slide import super_resolve_slide

    model, meta = _load_model(args)
    levels = args.levels or (("mr", "sr") if getattr(model, "mr_scale", None) else ("sr",))
    pixel = args.pixel_size
    channel_axis = None
    if _is_zarr(src):
        source = src
    else:
        from napari_resolve.io import read_image

        arr, info = read_image(src)
        if info.get("rgb") and arr.ndim == 3 and arr.shape[-1] == 4:
            arr = arr[..., :3]  # alpha carries no image content
        arr, channel_axis, _ = _layout_for_axes(arr, info.get("axes", ""))
        source = arr
        if pixel is None and info.get("pixel_size_yx"):
            pixel = tuple(info["pixel_size_yx"])
    if pixel is not None and not np.all(np.asarray(pixel, float) > 0):
        raise InputError(f"--pixel-size must be positive, got {pixel}")
    bar = _Bar("region")
    try:
        res = super_resolve_slide(
            source, dst, (model, meta), levels=levels, chunk=args.chunk, overlap=args.overlap,
            tile=args.tile, batch=args.batch, device=args.device,
            amp=False if args.no_amp else None, channel_axis=channel_axis, pixel_size=pixel,
            unit="micrometer" if pixel is not None else None, dtype=args.dtype,
            overwrite=args.overwrite, progress=bar,
        )
    finally:
        bar.close()
    parts = ", ".join(
        f"{name} x{lv['factor']} {'x'.join(map(str, lv['shape']))} at '{lv['path']}'"
        for name, lv in res.levels.items()
    )
    print(f"wrote {dst} ({parts})", file=sys.stderr)
    return 0
