"""One prior path (issue 14): GP does with its own parsing map what it does with a user's.

* the predicted map handed back unchanged as ``prior=`` gives the same SR
  (max |diff| <= 1e-3 of the range), in the model and through ``predict``;
* an edit of the map changes the SR only within ``prior_radius`` HR px of it.

Real data: a white-blood-cell crop of ``sample_data`` (Zheng 2018, data set 2).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from napari_resolve import models
from napari_resolve.data.color import rgb_to_y
from napari_resolve.data.degrade import imresize
from napari_resolve.models.geometry_prior import hard_mask


@pytest.fixture(scope="module")
def cell():
    """HR RGB uint8 crop (96 x 96) of a real leukocyte and its LR Y tensor at x4."""
    from napari_resolve.data.samples import wbc

    img, labels, _ = wbc(2, ids=[1])[0]
    hr = img[100:196, 100:196]
    lr = imresize(hr, 0.25, channel_axis=-1)
    y = torch.from_numpy(rgb_to_y(lr).astype(np.float32) / 255.0)[None, None]
    return hr, labels[100:196, 100:196], lr, y


@pytest.fixture(scope="module")
def net():
    """A small GP x4 whose SR depends on the map (the zero-initialised last conv set)."""
    torch.manual_seed(0)
    m = models.build("gp", scale=4, features=8, prior_base_channels=4).eval()
    torch.nn.init.normal_(m.sr_net.decoder[-1].weight, std=0.2)
    return m


def test_own_map_given_back_gives_the_same_sr(net, cell):
    *_, y = cell
    with torch.no_grad():
        own = net(y)
        labels = own["parsing"].argmax(1)
        again = net(y, prior=labels)
        again_np = net(y, prior=labels.numpy().astype(np.uint8))
    span = float(own["sr"].max() - own["sr"].min())
    assert span > 0.1
    assert float((again["sr"] - own["sr"]).abs().max()) <= 1e-3 * span
    assert torch.equal(again_np["sr"], again["sr"])
    # the untrained prior net is far from confident: soft probabilities would differ
    soft = torch.softmax(own["parsing"], 1)
    assert float((soft - hard_mask(own["parsing"])).abs().max()) > 0.3


def test_an_edit_changes_the_sr_only_near_it(net, cell):
    *_, y = cell
    with torch.no_grad():
        own = net(y)
        labels = own["parsing"].argmax(1)
        edited = labels.clone()
        edited[0, 40:48, 50:58] = (labels[0, 40:48, 50:58] + 1) % 3  # every pixel changes
        out = net(y, prior=edited)
    diff = (out["sr"] - own["sr"]).abs()[0, 0].numpy()
    changed = diff > 1e-6
    assert changed.any()
    edit = np.zeros(diff.shape, bool)
    edit[40:48, 50:58] = True
    r = net.prior_radius
    near = ndimage.binary_dilation(edit, np.ones((2 * r + 1, 2 * r + 1), bool))
    assert not (changed & ~near).any(), "the SR changed farther than prior_radius from the edit"
    # and the reach is real: something changes beyond the edit itself
    assert (changed & ~edit).any()


def test_predicted_map_through_predict_is_a_no_op(cell):
    """The bundled gp-x4 through predict: own labels back as prior, SR unchanged."""
    from napari_resolve.predict import predict

    _, _, lr, _ = cell
    own = predict("gp-x4", lr)
    again = predict("gp-x4", lr, prior=own.labels)
    a, b = np.asarray(own.image, np.float64), np.asarray(again.image, np.float64)
    assert a.shape == b.shape == (96, 96, 3)
    assert np.abs(a - b).max() <= 1e-3 * (a.max() - a.min())


def test_odd_sizes_need_no_padding_of_the_prior(net, cell):
    """GP pads for its U-Net inside: any LR size works and keeps the one prior path."""
    *_, y = cell
    y = y[..., :13, :17]
    with torch.no_grad():
        own = net(y)
        again = net(y, prior=own["parsing"].argmax(1))
    assert own["sr"].shape == (1, 1, 52, 68)
    assert torch.equal(own["sr"], again["sr"])


def test_straight_through_mask_is_one_hot_with_softmax_gradient():
    torch.manual_seed(1)
    logits = torch.randn(1, 3, 5, 5, requires_grad=True)
    mask = hard_mask(logits)
    assert set(mask.detach().unique().tolist()) == {0.0, 1.0}
    assert torch.equal(mask.detach().sum(1), torch.ones(1, 5, 5))
    w = torch.randn(1, 3, 5, 5)
    (mask * w).sum().backward()
    g_st = logits.grad.clone()
    logits.grad = None
    (torch.softmax(logits, 1) * w).sum().backward()
    assert torch.allclose(g_st, logits.grad)


def test_predict_parses_a_tiny_cell_as_the_model_does():
    """A 120-px cell at x8 is 15 LR px: predict leaves it to the prior's own centred
    reflection (padding it to 16 px first changed 2-10 % of such maps)."""
    from napari_resolve import bundle
    from napari_resolve.data.samples import wbc
    from napari_resolve.predict import predict
    from napari_resolve.train.parsing import model_parser

    model, meta = bundle.load("gp-x8")
    img, _, _ = wbc(2, ids=[1])[0]
    lr = imresize(img[80:200, 80:200], 1 / 8, channel_axis=-1)
    assert lr.shape[:2] == (15, 15)
    res = predict((model, meta), lr, tile=0)
    assert res.image.shape[:2] == (120, 120)
    assert np.array_equal(res.labels, model_parser(model)(lr, 8))
