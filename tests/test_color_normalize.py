"""MATLAB rgb2ycbcr / ycbcr2rgb, and the intensity normaliser."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_resolve.data.color import rgb_to_y, rgb_to_ycbcr, ycbcr_to_rgb
from napari_resolve.data.normalize import Normalizer, to_dtype
from napari_resolve.data.samples import twophoton
from napari_resolve.errors import InputError

# MATLAB rgb2ycbcr(uint8(...)) of white, black, red, green, blue: 16 + T*rgb/255 rounded
# half away from zero (white 235, black 16 and red [81 90 240] are the textbook values)
MATLAB_UINT8 = [
    ([255, 255, 255], [235, 128, 128]),
    ([0, 0, 0], [16, 128, 128]),
    ([255, 0, 0], [81, 90, 240]),
    ([0, 255, 0], [145, 54, 34]),
    ([0, 0, 255], [41, 240, 110]),
]


@pytest.mark.parametrize("rgb, ycbcr", MATLAB_UINT8)
def test_uint8_matches_matlab_reference_values(rgb, ycbcr):
    out = rgb_to_ycbcr(np.array([[rgb]], dtype=np.uint8))
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out[0, 0], ycbcr)


def test_float_matches_matlab_formula_and_range(wbc_cell):
    rgb = wbc_cell[0].astype(np.float64) / 255.0
    # BT.601 as in MATLAB's rgb2ycbcr, written out here independently of skimage
    t = np.array([[65.481, 128.553, 24.966], [-37.797, -74.203, 112.0], [112.0, -93.786, -18.214]])
    expected = (np.array([16.0, 128.0, 128.0]) + rgb @ t.T) / 255.0
    out = rgb_to_ycbcr(rgb)
    np.testing.assert_allclose(out, expected, atol=1e-12)
    assert out.dtype == np.float64
    white_black = rgb_to_ycbcr(np.array([[[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]], dtype=np.float32))
    assert white_black.dtype == np.float32
    np.testing.assert_allclose(white_black[0, :, 0], [235 / 255, 16 / 255], atol=1e-6)
    np.testing.assert_allclose(rgb_to_y(rgb), expected[..., 0], atol=1e-12)


def test_round_trips(wbc_cell):
    rgb8 = wbc_cell[0]
    rgb = rgb8.astype(np.float64) / 255.0
    np.testing.assert_allclose(ycbcr_to_rgb(rgb_to_ycbcr(rgb)), rgb, atol=1e-12)
    back8 = ycbcr_to_rgb(rgb_to_ycbcr(rgb8))
    assert back8.dtype == np.uint8
    # uint8 YCbCr has fewer levels (Y: 220): the round trip is off by a couple of levels at most
    assert np.abs(back8.astype(int) - rgb8.astype(int)).max() <= 3
    np.testing.assert_array_equal(ycbcr_to_rgb(np.array([[[235, 128, 128]]], np.uint8)), [[[255, 255, 255]]])
    # uint16 uses the same transform scaled by 65535 (MATLAB: 257 x the uint8 offsets)
    y16 = rgb_to_ycbcr(np.array([[[65535, 0, 0]]], np.uint16))
    np.testing.assert_array_equal(y16[0, 0], np.round(np.array([81.481, 90.203, 240.0]) * 257))


def test_ycbcr_to_rgb_clips_and_channel_axis(wbc_cell):
    out = ycbcr_to_rgb(np.array([[[1.0, 0.0, 1.0]]]))  # far outside the RGB gamut
    assert out.min() >= 0.0 and out.max() <= 1.0
    chw = np.moveaxis(wbc_cell[0], -1, 0)
    np.testing.assert_array_equal(
        np.moveaxis(rgb_to_ycbcr(chw, channel_axis=0), 0, -1), rgb_to_ycbcr(wbc_cell[0])
    )


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.zeros((4, 4)), "3 colour channels"),
        (np.zeros((4, 4, 4)), "3 colour channels"),
        (np.zeros((4, 4, 3), np.int32), "not supported"),
        (np.full((2, 2, 3), np.nan), "NaN"),
        (np.zeros((0, 3)), "empty"),
        (np.array([["r", "g", "b"]]), "numeric"),
    ],
)
def test_colour_bad_input(bad, match):
    with pytest.raises(InputError, match=match):
        rgb_to_ycbcr(bad)


# --- normalisation --------------------------------------------------------------------


def test_dtype_mode(wbc_cell):
    image = wbc_cell[0]
    norm = Normalizer.from_meta({"mode": "dtype"}).fit(image)
    x = norm.forward(image)
    assert x.dtype == np.float32 and x.min() >= 0 and x.max() <= 1
    np.testing.assert_allclose(x, image / 255.0, atol=1e-7)
    np.testing.assert_allclose(norm.inverse(x), image, atol=1e-4)
    u16 = np.array([[100, 1100]], np.uint16)  # other types: by the data (issue 15)
    np.testing.assert_allclose(Normalizer().fit(u16).forward(u16), [[0.0, 1.0]])
    unit = np.array([[0.25, 0.5]], np.float32)  # floats inside [0, 1] are taken as they are
    np.testing.assert_array_equal(Normalizer.from_meta(None).fit(unit).forward(unit), unit)
    floats = np.array([[-0.5, 2.0]], np.float32)  # beyond it: min .. max
    np.testing.assert_allclose(Normalizer.from_meta(None).fit(floats).forward(floats), [[0, 1]])


def test_percentile_mode_on_real_fluorescence():
    raw = twophoton("bpae").raw  # uint16, values 812..53921
    norm = Normalizer.from_meta({"mode": "percentile", "low": 1, "high": 99.8}).fit(raw)
    lo, hi = np.percentile(raw, [1, 99.8])
    assert (norm.lo, norm.hi) == pytest.approx((lo, hi))
    x = norm.forward(raw)
    assert x.dtype == np.float32
    assert np.mean(x < 0) == pytest.approx(0.01, abs=0.005)  # 1 % below 0, not clipped
    assert np.mean(x > 1) == pytest.approx(0.002, abs=0.002)
    back = norm.inverse(x)
    assert back.dtype == np.float32
    np.testing.assert_allclose(back, raw, rtol=1e-5, atol=0.05)
    assert norm.to_meta() == {"mode": "percentile", "low": 1.0, "high": 99.8}
    assert Normalizer.from_meta({"mode": "percentile"}).high == 99.8  # CSBDeep defaults


def test_constant_image_gets_a_span_of_one_unit():
    flat = np.full((32, 32), 1000, np.uint16)
    norm = Normalizer.from_meta({"mode": "percentile"}).fit(flat)
    assert norm.fallback == "constant"
    x = norm.forward(flat)
    assert np.isfinite(x).all()
    np.testing.assert_allclose(x, 0.0)
    np.testing.assert_allclose(norm.inverse(x), 1000, rtol=1e-6)
    sparse = np.zeros((32, 32), np.uint16)  # percentiles coincide: the data's min .. max
    sparse[3, 4] = 5000
    norm = Normalizer.from_meta({"mode": "percentile"}).fit(sparse)
    assert norm.fallback == "dtype" and (norm.lo, norm.hi) == (0.0, 5000.0)


def test_torch_and_dask_inputs_match_numpy():
    import dask.array as da

    raw = twophoton("mouse_kidney").raw[:64, :64]
    norm = Normalizer.from_meta({"mode": "percentile"}).fit(raw)
    ref = norm.forward(raw)
    t = norm.forward(torch.from_numpy(raw.astype(np.float32)))
    assert torch.is_tensor(t)
    np.testing.assert_allclose(t.numpy(), ref, rtol=1e-5, atol=1e-6)
    lazy = da.from_array(raw, chunks=32)
    fitted_lazy = Normalizer.from_meta({"mode": "percentile"}).fit(lazy)
    assert (fitted_lazy.lo, fitted_lazy.hi) == pytest.approx((norm.lo, norm.hi))
    out = fitted_lazy.forward(lazy)
    assert hasattr(out, "compute")  # still lazy
    np.testing.assert_allclose(out.compute(), ref, rtol=1e-6)
    np.testing.assert_allclose(norm.inverse(t).numpy(), raw, rtol=1e-4)


def test_normalizer_bad_input():
    with pytest.raises(InputError, match="NaN"):
        Normalizer.from_meta({"mode": "percentile"}).fit(np.array([[1.0, np.nan]]))
    with pytest.raises(InputError, match="NaN"):
        Normalizer().fit(np.array([[1.0, np.inf]]))
    with pytest.raises(InputError, match="NaN"):
        Normalizer().fit(np.zeros((2, 2))).forward(np.array([np.nan]))
    with pytest.raises(InputError, match="unknown normalization mode"):
        Normalizer.from_meta({"mode": "zscore"})
    with pytest.raises(InputError, match="percentiles"):
        Normalizer.from_meta({"mode": "percentile", "low": 99, "high": 1})
    with pytest.raises(InputError, match="empty"):
        Normalizer().fit(np.zeros((0, 5)))
    with pytest.raises(InputError, match="numeric"):
        Normalizer().fit(np.array([["a"]]))
    with pytest.raises(RuntimeError, match="fit"):
        Normalizer().forward(np.zeros(3))


def test_to_dtype_clips_and_rounds_like_matlab():
    vals = np.array([-3.2, 0.5, 1.5, 2.4999, 254.5, 300.0])
    np.testing.assert_array_equal(to_dtype(vals, np.uint8), [0, 1, 2, 2, 255, 255])
    assert to_dtype(vals, np.uint8).dtype == np.uint8
    np.testing.assert_array_equal(to_dtype(np.array([70000.0, -1.0]), np.uint16), [65535, 0])
    np.testing.assert_array_equal(to_dtype(np.array([-2.5, 2.5]), np.int16), [-3, 3])
    assert to_dtype(vals, np.float32).dtype == np.float32
    np.testing.assert_array_equal(to_dtype(np.array([300, -4]), np.uint8), [255, 0])
    with pytest.raises(InputError, match="NaN"):
        to_dtype(np.array([np.nan]), np.uint8)
