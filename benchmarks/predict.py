"""Prediction benchmark: tiling overhead, tiled-vs-untiled difference, zarr memory.

Run from the repository root (a script, not a test)::

    .venv/bin/python benchmarks/predict.py            # writes docs/benchmarks.md
    .venv/bin/python benchmarks/predict.py --budget 60 --no-write

For every registered model (default config, random weights: timing does not
depend on the weights) and every pretrained bundle, on the CPU:

* **Throughput**, output megapixels per second, untiled (``tile=0``) and
  tiled at the default tile / overlap, on an LR crop of the two-photon sample
  (tiled up to 1.5 x the default tile so that tiling really happens). A model
  whose estimated run (from a 64 x 64 probe) exceeds ``--budget`` seconds is
  not run at that size: its ratio is *estimated* from the tile plan (total
  tile area / image area at default settings), marked "est.".
* **Plan ratio**: total tile area / image area for a 1024 x 1024 LR image at
  default settings, the overhead a compute-bound model pays.
* **Difference** max |tiled - untiled| (normalised [0, 1] scale) on a small
  crop with a tile that splits it in 2 x 2: < 1e-4 for local models; for
  models with global operations (FFT attention) it is the price of tiling.
* **Zarr peak RSS**: ``predict_to_zarr`` with MATLAB bicubic x2 on a
  1024 x 1024 and a 4096 x 4096 uint16 zarr (each in a fresh subprocess;
  ``resource.getrusage`` max RSS, which includes the ~0.4 GB of torch).

``python benchmarks/predict.py --runtimes [options]`` runs
``benchmarks/predict_runtimes.py`` instead (CPU backends side by side, end to
end on the BCCD smear, threads under load; issue 17).

The markdown table is printed and written into ``docs/benchmarks.md``
between ``<!-- predict:start -->`` and ``<!-- predict:end -->``.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from napari_resolve import bundle, models  # noqa: E402
from napari_resolve.data import samples  # noqa: E402
from napari_resolve.predict import (  # noqa: E402
    default_overlap,
    default_tile,
    predict,
    tile_plan,
)

START, END = "<!-- predict:start -->", "<!-- predict:end -->"


def lr_image(n: int, channels: int) -> np.ndarray:
    """An n x n LR image from the real two-photon frame (mirrored tiles beyond 256 px)."""
    raw = samples.twophoton("bpae").raw
    reps = math.ceil(n / raw.shape[0])
    big = np.block(
        [[raw if (i + j) % 2 == 0 else raw[::-1, ::-1] for j in range(reps)] for i in range(reps)]
    )[:n, :n]
    img = big.astype(np.float32) / 65535.0
    return np.repeat(img[..., None], 3, axis=-1) if channels == 3 else img


def plan_ratio(model, n: int = 1024, device: str = "cpu") -> float:
    """Total tile area / image area at default settings (``device`` picks the default tile)."""
    tile = default_tile(model, device)
    ov = default_overlap(model)
    mult = max(int(model.size_multiple), 1)
    size, starts = tile_plan(n, tile, ov, mult)
    return (len(starts) * size) ** 2 / n**2


def timed(model, img, repeat_below: float = 5.0, **kw) -> tuple[float, np.ndarray]:
    """Wall time of one predict; best of 3 when a run is short (the machine is shared)."""
    best, out = math.inf, None
    for _ in range(3):
        t0 = time.perf_counter()
        out = predict(model, img, device="cpu", **kw).image
        best = min(best, time.perf_counter() - t0)
        if best > repeat_below:
            break
    return best, out


def bench_model(name: str, model, budget: float, diff_budget: float) -> dict:
    model.eval()
    tile, ov = default_tile(model, "cpu"), default_overlap(model)
    s, c = int(model.scale), int(model.in_channels)
    row = {
        "model": name,
        "scale": s,
        "rf": int(model.receptive_field),
        "global": bool(model.global_ops),
        "tile": tile,
        "overlap": ov,
        "plan": plan_ratio(model),
        "plan_gpu": plan_ratio(model, device="cuda"),
    }
    probe = lr_image(64, c)
    predict(model, probe, device="cpu", tile=0)  # warm-up
    dt, _ = timed(model, probe, repeat_below=0.0, tile=0)
    speed = (64 * s) ** 2 / 1e6 / dt  # output MP/s
    n = int(1.5 * tile)
    est_untiled = (n * s) ** 2 / 1e6 / speed
    size, starts = tile_plan(n, tile, ov, max(int(model.size_multiple), 1))
    area = (len(starts) * size) ** 2 / n**2
    if est_untiled * (1 + area) <= budget:
        img = lr_image(n, c)
        t_whole, whole = timed(model, img, tile=0)
        t_tiled, tiled = timed(model, img)
        mp = (n * s) ** 2 / 1e6
        row.update(
            n=n, untiled=mp / t_whole, tiled=mp / t_tiled, ratio=t_tiled / t_whole, measured=True
        )
    else:
        row.update(n=n, untiled=speed, tiled=speed / area, ratio=area, measured=False)
    # tiled-vs-untiled difference on a small crop split 2 x 2 (tile > 2 * overlap)
    m = max(int(model.size_multiple), 1)
    small_tile = -(-(2 * ov + 16) // m) * m
    small_n = small_tile + 24
    if (small_n * s) ** 2 / 1e6 / speed * 5 <= (diff_budget if model.global_ops else budget):
        img = lr_image(small_n, c)
        whole = predict(model, img, device="cpu", tile=0).image
        tiled = predict(model, img, device="cpu", tile=small_tile).image
        row["diff"] = float(np.abs(tiled - whole).max())
        mse = float(np.mean((tiled - whole) ** 2))
        row["psnr"] = 10 * math.log10(1.0 / mse) if mse > 0 else math.inf
        row["diff_setup"] = f"{small_n}² / tile {small_tile}"
    return row


# VmHWM = peak resident set of this process image; unlike ru_maxrss it is not
# inherited from the (large) parent across fork + exec.
RSS_SCRIPT = r"""
import sys, time
sys.path.insert(0, {src!r})
import torch
torch.set_num_threads(1)
from napari_resolve import models
from napari_resolve.predict import predict_to_zarr

