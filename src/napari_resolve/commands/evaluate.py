"""``napari-resolve evaluate``: PSNR / SSIM of a model on HR images or LR/HR pairs.

Two ways to get test pairs:

* ``--hr-only HR [HR ...] --scale N``: each HR image is cropped to a multiple
  of N (top-left corner kept) and shrunk with MATLAB's bicubic ``imresize``
  (x 1/N, integer images rounded as MATLAB does), the protocol of paper 000
  §3.1 and of SR benchmarks;
* ``--lr LR [LR ...] --hr HR [HR ...]``: real pairs, matched in order; the HR
  image must be N times the LR one (a few extra HR rows/columns, fewer than
  N, are cropped).

The LR image is super-resolved with ``--model`` (a pretrained bundle name, a
``.safetensors`` file, or a weightless registry model such as ``bicubic``,
built at ``--scale``) through :func:`napari_resolve.predict.predict`, which
runs one-channel models on the Y of RGB images (Cb, Cr bicubic) and clips
integer images to their dtype's range. The SR output is not rounded (paper
000 §3.4 measures "in a float32 format"). PSNR / SSIM follow
:mod:`napari_resolve.metrics.quality`: Y channel of MATLAB YCbCr for RGB
(``--rgb``: all channels), border crop of ``--crop`` px (default: the scale).

Fluorescence (grey images that are not 8-bit, or ``--metric fit``): the
main figures are CARE's fair comparison (:func:`napari_resolve.metrics.quality.fit_metrics`:
percentile-normalised reference, affine least-squares fit of the SR output,
then PSNR / SSIM / NRMSE), the raw PSNR / SSIM beside them; with a known
pixel size (LR image metadata, or the model's) every row also gets the
decorrelation resolution of the SR output in nm.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from napari_resolve.errors import InputError

NAME = "evaluate"
HELP = "PSNR/SSIM of a model on HR images (degraded with MATLAB bicubic) or on LR/HR pairs"


def add_arguments(parser) -> None:
    src = parser.add_argument_group("test images (either --hr-only, or --lr with --hr)")
    src.add_argument("--hr-only", nargs="+", metavar="HR", type=Path,
                     help="high-resolution images; LR = MATLAB bicubic x 1/scale")
    src.add_argument("--lr", nargs="+", metavar="LR", type=Path, help="low-resolution images")
    src.add_argument("--hr", nargs="+", metavar="HR", type=Path,
                     help="high-resolution references, in the order of --lr")
    parser.add_argument("--model", default="bicubic", metavar="NAME|FILE",
                        help="registry name, pretrained name or .safetensors file (default: bicubic)")
    parser.add_argument("--scale", type=int, default=None, metavar="N",
                        help="SR factor (default: the model's, or HR/LR size ratio for pairs)")
    parser.add_argument("--crop", type=int, default=None, metavar="PX",
                        help="border pixels left out of the metrics (default: the scale)")
    parser.add_argument("--rgb", action="store_true",
                        help="measure RGB images on all channels instead of the Y channel")
    parser.add_argument("--metric", choices=("auto", "fit", "raw"), default="auto",
                        help="fit: CARE's affine-fit PSNR/SSIM/NRMSE (fluorescence); raw: plain "
                             "PSNR/SSIM; auto (default): fit for grey non-8-bit images")
    parser.add_argument("--device", default="auto", help="torch device for the model (default: auto)")
    parser.add_argument("--json", type=Path, default=None, metavar="FILE",
                        help="also write the results (per image and mean) to this JSON file")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --json file")


# --------------------------------------------------------------------------- images


def _read(path: Path, what: str) -> np.ndarray:
    from napari_resolve.io import read_image

    arr, meta = read_image(path)
    if arr.ndim == 3 and arr.shape[-1] == 4 and meta.get("rgb"):
        arr = arr[..., :3]  # alpha carries no image content
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] == 3)):
        raise InputError(f"{what} {path.name} must be a 2-D grey or RGB image, got shape {arr.shape}")
    if min(arr.shape[:2]) < 2:
        raise InputError(f"{what} {path.name} is too small ({arr.shape[0]} x {arr.shape[1]} px)")
    return arr


def _crop_to_multiple(hr: np.ndarray, scale: int, name: str) -> np.ndarray:
    h, w = (hr.shape[0] // scale) * scale, (hr.shape[1] // scale) * scale
    if h < scale or w < scale:
        raise InputError(f"{name} ({hr.shape[0]} x {hr.shape[1]} px) is smaller than the scale {scale}")
    return hr[:h, :w]


def _channel_axis(img: np.ndarray):
    return -1 if img.ndim == 3 else None


# --------------------------------------------------------------------------- model


def _is_bundle(spec: str) -> bool:
    """A model file or a pretrained bundle name (else: a registry name)."""
    from napari_resolve import bundle

    path = Path(spec)
    if path.exists() or path.suffix.lower() in {bundle.SUFFIX, *bundle.PICKLE_SUFFIXES}:
        return True
    return (bundle.pretrained_dir() / f"{spec}{bundle.SUFFIX}").is_file()


def load_model(spec: str, scale: int | None):
    """``(model, meta)`` for ``spec``; a weightless registry model (bicubic) is built at ``scale``.

    A bundle's scale is fixed: a different ``scale`` is an error. A registry
    architecture with weights is refused: untrained weights say nothing.
    """
    from napari_resolve import bundle, models

    if _is_bundle(spec):
        model, meta = bundle.load(spec)
        if scale is not None and model.scale != scale:
            raise InputError(f"model {spec} is x{model.scale}, but --scale {scale} was given")
        return model, meta
    model = models.build(spec) if scale is None else models.build(spec, scale=scale)
    if models.count_parameters(model) > 0:
        raise InputError(
            f"{spec!r} is an architecture, not a trained model: give a .safetensors file or a "
            "pretrained name (napari-resolve models lists them)"
        )
    return model, bundle.default_meta(model)


def _super_resolve(lr: np.ndarray, model_meta, device: str) -> np.ndarray:
    """SR of one whole LR image on its intensity scale (float32), via the tiled predictor."""
    from napari_resolve.predict import predict

    return np.asarray(predict(model_meta, lr, device=device).image)


# --------------------------------------------------------------------------- run


def _pairs(args):
    if args.hr_only and (args.lr or args.hr):
        raise InputError("give either --hr-only, or --lr with --hr, not both")
    if args.hr_only:
        return [(None, p) for p in args.hr_only]
    if not (args.lr and args.hr):
        raise InputError("give --hr-only HR..., or both --lr LR... and --hr HR...")
    if len(args.lr) != len(args.hr):
        raise InputError(f"{len(args.lr)} --lr image(s) but {len(args.hr)} --hr image(s); pair them 1:1")
    return list(zip(args.lr, args.hr))


def _fit_row(sr, hr, crop, metric, pixel_nm) -> dict:
    """The fluorescence figures of one row (``fit``, ``resolution_nm``), or {} for ``raw``."""
    from napari_resolve.metrics.quality import fit_metrics, wants_fit_metric

    channels = hr.shape[-1] if hr.ndim == 3 else 1
    if metric == "raw" or (metric == "auto" and not wants_fit_metric(hr.dtype, channels)):
        return {}
    out = {"fit": fit_metrics(sr, hr, crop=crop)}
    if pixel_nm:
        from napari_resolve.metrics.resolution import decorrelation

        res = decorrelation(np.asarray(sr, dtype=np.float64), pixel_size=pixel_nm, unit="nm")
        out["resolution_nm"] = float(res.resolution) if res.found else None
    return out


def _lr_pixel_nm(path, meta) -> float | None:
    """LR pixel size in nm: the image's metadata, else the model's ``pixel_size``."""
    from napari_resolve.io import read_image, to_micrometre

    um = None
    if path is not None:
        m = read_image(path)[1]
        um = to_micrometre(m.get("pixel_size"), m.get("unit"))
    if um is None and isinstance(meta.get("pixel_size"), dict):
        um = to_micrometre(meta["pixel_size"].get("value"), meta["pixel_size"].get("unit"))
    return None if um is None else 1000.0 * um


def evaluate_images(pairs, *, model: str = "bicubic", scale=None, crop=None, y_channel=True,
                    device: str = "auto", metric: str = "auto") -> list[dict]:
    """Evaluate ``model`` on ``pairs`` of paths ``(lr or None, hr)``; one dict per image.

    ``metric``: "auto" adds the fluorescence fit figures (``fit``,
    ``resolution_nm``) for grey non-8-bit references, "fit" always, "raw" never.
    """
    from napari_resolve.data.degrade import imresize
    from napari_resolve.metrics.quality import evaluate_pair

    if metric not in ("auto", "fit", "raw"):
        raise InputError(f"metric must be auto, fit or raw, got {metric!r}")

    if scale is not None and (int(scale) != scale or not 1 <= scale <= 16):
        raise InputError(f"--scale must be a positive integer (at most 16), got {scale}")
    if crop is not None and crop < 0:
        raise InputError(f"--crop must be >= 0, got {crop}")
    model_meta = load_model(model, None if scale is None else int(scale))
    scale = int(model_meta[0].scale)
    from tqdm import tqdm

    rows = []
    # progress bar on stderr, only on a terminal (disable=None)
    for lr_path, hr_path in tqdm(pairs, desc="evaluate", unit="image", disable=None, leave=False):
        hr = _read(hr_path, "HR image")
        if lr_path is None:
            hr = _crop_to_multiple(hr, scale, hr_path.name)
            lr = imresize(hr, 1.0 / scale, channel_axis=_channel_axis(hr))
        else:
            lr = _read(lr_path, "LR image")
            if lr.ndim != hr.ndim:
                raise InputError(f"{lr_path.name} {lr.shape} and {hr_path.name} {hr.shape}: "
                                 "one is RGB, the other grey")
            want = (lr.shape[0] * scale, lr.shape[1] * scale)
            if not (want[0] <= hr.shape[0] < want[0] + scale and want[1] <= hr.shape[1] < want[1] + scale):
                raise InputError(f"{hr_path.name} ({hr.shape[0]} x {hr.shape[1]}) is not x{scale} of "
                                 f"{lr_path.name} ({lr.shape[0]} x {lr.shape[1]})")
            hr = hr[: want[0], : want[1]]
        sr = _super_resolve(lr, model_meta, device)
        if sr.shape != hr.shape:
            raise InputError(f"model output {sr.shape} does not match {hr_path.name} {hr.shape}")
        res = evaluate_pair(sr, hr, scale=scale, crop=crop, y_channel=y_channel)
        lr_nm = _lr_pixel_nm(lr_path, model_meta[1]) if metric != "raw" else None
        fit = _fit_row(sr, hr, res["crop"], metric, lr_nm / scale if lr_nm else None)
        rows.append({"image": str(hr_path), "lr": str(lr_path) if lr_path else None,
                     "shape": list(hr.shape), "scale": scale, **res, **fit})
    return rows


def _table(rows: list[dict], model: str, y_channel: bool) -> str:
    first = rows[0]
    space = "RGB on the Y channel (MATLAB BT.601)" if y_channel else "RGB on all channels"
    head = f"model {model}, x{first['scale']}, crop {first['crop']} px, {space}"
    width = max(24, *(len(Path(r["image"]).name) for r in rows))
    fit = all("fit" in r for r in rows)
    if fit:
        head += ("\nfit = reference normalised to its 0.1-99.9 percentiles, SR output affinely "
                 "least-squares fitted to it (CARE); raw = on the images' own intensities")
        cols = (f"{'fit PSNR':>9}  {'fit SSIM':>8}  {'NRMSE':>6}  {'raw PSNR':>9}  {'raw SSIM':>8}"
                f"  {'res (nm)':>8}")
    else:
        cols = f"{'PSNR (dB)':>9}  {'SSIM':>6}"
    lines = [head, f"{'image':<{width}}  {'HR size':>11}  {cols}"]

    def fmt(vals):
        if not fit:
            return f"{vals['psnr']:9.3f}  {vals['ssim']:6.4f}"
        res = vals.get("resolution_nm")
        res_txt = f"{res:8.1f}" if res is not None else f"{'-':>8}"
        return (f"{vals['fit_psnr']:9.3f}  {vals['fit_ssim']:8.4f}  {vals['nrmse']:6.4f}  "
                f"{vals['psnr']:9.3f}  {vals['ssim']:8.4f}  {res_txt}")

    def flat(r):
        v = {"psnr": r["psnr"], "ssim": r["ssim"]}
        if fit:
            v.update(fit_psnr=r["fit"]["psnr"], fit_ssim=r["fit"]["ssim"], nrmse=r["fit"]["nrmse"],
                     resolution_nm=r.get("resolution_nm"))
        return v

    for r in rows:
        size = f"{r['shape'][0]}x{r['shape'][1]}"
        lines.append(f"{Path(r['image']).name:<{width}}  {size:>11}  {fmt(flat(r))}")
    vals = [flat(r) for r in rows]
    mean = {k: float(np.mean([v[k] for v in vals])) for k in vals[0] if k != "resolution_nm"}
    got = [v["resolution_nm"] for v in vals if v.get("resolution_nm") is not None]
    mean["resolution_nm"] = float(np.mean(got)) if fit and len(got) == len(vals) else None
    label = f"mean ({len(rows)} image{'s' if len(rows) != 1 else ''})"
    lines.append(f"{label:<{width}}  {'':>11}  {fmt(mean)}")
    return "\n".join(lines)


def run(args) -> int:
    from napari_resolve.commands._paths import check_outputs

    pairs = _pairs(args)
    model_file = [Path(args.model)] if Path(args.model).exists() else []
    check_outputs([*(p for pair in pairs for p in pair), *model_file],
                  [(args.json, "--json", "file")], overwrite=getattr(args, "overwrite", False))
    rows = evaluate_images(pairs, model=args.model, scale=args.scale, crop=args.crop,
                           y_channel=not args.rgb, device=args.device,
                           metric=getattr(args, "metric", "auto"))
    print(_table(rows, args.model, not args.rgb))
    if args.json is not None:
        from napari_resolve._atomic import atomic_path

        summary = {
            "model": args.model,
            "images": rows,
            "mean": {k: float(np.mean([r[k] for r in rows])) for k in ("psnr", "ssim")},
        }
        if all("fit" in r for r in rows):
            summary["mean"]["fit"] = {k: float(np.mean([r["fit"][k] for r in rows]))
                                      for k in ("psnr", "ssim", "nrmse")}
        with atomic_path(args.json) as tmp:
            Path(tmp).write_text(json.dumps(summary, indent=1), encoding="utf-8")
    return 0
