"""The Super-resolve widget in a real (headless) napari viewer, driven by clicks."""

from __future__ import annotations

import os
import tempfile
import time

import numpy as np
import pytest
import torch
from qtpy.QtCore import Qt

os.environ.setdefault("NAPARI_CONFIG", os.path.join(tempfile.mkdtemp(), "napari-settings.yaml"))

from napari_resolve import bundle, models
from napari_resolve.models.baselines import Bicubic

pytestmark = pytest.mark.gui
RUN_TIMEOUT_MS = 60_000


@pytest.fixture
def errors():
    """Error notifications shown while the test runs."""
    from napari.utils.notifications import NotificationSeverity, notification_manager

    start = len(notification_manager.records)
    return lambda: [
        n.message for n in notification_manager.records[start:]
        if n.severity == NotificationSeverity.ERROR
    ]


@pytest.fixture
def viewer_widget(make_napari_viewer):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-resolve", "Super-resolve")
    return viewer, widget


@pytest.fixture(scope="module")
def gp_file(tmp_path_factory):
    """A small, untrained geometry-prior model (paper 000) saved as a bundle."""
    torch.manual_seed(0)
    model = models.build("gp", scale=4, features=8, encoder_blocks=1, decoder_blocks=1,
                         prior_base_channels=4, prior_depth=2)
    # untrained, the last conv is zero (the net is bicubic until trained); give
    # it weights, as training would, so that the prior reaches the output
    torch.nn.init.normal_(model.sr_net.decoder[-1].weight, std=0.05)
    path = tmp_path_factory.mktemp("models") / "gp-small.safetensors"
    return bundle.save(path, model, {"color_mode": "y", "training": {"data": "none (test)"}})


def click_and_wait(qtbot, widget, button):
    qtbot.mouseClick(button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not widget.running, timeout=RUN_TIMEOUT_MS)


def psnr(a, b, peak=255.0):
    return 10 * np.log10(peak**2 / np.mean((np.asarray(a, float) - np.asarray(b, float)) ** 2))


def test_panels_stay_narrow_with_long_model_summaries(viewer_widget):
    """The bundled models' one-line summaries must not widen the dock over the canvas."""
    from napari_resolve.napari.finetune_widget import FinetuneWidget

    viewer, widget = viewer_widget
    longest = max(len(widget.model_combo.itemText(i)) for i in range(widget.model_combo.count()))
    assert longest > 60  # the entries are long: the check below means something
    assert widget.sizeHint().width() < 500
    assert FinetuneWidget(viewer).model_combo.sizeHint().width() < 400


def test_super_resolve_sample_overlays_the_input(viewer_widget, qtbot, errors):
    viewer, widget = viewer_widget
    viewer.open_sample("napari-resolve", "leukocyte")
    lr, hr = viewer.layers["leukocyte (LR)"], viewer.layers["leukocyte (HR)"]
    assert widget.image_combo.currentText() == "leukocyte (LR)"  # the active layer
    widget.model_combo.setCurrentIndex(widget.model_combo.findText("bicubic ×4", Qt.MatchFlag.MatchStartsWith))
    widget.model_combo.activated.emit(widget.model_combo.currentIndex())
    assert "Size" in widget.card.text() and "CPU" in widget.card.text()
    n = len(viewer.layers)
    click_and_wait(qtbot, widget, widget.run_button)
    assert errors() == []
    assert len(viewer.layers) == n + 1
    sr = viewer.layers["leukocyte (LR) ×4 (bicubic)"]
    assert sr.data.shape == (300, 300, 3) and sr.rgb
    # centre of input pixel (i, j) -> centre of the 4x4 block in world coordinates
    for i, j in [(0, 0), (37, 12), (74, 74)]:
        world = lr.data_to_world((i, j))
        assert np.allclose(sr.world_to_data(world), (4 * i + 1.5, 4 * j + 1.5))
        assert np.allclose(hr.world_to_data(world), (4 * i + 1.5, 4 * j + 1.5))
    assert np.allclose(sr.scale, 1.0) and np.allclose(sr.translate, 0.0)
    assert sr.contrast_limits == lr.contrast_limits
    # it is a real SR of the input: closer to the HR than pixel replication
    nearest = np.repeat(np.repeat(lr.data, 4, 0), 4, 1)
    assert psnr(sr.data, hr.data) > psnr(nearest, hr.data) + 1.0


