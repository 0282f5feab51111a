"""Issue 18 in a real (headless) napari viewer: layout, status, lazy imports, smaller defects."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap

import numpy as np
import pytest
from qtpy.QtCore import Qt

os.environ.setdefault("NAPARI_CONFIG", os.path.join(tempfile.mkdtemp(), "napari-settings.yaml"))

pytestmark = pytest.mark.gui
RUN_TIMEOUT_MS = 60_000
PANELS = ("Super-resolve", "Fine-tune", "Resolution (decorrelation)")


@pytest.fixture
def errors():
    from napari.utils.notifications import NotificationSeverity, notification_manager

    start = len(notification_manager.records)
    return lambda: [n.message for n in notification_manager.records[start:]
                    if n.severity == NotificationSeverity.ERROR]


@pytest.fixture
def infos():
    from napari.utils.notifications import NotificationSeverity, notification_manager

    start = len(notification_manager.records)
    return lambda: [n.message for n in notification_manager.records[start:]
                    if n.severity == NotificationSeverity.INFO]


def _controls(panel):
    """The visible controls of a panel (labels, buttons, boxes, plots), not containers."""
    from qtpy.QtWidgets import (
        QAbstractButton,
        QAbstractSpinBox,
        QComboBox,
        QLabel,
        QLineEdit,
        QProgressBar,
        QTableWidget,
    )

    kinds = (QAbstractButton, QAbstractSpinBox, QComboBox, QLabel, QLineEdit, QProgressBar,
             QTableWidget)
    out = []
    for w in panel.findChildren(kinds):
        if w.isVisibleTo(panel) and w.width() > 0 and w.height() > 0:
            parent = w.parentWidget()
            # parts of a compound control (the spin box's line edit, the table's buttons)
            if isinstance(parent, (QAbstractSpinBox, QComboBox, QTableWidget)) or (
                    parent is not None and isinstance(parent.parentWidget(), QTableWidget)):
                continue
            out.append(w)
    return out


def _global_rect(w):
    from qtpy.QtCore import QRect

    top_left = w.mapTo(w.window(), w.rect().topLeft())
    return QRect(top_left, w.size())


@pytest.mark.slow  # three panels in a shown window: ~6 s
def test_three_panels_fit_1280x800_without_overlaps(make_napari_viewer, qtbot):
    from napari_resolve.napari._common import ensure_warm

    viewer = make_napari_viewer(show=True)
    window = viewer.window._qt_window
    window.resize(1280, 800)
    viewer.open_sample("napari-resolve", "leukocyte")
    panels = [viewer.window.add_plugin_dock_widget("napari-resolve", name)[1] for name in PANELS]
    ensure_warm()
    panels[1]._on_warm()  # the fine-tune plot appears (as after the background import)
    panels[0].model_combo.setCurrentIndex(1)
    panels[0].model_combo.activated.emit(1)  # a model card (the longest text of the panel)
    qtbot.wait(300)
    window.resize(1280, 800)
    qtbot.wait(300)
    # the window is not forced taller than the screen (today: 1354 px)
    assert window.height() <= 800 and window.minimumSizeHint().height() <= 800
    for panel in panels:
        assert panel.isVisible() and panel.height() > 0
        controls = _controls(panel)
        assert len(controls) > 5
        rects = [(w, _global_rect(w)) for w in controls]
        for i, (a, ra) in enumerate(rects):
            # no control squeezed below what it needs (squeezed form rows overlap)
            assert a.height() >= min(a.minimumSizeHint().height(), a.sizeHint().height()) - 1, (
                type(a).__name__, a.objectName(), a.height(), a.minimumSizeHint().height())
            for b, rb in rects[i + 1:]:
                if a.isAncestorOf(b) or b.isAncestorOf(a):
                    continue
                inter = ra.intersected(rb)
                assert inter.width() <= 1 or inter.height() <= 1, (
                    f"{type(panel).__name__}: {type(a).__name__} '{getattr(a, 'text', str)()}' "
                    f"overlaps {type(b).__name__} '{getattr(b, 'text', str)()}'")


def test_status_reads_added_after_a_one_tile_run_and_errors_clear(make_napari_viewer, qtbot,
                                                                   errors, tmp_path, monkeypatch):
    from qtpy.QtWidgets import QFileDialog

    from napari_resolve.napari import _jobs

    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-resolve", "Super-resolve")
    viewer.add_image(np.random.default_rng(0).random((24, 24)).astype(np.float32), name="small")
    widget._use_baseline(4)
    qtbot.mouseClick(widget.run_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not widget.running, timeout=RUN_TIMEOUT_MS)
    assert widget.status.text() == "Added 'small ×4 (bicubic)'"
    # napari's progress display processes events inside the step handler, so the end of a
    # run can be handled before its last step: the late step must not overwrite "Added"
    widget._on_step(_jobs.Step(1, 1, "tiles"))
    assert widget.status.text() == "Added 'small ×4 (bicubic)'"
    # a red load error goes away once a model loads
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(b"PK\x03\x04 not a model")
    monkeypatch.setattr(QFileDialog, "getOpenFileName", lambda *a, **k: (str(bad), ""))
    qtbot.mouseClick(widget.load_file_button, Qt.MouseButton.LeftButton)
    assert errors() and "e05050" in widget.status.text()
    assert widget.load_model("np-x4")
    assert "e05050" not in widget.status.text()


def test_labels_active_says_which_image_runs_and_rgb_results_have_thumbnails(
        make_napari_viewer, qtbot, errors, infos):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-resolve", "Super-resolve")
    viewer.open_sample("napari-resolve", "leukocyte")
    # the mask lies above the opaque LR layer: switching it on shows it
    names = [layer.name for layer in viewer.layers]
    assert names.index("leukocyte mask (HR)") > names.index("leukocyte (LR)")
    widget._use_baseline(4)
    viewer.layers.selection.active = viewer.layers["leukocyte mask (HR)"]
    assert widget.image_combo.currentText() == "leukocyte (LR)"
    assert "leukocyte (LR)" in widget.run_button.toolTip() and "'leukocyte (" in (
        widget.run_button.text())
    qtbot.mouseClick(widget.run_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not widget.running, timeout=RUN_TIMEOUT_MS)
    assert any("'leukocyte (LR)'" in m and "'leukocyte mask (HR)'" in m for m in infos())
    sr = viewer.layers["leukocyte (LR) ×4 (bicubic)"]
    # RGB result in the input's type: napari draws its thumbnail like the input's, not white
    assert sr.data.dtype == np.uint8 and errors() == []
    thumb = np.asarray(sr.thumbnail)[..., :3].astype(float)
    lr_thumb = np.asarray(viewer.layers["leukocyte (LR)"].thumbnail)[..., :3].astype(float)
    assert thumb.mean() < 250 and abs(thumb.mean() - lr_thumb.mean()) < 20


def test_tile_box_is_bounded_by_the_model(make_napari_viewer):
    from napari_resolve.predict import default_overlap

    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-resolve", "Super-resolve")
    assert widget.load_model("gp-x4")
    ov = default_overlap(widget.model)
    assert ov > 0 and widget.tile_spin.minimum() == 2 * ov and widget.tile() is None
    widget.tile_spin.stepBy(1)  # the first step up is a tile the core accepts
    assert widget.tile() > 2 * ov


def test_mrc_opens_with_its_pixel_size(make_napari_viewer, sample_dir, errors):
    path = sample_dir / "rdl-sim-microtubules-raw" / "MT.mrc"
    viewer = make_napari_viewer()
    layers = viewer.open(str(path), plugin="napari-resolve")
    assert errors() == [] and len(layers) == 1
    layer = layers[0]
    from napari_resolve import io

    data, meta = io.read_image(path)
    assert layer.data.shape == data.shape and layer.name == "MT"
    assert layer.scale[-1] == pytest.approx(meta["pixel_size_yx"][1])
    assert str(layer.units[-1]) in ("µm", "micrometer")


@pytest.mark.slow  # decorrelation of two images and the first matplotlib canvas: ~5 s
def test_resolution_plot_follows_the_theme_keeps_the_peak_clear_and_warns_at_nyquist(
        make_napari_viewer, qtbot):
    from napari_resolve.data.samples import twophoton
    from napari_resolve.napari.resolution_widget import ResolutionWidget

    viewer = make_napari_viewer()
    tp = twophoton("bpae")
    viewer.add_image(tp.raw, name="raw frame")
    viewer.add_image(tp.avg, name="average")
    widget = ResolutionWidget(viewer)
    qtbot.addWidget(widget)
    assert widget.canvas is None  # no matplotlib canvas until there is something to plot
    widget.set_layers("raw frame", "average")
    with qtbot.waitSignal(widget.computed, timeout=60_000) as signal:
        widget.compute()
    report = signal.args[0]
    raw = report.entries[0].result
    # the noisy raw frame reads at the sampling limit: the panel says not to trust it
    assert raw.kc >= 0.95 and "sampling limit" in widget.results_label.text()
    assert not any("'average'" in w for w in report.warnings())
    from matplotlib.colors import to_hex

    from napari_resolve.napari._style import theme_colors

    dark = theme_colors(viewer)
    assert to_hex(widget.figure.get_facecolor()) == dark["background"]
    for ax, entry in zip(widget.figure.axes, report.entries):
        legend = ax.get_legend()
        widget.canvas.draw()
        box = legend.get_window_extent()
        axes_box = ax.get_window_extent()
        assert box.y1 <= axes_box.y0 + 1  # below the axes: the chosen peak stays visible
    viewer.theme = "light"
    widget._plot(report)
    assert to_hex(widget.figure.get_facecolor()) == theme_colors(viewer)["background"] != \
        dark["background"]


@pytest.mark.slow  # a fresh Python with napari: ~10 s
def test_opening_the_panels_imports_neither_torch_nor_matplotlib(tmp_path):
    """The panels appear at once; torch and matplotlib load at the first action that needs them."""
    code = textwrap.dedent("""
        import sys, time
        import napari
        viewer = napari.Viewer(show=False)
        t0 = time.perf_counter()
        for name in ("Super-resolve", "Fine-tune", "Resolution (decorrelation)"):
            viewer.window.add_plugin_dock_widget("napari-resolve", name)
        print("open_s", round(time.perf_counter() - t0, 2))
        print("torch", "torch" in sys.modules)
        print("mpl", "matplotlib.backends.backend_qtagg" in sys.modules)
        viewer.close()
    """)
    env = {**os.environ, "NAPARI_CONFIG": str(tmp_path / "n.yaml")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = dict(line.split(" ", 1) for line in out.stdout.splitlines() if " " in line)
    assert lines["torch"] == "False" and lines["mpl"] == "False", out.stdout


def test_panel_card_is_plain_and_warns_off_domain(make_napari_viewer):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-resolve", "Super-resolve")
    viewer.open_sample("napari-resolve", "leukocyte")
    viewer.layers.selection.active = viewer.layers["leukocyte (LR)"]
    assert widget.load_model("pathsrgan-x4")
    card = widget.card.text()
    assert "better than plain bicubic" in card and "val_psnr" not in card and "/tmp/" not in card
    # a leukocyte crop is not a 4x slide scan: the panel says so (it still runs if asked)
    assert widget.domain_label.isVisibleTo(widget) and "pathsrgan-x4" in widget.domain_label.text()
    viewer.open_sample("napari-resolve", "blood_smear")
    from napari_resolve.data.degrade import imresize

    smear = viewer.layers["blood smear"].data
    viewer.add_image(np.clip(imresize(smear, 0.25, channel_axis=-1), 0, 255).astype(np.uint8),
                     name="smear scan", rgb=True)
    widget.image_combo.setCurrentText("smear scan")
    assert not widget.domain_label.isVisibleTo(widget)


def test_progress_shows_the_time_left(make_napari_viewer, monkeypatch):
    """The engine's estimate when its event has one (issue 17's ``eta_s``), else the rate."""
    import time

    from napari_resolve.napari import _jobs

    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-resolve", "Super-resolve")
    widget._finished_status = False
    widget._on_step(_jobs.Step(0, 1, "tiles", fraction=0.1, eta_s=65.0))
    assert "about 65 s left" in widget.status.text()
    clock = iter([100.0, 110.0])
    monkeypatch.setattr(time, "monotonic", lambda: next(clock))
    widget._rate = None
    widget._on_step(_jobs.Step(1, 10, "tiles"))  # 10 % at t = 100 s
    assert "left" not in widget.status.text()
    widget._on_step(_jobs.Step(3, 10, "tiles"))  # 30 % at t = 110 s: 20 % per 10 s
    assert "about 35 s left" in widget.status.text()
