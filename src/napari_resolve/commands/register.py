"""``napari-resolve register``: pair patches of low / mid / high objective scans.

Runs the two-step correlation registration of paper 002 §II-B
(:mod:`napari_resolve.data.registration`) and writes the pairs folder::

    OUT/lr/00001.tif  OUT/mr/00001.tif  OUT/hr/00001.tif  ...  OUT/report.json
"""

from __future__ import annotations

from pathlib import Path

from napari_resolve.errors import InputError

NAME = "register"
HELP = (
    "register low / mid / high magnification scans of one slide (PathSRGAN correlation "
    "registration) and write paired patches plus report.json"
)


def add_arguments(parser) -> None:
    parser.add_argument("--low", required=True, type=Path, help="low-magnification scan (e.g. 4x)")
    parser.add_argument("--mid", type=Path, help="mid-magnification scan (e.g. 10x); optional")
    parser.add_argument("--high", required=True, type=Path, help="high-magnification scan (e.g. 20x)")
    parser.add_argument("-o", "--output", required=True, type=Path, help="pairs folder to write")
    parser.add_argument(
        "--magnifications", type=float, nargs="+", default=[4, 10, 20], metavar="MAG",
        help="objective magnifications low [mid] high (default: 4 10 20)",
    )
    parser.add_argument(
        "--patch-size", type=int, default=128,
        help="low patch size on the interpolated low grid; mid/high patches scale with the "
        "magnification (default 128 -> 256 / 512)",
    )
    parser.add_argument("--stride", type=int, help="grid step between low patches (default: patch size)")
    parser.add_argument("--threshold", type=float, default=0.6, help="correlation threshold T (default 0.6)")
    parser.add_argument(
        "--min-foreground", type=float, default=0.1,
        help="minimum foreground fraction of a low patch (default 0.1)",
    )
    parser.add_argument("--coarse-patches", type=int, default=16, help="n patches of the coarse step")
    parser.add_argument("--coarse-window", type=int, default=32, help="coarse redundancy Δr, LR px")
    parser.add_argument("--fine-window", type=int, default=6, help="fine redundancy ΔR, LR px")
    parser.add_argument("--upsample-factor", type=int, default=20, help="sub-pixel precision 1/N px")
    parser.add_argument(
        "--background", choices=("auto", "bright", "dark"), default="auto",
        help="bright (bright-field) or dark (fluorescence) background; auto: bright for RGB",
    )
    parser.add_argument("--max-patches", type=int, help="register a random subset of the grid")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing pairs folder at OUTPUT"
    )


def read_scan(path: Path, name: str):
    """Read one scan with :func:`napari_resolve.io.read_image`: (array, pixel size µm or None)."""
    from napari_resolve.io import read_image

    if not Path(path).is_file():
        raise InputError(f"{name} scan not found: {path}")
    arr, meta = read_image(path)
    return arr, meta.get("pixel_size")


def high_pixel_size(known, high_mag):
    """The high scan's pixel size (µm) from the first (pixel size, magnification) that has one."""
    for size, mag in known:
        if size:
            return float(size) * float(mag) / float(high_mag)
    return None


def run(args) -> int:
    from tqdm import tqdm

    from napari_resolve.data.registration import build_dataset_iter

    mags = list(args.magnifications)
    if len(mags) not in (2, 3) or (args.mid is not None and len(mags) != 3):
        raise InputError(
            f"--magnifications takes low [mid] high (3 values with --mid), got {mags}"
        )
    from napari_resolve.commands._paths import check_outputs

    # existence and --overwrite are judged by the registration (an empty folder is fine)
    check_outputs([args.low, args.mid, args.high], [(args.output, "pairs folder", "folder")],
                  overwrite=True)
    low, low_px = read_scan(args.low, "low")
    mid, mid_px = read_scan(args.mid, "mid") if args.mid is not None else (None, None)
    high, high_px = read_scan(args.high, "high")
    # high first: its own calibration is the most direct
    known = [(high_px, mags[-1]), (low_px, mags[0])]
    if mid is not None:
        known.append((mid_px, mags[1]))
    pixel_size = high_pixel_size(known, mags[-1])
    gen = build_dataset_iter(
        low, mid, high, args.output, overwrite=args.overwrite, pixel_size=pixel_size,
        magnifications=tuple(mags), patch_size=args.patch_size,
        stride=args.stride, threshold=args.threshold, min_foreground=args.min_foreground,
        coarse_patches=args.coarse_patches, coarse_window=args.coarse_window,
        fine_window=args.fine_window, upsample_factor=args.upsample_factor,
        background=args.background, max_patches=args.max_patches, seed=args.seed,
    )
    bar = None
    stage = None
    try:
        while True:
            try:
                event = next(gen)
            except StopIteration as stop:
                result, path = stop.value
                break
            if event.stage != stage:
                if bar is not None:
                    bar.close()
                stage = event.stage
                bar = tqdm(total=event.total, desc=stage, unit="patch", leave=False)
            bar.update(event.done - bar.n)
    finally:
        if bar is not None:
            bar.close()
    rep = result.report
    rejected = ", ".join(f"{k} {v}" for k, v in rep["rejected"].items() if v) or "none"
    print(f"kept {rep['kept']} of {rep['candidates']} patches (rejected: {rejected}) -> {path}")
    return 0
