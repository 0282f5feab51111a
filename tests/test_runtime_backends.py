"""Runtimes (issue 17 item 1, issue 16 item 2): every backend equals eager within 1e-4,
ONNX export of every bundled model that exports, the cache keyed by the weights."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch

from napari_resolve import bundle, runtime
from napari_resolve.data import samples
from napari_resolve.errors import InputError
from napari_resolve.predict import predict
from napari_resolve.runtime import cache
from napari_resolve.runtime.onnx import ExportError, export_onnx, load_onnx, read_onnx_meta

HAS_ORT = importlib.util.find_spec("onnxruntime") is not None
HAS_OV = importlib.util.find_spec("openvino") is not None
NAMES = [p["name"] for p in bundle.pretrained()]
#: FFT channel attention: MHTCUN (paper 003) and its DFCAN baseline
FFT_ARCHS = {"mhtcun", "mhtcun-lite", "dfcan"}
FFT_MODELS = [n for n in NAMES if bundle.read_meta(n)["architecture"] in FFT_ARCHS]
EXPORTABLE = [n for n in NAMES if n not in FFT_MODELS]


@pytest.fixture(autouse=True, scope="module")
def _shared_cache(tmp_path_factory):
    """One cache for the module: each bundle is exported once for both runtimes."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(cache.ENV_VAR, str(tmp_path_factory.mktemp("cache")))
        yield
    runtime._RUNNERS.clear()


@pytest.fixture()
def fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(cache.ENV_VAR, str(tmp_path / "cache"))
    runtime._RUNNERS.clear()
    yield
    runtime._RUNNERS.clear()


def _crop(model):
    """A small real crop: grey two-photon for 1-channel models, the BCCD smear for RGB."""
    if model.in_channels == 3:
        smear, _ = samples.bccd_smear()
        return smear[100:140, 200:244]
    return samples.twophoton("bpae").raw[40:80, 60:104]


def _backends():
    out = []
    for name, present in (("onnxruntime", HAS_ORT), ("openvino", HAS_OV)):
        marks = [] if present else [pytest.mark.skip(reason=f"{name} is not installed")]
        out.append(pytest.param(name, marks=marks))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("name", EXPORTABLE)
def test_backend_equals_eager_on_every_exportable_bundle(name, backend):
    model, meta = bundle.load(name)
    img = _crop(model)
    ref = predict((model, meta), img, backend="eager", device="cpu")
    got = predict((model, meta), img, backend=backend, device="cpu")
    assert got.meta["predict"]["backend"] == backend
    scale = float(np.iinfo(img.dtype).max) if img.dtype.kind in "ui" else 1.0
    assert np.abs(got.image - ref.image).max() / scale < 1e-4
    if ref.labels is not None:  # geometry prior: same parsing map
        assert (got.labels == ref.labels).mean() > 0.999


@pytest.mark.parametrize("name", FFT_MODELS)
def test_fft_models_say_why_they_do_not_export(name, tmp_path):
    with pytest.raises(ExportError, match="torch.fft"):
        export_onnx(name, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()
    if HAS_ORT:
        with pytest.raises(InputError, match="torch.fft"):
            predict(name, np.zeros((20, 20), np.float32), backend="onnxruntime", device="cpu")
    model, _ = bundle.load(name)
    assert runtime.select(model, "auto", torch.device("cpu"), sr_px=1 << 30) == "eager"


@pytest.mark.skipif(not HAS_ORT, reason="onnxruntime is not installed")
def test_onnx_file_predicts_like_the_safetensors_bundle(tmp_path):
    from napari_resolve.cli import main
    from napari_resolve.io import read_image, write_image

    path = export_onnx("np-x4", tmp_path / "np.onnx")
    facts, meta = read_onnx_meta(path)
    assert facts["scale"] == 4 and facts["in_channels"] == 1
    assert meta["normalization"] == bundle.read_meta("np-x4")["normalization"]
    src = tmp_path / "cells.tif"
    write_image(src, samples.twophoton("bpae").raw[:48, :40], pixel_size=0.2, unit="µm")
    for model_arg, out in ((str(path), "a.tif"), ("np-x4", "b.tif")):
        assert main(["predict", str(src), "-o", str(tmp_path / out), "--model", model_arg,
                     "--backend", "auto", "--threads", "1"]) == 0
    a, _ = read_image(tmp_path / "a.tif")
    b, _ = read_image(tmp_path / "b.tif")
    assert a.shape == b.shape == (192, 160)
    assert np.abs(a - b).max() / 65535.0 < 1e-4
    model, _ = load_onnx(path)
    with pytest.raises(InputError, match="onnxruntime"):
        predict((model, meta), np.zeros((20, 20)), backend="openvino")


@pytest.mark.skipif(not HAS_ORT, reason="onnxruntime is not installed")
@pytest.mark.parametrize("name, sizes", [("gp-x4", ((22, 30), (50, 66))),
                                         ("gp-x8", ((11, 15), (26, 34)))])
def test_onnx_export_has_dynamic_sizes_and_a_parsing_output(tmp_path, name, sizes):
    import onnxruntime as ort

    path = export_onnx(name, tmp_path / "gp.onnx")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in sess.get_outputs()] == ["sr", "parsing"]
    model, _ = bundle.load(name)
    c, s = model.in_channels, model.scale  # RGB since the colour prior
    # not a multiple of the model's size rule; under and over the prior's minimum LR side
    # (smaller images are reflect-padded to it inside: the graph must do the same; gp-x8's
    # prior reads the image enlarged 2x first, prior_zoom)
    for hw in sizes:
        x = torch.rand(1, c, *hw)
        sr, parsing = sess.run(None, {"lr": x.numpy()})
        with torch.inference_mode():
            ref = model(x)
        assert sr.shape == (1, c, s * hw[0], s * hw[1])
        assert np.abs(sr - ref["sr"].numpy()).max() < 1e-4
        # compared as probabilities: the guided map is the log of filtered probabilities,
        # whose float noise log() magnifies where a class is all but absent
        prob = torch.softmax(torch.from_numpy(parsing), 1)
        assert (prob - torch.softmax(ref["parsing"], 1)).abs().max() < 1e-4


