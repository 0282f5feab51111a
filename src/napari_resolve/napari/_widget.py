"""The "Super-resolve" dock widget: model, super-resolve, edit the parsing map and re-run.

One panel, read top to bottom, because that is the order of the work:

1. **Model** — a bundled model from the list or a ``.safetensors`` file
   (pickled checkpoints are refused with a notification); a card shows what it
   is: architecture, paper, scale, parameters, colour mode, training data,
   validation metrics and the device that will run it.
2. **Super-resolve** — the image layer (the active one by default), tile size
   and overlap, device, current plane or all planes of a stack; the button runs
   :func:`napari_resolve.predict.predict_iter` in a ``thread_worker`` with a
   napari progress bar and a Cancel button. The result is a new Image layer
   ``<input> ×s (arch)`` that overlays the input exactly (docs/architecture.md,
   "Geometry"), with the input's colormap and contrast.
3. **Parsing map** — for models that predict one (paper 000, "gp"): a Labels
   layer ``<input> parsing`` (0 background, 1 cytoplasm red, 2 nucleus blue,
   the colours of paper 000 §3.1). Paint on it and click *Re-run with edited
   parsing map*: the map is the model's geometry prior (paper 000 §2.2, the
   mask encoder input) and the run adds a new layer; nothing is replaced.

The widget is thin: the work is in :mod:`napari_resolve.napari._jobs` and the
core; every problem a user can cause becomes a one-line notification.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from napari.layers import Image, Labels
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from napari_resolve.errors import InputError, ResolveError
from napari_resolve.napari import _jobs
from napari_resolve.napari._common import (
    fill_devices,
    compact_combos,
    fit_width,
    known_devices,
    layer_names,
    model_row,
    pretrained_entries,
    refill_combo,
    scroll_panel,
    when_warm,
    watch_layers,
)
from napari_resolve.napari._style import parsing_style

if TYPE_CHECKING:  # pragma: no cover
    import napari

META_KEY = "napari_resolve"  # layer.metadata key with what made the layer

def available_devices() -> list[str]:
    """Devices torch can use here, best first (CUDA, Apple MPS, CPU)."""
    import torch

    found = []
    if torch.cuda.is_available():
        found.append("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        found.append("mps")
    found.append("cpu")
    return found


def _baseline_label(scale: int) -> str:
    return f"bicubic ×{scale} (baseline, no learning)"


def _fmt_params(n: int) -> str:
    if n == 0:
        return "0 (no weights)"
    if n >= 1e6:
        return f"{n / 1e6:.2f} M"
    if n >= 1e3:
        return f"{n / 1e3:.1f} k"
    return str(n)


def _weights(n: int) -> str:
    return "no learned weights" if n == 0 else f"{_fmt_params(n)} learned weights"


def _short(name: str, n: int = 18) -> str:
    return name if len(name) <= n else name[: n - 1] + "…"


def _fmt_left(seconds: float) -> str:
    s = int(round(max(seconds, 0.0)))
    return f"{s} s" if s < 90 else f"{s // 60} min {s % 60:02d} s"


def _rgb_in_input_type(outcome, dtype):
    """The outcome's images cast to an integer input ``dtype`` (floats stay as they are)."""
    from dataclasses import replace as _replace

    from napari_resolve.data.normalize import to_dtype

    if not np.issubdtype(np.dtype(dtype), np.integer):
        return outcome
    cast = {k: to_dtype(getattr(outcome, k), dtype) for k in ("image", "mr")
            if getattr(outcome, k) is not None}
    return _replace(outcome, **cast)


