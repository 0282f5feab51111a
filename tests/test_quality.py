"""PSNR / SSIM as SR papers compute them: hand-checked values, Y channel, border crop."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from napari_resolve.data.color import rgb_to_y
from napari_resolve.data.degrade import imresize
from napari_resolve.errors import InputError
from napari_resolve.metrics import evaluate_pair, psnr, ssim


def test_psnr_hand_values_and_default_ranges():
    hr = np.full((16, 16), 100, np.uint8)
    sr = hr + np.uint8(5)  # MSE 25 on MAX 255
    assert psnr(sr, hr) == pytest.approx(20 * math.log10(255 / 5))
    # the same error in float images on [0, 1]: MAX 1
    assert psnr(sr / 255.0, hr / 255.0) == pytest.approx(20 * math.log10(255 / 5))
    hr16 = np.full((16, 16), 1000, np.uint16)
    assert psnr(hr16 + np.uint16(100), hr16) == pytest.approx(20 * math.log10(65535 / 100))
    assert psnr(sr, hr, data_range=100) == pytest.approx(20 * math.log10(100 / 5))
    assert psnr(hr, hr) == math.inf


def test_y_channel_of_rgb():
    hr = np.full((16, 16, 3), 100, np.uint8)
    sr = hr + np.uint8(5)  # +5 on R, G and B moves Y by 5 * (65.481 + 128.553 + 24.966) / 255
    y_err = 5 * 219 / 255
    assert psnr(sr, hr) == pytest.approx(20 * math.log10(255 / y_err))
    assert psnr(sr, hr, y_channel=False) == pytest.approx(20 * math.log10(255 / 5))


def test_y_channel_equals_metric_on_explicit_y(wbc_cell):
    hr = wbc_cell[0]
    sr = imresize(imresize(hr, 0.25, channel_axis=-1), 4, channel_axis=-1)  # uint8, like a saved SR
    y_sr, y_hr = rgb_to_y(sr / 255.0), rgb_to_y(hr / 255.0)
    assert psnr(sr, hr) == pytest.approx(psnr(y_sr, y_hr), rel=1e-12)
    assert ssim(sr, hr) == pytest.approx(ssim(y_sr, y_hr), rel=1e-12)
    assert psnr(sr, hr) != pytest.approx(psnr(sr, hr, y_channel=False), abs=0.01)


def test_crop_removes_the_border(rng):
    hr = rng.random((40, 40))
    sr = hr.copy()
    sr[:3, :] += 0.2  # errors only in the 3-pixel border
    sr[:, -3:] -= 0.2
    assert math.isfinite(psnr(sr, hr))
    assert psnr(sr, hr, crop=3) == math.inf
    assert ssim(sr, hr, crop=3) == pytest.approx(1.0)
    assert ssim(sr, hr) < 1.0


def test_ssim_constant_images_hand_value():
    # constant images: SSIM = luminance term (2ab + C1) / (a^2 + b^2 + C1), C1 = (0.01 * MAX)^2
    a, b, c1 = 0.5, 0.25, 0.01**2
    expected = (2 * a * b + c1) / (a * a + b * b + c1)
    assert ssim(np.full((20, 20), b), np.full((20, 20), a)) == pytest.approx(expected)
    assert ssim(np.full((20, 20), a), np.full((20, 20), a)) == pytest.approx(1.0)


def test_ssim_matches_wang_2004_formula(wbc_cell):
    """Gaussian window sigma 1.5 (truncated at 3.5 sigma = 11 x 11), population statistics,
    mean over the valid part (5 px in from each edge), as Wang et al.'s ssim_index.m."""
    hr = wbc_cell[0][..., 1].astype(np.float64) / 255.0
    sr = imresize(imresize(hr, 0.5), 2)
    c1, c2 = 0.01**2, 0.03**2

    def blur(x):
        return gaussian_filter(x, 1.5, truncate=3.5)

    mu_x, mu_y = blur(hr), blur(sr)
    sxx = blur(hr * hr) - mu_x**2
    syy = blur(sr * sr) - mu_y**2
    sxy = blur(hr * sr) - mu_x * mu_y
    smap = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
    expected = smap[5:-5, 5:-5].mean()
    assert ssim(sr, hr) == pytest.approx(expected, abs=1e-6)
    assert 0.8 < expected < 1.0


def test_realistic_ranking(wbc_cell):
    """Bicubic x4 on a real cell beats nearest-neighbour x4, and both are in a sane range."""
    hr = wbc_cell[0]
    lr = imresize(hr, 0.25, channel_axis=-1)
    bicubic = imresize(lr, 4, channel_axis=-1)
    nearest = np.repeat(np.repeat(lr, 4, axis=0), 4, axis=1)
    p_bic, p_nn = psnr(bicubic, hr, crop=4), psnr(nearest, hr, crop=4)
    assert 25 < p_nn < p_bic < 45
    assert ssim(nearest, hr, crop=4) < ssim(bicubic, hr, crop=4) < 1


def test_evaluate_pair_dict(wbc_cell):
    hr = wbc_cell[0]
    sr = imresize(imresize(hr, 0.25, channel_axis=-1), 4, channel_axis=-1).astype(np.float32)
    res = evaluate_pair(sr, hr, scale=4)
    assert res["crop"] == 4 and res["y_channel"] is True and res["data_range"] == 255.0
    assert res["psnr"] == pytest.approx(psnr(sr, hr, crop=4))
    assert res["ssim"] == pytest.approx(ssim(sr, hr, crop=4))
    grey = evaluate_pair(sr[..., 0], hr[..., 0])
    assert grey["crop"] == 0 and grey["y_channel"] is False


@pytest.mark.parametrize(
    "sr, hr, match",
    [
        (np.zeros((8, 8)), np.zeros((8, 9)), "same shape"),
        (np.full((8, 8), np.nan), np.zeros((8, 8)), "NaN"),
        (np.zeros((0, 8)), np.zeros((0, 8)), "empty"),
        (np.zeros(8), np.zeros(8), r"\(H, W\)"),
        (np.zeros((2, 2, 2, 2)), np.zeros((2, 2, 2, 2)), r"\(H, W\)"),
        (np.array([["a"]]), np.array([["a"]]), "numeric"),
    ],
)
def test_bad_pairs(sr, hr, match):
    with pytest.raises(InputError, match=match):
        psnr(sr, hr)
    with pytest.raises(InputError, match=match):
        ssim(sr, hr)


def test_bad_options_and_tiny_images():
    one = np.array([[0.5]])
    assert psnr(one * 0.9, one) == pytest.approx(10 * math.log10(1 / 0.05**2))  # 1 x 1 is fine
    with pytest.raises(InputError, match="at least 11"):
        ssim(one, one)
    with pytest.raises(InputError, match="leaves nothing"):
        psnr(np.zeros((8, 8)), np.zeros((8, 8)), crop=4)
    with pytest.raises(InputError, match="crop"):
        psnr(np.zeros((8, 8)), np.zeros((8, 8)), crop=-1)
    with pytest.raises(InputError, match="data_range"):
        psnr(np.zeros((8, 8)), np.zeros((8, 8)), data_range=0)


def test_relative_sharpness_reads_blur_below_one(sample_dir):
    from skimage.filters import gaussian

    from napari_resolve.data import samples
    from napari_resolve.metrics.quality import relative_sharpness

    hr = samples.wbc(2)[0][0]
    blurred = np.clip(gaussian(hr.astype(float), sigma=2, channel_axis=-1), 0, 255)
    assert relative_sharpness(hr, hr) == pytest.approx(1.0)
    assert relative_sharpness(blurred, hr) < 0.7