def test_stack_current_plane_or_all_planes(viewer_widget, qtbot, errors):
    viewer, widget = viewer_widget
    rng = np.random.default_rng(1)
    stack = rng.random((3, 24, 20)).astype(np.float32)
    layer = viewer.add_image(stack, name="stack", scale=(2.0, 0.5, 0.5), translate=(1.0, 0.0, 0.0))
    widget._use_baseline(4)
    viewer.dims.set_point(0, 1.0 + 2 * 2.0)  # world z of plane 2
    assert widget.planes_combo.isEnabled()
    click_and_wait(qtbot, widget, widget.run_button)
    one = viewer.layers[-1]
    assert one.data.shape == (1, 96, 80)
    assert one.translate[0] == pytest.approx(5.0)  # sits on plane 2
    assert one.scale[1:] == pytest.approx((0.125, 0.125))
    plane2_centre = layer.data_to_world((2, 5, 7))
    assert np.allclose(one.world_to_data(plane2_centre), (0, 21.5, 29.5))
    widget.planes_combo.setCurrentText("all planes")
    click_and_wait(qtbot, widget, widget.run_button)
    every = viewer.layers[-1]
    assert every.data.shape == (3, 96, 80)
    np.testing.assert_allclose(every.data[2], one.data[0], atol=1e-5)
    assert errors() == []


def test_gp_parsing_map_edit_and_rerun_changes_sr_only_near_the_edit(viewer_widget, qtbot, errors, gp_file):
    viewer, widget = viewer_widget
    viewer.open_sample("napari-resolve", "leukocyte")
    viewer.open(str(gp_file), plugin="napari-resolve")  # dropping a model file loads it
    assert widget.model is not None and widget.meta["architecture"] == "gp"
    assert "gp-small.safetensors" in widget.card.text()
    viewer.layers.selection.active = viewer.layers["leukocyte (LR)"]
    click_and_wait(qtbot, widget, widget.run_button)
    sr = viewer.layers["leukocyte (LR) ×4 (gp)"]
    parsing = viewer.layers["leukocyte (LR) parsing"]
    assert parsing.data.shape == (300, 300) and set(np.unique(parsing.data)) <= {0, 1, 2}
    assert np.allclose(parsing.scale, sr.scale) and np.allclose(parsing.translate, sr.translate)
    assert parsing.features["name"].tolist() == ["background", "cytoplasm", "nucleus"]
    assert widget.parsing_combo.currentText() == parsing.name

    # re-run with the map as it is, then paint and re-run: compare the two re-runs.
    # The map remembers its image: the re-run ignores which layer is active now.
    viewer.layers.selection.active = sr
    assert widget.image_combo.currentText() == sr.name
    click_and_wait(qtbot, widget, widget.rerun_button)
    assert viewer.layers[-1].name == "leukocyte (LR) ×4 (gp, edited prior)"
    before = np.asarray(viewer.layers[-1].data, dtype=float)
    edited = parsing.data.copy()
    parsing.brush_size = 40
    parsing.paint((150, 150), 2, refresh=True)  # a blob of nucleus in the middle of the cell
    parsing.paint((60, 240), 1, refresh=True)   # and some cytoplasm elsewhere
    changed = parsing.data != edited
    assert changed.sum() > 500
    kept = parsing.data.copy()
    n = len(viewer.layers)
    click_and_wait(qtbot, widget, widget.rerun_button)
    assert errors() == []
    assert len(viewer.layers) == n + 1  # a new layer; nothing replaced
    after_layer = viewer.layers[-1]
    assert "edited prior" in after_layer.name
    np.testing.assert_array_equal(parsing.data, kept)  # the user's labels are untouched
    diff = np.abs(np.asarray(after_layer.data, dtype=float) - before).max(axis=-1)
    assert diff[changed].max() > 0.5
    from scipy.ndimage import binary_dilation

    near = binary_dilation(changed, iterations=20)  # mask encoder + decoder reach 6 px here
    assert diff[~near].max() < 1e-3

    # a wrong-shape or wrong-value map: one notification, nothing lost or added
    wrong = viewer.add_labels(np.zeros((120, 120), np.uint8), name="wrong size")
    widget.parsing_combo.setCurrentText("wrong size")
    n = len(viewer.layers)
    click_and_wait(qtbot, widget, widget.rerun_button)
    assert len(viewer.layers) == n and wrong.data.shape == (120, 120)
    assert any("120×120" in m and "300×300" in m for m in errors())
    parsing.paint((10, 10), 5, refresh=True)
    widget.parsing_combo.setCurrentText(parsing.name)
    click_and_wait(qtbot, widget, widget.rerun_button)
    assert len(viewer.layers) == n and (parsing.data == 5).any()
    assert any("0 (background)" in m for m in errors())