class ResolveWidget(QWidget):
    """Dock widget with three sections sharing one chosen model (see module docstring).

    Python access for scripts and tests: :meth:`set_model`, :meth:`load_model`,
    :meth:`load_model_file`, :meth:`super_resolve`, :meth:`rerun_with_parsing`,
    :meth:`cancel`; ``model`` and ``meta`` are the chosen model.
    """

    def showEvent(self, event):  # noqa: N802 - Qt: the dock as wide as the filled content
        super().showEvent(event)
        if getattr(self, "scroll", None) is not None:
            fit_width(self.scroll)

    def __init__(self, napari_viewer: napari.viewer.Viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.model = None
        self.meta: dict | None = None
        self.model_source = ""
        self._worker = None
        self._pbar = None
        self._run_info: dict | None = None
        self._cancel_requested = False
        self._memory_models: dict = {}

        self._finished_status = False
        self._rate = None  # (time, fraction) at the first progress event of a run
        # docked with other panels the dock may be short: the panel scrolls, never squeezes
        self.scroll, layout = scroll_panel(self)
        layout.addWidget(self._build_model_section())
        layout.addWidget(self._build_sr_section())
        layout.addWidget(self._build_parsing_section())
        layout.addStretch(1)
        compact_combos(self)
        fit_width(self.scroll)

        watch_layers(self.viewer, self._refresh_layer_choices)
        self.viewer.layers.selection.events.active.connect(self._on_active_layer)
        self.viewer.dims.events.ndisplay.connect(self._update_planes_row)

        self._fill_model_choices()
        self._refresh_layer_choices()
        self._on_active_layer()
        self._update_card()
        self._set_running(False)
        when_warm(self._on_warm)  # torch loads at the first model (the panel opens at once)

    def _on_warm(self) -> None:
        fill_devices(self.device_combo)
        self._update_card()

    # ------------------------------------------------------------------ layout

    def _build_model_section(self) -> QGroupBox:
        box = QGroupBox("1 · Model")
        form = QVBoxLayout(box)
        row, self.model_combo, self.load_file_button, self.card = model_row(
            self, "A model shipped with napari-resolve, or a file you loaded", self.load_model_file
        )
        self.model_combo.activated.connect(self._on_model_chosen)
        from napari_resolve.napari._export import export_button

        self.export_button = export_button(self)
        row.addWidget(self.export_button)
        form.addLayout(row)
        self.card.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        # the off-domain warning first, where it is seen, then the card
        self.domain_label = QLabel("")
        self.domain_label.setWordWrap(True)
        self.domain_label.setVisible(False)
        form.addWidget(self.domain_label)
        form.addWidget(self.card)
        return box

    def _build_sr_section(self) -> QGroupBox:
        box = QGroupBox("2 · Super-resolve")
        outer = QVBoxLayout(box)
        form = QFormLayout()
        self.image_combo = QComboBox()
        self.image_combo.setToolTip("The image layer to super-resolve (the active layer by default)")
        self.image_combo.currentIndexChanged.connect(self._update_planes_row)
        self.image_combo.currentIndexChanged.connect(self._update_domain_warning)
        form.addRow("image", self.image_combo)

        self.planes_combo = QComboBox()
        self.planes_combo.addItems(["current plane", "all planes"])
        self.planes_combo.setToolTip("For stacks: the plane on screen, or every plane")
        form.addRow("planes", self.planes_combo)

        self.tile_spin = QSpinBox()
        self.tile_spin.setRange(0, 16384)
        self.tile_spin.setSingleStep(64)
        self.tile_spin.setValue(0)
        self.tile_spin.setSpecialValueText("auto")
        self.tile_spin.setSuffix(" px")
        self.tile_spin.setToolTip(
            "Input pixels per tile side. 'auto': about 1024 output pixels on the CPU, 2048 on a "
            "GPU. Smaller tiles need less memory; a tile larger than the image runs it in one "
            "piece (paper 000 §2.4 feeds whole cells). A tile must be larger than twice the "
            "overlap: the box starts there."
        )
        form.addRow("tile", self.tile_spin)

        self.overlap_spin = QSpinBox()
        self.overlap_spin.setRange(-1, 512)
        self.overlap_spin.setValue(-1)
        self.overlap_spin.setSpecialValueText("auto")
        self.overlap_spin.setSuffix(" px")
        self.overlap_spin.setToolTip(
            "Input pixels each tile reads beyond its border (blended). 'auto': the model's "
            "receptive field, so tiled = untiled; 32 for models with global operations."
        )
        self.overlap_spin.valueChanged.connect(self._bound_tile)
        form.addRow("overlap", self.overlap_spin)

        self.device_combo = QComboBox()
        fill_devices(self.device_combo)
        self.device_combo.currentIndexChanged.connect(self._update_card)
        form.addRow("device", self.device_combo)
        # only for models with an out-of-focus stage (the x4 fluorescence bundles)
        self.background_check = QCheckBox("remove out-of-focus background")
        self.background_check.setChecked(True)
        self.background_check.setToolTip(
            "The model's calibrated stage that subtracts the blur of planes out of focus "
            "(thick cells). Untick it for thin or TIRF-like samples."
        )
        self.background_check.setVisible(False)
        form.addRow(self.background_check)
        outer.addLayout(form)

        buttons = QHBoxLayout()
        self.run_button = QPushButton("Super-resolve")
        self.run_button.clicked.connect(self.super_resolve)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.cancel)
        buttons.addWidget(self.run_button, 2)
        buttons.addWidget(self.cancel_button, 1)
        self.buttons_row = buttons  # room for more actions (e.g. Export…)
        outer.addLayout(buttons)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        outer.addWidget(self.status)
        return box

    def _build_parsing_section(self) -> QGroupBox:
        box = QGroupBox("3 · Parsing map (geometry prior)")
        outer = QVBoxLayout(box)
        hint = QLabel(
            "Models with a geometry prior add a <b>parsing</b> Labels layer. Fix it with the "
            "brush — label 1 <span style='color:#f24033'>cytoplasm</span>, 2 "
            "<span style='color:#3366ff'>nucleus</span>, 0 background — then re-run: "
            "the edited map guides the model."
        )
        hint.setWordWrap(True)
        outer.addWidget(hint)
        form = QFormLayout()
        self.parsing_combo = QComboBox()
        self.parsing_combo.setToolTip("The Labels layer used as the prior")
        form.addRow("parsing map", self.parsing_combo)
        outer.addLayout(form)
        self.rerun_button = QPushButton("Re-run with edited parsing map")
        self.rerun_button.clicked.connect(self.rerun_with_parsing)
        outer.addWidget(self.rerun_button)
        self.parsing_box = box
        return box

    # ------------------------------------------------------------------ model

    def _fill_model_choices(self) -> None:
        self.model_combo.clear()
        self.model_combo.addItem("— choose a model —", None)
        for entry in pretrained_entries():
            self.model_combo.addItem(f"{entry['name']} — {entry['summary']}", ("pretrained", entry["name"]))
        for scale in (4, 8):
            self.model_combo.addItem(_baseline_label(scale), ("baseline", scale))

    def _on_model_chosen(self, index: int) -> None:
        choice = self.model_combo.itemData(index)
        if choice is None:
            return
        kind, value = choice
        if kind == "baseline":
            self._use_baseline(int(value))
        elif kind == "memory":
            model, meta = self._memory_models[value]
            self.set_model(model, meta, source=value)
        else:
            self.load_model(value if kind == "pretrained" else Path(value))

    def _use_baseline(self, scale: int) -> None:
        from napari_resolve import bundle, models
        from napari_resolve.napari._common import ensure_warm

        ensure_warm(self.status)
        model = models.build("bicubic", scale=scale, in_channels=1)
        meta = bundle.default_meta(model)
        meta["color_mode"] = "y"  # colour images: Y bicubic, Cb/Cr bicubic = plain bicubic
        self._set(model, meta, f"bicubic ×{scale} baseline", ("baseline", scale), _baseline_label(scale))

    def load_model_file(self, path) -> bool:
        """Load a ``.safetensors`` model file; False (and a notification) if it is refused."""
        return self.load_model(Path(path))

    def load_model(self, src) -> bool:
        """Load a pretrained name or a file (a :class:`~pathlib.Path`) with :func:`napari_resolve.bundle.load`.

        A pickled checkpoint, an unreadable file or a file that does not fit its
        architecture gives a notification and keeps the current model.
        """
        from napari_resolve import bundle
        from napari_resolve.napari._common import ensure_warm

        ensure_warm(self.status)
        try:
            model, meta = bundle.load(src)
        except ResolveError as exc:
            self._error(f"{exc}. Choose a napari-resolve .safetensors model, a BioImage Model Zoo "
                        "package or a TorchScript model with a declared scale.")
            return False
        if isinstance(src, Path):
            self._set(model, meta, src.name, ("file", str(src)), f"{src.name} (file)")
        else:
            self._set(model, meta, str(src), ("pretrained", str(src)), str(src))
        return True

    def set_model(self, model, meta: dict, source: str = "") -> None:
        """Use ``model`` (an :class:`~napari_resolve.models.SRModel`) with its bundle ``meta``.

        Models given this way (scripts, a model trained in this session) join
        the list, so that the list always shows the model in use.
        """
        source = source or str(meta.get("architecture", "")) or "model"
        self._memory_models[source] = (model, dict(meta))
        self._set(model, meta, source, ("memory", source), f"{source} (this session)")

    def _set(self, model, meta: dict, source: str, choice, label: str) -> None:
        self.model = model
        self.meta = dict(meta)
        self.model_source = source
        if "e05050" in self.status.text():  # an earlier load error is over
            self.status.setText(f"Model: {source}")
        index = self.model_combo.findData(choice)
        if index < 0:
            self.model_combo.addItem(label, choice)
            index = self.model_combo.count() - 1
        self.model_combo.setCurrentIndex(index)
        # from the config: a run in flight takes the stage out of the model for its tiles
        self.background_check.setVisible(bool((getattr(model, "config", None) or {})
                                               .get("haze_weight")))
        self._update_card()
        self._bound_tile()
        self._update_domain_warning()

    def _bound_tile(self, *_) -> None:
        """The tile box starts above 2 × overlap (the model's, for 'auto'): no value it offers fails."""
        ov = self.overlap_spin.value()
        if ov < 0:
            ov = 0
            if self.model is not None:
                from napari_resolve.predict import default_overlap

                ov = int(default_overlap(self.model))
        value = self.tile_spin.value()
        auto = value <= self.tile_spin.minimum()
        self.tile_spin.setMinimum(2 * ov)  # this minimum reads 'auto'
        self.tile_spin.setValue(2 * ov if auto else max(value, 2 * ov + 1))

    def tile(self) -> int | None:
        """The tile side chosen (LR px), None for 'auto'."""
        value = self.tile_spin.value()
        return None if value <= self.tile_spin.minimum() else value

    def _update_domain_warning(self, *_) -> None:
        """Warn (in the panel) when the chosen image does not look like the model's data."""
        from napari_resolve.cards import domain_warning

        layer = self._layer(self.image_combo, Image)
        text = None
        if self.model is not None and layer is not None and not layer.multiscale:
            try:
                lead = _jobs.leading_shape(layer.data.shape, layer.rgb)
                plane = np.asarray(layer.data[self._current_plane(layer)] if lead else layer.data)
                from napari_resolve.napari.resolution_widget import _unit_to_nm

                # only a real calibration (length units on the layer) is compared: a layer in
                # pixels with scale 4 (an LR layer over its HR) is not 4 µm per pixel
                per_unit = _unit_to_nm(layer.units[-1]) if layer.units is not None else None
                px_nm = float(layer.scale[-1]) * per_unit if per_unit else None
                text = domain_warning({**(self.meta or {}), "name": self.model_source}, plane,
                                      rgb=bool(layer.rgb), pixel_size_nm=px_nm)
            except Exception:  # noqa: BLE001 - advice only, never in the way of a run
                text = None
        self.domain_label.setText(f"<span style='color:#e0a030'>⚠ {text}</span>" if text else "")
        self.domain_label.setVisible(bool(text))

    def _predicts_parsing(self) -> bool:
        return bool(self.model is not None and getattr(self.model, "predicts_parsing", False))

    def device(self) -> str:
        """The device a run will use: the choice, or the best available for 'auto'."""
        choice = self.device_combo.currentData()
        return known_devices()[0] if choice in (None, "auto") else choice

    def _update_card(self, *_) -> None:
        dev = self.device().upper()
        dev_note = {"CUDA": "NVIDIA GPU", "MPS": "Apple GPU", "CPU": "no GPU found" if
                    self.device_combo.currentData() == "auto" else "processor"}[dev]
        if self.model is None:
            self.card.setText(
                "<i>No model yet: choose one from the list or load a .safetensors file.</i>"
                f"<br>Device that will be used: <b>{dev}</b> ({dev_note})"
            )
            self.parsing_box.setEnabled(False)
            return
        from napari_resolve.cards import card_html
        from napari_resolve.models import count_parameters

        meta = dict(self.meta or {})
        meta.setdefault("scale", getattr(self.model, "scale", "?"))
        extra = (f"<tr><td style='padding-right:8px;color:#999'>Size</td><td>"
                 f"{_weights(count_parameters(self.model))} · runs on <b>{dev}</b> "
                 f"({dev_note})</td></tr>")
        # the card's main rows; the rest (images, scale, method) when the pointer rests on it
        self.card.setText(f"<b>{self.model_source}</b>" + card_html(
            meta, rows=("For", "Trained on", "How good")).replace("</table>", extra + "</table>"))
        self.card.setToolTip(card_html(meta))
        self.parsing_box.setEnabled(self._predicts_parsing())

    # ------------------------------------------------------------------ layers

    def _refresh_layer_choices(self, *_) -> None:
        for combo, kind in ((self.image_combo, Image), (self.parsing_combo, Labels)):
            refill_combo(combo, layer_names(self.viewer, kind))
        self._update_planes_row()

    def _on_active_layer(self, *_) -> None:
        active = self.viewer.layers.selection.active
        if isinstance(active, Image):
            self.image_combo.setCurrentText(active.name)
        elif isinstance(active, Labels):
            self.parsing_combo.setCurrentText(active.name)
        self._update_image_hint()

    def _update_image_hint(self) -> None:
        """Say which image a run uses when the active layer is not that image (e.g. a Labels layer)."""
        active = self.viewer.layers.selection.active
        chosen = self.image_combo.currentText()
        if active is not None and not isinstance(active, Image) and chosen:
            self.run_button.setToolTip(
                f"Runs on the image chosen above, '{chosen}' (the active layer "
                f"'{active.name}' is not an image)")
            self.run_button.setText(f"Super-resolve '{_short(chosen)}'")
        else:
            self.run_button.setToolTip("Run the model on the image chosen above")
            self.run_button.setText("Super-resolve")

    def _layer(self, combo: QComboBox, kind):
        name = combo.currentText()
        if name and name in self.viewer.layers and isinstance(self.viewer.layers[name], kind):
            return self.viewer.layers[name]
        return None

    def _update_planes_row(self, *_) -> None:
        layer = self._layer(self.image_combo, Image)
        has_planes = bool(layer is not None and _jobs.leading_shape(layer.data.shape, layer.rgb))
        self.planes_combo.setEnabled(has_planes)

    # ------------------------------------------------------------------ running

    def _error(self, message: str) -> None:
        self.status.setText(f"<span style='color:#e05050'>{message}</span>")
        show_error(message)

    def _set_running(self, running: bool) -> None:
        self.run_button.setEnabled(not running)
        self.rerun_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)
        self.model_combo.setEnabled(not running)
        self.load_file_button.setEnabled(not running)

    @property
    def running(self) -> bool:
        return self._worker is not None

    def super_resolve(self) -> None:
        """Run the chosen model on the chosen image layer (button *Super-resolve*).

        When the active layer is not an image (a Labels layer, points…), the
        run uses the image chosen under 'image' and says so.
        """
        active = self.viewer.layers.selection.active
        chosen = self.image_combo.currentText()
        if active is not None and not isinstance(active, Image) and chosen:
            show_info(f"Super-resolving '{chosen}' (the image chosen in the panel); the active "
                      f"layer '{active.name}' is not an image")
        self._start(prior_layer=None)

    def rerun_with_parsing(self) -> None:
        """Run again with the chosen Labels layer as the prior (button *Re-run …*).

        A parsing layer made by this widget remembers its image and plane, and
        the re-run uses them whatever layer is active now; any other Labels
        layer (a mask of your own, a LabelMe file) goes with the image chosen
        under '2 · Super-resolve'.
        """
        layer = self._layer(self.parsing_combo, Labels)
        if layer is None:
            self._error("No parsing Labels layer: run Super-resolve with a geometry-prior model first")
            return
        self._start(prior_layer=layer)

    def cancel(self) -> None:
        """Stop the run between two tiles; no layer is added."""
        if self._worker is not None:
            self._cancel_requested = True
            self.status.setText("Cancelling…")
            self._worker.quit()

    def _current_plane(self, layer) -> tuple[int, ...]:
        lead = _jobs.leading_shape(layer.data.shape, layer.rgb)
        coords = np.asarray(layer.world_to_data(self.viewer.dims.point))[: len(lead)]
        return _jobs.current_index(lead, coords)

    def _make_job(self, prior_layer):
        if self.model is None:
            raise InputError("No model: choose one in '1 · Model' or load a .safetensors file")
        layer = self._layer(self.image_combo, Image)
        made_by = {} if prior_layer is None else prior_layer.metadata.get(META_KEY) or {}
        source = made_by.get("source_layer")
        if source in self.viewer.layers and isinstance(self.viewer.layers[source], Image):
            layer = self.viewer.layers[source]
        else:
            made_by = {}
        if layer is None:
            raise InputError(
                "No image layer: open an image (File ▸ Open, or File ▸ Open Sample ▸ "
                "napari-resolve) and pick it in 'image'"
            )
        if layer.multiscale:
            raise InputError(
                f"'{layer.name}' is a multiscale (pyramid) layer: super-resolve a crop or "
                "use the command line 'napari-resolve predict' on the file"
            )
        meta = self.meta or {}
        channels = int(meta.get("in_channels", getattr(self.model, "in_channels", 1)))
        if channels == 3 and not layer.rgb:
            raise InputError(
                f"model {self.model_source!r} works on RGB images but '{layer.name}' is grey: "
                "choose a grey or Y model, or open the colour image"
            )
        rgb = bool(layer.rgb)
        shape = layer.data.shape
        lead = _jobs.leading_shape(shape, rgb)
        all_planes = bool(lead) and self.planes_combo.currentText() == "all planes"
        plane = None if all_planes else self._current_plane(layer)
        if made_by and lead and len(made_by.get("plane") or ()) == len(lead):
            plane = tuple(made_by["plane"])  # the map of one plane re-runs that plane
        scale = int(meta.get("scale", self.model.scale))
        h, w = (shape[-3:-1] if rgb else shape[-2:])
        prior = None
        if prior_layer is not None:
            if not self._predicts_parsing():
                raise InputError(
                    f"model {self.model_source!r} takes no parsing map: choose a geometry-prior "
                    "(gp) model to re-run with an edited map"
                )
            prior = _jobs.check_parsing_prior(
                prior_layer.data, (scale * h, scale * w), lead, plane,
                layer_name=prior_layer.name, image_name=layer.name, factor=scale,
            )
        job = _jobs.SRJob(
            model=self.model, meta=meta, data=layer.data, rgb=rgb, plane=plane,
            tile=self.tile(),
            overlap=None if self.overlap_spin.value() < 0 else self.overlap_spin.value(),
            device=self.device(), prior=prior,
            background_removal=self.background_check.isChecked(),
        )
        info = {
            "layer": layer,
            "name": layer.name,
            "scale_in": tuple(layer.scale),
            "translate_in": tuple(layer.translate),
            "factor": scale,
            "lead": lead,
            "plane": plane if lead else None,
            "arch": str(meta.get("architecture") or getattr(self.model, "arch", "model")),
            "source": self.model_source,
            "prior": None if prior_layer is None else prior_layer.name,
            "label_names": meta.get("labels") or _jobs.DEFAULT_LABEL_NAMES,
        }
        return job, info

    def _start(self, prior_layer) -> None:
        from napari.qt.threading import thread_worker
        from napari.utils import progress

        if self._worker is not None:
            show_info("A run is already going: wait for it or click Cancel")
            return
        try:
            job, info = self._make_job(prior_layer)
        except ResolveError as exc:
            self._error(str(exc))
            return
        self._run_info = info
        self._finished_status = False
        self._rate = None
        worker = thread_worker(_jobs.run_sr, start_thread=False)(job)
        worker.yielded.connect(self._on_step)
        worker.returned.connect(self._on_returned)
        worker.aborted.connect(self._on_aborted)
        worker.errored.connect(self._on_errored)
        worker.finished.connect(self._on_finished)
        self._worker = worker
        self._pbar = progress(total=0, desc=f"Super-resolve {info['name']}")
        self.status.setText(f"Running {info['arch']} ×{info['factor']} on '{info['name']}'…")
        self._set_running(True)
        worker.start()

    def _on_step(self, step: _jobs.Step) -> None:
        if self._cancel_requested or self._finished_status:
            return
        # the status first: napari's progress display below processes events, and the
        # run's end (with its "Added …" status) may be handled inside it
        left = self._time_left(step)
        self.status.setText(f"{step.stage}: {step.done}/{step.total}"
                            + (f" · about {_fmt_left(left)} left" if left is not None else ""))
        pbar = self._pbar  # may be closed while napari's progress display runs events
        if pbar is not None:
            pbar.total = step.total
            pbar.n = step.done
            pbar.set_description(step.stage)  # also refreshes the display

    def _time_left(self, step) -> float | None:
        """Seconds left: the engine's estimate when the event has one, else from the rate so far."""
        import time

        eta = getattr(step, "eta_s", None)
        if eta is not None:
            return float(eta)
        fraction = getattr(step, "fraction", None)
        if fraction is None:
            fraction = step.done / step.total if step.total else 0.0
        now = time.monotonic()
        if self._rate is None:
            self._rate = (now, fraction)
            return None
        t0, f0 = self._rate
        if fraction <= f0 or now - t0 < 0.5:
            return None
        return (1.0 - fraction) * (now - t0) / (fraction - f0)

    def _on_returned(self, outcome: _jobs.Outcome) -> None:
        if outcome is None:
            return
        self._finished_status = True
        if outcome.error:
            self._error(outcome.error)
            return
        added = self._add_result_layers(outcome, self._run_info or {})
        self.status.setText("Added " + ", ".join(f"'{name}'" for name in added))

    def _on_aborted(self) -> None:
        self._cancel_requested = True

    def _on_errored(self, exc: Exception) -> None:
        # napari's worker already shows the error with its traceback (a bug, not user input)
        self.status.setText(f"<span style='color:#e05050'>Failed: {exc}</span>")

    def _on_finished(self) -> None:
        if self._cancel_requested:
            self.status.setText("Cancelled: no layer added")
        self._cancel_requested = False
        if self._pbar is not None:
            self._pbar.close()
        self._pbar = None
        self._worker = None
        self._set_running(False)

    # ------------------------------------------------------------------ results

    def _geometry(self, info: dict, factor: int | None = None):
        factor = info["factor"] if factor is None else factor
        scale, translate = _jobs.sr_geometry(info["scale_in"], info["translate_in"], factor)
        if info["plane"] is not None and info["lead"]:
            # a single plane of a stack: put it where that plane is
            translate = list(translate)
            for axis, idx in enumerate(info["plane"]):
                translate[axis] += idx * info["scale_in"][axis]
            translate = tuple(translate)
        return scale, translate

    def _add_result_layers(self, outcome: _jobs.Outcome, info: dict) -> list[str]:
        src = info["layer"]
        scale, translate = self._geometry(info)
        provenance = {
            "source_layer": info["name"],
            "model": info["source"],
            "architecture": info["arch"],
            "scale_factor": info["factor"],
            "plane": info["plane"],
            "prior_layer": info["prior"],
        }
        suffix = f" ×{info['factor']} ({info['arch']}" + (", edited prior)" if info["prior"] else ")")
        common = {"scale": scale, "translate": translate, "units": src.units,
                  "axis_labels": src.axis_labels, "affine": src.affine.affine_matrix}
        look = {"rgb": src.rgb, "colormap": None if src.rgb else src.colormap,  # the input's
                "contrast_limits": src.contrast_limits, "gamma": src.gamma, "blending": src.blending}
        if src.rgb:
            # colour results in the input's integer type: napari draws float RGB as 0-1
            # (a 0-255 float result would be a white thumbnail)
            outcome = _rgb_in_input_type(outcome, src.dtype)
        added = []
        if outcome.mr is not None:  # PathSRGAN's ×2 image: its own layer on its own grid,
            # added first so that the finer ×4 layer lies on top of it
            mf = int(outcome.mr_factor)
            mr_scale, mr_translate = self._geometry(info, mf)
            mr_layer = self.viewer.add_image(
                outcome.mr,
                name=f"{info['name']} ×{mf} MR ({info['arch']})",
                metadata={META_KEY: {**provenance, "kind": "mr", "scale_factor": mf}},
                **look,
                **{**common, "scale": mr_scale, "translate": mr_translate},
            )
            added.append(mr_layer.name)
        image_layer = self.viewer.add_image(
            outcome.image,
            name=f"{info['name']}{suffix}",
            metadata={META_KEY: {**provenance, "kind": "sr"}},
            **look,
            **common,
        )
        added.append(image_layer.name)
        # An edited prior was given: the user's layer stays the map; no new one is added.
        if outcome.labels is not None and info["prior"] is None:
            labels_layer = self.viewer.add_labels(
                np.asarray(outcome.labels).astype(np.uint8),
                name=f"{info['name']} parsing",
                metadata={META_KEY: {**provenance, "kind": "parsing"}},
                **parsing_style(info["label_names"]),
                **common,
            )
            added.append(labels_layer.name)
            self.parsing_combo.setCurrentText(labels_layer.name)
        # keep the input the active layer so another click runs on it again
        self.viewer.layers.selection.active = src if src in self.viewer.layers else image_layer
        return added

