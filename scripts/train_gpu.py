"""Paper-size models on a CUDA machine, shipped only when they beat the CPU bundle (issue 13).

    PYTHONPATH=src python scripts/train_gpu.py mhtcun-x2 [--minutes 9] [--data ../shared/data]
        [--out DIR] [--dest src/napari_resolve/pretrained] [--batch N] [--max-steps N]

Each GPU job (:data:`GPU_JOBS`, a :class:`GpuJob`; other recipes, e.g. the
leukocyte models, add their own entry) names the architecture and its config,
the data it trains on (a function of the data folder returning the training
and checkpoint-selection sets), the bundle it must beat and how both are
measured on the held-out regions. ``mhtcun-x2`` trains the paper-size MHTCUN
(paper 003: 64/128/256 channels, three FCABs per level) ×2 on exactly the data of
``mhtcun-lite-x2`` (:func:`scripts.train_fluorescence.job_data`: DL-SIM train
region tiles + calibrated simulation 1:1, checkpoints on the select region)
with the same recipe, for ``--minutes`` (default 9) with automatic mixed
precision (the engine's bfloat16 on CUDA) and the largest batch that fits
(:func:`largest_batch`: doubling from 8 until CUDA runs out of memory, then
the last that fitted). It is written to ``DEST/mhtcun-x2.safetensors`` only
if its held-out fit-PSNR beats the lite bundle's on every DL-SIM light level;
either way ``OUT/<job>.report.json`` records both.

On a CPU the same command runs (tests use ``--max-steps 1`` and a tiny
``--config``); nothing here needs a GPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

import train_fluorescence as TF  # noqa: E402  (the fluorescence jobs' data, recipe, metadata)


@dataclass
class GpuJob:
    """One paper-size training: what to build, on what, and what it must beat."""

    arch: str
    scale: int
    recipe: str
    patch: int
    data: Callable  # (data root) -> (train dict, select dict, description)
    rival: str  # bundle name in the pretrained folder it must beat
    heldout: Callable  # (model spec, data root) -> {field: fit metrics}
    config: dict = field(default_factory=dict)
    normalization: dict = field(default_factory=lambda: dict(TF.NORMALIZATION))


def _fluorescence_heldout(spec, root: Path, scale: int) -> dict:
    from napari_resolve.data import fluorescence_pairs as FP

    return {p.name: FP.evaluate_region(spec, p, "heldout") for p in FP.real_pairs(root, scale)}


GPU_JOBS = {
    "mhtcun-x2": GpuJob(
        arch="mhtcun", scale=2, recipe="mhtcun-fluo", patch=64,
        data=lambda root: TF.job_data("mhtcun-lite-x2", root),
        rival="mhtcun-lite-x2",
        heldout=lambda spec, root: _fluorescence_heldout(spec, root, 2),
    ),
}


def largest_batch(arch: str, config: dict, scale: int, patch: int, device: str,
                  start: int = 8, limit: int = 512) -> int:
    """The largest power-of-two batch (from ``start``) whose AMP training step fits on ``device``."""
    import torch

    from napari_resolve import models

    if not str(device).startswith("cuda"):
        return start
    net = models.build(arch, scale=scale, in_channels=1, **config).to(device)
    opt = torch.optim.Adam(net.parameters())
    best, b = start, start
    while b <= limit:
        try:
            x = torch.rand(b, 1, patch // scale, patch // scale, device=device)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                out = net(x)["sr"]
            out.float().mean().backward()
            opt.zero_grad(set_to_none=True)
            best, b = b, b * 2
        except torch.OutOfMemoryError:
            break
        finally:
            torch.cuda.empty_cache()
    return best


def run(name: str, args) -> dict:
    import torch

    from napari_resolve import bundle
    from napari_resolve import train as T

    job = GPU_JOBS[name]
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    config = {**job.config, **(json.loads(args.config) if args.config else {})}
    batch = args.batch or largest_batch(job.arch, config, job.scale, job.patch, device)
    data, select, desc = job.data(args.data)
    out = args.out / f"{name}.safetensors"
    out.unlink(missing_ok=True)
    t0 = time.monotonic()
    res = T.train(job.arch, data, config=config, scale=job.scale, in_channels=1, recipe=job.recipe,
                  minutes=args.minutes, max_steps=args.max_steps, batch_size=batch,
                  patch_size=job.patch, val_data=select, val_patch=None, output=out, device=device,
                  amp=True, seed=0, normalization=job.normalization,
                  meta={"training_data": desc, "recipe_note": f"scripts/train_gpu.py {name}"})
    wall = time.monotonic() - t0
    mine = job.heldout(str(out), args.data)
    rival_path = bundle.pretrained_dir() / f"{job.rival}.safetensors"
    rival = job.heldout(str(rival_path), args.data) if rival_path.is_file() else {}
    wins = bool(rival) and all(mine[k]["psnr"] > rival[k]["psnr"] for k in mine)
    report = {"job": name, "device": device, "batch": batch, "minutes": args.minutes,
              "wall_s": round(wall, 1), "best": res.best, "stopped": res.stopped,
              "heldout": mine, "rival": {job.rival: rival}, "shipped": wins}
    if wins:
        _, meta = bundle.load(out)
        meta = dict(meta)
        meta["heldout"] = {"metric": "fit-PSNR (dB)", "all": mine, "rival": {job.rival: rival}}
        meta["domain"] = {**TF.domain_card(job.rival, desc, meta["heldout"]),
                          "summary": TF.domain_card(job.rival, desc)["summary"] + " (paper-size MHTCUN)"}
        args.dest.mkdir(parents=True, exist_ok=True)
        bundle.save(args.dest / f"{name}.safetensors", bundle.load(out)[0], meta)
    (args.out / f"{name}.report.json").write_text(json.dumps(report, indent=1, default=str),
                                                  encoding="utf-8")
    print(json.dumps({k: report[k] for k in ("job", "device", "batch", "wall_s", "shipped")}), flush=True)
    return report


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="+", metavar="JOB", help=f"of {', '.join(GPU_JOBS)}")
    ap.add_argument("--minutes", type=float, default=9.0)
    ap.add_argument("--max-steps", type=int, default=None)
    ap.add_argument("--batch", type=int, default=None, help="default: the largest that fits (CUDA), 8 (CPU)")
    ap.add_argument("--config", default=None, help="JSON overrides of the architecture config")
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out" / "gpu")
    ap.add_argument("--dest", type=Path, default=TF.OUT)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args(argv)
    unknown = sorted(set(args.names) - set(GPU_JOBS))
    if unknown:
        ap.error(f"unknown job(s) {', '.join(unknown)}; choose from {', '.join(GPU_JOBS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.names:
        run(name, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
