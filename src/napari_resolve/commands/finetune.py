"""``napari-resolve finetune --from BUNDLE --hr my_images/*.tif --minutes 10 -o mine.safetensors``.

Fine-tunes a model file or pretrained bundle on the user's images. HR-only
images are degraded the way the model was trained (the bundle's
``degradation``) and normalised as it was (``normalization``); ``--lr``
gives real pairs, ``--labels`` parsing maps for prior-guided models. The
recipe is the architecture's paper loss at a constant, low rate
(:func:`napari_resolve.train.recipes.finetune_recipe`); ``--minutes`` and/or
``--epochs`` bound the run. The best weights go to ``-o`` with the parent
bundle recorded in the metadata; progress bar, table and Ctrl-C as ``train``.
"""

from __future__ import annotations

from napari_resolve.commands import train as _train
from napari_resolve.errors import InputError

NAME = "finetune"
HELP = "fine-tune a model file or pretrained bundle on your images"


def add_arguments(parser) -> None:
    parser.add_argument(
        "--from",
        dest="source",
        required=True,
        metavar="BUNDLE|NAME",
        help="model file (.safetensors) or pretrained name to start from",
    )
    _train.add_data_arguments(parser, required=False)


def run(args) -> int:
    from napari_resolve.train import finetune_iter, train_iter

    _train.check_output(args)
    kwargs = _train.common_kwargs(args)
    if args.resume is not None:
        gen = train_iter(
            None, _train._data(args) if args.data else None, resume=args.resume, **kwargs
        )
        return _train.report(_train.drive(gen, args.quiet), args.output)
    if not args.data:
        raise InputError("--hr/--data is required: the images to fine-tune on")
    if args.degradation is not None:
        kwargs["degradation"] = _train._degradation(args.degradation, None)
    if args.epochs is None and args.minutes is None and args.max_steps is None:
        raise InputError("give --minutes or --epochs (how long to fine-tune)")
    gen = finetune_iter(args.source, _train._data(args), **kwargs)
    return _train.report(_train.drive(gen, args.quiet), args.output)
