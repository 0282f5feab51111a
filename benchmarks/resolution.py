"""Decorrelation analysis: speed, and a cross-check against NanoPyx.

1. Timing of :func:`napari_resolve.metrics.resolution.decorrelation` on
   512² and 2048² images (first call, which sorts the Fourier grid of that
   shape, and repeated calls, which reuse it). The target is < 2 s for 2048²
   on the CPU (default variant); the ImageJ-plugin variant is timed too.
2. The same images measured by NanoPyx's ``DecorrAnalysis`` (the Python port
   of the ImageJ plugin by the Henriques lab, CC-BY 4.0), run by *another*
   Python interpreter so that NanoPyx and its pins never enter this project's
   environment. Images: the real data in ``../shared/data`` (MT wide-field
   mean and single SIM frames, the two-photon raw / average / max / SRRF
   images, IHC luminance) and synthetic images with a known cut-off.

NanoPyx is found through ``--nanopyx-python`` or the environment variable
``NAPARI_RESOLVE_NANOPYX_PYTHON`` (a Python that can ``import nanopyx``), e.g.::

    python3 -m venv /tmp/nanopyx-venv && /tmp/nanopyx-venv/bin/pip install nanopyx
    python benchmarks/resolution.py --nanopyx-python /tmp/nanopyx-venv/bin/python

Without it the script says so and reports our numbers only.
``--json FILE`` writes everything measured.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from napari_resolve.metrics.resolution import decorrelation  # noqa: E402

ENV_VAR = "NAPARI_RESOLVE_NANOPYX_PYTHON"
AGREEMENT = 0.05  # the target: |ours / NanoPyx - 1| <= 5 %

# Run inside the NanoPyx interpreter: read .npy files, print {name: resolution in px}.
NANOPYX_SCRIPT = r"""
import json, sys, warnings, glob, os, contextlib, io
warnings.simplefilter("ignore")
import numpy as np
with contextlib.redirect_stdout(io.StringIO()):
    from nanopyx.core.analysis.decorr import DecorrAnalysis
    import nanopyx
out = {"version": getattr(nanopyx, "__version__", "?"), "results": {}}
for path in sorted(glob.glob(os.path.join(sys.argv[1], "*.npy"))):
    image = np.load(path).astype(np.float32)
    analysis = DecorrAnalysis(pixel_size=1.0, units="px")
    with contextlib.redirect_stdout(io.StringIO()):
        analysis.run_analysis(image)
    out["results"][os.path.basename(path)[:-4]] = float(analysis.resolution)
