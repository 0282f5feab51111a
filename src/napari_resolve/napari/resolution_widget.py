"""napari widget: resolution by decorrelation analysis, before and after SR.

Pick an image layer (and optionally its SR result), click *Compute*: the
current plane of each layer is measured with
:func:`napari_resolve.metrics.resolution.decorrelation` (Descloux et al.
2019) in a ``thread_worker``, so napari stays responsive. The widget shows the
resolution of each layer in nm (or in pixels for uncalibrated data), the gain
(input resolution / output resolution) and the d(r) curves with the chosen
peak marked.

Pixel size: ``layer.scale`` of the last axis times ``layer.units`` (napari
>= 0.6) converted to nm. A layer whose units are napari's default ``pixel``
but whose scale is not 1 (or whose partner layer is calibrated) is taken to be
in µm, and the widget says so. When no layer is calibrated, results are in
world pixels (the SR layer's pixels count as 1/s of an input pixel, per the
geometry contract), so the gain is right either way.

For embedding (the fine-tuning widget): ``ResolutionWidget(viewer)`` is a
plain ``QWidget``; :meth:`ResolutionWidget.set_layers` picks the layers,
:meth:`ResolutionWidget.compute` starts a run and the Qt signal ``computed``
carries the :class:`ResolutionReport`. :func:`measure_layers` does the same
synchronously without Qt widgets (for a caller's own worker).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from napari.layers import Image
from napari.utils.notifications import show_error
from qtpy.QtCore import Signal
from qtpy.QtWidgets import (
    QComboBox,
    QFormLayout,
    QLabel,
    QPushButton,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

from napari_resolve.errors import InputError, ResolveError
from napari_resolve.napari._common import layer_names, refill_combo, watch_layers

__all__ = [
    "ResolutionWidget",
    "ResolutionReport",
    "LayerResolution",
    "measure_layers",
    "prepare_jobs",
    "run_jobs",
    "pixel_sizes_nm",
]

NO_LAYER = "—"
#: a cut-off this close to the sampling limit (kc = 1) is noise reaching the highest frequencies
NYQUIST_KC = 0.95


# ----------------------------------------------------------------------------- pixel sizes


def _unit_to_nm(unit) -> float | None:
    """nm per ``unit`` (a pint Unit or a string), or None for pixels / non-lengths."""
    if unit is None:
        return None
    text = str(unit)
    if text in ("", "pixel", "px", "dimensionless"):
        return None
    try:
        import pint

        registry = getattr(unit, "_REGISTRY", None) or pint.get_application_registry()
        quantity = registry.Quantity(1.0, unit if not isinstance(unit, str) else text)
        return float(quantity.to("nanometer").magnitude)
    except Exception:  # unknown spelling or not a length (s, Hz, ...)
        return None


def pixel_sizes_nm(layers) -> tuple[list[float | None], str, str]:
    """Pixel sizes of ``layers`` (last axis) in one unit system: (sizes, unit, note).

    ``unit`` is ``"nm"`` when any layer has length units or the first layer's
    scale is not 1 (layers without length units are then assumed in µm, said
    in ``note``); otherwise ``"px"`` (world pixels: ``scale`` of each layer).
    """
    scales = [float(layer.scale[-1]) for layer in layers]
    per_unit = []
    for layer in layers:
        units = getattr(layer, "units", None)
        per_unit.append(_unit_to_nm(units[-1]) if units is not None else None)
    calibrated = any(f is not None for f in per_unit) or not math.isclose(scales[0], 1.0)
    if not calibrated:
        return scales, "px", "no physical pixel size: resolution in (world) pixels"
    sizes, assumed = [], []
    for layer, scale, factor in zip(layers, scales, per_unit):
        if factor is None:
            factor = 1000.0  # µm, napari's usual convention for microscopy scale
            assumed.append(layer.name)
        sizes.append(scale * factor)
    note = ""
    if assumed:
        note = ("scale assumed in µm for " + ", ".join(f"'{n}'" for n in assumed)
                + " (no length unit on the layer)")
    return sizes, "nm", note


# ----------------------------------------------------------------------------- measuring


@dataclass
class _Job:
    name: str
    data: object  # array-like plane (may be dask; computed in the worker)
    rgb: bool
    pixel_size: float
    unit: str
    plane: tuple


@dataclass(frozen=True)
class LayerResolution:
    """One layer's measurement: its name, plane, and the decorrelation result."""

    name: str
    plane: tuple
    result: object  # DecorrelationResult


