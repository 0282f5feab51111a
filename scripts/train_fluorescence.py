"""Train the fluorescence bundles on real pairs + calibrated simulation (issue 13).

    PYTHONPATH=src .venv/bin/python scripts/train_fluorescence.py mhtcun-lite-x2 \\
        [--minutes 35] [--data ../shared/data] [--out DIR] [--resume]
    ... scripts/train_fluorescence.py mhtcun-lite-x2 --finalize --out DIR   # measure + ship

``--resume --minutes M`` gives M more minutes, planned from the resume (the
engine's phase shares count from there; before 2026-11-30 they counted from
the original start and a resumed run stopped after one step).

Jobs (``JOBS``): ``mhtcun-lite-x2`` / ``dfcan-x2`` (wide field → SIM, DL-SIM
normal + low light) and ``mhtcun-lite-x4`` / ``dfcan-x4`` (wide field → STORM,
SFSRM ER). Each MHTCUN job and its DFCAN baseline get the same data, recipe
schedule, patch size, batch and budget (side by side on the same CPU for the
same minutes, or one after the other for the same number of steps:
``--max-steps``). At ×2 the losses are the papers' (``mhtcun-fluo`` /
``mse-ssim-fluo``); at ×4 the same with the SSIM term off
(``mhtcun-fluo-storm`` / ``mse-ssim-fluo-storm``: against a sparse STORM
target it outweighs the MSE, see :mod:`napari_resolve.train.recipes`).

Data (:mod:`napari_resolve.data.fluorescence_pairs`): only the ``train``
region of each real field is cut into tiles; checkpoints are chosen on the
``select`` region; the ``heldout`` region is never touched here (it is
measured by ``benchmarks/fluorescence.py``). Real tiles and simulated pairs
(:func:`napari_resolve.data.fluorescence.calibrated_pairs`, ranges from
:mod:`napari_resolve.data.camera`) are mixed **1 : 1** by count at ×2 and
**3 : 1** (real : simulated) at ×4 (:data:`SIM_PER_REAL`; each tile or
simulated image gives the same number of random patches per epoch, with
flips / 90° rotations): the real pairs carry the true optics, noise and
target of the microscope, but they are one field per data set, so simulated
microtubules, vesicles and ER over the fitted range of signal levels and PSF
widths keep the model from learning that one field (we are tested on other
microscopes). At ×4 the simulator lacks what dominates the real pair (the
out-of-focus haze of a thick cell under a thin STORM section), so simulation
gets a quarter of the patches there.

Checkpoints are chosen on fit-PSNR of the ``select`` region (the recipes'
``val_metric="fit"``), the figure the held-out regions report.

Intensities: percentile normalisation (1 / 99.8 %) of each LR input and of
each HR target, as the bundle's ``normalization`` tells prediction to do on
the user's input (issue 15: prediction fits it on the input and returns the
output on the input's scale).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "src" / "napari_resolve" / "pretrained"

# name: (architecture, scale, recipe, hr tile, hr patch)
JOBS = {
    "mhtcun-lite-x2": ("mhtcun-lite", 2, "mhtcun-fluo", 96, 64),
    "dfcan-x2": ("dfcan", 2, "mse-ssim-fluo", 96, 64),
    "mhtcun-lite-x4": ("mhtcun-lite", 4, "mhtcun-fluo-storm", 384, 256),
    "dfcan-x4": ("dfcan", 4, "mse-ssim-fluo-storm", 384, 256),
}
# jobs whose simulated pairs carry out-of-focus haze (data.camera.HAZE_RANGES) since
# 2026-12-01, session 9; --sim-haze / --no-sim-haze sets it for a training run of any job
SIM_HAZE = {"mhtcun-lite-x4", "dfcan-x4"}
# architecture options per job beyond the registry defaults (recorded in the bundle's config)
CONFIG: dict = {
    # x4: the cascade at 2x the LR size, PixelShuffle(2) to the SR size in each stage
    # (models.mhtcun feature_scale; a quarter of the compute, twice the reach in LR px)
    "mhtcun-lite-x4": {"feature_scale": 2},
}
# batch per scale (None: the recipe's 4). x4: 256-px HR patches (64 LR px) at batch 2,
# about twice the pixels of the first runs' 4 x 128 px per step: the SFSRM wide field
# carries out-of-focus haze on a scale of ~8 LR px (a Gaussian background of sigma 32
# HR px subtracted from bicubic gains +1.3 dB fit-PSNR on the held-out rows), which a
# 32-LR-px patch hardly shows; 384-px tiles normalised on their own are also closer
# to the whole-region normalisation of prediction than 256-px ones.
BATCH = {2: None, 4: 2}
# the held-out region in plain words (domain card; the regions are in fluorescence_pairs.REGIONS)
HELDOUT_WORDS = {
    2: "the bottom-right quarter of the real DL-SIM microtubule field (normal light), never "
       "trained on and not used to choose the checkpoint",
    4: "the bottom quarter of the real SFSRM endoplasmic-reticulum field, never trained on and "
       "not used to choose the checkpoint",
}
# simulated pairs per real tile, see the module docstring; x4: 1 : 3 since 2026-11-30
# (the simulator has no out-of-focus haze, the main thing the real x4 pair teaches)
SIM_PER_REAL = {2: 1.0, 4: 1.0 / 3.0}
NORMALIZATION = {"mode": "percentile", "low": 1.0, "high": 99.8}
# out-of-focus background removal (models.blocks.HazeRemoval) calibrated at --finalize on the
# select region, per scale: sigma in HR px (32-256 HR px = 0.5-4 um at 16 nm), weight. x4 only:
# STORM targets are thin sections without haze; SIM keeps its own sectioned background.
HAZE_GRID = {4: {"sigma": (32.0, 48.0, 64.0, 96.0, 128.0, 192.0, 256.0),
                  "weight": (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)}}


def tiles(lr: np.ndarray, hr: np.ndarray, scale: int, tile: int, stride: int):
    """Overlapping (LR, HR) tiles of ``tile`` HR px, ``stride`` HR px apart (edges included)."""
    H, W = hr.shape
    t, st = min(tile, H, W) // scale * scale, stride // scale * scale

    def starts(n):
        s = list(range(0, n - t + 1, st))
        return s if s[-1] == n - t else s + [n - t]

    out = []
    for y in starts(H):
        for x in starts(W):
            out.append((lr[y // scale:(y + t) // scale, x // scale:(x + t) // scale],
                        hr[y:y + t, x:x + t]))
    return out


def job_data(name: str, root: Path, haze: bool | None = None):
    """(train dict, select dict, description dict) for job ``name``.

    ``haze``: simulated pairs with out-of-focus light (``camera.HAZE_RANGES``);
    None: the job's default (:data:`SIM_HAZE`).
    """
    from napari_resolve.data import fluorescence_pairs as FP
    from napari_resolve.data.camera import HAZE_RANGES, TRAINING_RANGES
    from napari_resolve.data.fluorescence import calibrated_pairs

    arch, scale, recipe, tile, patch = JOBS[name]
    real_lr, real_hr, sel_lr, sel_hr = [], [], [], []
    fields = []
    for pair in FP.real_pairs(root, scale):
        fields.append(pair.name)
        for lr, hr in FP.region(pair, "train"):
            for a, b in tiles(lr, hr, scale, tile, tile // 2):
                if float(b.max()) == float(b.min()):
                    continue  # an empty STORM corner: the engine refuses constant targets
                real_lr.append(np.ascontiguousarray(a))
                real_hr.append(np.ascontiguousarray(b))
        for lr, hr in FP.region(pair, "select"):
            sel_lr.append(lr)
            sel_hr.append(hr)
    n_sim = int(round(SIM_PER_REAL[scale] * len(real_lr)))
    haze = name in SIM_HAZE if haze is None else bool(haze)
    cal = {**TRAINING_RANGES[scale], **(HAZE_RANGES[scale] if haze else {})}
    sims = calibrated_pairs(n_sim, scale, (tile, tile), seed=scale, calibration=cal)
    data = {"lr": real_lr + [s.lr for s in sims], "hr": real_hr + [s.hr for s in sims]}
    desc = {
        "real_fields": fields,
        "real_tiles": len(real_lr),
        "simulated": n_sim,
        "mix": f"{len(real_lr)} real tiles : {n_sim} simulated pairs (same patches per image)",
        "regions": FP.REGIONS[FP.real_pairs(root, scale)[0].dataset],
        "tile_hr_px": tile,
        "simulator": cal,
    }
    return data, {"lr": sel_lr, "hr": sel_hr}, desc


def domain_card(name: str, desc: dict, heldout: dict | None = None) -> dict:
    """The bundle's ``domain`` metadata (helper-rules contract); held-out figures added later."""
    scale = JOBS[name][1]
    if scale == 2:
        summary = ("Wide-field fluorescence (e.g. microtubules, filaments, vesicles) to a "
                   "SIM-like image at 2x the sampling")
        sample = "microtubules (real, DL-SIM) + simulated filaments, vesicles, ER"
        microscope = "wide-field fluorescence (3D-SIM system's wide field), camera noise at normal and low light"
        trained = ("DL-SIM microtubule field (Jin et al. 2020, MIT), left half, normal and low light; "
                   f"{desc['simulated']} calibrated simulated pairs")
    else:
        summary = ("Wide-field fluorescence of membranes / tubular networks (ER) to a STORM-like "
                   "image at 4x the sampling, out-of-focus haze removed (about +1 dB fit-PSNR "
                   "over bicubic on held-out rows with its calibrated background-removal "
                   "stage, about +0.5 without it)")
        sample = "endoplasmic reticulum (real, SFSRM) + simulated filaments, vesicles, ER"
        microscope = "wide-field fluorescence paired with STORM (8-bit display-scaled)"
        haze = " with out-of-focus haze" if "haze" in (desc.get("simulator") or {}) else ""
        trained = ("SFSRM ER wide-field/STORM pair (BSD-3), rows 0-399 of 640; "
                   f"{desc['simulated']} calibrated simulated pairs{haze}")
    return {
        "summary": summary, "modality": "fluorescence", "sample": sample,
        "microscope": microscope, "scale": scale, "pixel_size": None,
        "trained_on": trained, "heldout": heldout,
    }  # fmt: skip


