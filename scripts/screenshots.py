"""Regenerate the screenshots of docs/user-guide.md by driving a real napari viewer.

    xvfb-run -a .venv/bin/python scripts/screenshots.py [--model gp-x4] [--out docs/screenshots]

It opens a viewer (show=True; under Xvfb on a headless machine), loads the
sample data through napari's own menus' code paths (``open_sample``, the
plugin reader), and clicks the buttons of the Super-resolve widget (and of the
Fine-tune widget, ``--finetune-minutes`` of training of the bundled
``mhtcun-lite`` on the two-photon average), so the pictures show what a user
sees with the current code.

``--model``: a pretrained name or a ``.safetensors`` file with a parsing map
(geometry prior, paper 000). Default: the first bundled ``gp`` model; when
none is bundled, an untrained ``gp`` (then the SR and parsing pictures show
the interface, not a trained result, and the script says so).
``--parsing annotated`` shows and edits the sample's annotated mask instead of
the model's map (for a model whose prior net has not learned yet).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
UNTRAINED = "gp (untrained)"


def settle(app, ms: int = 300) -> None:
    end = time.monotonic() + ms / 1000
    while time.monotonic() < end:
        app.processEvents()
        time.sleep(0.01)


def wait_run(app, widget, timeout_s: float = 600) -> None:
    end = time.monotonic() + timeout_s
    while widget.running and time.monotonic() < end:
        app.processEvents()
        time.sleep(0.02)
    if widget.running:
        raise SystemExit("screenshots: a run did not finish in time")
    settle(app, 300)


def close_toasts(app) -> None:
    """Close napari's notification pop-ups (they would hide the canvas)."""
    from napari._qt.dialogs.qt_notification import NapariQtNotification

    for widget in app.allWidgets():
        if isinstance(widget, NapariQtNotification):
            widget.close()


def grab(viewer, app, path: Path) -> None:
    settle(app, 300)
    close_toasts(app)
    settle(app, 300)
    viewer.window._qt_window.grab().save(str(path))
    print(f"wrote {path.relative_to(REPO) if path.is_relative_to(REPO) else path}")


def choose_model(widget, name: str | None) -> str:
    from napari_resolve import bundle, models

    if name:
        ok = widget.load_model_file(name) if Path(name).exists() else widget.load_model(name)
        if not ok:
            raise SystemExit(f"screenshots: cannot load model {name!r}")
        return name
    for entry in bundle.pretrained():
        if bundle.read_meta(entry["path"]).get("architecture") == "gp":
            widget.load_model(entry["name"])
            return entry["name"]
    print("screenshots: no trained gp bundle found; using an UNTRAINED gp model", file=sys.stderr)
    model = models.build("gp", scale=4)
    meta = bundle.default_meta(model)
    meta.update(color_mode="y", training="none (untrained placeholder)")
    widget.set_model(model, meta, source=UNTRAINED)
    return UNTRAINED


def hide_dock(widget) -> None:
    """Hide the dock that holds ``widget`` (napari wraps plugin widgets in a QDockWidget)."""
    from qtpy.QtWidgets import QDockWidget

    parent = widget.parent()
    while parent is not None and not isinstance(parent, QDockWidget):
        parent = parent.parent()
    if parent is not None:
        parent.hide()


def finetune_picture(viewer, app, out: Path, minutes: float) -> None:
    """The Fine-tune panel after a short run of the bundled MHTCUN-lite on the two-photon average."""
    viewer.grid.enabled = False
    viewer.canvas.overlays.scale_bar.visible = False
    viewer.layers.clear()
    viewer.open_sample("napari-resolve", "twophoton")
    average = viewer.layers["two-photon average"]
    for layer in viewer.layers:
        layer.visible = layer is average
    _, tuner = viewer.window.add_plugin_dock_widget("napari-resolve", "Fine-tune")
    tuner.minutes_spin.setValue(minutes)
    tuner.patch_spin.setValue(64)  # as benchmarks/finetune.py: more steps in a short CPU run
    tuner.output_edit.setText(str(Path(tempfile.mkdtemp()) / "mhtcun-lite-x2-finetuned.safetensors"))
    tuner.set_data("hr", [average])
    tuner.start()
    wait_run(app, tuner, timeout_s=60 * minutes + 300)
    end = time.monotonic() + 60
    while tuner.resolution.running and time.monotonic() < end:
        app.processEvents()
        time.sleep(0.02)
    # the held-back band super-resolved by the base (top) and the fine-tuned model (bottom),
    # and the panel scrolled to its before/after section
    viewer.grid.enabled = True
    viewer.grid.shape = (2, 1)
    for layer in viewer.layers:
        layer.visible = layer.name.startswith(("base ×", "fine-tuned ×"))
    viewer.reset_view()
    bar = tuner.scroll.verticalScrollBar()
    bar.setValue(bar.maximum())
    grab(viewer, app, out / "finetune.png")


