"""Benchmark every registered model: parameters, receptive field, CPU time for one LR input.

    python benchmarks/models.py                       # table on stdout
    python benchmarks/models.py --write docs/models.md  # also refresh the table there
    python benchmarks/models.py --models mhtcun dfcan --size 128 --threads 2

Each model runs in its own subprocess (a fresh interpreter, so one model's
allocations and thread pools do not slow the next) under a time limit: a model
slower than ``--timeout`` seconds is reported as ``> timeout``. One warm-up
forward on a 32×32 input, then ``--repeat`` timed forwards of a
``size``×``size`` LR image (median), default config, ``eval()``,
``torch.no_grad()``, float32, ``--threads`` intra-op threads. The number is
wall time, so on a shared machine it is an upper bound.

``--write FILE`` replaces the lines between ``<!-- benchmark:start -->`` and
``<!-- benchmark:end -->`` in FILE (written atomically).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

START, END = "<!-- benchmark:start -->", "<!-- benchmark:end -->"


def measure_one(name: str, size: int, threads: int, repeat: int) -> dict:
    import torch

    from napari_resolve import models

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    net = models.build(name).eval()
    c = net.in_channels
    with torch.no_grad():
        net(torch.rand(1, c, 32, 32))
        x = torch.rand(1, c, size, size)
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            out = net(x)
            times.append(time.perf_counter() - t0)
    times.sort()
    return {
        "name": name,
        "seconds": times[len(times) // 2],
        "output": list(out["sr"].shape),
    }


def describe(name: str) -> dict:
    from napari_resolve import models

    info = models.info(name)
    net = models.build(name)
    return {
        "name": name,
        "paper": info.paper,
        "parameters": info.parameters,
        "receptive_field": int(net.receptive_field),
        "global_ops": bool(net.global_ops),
        "scale": net.scale,
        "in_channels": net.in_channels,
    }


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def fmt_params(n: int) -> str:
    return "0" if n == 0 else f"{n / 1e6:.2f} M" if n >= 1e5 else f"{n / 1e3:.1f} k"


def fmt_rf(row: dict) -> str:
    if row["global_ops"] or row["receptive_field"] == 0:
        return "global"
    return f"{row['receptive_field']} px"


def _torch_version() -> str:
    import torch

    return torch.__version__


def table(rows: list[dict], size: int, threads: int) -> str:
    lines = [
        f"| name | paper | parameters | receptive field (LR px) | scale, channels "
        f"| CPU time, one {size}×{size} LR input ({threads} threads) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        t = r.get("seconds")
        time_s = f"{t:.2f} s" if isinstance(t, float) else str(t)
        lines.append(
            f"| `{r['name']}` | {r['paper']} | {fmt_params(r['parameters'])} | {fmt_rf(r)} "
            f"| ×{r['scale']}, {r['in_channels']} | {time_s} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="*", help="registry names (default: all)")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per model")
    p.add_argument("--write", help="markdown file whose benchmark block to replace")
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one model, print JSON
    args = p.parse_args(argv)

    if args.one:
        print(json.dumps(measure_one(args.one, args.size, args.threads, args.repeat)))
        return 0

    from napari_resolve import models

    names = args.models or [m.name for m in models.available()]
    rows = []
    for name in names:
        row = describe(name)
        cmd = [sys.executable, __file__, "--one", name, "--size", str(args.size),
               "--threads", str(args.threads), "--repeat", str(args.repeat)]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout,
                                  check=True)
            row.update(json.loads(done.stdout.strip().splitlines()[-1]))
        except subprocess.TimeoutExpired:
            row["seconds"] = f"> {args.timeout:.0f} s"
        except subprocess.CalledProcessError as exc:
            row["seconds"] = "failed"
            print(f"{name}: {exc.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        rows.append(row)
        print(f"{name}: {row['seconds']}", file=sys.stderr, flush=True)

    text = table(rows, args.size, args.threads)
    machine = f"{cpu_name()}, {os.cpu_count()} logical CPUs, Python {platform.python_version()}"
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    text += (f"\n\nMeasured on: {machine}; torch {_torch_version()}; "
             f"load average (1, 5, 15 min) at the end: {load}.")
    print(text)
    if args.write:
        from pathlib import Path

        from napari_resolve._atomic import atomic_path

        path = Path(args.write)
        doc = path.read_text(encoding="utf-8")
        if START not in doc or END not in doc:
            print(f"{path} has no {START} ... {END} block", file=sys.stderr)
            return 2
        head, rest = doc.split(START, 1)
        _, tail = rest.split(END, 1)
        with atomic_path(path) as tmp:
            tmp.write_text(f"{head}{START}\n{text}\n{END}{tail}", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