def run_job(name: str, minutes: float, root: Path, out_dir: Path, resume: bool, max_steps=None,
            config: dict | None = None, haze: bool | None = None, start_from: Path | None = None,
            learning_rate: float | None = None):
    """Train job ``name``; ``start_from`` (a bundle of the same job) starts a new run from its
    weights, validated first and kept unless a step beats them (a low-rate continuation
    of a finished run: ``--from RUN/BEST.safetensors --learning-rate 6e-5``)."""
    from napari_resolve import bundle
    from napari_resolve import train as T

    arch, scale, recipe, tile, patch = JOBS[name]
    out = out_dir / f"{name}.safetensors"
    data, select, desc = job_data(name, root, haze)
    n_items = len(data["lr"])
    batch = BATCH[scale]
    ppi = max(1, int(round(100 * (batch or 4) / n_items)))  # ~100 steps (or fewer) per epoch
    t0 = time.monotonic()
    last = [0.0]

    def report(ev):
        now = time.monotonic()
        if ev.val or now - last[0] > 60:
            last[0] = now
            val = f" val {ev.val}" if ev.val else ""
            print(f"[{name}] {now - t0:6.0f}s step {ev.step} epoch {ev.epoch} "
                  f"loss {ev.losses}{val}", flush=True)

    state = Path(str(out).replace(".safetensors", ".state.safetensors"))
    print(f"[{name}] {json.dumps({k: v for k, v in desc.items() if k != 'regions'})}", flush=True)
    resuming = resume and state.exists()
    init = arch
    if start_from is not None and not resuming:
        init, init_meta = bundle.load(start_from)
        if init_meta["architecture"] != arch or int(init_meta["scale"]) != scale:
            raise SystemExit(f"error: {start_from} is a {init_meta['architecture']} x"
                             f"{init_meta['scale']}, not job {name}'s {arch} x{scale}")
        desc = {**desc, "continued_from": {"bundle": str(start_from),
                                           "steps": (init_meta.get("training") or {}).get("steps")}}
    res = T.train(
        None if resuming else init, data, scale=scale, in_channels=1,
        config=(None if start_from is not None
                else ({**CONFIG.get(name, {}), **(config or {})} or None)),
        recipe=recipe, learning_rate=learning_rate,
        keep_initial=start_from is not None and not resuming,
        minutes=minutes, max_steps=max_steps, patch_size=patch, batch_size=batch,
        patches_per_image=ppi, val_data=select, val_patch=None, output=out,
        resume=state if resuming else None, device="cpu", seed=0,
        normalization=NORMALIZATION, callback=report,
        meta={"training_data": desc, "domain": domain_card(name, desc),
              "recipe_note": "scripts/train_fluorescence.py (issue 13)"},
    )
    print(f"[{name}] done: {res.stopped}, best {res.best}, {out}", flush=True)
    return res