class SlowBicubic(Bicubic):
    """Bicubic that takes 50 ms per tile, to have something to cancel."""

    calls = 0

    def forward(self, x, prior=None):
        SlowBicubic.calls += 1
        time.sleep(0.05)
        return super().forward(x, prior)


def test_cancel_stops_a_long_run_and_adds_no_layer(viewer_widget, qtbot, errors, monkeypatch):
    from napari_resolve import runtime
    from napari_resolve.data import samples

    # eager PyTorch: an exported (ONNX) runtime would never call the slow Python forward
    monkeypatch.setattr(runtime, "select", lambda *args, **kwargs: "eager")
    viewer, widget = viewer_widget
    raw = samples.twophoton("bpae").raw
    viewer.add_image(raw, name="two-photon")
    model = SlowBicubic(scale=4)
    model.arch = "bicubic"
    widget.set_model(model, bundle.default_meta(model), source="slow bicubic")
    widget.tile_spin.setValue(32)  # 225 tiles x 50 ms = 11 s if it ran to the end
    n = len(viewer.layers)
    SlowBicubic.calls = 0
    t0 = time.perf_counter()
    qtbot.mouseClick(widget.run_button, Qt.MouseButton.LeftButton)
    assert widget.running and widget.cancel_button.isEnabled() and not widget.run_button.isEnabled()
    qtbot.waitUntil(lambda: SlowBicubic.calls >= 3, timeout=RUN_TIMEOUT_MS)
    qtbot.mouseClick(widget.cancel_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not widget.running, timeout=RUN_TIMEOUT_MS)
    assert time.perf_counter() - t0 < 5.0
    assert SlowBicubic.calls < 40
    assert len(viewer.layers) == n
    assert "Cancelled" in widget.status.text() and widget.run_button.isEnabled()
    assert errors() == []


