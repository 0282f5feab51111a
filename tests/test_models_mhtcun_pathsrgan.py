"""Networks of paper 003 (mhtcun, mhtcun-lite), DFCAN and paper 002 (pathsrgan + PatchGAN).

Inputs are crops of real images from sample_data/ made LR with MATLAB bicubic:
the wide-field microtubules of rDL-SIM (grey, as BioSR for MHTCUN / DFCAN) and
the IHC colon tissue (RGB, pathology for PathSRGAN). Gradient checks use small
configs of the same topology; the full MHTCUN only gets a forward shape check.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from napari_resolve import models
from napari_resolve.data.degrade import imresize, imresize_torch
from napari_resolve.data.samples import ihc, mt_widefield
from napari_resolve.errors import InputError, ResolveError
from napari_resolve.models.blocks import FCAB, DenseBlock, FourierChannelAttention
from napari_resolve.models.pathsrgan import PatchDiscriminator

# small configs with the topology of the defaults (same levels, same block kinds)
SMALL = {
    "mhtcun-lite": {},
    "dfcan": dict(channels=16, groups=2, blocks=2, reduction=4),
    "pathsrgan": dict(channels=(8, 16), growth=8, dense_layers=2, g2_channels=8,
                      g2_dense_blocks=1),
}


@pytest.fixture(scope="module")
def grey_hr():
    """Real wide-field microtubules (256², 62.6 nm px), percentile-normalised to ~[0, 1]."""
    img, _ = mt_widefield()
    lo, hi = np.percentile(img, (1.0, 99.8))
    return ((img - lo) / (hi - lo)).astype(np.float32)


@pytest.fixture(scope="module")
def rgb_hr():
    """Real IHC tissue (512² RGB) in [0, 1]."""
    img, _ = ihc()
    return img.astype(np.float32) / 255.0


def pair(image, scale, hw, offset=40):
    """(LR, HR) tensors (1, C, ...) from an HR crop of scale*hw, LR by MATLAB bicubic."""
    hh, ww = hw[0] * scale, hw[1] * scale
    hr = image[offset : offset + hh, offset : offset + ww]
    hr = hr[..., None] if hr.ndim == 2 else hr
    lr = imresize(hr, 1.0 / scale, channel_axis=-1).astype(np.float32)
    return _tensor(lr), _tensor(hr.astype(np.float32))


def _tensor(a):
    return torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))[None]


def image_for(name, grey_hr, rgb_hr):
    return rgb_hr if name == "pathsrgan" else grey_hr


def build(name, seed=0, **cfg):
    torch.manual_seed(seed)
    if name == "mhtcun-lite-fs2":  # x4 with the cascade at 2x the LR size (feature_scale)
        name, cfg = "mhtcun-lite", {"feature_scale": 2, **cfg}
    return models.build(name, **{**SMALL.get(name, {}), **cfg})


# ---------------------------------------------------------------- registry


def test_registry_lists_all_with_parameter_counts():
    listed = {m.name: m for m in models.available()}
    for name in ("mhtcun", "mhtcun-lite", "dfcan", "pathsrgan"):
        assert name in listed and listed[name].parameters == models.info(name).parameters
    counts = {n: listed[n].parameters for n in ("mhtcun", "mhtcun-lite", "dfcan", "pathsrgan")}
    assert abs(counts["mhtcun"] - 26.4e6) / 26.4e6 < 0.03  # paper 003 Table 1: 26.40 M
    assert counts["mhtcun-lite"] < 2e6
    assert 1.5e6 < counts["dfcan"] < 2.5e6  # 64 channels, 4 groups x 4 FCABs
    assert 3e6 < counts["pathsrgan"] < 8e6
    assert listed["mhtcun"].defaults["scale"] == 2 and listed["pathsrgan"].defaults["scale"] == 4
    assert listed["pathsrgan"].defaults["in_channels"] == 3
    for name in ("mhtcun", "dfcan"):
        m = models.build(name)
        assert m.global_ops and m.receptive_field == 0
    assert models.build("mhtcun").upsamples_input and not models.build("dfcan").upsamples_input


def test_fcab_variants_follow_their_papers():
    # MHTCUN: depthwise-separable convs + swish; DFCAN: full 3x3 convs + GELU
    mht, dfc = FCAB(64, conv_kind="dwsep", act="swish"), FCAB(64, conv_kind="full", act="gelu")
    count = lambda m: sum(p.numel() for p in m.body.parameters())  # noqa: E731
    assert count(mht) == 2 * ((9 * 64 + 64) + (64 * 64 + 64))
    assert count(dfc) == 2 * (9 * 64 * 64 + 64)
    assert isinstance(mht.body[1], torch.nn.SiLU) and isinstance(dfc.body[1], torch.nn.GELU)
    with pytest.raises(ValueError):
        FCAB(8, conv_kind="sparse")


# ---------------------------------------------------------------- shapes and sizes


@pytest.mark.parametrize(
    "name, scale, hw",
    [
        ("mhtcun-lite", 2, (37, 53)),
        ("mhtcun-lite", 4, (37, 53)),
        ("mhtcun-lite", 2, (5, 3)),
        ("mhtcun-lite-fs2", 4, (37, 53)),
        ("mhtcun-lite-fs2", 4, (3, 5)),
        ("dfcan", 2, (37, 53)),
        ("dfcan", 3, (37, 53)),
        ("dfcan", 4, (9, 14)),
        ("pathsrgan", 4, (37, 53)),
        ("pathsrgan", 4, (3, 6)),
    ],
)
def test_output_shapes_any_size(grey_hr, rgb_hr, name, scale, hw):
    lr, _ = pair(image_for(name, grey_hr, rgb_hr), scale, hw)
    net = build(name, scale=scale).eval()
    with torch.no_grad():
        out = net(lr)
    c = lr.shape[1]
    assert out["sr"].shape == (1, c, scale * hw[0], scale * hw[1])
    assert torch.isfinite(out["sr"]).all()
    if name.startswith("mhtcun"):
        assert len(out["stages"]) == 3 and out["stages"][-1] is out["sr"]
        assert all(s.shape == out["sr"].shape for s in out["stages"])
    if name == "pathsrgan":
        assert out["mr"].shape == (1, c, 2 * hw[0], 2 * hw[1])


@pytest.mark.parametrize("scale, hw", [(2, (13, 11)), (4, (5, 7))])
def test_full_mhtcun_forward_shape(grey_hr, scale, hw):
    lr, _ = pair(grey_hr, scale, hw)
    net = models.build("mhtcun", scale=scale).eval()
    assert net.size_multiple == (2 if scale == 2 else 1)
    with torch.no_grad():
        out = net(lr)
    assert [s.shape for s in out["stages"]] == [(1, 1, scale * hw[0], scale * hw[1])] * 3


@pytest.mark.parametrize("scale, cfg", [(2, {}), (4, {"feature_scale": 2})])
def test_mhtcun_stages_are_residuals_on_aligned_bicubic(grey_hr, scale, cfg):
    # zero reconstruction convs: every stage must be exactly the MATLAB bicubic of the
    # input, which checks the pad-inside / crop-back alignment on an odd size (and, with
    # feature_scale, that the PixelShuffle output is cropped to the SR size before the skip)
    lr, _ = pair(grey_hr, scale, (37, 53))
    net = build("mhtcun-lite", scale=scale, **cfg).eval()
    for branch in net.pixel_branches:
        torch.nn.init.zeros_(branch.reconstruct.weight)
        torch.nn.init.zeros_(branch.reconstruct.bias)
    with torch.no_grad():
        out = net(lr)
    bicubic = imresize_torch(lr, scale)
    for stage in out["stages"]:
        torch.testing.assert_close(stage, bicubic, rtol=0, atol=1e-6)
    net.global_residual = False
    with torch.no_grad():
        assert net(lr)["sr"].abs().max() == 0


@pytest.mark.parametrize(
    "name, cfg, message",
    [
        ("mhtcun", dict(scale=3), "scale 2 or 4"),
        ("mhtcun-lite", dict(blocks=0), "blocks"),
        ("mhtcun-lite", dict(scale=4, feature_scale=3), "feature_scale must divide"),
        ("dfcan", dict(scale=8), "scale 2, 3 or 4"),
        ("pathsrgan", dict(scale=2), "x4"),
        ("pathsrgan", dict(depth=3), "no option"),
    ],
)
def test_bad_config_is_a_clear_error(name, cfg, message):
    with pytest.raises(ResolveError, match=message):
        models.build(name, **cfg)


@pytest.mark.parametrize("name", ["mhtcun-lite", "dfcan", "pathsrgan"])
def test_bad_input_is_a_clear_input_error(grey_hr, rgb_hr, name):
    lr, _ = pair(image_for(name, grey_hr, rgb_hr), 4, (8, 8))
    net = build(name)
    wrong = lr[:, :1].repeat(1, 2, 1, 1)  # two channels: neither grey nor RGB
    with pytest.raises(InputError, match="channel"):
        net(wrong)
    with pytest.raises(InputError, match="prior"):
        net(lr, prior=torch.zeros(1, 32, 32, dtype=torch.long))
    with pytest.raises(InputError, match=r"\(N, C, h, w\)"):
        net(lr[0])


# ---------------------------------------------------------------- training behaviour


def _loss(name, out, hr, lr):
    loss = F.mse_loss(out["sr"], hr)
    if name.startswith("mhtcun"):
        loss = loss + 0.3 * sum(F.mse_loss(s, hr) for s in out["stages"][:2])
    if name == "pathsrgan":
        loss = loss + F.mse_loss(out["mr"], imresize_torch(hr, 0.5))
    return loss


@pytest.mark.parametrize("name", ["mhtcun-lite", "dfcan", "pathsrgan"])
def test_gradients_reach_every_parameter(grey_hr, rgb_hr, name):
    scale = models.info(name).defaults["scale"]
    lr, hr = pair(image_for(name, grey_hr, rgb_hr), scale, (12, 10))
    net = build(name)
    _loss(name, net(lr), hr, lr).backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing, f"no gradient for {missing[:5]}"
    assert all(torch.isfinite(p.grad).all() for p in net.parameters())


@pytest.mark.parametrize("name", ["mhtcun-lite", "dfcan", "pathsrgan"])
def test_eval_forward_is_deterministic(grey_hr, rgb_hr, name):
    scale = models.info(name).defaults["scale"]
    lr, _ = pair(image_for(name, grey_hr, rgb_hr), scale, (15, 17))
    net = build(name).eval()
    with torch.no_grad():
        a, b = net(lr), net(lr)
    assert torch.equal(a["sr"], b["sr"])


@pytest.mark.parametrize("name", ["mhtcun-lite", "dfcan", "pathsrgan"])
def test_state_dict_round_trip_gives_identical_output(tmp_path, grey_hr, rgb_hr, name):
    scale = models.info(name).defaults["scale"]
    lr, _ = pair(image_for(name, grey_hr, rgb_hr), scale, (11, 13))
    net = build(name, seed=1).eval()
    path = tmp_path / f"{name}.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    fresh = models.build(net.arch, **net.config).eval()  # rebuilt from the recorded config
    with torch.no_grad():
        expected, before = net(lr), fresh(lr)
        assert not torch.equal(expected["sr"], before["sr"])  # different initialisation
        fresh.load_state_dict(load_file(str(path)), strict=True)
        after = fresh(lr)
    for key in expected:
        if key == "stages":
            assert all(torch.equal(s, t) for s, t in zip(expected[key], after[key]))
        else:
            assert torch.equal(expected[key], after[key])


@pytest.mark.parametrize(
    "name, steps, rate",
    [
        pytest.param("mhtcun-lite", 30, 1e-3, marks=pytest.mark.slow),
        ("dfcan", 15, 2e-3),
        ("pathsrgan", 15, 2e-3),
    ],
)
def test_a_few_adam_steps_fit_a_real_crop(grey_hr, rgb_hr, name, steps, rate):
    scale = models.info(name).defaults["scale"]
    lr, hr = pair(image_for(name, grey_hr, rgb_hr), scale, (12, 12), offset=96)
    bicubic = F.mse_loss(imresize_torch(lr, scale), hr).item()
    net = build(name)
    opt = torch.optim.Adam(net.parameters(), lr=rate)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        out = net(lr)
        _loss(name, out, hr, lr).backward()
        opt.step()
        losses.append(F.mse_loss(out["sr"], hr).item())
    if name.startswith("mhtcun"):
        # the global residual starts MHTCUN near bicubic: training must improve on it
        assert losses[-1] < min(0.95 * losses[0], bicubic), (bicubic, losses)
    else:
        assert losses[-1] < 0.4 * losses[0], losses


# ---------------------------------------------------------------- receptive field


@pytest.mark.parametrize("name", ["mhtcun-lite", "dfcan"])
def test_fourier_attention_makes_the_output_global(grey_hr, name):
    # receptive_field = 0 / global_ops: a pixel in one corner changes the far corner
    lr, _ = pair(grey_hr, 2, (24, 24))
    net = build(name).double().eval()
    lr = lr.double()
    bumped = lr.clone()
    bumped[..., 0, 0] += 0.5
    with torch.no_grad():
        far = net(lr)["sr"][..., -1, -1], net(bumped)["sr"][..., -1, -1]
    assert (far[0] - far[1]).abs().item() > 1e-13  # float64 rounding is ~1e-16; a local net gives 0


def test_pathsrgan_receptive_field_is_a_tight_upper_bound(rgb_hr):
    net = build("pathsrgan", in_channels=1).double()
    for p in net.parameters():  # positive weights: every path carries gradient
        if p.ndim > 1:
            torch.nn.init.uniform_(p, 0.05, 0.15)
    n = 2 * net.receptive_field + 12
    x = torch.from_numpy(rgb_hr[:n, :n, 1].astype(np.float64))[None, None].requires_grad_()
    out = net(x)
    for key, f in (("sr", 4), ("mr", 2)):
        x.grad = None
        c = n * f // 2
        out[key][0, 0, c, c].backward(retain_graph=True)
        ys, xs = torch.nonzero(x.grad[0, 0], as_tuple=True)
        centre = (c + 0.5) / f - 0.5  # the output pixel's position in LR pixels
        reach = max((ys - centre).abs().max().item(), (xs - centre).abs().max().item())
        assert reach <= net.receptive_field
        if key == "sr":
            assert reach > net.receptive_field - 2.5


# ---------------------------------------------------------------- Fourier attention


def test_fourier_attention_odd_sizes_autocast_and_flat_input():
    torch.manual_seed(0)
    fca = FourierChannelAttention(8, reduction=4)
    x = torch.rand(2, 8, 37, 53)
    y = fca(x)
    assert y.shape == x.shape
    # one weight per channel: the output is the input rescaled channel by channel
    ratio = y / x
    torch.testing.assert_close(ratio, ratio[..., :1, :1].expand_as(ratio), rtol=1e-5, atol=1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert fca.spectrum(x.bfloat16()).dtype == torch.float32
        y16 = fca(x)
    torch.testing.assert_close(y16.float(), y, rtol=0.05, atol=0.02)
    # a flat (all-zero) feature map has exact spectral zeros: gradients must stay finite
    z = torch.zeros(1, 8, 9, 9, requires_grad=True)
    block = FCAB(8, reduction=4)
    block(z).sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in block.parameters() if p.grad is not None)


def test_mhtcun_lite_runs_under_bfloat16_autocast(grey_hr):
    lr, _ = pair(grey_hr, 2, (19, 21))
    net = build("mhtcun-lite").eval()
    with torch.no_grad():
        ref = net(lr)["sr"]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = net(lr)["sr"]
    assert torch.isfinite(low).all()
    assert (low.float() - ref).abs().mean() < 0.02


# ---------------------------------------------------------------- PathSRGAN specifics


def test_dense_block_scales_its_residual_by_beta():
    torch.manual_seed(0)
    block = DenseBlock(8, growth=4, layers=2, beta=0.5)
    x = torch.rand(1, 8, 10, 10)
    fused = block.fuse(torch.cat([x, block.layers[0](x),
                                  block.layers[1](torch.cat([x, block.layers[0](x)], 1))], 1))
    torch.testing.assert_close(block(x), x + 0.5 * fused)


def test_pathsrgan_stages_and_frozen_g1(rgb_hr):
    lr, hr = pair(rgb_hr, 4, (8, 12))  # multiple of size_multiple: no padding
    net = build("pathsrgan")
    mr, feats = net.g1(lr)
    assert feats.shape[-2:] == mr.shape[-2:] == (16, 24)
    out = net(lr)
    torch.testing.assert_close(out["mr"], mr)
    torch.testing.assert_close(out["sr"], net.g2(feats))
    # phase 2 of §IV-C: G1 frozen, G2 trained
    net.g1.requires_grad_(False)
    F.mse_loss(net(lr)["sr"], hr).backward()
    assert all(p.grad is None for p in net.g1.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.g2.parameters())


def test_patch_discriminator_gives_8x8_patch_logits(rgb_hr):
    d1 = PatchDiscriminator.for_patch_size(256, base_channels=8)
    assert d1.pools == 5 and PatchDiscriminator.for_patch_size(512).pools == 6
    real = torch.from_numpy(rgb_hr[:256, :256].transpose(2, 0, 1).copy())[None]
    fake = real.clone().requires_grad_()
    logits = d1(fake)
    assert logits.shape == (1, 1, 8, 8)
    F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits)).backward()
    assert fake.grad.abs().sum() > 0  # the adversarial loss reaches the generator
    with pytest.raises(InputError, match="power of two"):
        PatchDiscriminator.for_patch_size(100)
    with pytest.raises(InputError, match=">= 32"):
        d1(real[..., :16, :16])
    assert not any(m.name.lower().startswith("patch") for m in models.available())


def test_haze_removal_is_a_gaussian_background_subtraction(grey_hr):
    """y - w * G_sigma(y), the Gaussian as scipy's (replicate border, 3 sigma)."""
    from scipy.ndimage import gaussian_filter

    from napari_resolve.models.blocks import HazeRemoval

    y = torch.from_numpy(grey_hr[:90, :70].copy())[None, None]
    stage = HazeRemoval(sigma=6.0, weight=0.8)
    crop = grey_hr[:90, :70]
    want = crop - 0.8 * gaussian_filter(crop, 6.0, mode="nearest", truncate=3.0)
    np.testing.assert_allclose(stage(y)[0, 0].numpy(), want, atol=2e-5)
    # a kernel far wider than the image (the x4 bundles' sigma on a small crop)
    small, wide = grey_hr[:20, :30], HazeRemoval(sigma=64.0, weight=0.5)
    np.testing.assert_allclose(
        wide(torch.from_numpy(small.copy())[None, None])[0, 0].numpy(),
        small - 0.5 * gaussian_filter(small, 64.0, mode="nearest", truncate=3.0), atol=2e-5)
    # a constant (pure haze) keeps 1 - w of its level; a thin line over it keeps its height
    flat = torch.full((1, 1, 40, 40), 0.5)
    assert torch.allclose(stage(flat), torch.full_like(flat, 0.1), atol=1e-6)
    line = flat.clone()
    line[..., 20, :] += 1.0
    out = stage(line)
    assert float(out[0, 0, 20, 5] - out[0, 0, 5, 5]) > 0.9
    with pytest.raises(ValueError, match="weight"):
        HazeRemoval(8.0, 1.5)


