"""``napari-resolve export MODEL -o OUT --format bioimageio|onnx``: a model for other tools.

* ``--format bioimageio`` (default): a BioImage Model Zoo package (spec 0.5),
  ``OUT`` a ``.zip`` or a folder, checked with bioimageio.core's own test
  before it is kept (:func:`napari_resolve.interop.bioimageio.export_bioimageio`).
  ``--weights`` adds ``torchscript`` (default) and/or ``onnx`` next to the
  ``pytorch_state_dict``; a format the network cannot be converted to is left
  out with a note.
* ``--format onnx``: one ``.onnx`` file with dynamic height / width, written by
  the ONNX exporter of :mod:`napari_resolve.runtime.onnx` (``export_onnx``).

``MODEL`` is a pretrained name or a ``.safetensors`` bundle. An existing
``OUT`` is refused unless ``--overwrite``; outputs appear only when complete.
"""

from __future__ import annotations

import sys
from pathlib import Path

from napari_resolve.errors import InputError

NAME = "export"
HELP = "export a model as a BioImage Model Zoo package (.zip / folder) or an ONNX file"
FORMATS = ("bioimageio", "onnx")


def add_arguments(parser) -> None:
    parser.add_argument("model", metavar="MODEL", help="pretrained name or .safetensors file")
    parser.add_argument("-o", "--output", type=Path, required=True, metavar="OUT",
                        help="bioimageio: a .zip or a folder; onnx: a .onnx file")
    parser.add_argument("--format", choices=FORMATS, default="bioimageio",
                        help="bioimageio (default) or onnx")
    parser.add_argument("--weights", nargs="+", default=["torchscript"],
                        choices=("torchscript", "onnx", "none"), metavar="FMT",
                        help="bioimageio: weights besides pytorch_state_dict "
                             "(torchscript, onnx, or none; default torchscript)")
    parser.add_argument("--no-test", action="store_true",
                        help="bioimageio: skip bioimageio.core's test of the package")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUT")


def export_onnx(model, output: Path, *, overwrite: bool = False):
    """The ONNX export of :mod:`napari_resolve.runtime.onnx`, refused with a reason when absent."""
    try:
        from napari_resolve.runtime.onnx import export_onnx as runtime_export
    except ImportError:
        raise InputError(
            "--format onnx needs napari_resolve.runtime.onnx (ONNX export, issue 17), which "
            "this version lacks"
        ) from None
    if output.suffix.lower() != ".onnx":
        raise InputError(f"output {output.name}: an ONNX export ends in .onnx")
    if output.exists() and not overwrite:
        raise InputError(f"output {output} exists; use --overwrite or another name")
    return runtime_export(model, output)


def run(args) -> int:
    from napari_resolve.predict import resolve_model

    if args.format == "onnx":
        path = export_onnx(resolve_model(args.model), args.output, overwrite=args.overwrite)
        print(f"wrote {path or args.output}")
        return 0
    from napari_resolve.interop.bioimageio import export_bioimageio

    extra = [w for w in args.weights if w != "none"]

    def show(ev):
        print(f"[{ev.done}/{ev.total}] {ev.stage}", file=sys.stderr)

    res = export_bioimageio(args.model, args.output, overwrite=args.overwrite,
                            weight_formats=("pytorch_state_dict", *extra),
                            test=not args.no_test, progress=show)
    for note in res.notes:
        print(f"note: {note}", file=sys.stderr)
    tested = ", ".join(f"{k} {v}" for k, v in res.test.items()) or "not tested"
    print(f"wrote {res.path} (weights: {', '.join(res.weight_formats)}; "
          f"bioimageio.core test: {tested})")
    return 0
