"""Interoperability: models in and out of the bioimage ecosystem (issue 16).

* :mod:`~napari_resolve.interop.bioimageio`: BioImage Model Zoo packages
  (export with ``napari-resolve export``, load back with ``bundle.load``).
* :mod:`~napari_resolve.interop.torchscript`: TorchScript SR models with a
  declared scale, run through the same tiled engine.
* :mod:`~napari_resolve.interop._vendor`: the self-contained architecture file
  a package carries.

:func:`load` is the hook :func:`napari_resolve.bundle.load` calls first: it
returns ``(model, meta)`` for a source it recognises and ``None`` for
everything else (a ``.safetensors`` bundle, a pretrained name), so the bundle
path stays as it is.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["load", "recognises"]


def recognises(src) -> str | None:
    """``"bioimageio"``, ``"torchscript"`` or ``None`` for ``src`` (cheap: reads no weights)."""
    if not isinstance(src, (str, Path)):
        return None
    path = Path(src).expanduser()
    if not path.exists():
        return None
    from napari_resolve.interop.bioimageio import is_bioimageio
    from napari_resolve.interop.torchscript import is_torchscript

    if is_bioimageio(path):
        return "bioimageio"
    if is_torchscript(path):
        return "torchscript"
    return None


def load(src):
    """``(model, meta)`` for a bioimage.io package or a TorchScript file, else ``None``."""
    kind = recognises(src)
    if kind == "bioimageio":
        from napari_resolve.interop.bioimageio import load_bioimageio

        return load_bioimageio(Path(src).expanduser())
    if kind == "torchscript":
        from napari_resolve.interop.torchscript import load_torchscript

        return load_torchscript(Path(src).expanduser())
    return None