def test_cache_key_follows_the_weights(tmp_path):
    model, _ = bundle.load("np-x4")
    before = cache.model_hash(model)
    assert cache.model_hash(bundle.load("np-x4")[0]) == before  # same bundle, same key
    with torch.no_grad():
        next(model.parameters()).add_(1e-3)
    assert cache.model_hash(model) != before
    # a bundle file rewritten with other weights gets a new key
    path = bundle.save(tmp_path / "m.safetensors", model, bundle.read_meta("np-x4"))
    assert cache.model_hash(bundle.load(path)[0]) == cache.model_hash(model)


@pytest.mark.skipif(not HAS_ORT, reason="onnxruntime is not installed")
def test_cached_export_is_invalidated_when_the_bundle_changes(fresh_cache):
    from napari_resolve.runtime.onnx import cached_export

    model, meta = bundle.load("np-x4")
    first = cached_export(model, meta)
    assert first.is_file() and cached_export(model, meta) == first  # reused
    with torch.no_grad():
        next(model.parameters()).mul_(1.01)
    second = cached_export(model, meta)
    assert second != first and second.is_file()
    img = samples.twophoton("bpae").raw[:32, :32]
    ref = predict((model, meta), img, backend="eager", device="cpu")
    got = predict((model, meta), img, backend="onnxruntime", device="cpu")
    assert np.abs(got.image - ref.image).max() / 65535.0 < 1e-4  # the new weights ran


@pytest.mark.skipif(not (HAS_ORT or HAS_OV), reason="no ONNX runtime installed")
def test_auto_calibrates_once_and_caches_the_choice(fresh_cache, monkeypatch):
    model, meta = bundle.load("np-x4")
    dev = torch.device("cpu")
    assert runtime.select(model, "auto", dev, sr_px=100) == "eager"  # small job: no export
    assert not (cache.cache_dir() / "calibration.json").exists()
    monkeypatch.setattr(runtime, "PROBE_SIDE", 24)
    choice = runtime.select(model, "auto", dev, sr_px=1 << 30, threads=1)
    table = json.loads((cache.cache_dir() / "calibration.json").read_text())
    (entry,) = table.values()
    assert entry["choice"] == choice and "eager" in entry["seconds"]
    calls = []
    monkeypatch.setattr(runtime, "make_runner", lambda *a, **k: calls.append(a))
    assert runtime.select(model, "auto", dev, sr_px=1 << 30, threads=1) == choice
    assert calls == []  # read from the cache, nothing timed again
    # priors, extras and GPUs stay on eager
    assert runtime.select(model, "auto", dev, sr_px=1 << 30, extras=True) == "eager"


def test_unknown_or_missing_backend_is_refused(monkeypatch):
    with pytest.raises(InputError, match="unknown backend"):
        predict("bicubic", np.zeros((8, 8)), backend="tensorrt")
    monkeypatch.setattr(runtime, "available", lambda: {"eager": True, "compile": True,
                                                       "onnxruntime": False, "openvino": False})
    with pytest.raises(InputError, match=r"napari-resolve\[onnx\]"):
        predict("bicubic", np.zeros((8, 8)), backend="onnxruntime")
    # no extra installed: auto is eager
    model, _ = bundle.load("np-x4")
    assert runtime.select(model, "auto", torch.device("cpu"), sr_px=1 << 30) == "eager"


def test_calibration_key_ignores_the_weights_but_not_the_architecture():
    from napari_resolve import models

    model, _ = bundle.load("np-x4")
    arch = cache.model_hash(model, weights=False)
    with torch.no_grad():
        next(model.parameters()).add_(1.0)  # fine-tuned: same architecture
    assert cache.model_hash(model, weights=False) == arch
    assert cache.model_hash(models.build("np", scale=8), weights=False) != arch


def test_cache_keeps_the_most_recent_graphs(fresh_cache):
    import os
    import time

    for i in range(5):
        f = cache.cache_dir() / f"g{i}.onnx"
        f.write_bytes(b"x")
        os.utime(f, (time.time() - 100 + i, time.time() - 100 + i))
    cache.prune("*.onnx", keep=2)
    assert sorted(p.name for p in cache.cache_dir().glob("*.onnx")) == ["g3.onnx", "g4.onnx"]
