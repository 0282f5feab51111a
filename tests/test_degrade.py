"""MATLAB imresize (bicubic, antialiased) and MHTCUN's blur-downsample.

The expected values of the tiny resizes are derived by hand in the comments
from MATLAB's ``contributions`` (Keys cubic, a = -0.5) and symmetric padding,
without calling ``resize_matrix``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_resolve.data.degrade import blur_downsample, cubic, imresize, imresize_torch
from napari_resolve.errors import InputError

# --- hand-derived weights -------------------------------------------------------------
# Keys kernel values used below: cubic(0.25) = 111/128, cubic(0.75) = 29/128,
# cubic(1.25) = -9/128, cubic(1.75) = -3/128, cubic(0) = 1, cubic(1) = cubic(2) = 0.
#
# 4 -> 2 (scale 1/2, antialiased: kernel 0.5*cubic(0.5 t), width 8). Output pixel 1 maps to
# u = 1/0.5 + 0.5*(1 - 2) = 1.5; taps j = -2..5 at distances 3.5 .. -3.5 get weights
# 0.5*cubic(+-1.75) = -3/256, 0.5*cubic(+-1.25) = -9/256, 0.5*cubic(+-0.75) = 29/256,
# 0.5*cubic(+-0.25) = 111/256 (they sum to 1). Symmetric padding of [p1 p2 p3 p4]:
# j = -2, -1, 0 -> p3, p2, p1 and j = 5 -> p4. Collecting terms:
#   out1 = (29 + 111) p1 + (-9 + 111) p2 + (-3 + 29) p3 + (-9 - 3) p4, all / 256
#        = 35/64 p1 + 51/128 p2 + 13/128 p3 - 3/64 p4, and out2 is the mirror image.
DOWN_4_TO_2 = np.array([[35 / 64, 51 / 128, 13 / 128, -3 / 64], [-3 / 64, 13 / 128, 51 / 128, 35 / 64]])
# 2 -> 4 (scale 2, kernel cubic): u = x/2 + 0.25 = 0.75, 1.25, 1.75, 2.25. For x = 1 the taps
# j = -1, 0, 1, 2 sit at 1.75, 0.75, -0.25, -1.25 -> -3/128, 29/128, 111/128, -9/128 on
# p2, p1, p1, p2 (padding [p2 p1 | p1 p2 | p2 p1]):  out1 = 35/32 p1 - 3/32 p2.
# For x = 2 the taps j = 0..3 at 1.25, 0.25, -0.75, -1.75 -> -9/128, 111/128, 29/128, -3/128 on
# p1, p1, p2, p2:  out2 = 51/64 p1 + 13/64 p2; out3, out4 mirror out2, out1.
UP_2_TO_4 = np.array([[35 / 32, -3 / 32], [51 / 64, 13 / 64], [13 / 64, 51 / 64], [-3 / 32, 35 / 32]])


def test_keys_kernel_values():
    t = np.array([0.0, 0.25, 0.75, 1.0, 1.25, 1.75, 2.0, 2.5, -0.25])
    expected = [1.0, 111 / 128, 29 / 128, 0.0, -9 / 128, -3 / 128, 0.0, 0.0, 111 / 128]
    np.testing.assert_allclose(cubic(t), expected, atol=1e-15)


def test_hand_computed_4x4_to_2x2():
    img = np.array([[10.0, 20, 30, 40], [50, 60, 70, 80], [15, 25, 35, 45], [0, 100, 200, 250]])
    expected = DOWN_4_TO_2 @ img @ DOWN_4_TO_2.T
    out = imresize(img, 0.5)
    assert out.shape == (2, 2)
    np.testing.assert_allclose(out, expected, atol=1e-12)
    # one entry written out: row weights on column 0, then column weights
    col0 = DOWN_4_TO_2[0] @ img  # first output row, before the column pass
    assert out[0, 0] == pytest.approx(35 / 64 * col0[0] + 51 / 128 * col0[1] + 13 / 128 * col0[2] - 3 / 64 * col0[3])


def test_hand_computed_2x2_to_4x4():
    img = np.array([[0.0, 64.0], [128.0, 255.0]])
    out = imresize(img, 2)
    assert out.shape == (4, 4)
    np.testing.assert_allclose(out, UP_2_TO_4 @ img @ UP_2_TO_4.T, atol=1e-12)
    # corner: 35/32 * (35/32 * 0 - 3/32 * 64) - 3/32 * (35/32 * 128 - 3/32 * 255)
    corner = 35 / 32 * (-3 / 32 * 64) - 3 / 32 * (35 / 32 * 128 - 3 / 32 * 255)
    assert out[0, 0] == pytest.approx(corner)


def test_uint8_rounds_half_away_from_zero_after_each_axis():
    # x2 up of a column [0 0 64 0 0]: the 2nd..5th outputs are -1.5, -4.5, 14.5, 55.5 exactly
    # (weights are multiples of 1/128). MATLAB: uint8(14.5) = 15, uint8(55.5) = 56, negatives -> 0.
    col = np.array([0, 0, 64, 0, 0], dtype=np.uint8)[:, None]
    img = np.repeat(col, 3, axis=1)  # columns identical: the column pass changes nothing
    out = imresize(img, (2, 1))
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out[:, 0], [0, 0, 0, 15, 56, 56, 15, 0, 0, 0])
    # intermediate rounding: rows first (equal scales), rounded to uint8, then columns
    img2 = np.array([[0, 64], [128, 255]], dtype=np.uint8)
    rows = np.clip(np.floor(UP_2_TO_4 @ img2.astype(float) + 0.5), 0, 255)
    expected = np.clip(np.floor(rows @ UP_2_TO_4.T + 0.5), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(imresize(img2, 2), expected)


def test_constant_image_stays_constant():
    for scale in (0.25, 1 / 3, 0.5, 2, 3, 4):
        out = imresize(np.full((13, 17), 0.3), scale)
        np.testing.assert_allclose(out, 0.3, atol=1e-12)
    out = imresize(np.full((12, 12), 200, np.uint8), 0.25)
    assert (out == 200).all()


def test_scale_one_is_identity(rng):
    img = rng.random((9, 14))
    np.testing.assert_allclose(imresize(img, 1), img, atol=1e-12)
    u8 = rng.integers(0, 256, (9, 14), dtype=np.uint8)
    np.testing.assert_array_equal(imresize(u8, 1.0), u8)


def test_output_size_is_ceil():
    assert imresize(np.zeros((10, 7)), 0.5).shape == (5, 4)  # ceil(3.5) = 4
    assert imresize(np.zeros((10, 7)), 1 / 3).shape == (4, 3)
    assert imresize(np.zeros((5, 5)), 2.5).shape == (13, 13)  # ceil(12.5)
    assert imresize(np.zeros((300, 300)), 0.25).shape == (75, 75)  # no float noise: 75, not 76
    assert imresize(np.zeros((6, 8)), output_shape=(4, 3)).shape == (4, 3)


def test_down_then_up_of_smooth_ramp_is_close():
    yy, xx = np.mgrid[0:64, 0:64] / 63.0
    smooth = 0.2 + 0.5 * xx + 0.1 * np.cos(np.pi * yy)
    back = imresize(imresize(smooth, 0.25), 4)
    inner = (slice(8, -8), slice(8, -8))
    assert np.abs(back - smooth)[inner].max() < 2e-3
    # a fine pattern is not recovered: the check above is not trivial
    fine = 0.5 + 0.4 * np.sin(2 * np.pi * np.arange(64) / 3.0)[None, :].repeat(64, 0)
    assert np.abs(imresize(imresize(fine, 0.25), 4) - fine)[inner].max() > 0.2


def test_rgb_channel_axis_and_batches_match_per_plane(wbc_cell):
    image = wbc_cell[0][:60, :80]
    out = imresize(image, 0.25, channel_axis=-1)
    assert out.shape == (15, 20, 3) and out.dtype == np.uint8
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], imresize(image[..., c], 0.25))
    batch = np.moveaxis(image, -1, 0).astype(np.float32)  # (3, H, W) as a batch of planes
    out_b = imresize(batch, 0.5)
    assert out_b.shape == (3, 30, 40) and out_b.dtype == np.float32
    np.testing.assert_allclose(out_b[1], imresize(batch[1], 0.5), rtol=1e-6)
    chw = imresize(batch, 0.5, channel_axis=0)
    np.testing.assert_allclose(chw, out_b, rtol=1e-6)


def test_torch_path_equals_numpy_and_has_gradients(rng):
    img = rng.random((2, 1, 21, 18))
    for scale in (0.25, 0.5, 2, 3):
        ref = imresize(img, scale)
        got = imresize_torch(torch.from_numpy(img), scale).numpy()
        np.testing.assert_allclose(got, ref, atol=1e-12)
    x = torch.tensor(img[0, 0], dtype=torch.float32, requires_grad=True)
    y = imresize_torch(x, 0.5)
    y.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    # each output is a weighted mean (weights sum to 1): total gradient = number of outputs
    assert float(x.grad.sum()) == pytest.approx(y.numel(), rel=1e-5)


def test_unequal_scales_resize_smaller_scale_first(rng):
    # MATLAB resizes the axis with the smaller scale first; for uint8 that decides where the
    # intermediate rounding happens, so the two orders give different pixels
    img = rng.integers(0, 256, (12, 16), dtype=np.uint8)
    out = imresize(img, (2, 0.5))
    assert out.shape == (24, 8)
    cols_first = imresize(imresize(img, (1, 0.5)), (2, 1))
    rows_first = imresize(imresize(img, (2, 1)), (1, 0.5))
    np.testing.assert_array_equal(out, cols_first)
    assert (out != rows_first).any()


def test_blur_downsample_shape_and_smoothing(wbc_cell):
    grey = wbc_cell[0][..., 1].astype(np.float32) / 255.0
    blurred4 = blur_downsample(grey, 4)
    blurred2 = blur_downsample(grey, 2)
    assert blurred4.shape == grey.shape and blurred4.dtype == np.float32
    # blurring removes high frequencies: the gradient energy drops, more at x4 than x2
    def energy(a):
        return float(np.mean(np.diff(a, axis=0) ** 2) + np.mean(np.diff(a, axis=1) ** 2))
    assert energy(blurred4) < energy(blurred2) < energy(grey)
    assert abs(blurred4.mean() - grey.mean()) < 0.01  # brightness kept
    np.testing.assert_allclose(blur_downsample(grey, 1), grey)
    rgb = blur_downsample(wbc_cell[0], 2, channel_axis=-1)
    assert rgb.shape == wbc_cell[0].shape and rgb.dtype == np.float64


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.zeros(5), "2-D"),
        (np.zeros((0, 4)), "empty"),
        (np.array([[1.0, np.nan], [0.0, 1.0]]), "NaN"),
        (np.array([["a", "b"], ["c", "d"]]), "numeric"),
        (np.ones((3, 3), dtype=bool), "numeric"),
    ],
)
def test_bad_input_is_clear(bad, match):
    with pytest.raises(InputError, match=match):
        imresize(bad, 0.5)


def test_bad_scales_and_tiny_images():
    with pytest.raises(InputError, match="scale"):
        imresize(np.zeros((4, 4)), -2)
    with pytest.raises(InputError, match="give scale"):
        imresize(np.zeros((4, 4)))
    with pytest.raises(InputError, match="factor"):
        blur_downsample(np.zeros((4, 4)), 1.5)
    with pytest.raises(InputError, match="floating-point"):
        imresize_torch(torch.zeros(4, 4, dtype=torch.int64), 2)
    # a 1 x 1 image is valid input: bicubic of a constant is that constant
    np.testing.assert_allclose(imresize(np.array([[0.7]]), 4), np.full((4, 4), 0.7))
