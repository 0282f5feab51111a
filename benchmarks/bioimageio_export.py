"""Export every bundled model as a BioImage Model Zoo package and run bioimageio.core's test.

    .venv/bin/python benchmarks/bioimageio_export.py [--out /tmp/bmz] [--weights torchscript onnx]

Prints one row per bundle: weight formats written, each format's bioimageio.core
test status, notes (formats left out and why), package size and time. The suite
tests np-x4 (and pathsrgan-x4, slow); this covers the rest (issue 16).
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("/tmp/napari-resolve-bmz"))
    ap.add_argument("--weights", nargs="*", default=["torchscript", "onnx"])
    args = ap.parse_args()
    from napari_resolve import bundle
    from napari_resolve.interop.bioimageio import export_bioimageio

    print(f"# {platform.node()} {platform.processor()} | {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print("| bundle | weights | bioimageio.core test | notes | size | time |")
    print("|---|---|---|---|---|---|")
    for entry in bundle.pretrained():
        name = entry["name"]
        t = time.perf_counter()
        try:
            res = export_bioimageio(name, args.out / f"{name}.zip", overwrite=True,
                                    weight_formats=("pytorch_state_dict", *args.weights))
        except Exception as exc:  # report and go on with the next bundle
            print(f"| {name} | - | FAILED | {' '.join(str(exc).split())[:200]} | - | "
                  f"{time.perf_counter() - t:.0f} s |", flush=True)
            continue
        size = res.path.stat().st_size / 1e6
        tests = ", ".join(f"{k} {v}" for k, v in res.test.items())
        print(f"| {name} | {', '.join(res.weight_formats)} | {tests} | {'; '.join(res.notes)} | "
              f"{size:.1f} MB | {time.perf_counter() - t:.0f} s |", flush=True)


if __name__ == "__main__":
    main()
