"""PathSRGAN in the Super-resolve panel: the MR (x2) and HR (x4) results as two layers,
each overlaying the input exactly (docs/architecture.md, Geometry)."""

from __future__ import annotations

import os
import tempfile

import numpy as np
import pytest
from qtpy.QtCore import Qt

os.environ.setdefault("NAPARI_CONFIG", os.path.join(tempfile.mkdtemp(), "napari-settings.yaml"))

from napari_resolve import predict
from napari_resolve.data import samples
from napari_resolve.data.degrade import imresize

pytestmark = pytest.mark.gui


def test_pathsrgan_adds_mr_and_hr_layers_on_their_grids(make_napari_viewer, qtbot):
    from napari.utils.notifications import NotificationSeverity, notification_manager

    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-resolve", "Super-resolve")
    tissue = imresize(samples.ihc()[0][:256, :224], 0.25, channel_axis=-1).astype(np.uint8)
    layer = viewer.add_image(tissue, name="tissue", rgb=True, scale=(1.172, 1.172),
                             translate=(10.0, -4.0))
    start = len(notification_manager.records)
    assert widget.load_model("pathsrgan-x4")
    n = len(viewer.layers)
    qtbot.mouseClick(widget.run_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not widget.running, timeout=60_000)
    errors = [r.message for r in notification_manager.records[start:]
              if r.severity == NotificationSeverity.ERROR]
    assert errors == []
    assert len(viewer.layers) == n + 2
    mr, hr = viewer.layers["tissue ×2 MR (pathsrgan)"], viewer.layers["tissue ×4 (pathsrgan)"]
    assert mr.rgb and hr.rgb
    assert viewer.layers.index(hr) > viewer.layers.index(mr)  # the finer result on top
    assert mr.data.shape == (128, 112, 3) and hr.data.shape == (256, 224, 3)
    assert np.allclose(mr.scale, 1.172 / 2) and np.allclose(hr.scale, 1.172 / 4)
    # the centre of input pixel (i, j) is the centre of the f x f block of each result
    for i, j in [(0, 0), (17, 40), (63, 55)]:
        world = layer.data_to_world((i, j))
        assert np.allclose(mr.world_to_data(world), (2 * i + 0.5, 2 * j + 0.5))
        assert np.allclose(hr.world_to_data(world), (4 * i + 1.5, 4 * j + 1.5))
    assert mr.metadata["napari_resolve"]["kind"] == "mr"
    assert mr.metadata["napari_resolve"]["scale_factor"] == 2
    # the layers hold what the Python API gives, in the input's type (uint8 RGB: proper thumbnails)
    ref = predict.predict("pathsrgan-x4", tissue, extras=True, device="cpu")
    assert mr.data.dtype == hr.data.dtype == tissue.dtype
    np.testing.assert_allclose(np.asarray(mr.data), np.clip(ref.extras["mr"], 0, 255), atol=0.501)
    np.testing.assert_allclose(np.asarray(hr.data), np.clip(ref.image, 0, 255), atol=0.501)
