"""``napari-resolve demo``: the main job on the bundled sample data, headless.

What ``make demo`` runs. It takes the sample leukocytes in ``sample_data/``
(WBC dataset 2, held out of every bundled model's training: see
docs/benchmarks.md), shrinks each with MATLAB bicubic by the scale, super-
resolves them with MATLAB bicubic and every bundled leukocyte model of that
scale, and prints PSNR / SSIM on the Y channel (border crop = scale) and, for
models that predict a parsing map (gp), its mean IoU of cytoplasm and nucleus
against the cells' annotated masks. The SR
images and GP's parsing maps of the first cell go to ``-o`` as OME-TIFF. When
a bundled fluorescence model is there, it also super-resolves the wide-field
microtubule image (mean of the 9 rDL-SIM frames, 62.6 nm/px) and prints the
decorrelation resolution (Descloux 2019) before and after. Real-data
fluorescence lines (issue 13): on the DL-SIM pair in ``sample_data/`` (a real
wide-field / SIM field at normal and low light), the held-out quadrant that
no bundled model trained on is super-resolved by bicubic and by each bundled
x2 fluorescence model and compared with the SIM image, and the held-out
SFSRM ER crop in ``sample_data/`` (wide field -> STORM) by each x4 model,
by CARE's fit-PSNR / SSIM (:func:`napari_resolve.metrics.quality.fit_metrics`), with the mean
intensity of the output relative to bicubic's (it should stay on the input's
scale).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

NAME = "demo"
HELP = "super-resolve the bundled sample images with the bundled models and print PSNR/SSIM"

LEUKOCYTE_ARCHS = ("gp", "np", "srcnn", "srresnet", "srseg")


def add_arguments(parser) -> None:
    parser.add_argument("-o", "--output", type=Path, default=Path("demo_output"),
                        help="folder for the SR images (default: demo_output)")
    parser.add_argument("--scales", type=int, nargs="+", default=[4, 8], metavar="N",
                        help="SR factors to evaluate (default: 4 8)")
    parser.add_argument("--device", default="auto", help="torch device (default: auto)")


def _bundled(archs, scale):
    from napari_resolve import bundle

    out = []
    for item in bundle.pretrained():
        try:
            meta = bundle.read_meta(item["path"])
        except Exception:  # an unreadable bundle is listed by `napari-resolve models`
            continue
        if meta.get("architecture") in archs and int(meta.get("scale", 0)) == scale:
            out.append(item["name"])
    return out


def _parsing_iou(model_meta, scale) -> str:
    """Mean IoU of the model's parsing map on the annotated sample cells ("—" if it has none)."""
    from napari_resolve.data import samples
    from napari_resolve.metrics.parsing import gp_parser, parse_cells

    if not getattr(model_meta[0], "predicts_parsing", False):
        return "—"
    cells = {"hr": [], "labels": []}
    for img, lab, _ in samples.wbc(2):
        cells["hr"].append(img)
        cells["labels"].append(lab)
    iou = parse_cells(gp_parser(model_meta), cells, scale)
    return f"{iou['cytoplasm']:.3f} / {iou['nucleus']:.3f}"


