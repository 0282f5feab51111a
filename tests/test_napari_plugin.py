"""The napari plugin without a viewer: manifest, geometry, priors, samples, reader, writer."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from napari_resolve.errors import InputError
from napari_resolve.napari import _jobs

VENV_BIN = Path(sys.executable).parent


def test_manifest_validates_and_napari_discovers_every_command():
    exe = VENV_BIN / "npe2"
    out = subprocess.run([str(exe), "validate", "napari-resolve"], capture_output=True, text=True,
                         timeout=120, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "valid" in out.stdout

    from npe2 import PluginManager

    pm = PluginManager.instance()
    pm.discover()
    manifest = pm.get_manifest("napari-resolve")
    contrib = manifest.contributions
    assert {s.key for s in contrib.sample_data} >= {"leukocyte", "blood_smear", "twophoton"}
    assert {w.display_name for w in contrib.widgets} >= {"Super-resolve"}
    patterns = set(contrib.readers[0].filename_patterns)
    assert {"*.tif", "*.tiff", "*.ome.tif", "*.json", "*.safetensors"} <= patterns
    assert {tuple(w.layer_types) for w in contrib.writers} >= {("image",), ("labels",)}
    for cmd in contrib.commands:  # every python_name resolves to a callable
        if cmd.python_name:
            assert callable(_resolve(cmd.python_name)), cmd.python_name


def _resolve(python_name: str):
    import importlib

    module, _, attr = python_name.partition(":")
    return getattr(importlib.import_module(module), attr)


@pytest.mark.parametrize("factor", [2, 4, 8])
def test_sr_geometry_maps_input_pixel_centres_to_block_centres(factor):
    rng = np.random.default_rng(factor)
    scale_in = np.array([2.0, 0.13, 0.21])  # (z, y, x), µm
    translate_in = np.array([-4.0, 10.5, -3.25])
    scale, translate = _jobs.sr_geometry(scale_in, translate_in, factor)
    scale, translate = np.array(scale), np.array(translate)
    assert scale[0] == scale_in[0] and translate[0] == translate_in[0]  # planes untouched
    for _ in range(5):
        idx = rng.integers(0, 50, size=3).astype(float)
        world = idx * scale_in + translate_in
        sr_data = (world - translate) / scale
        assert sr_data[0] == pytest.approx(idx[0])
        # centre of input pixel i = centre of the factor x factor block [f i, f i + f)
        assert sr_data[1:] == pytest.approx(factor * idx[1:] + (factor - 1) / 2)
    # the fields coincide: input edge -0.5 px and SR edge -0.5 px are the same world point
    edge_in = -0.5 * scale_in[1:] + translate_in[1:]
    edge_sr = -0.5 * scale[1:] + translate[1:]
    assert edge_sr == pytest.approx(edge_in)
    back_scale, back_translate = _jobs.lr_geometry(scale, translate, factor)
    assert back_scale == pytest.approx(tuple(scale_in))
    assert back_translate == pytest.approx(tuple(translate_in))


def test_check_parsing_prior_names_shape_and_value_problems():
    sr = (40, 48)
    good = np.zeros((3, *sr), np.uint8)
    good[1, 10:20, 10:20] = 2
    kw = {"layer_name": "cell parsing", "image_name": "cell", "factor": 4}
    one = _jobs.check_parsing_prior(good, sr, (3,), (1,), **kw)
    assert one.shape == sr and one[10, 10] == 2
    stack = _jobs.check_parsing_prior(good, sr, (3,), None, **kw)
    assert stack.shape == (3, *sr)
    single = _jobs.check_parsing_prior(good[1:2], sr, (3,), (1,), **kw)  # a 'current plane' map
    np.testing.assert_array_equal(single, good[1])
    with pytest.raises(InputError, match=r"cell parsing.*10×12 px.*×4 grid of 'cell' is 40×48"):
        _jobs.check_parsing_prior(np.zeros((10, 12), np.uint8), sr, (), (), **kw)
    bad = good[0].copy()
    bad[0, 0] = 7
    with pytest.raises(InputError, match="cell parsing.*0 \\(background\\)"):
        _jobs.check_parsing_prior(bad, sr, (), (), **kw)
    with pytest.raises(InputError, match="leading axes"):
        _jobs.check_parsing_prior(good[:2], sr, (3,), None, **kw)


def test_samples_load_fast_and_the_lr_covers_the_hr_field():
    from napari_resolve.data.degrade import imresize
    from napari_resolve.napari import _sample_data

    _sample_data.leukocyte()  # first call pays the imports
    for fn in (_sample_data.leukocyte, _sample_data.blood_smear, _sample_data.twophoton):
        t0 = time.perf_counter()
        layers = fn()
        assert time.perf_counter() - t0 < 1.0, fn.__name__
        assert all(data.nbytes < 2e6 for data, _, _ in layers)
    hr, lr, mask = (layer for layer in _sample_data.leukocyte())
    # the mask is added last: above the opaque LR layer, so switching it on shows it
    assert (hr[2], lr[2], mask[2]) == ("image", "image", "labels")
    np.testing.assert_array_equal(lr[0], imresize(hr[0], 0.25, channel_axis=-1))
    assert lr[0].shape == (75, 75, 3) and set(np.unique(mask[0])) == {0, 1, 2}
    # the SR geometry of the LR layer gives back the HR grid exactly
    scale, translate = _jobs.sr_geometry(lr[1]["scale"], lr[1]["translate"], 4)
    assert scale == (1.0, 1.0) and translate == pytest.approx((0.0, 0.0))


def test_labelme_json_reads_as_parsing_labels(tmp_path):
    from napari_resolve.data import samples
    from napari_resolve.data.labels import labels_to_labelme
    from napari_resolve.napari._reader import get_reader

    (_, mask, _), = samples.wbc(1, ids=[25])
    path = tmp_path / "cell025.json"
    labels_to_labelme(mask, path=path, image_path="025.bmp")
    reader = get_reader(str(path))
    assert reader is not None
    (data, kwargs, kind), = reader(str(path))
    assert kind == "labels" and kwargs["name"] == "cell025 parsing"
    assert data.shape == mask.shape
    # LabelMe polygons have no holes; everything else comes back
    assert np.mean(data == mask) > 0.99
    assert kwargs["features"]["name"] == ["background", "cytoplasm", "nucleus"]
    other = tmp_path / "settings.json"
    other.write_text(json.dumps({"theme": "dark"}))
    assert get_reader(str(other)) is None
    assert get_reader(str(tmp_path / "model.pt")) is None


def test_writer_keeps_data_and_pixel_size_and_refuses_a_fake_calibration(tmp_path):
    from napari_resolve.napari._reader import get_reader
    from napari_resolve.napari._writer import write_image, write_labels

    rng = np.random.default_rng(0)
    image = rng.integers(0, 4000, size=(3, 40, 50), dtype=np.uint16)
    meta = {"scale": (0.5, 0.0625, 0.0625), "units": ("µm", "µm", "µm"), "rgb": False}
    (written,) = write_image(str(tmp_path / "stack.ome.tif"), image, meta)
    (data, kwargs, kind), = get_reader(written)(written)
    assert kind == "image"
    np.testing.assert_array_equal(data, image)
    assert kwargs["scale"][-2:] == pytest.approx((0.0625, 0.0625))

    labels = np.zeros((64, 64), np.uint8)
    labels[10:30, 12:40] = 1
    labels[15:25, 20:30] = 2
    nm = {"scale": (62.6, 62.6), "units": ("nm", "nm")}
    (written,) = write_labels(str(tmp_path / "map.tif"), labels, nm)
    (data, kwargs, kind), = get_reader(written)(written)
    assert kind == "labels"
    np.testing.assert_array_equal(data, labels)
    assert kwargs["scale"] == pytest.approx((0.0626, 0.0626))

    # a layer in pixel units is written without calibration, and read back as pixels
    (written,) = write_image(str(tmp_path / "px.tif"), image[0], {"scale": (1, 1), "units": ("pixel", "pixel")})
    (_, kwargs, _), = get_reader(written)(written)
    assert kwargs["scale"] == (1.0, 1.0) and "units" not in kwargs


def _run_to_end(gen):
    steps = []
    while True:
        try:
            steps.append(next(gen))
        except StopIteration as stop:
            return steps, stop.value


def test_run_sr_reports_memory_and_input_problems_and_keeps_bugs_loud():
    from napari_resolve import bundle
    from napari_resolve.models.baselines import Bicubic

    class Hungry(Bicubic):
        def forward(self, x, prior=None):
            raise MemoryError

    class Broken(Bicubic):
        def forward(self, x, prior=None):
            raise RuntimeError("bug in a model")

    image = np.random.default_rng(0).random((2, 40, 40)).astype(np.float32)

    def job(model, **kw):
        model.arch = "bicubic"
        args = {"model": model, "meta": bundle.default_meta(model), "data": image, "rgb": False,
                "plane": None, "tile": 32, "overlap": None, "device": "cpu", **kw}
        return _jobs.SRJob(**args)

    steps, outcome = _run_to_end(_jobs.run_sr(job(Bicubic(scale=2))))
    assert outcome.error is None and outcome.image.shape == (2, 80, 80)
    assert steps[-1].done == steps[-1].total and len(steps) > 2
    _, outcome = _run_to_end(_jobs.run_sr(job(Bicubic(scale=2), plane=(1,))))
    assert outcome.image.shape == (1, 80, 80)
    _, outcome = _run_to_end(_jobs.run_sr(job(Hungry(scale=2))))
    assert outcome.image is None and outcome.error.startswith("out of memory on CPU with tile 32")
    _, outcome = _run_to_end(_jobs.run_sr(job(Bicubic(scale=2), tile=8)))
    assert "overlap" in outcome.error  # the core's InputError, as one line
    with pytest.raises(_jobs.JobFailed, match="bug in a model"):
        _run_to_end(_jobs.run_sr(job(Broken(scale=2))))
