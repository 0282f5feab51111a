"""CPU runtimes side by side (issue 17): backends per bundled model, end to end on a smear.

Run from the repository root (a script, not a test)::

    .venv/bin/python benchmarks/predict_runtimes.py          # full smear, writes docs
    .venv/bin/python benchmarks/predict_runtimes.py --crop 2 --no-write   # a quarter

(``python benchmarks/predict.py --runtimes`` runs the same.) In one process,
with ``uptime`` recorded before and after:

1. **Backends per bundled model**: one forward at the benchmark tile
   (``--tile`` LR px, snapped to the model's size rule) through eager
   (``channels_last``), onnxruntime, OpenVINO (and ``torch.compile`` with
   ``--compile``), *interleaved* (eager, ort, ov, eager, ort, ov...) so that a
   change of load hits all alike; the speed-up is the median of the per-round
   ratios. GFLOP/s = FLOPs of the eager forward (``torch.utils.flop_counter``,
   2 per multiply-add) / time; the machine's limit is ``--peak`` (253 GFLOP/s:
   an FMA loop on the 2-core Zen 3 of issue 17).
2. **End to end** ``predict("gp-x4", smear)`` (``sample_data/bccd``, 640 x 480,
   or 1/``--crop`` of each side): today's engine before issue 17 (eager
   without ``channels_last``, 256-px tiles), the new default (``backend="auto"``,
   tiles from free memory), one forward of the chosen backend over the whole
   image and one eager forward over the whole image; interleaved rounds.
   Targets: new >= 3x the old, engine / single forward <= 1.1.
3. **Threads under load**: one np-x4 forward with 1 thread, 2 threads and the
   thread rule (:mod:`napari_resolve.threads`), interleaved, with the load.

The markdown goes between ``<!-- predict-runtimes:start -->`` and
``<!-- predict-runtimes:end -->`` of ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from napari_resolve import bundle, runtime, threads  # noqa: E402
from napari_resolve.data import samples  # noqa: E402
from napari_resolve.predict import predict, tiling  # noqa: E402
from napari_resolve.runtime import eager as eager_mod  # noqa: E402
from napari_resolve.runtime.onnx import _uses_fft  # noqa: E402

START, END = "<!-- predict-runtimes:start -->", "<!-- predict-runtimes:end -->"


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return f"load average {os.getloadavg()}"


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def flops_of(model, x) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(x)
    return float(counter.get_total_flops())


def timed_run(runner, x) -> float:
    t0 = time.perf_counter()
    runner.run(x, None, False)
    return time.perf_counter() - t0


def bench_backends(names, tile, rounds, n_threads, with_compile, peak) -> list[dict]:
    rows = []
    for name in names:
        model, _ = bundle.load(name)
        m = max(int(model.size_multiple), 1)
        side = max(m, (tile // m) * m)
        x = torch.rand(1, int(model.in_channels), side, side)
        backends = ["eager"]
        if not _uses_fft(model):
            backends += [b for b in ("onnxruntime", "openvino") if runtime.available()[b]]
        if with_compile:
            backends.append("compile")
        runners, setup = {}, {}
        for b in backends:
            t0 = time.perf_counter()
            try:
                runners[b] = runtime.make_runner(model, b, torch.device("cpu"), threads=n_threads)
                runners[b].run(x, None, False)  # warm-up (export / compile / shape)
            except Exception as exc:  # noqa: BLE001 - reported, not fatal
                print(f"{name} {b}: {exc}", flush=True)
                runners.pop(b, None)
            setup[b] = time.perf_counter() - t0
        times = {b: [] for b in runners}
        for _ in range(rounds):
            for b, r in runners.items():
                times[b].append(timed_run(r, x))
        flops = flops_of(model, x)
        row = {"model": name, "side": side, "gflop": flops / 1e9, "backends": {}}
        for b in runners:
            ratios = [e / t for e, t in zip(times["eager"], times[b])]
            med = statistics.median(times[b])
            row["backends"][b] = {
                "median_s": med,
                "speedup": statistics.median(ratios),
                "gflops": flops / med / 1e9,
                "peak_pct": 100 * flops / med / 1e9 / peak,
                "setup_s": setup[b],
            }
        if _uses_fft(model):
            row["note"] = "no ONNX export (torch.fft): eager only"
        rows.append(row)
        print(row, flush=True)
    return rows


def bench_end_to_end(crop, rounds, rounds_old, n_threads) -> dict:
    from napari_resolve.data.color import rgb_to_y

    smear, _ = samples.bccd_smear()
    h, w = smear.shape[:2]
    img = smear[: h // crop, : w // crop]
    model, meta = bundle.load("gp-x4")
    legacy = tiling.legacy_tile(model, "cpu")
    t0 = time.perf_counter()
    calib = runtime.calibrate(model, threads=n_threads)  # once per machine (cached)
    calib_s = time.perf_counter() - t0
    chosen = runtime.select(model, "auto", torch.device("cpu"),
                            sr_px=img.shape[0] * img.shape[1] * 16, threads=n_threads)
    # the single forward reads what the engine feeds the network: the image's own Y
    y = rgb_to_y(img).astype("float32") / 255.0
    x = torch.from_numpy(y.copy())[None, None]
    # the first call of a process builds the runner (loads the cached graph,
    # compiles it for this shape): timed on its own, like the calibration
    t0 = time.perf_counter()
    predict((model, meta), img, device="cpu", threads=n_threads)
    first_call_s = time.perf_counter() - t0
    runner = runtime.make_runner(model, chosen, torch.device("cpu"), threads=n_threads)
    runner.run(x, None, False)  # warm, like the engine's runner after its first call
    eager_runner = runtime.make_runner(model, "eager", torch.device("cpu"))
    runs = {"old": [], "new": [], "single_chosen": [], "single_eager": []}
    info = {"first_call_s": first_call_s}
    for i in range(max(rounds, rounds_old)):
        if i < rounds_old:
            eager_mod.CHANNELS_LAST = False  # today's engine before issue 17
            t0 = time.perf_counter()
            r = predict((model, meta), img, backend="eager", tile=legacy, device="cpu",
                        threads=n_threads)
            runs["old"].append(time.perf_counter() - t0)
            eager_mod.CHANNELS_LAST = True
            info["old_tile"] = r.meta["predict"]["tile"]
            runs["single_eager"].append(timed_run(eager_runner, x))
        if i < rounds:
            # new and its single forward back to back, in alternating order (the
            # overhead is their ratio: a change of load between them would bias it)
            for which in (("new", "single") if i % 2 == 0 else ("single", "new")):
                if which == "new":
                    t0 = time.perf_counter()
                    r = predict((model, meta), img, device="cpu", threads=n_threads)
                    runs["new"].append(time.perf_counter() - t0)
                    info["new_tile"] = r.meta["predict"]["tile"]
                    info["new_backend"] = r.meta["predict"]["backend"]
                else:
                    runs["single_chosen"].append(timed_run(runner, x))
        print({k: v[-1] for k, v in runs.items() if v}, flush=True)
    med = {k: statistics.median(v) for k, v in runs.items()}
    return {
        "shape": img.shape,
        "chosen": chosen,
        "median": med,
        "speedup": med["old"] / med["new"],
        "overhead": statistics.median(
            n / s for n, s in zip(runs["new"], runs["single_chosen"])
        ),
        "overhead_rounds": [round(n / s, 3) for n, s in zip(runs["new"], runs["single_chosen"])],
        "legacy_tile": legacy,
        "calibration": calib,
        "calibration_s": calib_s,
        **info,
    }


def bench_threads(rounds) -> dict:
    model, _ = bundle.load("np-x4")
    x = torch.rand(1, 1, 96, 96)
    rule = threads.choose()
    res = {}
    for _ in range(rounds):
        for label, n in (("1", 1), ("2", 2), (f"rule ({rule})", rule)):
            torch.set_num_threads(n)
            r = runtime.make_runner(model, "eager", torch.device("cpu"))
            r.run(x, None, False)
            res.setdefault(label, []).append(timed_run(r, x))
    return {k: statistics.median(v) for k, v in res.items()}


def markdown(before, after, rows, e2e, thr, args, seconds) -> str:
    command = (" " + " ".join(args.argv)) if args.argv else ""
    vers = [f"torch {torch.__version__}"]
    for mod in ("onnxruntime", "openvino"):
        if runtime.available()[mod]:
            vers.append(f"{mod} {__import__(mod).__version__}")
    lines = [
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {cpu_name()} "
        f"({threads.usable_cores()} usable cores), {', '.join(vers)}, "
        f"{args.threads or 'rule'} threads, in {seconds:.0f} s "
        f"(`python benchmarks/predict_runtimes.py{command}`).",
        "",
        f"- load before: `{before}`",
        f"- load after: `{after}`",
        "",
        f"Backends per bundled model, one forward of a {args.tile}² LR tile (snapped to the "
        f"size rule), {args.rounds} interleaved rounds; speed-up = median of per-round "
        f"eager/backend time ratios; % of the {args.peak:.0f} GFLOP/s limit.",
        "",
        "| model | tile | GFLOP | backend | median s | speed-up vs eager | GFLOP/s | % of limit | "
        "first run (export/compile) s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        for b, v in r["backends"].items():
            lines.append(
                f"| {r['model']} | {r['side']}² | {r['gflop']:.1f} | {b} | {v['median_s']:.2f} | "
                f"{v['speedup']:.2f}× | {v['gflops']:.0f} | {v['peak_pct']:.0f} % | "
                f"{v['setup_s']:.1f} |"
            )
        if r.get("note"):
            lines.append(f"| {r['model']} | | | {r['note']} | | | | | |")
    if e2e:
        m = e2e["median"]
        h, w = e2e["shape"][:2]
        lines += [
            "",
            f"End to end, `predict(\"gp-x4\", smear)` on the BCCD smear ({w}×{h} px RGB, "
            f"median seconds; the engine before issue 17 and the eager forward "
            f"{args.rounds_old} round(s), the default `predict` and the forward of its backend "
            f"on the image's own Y {args.rounds_e2e} paired rounds, back to back in "
            "alternating order):",
            "",
            "| run | seconds |",
            "|---|---|",
            f"| before issue 17: eager, no channels_last, {e2e['legacy_tile']}-px tiles "
            f"(tile used {e2e.get('old_tile')}) | {m['old']:.1f} |",
            f"| now: default (`backend=auto` → {e2e.get('new_backend')}, tile "
            f"{e2e.get('new_tile')}) | {m['new']:.1f} |",
            f"| one {e2e['chosen']} forward over the whole image | {m['single_chosen']:.1f} |",
            f"| one eager forward over the whole image | {m['single_eager']:.1f} |",
            "",
            f"`auto` calibration (once per model, threads and versions; cached): "
            + ", ".join(f"{k} {v:.2f} s" for k, v in e2e["calibration"]["seconds"].items())
            + f" on a {e2e['calibration']['probe']}² probe → {e2e['calibration']['choice']} "
            f"({e2e['calibration_s']:.0f} s including the export). The first `predict` of a "
            f"process then builds the runner for the image's shape: {e2e['first_call_s']:.1f} s "
            "in all (not in the timed rounds, which a napari session or a batch of images repeats).",
            "",
            *_whole_image_rate(rows, e2e, args.peak),
            f"Speed-up now vs before: **{e2e['speedup']:.2f}×** (target ≥ 3×); engine overhead "
            f"(predict / one forward of the same backend, median of the paired rounds "
            f"{e2e['overhead_rounds']}): **{e2e['overhead']:.2f}×** (target ≤ 1.1×).",
        ]
    if thr:
        lines += [
            "",
            "Threads (np-x4, one 96² forward, eager, median of interleaved rounds; "
            f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}): "
            + ", ".join(f"{k} thread(s) {v:.2f} s" for k, v in thr.items())
            + ".",
        ]
    return "\n".join(lines)


def _whole_image_rate(rows, e2e, peak) -> list[str]:
    """GFLOP/s of the whole-image forward (FLOPs per LR px of the gp-x4 tile row: the
    network is convolutional, its count grows with the pixels)."""
    row = next((r for r in rows if r["model"] == "gp-x4"), None)
    if row is None:
        return []
    h, w = e2e["shape"][:2]
    gflop = row["gflop"] / row["side"] ** 2 * h * w
    rate = gflop / e2e["median"]["single_chosen"]
    return [
        f"The whole-image {e2e['chosen']} forward: {gflop:.0f} GFLOP in "
        f"{e2e['median']['single_chosen']:.1f} s = **{rate:.0f} GFLOP/s, {100 * rate / peak:.0f} % "
        f"of the {peak:.0f} GFLOP/s limit** (the small tiles above pay more per pixel).",
        "",
    ]


def write_docs(table: str) -> Path:
    from _docs import write_section  # benchmarks/ is on the path when a script runs

    return write_section(START, END, table, 'CPU runtimes (issue 17)')


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="*", default=None, help="bundled names (default all)")
    parser.add_argument("--tile", type=int, default=128, help="LR side of the backend tile")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rounds-e2e", type=int, default=3,
                        help="paired rounds of predict and its single forward")
    parser.add_argument("--rounds-old", type=int, default=1,
                        help="rounds of the engine before issue 17 (about 95 s each)")
    parser.add_argument("--crop", type=int, default=1, help="1/N of each side of the smear")
    parser.add_argument("--threads", type=int, default=None, help="default: the thread rule")
    parser.add_argument("--peak", type=float, default=253.0, help="machine limit, GFLOP/s")
    parser.add_argument("--compile", action="store_true", help="also torch.compile (slow)")
    parser.add_argument("--no-e2e", action="store_true")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    args.argv = argv
    n = threads.apply(args.threads)
    t0 = time.perf_counter()
    before = uptime()
    print(before, flush=True)
    names = args.models or [p["name"] for p in bundle.pretrained()]
    rows = bench_backends(names, args.tile, args.rounds, n, args.compile, args.peak)
    e2e = None if args.no_e2e else bench_end_to_end(args.crop, args.rounds_e2e, args.rounds_old, n)
    thr = bench_threads(args.rounds)
    after = uptime()
    table = markdown(before, after, rows, e2e, thr, args, time.perf_counter() - t0)
    print(table)
    if not args.no_write:
        print(f"wrote {write_docs(table)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