def panels_picture(app, out: Path) -> None:
    """Three panels docked in a 1280×800 window; the card and the domain warning of pathsrgan-x4."""
    import napari

    viewer = napari.Viewer(show=True, title="napari-resolve")
    window = viewer.window._qt_window
    window.resize(1280, 800)
    window.move(0, 0)
    viewer.open_sample("napari-resolve", "leukocyte")
    docks = {}
    for name in ("Super-resolve", "Fine-tune", "Resolution (decorrelation)"):
        docks[name] = viewer.window.add_plugin_dock_widget("napari-resolve", name)
    widget = docks["Super-resolve"][1]
    viewer.layers.selection.active = viewer.layers["leukocyte (LR)"]
    widget.load_model("pathsrgan-x4")  # a slide-scan model on a leukocyte crop: it warns
    from qtpy.QtCore import Qt

    window.resizeDocks([d for d, _ in docks.values()], [420, 190, 190], Qt.Orientation.Vertical)
    viewer.reset_view()
    grab(viewer, app, out / "panels.png")
    viewer.close()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="pretrained name or .safetensors file with a parsing map")
    parser.add_argument("--out", default=str(REPO / "docs" / "screenshots"))
    parser.add_argument("--size", default="1500x980", help="window size WxH")
    parser.add_argument("--parsing", choices=("auto", "predicted", "annotated"), default="auto",
                        help="map to show and edit: the model's, or the sample's annotated mask "
                        "(auto: the model's when it is trained)")
    parser.add_argument("--finetune-minutes", type=float, default=3.0,
                        help="training time of the fine-tuning picture (default 3)")
    parser.add_argument("--only", choices=("panels",), help="only this picture")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("NAPARI_CONFIG", str(Path(tempfile.mkdtemp()) / "settings.yaml"))

    import napari
    import numpy as np
    from qtpy.QtWidgets import QApplication

    if args.only == "panels":
        viewer = napari.Viewer(show=False)  # makes napari's QApplication
        panels_picture(QApplication.instance(), out)
        viewer.close()
        return 0

    viewer = napari.Viewer(show=True, title="napari-resolve")
    app = QApplication.instance()
    width, height = (int(v) for v in args.size.split("x"))
    viewer.window._qt_window.resize(width, height)
    viewer.window._qt_window.move(0, 0)
    settle(app, 500)

    # 1. the model section: open the leukocyte sample and the widget, choose a model
    viewer.open_sample("napari-resolve", "leukocyte")
    _, widget = viewer.window.add_plugin_dock_widget("napari-resolve", "Super-resolve")
    trained = choose_model(widget, args.model) != UNTRAINED
    lr = viewer.layers["leukocyte (LR)"]
    viewer.layers.selection.active = lr
    viewer.reset_view()
    grab(viewer, app, out / "model.png")

    # 2. super-resolve: input, SR, parsing map and the HR truth in napari's grid view
    widget.run_button.click()
    wait_run(app, widget)
    sr = viewer.layers[f"leukocyte (LR) ×{widget.meta['scale']} ({widget.meta['architecture']})"]
    predicted = viewer.layers["leukocyte (LR) parsing"]
    truth = viewer.layers["leukocyte mask (HR)"]
    hr = viewer.layers["leukocyte (HR)"]
    # an untrained model's parsing map is noise: then show the annotated mask instead
    use_predicted = args.parsing == "predicted" or (args.parsing == "auto" and trained)
    parsing = predicted if use_predicted else truth
    shown = [lr, sr, parsing, hr]
    for layer in viewer.layers:
        layer.visible = layer in shown
    for layer in shown:  # to the top of the layer list, in this order
        viewer.layers.move(viewer.layers.index(layer), len(viewer.layers))
    parsing.opacity = 1.0
    viewer.grid.enabled = True
    viewer.grid.shape = (2, 2)
    viewer.layers.selection.active = sr
    viewer.reset_view()
    grab(viewer, app, out / "super-resolve.png")

    # 3. edit the parsing map with the brush and re-run
    viewer.grid.enabled = False
    for layer in viewer.layers:
        layer.visible = layer in (sr, parsing)
    parsing.opacity = 0.45
    viewer.layers.selection.active = lr
    viewer.layers.selection.active = parsing
    widget.parsing_combo.setCurrentText(parsing.name)
    parsing.mode = "paint"
    parsing.selected_label = 2
    parsing.brush_size = 12
    nucleus = np.argwhere(parsing.data == 2)
    centre = nucleus.mean(axis=0) if len(nucleus) else np.array(parsing.data.shape) / 2
    for k in range(9):  # a stroke from the nucleus into the cytoplasm, as if adding a lobe
        parsing.paint(tuple(centre + (k * 2.0, 20 + k * 5.0)), 2, refresh=True)
    widget.rerun_button.click()
    wait_run(app, widget)
    viewer.layers[-1].visible = False  # keep the edited map on screen
    viewer.layers.selection.active = parsing
    viewer.reset_view()
    viewer.scene.camera.center = (0, *centre)
    viewer.scene.camera.zoom *= 1.6
    grab(viewer, app, out / "parsing-edit.png")

    # 4. physical units: an OME-TIFF with its pixel size, opened with the plugin reader
    from napari_resolve import io
    from napari_resolve.data import samples

    viewer.layers.clear()
    image, meta = samples.mt_widefield()
    tif = Path(tempfile.mkdtemp()) / "microtubules widefield.ome.tif"
    io.write_image(tif, image.astype(np.uint16), pixel_size=meta.pixel_size)
    (layer,) = viewer.open(str(tif), plugin="napari-resolve")
    layer.colormap = "gray"
    viewer.canvas.overlays.scale_bar.visible = True
    widget._use_baseline(4)
    viewer.layers.selection.active = layer
    widget.run_button.click()
    wait_run(app, widget)
    viewer.grid.enabled = True
    viewer.grid.shape = (1, 2)
    viewer.reset_view()
    grab(viewer, app, out / "units.png")

    # 5. fine-tuning (its own panel; the Super-resolve panel is hidden for the picture)
    hide_dock(widget)
    finetune_picture(viewer, app, out, args.finetune_minutes)

    viewer.close()
    # 6. the three panels together on a 1280×800 screen
    panels_picture(app, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
