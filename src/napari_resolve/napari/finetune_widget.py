"""The "Fine-tune" dock widget: train a bundle further on your own layers, in the background.

One panel, top to bottom:

1. **Base model** — a bundled model (default: the ``mhtcun-lite`` one) or any
   ``.safetensors`` file; a line says what it is and how HR-only data will
   be degraded for it.
2. **Training data** — from layers, in one of three forms: HR image layers
   only (self-supervised: each is degraded on the fly with the bundle's own
   degradation), registered LR/HR layer pairs (a warning when the HR shape is
   not scale × LR and cropping fixes it, an error when it does not), or HR
   images with a Labels layer as parsing-map supervision (paper 000 §2.3;
   geometry-prior models only). Stacks give one training image per plane.
   Validation: a part held back from the training layers (no overlap) or a
   chosen layer.
3. **Schedule** — patch size, batch size, learning rate (defaults: the
   fine-tuning recipe of the architecture's paper,
   :func:`napari_resolve.train.recipes.finetune_recipe`), minutes and/or
   epochs, device, and the output file.
4. **Run** — *Start* runs
   :func:`napari_resolve.train.finetuning.finetune_measured_iter` in a
   ``thread_worker``; a progress bar with the time left, a live plot of the
   training loss and the validation PSNR (the base model's at step 0),
   *Pause* / *Resume* (between two steps; paused time does not count against
   the minutes), *Stop* (after the current step; the best weights so far are
   kept). napari stays usable: the layers were copied when the run started,
   so painting or adding layers does not disturb it.
5. **Before / after** — validation PSNR and decorrelation resolution
   (Descloux 2019; paper 003 §4.4) of the validation image super-resolved by
   the base and by the fine-tuned model, the PSNR gain, two new layers over
   the validation region and the embedded resolution widget with both d(r)
   curves; *Use in Super-resolve* loads the new bundle into that panel.

Every problem a user can cause is a notification and nothing is started or
lost; a crash during training is a notification too, and the best bundle
written before it stays on disk (bundles are written atomically).

This module holds the panel's form and state (sections 1-3, what *Start*
reads); the run, its progress and the results (sections 4-5) are
:mod:`napari_resolve.napari._finetune_run`, and turning layers into training
images is :mod:`napari_resolve.napari._finetune_layers`.
"""

from __future__ import annotations

import threading
from pathlib import Path

from napari.layers import Image, Labels
from napari.utils.notifications import show_error
from qtpy.QtCore import Qt, QTimer, Signal
from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QVBoxLayout,
    QWidget,
)

from napari_resolve.errors import InputError, ResolveError
from napari_resolve.napari._common import (
    fill_devices,
    compact_combos,
    fit_width,
    is_warm,
    layer_names,
    model_row,
    pretrained_entries,
    refill_combo,
    scroll_panel,
    when_warm,
    watch_layers,
)
from napari_resolve.napari._finetune_layers import (  # noqa: F401  (re-exported)
    _free_path, _pixel_size_nm, _planes, layer_images
)
from napari_resolve.napari._finetune_run import (  # noqa: F401  (re-exported)
    FinetuneRunMixin, _hms, _on_input_scale, worker_threads
)

#: on the CPU the panel proposes steps of about a second (the recipe's batch and patch
#: suit a GPU; a batch of 8 × 128 px takes 5 CPU-seconds a step for MHTCUN-lite)
CPU_BATCH, CPU_PATCH = 4, 96
#: the loss plot is redrawn at most this often (ms): drawing runs in the GUI thread
PLOT_INTERVAL_MS = 1000

__all__ = ["FinetuneWidget", "layer_images"]

FORM_LABELS = {
    "hr": "HR images (self-supervised)",
    "pairs": "LR / HR layer pairs",
    "labels": "HR images + parsing labels",
}
HOLD_OUT = "— hold back part of the training data —"
NONE = "—"


# ----------------------------------------------------------------------------- the widget


