"""Train the leukocyte bundles (gp, np, srseg) on a CUDA machine in minutes; keep what beats CPU.

    .venv/bin/python scripts/train_gpu_leukocyte.py [NAME ...] [--minutes 9] [--data ../shared/data]
        [--out bench_output/gpu_leukocyte] [--ship]

Sibling of the fluorescence ``scripts/train_gpu.py`` (issue 14, item 5). Within
``--minutes`` in all (default 9) it

1. pre-trains GP's prior U-Net on parsing maps (``napari_resolve.train.parsing``:
   both WBC data sets, BCCD red cells as background, smear augmentations),
   starting from the CPU checkpoint when there is one;
2. trains each job with its paper's recipe: ``gp`` end to end (paper 000
   §2.5, Charbonnier + parsing cross entropy) from the pre-trained prior;
   ``np`` with the same recipe and the same number of steps as ``gp`` at
   that scale (the fair comparison of §3.2); ``srseg-x4`` (RGB) with paper
   004's three phases (MSE; + masked segmentation CE with the boundary mask;
   + perceptual + adversarial), the perceptual features from the project's
   own ``ConvEncoder`` fitted on the training cells (a denoising
   autoencoder, ``napari_resolve.losses``; no ImageNet VGG can be
   downloaded), with the bicubic skip (``bicubic_residual``, a departure
   so that a minutes-long run starts from bicubic);
3. evaluates every result on the 12 held-out sample cells and keeps it
   (``--ship``: writes ``src/napari_resolve/pretrained/<name>.safetensors``
   with the issue-14 card) only when it beats bicubic and the bundle there
   now, and for GP only when its parsing IoU is not worse either.

Architectures are the bundles' CPU configs (32 SR features; GP's colour prior
U-Net of 32 base channels and depth 3 at the LR size) so a bundle stays under
~9 MB; ``--paper-width`` trains the paper's widths instead (then nothing over
``MAX_BUNDLE_MB`` is shipped). Checkpoints are chosen on 5 % of the training
cells. ``--max-steps`` / ``--prior-steps`` cap the steps (the CPU test uses 2).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from napari_resolve.train.leukocyte import GP_CONFIGS, GP_PRIOR, gp_config

REPO = Path(__file__).resolve().parents[1]
PRETRAINED = REPO / "src" / "napari_resolve" / "pretrained"
MAX_BUNDLE_MB = 9.5

#: GP: the bundled colour prior at the LR size (as scripts/train_pretrained.py)
CPU_CONFIG = {"gp": GP_CONFIGS[GP_PRIOR],
              "np": {"features": 32},
              # the paper's generator, plus the bicubic skip (a departure: starts as bicubic)
              "srseg": {"bicubic_residual": True}}
#: name: (architecture, scale, share of the training time)
JOBS = {
    "gp-x4": ("gp", 4, 0.2),
    "np-x4": ("np", 4, 0.1),
    "gp-x8": ("gp", 8, 0.2),
    "np-x8": ("np", 8, 0.1),
    "srseg-x4": ("srseg", 4, 0.25),
}
PRIOR_SHARE = 0.15


def _current(name, cells, scale, folder=PRETRAINED):
    """PSNR and (GP) parsing IoU of the bundle shipped now, or None."""
    from napari_resolve import bundle
    from napari_resolve.train.leukocyte import evaluate_bundle

    path = Path(folder) / f"{name}.safetensors"
    if not path.exists():
        return None
    ev = evaluate_bundle(bundle.load(path), cells, scale)
    return {k: ev[k] for k in ("psnr", "iou") if k in ev}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="*", metavar="NAME", help=f"of {', '.join(JOBS)} (default: all)")
    ap.add_argument("--minutes", type=float, default=9.0, help="wall-clock budget in all")
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--out", type=Path, default=REPO / "bench_output" / "gpu_leukocyte")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--ship", action="store_true", help="write better models into pretrained/")
    ap.add_argument("--max-steps", type=int, default=None, help="cap on each job's steps")
    ap.add_argument("--prior-steps", type=int, default=100_000, help="cap on the prior's steps")
    ap.add_argument("--eval-cells", type=int, default=None, help="evaluate on this many cells")
    ap.add_argument("--paper-width", action="store_true", help="the papers' widths (big bundles)")
    ap.add_argument("--config", type=json.loads, default=None, metavar="JSON",
                    help='architecture overrides per arch, e.g. \'{"gp": {"features": 8}}\'')
    ap.add_argument("--prior-batch", type=int, default=16)
    ap.add_argument("--pretrained-dir", type=Path, default=PRETRAINED,
                    help="where the bundles to beat are, and where better ones go")
    args = ap.parse_args(argv)
    unknown = sorted(set(args.names) - set(JOBS))
    if unknown:
        ap.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(JOBS)}")
    names = args.names or list(JOBS)

    import torch

    from napari_resolve import bundle, models
    from napari_resolve import train as T
    from napari_resolve.train import parsing as P
    from napari_resolve.train.leukocyte import evaluate_bundle, finish_bundle

    t_start = time.monotonic()
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    args.out.mkdir(parents=True, exist_ok=True)
    wbc_root, bccd_root = args.data / "wbc-zheng2018", args.data / "bccd"
    train, sample_cells, _ = P.leukocyte_split(wbc_root, min_size=96)
    cells = {k: v[: args.eval_cells] for k, v in sample_cells.items()}
    summary = {"device": device, "jobs": {}}
    budget = 60.0 * args.minutes * 0.85  # the rest: evaluation and writing

    prior_ckpt = args.out / "prior.pt"
    if any(JOBS[n][0] == "gp" for n in names):
        cpu_prior = REPO / "bench_output" / "prior" / "prior-lr-rgb32.pt"
        smears = P.load_smears(bccd_root, P.bccd_split(bccd_root)[0])
        sampler = P.ParsingSampler(train, smears, patch=128, scales=(4, 8))
        prior_config = {**({} if args.paper_width else CPU_CONFIG["gp"]),
                        **(args.config or {}).get("gp", {})}
        base = int(prior_config.get("prior_base_channels", 32))
        prior_model = models.build("gp", scale=4, **prior_config)  # its prior trains as GP runs it
        init = cpu_prior if cpu_prior.exists() and prior_config == CPU_CONFIG["gp"] else None
        P.pretrain_prior(sampler, prior_ckpt, steps=args.prior_steps, batch_size=args.prior_batch,
                         lr=3e-4 if init else 1e-3, base_channels=base, device=device,
                         minutes=budget * PRIOR_SHARE / 60.0, init=init, model=prior_model,
                         class_weights=(1.0, 1.5, 1.0),
                         log=lambda m: print(f"[prior] {m}", flush=True))
    gp_steps = {}
    for name in names:
        arch, scale, share = JOBS[name]
        cpu = gp_config(scale) if arch == "gp" else CPU_CONFIG[arch]
        config = {**({} if args.paper_width else cpu), **(args.config or {}).get(arch, {})}
        model = models.build(arch, scale=scale, **config)
        kwargs = dict(recipe=None, batch_size=8 if arch != "srseg" else 16,
                      patch_size=96, val_patch=128, val_fraction=0.05)
        if arch == "gp":
            model.prior_net.load_state_dict(P.load_prior(prior_ckpt).state_dict())
        steps = args.max_steps
        if arch == "np" and scale in gp_steps:  # the same steps as GP at this scale
            steps = gp_steps[scale]
        out = args.out / f"{name}.safetensors"
        data = train if arch != "srseg" else {"hr": train["hr"], "labels": train["labels"]}
        res = T.train(model, data, scale=scale, epochs=10_000, device=device, seed=0,
                      minutes=None if (arch == "np" and scale in gp_steps) else budget * share / 60.0,
                      max_steps=steps, output=out, **kwargs)
        done = res.history[-1]["step"] if res.history else 0
        if arch == "gp":
            gp_steps[scale] = max(done, 1)
        if arch == "srseg":  # the GAN recipe: its final weights, not the best-PSNR ones
            from napari_resolve.train import checkpoint

            model, meta, _ = checkpoint.final_model(out)
            bundle.save(out, model, meta)
        model_meta = bundle.load(out)
        ev = evaluate_bundle(model_meta, cells, scale)
        new = {"psnr": ev["psnr"], "bicubic_psnr": ev["bicubic_psnr"], "steps": done,
               **({"iou": ev["iou"]} if "iou" in ev else {})}
        old = _current(name, cells, scale, args.pretrained_dir)
        # never ship a model below bicubic; else it must beat the bundle there now
        better = new["psnr"] > ev["bicubic_psnr"] and (old is None or new["psnr"] > old["psnr"])
        if better and arch == "gp" and old and "iou" in old:
            better = all(new["iou"][k] >= old["iou"][k] - 0.01 for k in new["iou"])
        size_mb = out.stat().st_size / 2**20
        ship = args.ship and better and size_mb <= MAX_BUNDLE_MB
        summary["jobs"][name] = {"new": new, "shipped_before": old, "better": better,
                                 "size_mb": round(size_mb, 2), "shipped": ship}
        print(f"[{name}] {json.dumps(summary['jobs'][name])}", flush=True)
        if ship:
            finish_bundle(out, args.pretrained_dir / f"{name}.safetensors", args.data, scale,
                          {"sr_steps": done, "device": device, "script": "train_gpu_leukocyte.py",
                           "prior_pretraining": str(prior_ckpt) if arch == "gp" else None},
                          eval_limit=args.eval_cells, log=lambda m: print(f"[{name}] {m}"))
    summary["minutes"] = (time.monotonic() - t_start) / 60.0
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
