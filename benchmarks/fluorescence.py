"""Fluorescence on real data (issue 13): the table in docs/benchmarks.md.

    PYTHONPATH=src .venv/bin/python benchmarks/fluorescence.py [--data ../shared/data]
        [--models DIR] [--finetune-minutes 10] [--calibrate] [--calibrate-haze]
        [--second-field] [--write]

Per data set and signal level (DL-SIM microtubules at normal and low light,
x2; SFSRM ER, x4), on the **held-out** region of each field
(:data:`napari_resolve.data.fluorescence_pairs.REGIONS`, never trained on,
never used to choose a checkpoint): bicubic, DFCAN (same data and budget as
the MHTCUN bundle), the MHTCUN-lite bundles and, at x2, the bundle fine-tuned
on the DL-SIM pairs (3/4 of the field: the train + select regions; the
held-out quadrant stays unseen). Figures: CARE's fit-PSNR / SSIM / NRMSE
(:func:`napari_resolve.metrics.quality.fit_metrics`) and the decorrelation
resolution of the output (HR px; neither data set records its pixel size).

``--models DIR``: where ``mhtcun-lite-x{2,4}.safetensors`` and
``dfcan-x{2,4}.safetensors`` are (default: the bundled models for MHTCUN,
``DIR`` = ``benchmarks/out/fluorescence`` for DFCAN, which is not shipped).
``--finetune-minutes M``: fine-tune the x2 bundle for M minutes of CPU first
(``--finetuned FILE`` reuses one). ``--calibrate``: also print the camera /
PSF calibration of docs/fluorescence.md; ``--calibrate-haze`` prints only the
out-of-focus fit (:func:`calibrate_haze`); ``--second-field`` prints only the x4
models on the SFSRM microtubule pair (:func:`second_field`). ``--write``: put the table into
docs/benchmarks.md between its markers.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

BEGIN, END = "<!-- fluorescence-real:begin -->", "<!-- fluorescence-real:end -->"
PRETRAINED = REPO / "src" / "napari_resolve" / "pretrained"


def calibrate(root: Path) -> str:
    """Markdown: variance-mean lines and PSF widths of the real data (docs/fluorescence.md)."""
    import glob

    import tifffile

    from napari_resolve.data.camera import FWHM_PER_RESOLUTION, fit_variance_mean, psf_fwhm_px
    from napari_resolve.data.fluorescence_pairs import DLSIM, bin2, real_pairs
    from napari_resolve.io import read_image

    lines = ["| data | frames | slope a (DN/e⁻) | intercept b (DN²) | m0 = −b/a (DN) | R² | "
             "levels (DN) | peak signal (e⁻) |", "|---|---|---|---|---|---|---|---|"]

    def row(name, frames, note):
        L = fit_variance_mean(frames)
        lo, hi = L.levels[0, 0], L.levels[-1, 0]
        peak = (hi - L.zero_level) / L.slope
        lines.append(f"| {name} | {note} | {L.slope:.4g} | {L.intercept:.4g} | {L.zero_level:.5g} | "
                     f"{L.r2:.3f} | {lo:.1f}–{hi:.1f} | {peak:.0f} |")

    for tag, light in (("HE", "normal"), ("LE", "low")):
        paths = sorted(glob.glob(str(root / DLSIM / f"{tag}_X2" / "Sample_1" / f"{tag}_[01][0-9].tif")))[:15]
        row(f"DL-SIM raw frames, {light} light", np.stack([bin2(tifffile.imread(p)) for p in paths]),
            "15, binned 2×2")
    mt = read_image(root / "rdl-sim-microtubules-raw" / "MT.mrc")[0]
    row("rDL-SIM MT.mrc raw frames", np.asarray(mt, dtype=np.float64), "9")
    biosr = root / "biosr-widefield-snr" / "dataset" / "test"
    for lvl in (1, 5, 9):
        im = tifffile.imread(biosr / "Microtubules" / "input_wide_field_images" / f"level_{lvl:02d}.tif")
        row(f"BioSR microtubules level {lvl}", im.astype(np.float64), "1 (mean of 9, rescaled)")
    psf = [f"| image | decorrelation resolution (px) | PSF FWHM (px, × {FWHM_PER_RESOLUTION}) |",
           "|---|---|---|"]

    def prow(name, im):
        fwhm, res = psf_fwhm_px(im)
        psf.append(f"| {name} | {res:.2f} | {fwhm:.2f} |")

    for p in real_pairs(root, 2)[:1] + real_pairs(root, 4):
        prow(f"{p.name}: wide field (LR)", p.lr)
    prow("rDL-SIM MT.mrc: mean of 9 frames", np.asarray(mt, dtype=np.float64).mean(axis=0))
    for kind, lvl in (("Microtubules", 9), ("F-actin", 12)):
        prow(f"BioSR {kind} level {lvl}",
             tifffile.imread(biosr / kind / "input_wide_field_images" / f"level_{lvl:02d}.tif"))
    return "\n".join(lines) + "\n\n" + "\n".join(psf)


def calibrate_haze(root: Path) -> str:
    """Markdown: the out-of-focus share of each real wide field (``data.camera.HAZE_RANGES``).

    On the train region of each real pair, least squares of the wide field on
    ``c0 + c1 bin(G_psf * target) + c2 bin(G_sigma * target)`` (the target's
    in-focus image and a wide blur of it standing for the out-of-plane light),
    for sigma from 2 to 32 LR px; the out-of-focus share is ``c2 mean / (c1 mean
    + c2 mean)``. The PSF FWHM is 3.3 LR px at x2 and 3.0 at x4 (the
    calibration table of docs/fluorescence.md).
    """
    from scipy import ndimage
    from skimage.measure import block_reduce

    from napari_resolve.data.fluorescence_pairs import real_pairs, region

    def binned(img, s):  # the region's HR sides are multiples of the scale
        return block_reduce(img, (s, s), np.mean)

    lines = ["| data | σ (LR px) | R² without haze | R² | out-of-focus share |", "|---|---|---|---|---|"]
    for scale, fwhm in ((2, 3.3), (4, 3.0)):
        for pair in real_pairs(root, scale):
            lr, hr = (np.asarray(a, np.float64) for a in region(pair, "train")[0])
            focus = binned(ndimage.gaussian_filter(hr, fwhm * scale / 2.3548), scale)
            y = lr.ravel()
            for sigma in (0, 2, 4, 8, 16, 32):
                cols = [np.ones_like(focus), focus]
                if sigma:
                    cols.append(binned(ndimage.gaussian_filter(hr, sigma * scale), scale))
                A = np.stack([c.ravel() for c in cols], 1)
                coef, *_ = np.linalg.lstsq(A, y, rcond=None)
                r2 = 1.0 - (y - A @ coef).var() / y.var()
                if not sigma:
                    r2_focus = r2
                    continue
                oof = coef[2] * cols[2].mean()
                share = oof / (coef[1] * cols[1].mean() + oof)
                lines.append(f"| {pair.name} | {sigma} | {r2_focus:.3f} | {r2:.3f} | {share:.2f} |")
    return "\n".join(lines)


# the SFSRM microtubule pair's registration (x5 "high scan", see register_microtubules)
MT_REGISTRATION = {"magnifications": (1, 5), "patch_size": 48, "background": "dark",
                   "coarse_window": 64}


def microtubule_pair(root: Path, threshold: float = 0.3):
    """The SFSRM microtubule wide field, its STORM image (float32) and their registration
    (:func:`napari_resolve.data.registration.register`, :data:`MT_REGISTRATION`)."""
    import tifffile

    from napari_resolve.data.registration import register

    base = root / "sfsrm-wf-storm" / "test_data" / "microtubule"
    wf = tifffile.imread(base / "widefield" / "microtubule_widefield.tif").astype(np.float32)
    st = tifffile.imread(base / "reference" / "microtubule_STORM.tif").astype(np.float32)
    return wf, st, register(wf, None, st, threshold=threshold, **MT_REGISTRATION)


def register_microtubules(root: Path) -> str:
    """Markdown: the SFSRM microtubule pair registered with ``data/registration.py`` (issue 13).

    The STORM image (1280²) is not a full-field ×4 of the wide field (320²):
    it is registered as a ×5 "high scan" of the wide field (magnifications
    1 and 5), 48-px wide-field patches, coarse window ±64 px (the field sits
    ~50 px in), threshold T = 0.3 (the default 0.6 finds nothing), fluorescence
    foreground. Correlation before / after:
    Pearson r between the wide field and the STORM image block-averaged onto
    the wide-field grid and blurred (Gaussian σ 1.5 px), first as the naive
    full-field ×4 pair at offset 0, then ×5 at the registered offset.
    """
    from scipy import ndimage as ndi

    from napari_resolve.data.registration import register
    from napari_resolve.errors import InputError

    wf, st, res = microtubule_pair(root)

    def r(a, b):
        return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])

    def binned(k):
        n = st.shape[0] // k
        return ndi.gaussian_filter(st[: n * k, : n * k].astype(np.float64)
                                   .reshape(n, k, n, k).mean(axis=(1, 3)), 1.5)

    try:
        register(wf, None, st, **MT_REGISTRATION)
        default = "passes"
    except InputError as exc:
        default = f"fails (`{str(exc).split(':')[0]}`)"
    rep_ = res.report
    summ = rep_["summary"]["hr"]
    oy, ox = (-v for v in summ["offset_mean"])
    n = st.shape[0] // 5
    moved = ndi.shift(wf.astype(np.float64), (-oy, -ox), order=3)[:n, :n]
    cors = [m.correlation["hr"] for m in res.kept]
    lines = [
        "| | value |", "|---|---|",
        f"| before: naive full-field ×4 at offset 0, r | {r(wf.astype(np.float64), binned(4)):.2f} |",
        "| scale (STORM px per wide-field px, given) | 5 |",
        f"| offset of the STORM field in the wide field (rows, cols; wide-field px) | "
        f"{oy:.2f}, {ox:.2f} |",
        f"| overlap | wide-field rows {oy:.1f}–{oy + n:.1f}, cols {ox:.1f}–{ox + n:.1f}: "
        f"{n}² of {wf.shape[0]}² px ({100 * n * n / wf.size:.0f} %) |",
        f"| patches kept (48 px, T = 0.3) | {rep_['kept']} of {rep_['candidates']} "
        f"(rejected: {', '.join(f'{k} {v}' for k, v in rep_['rejected'].items() if v)}) |",
        f"| spread of the per-patch offsets (std, rows / cols, wide-field px) | "
        f"{summ['offset_std'][0]:.2f} / {summ['offset_std'][1]:.2f} |",
        f"| per-patch peak correlation | {min(cors):.2f}–{max(cors):.2f} (mean {np.mean(cors):.2f}) |",
        f"| with the default T = 0.6 | {default} |",
        f"| after: ×5 at the registered offset, r | {r(moved, binned(5)):.2f} |",
    ]
    return "\n".join(lines)


def second_field(root: Path, models_dir: Path) -> str:
    """Markdown: the x4 models on the SFSRM *microtubule* pair, a field no model was trained,
    chosen or calibrated on (issue 13, session 11). Registered as :func:`register_microtubules`
    (x5, T = 0.3); the wide field shifted by the registered offset (cubic) and cut to the
    overlap (256² px) is the input; the STORM image resampled from x5 to x4 of it (MATLAB
    bicubic, 1024²) the reference. Fit-PSNR / SSIM with 8 HR px of border left out, each
    model with and without its background-removal stage."""
    from scipy import ndimage as ndi

    from napari_resolve import bundle, models
    from napari_resolve.data.degrade import imresize
    from napari_resolve.metrics.quality import fit_metrics
    from napari_resolve.predict import predict

    wf, st, res = microtubule_pair(root)
    oy, ox = (-v for v in res.report["summary"]["hr"]["offset_mean"])
    n = st.shape[0] // 5
    lr = ndi.shift(wf.astype(np.float64), (-oy, -ox), order=3)[:n, :n].astype(np.float32)
    hr = imresize(st[: 5 * n, : 5 * n], 4 / 5).astype(np.float32)

    def score(model, post=None):
        sr = np.asarray(predict(model, lr, device="cpu").image, dtype=np.float64)
        f = fit_metrics(post(sr) if post else sr, hr, crop=8)
        return f"{f['psnr']:.2f} / {f['ssim']:.3f}"

    bicubic = models.build("bicubic", scale=4)
    lines = [f"Registered offset ({oy:.1f}, {ox:.1f}) wide-field px; input {n}² px, reference "
             f"{4 * n}² px. Fit-PSNR (dB) / SSIM.", "",
             "| model | without the stage | with its stage |", "|---|---|---|"]
    shipped = PRETRAINED / "mhtcun-lite-x4.safetensors"
    cfg = bundle.read_meta(str(shipped))["config"]
    lines.append(f"| bicubic | {score(bicubic)} | "
                 f"{score(bicubic, haze_removal(cfg['haze_sigma'], cfg['haze_weight']))} "
                 "(`mhtcun-lite-x4`'s stage) |")
    candidates = [("`mhtcun-lite-x4`", shipped),
                  ("`dfcan-x4` (shipped)", PRETRAINED / "dfcan-x4.safetensors"),
                  ("DFCAN in --models (same budget)", models_dir / "dfcan-x4.safetensors")]
    for label, path in candidates:
        if not path.is_file():
            continue
        model, meta = bundle.load(path)
        stage = getattr(model, "haze", None)
        with_stage = score((model, meta)) if stage is not None else "(none)"
        model.haze = None
        lines.append(f"| {label} | {score((model, meta))} | {with_stage} |")
    return "\n".join(lines)


def finetune_x2(base: Path, root: Path, minutes: float, out: Path, rate: float | None = None) -> dict:
    """Fine-tune ``base`` on the DL-SIM pairs outside the held-out quadrant (both light levels)."""
    from napari_resolve.data import fluorescence_pairs as FP
    from napari_resolve.train.finetuning import TrainingImage, finetune_measured

    images, val = [], []
    for pair in FP.real_pairs(root, 2):
        tag = pair.name.split(", ")[-1].replace(" ", "-")
        for i, (lr, hr) in enumerate(FP.region(pair, "finetune")):
            images.append(TrainingImage(f"{tag}-{i}", hr, lr=lr))
        for lr, hr in FP.region(pair, "select"):
            val.append(TrainingImage(f"{tag}-select", hr, lr=lr))
    out.unlink(missing_ok=True)
    t0 = time.monotonic()
    report = finetune_measured(str(base), images, val_images=val, minutes=minutes, patch_size=64,
                               batch_size=4, output=out, device="cpu", learning_rate=rate,
                               note="benchmarks/fluorescence.py: DL-SIM 3/4 of the field")
    if report.error:
        raise RuntimeError(f"{report.error}\n{report.traceback or ''}")
    hist = report.result.history if report.result else []
    best = max((h for h in hist if h.get("best")), key=lambda h: h["step"], default=None)
    return {"minutes": minutes, "wall_s": round(time.monotonic() - t0, 1), "lr": rate,
            "best_step": best["step"] if best else None,
            "select_before": report.before.psnr if report.before else None,
            "select_after": report.after.psnr if report.after else None,
            "steps": (report.result.history[-1].get("step") if report.result and report.result.history
                      else None), "file": str(out)}


def haze_removal(sigma: float, weight: float):
    """A bundle's out-of-focus background removal (:class:`~napari_resolve.models.blocks.
    HazeRemoval`) as a function on one SR image; after bicubic it shows what the stage
    alone gives. (The stage is linear and the fit metric affine-invariant, so this equals
    the stage inside the network on a float input, which prediction does not clip.)"""
    import torch

    from napari_resolve.models.blocks import HazeRemoval

    stage = HazeRemoval(sigma, weight)
    def apply(sr):
        x = torch.from_numpy(np.ascontiguousarray(sr, dtype=np.float32))[None, None]
        return stage(x)[0, 0].numpy()

    return apply


def measure(models_dir: Path, root: Path, finetuned: Path | None, scales=(2, 4)) -> list[dict]:
    from napari_resolve import bundle, models
    from napari_resolve.data import fluorescence_pairs as FP

    rows = []
    for scale in scales:
        mh = models_dir / f"mhtcun-lite-x{scale}.safetensors"
        if not mh.is_file():
            mh = PRETRAINED / mh.name
        candidates = [("bicubic", models.build("bicubic", scale=scale))]
        cfg = bundle.read_meta(str(mh))["config"] if mh.is_file() else {}
        if cfg.get("haze_weight"):
            sigma, weight = cfg["haze_sigma"], cfg["haze_weight"]
            label = (f"bicubic + haze removal (mhtcun-lite-x{scale}'s: sigma {sigma:g} HR px, "
                     f"weight {weight:g})")
            candidates.append((label, (models.build("bicubic", scale=scale),
                                       haze_removal(sigma, weight))))
        candidates += [("DFCAN (same budget)", models_dir / f"dfcan-x{scale}.safetensors"),
                       (f"mhtcun-lite-x{scale}", mh)]
        if scale == 2 and finetuned is not None:
            candidates.append(("mhtcun-lite-x2 fine-tuned (DL-SIM 3/4)", finetuned))
        for pair in FP.real_pairs(root, scale):
            for label, spec in candidates:
                if isinstance(spec, Path) and not spec.is_file():
                    print(f"skip {label}: {spec} missing", file=sys.stderr)
                    continue
                m, post = spec if isinstance(spec, tuple) else (spec, None)
                m = m if not isinstance(m, Path) else str(m)
                r = FP.evaluate_region(m, pair, "heldout", post=post)
                rows.append({"data": pair.name, "scale": scale, "model": label, **r})
                print(json.dumps(rows[-1]), flush=True)
    return rows


def table(rows: list[dict], extra: str) -> str:
    from _docs import measured_line  # benchmarks/ is on the path when a script runs

    head = [
        measured_line("PYTHONPATH=src python benchmarks/fluorescence.py --write"),
        "",
        "Held-out regions only (DL-SIM: bottom-right quadrant, 128² HR px; SFSRM ER: LR rows "
        "480–639, 640×2560 HR px). fit = CARE: reference normalised to its 0.1–99.9 % "
        "percentiles, output affinely least-squares fitted to it. Resolution: decorrelation of "
        "the output, HR px (lower = finer).",
        "",
        "| data | model | fit-PSNR (dB) | Δ vs bicubic | SSIM | NRMSE | resolution (HR px) |",
        "|---|---|---|---|---|---|---|",
    ]
    bic = {r["data"]: r["psnr"] for r in rows if r["model"] == "bicubic"}
    for r in rows:
        head.append(f"| {r['data']} | {r['model']} | {r['psnr']:.2f} | {r['psnr'] - bic[r['data']]:+.2f} | "
                    f"{r['ssim']:.3f} | {r['nrmse']:.3f} | {r['resolution_px']:.2f} |")
    return "\n".join(head) + ("\n\n" + extra if extra else "")


def write(text: str) -> None:
    doc = REPO / "docs" / "benchmarks.md"
    body = doc.read_text(encoding="utf-8")
    block = f"{BEGIN}\n{text}\n{END}"
    if BEGIN in body and END in body:
        body = body[: body.index(BEGIN)] + block + body[body.index(END) + len(END):]
    else:
        body = body.rstrip() + "\n\n## Fluorescence on real data (issue 13)\n\n" + block + "\n"
    doc.write_text(body, encoding="utf-8")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--models", type=Path, default=REPO / "benchmarks" / "out" / "fluorescence")
    ap.add_argument("--finetune-minutes", type=float, default=10.0)
    ap.add_argument("--finetune-lr", type=float, default=None,
                    help="fine-tuning rate (default: the fine-tuning recipe's, 1e-4 here)")
    ap.add_argument("--finetuned", type=Path, default=None, help="reuse this fine-tuned x2 bundle")
    ap.add_argument("--calibrate", action="store_true")
    ap.add_argument("--calibrate-haze", action="store_true",
                    help="print the out-of-focus share of each real wide field (HAZE_RANGES)")
    ap.add_argument("--register", action="store_true",
                    help="also register the SFSRM microtubule pair and print how well it worked")
    ap.add_argument("--second-field", action="store_true",
                    help="print only the x4 models on the SFSRM microtubule pair (never used to "
                         "train, choose or calibrate anything)")
    ap.add_argument("--write", action="store_true")
    ap.add_argument("--scales", type=int, nargs="+", default=[2, 4], choices=[2, 4],
                    help="measure only these scales (the table written needs both)")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    if args.calibrate:
        print(calibrate(args.data))
    if args.calibrate_haze:
        print(calibrate_haze(args.data))
        return 0
    if args.second_field:
        print(second_field(args.data, args.models))
        return 0
    if args.register:
        print(register_microtubules(args.data))
    extra = ""
    finetuned = args.finetuned
    if finetuned is None and args.finetune_minutes > 0:
        base = args.models / "mhtcun-lite-x2.safetensors"
        base = base if base.is_file() else PRETRAINED / base.name
        finetuned = args.models / "mhtcun-lite-x2-dlsim-finetuned.safetensors"
        info = finetune_x2(base, args.data, args.finetune_minutes, finetuned, args.finetune_lr)
        print(json.dumps(info), flush=True)
        extra = (f"Fine-tuning: {info['minutes']:g} min of CPU training ({info['steps']} steps, "
                 f"batch 4, 64-px patches, rate {info['lr'] or 1e-4:g}) on the DL-SIM train + select "
                 "regions at both light levels, checkpoint chosen on the select quadrant "
                 f"(fit-PSNR, best at step {info['best_step']}), the base kept unless a step "
                 "beats it.")
    elif finetuned is not None:
        from napari_resolve import bundle

        tr = bundle.read_meta(str(finetuned)).get("training") or {}
        extra = (f"Fine-tuning (reused {finetuned.name}): {tr.get('time_s', 0) / 60:.1f} min of CPU "
                 f"training ({tr.get('steps')} steps, batch {tr.get('batch_size')}, "
                 f"{tr.get('patch_size')}-px patches) on the DL-SIM train + select regions at both "
                 "light levels, checkpoint chosen on the select quadrant.")
    rows = measure(args.models, args.data, finetuned, tuple(args.scales))
    text = table(rows, extra)
    print(text)
    if args.write:
        write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