def for_hr_only(scale: int) -> dict:
    """How HR-only images become inputs when the bundle is fine-tuned on HR images alone.

    The wide-field camera of :func:`napari_resolve.data.datasets.degrade` at the
    middle of the calibrated training ranges (:data:`napari_resolve.data.camera.TRAINING_RANGES`:
    geometric mean of the photon and background ranges; FWHM 206 nm = 3.3 LR px
    of 62.6 nm at x2, 3.2 LR px of 64 nm at x4).
    """
    from napari_resolve.data.camera import TRAINING_RANGES

    r = TRAINING_RANGES[scale]
    geo = lambda lo_hi: float(np.sqrt(lo_hi[0] * lo_hi[1]))  # noqa: E731
    return {"kind": "widefield", "scale": scale, "pixel_size": 31.3 if scale == 2 else 16.0,
            "wavelength": 520.0, "na": 1.3, "hr_gain": r["hr_gain"],
            "photons": round(geo(r["photons"]), 1), "background": round(geo(r["background"]), 2),
            "read_noise": float(np.mean(r["read_noise"]))}


def calibrate_haze(model, meta: dict, pairs, scale: int, log=print):
    """``(model, meta)`` with the :class:`~napari_resolve.models.blocks.HazeRemoval` stage whose
    (sigma, weight) of :data:`HAZE_GRID` gives the best fit-PSNR on the ``select`` region
    of ``pairs`` (never the held-out one); unchanged when no pair beats the stage off."""
    from napari_resolve import models
    from napari_resolve.data import fluorescence_pairs as FP

    grid = HAZE_GRID.get(scale)
    if not grid:
        return model, meta
    weights = model.state_dict()

    def built(sigma, weight):
        m = models.build(meta["architecture"], **{**meta["config"], "haze_sigma": sigma,
                                                   "haze_weight": weight})
        m.load_state_dict(weights)
        return m.eval(), {**meta, "config": m.config}

    scores = {}
    for sigma in (0.0, *grid["sigma"]):
        for weight in ((0.0,) if sigma == 0 else grid["weight"]):
            model_meta = built(sigma, weight)
            score = float(np.mean([FP.evaluate_region(model_meta, pair, "select")["psnr"]
                                   for pair in pairs]))
            scores[(sigma, weight)] = score
            log(f"haze sigma {sigma:g} weight {weight:g}: select fit-PSNR {score:.3f}")
    sigma, weight = max(scores, key=scores.get)
    calibrated, meta = built(sigma, weight)
    note = {"region": "select", "metric": "fit-PSNR (dB), mean over the real pairs",
            "chosen": {"sigma_hr_px": sigma, "weight": weight},
            "scores": {f"sigma {s:g} weight {w:g}": round(v, 4) for (s, w), v in scores.items()}}
    return calibrated, {**meta, "haze_calibration": note}


