"""Cost of the x4 bundles' out-of-focus background-removal stage (issue 13, session 11).

    PYTHONPATH=src .venv/bin/python benchmarks/haze_stage.py [--threads 2] [--write]

Side by side, on one 2560² SR image (the x4 output of a 640² wide field):
the stage's Gaussian as two direct 1-D convolutions (the first version) and
as two 1-D FFT convolutions (``models.blocks.HazeRemoval.background``, since
session 11), for sigma 64 / 128 / 256 HR px, with the largest difference
between them; and the whole ``mhtcun-lite-x4`` forward pass on the 640² LR
image for scale. Best of ``--repeats`` runs, torch threads as given.
``--write`` puts the table between the ``haze-stage`` markers of
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
TAG = "haze-stage"


def direct_background(stage, y: torch.Tensor) -> torch.Tensor:
    """The first version: two grouped 1-D convolutions, replicate border."""
    k = stage.kernel(y.dtype, y.device)
    r, c = (k.numel() - 1) // 2, y.shape[1]
    b = F.conv2d(F.pad(y, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1).expand(c, 1, 1, -1),
                 groups=c)
    return F.conv2d(F.pad(b, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1).expand(c, 1, -1, 1),
                    groups=c)


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def measure(side: int, repeats: int) -> list[dict]:
    from napari_resolve import bundle
    from napari_resolve.models.blocks import HazeRemoval

    y = torch.rand(1, 1, side, side, generator=torch.Generator().manual_seed(0))
    rows = []
    with torch.no_grad():
        for sigma in (64.0, 128.0, 256.0):
            stage = HazeRemoval(sigma, 0.5)
            diff = float((stage.background(y) - direct_background(stage, y)).abs().max())
            rows.append({"what": f"sigma {sigma:g} HR px ({stage.kernel(torch.float32, 'cpu').numel()} taps)",
                         "direct_s": best_of(lambda s=stage: direct_background(s, y), repeats),
                         "fft_s": best_of(lambda s=stage: s.background(y), repeats),
                         "max_diff": diff})
        model, _ = bundle.load("mhtcun-lite-x4")
        model.eval()
        model.haze = None
        x = torch.rand(1, 1, side // 4, side // 4, generator=torch.Generator().manual_seed(1))
        rows.append({"what": f"mhtcun-lite-x4 network, {side // 4}² LR px (for scale)",
                     "forward_s": best_of(lambda: model(x), 1)})
    return rows


def table(rows: list[dict], side: int, threads: int) -> str:
    from _docs import measured_line  # benchmarks/ is on the path when a script runs

    lines = [measured_line(f"PYTHONPATH=src python benchmarks/haze_stage.py --threads {threads} --write"),
             "", f"One {side}² SR image, {threads} torch thread(s), best of the repeats (seconds).", "",
             "| stage Gaussian | direct 1-D convolutions | FFT 1-D convolutions (shipped) | max difference |",
             "|---|---|---|---|"]
    for r in rows:
        if "forward_s" in r:
            lines.append(f"| {r['what']} | forward pass {r['forward_s']:.2f} s | | |")
        else:
            lines.append(f"| {r['what']} | {r['direct_s']:.2f} | {r['fft_s']:.2f} | {r['max_diff']:.1e} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--side", type=int, default=2560, help="SR side in px (default 2560)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    text = table(measure(args.side, args.repeats), args.side, args.threads)
    from _docs import publish  # benchmarks/ is on the path when a script runs

    publish(text, TAG, args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
