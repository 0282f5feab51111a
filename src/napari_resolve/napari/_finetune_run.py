"""The Fine-tune panel's run: start / pause / stop, progress and plot, before / after results.

:class:`FinetuneRunMixin` holds the methods of
:class:`~napari_resolve.napari.finetune_widget.FinetuneWidget` that act once
the form is filled (sections 4 and 5 of the panel): *Start* runs
:func:`napari_resolve.train.finetuning.finetune_measured_iter` in a
``thread_worker`` (torch threads: :func:`worker_threads`), the progress bar
and the live loss / validation-PSNR plot follow its events, and the report
becomes the before / after table, two layers over the validation region
(on the input's intensity scale, :func:`_on_input_scale`) and the embedded
resolution widget (decorrelation, Descloux 2019; paper 003 §4.4).
The widget's form (sections 1-3) and its state live in
:mod:`napari_resolve.napari.finetune_widget`.
"""

from __future__ import annotations

import math
import threading
from pathlib import Path

import numpy as np
from napari.utils.notifications import show_info, show_warning
from qtpy.QtWidgets import QSizePolicy

from napari_resolve.errors import ResolveError
from napari_resolve.napari._common import ensure_warm
from napari_resolve.napari._finetune_layers import _free_path
from napari_resolve.napari._widget import META_KEY

__all__ = ["FinetuneRunMixin", "worker_threads"]


def worker_threads() -> int:
    """torch threads for a run started from napari: the free cores, one left to the GUI on 2.

    :func:`napari_resolve.threads.choose` (an explicit ``NAPARI_RESOLVE_THREADS``
    wins); on a machine with two usable cores the viewer keeps one, so that
    the window stays responsive while training.
    """
    import os

    from napari_resolve import threads

    n = threads.choose()
    if not os.environ.get(threads.ENV_VAR, "").strip() and threads.usable_cores() <= 2:
        n = min(n, max(1, threads.usable_cores() - 1))
    return n


def _on_input_scale(image, target, normalization) -> np.ndarray:
    """A [0, 1] network output (grey) on the intensity scale and dtype family of ``target``.

    The inverse of the bundle's normalisation fitted to the target (as
    :mod:`napari_resolve.data.normalize` does for predictions), cast to the
    target's integer type when it has one, so the layer sits on its input
    without a brightness seam.
    """
    from napari_resolve.data.normalize import Normalizer, to_dtype

    target = np.asarray(target)
    if target.ndim == 3:  # colour: the model's grey / Y output against the luminance range
        target = target[..., :3].mean(axis=-1).astype(target.dtype)
    out = Normalizer.from_meta(normalization).fit(target).inverse(np.asarray(image))
    if np.issubdtype(target.dtype, np.integer):
        return to_dtype(out, target.dtype)
    return np.asarray(out, dtype=np.float32)


def _hms(seconds: float) -> str:
    s = int(max(0, round(seconds)))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"



