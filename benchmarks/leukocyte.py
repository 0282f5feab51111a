"""Paper 000's comparison (Table 2) under one training budget, on the real WBC data.

    .venv/bin/python benchmarks/leukocyte.py [--epochs 15 12] [--scales 4 8] [--write docs/benchmarks.md]

Every model is trained by the same engine (``napari_resolve.train``) with its
paper's recipe for the same number of epochs at a given scale (as paper 000
§3.4 trains every model for the same epochs; an epoch here is one random
96-px HR patch from each training cell, in batches of 8, and multi-phase
recipes share the epochs in the paper's proportions), whatever each costs in
time, on the same split (:func:`napari_resolve.train.parsing.leukocyte_split`:
both WBC data sets, the 12 data-set-2 cells of ``sample_data/`` held out for
evaluation, the ``HELDOUT_RULE`` cells never used),
LR = MATLAB bicubic. The best checkpoint is chosen on 5 % of the *training*
cells, then the model is evaluated on the held-out cells: PSNR / SSIM on the
Y channel (MATLAB BT.601), border crop = scale, in float (paper 000 §3.4).
Results go to ``--json`` after every model (``--resume`` continues a run that
was stopped). ``--bundled`` trains nothing and compares the bundled ``gp-x*``
with ``np-x*`` (trained for the same SR steps by scripts/train_pretrained.py)
on the 12 sample cells and the other held-out cells, with GP's parsing IoU and
red-cell figures from the bundle metadata; ``--bccd N`` compares them instead on
crops of N held-out BCCD smears, another microscope (``smear_table``). The default budget (15 epochs at ×4, 12 at ×8) takes about 1¾
hours on two CPU cores. Models:

* bicubic (MATLAB imresize, no training);
* SRCNN 9-5-5 and SRResNet-16 (recipe ``sr-mse``: MSE, as paper 000 trains
  its baselines "with the same parameter settings");
* NP and GP (recipe ``gp``: Charbonnier + parsing cross-entropy for GP), in
  the CPU config of the bundled models (scripts/train_pretrained.py);
* GP with its prior U-Net pre-trained on parsing maps (``--prior``, from
  ``scripts/train_pretrained.py --prior-steps``) and the SR branch trained
  with the prior frozen (recipe ``gp-pretrained-prior``, issue 14);
* SRSEG with its segmentation extension and boundary mask (recipe
  ``srseg``: MSE, + masked segmentation CE, + perceptual + adversarial) and
  without it (the same recipe with the segmentation weight set to 0): paper
  004's ablation.

The GAN recipes (SRSEG) are evaluated with their *final* weights, not the
best-PSNR checkpoint: their later phases (segmentation, then perceptual +
adversarial) trade PSNR for other goals, so a PSNR-chosen checkpoint falls in
the shared MSE phase and would make the ablation's two runs identical.
For the recipes with an adversarial term the table adds a no-reference
sharpness figure beside PSNR (the papers warn that PSNR favours blur): the
mean gradient magnitude of the SR Y channel relative to that of the HR
reference (1.0 = as sharp as the reference; below = blurrier).
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
BCCD_CROP = 256  # HR px around a smear's white cell (a BCCD white cell is 150-220 px across)

MODELS = [
    # label, architecture, recipe, config
    ("SRCNN 9-5-5", "srcnn", "sr-mse", {}),
    ("SRResNet-16", "srresnet", "sr-mse", {}),
    ("NP", "np", "gp", {"features": 32}),
    ("GP", "gp", "gp", {"features": 32, "prior_base_channels": 16}),
    # issue 14: the prior U-Net pre-trained on parsing maps (scripts/train_pretrained.py
    # --prior-steps), then the SR branch with the prior frozen
    ("GP, pre-trained prior", "gp", "gp-pretrained-prior",
     {"features": 32, "prior_base_channels": 16}),
    ("SRSEG (seg + boundary mask)", "srseg", "srseg", {}),
    ("SRSEG without segmentation", "srseg", "srseg-noseg", {}),
]


def evaluate(model_meta, val, scale):
    from napari_resolve.data.degrade import imresize
    from napari_resolve.metrics.quality import evaluate_pair, relative_sharpness
    from napari_resolve.predict import predict

    rows = []
    for hr in val["hr"]:
        hr = hr[: hr.shape[0] // scale * scale, : hr.shape[1] // scale * scale]
        lr = imresize(hr, 1.0 / scale, channel_axis=-1)
        sr = predict(model_meta, lr).image
        res = evaluate_pair(sr, hr, scale=scale)
        rows.append((res["psnr"], res["ssim"], relative_sharpness(sr, hr)))
    return tuple(float(v) for v in np.mean(rows, axis=0))


def _write_table(results, args, threads) -> str:
    budgets = sorted({(r["scale"], r.get("epochs"), r.get("steps_per_epoch")) for r in results
                      if r["model"] != "bicubic"})
    budget = "; ".join(f"×{s}: {e} epochs of {n} batches" for s, e, n in budgets)
    lines = [
        f"Budget per model ({budget}); an epoch is one random 96-px HR patch from each of the "
        f"training cells, batches of 8. Same engine, seed and data for every model, on "
        f"{platform.machine()} CPU ({threads} threads). Training: both WBC data sets minus the "
        "12 data-set-2 cells of `sample_data/`; the checkpoint is chosen on 5 % of the training "
        "cells (128-px crops; the GAN recipes, SRSEG, are evaluated with their final weights), "
        "so the 12 evaluation cells are used for nothing but this table. "
        "PSNR/SSIM on Y (BT.601), border crop = scale, whole cells. Sharpness = mean Sobel "
        "magnitude of SR / HR on Y (1 = as sharp as the reference).",
        "",
        "| scale | model | PSNR (dB) | SSIM | sharpness | steps | training time (min) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(f"| ×{r['scale']} | {r['model']} | {r['psnr']:.3f} | {r['ssim']:.4f} | "
                     f"{r['sharp']:.3f} | {r['steps']} | {r.get('train_min', 0):.1f} |")
    return "\n".join(lines)


def prior_study(model_meta, val, scale) -> dict:
    """How much GP's SR depends on its prior (paper 000 §2.3, the investigation the issue asks for).

    Mean PSNR / SSIM on Y of the held-out cells with GP's own predicted parsing
    map (the normal path), with the annotated map as the prior (an oracle: what
    a perfect prior net, or a user's corrected mask, would give), and with an
    all-background prior (no geometry); plus the prior net's mean IoU of
    cytoplasm and nucleus against the annotation.
    """
    from napari_resolve.data.degrade import imresize
    from napari_resolve.metrics.quality import evaluate_pair
    from napari_resolve.predict import predict

    rows = {"predicted prior": [], "annotated prior": [], "background prior": []}
    ious = []
    for hr, lab in zip(val["hr"], val["labels"]):
        h, w = hr.shape[0] // scale * scale, hr.shape[1] // scale * scale
        hr, lab = hr[:h, :w], np.asarray(lab)[:h, :w].astype(np.int64)
        lr = imresize(hr, 1.0 / scale, channel_axis=-1)
        own = predict(model_meta, lr)
        for name, prior in (("predicted prior", None), ("annotated prior", lab),
                            ("background prior", np.zeros_like(lab))):
            sr = own.image if prior is None else predict(model_meta, lr, prior=prior).image
            res = evaluate_pair(sr, hr, scale=scale)
            rows[name].append((res["psnr"], res["ssim"]))
        pred = np.asarray(own.labels)
        ious.append([float(((pred == c) & (lab == c)).sum())
                     / max(float(((pred == c) | (lab == c)).sum()), 1.0) for c in (1, 2)])
    out = {k: tuple(float(x) for x in np.mean(v, axis=0)) for k, v in rows.items()}
    out["iou cytoplasm, nucleus"] = tuple(float(x) for x in np.mean(ious, axis=0))
    return out


def bundled_table(args, sample_cells) -> int:
    """GP vs NP of the bundled leukocyte models (issue 14): the same SR steps, unseen cells."""
    from napari_resolve import bundle
    from napari_resolve.train import parsing as P
    from napari_resolve.train.leukocyte import evaluate_bundle

    _, _, heldout = P.leukocyte_split(args.data, min_size=96)
    lines = [
        "| scale | bundle | SR steps | PSNR 12 sample cells (dB) | SSIM | PSNR "
        f"{len(heldout['hr'])} other held-out cells (dB) | SSIM | parsing IoU cytoplasm / nucleus "
        "(12 + other cells) | BCCD red-cell area called nucleus / cell, ×1 · ×0.5 · ×1.5 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    rows = {}
    for scale in args.scales:
        bic = None
        for name in (f"np-x{scale}", f"gp-x{scale}"):
            try:
                model, meta = bundle.load(str(args.bundle_dir / f"{name}.safetensors")
                                          if args.bundle_dir else name)
            except Exception as exc:  # a missing bundle: say so in the table
                print(f"{name}: {exc}")
                continue
            card = (meta.get("domain") or {}).get("heldout") or {}
            if "other_cells" in card and not args.reevaluate:  # measured when it was shipped
                o = card["other_cells"]
                a = {"psnr": card["model"], "ssim": card["ssim_model"],
                     "bicubic_psnr": card["bicubic"], "bicubic_ssim": card["ssim_bicubic"]}
                b = {k: o[k] for k in ("psnr", "ssim", "bicubic_psnr", "bicubic_ssim")}
            else:
                a = evaluate_bundle((model, meta), sample_cells, scale)
                b = evaluate_bundle((model, meta), heldout, scale)
            bic = (a["bicubic_psnr"], a["bicubic_ssim"], b["bicubic_psnr"], b["bicubic_ssim"])
            rows[name] = (a["psnr"], b["psnr"])
            info = meta.get("steps_info") or {}  # a continued bundle: all its SR steps
            steps = info.get("sr_steps_total",
                             info.get("sr_steps", meta.get("training", {}).get("steps")))
            parsing = meta.get("parsing") or {}
            iou = "—"
            if parsing:
                s_, h_ = parsing["iou_sample_cells"], parsing["iou_heldout_cells"]
                iou = (f"{s_['cytoplasm']:.3f} / {s_['nucleus']:.3f} · "
                       f"{h_['cytoplasm']:.3f} / {h_['nucleus']:.3f}")
            shares = " · ".join(
                f"{100 * parsing[k]['nucleus']:.1f} / {100 * parsing[k]['nucleus_or_cytoplasm']:.1f} %"
                for k in ("bccd_rbc_share_mag1", "bccd_rbc_share_mag0.5", "bccd_rbc_share_mag1.5")
                if k in parsing) or "—"
            lines.append(f"| ×{scale} | `{name}` | {steps} | {a['psnr']:.3f} | {a['ssim']:.4f} | "
                         f"{b['psnr']:.3f} | {b['ssim']:.4f} | {iou} | {shares} |")
        if bic:
            lines.append(f"| ×{scale} | bicubic | — | {bic[0]:.3f} | {bic[1]:.4f} | {bic[2]:.3f} | "
                         f"{bic[3]:.4f} | — | — |")
        if f"gp-x{scale}" in rows and f"np-x{scale}" in rows:
            d = [g - n for g, n in zip(rows[f"gp-x{scale}"], rows[f"np-x{scale}"])]
            lines.append(f"| ×{scale} | **GP − NP** | | **{d[0]:+.3f}** | | **{d[1]:+.3f}** | | | |")
    table = "\n".join(lines)
    print(table)
    if args.write:
        tag = "leukocyte-bundled" if args.bundle_dir is None else f"leukocyte-{args.bundle_dir.name}"
        _put_block(args.write, tag, table)
    return 0


def smear_crops(root: Path, limit: int | None = None, side: int = BCCD_CROP) -> list:
    """``side``² RGB crops of the held-out BCCD smears (odd positions, never trained on by
    the SR branch; the prior saw only the even ones), centred on the first white-cell box
    and shifted inside the image; smears without a white-cell box are skipped."""
    from napari_resolve.train import parsing as P

    _, held = P.bccd_split(root)
    crops = []
    for img, boxes in P.load_smears(root, held[:limit]):
        wbc = [b for b in boxes if b["name"] == "WBC"]
        if not wbc:
            continue
        cy = int((wbc[0]["ymin"] + wbc[0]["ymax"]) / 2)
        cx = int((wbc[0]["xmin"] + wbc[0]["xmax"]) / 2)
        y0 = min(max(cy - side // 2, 0), img.shape[0] - side)
        x0 = min(max(cx - side // 2, 0), img.shape[1] - side)
        crops.append(img[y0:y0 + side, x0:x0 + side])
    return crops


def smear_table(args) -> int:
    """GP vs NP of the bundled leukocyte models on another microscope (issue 14): BCCD
    smears (Shenggan, MIT; JPEG, another camera and stain than the WBC sets), crops around
    the white cell; LR = MATLAB bicubic, PSNR / SSIM on Y as for the cells. GP - NP is
    paired per crop: mean, its standard error, and the share of crops where GP is ahead."""
    from napari_resolve import bundle, models
    from napari_resolve.bundle import default_meta
    from napari_resolve.data.degrade import imresize
    from napari_resolve.metrics.quality import evaluate_pair
    from napari_resolve.predict import predict

    crops = smear_crops(args.bccd_root, args.bccd or None)
    lines = [f"| scale | model | PSNR {len(crops)} BCCD crops (dB) | SSIM |", "|---|---|---|---|"]
    for scale in args.scales:
        bic = models.build("bicubic", scale=scale)
        runs = {"bicubic": (bic, default_meta(bic))}
        for name in (f"np-x{scale}", f"gp-x{scale}"):
            runs[name] = bundle.load(str(args.bundle_dir / f"{name}.safetensors")
                                     if args.bundle_dir else name)
        rows = {k: [] for k in runs}
        for i, hr in enumerate(crops):
            lr = imresize(hr, 1.0 / scale, channel_axis=-1)
            for k, mm in runs.items():
                e = evaluate_pair(predict(mm, lr).image, hr, scale=scale)
                rows[k].append((e["psnr"], e["ssim"]))
            print(f"x{scale} crop {i + 1}/{len(crops)}", end="\r", flush=True)
        for k, v in rows.items():
            m = np.mean(v, axis=0)
            lines.append(f"| ×{scale} | {k if k == 'bicubic' else f'`{k}`'} | {m[0]:.3f} | {m[1]:.4f} |")
        d = np.array([g[0] - n[0] for g, n in zip(rows[f"gp-x{scale}"], rows[f"np-x{scale}"])])
        lines.append(f"| ×{scale} | **GP − NP** (paired) | **{d.mean():+.3f}** ± "
                     f"{d.std(ddof=1) / np.sqrt(len(d)):.3f}, GP ahead on "
                     f"{100 * np.mean(d > 0):.0f} % | |")
    table = "\n".join(lines)
    print(table)
    if args.write:
        _put_block(args.write, "leukocyte-bccd", table)
    return 0


def _put_block(path: Path, tag: str, table: str, heading: str = "") -> None:
    """Put ``table`` between the ``tag`` markers of ``path`` (``_docs.write_section``)."""
    from _docs import write_section  # benchmarks/ is on the path when a script runs

    write_section(f"<!-- {tag}:start -->", f"<!-- {tag}:end -->", table, heading, path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, nargs="+", default=[15, 12],
                    help="training epochs per model: one value, or one per scale (default 15 12)")
    ap.add_argument("--scales", type=int, nargs="+", default=[4, 8])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "wbc-zheng2018")
    ap.add_argument("--only", nargs="*", default=None, help="labels (regex) of the models to run")
    ap.add_argument("--write", type=Path, default=None, help="put the table into this markdown file")
    ap.add_argument("--json", type=Path, default=REPO / "bench_output" / "leukocyte.json",
                    help="results, written after every model")
    ap.add_argument("--resume", action="store_true",
                    help="keep the results already in --json and run only the missing models")
    ap.add_argument("--save-dir", type=Path, default=REPO / "bench_output" / "leukocyte_models",
                    help="where every trained model (best checkpoint) is saved, as "
                         "<recipe>-<arch>-x<scale>.safetensors")
    ap.add_argument("--prior-study", nargs="*", default=None, metavar="BUNDLE",
                    help="train nothing: the prior study (prior_study) of the GP models saved in "
                         "--save-dir, and of these bundles (e.g. gp-x4)")
    ap.add_argument("--prior", type=Path,
                    default=REPO / "bench_output" / "prior" / "prior-unet16.pt",
                    help="pre-trained prior U-Net for 'GP, pre-trained prior'")
    ap.add_argument("--bundled", action="store_true",
                    help="train nothing: GP vs NP of the bundled gp-x*/np-x* on the held-out "
                         "cells, with GP's parsing figures (the bundle metadata, measured when "
                         "it was shipped; --reevaluate measures again); --write puts the table "
                         "into the file")
    ap.add_argument("--bundle-dir", type=Path, default=None,
                    help="with --bundled: read gp-x*/np-x* from this folder instead of the "
                         "shipped bundles (e.g. runs stopped at another step count)")
    ap.add_argument("--bccd", type=int, default=None, metavar="N",
                    help="train nothing: GP vs NP of the bundled (or --bundle-dir) models on "
                         "crops around the white cell of the first N held-out BCCD smears (0: "
                         "all), another microscope; --write puts the table into the file")
    ap.add_argument("--bccd-root", type=Path, default=REPO.parent / "shared" / "data" / "bccd")
    ap.add_argument("--reevaluate", action="store_true",
                    help="train nothing: evaluate the models saved in --save-dir again and "
                         "rewrite the results in --json")
    args = ap.parse_args(argv)
    if len(args.epochs) not in (1, len(args.scales)) and not args.bundled and args.bccd is None:
        ap.error("--epochs takes one value or one per scale")
    epochs_for = dict(zip(args.scales, args.epochs * len(args.scales) if len(args.epochs) == 1
                          else args.epochs))

    import torch

    from napari_resolve import models
    from napari_resolve import train as T
    from napari_resolve.bundle import default_meta
    from napari_resolve.train import parsing as P

    if args.bccd is not None:
        return smear_table(args)
    # the 12 sample cells are the evaluation set; the HELDOUT_RULE cells are never used
    data, val, _ = P.leukocyte_split(args.data, min_size=96)
    if args.bundled:
        return bundled_table(args, val)
    results = []
    if (args.resume or args.reevaluate) and args.json.exists():
        results = json.loads(args.json.read_text())
    done = {(r["scale"], r["model"]) for r in results}

    def save_json():
        args.json.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.json.with_suffix(".tmp")
        tmp.write_text(json.dumps(results, indent=1))
        tmp.replace(args.json)

    def record(row):
        results.append(row)
        save_json()

    def saved_model(scale, label):
        _, arch, recipe, _ = next(m for m in MODELS if m[0] == label)
        return args.save_dir / f"{recipe}-{arch}-x{scale}.safetensors"

    def model_for_table(scale, label):
        """The best-PSNR checkpoint; for the GAN recipes the final weights (see the docstring)."""
        from napari_resolve import bundle
        from napari_resolve.train import checkpoint

        path = saved_model(scale, label)
        if "srseg" in label.lower():
            return checkpoint.final_model(path)[:2]
        return bundle.load(path)

    if args.prior_study is not None:
        from napari_resolve import bundle

        sources = [str(p) for p in sorted(args.save_dir.glob("gp-gp-x*.safetensors"))
                   if not p.name.endswith(".state.safetensors")] + list(args.prior_study)
        study = {}
        for src in sources:
            model, meta = bundle.load(src)
            study[src] = prior_study((model, meta), val, int(meta["scale"]))
            print(src, json.dumps(study[src]), flush=True)
        path = args.json.with_name("leukocyte_prior.json")
        path.write_text(json.dumps(study, indent=1))
        print(f"written to {path}")
        return 0

    if args.reevaluate:
        from napari_resolve import bundle

        for row in results:
            if row["model"] == "bicubic":
                continue
            # the bundle's own metadata: Y-channel models must be run on Y (color_mode "y")
            p, s, sh = evaluate(model_for_table(row["scale"], row["model"]), val, row["scale"])
            row.update(psnr=p, ssim=s, sharp=sh)
            print(f"x{row['scale']} {row['model']}: {p:.3f} dB {s:.4f} sharpness {sh:.3f}", flush=True)
        save_json()
        args.scales = []  # straight to the table

    for scale in args.scales:
        epochs = epochs_for[scale]
        if (scale, "bicubic") not in done:
            bic = models.build("bicubic", scale=scale)
            p, s, sh = evaluate((bic, default_meta(bic)), val, scale)
            record(dict(scale=scale, model="bicubic", psnr=p, ssim=s, sharp=sh, steps=0, gan=False))
            print(f"x{scale} bicubic: {p:.3f} dB {s:.4f} sharpness {sh:.3f}", flush=True)
        for label, arch, recipe, config in MODELS:
            if args.only and not any(re.search(o, label) for o in args.only):
                continue
            if (scale, label) in done:
                continue
            torch.manual_seed(0)
            t0 = time.monotonic()
            args.save_dir.mkdir(parents=True, exist_ok=True)
            output = saved_model(scale, label)
            # model selection on a slice of the training cells: the evaluation cells stay unseen
            model = arch
            if recipe == "gp-pretrained-prior":
                if not args.prior.exists():
                    print(f"x{scale} {label}: no pre-trained prior at {args.prior}, skipped")
                    continue
                model = models.build(arch, scale=scale, **config)
                model.prior_net.load_state_dict(P.load_prior(args.prior).state_dict())
                config = None
            res = T.train(model, data, config=config, scale=scale, recipe=recipe,
                          epochs=epochs, batch_size=8, patch_size=96, val_fraction=0.05,
                          val_patch=128, seed=0, device="cpu", output=output,
                          meta={"training_data": "WBC (Zheng 2018) data sets 1+2, sample_data "
                                                 "cells held out (benchmarks/leukocyte.py)"})
            # the bundle's metadata, not default_meta: it knows a 1-channel model runs on Y
            p, s, sh = evaluate(model_for_table(scale, label), val, scale)
            steps = res.history[-1]["step"] if res.history else 0
            record(dict(scale=scale, model=label, psnr=p, ssim=s, sharp=sh, steps=steps,
                        gan="srseg" in recipe, epochs=epochs,
                        steps_per_epoch=steps // max(epochs, 1),
                        train_min=(time.monotonic() - t0) / 60))
            print(f"x{scale} {label}: {p:.3f} dB {s:.4f} sharpness {sh:.3f} ({steps} steps, "
                  f"{(time.monotonic() - t0) / 60:.1f} min)", flush=True)

    order = {m[0]: i for i, m in enumerate(MODELS)}
    results.sort(key=lambda r: (r["scale"], -1 if r["model"] == "bicubic" else order.get(r["model"], 99)))
    table = _write_table(results, args, torch.get_num_threads())
    print(table)
    if args.write:
        _put_block(args.write, "leukocyte", table, heading="Leukocytes (paper 000, Table 2)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