def hwm_kb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])

base = hwm_kb()
t0 = time.perf_counter()
predict_to_zarr({inp!r}, {out!r}, models.build("bicubic", scale=2), device="cpu")
dt = time.perf_counter() - t0
print(hwm_kb(), base, dt)
"""


def bench_zarr_rss(sizes=(1024, 4096)) -> list[dict]:
    import zarr

    rows = []
    with tempfile.TemporaryDirectory(dir=ROOT / "benchmarks") as tmp:
        for n in sizes:
            inp, out = Path(tmp) / f"in{n}.zarr", Path(tmp) / f"out{n}.zarr"
            arr = zarr.open_array(
                str(inp), mode="w", shape=(n, n), chunks=(512, 512), dtype="uint16", zarr_format=2
            )
            for y in range(0, n, 1024):  # write in strips: the parent stays small
                strip = (lr_image(1024, 1) * 65535).astype(np.uint16)
                arr[y : y + 1024, :] = np.tile(strip, (1, n // 1024))[: n - y]
            code = RSS_SCRIPT.format(src=str(ROOT / "src"), inp=str(inp), out=str(out))
            env = {**os.environ, "OMP_NUM_THREADS": "1"}
            res = subprocess.run(
                [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
            )
            kb, base_kb, dt = res.stdout.split()[-3:]
            rows.append(
                {
                    "n": n,
                    "rss_mb": int(kb) / 1024,
                    "base_mb": int(base_kb) / 1024,
                    "seconds": float(dt),
                    "mp_s": (2 * n) ** 2 / 1e6 / float(dt),
                }
            )
    return rows


def _above(z: dict) -> float:
    """Peak RSS above the process's RSS after its imports (MB)."""
    return z["rss_mb"] - z["base_mb"]