def _run_haze(meta: dict) -> bool:
    """Whether the run of ``meta`` drew hazy simulated pairs (its recorded simulator says so)."""
    return "haze" in ((meta.get("training_data") or {}).get("simulator") or {})


def restat(name: str, root: Path, dest: Path) -> dict:
    """Rewrite only the ``input_stats`` of the finished bundle ``dest/name`` (weights kept)."""
    from napari_resolve import bundle

    path = dest / f"{name}.safetensors"
    model, meta = bundle.load(path)
    data, _, desc = job_data(name, root, _run_haze(meta))
    stats = input_stats(data, desc)
    meta = {k: v for k, v in meta.items() if k != "config"}
    meta["domain"] = {**meta["domain"], "input_stats": stats}
    bundle.save(path, model, meta)
    print(f"[{name}] input_stats from {stats['from']}: mean {stats['mean']} std {stats['std']}",
          flush=True)
    return stats


#: simulated pairs whose statistics go into a card beside the real training tiles
STATS_SIMULATED = 63


def input_stats(data: dict, desc: dict) -> dict:
    """The card's ``input_stats`` of a job's training ``data`` (and ``desc``, as
    :func:`job_data` returns them): per training input, after the bundle's normalisation.

    The run normalised each training tile on its own, so each real tile and
    each simulated pair (at most :data:`STATS_SIMULATED` of them) is one
    entry of ``images``; ``cards.domain_warning`` warns only when no entry is
    close. (One pooled mean made the ×4 bundles warn "brightness differs" on
    their own held-out crop: a crop inside the hazy cell has a normalised
    mean of 0.71, the pooled tiles 0.31, while real training tiles reach 0.62.)
    ``mean`` / ``std``: the averages over the entries.
    """
    from napari_resolve.cards import image_stats

    n_real = len(data["lr"]) - desc["simulated"]
    sims = data["lr"][n_real:]
    pick = np.random.default_rng(0).choice(len(sims), min(STATS_SIMULATED, len(sims)), replace=False)
    per = [image_stats(im, NORMALIZATION, channels=1)
           for im in data["lr"][:n_real] + [sims[i] for i in sorted(pick)]]
    return {"channels": 1,
            "mean": [round(float(np.mean([p["mean"][0] for p in per])), 4)],
            "std": [round(float(np.mean([p["std"][0] for p in per])), 4)],
            "images": [{"mean": p["mean"], "std": p["std"]} for p in per],
            "from": f"{n_real} real training tiles and {len(pick)} simulated training pairs, "
                    "each normalised on its own as in training"}


