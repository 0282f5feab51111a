"""Fine-tuning benchmark: the bundled MHTCUN-lite on a real structure it never saw, for a CPU budget.

    .venv/bin/python benchmarks/finetune.py [--minutes 5] [--structure bpae] [--no-write]

The bundled ``mhtcun-lite-x2`` was trained on *simulated* fluorescence only
(microtubules, vesicles, ER; scripts/train_pretrained.py). Here it is
fine-tuned, through the same code path as the napari widget and the CLI
(:func:`napari_resolve.train.finetuning.finetune_measured`), on a real
two-photon image of BPAE cells (Mannam 2021, ``../shared/data/nd-twophoton-srrf``,
the frame average of FOV 8, 256² uint16; GPL-3.0, see its SOURCE.md):

* the field is cut into a 4 × 4 grid of 64-px tiles; 4 tiles, one per row
  and column, are held back for validation, the 12 others train (no overlap);
* HR-only, self-supervised pairs: each HR tile is degraded on the fly with
  the bundle's degradation (the bundle was trained on pairs, so the
  wide-field camera model of its simulator at its 31.3 nm HR pixel:
  :func:`~napari_resolve.train.finetuning.self_supervised_degradation`);
  the validation LR inputs are fixed (one noise draw, seed 0);
* the fine-tuning recipe of paper 003 (MSE + 0.1·(1−SSIM) staged loss, Adam
  1e-4 constant), batch 8 (the recipe's), 64-px patches (the tiles; the
  recipe's 128 does not fit), ``--minutes`` of training on the CPU with
  ``--threads`` threads.

Reported for the validation tiles: PSNR / SSIM (Y, ``scale`` px border
cropped, as the engine validates), per tile and mean, and the decorrelation
resolution (Descloux 2019, paper 003 §4.4) of every super-resolved tile, in HR
pixels (the data carry no pixel size); with the MATLAB-bicubic upsampling of
the same LR inputs, the LR inputs and the HR targets for reference. The
markdown goes into ``docs/benchmarks.md`` between ``<!-- finetune:start -->``
and ``<!-- finetune:end -->``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
START, END = "<!-- finetune:start -->", "<!-- finetune:end -->"
TILE = 64


def tiles(image: np.ndarray, tile: int, name: str):
    """(train, validation) TrainingImages: a grid of tiles, one per row and column held back."""
    from napari_resolve.train.finetuning import TrainingImage

    n = min(image.shape) // tile
    held = {(r, (3 * r + 1) % n) for r in range(n)}  # a Latin-square pattern for n = 4
    train, val = [], []
    for r in range(n):
        for c in range(n):
            part = image[r * tile:(r + 1) * tile, c * tile:(c + 1) * tile]
            im = TrainingImage(f"{name} tile ({r},{c})", part, source=name,
                               origin=(r * tile, c * tile))
            (val if (r, c) in held else train).append(im)
    return train, val


def bicubic_measurement(val_images, meta, degradation):
    from napari_resolve import models
    from napari_resolve.train.finetuning import measure, validation_dataset

    ds = validation_dataset(val_images, meta, degradation, seed=0)
    model = models.build("bicubic", scale=int(meta["scale"]), in_channels=1)
    return measure(model, ds)


def run(minutes: float, structure: str, threads: int, batch_size: int,
        base: str = "mhtcun-lite") -> dict:
    import torch

    from napari_resolve import bundle
    from napari_resolve.data.samples import twophoton
    from napari_resolve.train.finetuning import finetune_measured

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    sample = twophoton(structure, root=DATA / "nd-twophoton-srrf")
    train, val = tiles(sample.avg, TILE, sample.meta.name)
    source = bundle.resolve(base)
    meta = bundle.read_meta(source)
    out = Path(tempfile.mkdtemp()) / "mhtcun-lite-x2-bpae.safetensors"
    load = [os.getloadavg()[0]]
    log = []
    t0 = time.monotonic()

    def progress(ev):
        if ev.kind == "epoch" and ev.val:
            log.append({"step": ev.step, "t": round(time.monotonic() - t0, 1),
                        "val_psnr": round(ev.val["psnr"], 3)})
            load.append(os.getloadavg()[0])
            print(f"{time.monotonic() - t0:6.0f}s step {ev.step:4d} val PSNR "
                  f"{ev.val['psnr']:.3f} dB {ev.message}", flush=True)

    report = finetune_measured(
        source, train, val_images=val, minutes=minutes, patch_size=TILE,
        batch_size=batch_size, output=out, device="cpu", seed=0, callback=progress,
        note=f"benchmarks/finetune.py: {sample.meta.name} frame average, 64-px tiles",
    )
    wall = time.monotonic() - t0
    if report.error:
        raise SystemExit(f"fine-tuning failed: {report.error}\n{report.traceback}")
    bicubic = bicubic_measurement(val, meta, report.degradation)
    res = report.result
    return {
        "date": _dt.date.today().isoformat(),
        "structure": sample.meta.name, "source": sample.meta.source,
        "base": source.stem, "minutes": minutes, "threads": threads,
        "batch_size": batch_size, "patch": TILE,
        "train_tiles": [t.name for t in train], "val_tiles": [v.name for v in val],
        "degradation": report.degradation,
        "steps": res.history[-1]["step"] if res.history else 0,
        "epochs": max((h.get("epoch", 0) for h in res.history), default=0),
        "best": res.best, "stopped": res.stopped, "wall_s": round(wall, 1),
        "load_1min": [round(v, 2) for v in load],
        "cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
        "bicubic": bicubic.to_dict(), "before": report.before.to_dict(),
        "after": report.after.to_dict(), "references": report.references,
        "psnr_gain_db": report.psnr_gain, "curve": log,
    }


def _fmt(v, digits=2):
    return "—" if v is None else f"{v:.{digits}f}"


def markdown(r: dict) -> str:
    unit = "HR px"
    refs = r["references"]

    def mean(values):
        found = [v for v in values if v is not None]
        return float(np.mean(found)) if found else None

    rows = [
        ("MATLAB bicubic ×2 (no learning)", r["bicubic"]),
        (f"{r['base']} (bundled, simulated data only)", r["before"]),
        (f"fine-tuned {r['minutes']:g} min on the 12 training tiles", r["after"]),
    ]
    held = ", ".join(t.split(" tile ")[1] for t in r["val_tiles"])
    intro = (
        f"Measured {r['date']} with `benchmarks/finetune.py`: base `{r['base']}`, real "
        f"two-photon **{r['structure']}** (BPAE cells, frame average, 256² px; "
        "[Mannam 2021](https://curate.nd.edu/show/5h73pv66g4s), GPL-3.0), a structure the base "
        "never saw (it was trained on simulated microtubules, vesicles and ER only). "
        f"{r['patch']}-px tiles: {len(r['train_tiles'])} train, {len(r['val_tiles'])} held back "
        f"({held}; one per row and column, never trained on). Self-supervised pairs: HR tiles "
        f"degraded with `{json.dumps(r['degradation'])}` (the bundle's simulator physics). "
        "Fine-tuning recipe of paper 003 (staged MSE + 0.1·(1−SSIM), Adam 1e-4), "
        f"batch {r['batch_size']}, {r['patch']}-px patches, **{r['minutes']:g} min** of "
        f"training on the CPU ({r['threads']} torch thread(s), {r['cpu']}, torch {r['torch']}): "
        f"{r['steps']} steps, {r['epochs']} epochs, best at step {r['best'].get('step')}, "
        f"wall {r['wall_s']:.0f} s with the before/after measurements. The machine was shared: "
        f"1-min load average {min(r['load_1min']):.1f}–{max(r['load_1min']):.1f} on 2 cores "
        "during the run, so the step count is what a loaded machine gives."
    )
    lines = [
        intro,
        "",
        (f"| held-back tiles (mean of {len(r['val_tiles'])}) | val PSNR (dB) | "
         f"PSNR after intensity fit (dB) | val SSIM | decorrelation resolution ({unit}) |"),
        "|---|---|---|---|---|",
    ]
    for label, m in rows:
        lines.append(f"| {label} | {_fmt(m['val_psnr'])} | "
                     f"{_fmt(m.get('val_psnr_intensity_fit'))} | {_fmt(m['val_ssim'], 3)} | "
                     f"{_fmt(m['resolution'])} |")
    lines.append(f"| LR input (reference) | | | | {_fmt(mean(refs['lr']))} |")
    lines.append(f"| HR target (reference) | | | | {_fmt(mean(refs['hr']))} |")
    lines += [
        "",
        ("| tile | base PSNR (dB) | fine-tuned PSNR (dB) | gain (dB) | base resolution | "
         f"fine-tuned resolution ({unit}) |"),
        "|---|---|---|---|---|---|",
    ]
    b, a = r["before"], r["after"]
    for i, name in enumerate(r["val_tiles"]):
        pb, pa = b["val_psnrs"][i], a["val_psnrs"][i]
        lines.append(
            f"| {name.split(' tile ')[1]} | {_fmt(pb)} | {_fmt(pa)} | {_fmt(pa - pb)} | "
            f"{_fmt(b['resolutions'][i])} | {_fmt(a['resolutions'][i])} |"
        )
    gains = [pa - pb for pa, pb in zip(a["val_psnrs"], b["val_psnrs"])]
    last = r["curve"][-1] if r.get("curve") else None
    if last is not None:
        lines += ["", (
            f"The weights kept are the best of the {len(r['curve']) - 1} validations on these "
            f"same tiles; the last weights (step {last['step']}) score {last['val_psnr']:.2f} dB, "
            f"so choosing on them adds {a['val_psnr'] - last['val_psnr']:.2f} dB to the figure "
            "above."
        )]
    lines += ["", (
        f"PSNR gain of the fine-tuned model: **{r['psnr_gain_db']:+.2f} dB** on average; it beats "
        f"the base model on {sum(g > 0 for g in gains)} of {len(gains)} held-back tiles. "
        "*After intensity fit*: PSNR of the least-squares `a·SR + b` (as CARE compares "
        "fluorescence images): LR and HR are percentile-normalised separately, so the "
        "intensity mapping between them depends on the image, and part of any PSNR change is "
        "that mapping rather than detail. "
        + _fit_sentence(r) +
        "Decorrelation resolution is in HR pixels (the data carry no pixel size); smaller is "
        "finer. It measures the highest frequency with signal, not fidelity: a model that "
        "invents fine detail scores finer than one that reproduces the target, so read it with "
        "the PSNR and against the HR target's own value."
    )]
    return "\n".join(lines)


def _fit_sentence(r: dict) -> str:
    fit = {k: r[k].get("val_psnr_intensity_fit") for k in ("bicubic", "before", "after")}
    if any(v is None for v in fit.values()):
        return ""
    return (
        f"After the fit the fine-tuned model gains {fit['after'] - fit['before']:+.2f} dB over "
        f"the base and is {fit['after'] - fit['bicubic']:+.2f} dB from bicubic: most of the raw "
        "gain is the intensity mapping of this structure; in detail the 5-minute run brings the "
        "model from below bicubic to bicubic's level, not beyond. "
        if abs(fit["after"] - fit["bicubic"]) < 0.1 else
        f"After the fit the fine-tuned model gains {fit['after'] - fit['before']:+.2f} dB over "
        f"the base and is {fit['after'] - fit['bicubic']:+.2f} dB from bicubic. "
    )


def write_docs(table: str) -> Path:
    from _docs import write_section  # benchmarks/ is on the path when a script runs

    return write_section(START, END, table, 'Fine-tuning')


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=5.0, help="training budget (default 5)")
    parser.add_argument("--structure", default="bpae", help="two-photon field: bpae or mouse_kidney")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: see docs/benchmarks.md)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--base", default="mhtcun-lite", help="bundle to fine-tune (name or file)")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--render", type=Path, default=None, metavar="JSON",
                        help="write the table of a finished run (the JSON line this script "
                        "prints on stderr) instead of running")
    args = parser.parse_args(argv)
    if args.render is not None:
        result = json.loads(args.render.read_text(encoding="utf-8").strip().splitlines()[-1])
    else:
        result = run(args.minutes, args.structure, args.threads, args.batch_size, args.base)
    table = markdown(result)
    print(table)
    if args.render is None:
        print(json.dumps(result, default=str), file=sys.stderr)
    if not args.no_write:
        print(f"wrote {write_docs(table)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