def _leukocytes(args, write):
    from napari_resolve.commands.evaluate import evaluate_images, load_model
    from napari_resolve.data import samples
    from napari_resolve.data.degrade import imresize
    from napari_resolve.predict import predict

    root = samples.sample_root() / "wbc-zheng2018" / "dataset2" / "images"
    hr_paths = sorted(root.glob("*.bmp"))
    pairs = [(None, p) for p in hr_paths]
    print(f"Leukocytes: {len(hr_paths)} sample images of WBC dataset 2 ({root}), "
          "LR = MATLAB bicubic, metrics on Y, crop = scale\n")
    for scale in args.scales:
        names = ["bicubic", *_bundled(LEUKOCYTE_ARCHS, scale)]
        print(f"x{scale}   {'model':<22} {'PSNR (dB)':>9} {'SSIM':>7} {'time (s)':>9}"
              f"  {'parsing IoU cytoplasm / nucleus':>31}")
        for name in names:
            t0 = time.perf_counter()
            rows = evaluate_images(pairs, model=name, scale=scale, device=args.device)
            dt = time.perf_counter() - t0
            psnr = float(np.mean([r["psnr"] for r in rows]))
            ssim = float(np.mean([r["ssim"] for r in rows]))
            # the first cell, for a look in napari (napari-resolve reads these back)
            model_meta = load_model(name, scale)
            iou = _parsing_iou(model_meta, scale)
            print(f"      {name:<22} {psnr:9.3f} {ssim:7.4f} {dt:9.2f}  {iou:>31}")
            hr = samples.wbc(2, ids=[int(hr_paths[0].stem)])[0][0]
            hr = hr[: hr.shape[0] // scale * scale, : hr.shape[1] // scale * scale]
            lr = imresize(hr, 1.0 / scale, channel_axis=-1)
            res = predict(model_meta, lr, device=args.device)
            stem = f"{hr_paths[0].stem}_x{scale}"
            write(f"{stem}_lr.ome.tif", lr)
            write(f"{stem}_{name}.ome.tif", np.clip(np.round(res.image), 0, 255).astype(np.uint8))
            if res.labels is not None:
                write(f"{stem}_{name}_parsing.ome.tif", res.labels)
        print()


def _fluorescence(args, write):
    from napari_resolve.data import samples
    from napari_resolve.metrics.resolution import decorrelation
    from napari_resolve.predict import predict

    names = _bundled(("mhtcun", "mhtcun-lite", "dfcan"), 2)
    if not names:
        return
    wf, meta = samples.mt_widefield()
    px = meta.pixel_size
    before = decorrelation(wf, pixel_size=px * 1000, unit="nm")
    print(f"Microtubules (rDL-SIM wide-field, {wf.shape[0]}x{wf.shape[1]}, {px * 1000:.1f} nm/px): "
          "decorrelation resolution")
    print(f"      {'input':<22} {before.resolution:8.1f} nm")
    write("mt_widefield.ome.tif", wf, pixel_size=px)
    from napari_resolve import models

    bicubic = models.build("bicubic", scale=2)
    for name, spec in [("bicubic x2 (reference)", bicubic), *[(n, n) for n in names]]:
        res = predict(spec, wf, device=args.device)
        after = decorrelation(res.image, pixel_size=px * 1000 / 2, unit="nm")
        print(f"      {name:<22} {after.resolution:8.1f} nm")
        write(f"mt_widefield_{name.split()[0]}.ome.tif", res.image, pixel_size=px / 2)
    print("      (decorrelation assumes white noise; interpolated or super-resolved images read\n"
          "       finer than they are, so compare SR with the bicubic line, not with the input:\n"
          "       docs/resolution.md)")
    print()


def _fluorescence_real(args):
    from napari_resolve.data import fluorescence_pairs as FP
    from napari_resolve.data import samples

    root = samples.sample_root()
    sets = []
    names2 = _bundled(("mhtcun", "mhtcun-lite", "dfcan"), 2)
    if names2 and (root / FP.DLSIM).is_dir():
        sets += [(f"DL-SIM {light}", names2, 2, FP.region(FP.dlsim_pair(root, light), "heldout")[0])
                 for light in ("normal", "low")]
    names4 = _bundled(("mhtcun", "mhtcun-lite", "dfcan"), 4)
    if names4 and (root / FP.SFSRM_ER_SAMPLE).is_dir():
        pair = FP.sfsrm_er_sample(root)
        sets.append(("SFSRM ER", names4, 4, (pair.lr, pair.hr)))
    if not sets:
        return
    print("Fluorescence on real data, held-out regions: DL-SIM microtubules (wide field -> SIM,\n"
          "x2, bottom-right quadrant, 64x64 LR px) and SFSRM ER (wide field -> STORM, x4,\n"
          "160x320 LR px of the held-out rows); fit = CARE affine fit to the percentile-\n"
          "normalised target; mean = output mean / bicubic's")
    print(f"      {'data':<15} {'model':<22} {'fit PSNR':>8} {'SSIM':>7} {'mean':>6}")
    for label, names, scale, (lr, hr) in sets:
        _fit_lines(args, label, names, scale, lr, hr)
    print()


def _fit_lines(args, label, names, scale, lr, hr) -> None:
    from napari_resolve import models
    from napari_resolve.metrics.quality import fit_metrics
    from napari_resolve.predict import predict

    ref = None
    for name, spec in [("bicubic", models.build("bicubic", scale=scale)), *[(n, n) for n in names]]:
        sr = np.asarray(predict(spec, lr, device=args.device).image, dtype=np.float64)
        ref = sr.mean() if ref is None else ref
        m = fit_metrics(sr, hr, crop=scale)
        print(f"      {label:<15} {name:<22} {m['psnr']:8.2f} {m['ssim']:7.4f} {sr.mean() / ref:6.3f}")


def run(args) -> int:
    from napari_resolve.io import write_image

    from napari_resolve.commands._paths import check_writable
    from napari_resolve.data import samples
    from napari_resolve.errors import InputError

    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise InputError(f"-o {out} is a file; give a folder for the SR images")
    if samples.sample_root().resolve() in [out.resolve(), *out.resolve().parents]:
        raise InputError(f"-o {out} lies inside the sample data; choose another folder")
    check_writable(out, f"-o {out}")
    out.mkdir(parents=True, exist_ok=True)

    def write(name, array, pixel_size=None):
        write_image(out / name, array, pixel_size=pixel_size)

    t0 = time.perf_counter()
    _leukocytes(args, write)
    _fluorescence(args, write)
    _fluorescence_real(args)
    print(f"SR images written to {out}/ ({time.perf_counter() - t0:.1f} s). "
          "Open them in napari: napari " + str(out / "*.ome.tif"))
    return 0