print("NANOPYX_JSON" + json.dumps(out))
"""


def default_data_dir() -> Path:
    env = os.environ.get("NAPARI_RESOLVE_DATA")
    return Path(env) if env else ROOT.parent / "shared" / "data"


# --------------------------------------------------------------------------- images


def band_limited_noise(rng, n: int, cutoff: float, noise: float = 0.2) -> np.ndarray:
    """White noise through an ideal circular low-pass (1 = Nyquist), std 1, plus white noise."""
    spectrum = np.fft.fft2(rng.standard_normal((n, n)))
    ky = 2.0 * np.fft.fftfreq(n)[:, None]
    kx = 2.0 * np.fft.fftfreq(n)[None, :]
    spectrum[np.hypot(ky, kx) >= cutoff] = 0
    obj = np.fft.ifft2(spectrum).real
    return obj / obj.std() + noise * rng.standard_normal((n, n))


def beads(rng, n: int, sigma: float, count: int) -> np.ndarray:
    """Point emitters blurred by a Gaussian PSF of ``sigma`` px, plus white noise."""
    from scipy.ndimage import gaussian_filter

    image = np.zeros((n, n))
    idx = rng.integers(0, n, (count, 2))
    np.add.at(image, (idx[:, 0], idx[:, 1]), 1.0)
    image = gaussian_filter(image, sigma) * 100
    return image + 0.05 * rng.standard_normal((n, n))


def real_images(data_dir: Path) -> dict[str, np.ndarray]:
    from napari_resolve.data import samples
    from napari_resolve.data.color import rgb_to_y
    from napari_resolve.io import read_image

    images = {}
    mt_dir = data_dir / "rdl-sim-microtubules-raw"
    if mt_dir.is_dir():
        frames, _ = read_image(mt_dir / "MT.mrc")
        images["MT wide-field (mean of 9)"] = frames.astype(np.float64).mean(axis=0)
        for i in (0, 4):
            images[f"MT SIM raw frame {i}"] = frames[i].astype(np.float64)
    tp_dir = data_dir / "nd-twophoton-srrf"
    for name in ("bpae", "mouse_kidney"):
        if tp_dir.is_dir():
            pair = samples.twophoton(name, root=tp_dir)
            for kind in ("raw", "avg", "srrf"):
                images[f"two-photon {name} {kind}"] = getattr(pair, kind).astype(np.float64)
    ihc_dir = data_dir / "skimage-ihc"
    if ihc_dir.is_dir():
        rgb, _ = samples.ihc(root=ihc_dir)
        images["IHC luminance"] = rgb_to_y(rgb).astype(np.float64)
    return images


def synthetic_images(rng) -> dict[str, tuple[np.ndarray, float]]:
    out = {}
    for k in (0.3, 0.5, 0.7):
        out[f"band-limited noise, kc {k}"] = (band_limited_noise(rng, 256, k), k)
    for sigma in (1.0, 2.0):
        out[f"beads, PSF sigma {sigma} px"] = (beads(rng, 256, sigma, 400), float("nan"))
    return out


# --------------------------------------------------------------------------- timing


def time_it(image: np.ndarray, repeat: int, variant: str = "reference") -> dict:
    from napari_resolve.metrics._decorrelation_imagej import _geometry
    from napari_resolve.metrics.resolution import _disk_geometry

    _disk_geometry.cache_clear()
    _geometry.cache_clear()
    t0 = time.perf_counter()
    decorrelation(image, variant=variant)
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        decorrelation(image, variant=variant)
        times.append(time.perf_counter() - t0)
    return {"first_s": first, "best_s": min(times), "median_s": float(np.median(times))}


# --------------------------------------------------------------------------- NanoPyx


def run_nanopyx(python: str, images: dict[str, np.ndarray]) -> dict | None:
    keys = {f"img{i:02d}": name for i, name in enumerate(images)}
    with tempfile.TemporaryDirectory() as tmp:
        for key, name in keys.items():
            np.save(Path(tmp) / f"{key}.npy", images[name].astype(np.float32))
        proc = subprocess.run([python, "-c", NANOPYX_SCRIPT, tmp], capture_output=True, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("NANOPYX_JSON")), None)
    if proc.returncode != 0 or line is None:
        print(f"NanoPyx run failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
        return None
    out = json.loads(line[len("NANOPYX_JSON"):])
    return {"version": out["version"], "results": {keys[k]: v for k, v in out["results"].items()}}


def find_nanopyx(arg: str | None) -> str | None:
    python = arg or os.environ.get(ENV_VAR)
    if not python:
        return None
    probe = subprocess.run([python, "-c", "import nanopyx"], capture_output=True, text=True)
    if probe.returncode != 0:
        print(f"{python} cannot import nanopyx: {probe.stderr.strip().splitlines()[-1:]}")
        return None
    return python


# --------------------------------------------------------------------------- main


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=default_data_dir(),
                        help="the shared data folder (default: ../shared/data or $NAPARI_RESOLVE_DATA)")
    parser.add_argument("--nanopyx-python", default=None,
                        help=f"a Python interpreter with nanopyx installed (or ${ENV_VAR})")
    parser.add_argument("--repeat", type=int, default=3, help="timed repeats per size (default 3)")
    parser.add_argument("--json", type=Path, default=None, help="write all numbers to this file")
    args = parser.parse_args(argv)

    report: dict = {"machine": f"{platform.machine()}, {os.cpu_count()} CPU, "
                               f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}",
                    "timing": {}, "comparison": []}
    rng = np.random.default_rng(2019)

    print("== timing (decorrelation, n_r = 50, n_g = 10) ==")
    for n in (512, 2048):
        image = beads(rng, n, 1.5, n * n // 200)
        for variant in ("reference", "imagej"):
            t = time_it(image, args.repeat, variant)
            report["timing"][f"{n}x{n} {variant}"] = t
            flag = "" if n < 2048 or t["first_s"] < 2.0 else "   ** slower than the 2 s target **"
            print(f"{n:>5}² {variant:9s}: first call {t['first_s']:.3f} s, repeated best "
                  f"{t['best_s']:.3f} s, median {t['median_s']:.3f} s{flag}")

    images = real_images(args.data)
    if not images:
        print(f"no real images under {args.data} (pass --data)")
    synthetic = synthetic_images(rng)
    all_images = {**images, **{k: v[0] for k, v in synthetic.items()}}
    truth = {k: v[1] for k, v in synthetic.items()}

    python = find_nanopyx(args.nanopyx_python)
    nanopyx = None
    if python is None:
        print(f"\nNanoPyx NOT available: pass --nanopyx-python or set {ENV_VAR} to a Python with "
              "nanopyx installed. Showing our estimates only.")
    else:
        t0 = time.perf_counter()
        nanopyx = run_nanopyx(python, all_images)
        if nanopyx is not None:
            print(f"\nNanoPyx {nanopyx['version']} ({python}) ran in {time.perf_counter() - t0:.1f} s")
            report["nanopyx_version"] = nanopyx["version"]

    print("\n== resolution in pixels (kc: 1 = Nyquist) ==")
    print("   reference = our default (MATLAB reference algorithm); imagej = our ImageJ-plugin variant")
    header = f"{'image':34s} {'ref px':>7s} {'kc':>6s} {'A0':>5s} {'imagej px':>9s} {'kc':>6s}"
    if nanopyx:
        header += f" {'NanoPyx px':>10s} {'kc':>6s} {'ref/NP-1':>8s} {'ij/NP-1':>8s}"
    print(header + f" {'true kc':>7s}")
    within = {"reference": 0, "imagej": 0}
    total = 0
    for name, image in all_images.items():
        ours = decorrelation(image)
        ij = decorrelation(image, variant="imagej")
        row = {"image": name, "ours_px": ours.resolution, "ours_kc": ours.kc, "A0": ours.amplitude0,
               "imagej_px": ij.resolution, "imagej_kc": ij.kc, "true_kc": truth.get(name)}
        line = (f"{name:34s} {ours.resolution:7.3f} {ours.kc:6.3f} {ours.amplitude0:5.2f} "
                f"{ij.resolution:9.3f} {ij.kc:6.3f}")
        if nanopyx:
            theirs = nanopyx["results"][name]
            diff = ours.resolution / theirs - 1
            diff_ij = ij.resolution / theirs - 1
            row.update(nanopyx_px=theirs, nanopyx_kc=2 / theirs, relative_difference=diff,
                       relative_difference_imagej=diff_ij)
            total += 1
            within["reference"] += abs(diff) <= AGREEMENT
            within["imagej"] += abs(diff_ij) <= AGREEMENT
            line += f" {theirs:10.3f} {2 / theirs:6.3f} {100 * diff:7.1f}% {100 * diff_ij:7.1f}%"
        k = truth.get(name)
        line += f" {k:7.3f}" if k is not None and np.isfinite(k) else f" {'':7s}"
        print(line)
        report["comparison"].append(row)
    if nanopyx:
        print(f"\nwithin {AGREEMENT:.0%} of NanoPyx: imagej variant {within['imagej']} of {total}, "
              f"reference variant {within['reference']} of {total} "
              "(see docs/resolution.md for why the reference variant differs)")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=float))
        print(f"numbers written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
