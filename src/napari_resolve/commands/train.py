"""``napari-resolve train --arch NAME --data HR... --scale N -o model.safetensors``.

Trains a registry architecture with its paper's recipe
(:mod:`napari_resolve.train.recipes`) on

* ``--data DIR`` holding ``HR/`` and ``LR/`` (and ``labels/``) sub-folders
  (pairs matched by file name), or
* ``--data`` HR images (folder, glob or files) whose LR input is made with
  ``--degradation`` (MATLAB bicubic by default), optionally with ``--lr``
  images and ``--labels`` (0/1/2 or 0/128/255 masks, matched by name).

A progress bar (stderr) shows the phase, losses and the estimated time left;
at the end a table of the epochs (losses, validation PSNR/SSIM) is printed.
The best model is written (atomically) to ``-o`` after every validation that
improves it; ``OUT.state.safetensors`` beside it lets ``--resume`` continue.
Ctrl-C stops cleanly: the best model so far stays, the state is saved.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from napari_resolve.errors import InputError

NAME = "train"
HELP = "train a model with its paper's recipe (progress bar, best checkpoint, resume)"


def add_data_arguments(parser, *, required: bool) -> None:
    """Data and run options shared with ``finetune``."""
    g = parser.add_argument_group("data")
    g.add_argument(
        "--data",
        "--hr",
        dest="data",
        nargs="+",
        required=required,
        metavar="PATH",
        help="HR images (folder, glob, files) or a folder with HR/ and LR/ sub-folders",
    )
    g.add_argument(
        "--lr",
        dest="lr_images",
        nargs="+",
        default=None,
        metavar="PATH",
        help="LR images paired with --data by file name (real pairs)",
    )
    g.add_argument(
        "--labels",
        nargs="+",
        default=None,
        metavar="PATH",
        help="label images (0/1/2 or 0/128/255) matched by name, for parsing/segmentation",
    )
    g.add_argument(
        "--val",
        nargs="+",
        default=None,
        metavar="PATH",
        help="validation images (default: --val-fraction of the training images)",
    )
    g.add_argument("--val-fraction", type=float, default=0.1, metavar="F")
    g.add_argument(
        "--degradation",
        default=None,
        metavar="KIND|JSON",
        help="LR made from HR-only data: 'matlab-bicubic' (default), 'widefield', or a JSON dict",
    )
    g.add_argument(
        "--normalization",
        default=None,
        choices=("dtype", "percentile"),
        help="intensity normalisation stored in the model (default: dtype)",
    )
    r = parser.add_argument_group("schedule")
    r.add_argument(
        "--recipe", default=None, help="training recipe (default: the architecture's paper)"
    )
    r.add_argument(
        "--epochs",
        default=None,
        metavar="N|N,N,..",
        help="total epochs (shared among phases) or one per phase",
    )
    r.add_argument("--minutes", type=float, default=None, help="time budget")
    r.add_argument("--max-steps", type=int, default=None, help="stop after this many steps")
    r.add_argument("--batch-size", type=int, default=None)
    r.add_argument(
        "--patch-size",
        default="recipe",
        metavar="PX|full",
        help="HR patch side in pixels, or 'full' for whole images",
    )
    r.add_argument("--learning-rate", type=float, default=None)
    r.add_argument("--seed", type=int, default=0)
    d = parser.add_argument_group("run")
    d.add_argument("-o", "--output", type=Path, required=True, metavar="OUT.safetensors")
    d.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    d.add_argument(
        "--resume",
        type=Path,
        default=None,
        metavar="STATE",
        help="continue from OUT.state.safetensors (or OUT)",
    )
    d.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    d.add_argument("--no-amp", action="store_true", help="no mixed precision on CUDA")
    d.add_argument("--workers", type=int, default=0, help="data-loading processes")
    d.add_argument("--checkpoint-every", type=float, default=60.0, metavar="S",
                   help="also write the resume state every S seconds of training (default 60), "
                   "so a killed run loses at most that much")
    d.add_argument("--quiet", action="store_true", help="no progress bar")
    from napari_resolve.commands.predict import add_threads_argument

    add_threads_argument(d)


def add_arguments(parser) -> None:
    parser.add_argument(
        "--arch", default=None, help="registry architecture (napari-resolve models)"
    )
    parser.add_argument("--scale", type=int, default=None, help="SR factor")
    parser.add_argument(
        "--in-channels",
        type=int,
        default=None,
        choices=(1, 3),
        help="1 (grey, or the Y of RGB) or 3 (RGB); default: the architecture's",
    )
    parser.add_argument(
        "--config",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="architecture options, values in JSON (e.g. channels=[16,32,64])",
    )
    add_data_arguments(parser, required=False)


def parse_config(items) -> dict:
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InputError(f"--config expects KEY=VALUE, got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
        except RecursionError:
            raise InputError(f"--config {key}: value nested too deeply") from None
    return out


def _epochs(text):
    if text is None:
        return None
    try:
        values = [int(v) for v in str(text).split(",")]
    except ValueError:
        raise InputError(f"--epochs must be N or N,N,... got {text!r}") from None
    return values[0] if len(values) == 1 else values


def _degradation(text, scale):
    if text is None:
        return None
    if text.strip().startswith("{"):
        try:
            spec = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as exc:
            raise InputError(f"--degradation is not valid JSON: {exc}") from None
        if not isinstance(spec, dict):
            raise InputError("--degradation JSON must be an object like {\"kind\": ...}")
    else:
        spec = {"kind": text}
    if scale:
        spec.setdefault("scale", scale)
    return spec


def _data(args):
    data = args.data
    one = data[0] if data and len(data) == 1 else None
    if one is not None and args.lr_images is None and args.labels is None:
        return one  # a folder (maybe with HR/ LR/), a glob or one file
    return {"hr": data, "lr": args.lr_images, "labels": args.labels}


def common_kwargs(args) -> dict:
    patch = args.patch_size
    if patch not in ("recipe", None):
        if str(patch).lower() in ("full", "none", "0"):
            patch = None
        else:
            try:
                patch = int(patch)
            except ValueError:
                raise InputError(f"--patch-size must be pixels or 'full', got {patch!r}") from None
    kw = dict(
        epochs=_epochs(args.epochs),
        minutes=args.minutes,
        max_steps=args.max_steps,
        batch_size=args.batch_size,
        patch_size=patch,
        learning_rate=args.learning_rate,
        val_fraction=args.val_fraction,
        device=args.device,
        amp=not args.no_amp,
        seed=args.seed,
        workers=args.workers,
        output=args.output,
        checkpoint_interval_s=args.checkpoint_every,
    )
    if args.val:
        kw["val_data"] = args.val if len(args.val) > 1 else args.val[0]
    if args.normalization:
        kw["normalization"] = (
            {"mode": "dtype"}
            if args.normalization == "dtype"
            else {"mode": "percentile", "low": 1.0, "high": 99.8}
        )
    if args.recipe:
        kw["recipe"] = args.recipe
    return kw


def check_output(args, extra_inputs=()) -> None:
    """Check ``-o`` and its resume state against every input before training starts.

    The model file and ``OUT.state.safetensors`` are refused when they are (or
    lie inside, or contain) a data file or folder, or exist without
    ``--overwrite``; with ``--resume`` both may exist (the run continues them).
    """
    from napari_resolve.commands._paths import check_outputs
    from napari_resolve.train.checkpoint import state_path

    out = Path(args.output)
    if out.suffix.lower() != ".safetensors":
        raise InputError(f"-o must be a .safetensors file, got {out.name}")
    if getattr(args, "checkpoint_every", None) is not None and not args.checkpoint_every >= 0:
        raise InputError(f"--checkpoint-every must be >= 0 seconds, got {args.checkpoint_every}")
    if getattr(args, "workers", 0) is not None and args.workers < 0:
        raise InputError(f"--workers must be 0 or more, got {args.workers}")
    if getattr(args, "batch_size", None) is not None and args.batch_size < 1:
        raise InputError(f"--batch-size must be 1 or more, got {args.batch_size}")
    vf = getattr(args, "val_fraction", None)
    if vf is not None and not (0.0 < vf < 1.0):
        raise InputError(f"--val-fraction must be between 0 and 1 (exclusive), got {vf}")
    inputs = [*(args.data or []), *(args.lr_images or []), *(args.labels or []),
              *(args.val or []), *extra_inputs]
    outputs = [(out, "output", "file"), (state_path(out), "resume state", "file")]
    if args.resume is not None:
        if not Path(args.resume).exists() and not state_path(args.resume).exists():
            raise InputError(f"resume checkpoint not found: {args.resume}")
        check_outputs(inputs, outputs, overwrite=True)
        return
    try:
        check_outputs(inputs, outputs, overwrite=args.overwrite)
    except InputError as exc:
        if "exists" in str(exc) and not args.overwrite:
            raise InputError(f"{exc} (or --resume {state_path(out)} to continue)") from None
        raise


def drive(gen, quiet: bool = False):
    """Run a training generator with a tqdm bar; returns the TrainResult (None if interrupted)."""
    from tqdm import tqdm

    bar = (
        None
        if quiet
        else tqdm(total=None, unit="step", file=sys.stderr, mininterval=0.5, dynamic_ncols=True)
    )
    try:
        while True:
            try:
                ev = next(gen)
            except StopIteration as done:
                return done.value
            if bar is None:
                if ev.kind in ("phase", "info") and ev.message:
                    print(ev.message, file=sys.stderr)
                continue
            if ev.total_steps is not None and bar.total != ev.total_steps:
                bar.total = ev.total_steps
            if ev.kind in ("phase", "info"):
                bar.write(ev.message, file=sys.stderr)
            elif ev.kind == "epoch" and ev.val:
                bar.write(
                    f"epoch {ev.epoch}: val PSNR {ev.val['psnr']:.2f} dB, SSIM "
                    f"{ev.val['ssim']:.4f} {ev.message}".rstrip(),
                    file=sys.stderr,
                )
            bar.n = ev.step
            post = {"phase": ev.phase}
            if "total" in ev.losses:
                post["loss"] = f"{ev.losses['total']:.4g}"
            if ev.eta_s is not None:
                post["left"] = _hms(ev.eta_s)
            bar.set_postfix(post, refresh=False)
            bar.refresh()
    except KeyboardInterrupt:
        gen.close()  # the engine saves its resume state
        return None
    finally:
        if bar is not None:
            bar.close()


def _hms(seconds: float) -> str:
    s = int(max(0, seconds))
    return (
        f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"
    )


def metrics_table(result) -> str:
    """The final table: one row per epoch (phase, mean loss, validation PSNR / SSIM)."""
    rows = [("epoch", "phase", "step", "loss", "val PSNR", "val SSIM", "")]
    for h in result.history:
        val = h.get("val") or {}
        loss = (h.get("losses") or {}).get("total")
        rows.append(
            (
                str(h.get("epoch", "")),
                str(h.get("phase", "")),
                str(h.get("step", "")),
                "" if loss is None else f"{loss:.4g}",
                "" if val.get("psnr") is None else f"{val['psnr']:.2f}",
                "" if val.get("ssim") is None else f"{val['ssim']:.4f}",
                "best" if h.get("best") else ("stopped" if h.get("stopped") else ""),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(
            c.rjust(w) if i not in (1, 6) else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))
        ).rstrip()
        for r in rows
    ]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def interrupted_message(output) -> str:
    """What a stopped run left behind, and how to continue it."""
    from napari_resolve.train.checkpoint import state_path

    state = state_path(output)
    kept = f"the best model so far is in {output}" if Path(output).exists() else "no model yet"
    if state.exists():
        return f"interrupted: {kept}; continue with --resume {state}"
    return f"interrupted: {kept}; no resume state was written (start again)"


def report(result, output, signalled: int | None = None) -> int:
    if result is None:
        print(interrupted_message(output), file=sys.stderr)
        return 130
    print(metrics_table(result))
    best = result.best
    if best.get("psnr") is not None and math.isfinite(best["psnr"]):
        print(
            f"best: epoch {best.get('epoch')}, val PSNR {best['psnr']:.2f} dB, "
            f"SSIM {best.get('ssim', float('nan')):.4f}"
        )
    if result.stopped == "nan":
        print(f"error: {result.message}", file=sys.stderr)
        return 1
    if result.bundle is not None:
        print(
            f"wrote {result.bundle}" + (f" ({result.message})" if result.stopped else ""),
            file=sys.stderr,
        )
    if signalled is not None and result.stopped == "user":
        print(interrupted_message(output), file=sys.stderr)
        return 130
    return 0


def run(args) -> int:
    from napari_resolve import threads
    from napari_resolve.train import train_iter

    threads.apply(getattr(args, "threads", None))  # the cores free now (threads.py)
    check_output(args)
    if args.resume is None:
        if not args.arch:
            raise InputError("--arch is required (or --resume)")
        if not args.data:
            raise InputError("--data is required (or --resume)")
    kwargs = common_kwargs(args)
    scale = args.scale
    if args.data:
        kwargs["degradation"] = _degradation(args.degradation, scale)
    from napari_resolve._atomic import output_lock
    from napari_resolve.train.interrupt import StopOnSignal

    with output_lock(args.output), StopOnSignal() as stop:  # Ctrl-C / SIGTERM: save, then stop
        gen = train_iter(
            args.arch,
            _data(args) if args.data else None,
            config=parse_config(args.config),
            scale=scale,
            in_channels=args.in_channels,
            resume=args.resume,
            stop=stop,
            **kwargs,
        )
        result = drive(gen, args.quiet)
    return report(result, args.output, stop.signal)
