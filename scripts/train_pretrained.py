"""Train the bundled pretrained models (src/napari_resolve/pretrained/).

    .venv/bin/python scripts/train_pretrained.py [NAME ...] [--minutes M] [--data ../shared/data]

Leukocyte models (gp, np at x4 and x8) train on the WBC images of Zheng et al.
2018, both data sets, with the 12 data-set-2 cells of ``sample_data/`` held
out as the validation set (they are what ``make demo`` and the leukocyte
benchmark evaluate on, so no bundled model has seen them). LR = MATLAB bicubic,
Y channel, paper 000's recipe (Adam, batch 8, Charbonnier + parsing CE) with the learning rate doubled to 2e-4 for the short budget.

CPU budget: the paper trains GP for 100 epochs on two GTX 1080 (6 h). Here a
run gets a fixed number of minutes on 2 CPU cores, so the bundled leukocyte
models use a narrower config (``CPU_CONFIG``: 32 feature channels in the SR
branch, prior U-Net with 16 base channels, i.e. a quarter of the paper's
prior width) and 96-px HR patches instead of whole images. Everything else is
the paper's. The bundle records config, recipe, budget and device.

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

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "src" / "napari_resolve" / "pretrained"

CPU_CONFIG = {  # see the module docstring
    "gp": {"features": 32, "prior_base_channels": 16},
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


def run_job(name: str, minutes: float, data_root: Path, device: str) -> dict:
    from napari_resolve import train as T
    from napari_resolve.data import samples

    arch, scale, default_minutes = JOBS[name]
    minutes = minutes or default_minutes
    out = OUT / f"{name}.safetensors"
    if arch in ("gp", "np"):
        data, val = samples.wbc_train_val(root=data_root / "wbc-zheng2018")
        # learning rate 2e-4, twice the paper's: the run gets ~1/100 of its budget
        kwargs = dict(config=CPU_CONFIG[arch], batch_size=8, patch_size=96, val_patch=None,
                      learning_rate=2e-4,
                      meta={"training_data": "WBC (Zheng 2018) data sets 1+2, sample_data cells held out"})
    else:
        from napari_resolve.data.fluorescence import pairs_degradation

        data, val = fluorescence_split()
        # MHTCUN works at the SR size through three U-Nets: ~25 s per batch of
        # 4 x 96-px patches on this CPU, so 64-px patches keep the step rate usable
        kwargs = dict(batch_size=4, patch_size=64, val_patch=None,
                      pixel_size={"value": 0.0626, "unit": "µm"},
                      meta={"training_data": "simulated fluorescence (microtubules, vesicles, ER)",
                            "degradation": pairs_degradation(len(data), scale)})
    t0 = time.monotonic()
    last = [0.0]

    def report(ev):
        now = time.monotonic()
        if ev.val or now - last[0] > 60:
            last[0] = now
            val_txt = f" val {ev.val}" if ev.val else ""
            print(f"[{name}] {now - t0:6.0f}s step {ev.step} epoch {ev.epoch} "
                  f"loss {ev.losses}{val_txt}", flush=True)

    res = T.train(arch, data, scale=scale, val_data=val, minutes=minutes, epochs=10_000,
                  output=out, device=device, seed=0, callback=report, **kwargs)
    print(f"[{name}] done: {res.stopped}, best {res.best}, {out}", flush=True)
    # the resume state (optimizer moments) is not shipped
    Path(str(out).replace(".safetensors", ".state.safetensors")).unlink(missing_ok=True)
    return res.best


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="*", metavar="NAME", help=f"of {', '.join(JOBS)} (default: all)")
    ap.add_argument("--minutes", type=float, default=None, help="budget per model (default: per job)")
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args(argv)
    unknown = sorted(set(args.names) - set(JOBS))
    if unknown:
        ap.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(JOBS)}")
    args.names = args.names or list(JOBS)
    import torch

    torch.set_num_threads(max(1, torch.get_num_threads()))
    np.random.seed(0)
    for name in args.names:
        run_job(name, args.minutes, args.data, args.device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
