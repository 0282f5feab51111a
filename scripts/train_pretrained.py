"""Train the bundled pretrained models (src/napari_resolve/pretrained/).

    .venv/bin/python scripts/train_pretrained.py [NAME ...] [--minutes M] [--data ../shared/data]

Leukocyte models (gp, np at x4 and x8; issue 14) train on the WBC images of
Zheng et al. 2018, both data sets (``napari_resolve.train.parsing.leukocyte_split``):
the 12 data-set-2 cells of ``sample_data/`` and the ``HELDOUT_RULE`` cells are
never trained on; the checkpoint is chosen on 5 % of the training cells. LR =
MATLAB bicubic, Y channel, Charbonnier, Adam 3e-4 (``SR_LR``), batch 8 of
96-px patches, and the same number of SR steps for GP and NP (``--steps``,
default ``SR_STEPS``). ``--prior-steps N`` first pre-trains GP's prior U-Net on
parsing maps (``napari_resolve.train.parsing``; checkpoint
``bench_output/prior/prior-unet16.pt``); GP then starts from it with the prior
frozen (recipe ``gp-pretrained-prior``). Runs go to ``bench_output/leukocyte_runs``
(``--resume`` continues them); a finished run is evaluated and written to
``pretrained/`` with its ``domain`` card and held-out figures
(``napari_resolve.train.leukocyte.finish_bundle``; ``--finish`` does only that,
``--no-ship`` skips it).

CPU budget: the paper trains GP for 100 epochs on two GTX 1080 (6 h). Here a
run gets a fixed number of minutes on 2 CPU cores, so the bundled leukocyte
models use a narrower config (``CPU_CONFIG``: 32 feature channels in the SR
branch) and 96-px HR patches instead of whole images. GP's prior
(``PRIOR = "lr-rgb32"``, since 2026-12-01) is a U-Net of 32 base channels and
depth 3 that reads the LR *colour* image (``prior_input="lr"``; the model is
RGB in / out with the SR on Y, ``luma_sr``): the paper's prior reads the
bicubic-upsampled Y, which costs s² times the pixels for no extra information
and cannot tell a pink red cell from lilac cytoplasm (``GP_CONFIGS["y16"]``
keeps the earlier config). The bundle records config, recipe, budget and device.

``mhtcun-lite-x2-sim`` is the former simulation-only fluorescence recipe
(microtubules, vesicles, ER; widefield Airy PSF, NA 1.3, 520 nm; Poisson +
Gaussian noise; 31.3 nm HR pixels) with MHTCUN's staged loss, written under
that name; the bundled ``mhtcun-lite-x2`` is trained on real pairs +
calibrated simulation by ``scripts/train_fluorescence.py`` (issue 13).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from napari_resolve.train.leukocyte import GP_CONFIGS, gp_config, gp_map_options
from napari_resolve.train.leukocyte import GP_PRIOR as PRIOR

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "src" / "napari_resolve" / "pretrained"

PRIOR_CKPTS = {"y16": "prior-unet16.pt", "lr-rgb32": "prior-lr-rgb32.pt"}
CPU_CONFIG = {  # see the module docstring; GP's, per scale: train.leukocyte.gp_config
    "np": {"features": 32},
}

JOBS = {
    # name: (architecture, scale, minutes)
    "gp-x4": ("gp", 4, 16),
    "np-x4": ("np", 4, 10),
    "mhtcun-lite-x2-sim": ("mhtcun-lite", 2, 20),
    "gp-x8": ("gp", 8, 11),
    "np-x8": ("np", 8, 12),
}


def fluorescence_split():
    from napari_resolve.data.fluorescence import simulate_pairs

    train = simulate_pairs(48, shape=(128, 128), scale=2, seed=1)
    val = simulate_pairs(6, shape=(128, 128), scale=2, seed=2)
    return train, val


PRIOR_CKPT = REPO / "bench_output" / "prior" / PRIOR_CKPTS[PRIOR]


def run_prior(steps: int, minutes, data_root: Path, resume: bool,
              cytoplasm_weight: float | None = None, lr_patch: int = 48, batch: int = 8,
              rate: float = 1e-3, small_boost=(1.6, 1.6), from_bundle: bool = False,
              wbc_centred: float = 0.0, seed: int | None = None, bundle_name: str = "gp-x4",
              scales=(4, 8)) -> None:
    """Pre-train GP's prior U-Net on parsing maps (napari_resolve.train.parsing).

    ``lr-rgb32`` (``PRIOR``): the prior of a GP model of that config, trained as
    the model runs it; batches of ``batch`` LR patches ``lr_patch`` px square,
    ×4 and ×8 in turn, Adam ``rate`` with cosine decay, cross-entropy weights
    1 / ``cytoplasm_weight`` (default 1.5) / 1; data-set-1 crops magnified by
    ``small_boost``, and a share ``wbc_centred`` of the BCCD patches centred on
    white-cell boxes (:class:`~napari_resolve.train.parsing.ParsingSampler`).
    ``from_bundle``: start from the prior inside the shipped ``bundle_name`` (a second
    stage; the seed differs from the first stage's so it draws other batches; each
    later stage needs a ``seed`` of its own: 23 second and third, 29 fourth), trained
    through that bundle's model (so with its ``prior_zoom``) on batches of ``scales``
    (``gp-x8`` and ``(8,)``: a prior for the zoomed ×8 input only, issue 14 session 12).
    ``y16``: the bare U-Net on upsampled Y, batches of 8 HR patches 128 px square.
    """
    import torch

    from napari_resolve import models
    from napari_resolve.metrics import parsing as MP
    from napari_resolve.train import parsing as P

    train, sample_cells, heldout = P.leukocyte_split(data_root / "wbc-zheng2018")
    bccd_train, bccd_held = P.bccd_split(data_root / "bccd")
    smears = P.load_smears(data_root / "bccd", bccd_train)
    check_smears = P.load_smears(data_root / "bccd", bccd_held[:12])
    print(f"[prior] {len(train['hr'])} training cells, {len(smears)} BCCD smears; "
          f"held out {len(sample_cells['hr'])} + {len(heldout['hr'])} cells", flush=True)
    sampler = P.ParsingSampler(train, smears, patch=128, scales=tuple(scales), small_boost=small_boost,
                               wbc_centred=wbc_centred)

    def evaluate(net):
        parse = P.net_parser(net) if PRIOR == "y16" else P.model_parser(net)
        out = {f"x{s} sample": MP.parse_cells(parse, sample_cells, s) for s in (4, 8)}
        out["x4 heldout"] = MP.parse_cells(parse, heldout, 4)
        out["x8 heldout"] = MP.parse_cells(parse, heldout, 8)
        out["x4 bccd"] = MP.parse_smears(parse, check_smears, 4)
        return {k: {kk: round(vv, 4) for kk, vv in v.items()} for k, v in out.items()}

    torch.manual_seed(0)
    if PRIOR == "y16":
        weights = P.CLASS_WEIGHTS if cytoplasm_weight is None else (1.0, cytoplasm_weight, 1.0)
        P.pretrain_prior(sampler, PRIOR_CKPT, steps=steps, minutes=minutes, resume=resume,
                         evaluate=evaluate, eval_every=200, class_weights=weights,
                         log=lambda m: print(f"[prior] {m}", flush=True))
        return
    weights = (1.0, 1.5 if cytoplasm_weight is None else cytoplasm_weight, 1.0)
    if from_bundle:
        from napari_resolve import bundle

        model, _ = bundle.load(OUT / f"{bundle_name}.safetensors")
    else:
        model = models.build("gp", scale=4, **GP_CONFIGS[PRIOR])
    P.pretrain_prior(sampler, PRIOR_CKPT, steps=steps, minutes=minutes, resume=resume,
                     evaluate=evaluate, eval_every=0 if from_bundle else 500,
                     class_weights=weights, model=model, batch_size=batch, lr=rate,
                     seed=seed if seed is not None else (23 if from_bundle else 11),
                     lr_patch=lr_patch,
                     log=lambda m: print(f"[prior] {m}", flush=True))


#: SR steps of the leukocyte bundles: GP and NP get the same number at a scale (issue 14)
SR_STEPS = {4: 70, 8: 70}
SR_LR = 3e-4
RUNS = REPO / "bench_output" / "leukocyte_runs"


def finish_bundle(name, run_path, data_root, scale, arch, steps_info) -> dict:
    """Evaluate a finished run and write ``pretrained/<name>.safetensors`` with its card."""
    from napari_resolve.train.leukocyte import finish_bundle as finish

    return finish(run_path, OUT / f"{name}.safetensors", data_root, scale, steps_info,
                  log=lambda m: print(f"[{name}] {m}", flush=True))


def _continuation(name: str, steps: int, init_from_bundle: bool) -> dict:
    """Step history of a run that continues the shipped bundle (else nothing)."""
    if not init_from_bundle or not (OUT / f"{name}.safetensors").exists():
        return {}
    from napari_resolve import bundle

    prev = bundle.read_meta(OUT / f"{name}.safetensors").get("steps_info") or {}
    return {"sr_steps_total": int(prev.get("sr_steps_total", prev.get("sr_steps", 0))) + steps,
            "continued_from": prev}


def _sr_init(init_from_bundle: bool, resuming: bool) -> str:
    if init_from_bundle:
        return "the previously shipped bundle's weights (SR steps counted from there)"
    return "resumed run" if resuming else "random (SR branch), as paper 000"


def _recipe(arch: str, warm_prior: bool, end_to_end: bool) -> str:
    """GP with a pre-trained prior trains its SR branch only (recipe gp-pretrained-prior),
    unless ``end_to_end`` (paper 000 §2.5: the prior net trains too, with the parsing cross
    entropy on the masks); NP: recipe gp (its parsing term has nothing to act on)."""
    return "gp-pretrained-prior" if arch == "gp" and warm_prior and not end_to_end else "gp"


def run_job(name: str, minutes: float, data_root: Path, device: str, resume: bool = False,
            steps: int | None = None, ship: bool = True, init_from_bundle: bool = False,
            end_to_end: bool = False) -> dict:
    from napari_resolve import train as T

    arch, scale, default_minutes = JOBS[name]
    if arch in ("gp", "np"):
        from napari_resolve import models
        from napari_resolve.train import parsing as P

        train, _, _ = P.leukocyte_split(data_root / "wbc-zheng2018", min_size=96)
        RUNS.mkdir(parents=True, exist_ok=True)
        out = RUNS / f"{name}.safetensors"
        steps = steps or SR_STEPS[scale]
        state = Path(str(out).replace(".safetensors", ".state.safetensors"))
        model = arch
        warm = None
        if not (resume and state.exists()):
            model = models.build(arch, scale=scale, **_config(arch, scale))
            if init_from_bundle:  # continue the shipped bundle (GP: with the new prior below)
                from napari_resolve import bundle

                shipped, _ = bundle.load(OUT / f"{name}.safetensors")
                if arch == "gp":  # its SR branch; the prior may be of another config
                    model.sr_net.load_state_dict(shipped.sr_net.state_dict())
                else:
                    model.load_state_dict(shipped.state_dict())
            if arch == "gp" and PRIOR_CKPT.exists():
                model.prior_net.load_state_dict(P.load_prior(PRIOR_CKPT).state_dict())
                warm = str(PRIOR_CKPT.relative_to(REPO))
        resuming = resume and state.exists()
        if resuming and arch == "gp" and PRIOR_CKPT.exists():
            warm = str(PRIOR_CKPT.relative_to(REPO))  # the run being resumed started from it
        recipe = _recipe(arch, bool(warm), end_to_end)
        info = {"sr_steps": steps, "lr": SR_LR, "prior_warm_start": warm, "recipe": recipe,
                "sr_init": _sr_init(init_from_bundle, resuming),
                **_continuation(name, steps, init_from_bundle and not resuming)}
        kwargs = dict(config=None if not isinstance(model, str) else _config(arch, scale),
                      batch_size=8, patch_size=96, val_patch=128, val_fraction=0.05,
                      learning_rate=SR_LR, max_steps=steps, recipe=recipe,
                      meta={"prior_pretraining": warm, "issue": 14})
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        t0 = time.monotonic()
        last = [0.0]

        def report(ev):
            now = time.monotonic()
            if ev.val or now - last[0] > 60:
                last[0] = now
                val_txt = f" val {ev.val}" if ev.val else ""
                print(f"[{name}] {now - t0:6.0f}s step {ev.step} epoch {ev.epoch} "
                      f"loss {ev.losses}{val_txt}", flush=True)

        res = T.train(None if resume and state.exists() else model,
                      train, scale=scale, epochs=10_000, output=out, device=device, seed=0,
                      callback=report, resume=out if resume and state.exists() else None,
                      minutes=minutes, **kwargs)
        print(f"[{name}] done: {res.stopped}, best {res.best}, {out}", flush=True)
        if ship and res.stopped in ("steps", "completed"):
            return finish_bundle(name, out, data_root, scale, arch, info)
        return res.best
    out = OUT / f"{name}.safetensors"
    minutes = minutes or default_minutes
    from napari_resolve.data.fluorescence import pairs_degradation

    data, val = fluorescence_split()
    # MHTCUN works at the SR size through three U-Nets: ~25 s per batch of
    # 4 x 96-px patches on this CPU, so 64-px patches keep the step rate usable
    kwargs = dict(batch_size=4, patch_size=64, val_patch=None,
                  pixel_size={"value": 0.0626, "unit": "µm"},
                  meta={"training_data": "simulated fluorescence (microtubules, vesicles, ER)",
                        "degradation": pairs_degradation(len(data), scale)})
    t0 = time.monotonic()
    res = T.train(arch, data, scale=scale, val_data=val, minutes=minutes, epochs=10_000,
                  output=out, device=device, seed=0, **kwargs)
    print(f"[{name}] done: {res.stopped}, best {res.best}, {out}", flush=True)
    # the resume state (optimizer moments) is not shipped
    Path(str(out).replace(".safetensors", ".state.safetensors")).unlink(missing_ok=True)
    return res.best


def _config(arch: str, scale: int) -> dict:
    """The CPU config of ``arch`` at ``scale`` (GP: ``gp_config``, with the scale's map
    refinement)."""
    return gp_config(scale) if arch == "gp" else CPU_CONFIG[arch]


def update_gp_bundles(names, data_root: Path, swap_prior: bool) -> None:
    """Rewrite the shipped gp bundles with their scale's map options (``gp_map_options``:
    guided filter, prior zoom; and, with
    ``swap_prior``, the prior of ``PRIOR_CKPT``), the SR branch untouched; the card
    is measured again (``finish_bundle``) and ``steps_info`` says what changed."""
    from napari_resolve import bundle, models
    from napari_resolve.train import parsing as P
    from napari_resolve.train.leukocyte import finish_bundle as finish_card

    for name in names:
        model, meta = bundle.load(OUT / f"{name}.safetensors")
        scale = int(meta["scale"])
        new = models.build("gp", **{**model.config, **gp_map_options(scale)})
        new.load_state_dict(model.state_dict())
        info = dict(meta.get("steps_info") or {})
        if swap_prior:
            new.prior_net.load_state_dict(P.load_prior(PRIOR_CKPT).state_dict())
            info["prior_swapped"] = (f"prior of {PRIOR_CKPT.relative_to(REPO)} put in without SR "
                                     "steps on its maps (scripts/train_pretrained.py --update-gp-bundles)")
        info["prior_guide"] = (f"{gp_map_options(scale)} (train.leukocyte.gp_map_options, "
                               "chosen on training cells by benchmarks/prior_guide.py)")
        RUNS.mkdir(parents=True, exist_ok=True)
        tmp = RUNS / f"{name}-updated.safetensors"
        bundle.save(tmp, new, {k: v for k, v in meta.items() if k != "config"})
        finish_card(tmp, OUT / f"{name}.safetensors", data_root, scale, info,
                    log=lambda m, name=name: print(f"[{name}] {m}", flush=True))


def main(argv=None) -> int:
    global PRIOR_CKPT  # --prior-ckpt
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="*", metavar="NAME", help=f"of {', '.join(JOBS)} (default: all)")
    ap.add_argument("--minutes", type=float, default=None, help="budget per model (default: per job)")
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--prior-steps", type=int, default=0,
                    help="pre-train GP's prior U-Net for this many steps first (issue 14)")
    ap.add_argument("--prior-cytoplasm-weight", type=float, default=None,
                    help="cross-entropy weight of the cytoplasm class for the prior "
                         "(default: 1.5 for the lr-rgb32 prior, "
                         "train.parsing.CLASS_WEIGHTS' 3 for y16)")
    ap.add_argument("--prior-patch", type=int, default=48,
                    help="LR patch side of the lr-rgb32 prior pre-training (px)")
    ap.add_argument("--prior-batch", type=int, default=8, help="its batch size")
    ap.add_argument("--prior-lr", type=float, default=1e-3, help="its Adam rate (cosine decay)")
    ap.add_argument("--prior-small-boost", type=float, nargs=2, default=(1.6, 1.6),
                    metavar=("LO", "HI"), help="magnification range of data-set-1 crops "
                    "(train.parsing.ParsingSampler small_boost)")
    ap.add_argument("--prior-wbc-centred", type=float, default=0.0, metavar="SHARE",
                    help="share of the BCCD patches centred on white-cell boxes")
    ap.add_argument("--prior-from-bundle", action="store_true",
                    help="start the prior from the one inside the shipped gp-x4 (second stage)")
    ap.add_argument("--prior-bundle", default="gp-x4",
                    help="with --prior-from-bundle: the shipped GP bundle whose prior (and model, "
                         "e.g. its prior_zoom) the stage starts from")
    ap.add_argument("--prior-scales", type=int, nargs="+", default=[4, 8],
                    help="SR scales of the prior's training batches")
    ap.add_argument("--prior-ckpt", type=Path, default=None,
                    help=f"the prior checkpoint written by --prior-steps and read by --swap-prior "
                         f"(default {PRIOR_CKPT.relative_to(REPO)})")
    ap.add_argument("--prior-seed", type=int, default=None,
                    help="seed of the prior's batches (default 23 with --prior-from-bundle, else 11)")
    ap.add_argument("--resume", action="store_true", help="continue interrupted runs")
    ap.add_argument("--steps", type=int, default=None,
                    help="SR steps of the leukocyte models (default SR_STEPS, the same for GP and NP)")
    ap.add_argument("--no-ship", action="store_true",
                    help="leukocyte models: train only (bench_output/leukocyte_runs), no bundle")
    ap.add_argument("--init-from-bundle", action="store_true",
                    help="leukocyte models: start from the shipped bundle's weights (GP: with "
                         "the pre-trained prior swapped in) instead of a random SR branch")
    ap.add_argument("--end-to-end", action="store_true",
                    help="GP: train the prior net too (recipe gp: Charbonnier + parsing cross "
                         "entropy, paper 000 §2.5) instead of freezing it")
    ap.add_argument("--update-gp-bundles", action="store_true",
                    help="train nothing: rewrite the shipped gp bundles named (default gp-x4, gp-x8) "
                         "with their map options (gp_map_options), re-measuring their cards")
    ap.add_argument("--swap-prior", action="store_true",
                    help="with --update-gp-bundles: also put in the prior of the pre-training "
                         "checkpoint (no SR steps)")
    ap.add_argument("--finish", action="store_true",
                    help="leukocyte models: write the bundles of finished runs, train nothing")
    args = ap.parse_args(argv)
    unknown = sorted(set(args.names) - set(JOBS))
    if unknown:
        ap.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(JOBS)}")
    if args.prior_ckpt is not None:
        PRIOR_CKPT = args.prior_ckpt.resolve()
    if args.update_gp_bundles:
        update_gp_bundles(args.names or ["gp-x4", "gp-x8"], args.data, args.swap_prior)
        return 0
    if not args.prior_steps:
        args.names = args.names or list(JOBS)
    import torch

    torch.set_num_threads(max(1, torch.get_num_threads()))
    np.random.seed(0)
    if args.finish:
        for name in args.names:
            arch, scale, _ = JOBS[name]
            finish_bundle(name, RUNS / f"{name}.safetensors", args.data, scale, arch,
                          {"sr_steps": args.steps or SR_STEPS[scale], "lr": SR_LR,
                           "prior_warm_start": str(PRIOR_CKPT.relative_to(REPO))
                           if arch == "gp" else None,
                           "recipe": _recipe(arch, True, args.end_to_end),
                           "sr_init": _sr_init(args.init_from_bundle, False),
                           **_continuation(name, args.steps or SR_STEPS[scale],
                                           args.init_from_bundle)})
        return 0
    if args.prior_steps:
        run_prior(args.prior_steps, args.minutes, args.data, args.resume,
                  args.prior_cytoplasm_weight, args.prior_patch, args.prior_batch,
                  args.prior_lr, tuple(args.prior_small_boost), args.prior_from_bundle,
                  args.prior_wbc_centred, args.prior_seed, args.prior_bundle, args.prior_scales)
        if not args.names:
            return 0
    for name in args.names:
        run_job(name, None if args.prior_steps else args.minutes, args.data, args.device,
                resume=args.resume, steps=args.steps, ship=not args.no_ship,
                init_from_bundle=args.init_from_bundle, end_to_end=args.end_to_end)
    return 0


if __name__ == "__main__":
    sys.exit(main())
