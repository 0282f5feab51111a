"""Traceability (issue 17 item 4): every bundled model traces with dynamic sizes."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from napari_resolve import bundle
from napari_resolve.data.degrade import imresize, imresize_torch, resize_matrix, upsample_int_torch


@pytest.mark.parametrize("scale", [2, 3, 4, 8])
@pytest.mark.parametrize("hw", [(2, 2), (5, 3), (17, 31)])
def test_integer_upsample_equals_matlab_imresize(scale, hw):
    x = np.random.default_rng(0).random((2, *hw))
    # MATLAB's weight matrices, rows then columns (the general path of imresize)
    mh = resize_matrix(hw[0], scale * hw[0], float(scale))
    mw = resize_matrix(hw[1], scale * hw[1], float(scale))
    ref = np.matmul(np.matmul(mh, x), mw.T)
    assert np.abs(imresize(x, scale) - ref).max() < 1e-12  # the NumPy per-phase path
    got = upsample_int_torch(torch.tensor(x), scale).numpy()
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() < 1e-12
    # imresize_torch takes the convolution path for whole-number upscales
    assert np.abs(imresize_torch(torch.tensor(x), scale).numpy() - ref).max() < 1e-12


class _SR(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x)["sr"]


@pytest.mark.parametrize("name", [p["name"] for p in bundle.pretrained()])
def test_bundled_model_traces_with_dynamic_sizes(name):
    model, _ = bundle.load(name)
    model.eval()
    m = max(int(model.size_multiple), 1)
    side = 8 * m if m > 1 else 24
    x = torch.rand(1, model.in_channels, side, side)
    wrapped = _SR(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings on constant size checks
        traced = torch.jit.trace(wrapped, x, check_trace=False)
    other = torch.rand(1, model.in_channels, side + 2 * m, side + 4 * m)  # a different shape
    with torch.inference_mode():
        assert torch.allclose(traced(other), wrapped(other), atol=1e-5)
