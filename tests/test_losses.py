"""Losses of the four papers against hand-computed values and reference implementations."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from napari_resolve import losses as L
from napari_resolve.data.degrade import blur_downsample
from napari_resolve.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
WBC = ROOT / "sample_data" / "wbc-zheng2018" / "dataset2"


def _wbc_y(index: int = 0, size: int = 96) -> np.ndarray:
    """A real leukocyte image, Y channel as float in [0, 1], centre crop."""
    from skimage.io import imread

    from napari_resolve.data.color import rgb_to_y

    files = sorted((WBC / "images").glob("*.bmp"))
    y = rgb_to_y(imread(files[index])).astype(np.float64) / 255.0
    h, w = y.shape
    return y[(h - size) // 2 : (h + size) // 2, (w - size) // 2 : (w + size) // 2]


def _wbc_labels(index: int = 0) -> np.ndarray:
    from napari_resolve.data.datasets import read_labels

    return read_labels(sorted((WBC / "masks").glob("*.png"))[index])


def _t(a) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a), dtype=torch.float64)[None, None]


# --------------------------------------------------------------------------- pixel losses
def test_charbonnier_hand_value():
    pred = torch.tensor([[[[0.0, 0.5]]]], dtype=torch.float64)
    target = torch.tensor([[[[0.0, 0.1]]]], dtype=torch.float64)
    # (sqrt(0 + 1e-6) + sqrt(0.16 + 1e-6)) / 2
    expected = (1e-3 + math.sqrt(0.160001)) / 2
    assert L.charbonnier(pred, target).item() == pytest.approx(expected, rel=1e-12)
    # ε sets the floor of a perfect prediction
    assert L.charbonnier(target, target).item() == pytest.approx(1e-3, rel=1e-6)


def test_charbonnier_shape_mismatch_is_input_error():
    with pytest.raises(InputError, match="differ"):
        L.charbonnier(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 5))


def test_parsing_cross_entropy_hand_value_and_ignored_pixels():
    # one pixel, logits (0, ln 2, ln 5): softmax = (1, 2, 5) / 8
    logits = torch.tensor([0.0, math.log(2.0), math.log(5.0)]).view(1, 3, 1, 1)
    for label, p in ((0, 1 / 8), (1, 2 / 8), (2, 5 / 8)):
        lab = torch.tensor([[[label]]])
        assert L.parsing_loss(logits, lab).item() == pytest.approx(-math.log(p), rel=1e-6)
    # a second pixel labelled -1 (no parsing map there) changes nothing
    logits2 = torch.cat([logits, torch.zeros(1, 3, 1, 1)], dim=3)
    lab2 = torch.tensor([[[2, -1]]])
    assert L.parsing_loss(logits2, lab2).item() == pytest.approx(-math.log(5 / 8), rel=1e-6)
    # nothing labelled: zero, not NaN, and still differentiable
    zero = L.parsing_loss(logits2.requires_grad_(), torch.full((1, 1, 2), -1))
    assert zero.item() == 0.0
    zero.backward()


def test_parsing_bce_hand_value():
    logits = torch.tensor([0.0, 2.0, -1.0]).view(1, 3, 1, 1)
    lab = torch.tensor([[[1]]])  # one-hot (0, 1, 0)

    def sig(x):
        return 1 / (1 + math.exp(-x))

    expected = -(math.log(1 - sig(0.0)) + math.log(sig(2.0)) + math.log(1 - sig(-1.0))) / 3
    assert L.parsing_loss(logits, lab, mode="bce").item() == pytest.approx(expected, rel=1e-6)


# --------------------------------------------------------------------------- SSIM and MHTCUN
def test_ssim_matches_skimage_on_a_real_image():
    from skimage.metrics import structural_similarity

    ref = _wbc_y(0, 64)
    rng = np.random.default_rng(0)
    noisy = np.clip(ref + rng.normal(0, 0.05, ref.shape), 0, 1)
    expected = structural_similarity(
        ref, noisy, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0
    )
    got = L.ssim(_t(noisy), _t(ref)).item()
    assert got == pytest.approx(expected, abs=1e-5)
    assert 0.3 < got < 0.95  # the noise matters, but the cell is still there
    assert L.ssim(_t(ref), _t(ref)).item() == pytest.approx(1.0, abs=1e-9)


def test_mse_ssim_hand_value_on_constant_images():
    a = torch.full((1, 1, 16, 16), 0.5, dtype=torch.float64)
    b = torch.full((1, 1, 16, 16), 0.4, dtype=torch.float64)
    c1 = 1e-4
    ssim = (2 * 0.5 * 0.4 + c1) / (0.25 + 0.16 + c1)  # no variance: luminance term only
    expected = 0.01 + 0.1 * (1 - ssim)
    assert L.mse_ssim_loss(a, b).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("factor", [2, 4])
def test_blur_downsample_torch_matches_numpy(factor):
    img = _wbc_y(1, 96)
    expected = blur_downsample(img, factor)
    got = L.blur_downsample_torch(_t(img), factor)[0, 0].numpy()
    assert got.shape == img.shape
    np.testing.assert_allclose(got, expected, atol=1e-6)
    # it is a blur: detail is lost, the mean is kept
    assert np.abs(np.diff(got, axis=1)).mean() < np.abs(np.diff(img, axis=1)).mean()
    assert got.mean() == pytest.approx(img.mean(), abs=0.01)


def test_staged_loss_weights_and_blurred_targets():
    from skimage.metrics import structural_similarity

    hr = _wbc_y(2, 64)
    # stage outputs equal to their own targets: no loss at all
    targets = [blur_downsample(hr, 4), blur_downsample(hr, 2), hr]
    total, per = L.staged_loss([_t(t) for t in targets], _t(hr))
    assert total.item() == pytest.approx(0.0, abs=1e-9)
    # every stage outputs the sharp image: stages 1-2 pay against blurred targets,
    # with weights 0.3 / 0.3 / 1 (paper 003 §3), computed here with numpy + skimage
    total, per = L.staged_loss([_t(hr)] * 3, _t(hr))

    def ref(out, tgt):
        mse = float(np.mean((out - tgt) ** 2))
        s = structural_similarity(
            out, tgt, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0
        )
        return mse + 0.1 * (1 - s)

    expected = 0.3 * ref(hr, targets[0]) + 0.3 * ref(hr, targets[1]) + 1.0 * 0.0
    assert total.item() == pytest.approx(expected, rel=1e-4)
    assert per[0].item() > per[1].item() > per[2].item() - 1e-12  # ×4 blur is the furthest


def test_staged_loss_needs_three_stages():
    with pytest.raises(InputError, match="stages"):
        L.staged_loss([torch.zeros(1, 1, 8, 8)] * 2, torch.zeros(1, 1, 8, 8))


# --------------------------------------------------------------------------- SRSEG
def test_boundary_mask_hand_example():
    lab = torch.tensor([[0, 0, 1, 1, 1]] * 5)
    mask = L.boundary_mask(lab, radius=1)
    # edge pixels: columns 1 and 2; a disk of radius 1 grows them to columns 0-3
    expected = torch.tensor([[0, 0, 0, 0, 1]] * 5, dtype=torch.float32)
    assert torch.equal(mask, expected)
    assert torch.equal(L.boundary_mask(lab, radius=0), torch.tensor([[1, 0, 0, 1, 1]] * 5).float())


def test_boundary_mask_matches_skimage_on_real_labels():
    from skimage.morphology import dilation, disk
    from skimage.segmentation import find_boundaries

    lab = _wbc_labels(0)
    assert set(np.unique(lab)) == {0, 1, 2}
    for radius in (1, 3):
        expected = ~dilation(find_boundaries(lab, mode="thick"), disk(radius))
        got = L.boundary_mask(torch.from_numpy(lab)[None], radius)[0].numpy().astype(bool)
        np.testing.assert_array_equal(got, expected)
        assert 0.5 < got.mean() < 0.99  # the cell's edges are removed, its bulk kept


def test_masked_cross_entropy_hand_value():
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]]).reshape(1, 2, 1, 2)  # (N, K, 1, 2)
    # pixel 0: logits (0, ln 3) label 1 -> -ln(3/4); pixel 1: (0, 0) label 0 -> ln 2
    lab = torch.tensor([[[1, 0]]])
    both = (-math.log(3 / 4) + math.log(2)) / 2
    assert L.masked_cross_entropy(logits, lab).item() == pytest.approx(both, rel=1e-6)
    keep_first = torch.tensor([[[1.0, 0.0]]])
    assert L.masked_cross_entropy(logits, lab, keep_first).item() == pytest.approx(
        -math.log(3 / 4), rel=1e-6
    )
    # unlabelled pixels (-1) are left out too
    assert L.masked_cross_entropy(logits, torch.tensor([[[1, -1]]])).item() == pytest.approx(
        -math.log(3 / 4), rel=1e-6
    )


# --------------------------------------------------------------------------- adversarial
def test_adversarial_losses_hand_values():
    zero = torch.zeros(2, 1, 8, 8)  # a PatchGAN map of logits 0: D says 1/2 everywhere
    assert L.adversarial_d_loss(zero, zero).item() == pytest.approx(2 * math.log(2), rel=1e-6)
    assert L.adversarial_g_loss(zero).item() == pytest.approx(math.log(2), rel=1e-6)
    # SRGAN: one logit per image; -log(sigmoid(3)) and -log(1 - sigmoid(-1)) by hand
    real, fake = torch.tensor([[3.0]]), torch.tensor([[-1.0]])
    expected = math.log(1 + math.exp(-3.0)) + math.log(1 + math.exp(-1.0))
    assert L.adversarial_d_loss(real, fake).item() == pytest.approx(expected, rel=1e-6)
    assert L.adversarial_g_loss(fake).item() == pytest.approx(math.log(1 + math.exp(1.0)), rel=1e-6)


def test_adversarial_losses_train_the_papers_discriminators():
    from napari_resolve.models.pathsrgan import PatchDiscriminator
    from napari_resolve.models.srseg import SRGANDiscriminator

    torch.manual_seed(0)
    hr = _t(_wbc_y(3, 64)).float()
    blurry = L.blur_downsample_torch(hr, 4)
    for disc, call in (
        (PatchDiscriminator(in_channels=1, pools=3, base_channels=8), lambda d, x: d(x)),
        (
            SRGANDiscriminator(in_channels=1, features=8, dense_features=16),
            lambda d, x: d(x, logits=True),
        ),
    ):
        opt = torch.optim.Adam(disc.parameters(), lr=1e-3)
        first = None
        for _ in range(15):
            loss = L.adversarial_d_loss(call(disc, hr), call(disc, blurry))
            first = loss.item() if first is None else first
            opt.zero_grad()
            loss.backward()
            opt.step()
        assert loss.item() < first  # it learns to tell sharp from blurred


# --------------------------------------------------------------------------- perceptual and task
def test_perceptual_loss_with_identity_features_is_mse_and_frozen_net_gets_no_grad():
    ref = _t(_wbc_y(0, 32)).float()
    pred = (ref + 0.1).requires_grad_()
    ident = L.FrozenFeatures(nn.Identity(), in_channels=1)
    assert L.perceptual_loss(ident, pred, ref).item() == pytest.approx(0.01, rel=1e-4)
    conv = nn.Conv2d(1, 4, 3)
    feats = L.FrozenFeatures(conv, in_channels=1)
    loss = L.perceptual_loss(feats, pred, ref)
    loss.backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0
    assert conv.weight.grad is None
    # an RGB image into a 1-channel feature net is averaged, a grey one into 3 repeated
    rgb = torch.rand(1, 3, 16, 16)
    assert L.perceptual_loss(L.FrozenFeatures(nn.Identity(), 1), rgb, rgb).item() == 0.0


def test_conv_encoder_learned_on_own_images_is_deterministic_and_frozen():
    patches = np.stack([_wbc_y(i, 32)[None] for i in range(6)]).astype(np.float32)
    enc1 = L.fit_conv_encoder(patches, steps=15, width=8, seed=3)
    enc2 = L.fit_conv_encoder(patches, steps=15, width=8, seed=3)
    assert isinstance(enc1, L.FeatureExtractor)
    assert all(not p.requires_grad for p in enc1.parameters())
    for a, b in zip(enc1.parameters(), enc2.parameters()):
        assert torch.equal(a, b)
    x = torch.from_numpy(patches[:2])
    assert enc1(x).shape == (2, 16, 8, 8)
    # features separate a cell from its blurred version more than from itself + tiny noise
    blurred = L.blur_downsample_torch(x, 4)
    noisy = x + 0.002 * torch.randn_like(x)
    assert L.perceptual_loss(enc1, blurred, x) > 10 * L.perceptual_loss(enc1, noisy, x)
    with pytest.raises(InputError, match="multiples of 4"):
        L.fit_conv_encoder(np.zeros((2, 1, 30, 30), np.float32), steps=1)


def test_task_loss_through_frozen_model():
    task = nn.Conv2d(1, 1, 1)
    with torch.no_grad():
        task.weight.fill_(2.0)
        task.bias.fill_(-1.0)
    pred = torch.tensor([[[[0.5, 1.0]]]], requires_grad=True)
    target = torch.tensor([[[[1.0, 0.0]]]])
    # logits 2*0.5-1 = 0 (label 1) and 2*1-1 = 1 (label 0)
    expected = (math.log(2) + math.log(1 + math.e)) / 2
    loss = L.task_loss(task, pred, target)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert pred.grad.abs().sum() > 0
    assert task.weight.grad is None  # the task model is not updated
    # class indices -> cross entropy
    cls = nn.Sequential(nn.Flatten(), nn.Linear(2, 3))
    assert L.task_loss(cls, pred, torch.tensor([2])).item() > 0