def markdown(rows, zrows, seconds) -> str:
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on the CPU (torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {platform.machine()}), random weights, default "
        f"config, in {seconds:.0f} s. MP/s = output megapixels per second (best of 3 for "
        "runs under 5 s). "
        '"est.": too slow to run at 1.5 x the default tile within the time box; the ratio '
        "is the tile plan's area ratio and the tiled MP/s is derived from it.",
        "",
        "| model | scale | receptive field (LR px) | global ops | default tile / overlap | "
        "LR size | untiled MP/s | tiled MP/s | tiled/untiled time | "
        "plan ratio 1024² CPU / GPU tile | "
        "max \\|tiled − untiled\\| (setup) | PSNR tiled vs untiled (dB) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        est = "" if r["measured"] else " est."
        diff = f"{r['diff']:.2e} ({r['diff_setup']})" if "diff" in r else "not run (time box)"
        psnr = "—" if "psnr" not in r else ("∞" if math.isinf(r["psnr"]) else f"{r['psnr']:.1f}")
        lines.append(
            f"| {r['model']} | ×{r['scale']} | {r['rf'] or 'unknown'} | "
            f"{'yes' if r['global'] else 'no'} | {r['tile']} / {r['overlap']} | {r['n']}² | "
            f"{r['untiled']:.3g} | {r['tiled']:.3g}{est} | {r['ratio']:.2f}{est} | "
            f"{r['plan']:.2f} / {r['plan_gpu']:.2f} | {diff} | {psnr} |"
        )
    if zrows:
        lines += [
            "",
            "Zarr path (`predict_to_zarr`, MATLAB bicubic ×2, uint16 input in 512² chunks, "
            "fresh process each, 1 torch thread, threaded dask scheduler):",
            "",
            "| input | peak RSS (MB) | of which after imports (MB) | time (s) | output MP/s |",
            "|---|---|---|---|---|",
        ]
        for z in zrows:
            lines.append(
                f"| {z['n']}² | {z['rss_mb']:.0f} | {z['rss_mb'] - z['base_mb']:.0f} | "
                f"{z['seconds']:.1f} | {z['mp_s']:.1f} |"
            )
        if len(zrows) >= 2:
            lines += [
                "",
                f"Peak RSS growth {zrows[-1]['n']}² vs {zrows[0]['n']}²: "
                f"{zrows[-1]['rss_mb'] / zrows[0]['rss_mb']:.2f}× (target < 1.5×) for "
                f"{(zrows[-1]['n'] / zrows[0]['n']) ** 2:.0f}× the pixels; the part above "
                "the imports (torch, dask, zarr) grows "
                f"{_above(zrows[-1]) / max(_above(zrows[0]), 1.0):.2f}×.",
            ]
    return "\n".join(lines)


def write_docs(table: str) -> Path:
    from _docs import write_section  # benchmarks/ is on the path when a script runs

    return write_section(START, END, table, '')


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--runtimes"]:  # CPU runtimes side by side (issue 17)
        sys.path.insert(0, str(ROOT / "benchmarks"))
        import predict_runtimes

        return predict_runtimes.main(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--budget",
        type=float,
        default=40.0,
        help="seconds a model may take for the throughput runs (default 40)",
    )
    parser.add_argument(
        "--diff-budget",
        type=float,
        default=150.0,
        help="seconds for the tiled-vs-untiled difference of global-op models",
    )
    parser.add_argument("--models", nargs="*", default=None, help="only these registry names")
    parser.add_argument("--no-zarr", action="store_true", help="skip the zarr memory runs")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    rows = []
    names = args.models or [m.name for m in models.available()]
    for name in names:
        torch.manual_seed(0)
        rows.append(bench_model(name, models.build(name), args.budget, args.diff_budget))
        print(rows[-1], flush=True)
    if args.models is None:
        for pre in bundle.pretrained():
            try:
                model, _ = bundle.load(pre["path"])
            except Exception as exc:  # a broken bundle should not stop the benchmark
                print(f"skipping {pre['name']}: {exc}", flush=True)
                continue
            rows.append(
                bench_model(f"{pre['name']} (pretrained)", model, args.budget, args.diff_budget)
            )
            print(rows[-1], flush=True)
    zrows = [] if args.no_zarr else bench_zarr_rss()
    for z in zrows:
        print(z, flush=True)
    table = markdown(rows, zrows, time.perf_counter() - t0)
    print(table)
    if not args.no_write:
        print(f"wrote {write_docs(table)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
