"""``napari-resolve predict`` and ``napari-resolve models`` on real sample images."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from napari_resolve import bundle, models
from napari_resolve.cli import main
from napari_resolve.data import samples
from napari_resolve.data.degrade import imresize
from napari_resolve.io import read_image, write_image


@pytest.fixture()
def tiff_in(tmp_path):
    raw = samples.twophoton("bpae").raw[64:128, 32:112]  # 64 x 80 uint16
    path = tmp_path / "cells.ome.tif"
    write_image(path, raw, pixel_size=0.2, unit="µm")
    return path, raw


def test_predict_tiff_keeps_pixel_size_and_refuses_overwrite(tiff_in, tmp_path, capsys):
    src, raw = tiff_in
    out = tmp_path / "sr.tif"
    assert (
        main(
            [
                "predict",
                str(src),
                "-o",
                str(out),
                "--model",
                "bicubic",
                "--scale",
                "2",
                "--tile",
                "24",
            ]
        )
        == 0
    )
    image, meta = read_image(out)
    assert image.shape == (128, 160) and image.dtype == np.float32
    assert meta["pixel_size_yx"] == pytest.approx((0.1, 0.1))
    assert np.abs(image - np.clip(imresize(raw.astype(np.float64), 2), 0, 65535)).max() < 0.05
    with tifffile.TiffFile(out) as tif:
        assert tif.is_ome
    before = out.stat().st_mtime_ns
    assert main(["predict", str(src), "-o", str(out), "--model", "bicubic", "--scale", "2"]) == 2
    assert "exists" in capsys.readouterr().err and out.stat().st_mtime_ns == before
    assert (
        main(
            [
                "predict",
                str(src),
                "-o",
                str(out),
                "--model",
                "bicubic",
                "--scale",
                "4",
                "--overwrite",
            ]
        )
        == 0
    )
    assert read_image(out)[0].shape == (256, 320)


def test_scale_must_match_a_trained_model(tiff_in, tmp_path, capsys):
    src, _ = tiff_in
    model_file = bundle.save(
        tmp_path / "srcnn.safetensors", models.build("srcnn", scale=2, filters=(4, 2))
    )
    out = tmp_path / "sr.tif"
    assert (
        main(["predict", str(src), "-o", str(out), "--model", str(model_file), "--scale", "3"]) == 2
    )
    err = capsys.readouterr().err
    assert err.startswith("error: --scale 3 does not match") and "x2" in err
    assert not out.exists()
    assert main(["predict", str(src), "-o", str(out), "--model", str(model_file)]) == 0
    assert read_image(out)[0].shape == (128, 160)


def test_png_rgb_in_tiff_out(tmp_path):
    import imageio.v3 as iio

    rgb = samples.ihc()[0][:40, :48]
    src = tmp_path / "tissue.png"
    iio.imwrite(src, rgb)
    out = tmp_path / "tissue_sr.tif"
    assert main(["predict", str(src), "-o", str(out), "--model", "bicubic", "--scale", "2"]) == 0
    image, meta = read_image(out)
    assert image.shape == (80, 96, 3) and meta["rgb"] and meta["pixel_size"] is None


def test_zarr_in_zarr_out(tmp_path):
    import zarr

    raw = samples.twophoton("bpae").raw[:96, :96]
    src = tmp_path / "in.zarr"
    zarr.open_array(
        str(src), mode="w", shape=raw.shape, chunks=(48, 48), dtype="uint16", zarr_format=2
    )[:] = raw
    out = tmp_path / "out.zarr"
    assert main(["predict", str(src), "-o", str(out), "--model", "bicubic", "--scale", "2"]) == 0
    data = np.asarray(zarr.open_group(str(out), mode="r")["0"][:])
    assert data.shape == (192, 192)
    assert np.abs(data - np.clip(imresize(raw.astype(np.float64), 2), 0, 65535)).max() < 0.05


def test_bad_arguments_are_one_line_errors(tiff_in, tmp_path, capsys):
    src, _ = tiff_in
    cases = [
        (["--model", "no-such-model"], "no-such-model"),
        (["--model", "bicubic", "--tile", "4"], "tile"),
        (["--model", "srcnn"], "not a trained model"),
    ]
    for extra, needle in cases:
        assert main(["predict", str(src), "-o", str(tmp_path / "x.tif"), *extra]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error:") and needle in err and err.count("\n") == 1
    assert main(["predict", str(src), "-o", str(tmp_path / "x.png"), "--model", "bicubic"]) == 2
    assert ".tif" in capsys.readouterr().err


def test_models_lists_architectures_and_pretrained(capsys):
    assert main(["models"]) == 0
    text = capsys.readouterr().out
    assert "bicubic" in text and "Pretrained bundles" in text
    assert main(["models", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    names = {a["name"]: a for a in listing["architectures"]}
    assert names["bicubic"]["parameters"] == 0 and "MATLAB" in names["bicubic"]["paper"]
    assert {m.name for m in models.available()} == set(names)


def test_no_background_removal_leaves_the_x4_stage_out(tmp_path, capsys):
    """The x4 fluorescence bundle's out-of-focus stage (issue 13) can be left out for thin
    samples; the output then equals the network's own, and the bundle is untouched."""
    from napari_resolve.data import fluorescence_pairs as FP
    from napari_resolve.predict import predict

    pair = FP.sfsrm_er_sample(samples.sample_root())
    src = tmp_path / "er.tif"
    write_image(src, np.ascontiguousarray(pair.lr[:64, :96]))
    outs = {}
    for flag in ([], ["--no-background-removal"]):
        dst = tmp_path / f"sr{len(flag)}.tif"
        assert main(["predict", str(src), "-o", str(dst), "--model", "mhtcun-lite-x4",
                     "--tile", "0", *flag]) == 0
        outs[len(flag)] = read_image(dst)[0]
    model, meta = bundle.load("mhtcun-lite-x4")
    assert model.haze is not None  # a fresh load still has it
    model.haze = None
    plain = predict((model, meta), pair.lr[:64, :96], tile=0).image
    np.testing.assert_allclose(outs[1], plain, rtol=1e-5, atol=1e-4)
    assert np.abs(outs[0] - outs[1]).max() > 0.05 * np.ptp(outs[1])
    assert main(["predict", str(src), "-o", str(tmp_path / "np.tif"), "--model", "np-x4",
                 "--no-background-removal"]) == 0
    assert "has no background-removal stage" in capsys.readouterr().err