def finalize(name: str, root: Path, runs: Path, dest: Path, baseline: str | None) -> dict:
    """Measure run ``name`` on the held-out regions and write the bundle with its full metadata.

    The simulated pairs are rebuilt as the run drew them: with haze when its recorded
    simulator had it (runs from before the option recorded none, and had none).
    """
    from napari_resolve import bundle, models
    from napari_resolve.data import fluorescence_pairs as FP

    arch, scale, recipe, tile, patch = JOBS[name]
    model, meta = bundle.load(runs / f"{name}.safetensors")
    data, _, desc = job_data(name, root, _run_haze(meta))
    pairs = list(FP.real_pairs(root, scale))
    log = lambda m: print(f"[{name}] {m}", flush=True)  # noqa: E731
    model, meta = calibrate_haze(model, meta, pairs, scale, log)
    if baseline:  # the baseline gets the same calibration, on the same region
        base_model, base_meta = bundle.load(runs / f"{baseline}.safetensors")
        base_model, base_meta = calibrate_haze(base_model, base_meta, pairs, scale,
                                       lambda m: log(f"{baseline}: {m}"))
    figures = {}
    for pair in pairs:
        row = {"model": FP.evaluate_region((model, meta), pair, "heldout"),
               "bicubic": FP.evaluate_region(models.build("bicubic", scale=scale), pair, "heldout")}
        if baseline:
            row["dfcan_same_budget"] = FP.evaluate_region((base_model, base_meta), pair, "heldout")
        figures[pair.name] = row
    first = next(iter(figures.values()))
    heldout = {
        "data": HELDOUT_WORDS[scale],
        "metric": "fit-PSNR (dB)",
        "model": round(first["model"]["psnr"], 3), "bicubic": round(first["bicubic"]["psnr"], 3),
        "ssim_model": round(first["model"]["ssim"], 4), "ssim_bicubic": round(first["bicubic"]["ssim"], 4),
        "all": {k: {m: {q: round(v, 4) for q, v in f.items()} for m, f in row.items()}
                for k, row in figures.items()},
    }
    card = domain_card(name, desc, heldout)
    card["pixel_size"] = {"value": 62.6, "unit": "nm"} if scale == 2 else None
    card["input_stats"] = input_stats(data, desc)
    meta = dict(meta)
    meta.update({
        "domain": card,
        "pixel_size": card["pixel_size"],
        "degradation": {"kind": "paired", "scale": scale, "data": desc["mix"],
                        "simulator": dict(desc["simulator"]), "for_hr_only": for_hr_only(scale)},
        "training_data": desc,
        "heldout": heldout,
        "normalization": NORMALIZATION,
        "normalization_note": ("percentile 1 / 99.8 % fitted on the LR input (prediction fits it on "
                               "the user's image and maps the output back to its intensity scale)"),
    })
    dest.mkdir(parents=True, exist_ok=True)
    out = bundle.save(dest / f"{name}.safetensors", model, meta)
    print(f"[{name}] wrote {out}: {json.dumps(heldout['all'])}", flush=True)
    return heldout


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="+", metavar="NAME", help=f"of {', '.join(JOBS)}")
    ap.add_argument("--minutes", type=float, default=35.0)
    ap.add_argument("--max-steps", type=int, default=None)
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--resume", action="store_true", help="continue from the .state file beside the output")
    ap.add_argument("--finalize", action="store_true",
                    help="measure the runs in --out on the held-out regions and write the bundles "
                         "(with held-out figures and domain card) to --dest")
    ap.add_argument("--dest", type=Path, default=OUT)
    ap.add_argument("--restat", action="store_true",
                    help="rewrite only the domain card's input_stats of the bundles in --dest")
    ap.add_argument("--config", type=json.loads, default=None,
                    help='architecture options over the job\'s, as JSON (e.g. \'{"feature_scale": 2}\')')
    ap.add_argument("--sim-haze", action=argparse.BooleanOptionalAction, default=None,
                    help="simulated pairs with out-of-focus haze (data.camera.HAZE_RANGES; "
                         "default: the job's, SIM_HAZE; --finalize reads it from the run)")
    ap.add_argument("--from", dest="start_from", type=Path, default=None,
                    help="start a new run from this bundle's weights (same job), kept unless a "
                         "step beats them on the select region")
    ap.add_argument("--learning-rate", type=float, default=None,
                    help="Adam rate instead of the recipe's (e.g. 6e-5, a tenth of "
                         "mhtcun-fluo's 6e-4)")
    args = ap.parse_args(argv)
    if args.start_from is not None and len(args.names) != 1:
        ap.error("--from takes one job")
    unknown = sorted(set(args.names) - set(JOBS))
    if unknown:
        ap.error(f"unknown job(s) {', '.join(unknown)}; choose from {', '.join(JOBS)}")
    import torch

    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.restat:
        for name in args.names:
            restat(name, args.data, args.dest)
        return 0
    if args.finalize:
        for name in args.names:
            base = name.replace("mhtcun-lite", "dfcan") if name.startswith("mhtcun") else None
            finalize(name, args.data, args.out, args.dest, base)
        return 0
    for name in args.names:
        run_job(name, args.minutes, args.data, args.out, args.resume, args.max_steps, args.config,
                args.sim_haze, args.start_from, args.learning_rate)
    return 0


if __name__ == "__main__":
    sys.exit(main())
