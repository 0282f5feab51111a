"""Qt pieces the dock widgets share: layer-list watching, layer pickers, the model row.

Written once here so that the Super-resolve, Fine-tune and Resolution panels
behave the same way: a picker keeps its choice when layers come and go, a
renamed layer is renamed in every picker, and models are chosen from the same
list (bundled models, or a ``.safetensors`` file; pickles are refused by
:mod:`napari_resolve.bundle`).
"""

from __future__ import annotations

from napari.utils.notifications import show_error
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QComboBox, QFileDialog, QHBoxLayout, QLabel, QPushButton

from napari_resolve.errors import ResolveError

MODEL_FILE_FILTER = (
    "Model files (*.safetensors);;BioImage Model Zoo package (*.zip rdf.yaml bioimageio.yaml);;"
    "TorchScript with a declared scale (*.pt *.ts *.torchscript);;All files (*)"
)


def watch_layers(viewer, refresh) -> None:
    """Call ``refresh()`` whenever the layer list changes or a layer is renamed."""
    events = viewer.layers.events

    def on_inserted(event=None):
        layer = getattr(event, "value", None)
        if layer is not None:
            layer.events.name.connect(refresh)
        refresh()

    events.inserted.connect(on_inserted)
    events.removed.connect(refresh)
    events.reordered.connect(refresh)
    for layer in viewer.layers:
        layer.events.name.connect(refresh)


def layer_names(viewer, kind) -> list[str]:
    """Names of the layers of type ``kind`` (e.g. :class:`napari.layers.Image`), in list order."""
    return [layer.name for layer in viewer.layers if isinstance(layer, kind)]


def refill_combo(combo: QComboBox, names, extra=(), *, keep_empty: bool = False) -> None:
    """Refill ``combo`` with ``extra + names`` keeping its choice, without emitting signals.

    A choice that is gone falls back to the first entry, or with ``keep_empty``
    (once the combo was filled) to no choice at all, so a removed layer is
    never silently replaced by another.
    """
    items = list(extra) + list(names)
    current, filled = combo.currentText(), combo.count() > 0
    combo.blockSignals(True)
    combo.clear()
    combo.addItems(items)
    if current in items:
        combo.setCurrentText(current)
    elif keep_empty and filled:
        combo.setCurrentIndex(-1)
    combo.blockSignals(False)


def model_row(parent, tooltip: str, on_file) -> tuple[QHBoxLayout, QComboBox, QPushButton, QLabel]:
    """The model picker: a combo, a *Load file…* button that asks for a file, and a card label.

    ``on_file(path: str)`` is called with the file the user picked.
    """
    combo = QComboBox()
    combo.setToolTip(tooltip)
    # entries carry long summaries: without this the combo would widen the dock past the canvas
    combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
    combo.setMinimumContentsLength(16)
    button = QPushButton("Load file…")
    button.setToolTip("Open a .safetensors model file, a BioImage Model Zoo package or a TorchScript "
                      "model (pickled .pt/.pth checkpoints are refused)")

    def ask():
        path, _ = QFileDialog.getOpenFileName(parent, "Open a model file", "", MODEL_FILE_FILTER)
        if path:
            on_file(path)

    button.clicked.connect(ask)
    row = QHBoxLayout()
    row.addWidget(combo, 1)
    row.addWidget(button)
    card = QLabel()
    card.setTextFormat(Qt.TextFormat.RichText)
    card.setWordWrap(True)
    return row, combo, button, card


def pretrained_entries() -> list[dict]:
    """The bundled models (:func:`napari_resolve.bundle.pretrained`); a notification if unreadable."""
    from napari_resolve import bundle

    try:
        return bundle.pretrained()
    except ResolveError as exc:  # a broken install: still usable with files
        show_error(f"cannot list the bundled models: {exc}")
        return []


# ----------------------------------------------------------------------------- lazy imports
#: what a run needs that is slow to import (torch alone takes 2-5 s on a 2-core PC). Opening a
#: panel imports none of it; the first action that needs it (loading a model, Start) does,
#: after saying so. A background import was tried and rejected: torch's initialisation holds
#: Python's GIL for seconds, so the window froze anyway, at a moment the user did not choose
#: (benchmarks/ui_freeze.py, docs/benchmarks.md).
WARM_MODULES = (
    "torch",
    "napari_resolve.models",
    "napari_resolve.predict",
    "napari_resolve.train.engine",
    "napari_resolve.train.finetuning",
    "matplotlib.figure",
    "matplotlib.backends.backend_qtagg",
)
_when_warm: list = []


def is_warm() -> bool:
    """True when every module of :data:`WARM_MODULES` is imported."""
    import sys

    return all(name in sys.modules for name in WARM_MODULES)


def when_warm(callback) -> None:
    """Call ``callback()`` once the heavy modules are imported (now, if they are).

    Panels use it to fill what needs torch (devices, the degradation line of
    a card) whichever panel triggered the import. A callback of a panel
    closed meanwhile is skipped (Qt raises RuntimeError for a deleted widget).
    """
    if is_warm():
        callback()
    else:
        _when_warm.append(callback)


def ensure_warm(status_label=None) -> None:
    """Import :data:`WARM_MODULES` now (the first action that needs them), saying so first."""
    if is_warm():
        return
    import importlib

    if status_label is not None:
        from qtpy.QtWidgets import QApplication

        status_label.setText("Loading PyTorch (first use only, a few seconds)…")
        status_label.repaint()
        QApplication.processEvents()
    for name in WARM_MODULES:
        importlib.import_module(name)
    callbacks = list(_when_warm)
    _when_warm.clear()
    for cb in callbacks:
        try:
            cb()
        except RuntimeError:  # the panel was closed meanwhile
            pass


def known_devices() -> list[str]:
    """Devices torch can use, best first, without importing torch (CPU only until it is)."""
    import sys

    if "torch" not in sys.modules:
        return ["cpu"]
    from napari_resolve.napari._widget import available_devices

    return available_devices()


def fill_devices(combo) -> None:
    """(Re)fill a device combo: 'auto (best)', then each device; keeps the choice."""
    current = combo.currentData()
    devices = known_devices()
    combo.blockSignals(True)
    combo.clear()
    combo.addItem(f"auto ({devices[0].upper()})", "auto")
    for dev in devices:
        combo.addItem(dev.upper(), dev)
    index = combo.findData(current) if current is not None else 0
    combo.setCurrentIndex(max(index, 0))
    combo.blockSignals(False)