@dataclass(frozen=True)
class ResolutionReport:
    """Resolutions of the input (and SR result) with the gain input / output."""

    entries: list[LayerResolution]
    unit: str
    note: str = ""
    gain: float | None = None
    errors: list[str] = field(default_factory=list)

    def html(self) -> str:
        rows = ["<tr><th align='left'>layer</th><th>resolution</th><th>kc</th><th>A0</th></tr>"]
        for e in self.entries:
            r = e.result
            res = f"{r.resolution:.4g} {self.unit}" if r.found else "no peak"
            plane = f" {e.plane}" if e.plane else ""
            rows.append(f"<tr><td>{e.name}{plane}</td><td align='right'><b>{res}</b></td>"
                        f"<td align='right'>{r.kc:.3f}</td><td align='right'>{r.amplitude0:.2f}</td></tr>")
        if self.gain is not None:
            rows.append(f"<tr><td>gain (input / result)</td><td align='right'><b>×{self.gain:.2f}</b>"
                        "</td><td></td><td></td></tr>")
        text = "<table>" + "".join(rows) + "</table>"
        for warning in self.warnings():
            text += f"<br><span style='color:#e0a030'>⚠ {warning}</span>"
        if self.note:
            text += f"<br><i>{self.note}</i>"
        return text

    def warnings(self) -> list[str]:
        """Readings not to trust: a cut-off at the sampling limit (kc ≥ :data:`NYQUIST_KC`)."""
        out = []
        for e in self.entries:
            r = e.result
            if r.found and r.kc >= NYQUIST_KC:
                out.append(
                    f"'{e.name}' reads at the sampling limit (kc {r.kc:.2f}): noise fills the "
                    "highest frequencies, so this is the pixel size, not the optics' resolution. "
                    "Measure an averaged or denoised frame.")
        return out


def _current_plane(layer, viewer) -> tuple:
    lead = layer.data.shape[: layer.data.ndim - (3 if layer.rgb else 2)]
    if not lead:
        return ()
    coords = np.asarray(layer.world_to_data(viewer.dims.point))[: len(lead)] if viewer else np.zeros(len(lead))
    return tuple(int(np.clip(round(float(c)), 0, n - 1)) for c, n in zip(coords, lead))


def prepare_jobs(input_layer, result_layer=None, viewer=None) -> tuple[list[_Job], str, str]:
    """Collect (in the GUI thread) what the worker needs: planes, pixel sizes, unit, note."""
    if input_layer is None:
        raise InputError("No input layer: open an image and pick it as 'input'")
    layers = [input_layer] + ([result_layer] if result_layer is not None else [])
    for layer in layers:
        if not isinstance(layer, Image):
            raise InputError(f"'{layer.name}' is not an image layer")
        if layer.multiscale:
            raise InputError(f"'{layer.name}' is a multiscale (pyramid) layer: measure a crop of it")
    sizes, unit, note = pixel_sizes_nm(layers)
    jobs = []
    for layer, size in zip(layers, sizes):
        plane = _current_plane(layer, viewer)
        jobs.append(_Job(layer.name, layer.data[plane] if plane else layer.data, bool(layer.rgb),
                         size, unit, plane))
    return jobs, unit, note


def run_jobs(jobs: list[_Job], unit: str, note: str = "", variant: str = "reference") -> ResolutionReport:
    """Measure the prepared planes (safe in a worker thread). Bad input -> ``errors``.

    ``variant`` picks the decorrelation algorithm (see
    :func:`napari_resolve.metrics.resolution.decorrelation`).
    """
    from napari_resolve.metrics.resolution import decorrelation

    entries, errors = [], []
    for job in jobs:
        try:
            data = np.asarray(job.data)
            if job.rgb:
                from napari_resolve.data.color import rgb_to_y

                data = rgb_to_y(data[..., :3])
            if data.ndim != 2:
                raise InputError(f"expected a 2D plane, got shape {data.shape}")
            result = decorrelation(data, pixel_size=job.pixel_size, unit=unit, variant=variant)
        except ResolveError as exc:
            errors.append(f"'{job.name}': {exc}")
            continue
        entries.append(LayerResolution(job.name, job.plane, result))
    gain = None
    if len(jobs) == 2 and len(entries) == 2 and all(e.result.found for e in entries):
        gain = entries[0].result.resolution / entries[1].result.resolution
    return ResolutionReport(entries, unit, note, gain, errors)


def measure_layers(input_layer, result_layer=None, viewer=None, *, variant: str = "reference") -> ResolutionReport:
    """:func:`prepare_jobs` + :func:`run_jobs` in one call (blocking)."""
    jobs, unit, note = prepare_jobs(input_layer, result_layer, viewer)
    return run_jobs(jobs, unit, note, variant)


# ----------------------------------------------------------------------------- widget

#: (label, ``decorrelation(variant=...)``) offered by the widget
VARIANT_LABELS = (
    ("Descloux 2019 reference", "reference"),
    ("ImageJ plugin (as paper 003)", "imagej"),
)