@pytest.mark.parametrize("name", ["mhtcun-lite", "dfcan"])
def test_haze_stage_acts_in_eval_only_and_survives_a_bundle(tmp_path, grey_hr, name):
    from napari_resolve import bundle

    cfg = {**SMALL[name], "scale": 2, "haze_sigma": 8.0, "haze_weight": 0.7}
    torch.manual_seed(0)
    model = models.build(name, **cfg)
    x = torch.from_numpy(imresize(grey_hr[:64, :64], 0.5))[None, None]
    plain = models.build(name, **{**cfg, "haze_weight": 0.0})
    plain.load_state_dict(model.state_dict())  # the stage has no weights
    model.eval(), plain.eval()
    with torch.no_grad():
        want = model.haze(plain(x)["sr"])
        got = model(x)["sr"]
        model.train()
        trained_path = model(x)["sr"]  # the losses see the network's own output
        model.eval()
    assert torch.allclose(got, want, atol=1e-6)
    assert torch.allclose(trained_path, plain(x)["sr"], atol=1e-6)
    assert not torch.allclose(got, trained_path, atol=1e-3)
    path = bundle.save(tmp_path / "m.safetensors", model)
    back, meta = bundle.load(path)
    assert (meta["config"]["haze_sigma"], meta["config"]["haze_weight"]) == (8.0, 0.7)
    with torch.no_grad():
        assert torch.allclose(back(x)["sr"], got, atol=1e-6)
    # bundles from before the option read it as off
    assert models.full_config(name)["haze_weight"] == 0.0
    assert models.build(name, **SMALL[name]).haze is None
