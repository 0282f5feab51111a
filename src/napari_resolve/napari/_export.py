"""The *Export…* button of the Super-resolve panel: the model in use as a BioImage Model Zoo
package (issue 16).

One button, a save dialog, and :func:`napari_resolve.interop.bioimageio.export_bioimageio_iter`
in a ``thread_worker``; the result or the problem is a notification. The core does the work
(and bioimageio.core's test of the package) so the panel stays responsive.
"""

from __future__ import annotations

from pathlib import Path

from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import QFileDialog, QPushButton

from napari_resolve.errors import ResolveError

PACKAGE_FILTER = "BioImage Model Zoo package (*.zip)"


def export_button(widget) -> QPushButton:
    """A button that exports ``widget.model`` / ``widget.meta`` (the panel's model in use)."""
    button = QPushButton("Export…")
    button.setToolTip("Save the model as a BioImage Model Zoo package (.zip) for Fiji/deepImageJ, "
                      "ilastik, QuPath or bioimageio.core; checked with bioimageio.core's test")

    def ask():
        if widget.model is None or not getattr(widget.model, "arch", ""):
            show_error("Choose a napari-resolve model first (a bundled model or a loaded file)")
            return
        stem = Path(str(widget.model_source or widget.meta.get("architecture", "model"))).stem
        path, _ = QFileDialog.getSaveFileName(widget, "Export a BioImage Model Zoo package",
                                              f"{stem}.zip", PACKAGE_FILTER)
        if path:
            start_export(widget, button, (widget.model, widget.meta), Path(path), stem)

    button.clicked.connect(ask)
    return button


def start_export(widget, button, model, path: Path, name: str):
    """Run the export in a thread; returns the worker (started)."""
    from napari.qt.threading import thread_worker

    from napari_resolve.interop.bioimageio import export_bioimageio_iter

    if path.suffix.lower() != ".zip":
        path = path.with_suffix(".zip")
    # the save dialog already asked before replacing a file
    worker = thread_worker(export_bioimageio_iter, start_thread=False)(
        model, path, name=name, overwrite=True)

    def done(res):
        notes = f" ({'; '.join(res.notes)})" if res.notes else ""
        show_info(f"Exported {res.path.name}: {', '.join(res.weight_formats)}, "
                  f"bioimageio.core test passed{notes}")

    def failed(exc):
        show_error(str(exc) if isinstance(exc, ResolveError) else f"Export failed: {exc!r}")

    worker.returned.connect(done)
    worker.errored.connect(failed)
    worker.started.connect(lambda: button.setEnabled(False))
    worker.finished.connect(lambda: button.setEnabled(True))
    widget._export_worker = worker  # keep a reference while it runs
    worker.start()
    return worker
