"""``napari-resolve finetune --from mhtcun-lite --hr my_images/*.tif --minutes 10 -o mine.safetensors``.

Fine-tunes a model file or bundled model on the user's images, the headless
twin of the napari *Fine-tune* widget
(:func:`napari_resolve.train.finetuning.finetune_measured_iter`):

* ``--from NAME|FILE``: a ``.safetensors`` file or a bundled name; a name
  without its variant (``mhtcun-lite``) picks the one bundled model that
  starts with it (``mhtcun-lite-x2``);
* data: ``--hr`` images only (self-supervised: each is degraded the way the
  model was trained, or as ``--degradation`` says), ``--hr`` with ``--lr``
  (registered pairs, matched by file name), or ``--hr`` with ``--labels``
  (parsing maps 0/1/2 or 0/128/255 masks, for geometry-prior models); a
  folder with ``HR/`` and ``LR/`` sub-folders works too; stack files give one
  image per plane;
* validation: ``--val`` images (a folder with ``HR/`` and ``LR/`` for pairs),
  else a part held back from the training images without overlap
  (``--val-fraction``: a band of one image, or the last images of several);
* budget: ``--minutes`` (training time) and/or ``--epochs`` (or
  ``--max-steps``); the recipe is the architecture's paper loss at a
  constant, low rate (:func:`napari_resolve.train.recipes.finetune_recipe`).

A progress bar shows the loss and the time left; at the end the epoch table
and the before/after table (validation PSNR / SSIM and decorrelation
resolution of the base and of the fine-tuned model) are printed. The best
weights go to ``-o`` (written atomically after every improvement) with the
parent bundle, data description, recipe and the before/after figures in its
metadata. Ctrl-C stops cleanly and keeps the best model so far; ``--resume
OUT.state.safetensors`` continues an interrupted run (the engine's resume).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from napari_resolve.commands import train as _train
from napari_resolve.errors import InputError

NAME = "finetune"
HELP = "fine-tune a model file or bundled model on your images (before/after PSNR and resolution)"


def add_arguments(parser) -> None:
    parser.add_argument(
        "--from",
        dest="source",
        required=True,
        metavar="NAME|FILE",
        help="model file (.safetensors) or bundled name to start from (e.g. mhtcun-lite)",
    )
    parser.add_argument(
        "--pixel-size",
        type=float,
        default=None,
        metavar="NM",
        help="HR pixel size in nm when the files do not say (resolution then in nm)",
    )
    _train.add_data_arguments(parser, required=False)


def _read(src, what: str):
    """(array, pixel size in nm or None) of a path or an in-memory plane."""
    if not isinstance(src, (str, Path)):
        return np.asarray(src), None
    from napari_resolve.io import read_image

    arr, meta = read_image(src)
    px = meta.get("pixel_size")
    return np.asarray(arr), (None if px is None else 1000.0 * float(px))


def load_images(data, *, scale: int, in_channels: int, pixel_size_nm=None):
    """:class:`~napari_resolve.train.finetuning.TrainingImage` s from what ``--hr/--lr/--labels`` name.

    Files are found and paired as :func:`napari_resolve.data.datasets.make_dataset`
    does (folders, globs, ``HR/`` + ``LR/`` sub-folders, names); label masks
    0/128/255 are mapped to 0/1/2.
    """
    from napari_resolve.data.datasets import _planes, make_dataset, read_labels
    from napari_resolve.train.finetuning import TrainingImage

    ds = make_dataset(data, scale=scale, in_channels=in_channels)
    out = []
    for item in ds.items:
        hr, px = _read(item.hr, item.name)
        planes = _planes(hr, item.name)
        if len(planes) != 1:
            raise InputError(f"{item.name}: a stack of {len(planes)} planes with LR or labels; "
                             "give one plane per file")
        lr = None if item.lr is None else _planes(_read(item.lr, item.name)[0], item.name)[0]
        labels = None if item.labels is None else read_labels(item.labels, f"labels of {item.name}")
        source = str(item.hr) if isinstance(item.hr, (str, Path)) else item.name
        out.append(TrainingImage(item.name, planes[0], lr=lr, labels=labels,
                                 pixel_size_nm=pixel_size_nm or px, source=source))
    return out


def _data_spec(paths, lr, labels):
    one = paths[0] if paths and len(paths) == 1 else None
    if one is not None and lr is None and labels is None:
        return one
    return {"hr": paths, "lr": lr, "labels": labels}


def run(args) -> int:
    from napari_resolve import bundle, threads
    from napari_resolve.train import train_iter
    from napari_resolve.train.finetuning import finetune_measured_iter

    threads.apply(getattr(args, "threads", None))  # the cores free now (threads.py)
    source = Path(str(args.source))
    _train.check_output(args, extra_inputs=[source] if source.exists() else [])
    kwargs = _train.common_kwargs(args)
    from napari_resolve._atomic import output_lock
    from napari_resolve.train.interrupt import StopOnSignal

    if args.resume is not None:  # the state records the data's paths: --hr is optional
        with output_lock(args.output), StopOnSignal() as stop:
            gen = train_iter(
                None, _train._data(args) if args.data else None, resume=args.resume,
                stop=stop, **kwargs
            )
            result = _train.drive(gen, args.quiet)
        return _train.report(result, args.output, stop.signal)
    if not args.data:
        raise InputError("--hr/--data is required: the images to fine-tune on")
    if args.epochs is None and args.minutes is None and args.max_steps is None:
        raise InputError("give --minutes or --epochs (how long to fine-tune)")
    if args.pixel_size is not None and not args.pixel_size > 0:
        raise InputError(f"--pixel-size must be positive, got {args.pixel_size}")
    meta = bundle.read_meta(args.source)
    s, channels = int(meta["scale"]), int(meta.get("in_channels", 1))
    images = load_images(_data_spec(args.data, args.lr_images, args.labels), scale=s,
                         in_channels=channels, pixel_size_nm=args.pixel_size)
    val_images = None
    if args.val:
        val_images = load_images(args.val if len(args.val) > 1 else args.val[0], scale=s,
                                 in_channels=channels, pixel_size_nm=args.pixel_size)
    degradation = _train._degradation(args.degradation, s) if args.degradation else None
    def absolute(paths):
        return None if paths is None else [str(Path(p).absolute()) for p in paths]

    with output_lock(args.output), StopOnSignal() as stop:  # Ctrl-C / SIGTERM: save, then stop
        gen = finetune_measured_iter(
            args.source, images, val_images=val_images, val_fraction=args.val_fraction,
            epochs=kwargs["epochs"], minutes=args.minutes, max_steps=args.max_steps,
            learning_rate=args.learning_rate, patch_size=kwargs["patch_size"],
            batch_size=args.batch_size, degradation=degradation, output=args.output,
            device=args.device, seed=args.seed, note="napari-resolve finetune (command line)",
            stop=stop, checkpoint_interval_s=args.checkpoint_every,
            data_source=_data_spec(absolute(args.data), absolute(args.lr_images),
                                   absolute(args.labels)),
            val_source=(absolute(args.val) if args.val and len(args.val) > 1
                        else absolute(args.val)[0] if args.val else None),
        )
        report = _train.drive(gen, args.quiet)
    if report is None:  # a second Ctrl-C: aborted
        return _train.report(None, args.output)
    if report.result is None:
        if report.traceback:  # a crash before training
            print(report.traceback, file=sys.stderr)
            print(f"error: {report.error}", file=sys.stderr)
            return 1
        raise InputError(report.error)
    print(_train.metrics_table(report.result))
    print()
    print(report.table())
    if report.psnr_gain is not None and report.psnr_gain <= 0:
        print(f"note: {report.warnings[-1]}", file=sys.stderr)
    if report.error:
        if report.traceback:
            print(report.traceback, file=sys.stderr)
        print(f"error: {report.error}", file=sys.stderr)
        return 1
    if report.bundle is not None:
        note = f" ({report.result.message})" if report.stopped else ""
        print(f"wrote {report.bundle}{note}", file=sys.stderr)
    if stop.signal is not None and report.stopped == "user":
        print(_train.interrupted_message(args.output), file=sys.stderr)
        return 130
    return 0