class FinetuneWidget(FinetuneRunMixin, QWidget):
    """Fine-tune a bundle on layers in the background (see the module docstring).

    Python access for scripts and tests: :meth:`set_base`, :meth:`set_data`,
    :meth:`start`, :meth:`pause`, :meth:`resume`, :meth:`stop`,
    :meth:`use_in_super_resolve`; ``running``, ``report`` (the last
    :class:`~napari_resolve.train.finetuning.FinetuneReport`) and
    ``bundle_path``. Signals: ``progressed`` (every
    :class:`~napari_resolve.train.TrainEvent`), ``finished`` (the report).
    """

    progressed = Signal(object)
    finished = Signal(object)

    def showEvent(self, event):  # noqa: N802 - Qt: the dock as wide as the filled content
        super().showEvent(event)
        if getattr(self, "scroll", None) is not None:
            fit_width(self.scroll)

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.report = None
        self.bundle_path: Path | None = None
        self._worker = None
        self._stop_event = threading.Event()
        self._pause_event = threading.Event()
        self._run = {}
        self._files: dict[str, str] = {}
        self._recipe_note = ""
        self._warmed = False
        self._history = {"step": [], "loss": [], "val_step": [], "psnr": []}
        self._plot_timer = QTimer(self)
        self._plot_timer.setSingleShot(True)
        self._plot_timer.setInterval(PLOT_INTERVAL_MS)
        self._plot_timer.timeout.connect(self._draw_plot)

        # the panel is tall (plot, resolution curves): it scrolls inside its dock
        self.scroll, layout = scroll_panel(self)
        layout.addWidget(self._build_model_section())
        layout.addWidget(self._build_data_section())
        layout.addWidget(self._build_schedule_section())
        layout.addWidget(self._build_run_section())
        layout.addWidget(self._build_results_section(), stretch=1)
        compact_combos(self)
        fit_width(self.scroll)

        watch_layers(self.viewer, self._refresh_layer_choices)
        self._fill_models()
        self._add_row()
        self._on_form_changed()
        self._set_running(False)
        # torch, the training engine and matplotlib load at Start (the panel opens at once)
        when_warm(self._on_warm)

    def _on_warm(self) -> None:
        """The background imports are done: devices, the plot, the model card's last line."""
        if self._warmed:
            return
        self._warmed = True
        fill_devices(self.device_combo)
        self._ensure_canvas()
        self._update_model_card()

    # ------------------------------------------------------------------ building

    def _build_model_section(self) -> QGroupBox:
        box = QGroupBox("1 · Base model")
        outer = QVBoxLayout(box)
        row, self.model_combo, self.load_file_button, self.model_card = model_row(
            self, "The model to start from: a bundled one or a .safetensors file",
            lambda path: self.set_base(Path(path)),
        )
        self.model_combo.currentIndexChanged.connect(self._on_model_changed)
        outer.addLayout(row)
        outer.addWidget(self.model_card)
        return box

    def _build_data_section(self) -> QGroupBox:
        box = QGroupBox("2 · Training data")
        outer = QVBoxLayout(box)
        form = QFormLayout()
        self.form_combo = QComboBox()
        for key, label in FORM_LABELS.items():
            self.form_combo.addItem(label, key)
        self.form_combo.setToolTip(
            "HR only: each image is degraded with the model's own degradation. Pairs: "
            "registered LR and HR layers (HR = scale × LR). Labels: a parsing map "
            "(0 background, 1 cytoplasm, 2 nucleus) on each HR image, for geometry-prior models."
        )
        self.form_combo.currentIndexChanged.connect(self._on_form_changed)
        form.addRow("form", self.form_combo)
        outer.addLayout(form)
        self.table = QTableWidget(0, 2)
        self.table.setHorizontalHeaderLabels(["HR image", "LR image"])
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.verticalHeader().setVisible(False)
        self.table.setMinimumHeight(60)
        self.table.setMaximumHeight(120)
        outer.addWidget(self.table)
        buttons = QHBoxLayout()
        self.add_row_button = QPushButton("+ image")
        self.add_row_button.clicked.connect(lambda: self._add_row())
        self.remove_row_button = QPushButton("− image")
        self.remove_row_button.clicked.connect(self._remove_row)
        buttons.addWidget(self.add_row_button)
        buttons.addWidget(self.remove_row_button)
        buttons.addStretch(1)
        outer.addLayout(buttons)
        vform = QFormLayout()
        self.val_combo = QComboBox()
        self.val_combo.setToolTip(
            "Validation image: a part held back from the training layers (never trained on), "
            "or a layer of its own"
        )
        self.val_combo.currentIndexChanged.connect(self._on_val_changed)
        vform.addRow("validation", self.val_combo)
        self.val_partner_combo = QComboBox()
        self.val_partner_label = QLabel("validation LR")
        vform.addRow(self.val_partner_label, self.val_partner_combo)
        self.val_fraction_spin = QDoubleSpinBox()
        self.val_fraction_spin.setRange(0.05, 0.5)
        self.val_fraction_spin.setSingleStep(0.05)
        self.val_fraction_spin.setValue(0.2)
        self.val_fraction_spin.setToolTip(
            "One layer: a band of this fraction at the end of its longer side (at least 64 px) is "
            "held back; several: this fraction of the layers"
        )
        self.val_fraction_label = QLabel("held back")
        vform.addRow(self.val_fraction_label, self.val_fraction_spin)
        outer.addLayout(vform)
        return box

    def _build_schedule_section(self) -> QGroupBox:
        box = QGroupBox("3 · Schedule")
        form = QFormLayout(box)
        self.patch_spin = QSpinBox()
        self.patch_spin.setRange(0, 4096)
        self.patch_spin.setSingleStep(16)
        self.patch_spin.setSpecialValueText("whole images")
        self.patch_spin.setSuffix(" px")
        self.patch_spin.setToolTip("HR patch side (the recipe's by default; shrunk to the images)")
        form.addRow("patch size", self.patch_spin)
        self.batch_spin = QSpinBox()
        self.batch_spin.setRange(1, 256)
        form.addRow("batch size", self.batch_spin)
        self.lr_spin = QDoubleSpinBox()
        self.lr_spin.setDecimals(7)
        self.lr_spin.setRange(1e-7, 1.0)
        self.lr_spin.setSingleStep(1e-5)
        self.lr_spin.setToolTip("Adam learning rate (the fine-tuning recipe's by default)")
        form.addRow("learning rate", self.lr_spin)
        self.minutes_spin = QDoubleSpinBox()
        self.minutes_spin.setRange(0.0, 24 * 60.0)
        self.minutes_spin.setDecimals(2)
        self.minutes_spin.setValue(5.0)
        self.minutes_spin.setSpecialValueText("no limit")
        self.minutes_spin.setSuffix(" min")
        self.minutes_spin.setToolTip("Training time (pauses do not count)")
        form.addRow("time", self.minutes_spin)
        self.epochs_spin = QSpinBox()
        self.epochs_spin.setRange(0, 100_000)
        self.epochs_spin.setSpecialValueText("no limit")
        self.epochs_spin.setToolTip(
            "Epochs (about 8 batches each). With neither time nor epochs: the recipe's epochs"
        )
        form.addRow("epochs", self.epochs_spin)
        self.device_combo = QComboBox()
        fill_devices(self.device_combo)
        self.device_combo.currentIndexChanged.connect(self._apply_recipe)
        form.addRow("device", self.device_combo)
        row = QHBoxLayout()
        self.output_edit = QLineEdit()
        self.output_edit.setToolTip(
            "The fine-tuned model (.safetensors), written each time validation improves"
        )
        browse = QPushButton("…")
        browse.setMaximumWidth(32)
        browse.clicked.connect(self._ask_output)
        row.addWidget(self.output_edit, 1)
        row.addWidget(browse)
        form.addRow("save to", row)
        return box

    def _build_run_section(self) -> QGroupBox:
        box = QGroupBox("4 · Run")
        outer = QVBoxLayout(box)
        buttons = QHBoxLayout()
        self.start_button = QPushButton("Start fine-tuning")
        self.start_button.clicked.connect(lambda: self.start())
        self.pause_button = QPushButton("Pause")
        self.pause_button.clicked.connect(self._toggle_pause)
        self.stop_button = QPushButton("Stop")
        self.stop_button.setToolTip("Stop after the current step; the best weights so far are kept")
        self.stop_button.clicked.connect(self.stop)
        buttons.addWidget(self.start_button, 2)
        buttons.addWidget(self.pause_button, 1)
        buttons.addWidget(self.stop_button, 1)
        outer.addLayout(buttons)
        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, 1000)
        self.progress_bar.setValue(0)
        self.progress_bar.setTextVisible(True)
        self.progress_bar.setFormat("")
        outer.addWidget(self.progress_bar)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        outer.addWidget(self.status)
        # the plot (matplotlib) is made once matplotlib is imported in the background
        self.figure = self.canvas = self.loss_ax = self.psnr_ax = None
        self._plot_layout = outer
        return box

    def _build_results_section(self) -> QGroupBox:
        from napari_resolve.napari.resolution_widget import ResolutionWidget

        box = QGroupBox("5 · Before / after")
        outer = QVBoxLayout(box)
        self.results_label = QLabel("<i>Results appear here when a run ends.</i>")
        self.results_label.setWordWrap(True)
        self.results_label.setTextFormat(Qt.TextFormat.RichText)
        self.results_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        outer.addWidget(self.results_label)
        self.use_button = QPushButton("Use in Super-resolve")
        self.use_button.setToolTip("Load the fine-tuned model into the Super-resolve panel")
        self.use_button.clicked.connect(self.use_in_super_resolve)
        self.use_button.setEnabled(False)
        outer.addWidget(self.use_button)
        self.resolution = ResolutionWidget(self.viewer, scrolling=False)
        self.resolution.setVisible(False)
        outer.addWidget(self.resolution, stretch=1)
        return box

    # ------------------------------------------------------------------ base model

    def _fill_models(self) -> None:
        from napari_resolve import bundle

        self.model_combo.blockSignals(True)
        self.model_combo.clear()
        self.model_combo.addItem("— choose a model —", None)
        for entry in pretrained_entries():
            self.model_combo.addItem(entry["name"], f"pretrained:{entry['name']}")
        self.model_combo.blockSignals(False)
        try:  # the default: the bundled MHTCUN-lite
            default = bundle.resolve("mhtcun-lite").stem
        except ResolveError:
            default = None
        # item data are strings: Qt's findData cannot compare Python tuples
        index = self.model_combo.findData(f"pretrained:{default}") if default else -1
        self.model_combo.setCurrentIndex(max(index, 0))
        self._on_model_changed()

    def set_base(self, src) -> bool:
        """Choose the base model: a pretrained name (str) or a file (:class:`~pathlib.Path`)."""
        from napari_resolve import bundle

        try:
            path = bundle.resolve(src)
            bundle.read_meta(path)
        except ResolveError as exc:
            self._error(f"{exc}. Choose a napari-resolve .safetensors model file.")
            return False
        if path.parent == bundle.pretrained_dir():
            choice, label = f"pretrained:{path.stem}", path.stem
        else:
            choice, label = f"file:{path}", f"{path.name} (file)"
        index = self.model_combo.findData(choice)
        if index < 0:
            self.model_combo.addItem(label, choice)
            index = self.model_combo.count() - 1
        self.model_combo.setCurrentIndex(index)
        self._on_model_changed()
        return True

    def _base_source(self):
        choice = self.model_combo.currentData()
        if choice is None:
            raise InputError("No base model: choose a bundled model or load a .safetensors file")
        kind, _, value = str(choice).partition(":")
        return value if kind == "pretrained" else Path(value)

    def _base_meta(self) -> dict | None:
        from napari_resolve import bundle

        try:
            return bundle.read_meta(self._base_source())
        except ResolveError:
            return None

    def _on_cpu(self) -> bool:
        choice = self.device_combo.currentData()
        if choice in (None, "auto"):
            from napari_resolve.napari._common import known_devices

            choice = known_devices()[0]
        return choice == "cpu"

    def _apply_recipe(self, *_) -> None:
        """Schedule defaults: the fine-tuning recipe, with CPU-sized steps on the CPU."""
        from napari_resolve.train import recipes as R

        meta = self._base_meta()
        if meta is None:
            return
        rec = R.finetune_recipe(R.default_for(str(meta.get("architecture"))))
        patch, batch = int(rec.patch_size or 0), int(rec.batch_size)
        if self._on_cpu():
            patch = min(patch, CPU_PATCH) if patch else 0
            batch = min(batch, CPU_BATCH)
        self.patch_spin.setValue(patch)
        self.batch_spin.setValue(batch)
        self.lr_spin.setValue(float(rec.lr))
        self._recipe_note = (
            f"recipe: {rec.description} (batch {rec.batch_size} × {rec.patch_size or 'whole'} px"
            + (f"; batch {batch} × {patch} px on the CPU so that a step takes seconds"
               if (patch, batch) != (int(rec.patch_size or 0), int(rec.batch_size)) else "")
            + ")"
        )

    def _on_model_changed(self, *_) -> None:
        self._apply_recipe()
        self._update_model_card()
        meta = self._base_meta()
        if meta is not None:
            self._suggest_output(meta)

    def _update_model_card(self) -> None:
        from napari_resolve.cards import card_html

        meta = self._base_meta()
        if meta is None:
            self.model_card.setText("<i>Choose the model to fine-tune.</i>")
            return
        html = card_html(meta, rows=("For", "Trained on", "How good"), table=False)
        if is_warm():  # the degradation rule lives in the training engine (torch)
            from napari_resolve.train.finetuning import self_supervised_degradation

            deg = self_supervised_degradation(meta)
            words = {"widefield": "a wide-field microscope model (blur, binning, noise)",
                     "matlab-bicubic": "bicubic shrinking (as the papers)"}
            html += ("<br>Your HR-only images are shrunk for it with "
                     f"<b>{words.get(deg['kind'], deg['kind'])}</b>")
        html += f"<br><span style='color:#999'>{self._recipe_note}</span>"
        self.model_card.setText(html)

    def _suggest_output(self, meta=None) -> None:
        try:
            src = self._base_source()
        except InputError:
            return
        stem = Path(str(src)).stem if isinstance(src, Path) else str(src)
        folder = (Path(self.output_edit.text()).parent if self.output_edit.text()
                  else Path.home() / "napari-resolve")
        self.output_edit.setText(str(_free_path(folder / f"{stem}-finetuned.safetensors")))

    def _ask_output(self) -> None:
        path, _ = QFileDialog.getSaveFileName(
            self, "Save the fine-tuned model", self.output_edit.text(),
            "Model files (*.safetensors)"
        )
        if path:
            self.output_edit.setText(path if path.endswith(".safetensors") else path + ".safetensors")

    # ------------------------------------------------------------------ data rows

    def _form(self) -> str:
        return self.form_combo.currentData() or "hr"

    def _on_form_changed(self, *_) -> None:
        form = self._form()
        self.table.setColumnHidden(1, form == "hr")
        self.table.setHorizontalHeaderLabels(
            ["HR image", "LR image" if form == "pairs" else "parsing labels"]
        )
        self._refresh_layer_choices()
        self._on_val_changed()

    def _on_val_changed(self, *_) -> None:
        held = self.val_combo.currentText() in ("", HOLD_OUT)
        self.val_fraction_spin.setVisible(held)
        self.val_fraction_label.setVisible(held)
        pairs = self._form() == "pairs" and not held
        self.val_partner_combo.setVisible(pairs)
        self.val_partner_label.setVisible(pairs)

    def _add_row(self, hr_name: str | None = None, partner_name: str | None = None) -> None:
        row = self.table.rowCount()
        self.table.insertRow(row)
        hr_combo, partner_combo = QComboBox(), QComboBox()
        self.table.setCellWidget(row, 0, hr_combo)
        self.table.setCellWidget(row, 1, partner_combo)
        self._fill_row(row)
        active = self.viewer.layers.selection.active
        if hr_name is None and isinstance(active, Image) and row == 0:
            hr_name = active.name
        # a name that is not a layer leaves the cell empty (never another layer)
        if hr_name is not None:
            hr_combo.setCurrentIndex(hr_combo.findText(hr_name))
        if partner_name is not None:
            partner_combo.setCurrentIndex(partner_combo.findText(partner_name))

    def _remove_row(self) -> None:
        if self.table.rowCount() > 0:
            self.table.removeRow(self.table.rowCount() - 1)

    def _fill_row(self, row: int) -> None:
        images = layer_names(self.viewer, Image)
        partner_kind = Labels if self._form() == "labels" else Image
        refill_combo(self.table.cellWidget(row, 0), images, keep_empty=True)
        refill_combo(self.table.cellWidget(row, 1), layer_names(self.viewer, partner_kind), [NONE],
                         keep_empty=True)

    def _refresh_layer_choices(self, *_) -> None:
        for row in range(self.table.rowCount()):
            self._fill_row(row)
        images = layer_names(self.viewer, Image)
        refill_combo(self.val_combo, images, [HOLD_OUT])
        refill_combo(self.val_partner_combo, images, [NONE])
        self._on_val_changed()

    def _layer(self, name: str | None):
        if name and name not in (NONE, HOLD_OUT) and name in self.viewer.layers:
            return self.viewer.layers[name]
        return None

    def set_data(self, form: str, rows, val=None, val_partner=None, val_fraction=None) -> None:
        """Choose the training layers: ``rows`` of HR layer (or (HR, partner)) names or layers.

        ``form``: ``"hr"``, ``"pairs"`` or ``"labels"``; ``val``: a validation
        layer (None: hold back ``val_fraction`` of the training data).
        """
        def name(layer):
            return layer if isinstance(layer, str) or layer is None else layer.name

        self.form_combo.setCurrentIndex(self.form_combo.findData(form))
        while self.table.rowCount():
            self.table.removeRow(0)
        for row in rows:
            hr, partner = (row, None) if not isinstance(row, (tuple, list)) else row
            self._add_row(name(hr), name(partner) or NONE)
        self._refresh_layer_choices()
        self.val_combo.setCurrentText(name(val) or HOLD_OUT)
        self.val_partner_combo.setCurrentText(name(val_partner) or NONE)
        if val_fraction is not None:
            self.val_fraction_spin.setValue(float(val_fraction))
        self._on_val_changed()

    # ------------------------------------------------------------------ running

    def _error(self, message: str) -> None:
        self.status.setText(f"<span style='color:#e05050'>{message}</span>")
        show_error(message)

    def _set_running(self, running: bool) -> None:
        self.start_button.setEnabled(not running)
        self.pause_button.setEnabled(running)
        self.stop_button.setEnabled(running)
        for w in (self.model_combo, self.load_file_button, self.form_combo, self.table,
                  self.add_row_button, self.remove_row_button):
            w.setEnabled(not running)
        if not running:
            self.pause_button.setText("Pause")

    def _collect(self) -> dict:
        """Everything a run needs, read (and the layers copied) in the GUI thread."""
        from napari_resolve import bundle
        from napari_resolve.train.finetuning import check_images

        source = self._base_source()
        meta = bundle.read_meta(source)
        form = self._form()
        rows = []
        for row in range(self.table.rowCount()):
            hr = self._layer(self.table.cellWidget(row, 0).currentText())
            partner = self._layer(self.table.cellWidget(row, 1).currentText())
            rows.append((hr, partner))
        if not rows:
            raise InputError("No training layer: add a row in '2 · Training data'")
        images = []
        for hr, partner in rows:
            images += layer_images(hr, partner, form)
        s, channels = int(meta["scale"]), int(meta.get("in_channels", 1))
        parsing = bool(meta.get("labels"))
        images, warnings = check_images(images, scale=s, in_channels=channels,
                                        predicts_parsing=parsing)
        val_images = None
        val_layer = self._layer(self.val_combo.currentText())
        if val_layer is not None:
            partner = self._layer(self.val_partner_combo.currentText())
            val_form = "pairs" if form == "pairs" else "hr"
            if val_form == "pairs" and partner is None:
                raise InputError(f"choose the LR image of the validation layer '{val_layer.name}'")
            val_images = layer_images(val_layer, partner, val_form)
            val_images, w2 = check_images(val_images, scale=s, in_channels=channels,
                                          what="validation")
            warnings += w2
        output = self.output_edit.text().strip()
        if not output:
            raise InputError("No output file: choose where to save the fine-tuned model")
        output = Path(output).expanduser()
        if output.suffix.lower() != ".safetensors":
            raise InputError(f"the output must be a .safetensors file, got {output.name}")
        free = _free_path(output)
        if free != output:
            warnings.append(f"{output.name} exists: saving to {free.name} instead")
        minutes = self.minutes_spin.value() or None
        epochs = self.epochs_spin.value() or None
        return {
            "source": source, "meta": meta, "images": images, "val_images": val_images,
            "warnings": warnings, "output": free, "minutes": minutes, "epochs": epochs,
            "patch_size": self.patch_spin.value() or None, "batch_size": self.batch_spin.value(),
            "learning_rate": self.lr_spin.value(), "device": self.device_combo.currentData(),
            "val_fraction": self.val_fraction_spin.value(), "form": form,
            "val_layer": val_layer,
        }

    def closeEvent(self, event) -> None:  # Qt: a closed panel stops its run
        self._stop_event.set()
        self._pause_event.clear()
        super().closeEvent(event)
