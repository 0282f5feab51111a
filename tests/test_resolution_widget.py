"""The resolution widget in a real napari viewer (Xvfb): it measures real images in a worker."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from napari_resolve.metrics.resolution import decorrelation

pytestmark = pytest.mark.gui


@pytest.fixture(scope="module")
def mt():
    """Real wide-field microtubules from sample_data (62.6 nm pixels)."""
    from napari_resolve.data.samples import mt_widefield

    image, meta = mt_widefield()
    return image, meta.pixel_size


def _wait(qtbot, widget):
    qtbot.waitUntil(lambda: widget.report is not None and not widget.running, timeout=30000)


@pytest.mark.slow  # the first viewer and the Qt matplotlib canvas take ~8 s on 2 shared cores
def test_widget_shows_resolution_in_nm_and_the_gain(make_napari_viewer, qtbot, mt):
    from napari_resolve.napari.resolution_widget import ResolutionWidget

    image, pixel_um = mt
    viewer = make_napari_viewer()
    # "input": the wide-field image optically blurred further; "result": the real image.
    worse = gaussian_filter(image.astype(np.float64), 2.5)
    worse += np.random.default_rng(0).normal(0, 0.01 * np.ptp(image), image.shape)
    viewer.add_image(worse, name="blurred", scale=(pixel_um, pixel_um), units=("µm", "µm"))
    viewer.add_image(image, name="widefield", scale=(pixel_um, pixel_um), units=("µm", "µm"))
    widget = ResolutionWidget(viewer)
    qtbot.addWidget(widget)
    assert widget.input_combo.count() == 2 and widget.result_combo.count() == 3

    widget.set_layers("blurred", viewer.layers["widefield"])
    with qtbot.waitSignal(widget.computed, timeout=30000) as signal:
        widget.compute()
    report = signal.args[0]
    _wait(qtbot, widget)
    assert report is widget.report and report.unit == "nm" and not report.note
    expected = decorrelation(image, pixel_size=pixel_um * 1000, unit="nm")
    result = report.entries[1].result
    assert result.resolution == pytest.approx(expected.resolution)
    shown = widget.results_label.text()
    assert f"{expected.resolution:.4g} nm" in shown
    assert report.gain == pytest.approx(report.entries[0].result.resolution / result.resolution)
    assert report.gain > 1.2 and f"×{report.gain:.2f}" in shown
    # one plot per layer, each with the chosen kc marked
    axes = widget.figure.axes
    assert len(axes) == 2
    for ax, entry in zip(axes, report.entries):
        marked = [line for line in ax.get_lines() if list(line.get_xdata()) == [entry.result.kc]]
        assert marked, "chosen peak not marked"

    # the ImageJ-plugin algorithm (paper 003's numbers) from the same panel
    widget.variant_combo.setCurrentIndex(widget.variant_combo.findData("imagej"))
    with qtbot.waitSignal(widget.computed, timeout=30000) as signal:
        widget.compute()
    _wait(qtbot, widget)
    imagej = signal.args[0].entries[1].result
    expected_ij = decorrelation(image, pixel_size=pixel_um * 1000, unit="nm", variant="imagej")
    assert imagej.variant == "imagej" and imagej.kc == expected_ij.kc != expected.kc
    assert f"{expected_ij.resolution:.4g} nm" in widget.results_label.text()


def test_uncalibrated_layer_gives_pixels_and_sr_pixels_count_as_fractions(
    make_napari_viewer, qtbot, sample_dir
):
    from napari_resolve.data.degrade import imresize
    from napari_resolve.io import read_image
    from napari_resolve.napari.resolution_widget import ResolutionWidget, measure_layers

    root = sample_dir / "nd-twophoton-srrf"
    raw, _ = read_image(next((root / "mouse_kidney_fov01").glob("*_Avg_*.tif")))
    viewer = make_napari_viewer()
    lr = viewer.add_image(raw, name="avg")
    sr = viewer.add_image(imresize(raw.astype(np.float64), 2.0), name="bicubic x2", scale=(0.5, 0.5))
    report = measure_layers(lr, sr, viewer)
    assert report.unit == "px"
    lr_res, sr_res = (e.result for e in report.entries)
    assert sr_res.pixel_size == 0.5 and lr_res.pixel_size == 1.0
    assert lr_res.resolution == pytest.approx(decorrelation(raw).resolution)

    widget = ResolutionWidget(viewer)
    qtbot.addWidget(widget)
    widget.set_layers(lr)
    widget.compute()
    _wait(qtbot, widget)
    assert len(widget.report.entries) == 1 and widget.report.gain is None
    assert f"{lr_res.resolution:.4g} px" in widget.results_label.text()


def test_pixel_units_with_a_scale_are_assumed_micrometres(make_napari_viewer, mt):
    from napari_resolve.napari.resolution_widget import measure_layers

    image, pixel_um = mt
    viewer = make_napari_viewer()
    layer = viewer.add_image(image, scale=(pixel_um, pixel_um))  # napari's default units: pixel
    report = measure_layers(layer, viewer=viewer)
    assert report.unit == "nm" and "assumed in µm" in report.note
    assert report.entries[0].result.pixel_size == pytest.approx(62.6)


def test_current_plane_of_a_stack_is_measured(make_napari_viewer, sample_dir):
    from napari_resolve.io import read_image
    from napari_resolve.napari.resolution_widget import measure_layers

    frames, _ = read_image(sample_dir / "rdl-sim-microtubules-raw" / "MT.mrc")
    viewer = make_napari_viewer()
    layer = viewer.add_image(frames)
    viewer.dims.set_current_step(0, 5)
    report = measure_layers(layer, viewer=viewer)
    assert report.entries[0].plane == (5,)
    assert report.entries[0].result.kc == decorrelation(frames[5]).kc


def test_bad_input_is_a_notification_not_an_exception(make_napari_viewer, qtbot, monkeypatch):
    from napari_resolve.napari import resolution_widget as module

    shown = []
    monkeypatch.setattr(module, "show_error", shown.append)
    viewer = make_napari_viewer()
    widget = module.ResolutionWidget(viewer)
    qtbot.addWidget(widget)
    assert widget.compute() is None  # no layer at all
    assert "No input layer" in shown[-1]

    viewer.add_image(np.zeros((64, 64)), name="flat")
    widget.set_layers("flat")
    widget.compute()
    _wait(qtbot, widget)
    assert "constant" in shown[-1] and "constant" in widget.results_label.text()
    assert widget.report.entries == []
