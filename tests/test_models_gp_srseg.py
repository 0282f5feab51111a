"""Networks of paper 000 (gp, np), paper 004 (srseg, srresnet, SRGAN discriminator), SRCNN.

Inputs are crops of a real white-blood-cell image (Zheng 2018, sample_data/) made
LR with MATLAB bicubic, with its real nucleus / cytoplasm mask as parsing map.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage import io
from skimage.color import rgb2ycbcr

from napari_resolve import models
from napari_resolve.data.degrade import imresize, imresize_torch
from napari_resolve.errors import InputError, ResolveError
from napari_resolve.models.blocks import ResidualBlock, UNet
from napari_resolve.models.geometry_prior import guided_filter
from napari_resolve.models.srseg import SRGANDiscriminator

WBC = Path(__file__).resolve().parents[1] / "sample_data" / "wbc-zheng2018" / "dataset1"
OURS = ("gp", "np", "srcnn", "srseg", "srresnet")
RGB_MODELS = ("srseg", "srresnet")


@pytest.fixture(scope="module")
def wbc():
    """HR RGB float (120, 120, 3) in [0, 1] and labels 0/1/2 of a real leukocyte."""
    rgb = io.imread(WBC / "images" / "001.bmp").astype(np.float32) / 255.0
    mask = io.imread(WBC / "masks" / "001.png")
    labels = np.select([mask == 255, mask == 128], [2, 1], 0).astype(np.int64)
    assert set(np.unique(labels)) == {0, 1, 2}
    return rgb, labels


def lr_input(wbc, name, scale, hw):
    """LR tensor (1, C, *hw): an HR crop of size scale*hw downsampled with MATLAB bicubic."""
    rgb, _ = wbc
    hh, ww = hw[0] * scale, hw[1] * scale
    img = rgb if name in RGB_MODELS else (rgb2ycbcr(rgb)[..., :1] / 255.0).astype(np.float32)
    reps = (-(-hh // img.shape[0]), -(-ww // img.shape[1]), 1)
    hr = np.tile(img, reps)[:hh, :ww]  # large scales need more than one cell
    lr = imresize(hr, 1.0 / scale, channel_axis=-1).astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(lr.transpose(2, 0, 1)))[None]


def build(name, **cfg):
    torch.manual_seed(0)
    return models.build(name, **cfg)


# ---------------------------------------------------------------- registry


def test_registry_lists_models_with_realistic_parameter_counts():
    counts = {n: models.info(n).parameters for n in OURS}
    # SRCNN 9-5-5 with 64/32 filters on one channel, counted from the paper's layer sizes
    assert counts["srcnn"] == (81 * 64 + 64) + (64 * 25 * 32 + 32) + (32 * 25 + 1)
    # GP: half-width U-Net (~7.8 M) + SR net (~0.8 M); NP: the SR net without mask encoder
    assert 7.5e6 < counts["gp"] < 9.5e6
    assert 0.4e6 < counts["np"] < 0.7e6
    assert counts["gp"] - counts["np"] > 7.5e6
    # SRResNet-16 is ~1.5 M in Ledig 2017; SRSEG adds a small segmentation head
    assert 1.4e6 < counts["srresnet"] < 1.8e6
    assert 0 < counts["srseg"] - counts["srresnet"] < 0.1e6
    for n in OURS:
        assert "paper" in models.info(n).paper.lower() or "et al" in models.info(n).paper
        assert models.info(n).defaults["scale"] == 4


def test_unet_is_half_width_and_keeps_size():
    with torch.device("meta"):  # count weights without initialising 31 M of them
        full = UNet(1, 2, 64, 4)
    half = UNet(1, 2, 32, 4)
    n_half = sum(p.numel() for p in half.parameters())
    n_full = sum(p.numel() for p in full.parameters())
    assert 30e6 < n_full < 32e6  # Ronneberger's U-Net: ~31 M
    assert 0.24 < n_half / n_full < 0.26  # half the channels -> a quarter of the weights
    assert half(torch.rand(1, 1, 48, 32)).shape == (1, 2, 48, 32)
    with pytest.raises(ValueError, match="multiples of 16"):
        half(torch.rand(1, 1, 40, 32))


def test_residual_block_variants():
    paper000 = ResidualBlock(8, batch_norm=False, act_after_second=True)
    paper004 = ResidualBlock(8, batch_norm=True, act_after_second=True)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in paper000.modules())
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in paper004.modules()) == 2
    x = torch.rand(2, 8, 7, 9)
    # skip connection: with the body's last conv zeroed (no BN), the block is identity + LReLU(0)
    torch.nn.init.zeros_(paper000.body[1].weight)
    torch.nn.init.zeros_(paper000.body[1].bias)
    assert torch.equal(paper000(x), x)


@pytest.mark.parametrize(
    ("name", "scale"), [("srresnet", 3), ("srseg", 16), ("gp", 1), ("np", 9), ("srcnn", 0)]
)
def test_unsupported_scale_is_a_clear_error(name, scale):
    with pytest.raises(ResolveError, match="scale"):
        models.build(name, scale=scale)


# ---------------------------------------------------------------- shapes


@pytest.mark.parametrize("name", OURS)
@pytest.mark.parametrize(("scale", "hw"), [(2, (37, 53)), (4, (19, 13)), (8, (7, 11))])
def test_output_shapes_any_size(wbc, name, scale, hw):
    net = build(name, scale=scale).eval()
    x = lr_input(wbc, name, scale, hw)
    with torch.no_grad():
        out = net(x)
    sh = (hw[0] * scale, hw[1] * scale)
    assert out["sr"].shape == (1, x.shape[1], *sh)
    assert torch.isfinite(out["sr"]).all()
    if name == "gp":
        assert out["parsing"].shape == (1, 3, *sh)
        assert set(out) == {"sr", "parsing"}
    else:
        assert set(out) == {"sr"}


def test_gp_size_rule_and_rgb_channels(wbc):
    # the U-Net's multiple of 16 is padded inside forward: no size rule for predict
    assert [build("gp", scale=s).size_multiple for s in (2, 4, 8)] == [1, 1, 1]
    net = build("gp", scale=4, in_channels=3).eval()
    rgb = lr_input(wbc, "srseg", 4, (9, 10))  # RGB input, sizes not multiples of 4
    with torch.no_grad():
        out = net(rgb)
    assert out["sr"].shape == (1, 3, 36, 40) and out["parsing"].shape == (1, 3, 36, 40)
    with pytest.raises(InputError, match="expects 3 channel"):
        net(rgb[:, :1])


# ---------------------------------------------------------------- gradients


def _loss(net, name, x, hr_like_labels):
    out = net(x, with_segmentation=True) if name == "srseg" else net(x)
    target = F.avg_pool2d(out["sr"].detach(), 3, 1, 1)  # smoother target, real gradient
    loss = F.mse_loss(out["sr"], target) + out["sr"].mean()
    if "parsing" in out:
        loss = loss + F.cross_entropy(out["parsing"], hr_like_labels)
    if "segmentation" in out:
        lr_labels = hr_like_labels[:, :: net.scale, :: net.scale]  # nearest downsampling
        loss = loss + F.cross_entropy(out["segmentation"], lr_labels)
    return loss


@pytest.mark.parametrize("name", OURS)
def test_gradients_reach_every_parameter(wbc, name):
    net = build(name, scale=4).train()
    x = lr_input(wbc, name, 4, (16, 16)).repeat(2, 1, 1, 1)
    x[1] = x[1].flip(-1)
    labels = torch.from_numpy(wbc[1][:64, :64]).expand(2, 64, 64).contiguous()
    if getattr(net, "global_residual", False):
        # the last conv starts at zero (untrained net = bicubic): it gets the
        # first gradient, everything before it from the second step on
        last = net.sr_net.decoder[-1]
        assert last.weight.abs().sum() == 0
        _loss(net, name, x, labels).backward()
        assert last.weight.grad.abs().sum() > 0
        with torch.no_grad():
            last.weight.add_(last.weight.grad.sign() * -1e-3)
        net.zero_grad()
    _loss(net, name, x, labels).backward()
    dead = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert dead == []
    assert all(torch.isfinite(p.grad).all() for p in net.parameters())


@pytest.mark.parametrize("name", OURS)
def test_eval_forward_is_deterministic(wbc, name):
    net = build(name, scale=4).eval()
    x = lr_input(wbc, name, 4, (15, 17))
    with torch.no_grad():
        a, b = net(x), net(x.clone())
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("name", ["srcnn", "np", "srresnet", "gp"])
@pytest.mark.parametrize(("scale", "axis"), [(2, 0), (4, 0), (4, 1), (8, 1)])
def test_receptive_field_is_an_upper_bound(wbc, name, scale, axis):
    """Changing one LR pixel changes no output farther than receptive_field LR px.

    A strip 2r + 9 px long and 6 px wide keeps the test fast; the bound is
    checked along its long axis (rows or columns).
    """
    net = build(name, scale=scale).eval()
    r = net.receptive_field
    long = 2 * r + 9
    hw = (long, 6) if axis == 0 else (6, long)
    x = lr_input(wbc, name, scale, hw)
    c = long // 2
    y = x.clone()
    if axis == 0:
        y[..., c, 3] += 0.5
    else:
        y[..., 3, c] += 0.5
    with torch.no_grad():
        diff = (net(y)["sr"] - net(x)["sr"]).abs().amax(dim=(0, 1))
    changed = torch.nonzero(diff > 0)[:, axis]
    assert len(changed) > 0
    # centre of SR pixel i in LR coordinates is (i + 0.5) / s - 0.5
    lr_pos = (changed.double() + 0.5) / scale - 0.5
    reach = (lr_pos - c).abs().max().item()
    assert reach <= r, (name, reach, r)


# ---------------------------------------------------------------- GP prior


@pytest.fixture(scope="module")
def gp_case(wbc):
    """GP ×4 on a real LR leukocyte (30×30) and its real parsing map at SR size."""
    net = build("gp", scale=4).eval()
    # as after training: the last conv (zero at init, so that the untrained net
    # is bicubic) carries weights, so the features reach the output
    torch.manual_seed(0)
    torch.nn.init.normal_(net.sr_net.decoder[-1].weight, std=0.05)
    labels = wbc[1]
    x = lr_input(wbc, "gp", 4, (30, 30))
    lab = torch.from_numpy(labels[:120, :120])[None]
    return net, x, lab


def test_prior_changes_gp_output(gp_case):
    net, x, labels = gp_case
    with torch.no_grad():
        own = net(x)
        edited = net(x, prior=labels)
        background = net(x, prior=torch.zeros_like(labels))
        onehot = net(x, prior=F.one_hot(labels, 3).permute(0, 3, 1, 2).float())
        as_numpy = net(x, prior=labels.numpy().astype(np.uint8))
    assert (edited["sr"] - own["sr"]).abs().max() > 1e-4
    assert (edited["sr"] - background["sr"]).abs().max() > 1e-4
    # the difference between an all-background and the real map sits inside the cell
    d = (edited["sr"] - background["sr"]).abs()[0, 0]
    cell = labels[0] > 0
    assert d[cell].mean() > 3 * d[~cell].mean()
    # labels, one-hot and numpy labels are the same prior
    assert torch.allclose(edited["sr"], onehot["sr"], atol=1e-6)
    assert torch.equal(edited["sr"], as_numpy["sr"])
    # "parsing" stays the network's own prediction
    assert torch.equal(edited["parsing"], own["parsing"])


def test_gp_sr_loss_trains_prior_net_end_to_end(gp_case):
    net, x, labels = gp_case
    net.zero_grad()
    net(x[..., :8, :8])["sr"].mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.prior_net.parameters())
    net.zero_grad()
    net(x[..., :8, :8], prior=labels[:, :32, :32])["sr"].mean().backward()
    assert all(p.grad is None for p in net.prior_net.parameters())  # edited map: no path back
    net.zero_grad()


# GP with the colour prior at the LR size (the bundled config since issue 14, session 7)
LR_RGB = dict(in_channels=3, luma_sr=True, prior_input="lr", prior_base_channels=8, prior_depth=3,
              features=16)


@pytest.fixture(scope="module")
def gp_rgb_case(wbc):
    net = build("gp", scale=4, **LR_RGB).eval()
    torch.manual_seed(1)
    torch.nn.init.normal_(net.sr_net.decoder[-1].weight, std=0.05)
    x = lr_input(wbc, "srseg", 4, (30, 30))  # RGB
    return net, x, torch.from_numpy(wbc[1][:120, :120])[None]


def test_gp_rgb_sr_works_on_luma_and_keeps_bicubic_chroma(wbc, gp_rgb_case):
    from napari_resolve.data.color import rgb_to_ycbcr, rgb_to_ycbcr_torch
    from napari_resolve.data.degrade import imresize_torch

    net, x, _ = gp_rgb_case
    with torch.no_grad():
        out = net(x)
    up = imresize_torch(x, 4)
    assert out["sr"].shape == up.shape == (1, 3, 120, 120)
    got, want = rgb_to_ycbcr_torch(out["sr"]), rgb_to_ycbcr_torch(up)
    sr = out["sr"]
    inside = ((sr > 1e-4) & (sr < 1 - 1e-4)).all(1)  # the output is clipped to [0, 1]
    assert inside.float().mean() > 0.9
    # chroma is bicubic's, the luma is not (the SR branch changed it)
    assert (got[:, 1:] - want[:, 1:]).abs()[:, :, inside[0]].max() < 1e-5
    assert (got[:, :1] - want[:, :1]).abs().max() > 1e-3
    # untrained (last conv zero): the model is bicubic, as predict's Y path gives it
    fresh = build("gp", scale=4, **LR_RGB).eval()
    with torch.no_grad():
        sr = fresh(x)["sr"]
    assert (sr - up.clamp(0, 1)).abs().max() < 1e-5
    # the skimage conversion (MATLAB rgb2ycbcr) is the same as the torch one
    np.testing.assert_allclose(
        rgb_to_ycbcr(up[0].permute(1, 2, 0).numpy()), want[0].permute(1, 2, 0).numpy(), atol=1e-5)


def test_gp_lr_prior_reads_the_lr_image(gp_rgb_case):
    net, x, _ = gp_rgb_case
    # 30 LR px is under PRIOR_MIN_LR (48): the prior reads it reflected 9 px on each side,
    # as its training crops of small cell images were; 50 px only gets the U-Net's multiple
    big = torch.rand(1, 3, 50, 50, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = net(x)["parsing"]
        lr_logits = net.prior_net(F.pad(x - 0.5, (9, 9, 9, 9), mode="reflect"))[..., 9:39, 9:39]
        own = F.interpolate(lr_logits, size=(120, 120), mode="bilinear", align_corners=False)
        logits_big = net(big)["parsing"]
        lr_big = net.prior_net(F.pad(big - 0.5, (0, 6, 0, 6), mode="reflect"))[..., :50, :50]
        own_big = F.interpolate(lr_big, size=(200, 200), mode="bilinear", align_corners=False)
    assert torch.allclose(logits, own, atol=1e-6)
    assert torch.allclose(logits_big, own_big, atol=1e-6)


@pytest.mark.parametrize("guide_radius, zoom", [(0, 1), (4, 1), (4, 2), (4, [1, 2])])
def test_gp_lr_prior_one_prior_path_and_receptive_field(gp_rgb_case, guide_radius, zoom):
    net, x, labels = gp_rgb_case
    if guide_radius or zoom > 1:  # the same weights, the map refined by the guided filter
        guided = build("gp", scale=4, **LR_RGB, prior_guide_radius=guide_radius,
                       prior_zoom=zoom).eval()
        guided.load_state_dict(net.state_dict())
        net = guided
    with torch.no_grad():
        own = net(x)
        back = net(x, prior=own["parsing"].argmax(1))
        edited = labels.clone()
        edited[0, 60:64, 60:64] = 2 - edited[0, 60:64, 60:64].clamp(max=2)
        a, b = net(x, prior=labels), net(x, prior=edited)
    assert torch.equal(own["sr"], back["sr"])
    d = (a["sr"] - b["sr"]).abs().amax(1)[0]
    assert d.max() > 1e-4
    far = torch.ones_like(d, dtype=torch.bool)
    r = net.prior_radius
    far[60 - r : 64 + r, 60 - r : 64 + r] = False
    assert d[far].max() == 0
    # one LR pixel reaches no SR / parsing pixel farther than receptive_field LR px
    rf = net.receptive_field
    long = 2 * rf + 9
    z = torch.rand(1, 3, long, 6, generator=torch.Generator().manual_seed(0))
    y = z.clone()
    y[..., long // 2, 3] += 0.5
    with torch.no_grad():
        oz, oy = net(z), net(y)
    for key in ("sr", "parsing"):
        changed = torch.nonzero((oy[key] - oz[key]).abs().amax(dim=(0, 1, 3)) > 0)[:, 0]
        assert len(changed) > 0
        reach = ((changed.double() + 0.5) / 4 - 0.5 - long // 2).abs().max().item()
        assert reach <= rf, (key, reach, rf)


def test_gp_prior_tta_averages_the_eight_orientations(gp_rgb_case):
    net, x, _ = gp_rgb_case
    tta = build("gp", scale=4, **LR_RGB, prior_tta=True).eval()
    tta.load_state_dict(net.state_dict())
    torch.manual_seed(3)
    z = torch.rand(1, 3, 64, 64)  # no padding at this size: the map is exactly equivariant
    with torch.no_grad():
        probs = 0
        for k in range(4):
            for m in (False, True):
                turned = torch.rot90(z - 0.5, k, (2, 3))
                p = torch.softmax(net.prior_net(turned.flip(3) if m else turned), 1)
                probs = probs + torch.rot90(p.flip(3) if m else p, -k, (2, 3))
        want = F.interpolate(torch.log(probs / 8), size=(256, 256), mode="bilinear",
                             align_corners=False)
        got = tta.parsing_logits(z)
        assert torch.allclose(got, want, atol=1e-5)
        turned = tta.parsing_logits(torch.rot90(z, 1, (2, 3)).flip(2))
        assert torch.allclose(torch.rot90(turned.flip(2), -1, (2, 3)), got, atol=1e-4)
        # (and it is not what one pass gives: an untrained U-Net is far from equivariant)
        one = tta.parsing_logits_one_pass(z)
        assert torch.allclose(one, net.parsing_logits(z))
        assert not torch.allclose(torch.softmax(one, 1), torch.softmax(got, 1), atol=1e-4)
        # the one prior path is unchanged: the own map given back gives the same SR
        own = tta(x)
        assert torch.equal(tta(x, prior=own["parsing"].argmax(1))["sr"], own["sr"])


def test_guided_filter_is_he_et_al_and_moves_the_map_to_the_image_edge():
    import kornia  # a test dependency (pyproject [test]): the reference implementation

    torch.manual_seed(0)
    g, p = torch.rand(2, 1, 40, 37), torch.softmax(3 * torch.randn(2, 3, 40, 37), 1)
    for r, eps in ((2, 1e-3), (6, 3e-4)):
        got = guided_filter(g, p, r, eps)
        want = kornia.filters.guided_blur(g, p, 2 * r + 1, eps, border_type="replicate")
        assert torch.allclose(got, want, atol=1e-5)
        assert torch.allclose(got.sum(1), torch.ones(2, 40, 37), atol=1e-5)  # still sums to one
    # a soft map upsampled from the LR (boundary at column 20) and a sharp image edge two
    # HR px to either side: the refined map follows the image, as a map read at the HR size would
    cols = torch.arange(64, dtype=torch.float32)
    fg = torch.sigmoid((cols - 19.5) / 2).expand(1, 1, 48, 64)
    probs = torch.cat([1 - fg, fg], 1)
    edge = lambda q: int(q[0].argmax(0)[24].nonzero()[0])  # noqa: E731 - first class-1 column
    assert edge(probs) == 20
    for image_edge in (18, 22):
        guide = (cols >= image_edge).float().expand(1, 1, 48, 64) * 0.6 + 0.2
        assert edge(guided_filter(guide, probs, 4, 1e-3)) == image_edge


def test_gp_guided_prior_is_the_filtered_map(gp_rgb_case):
    net, x, _ = gp_rgb_case
    from napari_resolve import bundle

    shipped, _ = bundle.load("gp-x4")  # a trained prior: a map with classes and boundaries
    cfg = {k: v for k, v in shipped.config.items() if k not in ("prior_guide_radius", "prior_guide_eps")}
    plain = models.build("gp", **cfg).eval()
    guided = models.build("gp", **cfg, prior_guide_radius=4, prior_guide_eps=3e-4).eval()
    plain.load_state_dict(shipped.state_dict())
    guided.load_state_dict(shipped.state_dict())
    with torch.no_grad():
        up = imresize_torch(x, 4)
        soft = torch.softmax(plain.parsing_logits(x), 1)
        want = guided_filter(up.mean(1, keepdim=True), soft, 4, 3e-4)
        got = guided.parsing_logits(x)
        assert torch.allclose(torch.exp(got), want.clamp_min(1e-12), atol=1e-6)
        labels = got.argmax(1)
        assert len(labels.unique()) == 3 and not torch.equal(labels, soft.argmax(1))
        # pre-training reads the U-Net alone
        assert torch.equal(guided.parsing_logits_one_pass(x), plain.parsing_logits_one_pass(x))
    with pytest.raises(InputError, match="prior_guide_radius"):
        build("gp", scale=4, **LR_RGB, prior_guide_radius=-1)


def test_gp_prior_zoom_reads_the_lr_image_enlarged_and_keeps_one_prior_path(gp_rgb_case):
    """prior_zoom 2 at x8 (gp-x8 since issue 14's twelfth session): the prior reads the LR
    image MATLAB-bicubic enlarged 2x, as a x4 prior reads a 2x larger LR image."""
    net, x, _ = gp_rgb_case
    zoomed = build("gp", scale=8, **LR_RGB, prior_zoom=2).eval()
    zoomed.load_state_dict(net.state_dict())
    x8 = x[..., :15, :15]  # a 120-px data-set-1 cell at x8
    with torch.no_grad():
        got = zoomed.parsing_logits(x8)
        want = net.parsing_logits(imresize_torch(x8, 2).clamp(0, 1), 4)
        assert got.shape == (1, 3, 120, 120)
        assert torch.allclose(got, want, atol=1e-6)
        plain = build("gp", scale=8, **LR_RGB).eval()
        plain.load_state_dict(net.state_dict())
        assert not torch.allclose(plain.parsing_logits(x8), got, atol=1e-3)
        own = zoomed(x8)
        assert torch.equal(zoomed(x8, prior=own["parsing"].argmax(1))["sr"], own["sr"])
    # a list of zooms: the mean of their maps' probabilities (gp-x8 since session 12: [1, 2])
    both = build("gp", scale=8, **LR_RGB, prior_zoom=[1, 2]).eval()
    both.load_state_dict(net.state_dict())
    with torch.no_grad():
        mean = (torch.softmax(plain.parsing_logits(x8), 1) + torch.softmax(got, 1)) / 2
        assert torch.allclose(torch.exp(both.parsing_logits(x8)), mean, atol=1e-6)
        own = both(x8)
        assert torch.equal(both(x8, prior=own["parsing"].argmax(1))["sr"], own["sr"])
    for bad in (3, 0, 1.5, float("inf"), [2, 2], [], [1, 3], "2"):
        with pytest.raises(InputError, match="prior_zoom"):
            build("gp", scale=8, **LR_RGB, prior_zoom=bad)
    with pytest.raises(InputError, match="prior_zoom"):
        build("gp", scale=8, features=8, prior_base_channels=4, prior_zoom=2)  # upsampled input


def test_gp_luma_sr_needs_rgb():
    with pytest.raises(InputError, match="luma_sr"):
        models.build("gp", scale=4, luma_sr=True)
    with pytest.raises(InputError, match="prior_input"):
        models.build("gp", scale=4, prior_input="hr")


@pytest.mark.parametrize(
    ("prior", "message"),
    [
        (torch.zeros(1, 30, 30, dtype=torch.int64), "expected labels"),  # LR size
        (torch.zeros(2, 120, 120, dtype=torch.int64), "expected labels"),  # wrong batch
        (torch.zeros(1, 4, 120, 120), "expected labels"),  # 4 classes
        (torch.full((1, 120, 120), 3), r"0\.\.2"),
        (torch.full((1, 120, 120), -1), r"0\.\.2"),
        (torch.full((1, 120, 120), 0.5), "integers"),
        (torch.full((1, 3, 120, 120), 2.0), r"\[0, 1\]"),
        ("nucleus", "prior"),
    ],
)
def test_bad_prior_is_a_clear_input_error(gp_case, prior, message):
    net, x, _ = gp_case
    with pytest.raises(InputError, match=message):
        net(x, prior=prior)


@pytest.mark.parametrize("name", ["np", "srcnn", "srresnet", "srseg"])
def test_models_without_prior_refuse_one(wbc, name):
    net = build(name, scale=2)
    x = lr_input(wbc, name, 2, (6, 6))
    with pytest.raises(InputError, match="takes no prior"):
        net(x, prior=torch.zeros(1, 12, 12, dtype=torch.int64))


# ---------------------------------------------------------------- SRSEG


def test_srseg_segmentation_head_is_absent_from_inference(wbc):
    net = build("srseg", scale=4)
    calls = []
    hooks = [m.register_forward_hook(lambda *a: calls.append(1))
             for m in net.segmentation_head.modules()]
    x = lr_input(wbc, "srseg", 4, (12, 14))
    out = net(x)
    assert set(out) == {"sr"} and calls == []
    out["sr"].mean().backward()
    assert all(p.grad is None for p in net.segmentation_head.parameters())
    assert all(p.grad is not None for n, p in net.named_parameters()
               if not n.startswith("segmentation_head"))
    seg = net(x, with_segmentation=True)["segmentation"]
    assert seg.shape == (1, 3, 12, 14)  # logits at the LR size (paper 004 §3.2)
    assert len(calls) > 0
    for h in hooks:
        h.remove()


def test_srseg_inference_equals_srresnet_with_same_weights(wbc):
    seg = build("srseg", scale=4).eval()
    plain = build("srresnet", scale=4).eval()
    missing, unexpected = plain.load_state_dict(seg.state_dict(), strict=False)
    assert missing == [] and all(k.startswith("segmentation_head") for k in unexpected)
    x = lr_input(wbc, "srseg", 4, (11, 9))
    with torch.no_grad():
        assert torch.equal(seg(x)["sr"], plain(x)["sr"])
    with pytest.raises(InputError, match="no segmentation extension"):
        plain(x, with_segmentation=True)


@pytest.mark.parametrize("size", [24, 37, 96])
def test_discriminator_accepts_any_patch_size(wbc, size):
    torch.manual_seed(0)
    disc = SRGANDiscriminator(3)
    widths = [m.out_channels for m in disc.modules() if isinstance(m, torch.nn.Conv2d)]
    assert widths == [64, 64, 128, 128, 256, 256, 512, 512]
    rgb = torch.from_numpy(np.ascontiguousarray(wbc[0][:size, :size].transpose(2, 0, 1)))
    x = torch.stack([rgb, rgb.flip(-1)])
    p = disc(x)
    assert p.shape == (2, 1) and ((p > 0) & (p < 1)).all()
    logits = disc(x, logits=True)
    assert torch.allclose(torch.sigmoid(logits), p, atol=1e-6)
    F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits)).backward()
    assert all(q.grad is not None for q in disc.parameters())


def test_srseg_bicubic_residual_starts_as_bicubic(wbc):
    """Issue 14's short-budget variant: the untrained net is MATLAB bicubic exactly."""
    from napari_resolve.data.degrade import imresize_torch

    net = build("srseg", scale=4, features=8, num_blocks=2, bicubic_residual=True).eval()
    x = lr_input(wbc, "srseg", 4, (12, 12))
    with torch.no_grad():
        out = net(x, with_segmentation=True)
    assert torch.equal(out["sr"], imresize_torch(x, 4))
    assert out["segmentation"].shape == (1, 3, 12, 12)
    net.zero_grad()
    net(x)["sr"].mean().backward()
    assert net.tail.weight.grad.abs().sum() > 0  # and it learns from there


def test_srseg_ablation_recipe_only_drops_the_segmentation_term():
    from napari_resolve.train import recipes

    full, ablation = recipes.get("srseg"), recipes.get("srseg-noseg")
    assert [p.name for p in full.phases] == [p.name for p in ablation.phases]
    for a, b in zip(full.phases, ablation.phases):
        assert set(a.losses) == set(b.losses) and a.epochs == b.epochs
        for k, v in b.losses.items():
            assert v == (0.0 if k == "segmentation" else a.losses[k])
    assert any(p.losses.get("segmentation") for p in full.phases)
    assert (ablation.lr, ablation.discriminator) == (full.lr, full.discriminator)
