"""Issue 15, item 2, and issue 13, item 3: every numeric type is read on its own scale.

The same pixels stored as int16, uint16, int32, int64, uint32, float32 or
float64 must give the same super-resolved image as the float64 ground truth;
signed data keep their sign; wide integers keep their grey levels; the SR of
a uint16 fluorescence image stays on the input's intensity scale.
"""

from __future__ import annotations

import numpy as np
import pytest

from napari_resolve import models
from napari_resolve.data.normalize import Normalizer, from_model_scale, to_model_scale
from napari_resolve.predict import predict

TYPES = ("int16", "uint16", "int32", "int64", "uint32", "uint64", "float32", "float64")


def _smooth(rng, shape=(40, 40)):
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(rng.standard_normal(shape), 2.0)


def _pixels(rng, dtype):
    """Integer-valued test pixels that fit ``dtype``: 0..1000, or -500..500 for signed types."""
    base = _smooth(rng)
    base = (base - base.min()) / (base.max() - base.min()) * 1000.0
    signed = np.issubdtype(np.dtype(dtype), np.signedinteger) or dtype.startswith("float")
    return np.round(base - (500.0 if signed else 0.0))


@pytest.mark.parametrize("dtype", TYPES)
def test_every_type_matches_its_float64_ground_truth(dtype, rng):
    truth = _pixels(rng, dtype)
    bicubic = models.build("bicubic", scale=2)
    want = predict(bicubic, truth.astype(np.float64)).image
    got = predict(bicubic, truth.astype(dtype)).image
    assert got.dtype in (np.float32, np.float64)
    # bicubic overshoot of an integer image is clipped to the type's range: unsigned >= 0
    if np.issubdtype(np.dtype(dtype), np.unsignedinteger):
        want = np.clip(want, 0, None)
        assert got.min() >= 0
    np.testing.assert_allclose(got, want, atol=1e-3 * 1000)
    if truth.min() < 0:
        assert got.min() < -400  # signed data stay signed


def test_int64_with_a_large_offset_keeps_its_grey_levels(rng):
    truth = _pixels(rng, "int64") + 10**12
    got = predict(models.build("bicubic", scale=2), truth.astype(np.int64)).image
    want = predict(models.build("bicubic", scale=2), truth - 10**12).image + 10**12
    assert got.dtype == np.float64  # float32 would keep 1 grey level in 65536 here
    np.testing.assert_allclose(got, want, atol=1e-3)


def test_int16_and_uint16_holding_the_same_pixels_agree_through_a_model(rng):
    pixels = _pixels(rng, "uint16")
    a = predict("np-x4", pixels.astype(np.int16)).image
    b = predict("np-x4", pixels.astype(np.uint16)).image
    assert b.min() >= 0  # uint16 is clipped at 0, int16 may undershoot
    np.testing.assert_allclose(np.clip(a, 0, None), b, atol=1e-3 * 1000)


def test_evaluate_on_int64_reports_the_same_psnr_as_float64(rng, tmp_path, capsys):
    import json

    from napari_resolve.cli import main

    noise = np.round(rng.uniform(0, 1000, (48, 48)))
    rows = {}
    for dtype in ("int64", "int32", "float64"):
        path = tmp_path / f"{dtype}.npy"
        np.save(path, noise.astype(dtype))
        out = tmp_path / f"{dtype}.json"
        assert main(["evaluate", "--hr-only", str(path), "--scale", "2", "--json", str(out)]) == 0
        rows[dtype] = json.loads(out.read_text())["mean"]["psnr"]
    capsys.readouterr()
    assert rows["int64"] < 40, rows  # uniform noise through bicubic: far from 151 dB
    assert rows["int64"] == pytest.approx(rows["float64"], abs=0.05)
    assert rows["int32"] == pytest.approx(rows["float64"], abs=0.05)


# --------------------------------------------------------------------------- intensity scale


def test_the_function_pair_inverts_what_it_fitted(rng):
    image = (rng.poisson(300.0, (32, 32)) + 1200).astype(np.uint16)
    for meta in ({"mode": "dtype"}, {"mode": "percentile", "low": 1, "high": 99.8}):
        x, norm = to_model_scale(image, meta)
        assert x.dtype == np.float32 and -0.5 < x.mean() < 1.5
        back = from_model_scale(x, norm, image.dtype)
        np.testing.assert_allclose(back, image, atol=1e-2)


def test_match_lr_corrects_a_network_that_shifts_the_level(rng):
    """A percentile ('match-lr') bundle whose network darkens: the output keeps the input's mean."""
    from napari_resolve import bundle

    from napari_resolve.models.baselines import Bicubic

    class Darkening(Bicubic):  # bicubic x2, then 0.7 x the level (like the old bundle)
        def forward(self, x, prior=None):
            return {"sr": 0.7 * super().forward(x)["sr"] - 0.05}

    bic = models.build("bicubic", scale=2)
    dark = Darkening(scale=2)
    dark.arch = bic.arch
    meta = bundle.default_meta(bic)
    meta["normalization"] = {"mode": "percentile", "low": 1.0, "high": 99.8}
    fluo = (rng.poisson(200.0 + 800.0 * np.clip(_smooth(rng, (64, 64)), 0, None)) + 100)
    fluo = fluo.astype(np.uint16)
    ref = predict(bic, fluo).image
    out = predict((dark, meta), fluo)
    assert out.meta["predict"]["intensity"]["gain"] == pytest.approx(1 / 0.7, rel=0.02)
    assert abs(out.image.mean() / ref.mean() - 1) < 0.05
    assert out.image.min() >= 0  # uint16 in: on the unsigned scale
    # "as-is" keeps the network's level (the 8-bit SR papers measure it raw)
    meta["normalization"] = {**meta["normalization"], "intensity": "as-is"}
    raw = predict((dark, meta), fluo)
    assert raw.meta["predict"]["intensity"] is None
    assert raw.image.mean() < 0.93 * ref.mean()
    # old bundles: {"mode": "dtype"} loads as before, "as-is"
    assert Normalizer.from_meta({"mode": "dtype"}).intensity == "as-is"
    assert Normalizer.from_meta({"mode": "dtype"}).to_meta() == {"mode": "dtype"}


def test_bundled_fluorescence_model_keeps_the_input_scale(sample_dir, tmp_path, capsys):
    """The API and the CLI: a real uint16 two-photon image, mean within 5 % of bicubic's."""
    from napari_resolve.cli import main
    from napari_resolve.io import read_image, write_image

    path = sorted((sample_dir / "nd-twophoton-srrf").rglob("*_t1.tif"))[0]
    image = read_image(path)[0][:96, :96]
    sr = predict("mhtcun-lite-x2", image).image
    bic = predict(models.build("bicubic", scale=2), image).image
    assert abs(sr.mean() / bic.mean() - 1) < 0.05
    crop = tmp_path / "crop.tif"
    write_image(crop, image)
    out = tmp_path / "sr.tif"
    assert main(["predict", str(crop), "-o", str(out), "--model", "mhtcun-lite-x2"]) == 0
    capsys.readouterr()
    cli_sr = read_image(out)[0]
    assert cli_sr.min() >= 0 and abs(cli_sr.mean() / bic.mean() - 1) < 0.05