def test_user_errors_are_notifications(viewer_widget, qtbot, errors, tmp_path, monkeypatch):
    from qtpy.QtWidgets import QFileDialog

    viewer, widget = viewer_widget
    click_and_wait(qtbot, widget, widget.run_button)
    assert any(m.startswith("No model") for m in errors())
    widget._use_baseline(4)
    click_and_wait(qtbot, widget, widget.run_button)
    assert any(m.startswith("No image layer") for m in errors())

    # pickled checkpoints are refused, whatever their name, and the model stays
    pickled = tmp_path / "model.pt"
    torch.save(models.build("bicubic").state_dict(), pickled)
    disguised = tmp_path / "model.safetensors"
    disguised.write_bytes(pickled.read_bytes())
    for path in (pickled, disguised):
        monkeypatch.setattr(QFileDialog, "getOpenFileName", lambda *a, p=path, **k: (str(p), ""))
        qtbot.mouseClick(widget.load_file_button, Qt.MouseButton.LeftButton)
        assert any(path.name in m and "pickle" in m for m in errors())
    assert widget.model_source == "bicubic ×4 baseline"

    # an RGB model on a grey image
    rgb_model = models.build("bicubic", scale=4, in_channels=3)
    widget.set_model(rgb_model, bundle.default_meta(rgb_model), source="rgb bicubic")
    viewer.add_image(np.zeros((32, 32), np.float32), name="grey")
    n = len(viewer.layers)
    click_and_wait(qtbot, widget, widget.run_button)
    assert len(viewer.layers) == n
    assert any("RGB" in m and "'grey'" in m for m in errors())
    # the tile box offers no tile the core refuses (a tile must exceed 2 x overlap)
    widget._use_baseline(4)
    widget.overlap_spin.setValue(8)
    widget.tile_spin.setValue(16)
    assert widget.tile_spin.minimum() == 16 and widget.tile() is None  # 16 reads 'auto'
    widget.tile_spin.stepBy(1)
    assert widget.tile() == 16 + widget.tile_spin.singleStep()


def test_writer_and_reader_round_trip_in_the_viewer(viewer_widget, tmp_path):
    viewer, _ = viewer_widget
    rng = np.random.default_rng(3)
    image = rng.integers(0, 255, size=(48, 40, 3), dtype=np.uint8)
    viewer.add_image(image, name="colour", rgb=True, scale=(0.25, 0.25), units=("µm", "µm"))
    path = tmp_path / "colour.ome.tif"
    viewer.layers.selection = {viewer.layers["colour"]}
    assert viewer.layers.save(str(path), selected=True, plugin="napari-resolve") == [str(path)]
    labels = np.zeros((48, 40), np.uint8)
    labels[5:20, 5:30] = 1
    labels[8:14, 10:20] = 2
    viewer.add_labels(labels, name="map", scale=(250.0, 250.0), units=("nm", "nm"))
    lpath = tmp_path / "map.tif"
    viewer.layers.selection = {viewer.layers["map"]}
    viewer.layers.save(str(lpath), selected=True, plugin="napari-resolve")

    (back,) = viewer.open(str(path), plugin="napari-resolve")
    assert back.rgb and back.name.startswith("colour")
    np.testing.assert_array_equal(back.data, image)
    assert back.scale == pytest.approx((0.25, 0.25))
    (lback,) = viewer.open(str(lpath), plugin="napari-resolve")
    assert lback.__class__.__name__ == "Labels"
    np.testing.assert_array_equal(lback.data, labels)
    assert lback.scale == pytest.approx((0.25, 0.25))


def test_background_switch_shows_for_the_x4_fluorescence_bundle_only(viewer_widget, qtbot, errors):
    """The out-of-focus stage of mhtcun-lite-x4 (issue 13) can be switched off in the panel;
    the run then gives the network's own output (predict(background_removal=False))."""
    from napari_resolve.data import fluorescence_pairs as FP
    from napari_resolve.data import samples
    from napari_resolve.predict import predict

    viewer, widget = viewer_widget
    lr = np.ascontiguousarray(FP.sfsrm_er_sample(samples.sample_root()).lr[:48, :64])
    viewer.add_image(lr, name="er")
    widget.load_model("np-x4")
    assert not widget.background_check.isVisibleTo(widget)
    widget.load_model("mhtcun-lite-x4")
    assert widget.background_check.isVisibleTo(widget) and widget.background_check.isChecked()
    widget.image_combo.setCurrentIndex(widget.image_combo.findText("er"))
    widget.background_check.setChecked(False)
    click_and_wait(qtbot, widget, widget.run_button)
    assert errors() == []
    got = viewer.layers[-1].data
    plain = predict("mhtcun-lite-x4", lr, background_removal=False).image
    with_stage = predict("mhtcun-lite-x4", lr).image
    np.testing.assert_allclose(got, plain, rtol=1e-4, atol=1e-3 * np.ptp(plain))
    assert np.abs(got - with_stage).max() > 0.05 * np.ptp(plain)