class ResolutionWidget(QWidget):
    """Resolution (decorrelation analysis) of an image layer and of its SR result."""

    #: emitted with the :class:`ResolutionReport` when a computation ends
    computed = Signal(object)

    def __init__(self, napari_viewer, parent=None, *, scrolling: bool = True):
        super().__init__(parent)
        from qtpy.QtWidgets import QFrame, QScrollArea

        self.viewer = napari_viewer
        self.report: ResolutionReport | None = None
        self._worker = None

        self.input_combo = QComboBox()
        self.result_combo = QComboBox()
        self.input_combo.setToolTip("Image layer to measure (its current plane)")
        self.result_combo.setToolTip("Optional: its super-resolved result, to show the gain")
        self.variant_combo = QComboBox()
        for label, variant in VARIANT_LABELS:
            self.variant_combo.addItem(label, variant)
        self.variant_combo.setToolTip(
            "Decorrelation algorithm: the published reference (MATLAB ImDecorr), or the ImageJ "
            "plugin's variant that paper 003 (MHTCUN) reports with"
        )
        form = QFormLayout()
        form.addRow("input", self.input_combo)
        form.addRow("SR result", self.result_combo)
        form.addRow("algorithm", self.variant_combo)

        self.compute_button = QPushButton("Compute resolution")
        self.compute_button.clicked.connect(self.compute)
        self.results_label = QLabel("Pick a layer and click <i>Compute resolution</i>.")
        self.results_label.setWordWrap(True)

        # the plot (matplotlib) is made with the first result: the panel opens at once
        self.figure = self.canvas = None

        if scrolling:  # docked with other panels: scroll, never squeeze
            self.scroll = QScrollArea()
            self.scroll.setWidgetResizable(True)
            self.scroll.setFrameShape(QFrame.Shape.NoFrame)
            content = QWidget()
            self.scroll.setWidget(content)
            outer = QVBoxLayout(self)
            outer.setContentsMargins(0, 0, 0, 0)
            outer.addWidget(self.scroll)
            layout = QVBoxLayout(content)
        else:
            layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.compute_button)
        layout.addWidget(self.results_label)
        self._layout = layout

        watch_layers(self.viewer, self._refresh_layer_choices)
        self._refresh_layer_choices()

    # ------------------------------------------------------------------ layers

    def _refresh_layer_choices(self, *_) -> None:
        names = layer_names(self.viewer, Image)
        refill_combo(self.input_combo, names)
        refill_combo(self.result_combo, names, [NO_LAYER])

    def _layer(self, combo: QComboBox):
        name = combo.currentText()
        if name and name != NO_LAYER and name in self.viewer.layers:
            layer = self.viewer.layers[name]
            return layer if isinstance(layer, Image) else None
        return None

    def set_layers(self, input_layer, result_layer=None) -> None:
        """Choose the layers (objects or names); ``result_layer=None`` measures the input only."""
        self._refresh_layer_choices()

        def name(layer):
            return layer if isinstance(layer, str) or layer is None else layer.name

        self.input_combo.setCurrentText(name(input_layer))
        self.result_combo.setCurrentText(name(result_layer) or NO_LAYER)

    # ------------------------------------------------------------------ running

    @property
    def running(self) -> bool:
        return self._worker is not None

    def _error(self, message: str) -> None:
        self.results_label.setText(f"<span style='color:#e05050'>{message}</span>")
        show_error(message)

    def compute(self):
        """Start measuring the chosen layers in a worker; returns the worker (or None)."""
        from napari.qt.threading import thread_worker

        if self._worker is not None:
            return self._worker
        try:
            jobs, unit, note = prepare_jobs(self._layer(self.input_combo),
                                            self._layer(self.result_combo), self.viewer)
        except ResolveError as exc:
            self._error(str(exc))
            return None
        worker = thread_worker(run_jobs, start_thread=False)(jobs, unit, note,
                                                             self.variant_combo.currentData())
        worker.returned.connect(self._on_returned)
        worker.errored.connect(self._on_errored)
        worker.finished.connect(self._on_finished)
        self._worker = worker
        self.compute_button.setEnabled(False)
        self.results_label.setText("Computing…")
        worker.start()
        return worker

    def _on_returned(self, report: ResolutionReport) -> None:
        self.report = report
        if report.errors:
            self._error("; ".join(report.errors))
        if report.entries:
            prefix = self.results_label.text() + "<br>" if report.errors else ""
            self.results_label.setText(prefix + report.html())
        self._plot(report)
        self.computed.emit(report)

    def _on_errored(self, exc: Exception) -> None:
        self._error(f"Resolution estimate failed: {exc}")

    def _on_finished(self) -> None:
        self._worker = None
        self.compute_button.setEnabled(True)

    def _ensure_canvas(self) -> None:
        if self.canvas is not None:
            return
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(4, 3), layout="constrained")
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(220)
        self.canvas.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self._layout.addWidget(self.canvas, stretch=1)

    def _plot(self, report: ResolutionReport) -> None:
        from napari_resolve.metrics.resolution import plot_decorrelation
        from napari_resolve.napari._style import theme_figure

        self._ensure_canvas()
        self.figure.clear()
        n = len(report.entries)
        for i, entry in enumerate(report.entries):
            ax = self.figure.add_subplot(n, 1, i + 1)
            plot_decorrelation(entry.result, ax, title=entry.name)
            ax.title.set_fontsize("small")
            ax.xaxis.label.set_fontsize("small")
            ax.yaxis.label.set_fontsize("small")
            ax.tick_params(labelsize="x-small")
            if ax.get_legend() is not None:
                # below the axes, so that it never hides the chosen peak
                ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.28), ncol=3,
                          fontsize="x-small", frameon=False)
        theme_figure(self.figure, self.viewer)  # napari's dark / light theme
        self.canvas.setMinimumHeight(260 * max(n, 1))
        self.canvas.draw_idle()