class FinetuneRunMixin:
    """The run, progress and results part of the Fine-tune widget (mixed into a QWidget)."""

    @property
    def running(self) -> bool:
        return self._worker is not None

    def _ensure_canvas(self) -> None:
        """Make the loss / PSNR plot (matplotlib) the first time it is needed."""
        if self.canvas is not None:
            return
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        from napari_resolve.napari._style import theme_figure

        self.figure = Figure(figsize=(4.2, 2.2), layout="constrained")
        self.loss_ax = self.figure.add_subplot(1, 2, 1)
        self.psnr_ax = self.figure.add_subplot(1, 2, 2)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(180)
        self.canvas.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        theme_figure(self.figure, self.viewer)
        self._plot_layout.addWidget(self.canvas)
        self._draw_plot()

    def start(self, max_steps: int | None = None):
        """Start fine-tuning (button *Start*); returns the worker, or None after a notification.

        ``max_steps`` bounds the run in optimiser steps (scripts and tests).
        """
        from napari.qt.threading import thread_worker

        if self._worker is not None:
            show_info("Fine-tuning is already running: wait for it or click Stop")
            return None
        ensure_warm(self.status)  # the first run loads torch (saying so)
        self._on_warm()
        from napari_resolve.train.finetuning import finetune_measured_iter

        try:
            run = self._collect()
            run["output"].parent.mkdir(parents=True, exist_ok=True)
        except ResolveError as exc:
            self._error(str(exc))
            return None
        except OSError as exc:
            self._error(f"cannot create the output folder: {exc}")
            return None
        for message in run["warnings"]:
            show_warning(message)
        self._run = run
        self._stop_event = threading.Event()
        self._pause_event = threading.Event()
        self._history = {"step": [], "loss": [], "val_step": [], "psnr": []}
        self.report = None
        self.use_button.setEnabled(False)
        self._draw_plot()
        worker = thread_worker(finetune_measured_iter, start_thread=False)(
            run["source"], run["images"], val_images=run["val_images"],
            val_fraction=run["val_fraction"], epochs=run["epochs"], minutes=run["minutes"],
            max_steps=max_steps, learning_rate=run["learning_rate"],
            patch_size=run["patch_size"], batch_size=run["batch_size"], output=run["output"],
            device=run["device"], stop=self._stop_event, pause=self._pause_event,
            note="fine-tuned in the napari-resolve Fine-tune widget", threads=worker_threads(),
        )
        worker.yielded.connect(self._on_event)
        worker.returned.connect(self._on_report)
        worker.errored.connect(self._on_errored)
        worker.finished.connect(self._on_finished)
        self._worker = worker
        self.progress_bar.setRange(0, 0)  # busy until the first estimate
        self.progress_bar.setFormat("starting…")
        self.status.setText(f"Fine-tuning {run['source']} → {run['output'].name}…")
        self._set_running(True)
        worker.start()
        return worker

    def stop(self) -> None:
        """Stop now, inside the step in flight (button *Stop*); the best weights so far are kept."""
        if self._worker is not None:
            self._stop_event.set()
            self._pause_event.clear()
            self.status.setText("Stopping: measuring the fine-tuned model…")

    def pause(self) -> None:
        """Hold training between two steps (paused time does not count against the minutes)."""
        if self._worker is not None and not self._pause_event.is_set():
            self._pause_event.set()
            self.pause_button.setText("Resume")
            self.status.setText("Paused (after the current step)")

    def resume(self) -> None:
        if self._pause_event.is_set():
            self._pause_event.clear()
            self.pause_button.setText("Pause")
            self.status.setText("Resumed")

    def _toggle_pause(self) -> None:
        self.resume() if self._pause_event.is_set() else self.pause()

    def _on_event(self, ev) -> None:
        self.progressed.emit(ev)
        if ev.kind == "step":
            self._history["step"].append(ev.step)
            self._history["loss"].append(ev.losses.get("total", math.nan))
        elif ev.kind == "epoch" and ev.val:
            self._history["val_step"].append(ev.step)
            self._history["psnr"].append(ev.val.get("psnr", math.nan))
        if not self._plot_timer.isActive():
            self._plot_timer.start()
        self._update_progress(ev)

    def _update_progress(self, ev) -> None:
        run = self._run
        fraction = None
        if ev.total_steps:
            fraction = ev.step / ev.total_steps
        elif run.get("minutes") and ev.eta_s is not None:
            fraction = 1.0 - ev.eta_s / (60.0 * run["minutes"])
        if fraction is not None and ev.kind in ("step", "epoch"):
            self.progress_bar.setRange(0, 1000)
            self.progress_bar.setValue(int(1000 * min(max(fraction, 0.0), 1.0)))
            left = f" · {_hms(ev.eta_s)} left" if ev.eta_s is not None else ""
            self.progress_bar.setFormat(f"%p%{left}")
        if self._stop_event.is_set() or self._pause_event.is_set():
            return
        if ev.kind == "step":
            loss = ev.losses.get("total")
            psnr = self._history["psnr"][-1] if self._history["psnr"] else None
            self.status.setText(
                f"step {ev.step}, epoch {ev.epoch}"
                + (f" · loss {loss:.4g}" if loss is not None else "")
                + (f" · val PSNR {psnr:.2f} dB" if psnr is not None else "")
            )
        elif ev.message:
            self.status.setText(ev.message)

    def _draw_plot(self) -> None:
        if self.canvas is None:
            return
        h = self._history
        self.loss_ax.clear()
        self.psnr_ax.clear()
        if h["step"]:
            # a marker on every point: the first loss point is visible on its own
            self.loss_ax.plot(h["step"], h["loss"], "o-", lw=1, ms=3 if len(h["step"]) < 50 else 0,
                              color="tab:blue")
            finite = [v for v in h["loss"] if math.isfinite(v)]
            if finite and min(finite) > 0 and max(finite) > 20 * min(finite):
                self.loss_ax.set_yscale("log")  # only when the loss spans decades
        if h["val_step"]:
            self.psnr_ax.plot(h["val_step"], h["psnr"], "o-", ms=3, color="tab:orange")
            self.psnr_ax.axhline(h["psnr"][0], ls="--", lw=0.8, color="grey")
        self.loss_ax.set_title("training loss", fontsize="small")
        self.psnr_ax.set_title("validation PSNR (dB)", fontsize="small")
        for ax in (self.loss_ax, self.psnr_ax):
            ax.set_xlabel("step", fontsize="small")
            ax.tick_params(labelsize="x-small")
        from napari_resolve.napari._style import theme_figure

        theme_figure(self.figure, self.viewer)
        self.canvas.draw_idle()

    def _on_report(self, report) -> None:
        self.report = report
        self.bundle_path = Path(report.bundle) if report.bundle is not None else None
        self._draw_plot()
        if report.error:
            if report.traceback:
                import sys

                print(report.traceback, file=sys.stderr)
            self._error(report.error)
        if report.before is not None and report.after is not None:
            html = self._results_html(report)
            if report.psnr_gain is not None and report.psnr_gain <= 0:
                html += f"<br><span style='color:#e0a030'>{report.warnings[-1]}</span>"
                show_warning(report.warnings[-1])
            self.results_label.setText(html)
            try:
                self._show_before_after(report)
            except ResolveError as exc:  # layers removed meanwhile, or too small to measure
                show_warning(f"before/after layers: {exc}")
        if self.bundle_path is not None and self.bundle_path.exists():
            self.use_button.setEnabled(True)
            if not report.error:
                how = {None: "finished", "user": "stopped", "time": "time budget spent",
                       "steps": "step limit reached"}.get(report.stopped, report.stopped)
                self.status.setText(f"Done ({how}): saved {self.bundle_path}")
        self.finished.emit(report)

    def _on_errored(self, exc: Exception) -> None:
        # only a bug outside the training loop gets here (napari shows the traceback)
        self._error(f"Fine-tuning failed: {type(exc).__name__}: {exc}")

    def _on_finished(self) -> None:
        self._worker = None
        self._set_running(False)
        if self.progress_bar.maximum() == 0:
            self.progress_bar.setRange(0, 1000)
        self.progress_bar.setFormat("%p%")
        if self._run.get("output") is not None:  # the next run does not overwrite this one
            self.output_edit.setText(str(_free_path(Path(self._run["output"]))))

    # ------------------------------------------------------------------ results

    @staticmethod
    def _results_html(report) -> str:
        b, a = report.before, report.after
        unit = b.unit

        def res(value):
            return "no peak" if value is None else f"{value:.4g} {unit}"

        rows = [
            "<tr><th></th><th>val PSNR</th><th>fitted*</th><th>SSIM</th><th>resolution</th></tr>",
            (f"<tr><td>base</td><td align='right'>{b.psnr:.2f} dB</td>"
             f"<td align='right'>{b.psnr_affine:.2f} dB</td>"
             f"<td align='right'>{b.ssim:.3f}</td><td align='right'>{res(b.resolution)}</td></tr>"),
            (f"<tr><td><b>fine-tuned</b></td><td align='right'><b>{a.psnr:.2f} dB</b></td>"
             f"<td align='right'>{a.psnr_affine:.2f} dB</td>"
             f"<td align='right'>{a.ssim:.3f}</td>"
             f"<td align='right'><b>{res(a.resolution)}</b></td></tr>"),
        ]
        text = "<table>" + "".join(rows) + "</table>"
        if report.psnr_gain is not None:
            history = getattr(report.result, "history", None) or []
            steps = history[-1].get("step") if history else None
            text += f"PSNR gain <b>{report.psnr_gain:+.2f} dB</b>"
            if steps:
                # the same data and seed give the same figure: runs are reproducible
                text += f" after {steps} step{'s' if steps != 1 else ''}"
            fit_gain = a.psnr_affine - b.psnr_affine
            if math.isfinite(fit_gain):
                text += f" ({fit_gain:+.2f} dB after the intensity fit)"
        refs = report.references or {}
        hr = [r for r in refs.get("hr", []) if r is not None]
        lr = [r for r in refs.get("lr", []) if r is not None]
        if hr or lr:
            text += "<br><i>for reference: "
            parts = []
            if lr:
                parts.append(f"LR input {np.mean(lr):.4g} {unit}")
            if hr:
                parts.append(f"HR target {np.mean(hr):.4g} {unit}")
            text += ", ".join(parts) + "</i>"
        text += "<br><i>* PSNR after the best intensity fit a·SR + b (detail, not brightness)</i>"
        if unit == "px":
            text += "<br><i>no physical pixel size on the layers: resolution in SR pixels</i>"
        return text

    def _show_before_after(self, report) -> None:
        """Two layers over the (first) validation crop, measured by the embedded widget."""
        run = self._run
        val, (y0, x0, _, _) = report.val[0], report.val_crops[0]
        src = self.viewer.layers[val.source] if val.source in self.viewer.layers else None  # noqa: SIM401
        if src is None and run.get("val_layer") is not None:
            src = run["val_layer"]
        scale = tuple(src.scale[-2:]) if src is not None else (1.0, 1.0)
        translate = tuple(src.translate[-2:]) if src is not None else (0.0, 0.0)
        oy, ox = val.origin[0] + y0, val.origin[1] + x0
        translate = (translate[0] + oy * scale[0], translate[1] + ox * scale[1])
        units = tuple(src.units[-2:]) if src is not None else None
        arch = str(run["meta"].get("architecture"))
        y0c, x0c, hc, wc = report.val_crops[0]
        target = np.asarray(val.hr)[y0c:y0c + hc, x0c:x0c + wc]
        added = []
        for label, m in (("base", report.before), ("fine-tuned", report.after)):
            # the distinguishing word first: napari's layer list cuts long names
            name = f"{label} ×{run['meta']['scale']} ({arch}): {val.name}"
            image = _on_input_scale(m.images[0], target, run["meta"].get("normalization"))
            layer = self.viewer.add_image(
                image, name=name, scale=scale, translate=translate, units=units,
                colormap=src.colormap if src is not None and not src.rgb else "gray",
                contrast_limits=(tuple(src.contrast_limits) if src is not None and not src.rgb
                                 else None),
                metadata={META_KEY: {"kind": "finetune-" + label.replace("-", ""),
                                     "bundle": str(report.bundle), "source_layer": val.source}},
            )
            added.append(layer)
        self.resolution.setVisible(True)
        self.resolution.set_layers(added[0], added[1])
        self.resolution.compute()
        self.viewer.layers.selection.active = added[1]

    def use_in_super_resolve(self) -> bool:
        """Load the fine-tuned bundle into the Super-resolve panel (opened if needed)."""
        if self.bundle_path is None or not self.bundle_path.exists():
            self._error("No fine-tuned model yet: run fine-tuning first")
            return False
        _, sr_widget = self.viewer.window.add_plugin_dock_widget("napari-resolve", "Super-resolve")
        return bool(sr_widget.load_model_file(self.bundle_path))
