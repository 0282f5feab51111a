"""PathSRGAN end to end (paper 002): three-phase training on registered simulated
scans, the bundled ``pathsrgan-x4``, MR + HR from the predictor, and whole-slide
super-resolution through zarr (``napari_resolve.slide``).

Data: real RGB images from ``sample_data/`` (the scikit-image IHC tissue, BCCD blood
smears, WBC crops with masks) and scans simulated from them with known offsets. The
three smears BloodImage_00353-00355 are ones the bundled model never saw.
"""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_resolve import bundle, models, predict
from napari_resolve import train as T
from napari_resolve.data import samples
from napari_resolve.data.degrade import imresize, imresize_torch
from napari_resolve.data.registration import build_dataset, interpolate_to_ratio, register
from napari_resolve.data.simulate import simulate_scans
from napari_resolve.errors import InputError
from napari_resolve.metrics import quality
from napari_resolve.models.base import SRModel
from napari_resolve.slide import open_levels, super_resolve_slide, super_resolve_slide_iter
from napari_resolve.train import recipes as R

# BCCD smears in sample_data/ that pathsrgan-x4 never saw (scripts/train_pathsrgan.py
# trains on the first 96 of the full set's file order and holds out the next 16)
UNSEEN_SMEARS = ("BloodImage_00353", "BloodImage_00354", "BloodImage_00355")
TINY = {"channels": (8, 16), "growth": 4, "dense_layers": 2, "g2_channels": 8, "g2_dense_blocks": 1}


@pytest.fixture(scope="module")
def ihc_rgb():
    return samples.ihc()[0]


@pytest.fixture(scope="module")
def ihc_pairs(tmp_path_factory, ihc_rgb):
    """Pairs folder (lr/ mr/ hr/) registered from simulated 4x/10x/20x scans of the IHC tissue."""
    scans = simulate_scans(ihc_rgb[:384, :384], seed=3)
    out = tmp_path_factory.mktemp("pairs") / "ihc"
    result, path = build_dataset(scans.low, scans.mid, scans.high, out, patch_size=32, seed=3)
    assert len(result) >= 3
    return path


def _smear_scans(index: int, photons: float = 20000.0):
    """Simulated 4x/10x/20x scans of an unseen BCCD smear (640 x 480 at 20x), bright-field
    noise as the bundled model's training data (its metadata ``simulation``)."""
    smear = samples.bccd_smear(UNSEEN_SMEARS[index])[0]
    return simulate_scans(smear, photons=photons, seed=250 + index)


def _low_scan(index: int) -> np.ndarray:
    """The 4x scan of a smear interpolated to 5x, the model's LR grid (120 x 160 RGB)."""
    return interpolate_to_ratio(_smear_scans(index).low, 1.25)


# ---------------------------------------------------------------- training (issue 9 part 4)


def test_three_phase_training_freezes_g1_in_phase_two(ihc_pairs):
    """G1 on the real 10x target, then G2 with G1 frozen (weights unchanged), then both."""
    torch.manual_seed(0)
    net = models.build("pathsrgan", **TINY)
    snapshots, phase_losses = {}, {}

    def state(part):
        return {k: v.detach().clone() for k, v in getattr(net, part).state_dict().items()}

    def watch(ev):
        if ev.kind == "phase":
            snapshots[ev.phase] = (state("g1"), state("g2"))
        elif ev.kind == "step":
            phase_losses.setdefault(ev.phase, set()).update(ev.losses)

    res = T.train(net, str(ihc_pairs), epochs=[1, 1, 1], batch_size=2, patch_size=64,
                  patches_per_image=1, feature_steps=5, val_patch=64, callback=watch)
    assert res.stopped is None and [h["phase"] for h in res.history] == ["g1", "g2", "joint"]
    g1_before_g2, g2_before_g2 = snapshots["g2"]
    g1_before_joint, g2_before_joint = snapshots["joint"]
    for k, v in g1_before_g2.items():  # phase 2: G1 frozen
        torch.testing.assert_close(g1_before_joint[k], v, rtol=0, atol=0)
    assert any(not torch.equal(g2_before_joint[k], v) for k, v in g2_before_g2.items())
    g1_first = snapshots["g1"][0]
    assert any(not torch.equal(g1_before_g2[k], v) for k, v in g1_first.items())  # phase 1 trains G1
    g2_first = snapshots["g1"][1]
    for k, v in g2_first.items():  # ... and only G1
        torch.testing.assert_close(g2_before_g2[k], v, rtol=0, atol=0)
    # the paper's losses: MSE + 6e-3 perceptual + 1e-3 PatchGAN, on MR first, HR second, both last
    assert {"mse@mr", "perceptual@mr", "adversarial@mr", "D@mr"} <= phase_losses["g1"]
    assert {"mse", "perceptual", "adversarial", "D@sr"} <= phase_losses["g2"]
    assert not any("@mr" in k for k in phase_losses["g2"])
    assert {"mse@mr", "mse", "D@mr", "D@sr"} <= phase_losses["joint"]


def test_task_loss_through_a_frozen_segmenter_trains_g2_only(wbc_cell):
    """Paper 002 §IV-E: a frozen nucleus segmenter on the 20x output adjusts G2 only."""
    img, labels, _ = wbc_cell
    hr, lab = img[:296, :296], labels[:296, :296]
    data = {"hr": [hr], "lr": [imresize(hr, 0.25, channel_axis=-1)],
            "mr": [imresize(hr, 0.5, channel_axis=-1)], "labels": [lab]}
    torch.manual_seed(0)
    segmenter = torch.nn.Conv2d(3, 3, 3, padding=1)  # stands for a trained U-Net: logits per pixel
    seg_before = {k: v.clone() for k, v in segmenter.state_dict().items()}
    recipe = R.with_task(R.get("pathsrgan"), weight=0.5, output="sr")
    assert [("task" in p.losses) for p in recipe.phases] == [False, True, False]
    net = models.build("pathsrgan", **TINY)
    g1_before = {k: v.clone() for k, v in net.g1.state_dict().items()}
    seen = {}
    res = T.train(net, data, recipe=recipe, epochs=[0, 1, 0], batch_size=2, patch_size=64,
                  patches_per_image=4, feature_extractor=None, task_model=segmenter,
                  val_data={"hr": [hr], "lr": data["lr"], "mr": data["mr"]}, val_patch=64,
                  callback=lambda ev: ev.kind == "step" and seen.setdefault(ev.phase, []).append(ev.losses))
    assert res.stopped is None
    task = [step["task"] for step in seen["g2"] if "task" in step]
    assert len(task) == 2 and all(np.isfinite(task))
    for k, v in seg_before.items():  # the task model is not updated (paper)
        torch.testing.assert_close(segmenter.state_dict()[k], v, rtol=0, atol=0)
    for k, v in g1_before.items():
        torch.testing.assert_close(net.g1.state_dict()[k], v, rtol=0, atol=0)
    # without a task model the term is left out with a message, not an error
    msgs = []
    T.train(models.build("pathsrgan", **TINY), data, recipe=recipe, epochs=[0, 1, 0],
            batch_size=2, patch_size=64, patches_per_image=2, feature_extractor=None,
            max_steps=1, callback=lambda ev: msgs.append(ev.message))
    assert any("left out" in m and "task" in m for m in msgs)
    with pytest.raises(InputError, match="'sr' or 'mr'"):
        R.with_task(R.get("pathsrgan"), output="hr")


# ---------------------------------------------------------------- bundled model + predictor


def test_bundled_pathsrgan_beats_bicubic_on_unseen_simulated_smears():
    """pathsrgan-x4 on registered 4x/10x/20x patches of a smear it never saw (BCCD 00353)."""
    model, meta = bundle.load("pathsrgan-x4")
    assert meta["architecture"] == "pathsrgan" and meta["training"]["recipe"]["name"] == "pathsrgan"
    assert (bundle.pretrained_dir() / "pathsrgan-x4.safetensors").stat().st_size < 8e6
    assert model.receptive_field <= 64  # the whole-slide overlap makes tiling exact
    scans = _smear_scans(0, photons=meta["simulation"]["photons"])
    res = register(scans.low, scans.mid, scans.high, patch_size=48, stride=48, seed=0)
    assert len(res) >= 4
    gains = {"mr": [], "hr": []}
    for k in range(min(len(res), 4)):
        pair = res[k]
        lr, mr, hr = pair["lr"], pair["mr"], pair["hr"]
        out = predict.predict((model, meta), lr, tile=0, extras=True, device="cpu")
        assert out.image.shape == hr.shape and out.extras["mr"].shape == mr.shape
        for key, net_out, ref, s in (("mr", out.extras["mr"], mr, 2), ("hr", out.image, hr, 4)):
            kw = {"data_range": 255, "crop": s, "y_channel": False}
            bic = imresize(lr, s, channel_axis=-1)
            gains[key].append(quality.psnr(np.clip(net_out, 0, 255), ref, **kw)
                              - quality.psnr(bic, ref, **kw))
    assert np.mean(gains["mr"]) > 0.5 and np.mean(gains["hr"]) > 0.5, gains


def test_predictor_gives_mr_and_hr_at_their_sizes(ihc_rgb):
    model = models.build("pathsrgan", **TINY).eval()
    lr = imresize(ihc_rgb[:148, :212], 0.25, channel_axis=-1)  # 37 x 53: not a multiple of 2
    whole = predict.predict(model, lr, tile=0, extras=True)
    assert whole.image.shape == (148, 212, 3) and whole.extras["mr"].shape == (74, 106, 3)
    tiled = predict.predict(model, lr, tile=24, overlap=model.receptive_field // 4, extras=True)
    assert tiled.extras["mr"].shape == (74, 106, 3)
    assert predict.predict(model, lr, tile=0).extras == {}  # only when asked for
    # global_residual (the bundled model's option): untrained, MR and HR are MATLAB bicubic
    res_net = models.build("pathsrgan", **TINY, global_residual=True)
    out = predict.predict(res_net, lr, tile=0, extras=True)
    np.testing.assert_allclose(out.extras["mr"], imresize(lr.astype(float), 2, channel_axis=-1)
                               .clip(0, 255), atol=0.05)
    np.testing.assert_allclose(out.image, imresize(lr.astype(float), 4, channel_axis=-1)
                               .clip(0, 255), atol=0.05)


# ---------------------------------------------------------------- whole slide (part 5)


class TwoLevelBicubic(SRModel):
    """Stand-in with PathSRGAN's outputs: MATLAB bicubic x2 ("mr") and x4 ("sr")."""

    mr_scale = 2
    receptive_field = 2

    def __init__(self):
        super().__init__(4, 1)

    def forward(self, x, prior=None):
        return {"mr": imresize_torch(x, 2), "sr": imresize_torch(x, 4)}


def _smear_mosaic(size: int) -> np.ndarray:
    """A grey size x size 'slide' tiled from the real BCCD smears of sample_data (luma, uint8),
    each smear reused in turn."""
    from napari_resolve.data.color import rgb_to_y

    smears = [samples.bccd_smear(name)[0] for name in samples.bccd_names()]
    out = np.empty((size, size), np.uint8)
    k = 0
    for y in range(0, size, 480):
        for x in range(0, size, 640):
            smear = smears[k % len(smears)]
            k += 1
            h, w = min(480, size - y), min(640, size - x)
            out[y : y + h, x : x + w] = rgb_to_y(smear)[:h, :w]
    return out


@pytest.mark.slow
def test_4096_slide_through_zarr_chunk_by_chunk(tmp_path):
    """A 4096^2 slide: MR + HR written region by region; memory stays far below the output."""
    import zarr

    src = zarr.open_array(str(tmp_path / "slide.zarr"), mode="w", shape=(4096, 4096),
                          chunks=(512, 512), dtype="uint8", zarr_format=2)
    mosaic = _smear_mosaic(4096)
    src[:] = mosaic
    window = mosaic[200:330, 230:350].copy()  # straddles the region seam at LR 256
    del mosaic
    out_bytes = 16384**2 + 8192**2  # the uint8 HR + MR levels
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    # warm-up on a small slide: the one-time imports of the first run (runtime
    # modules: tens of MB of code objects) are not data memory and depended on
    # which tests ran before
    super_resolve_slide(src[:512, :512], tmp_path / "warm.zarr", TwoLevelBicubic(),
                        chunk=256, pixel_size=0.5, unit="micrometer")
    tracemalloc.start()
    try:
        res = super_resolve_slide(tmp_path / "slide.zarr", tmp_path / "sr.zarr", TwoLevelBicubic(),
                                  chunk=256, pixel_size=0.5, unit="micrometer")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        torch.set_num_threads(threads)
    assert peak < out_bytes / 4, f"peak {peak / 1e6:.0f} MB for {out_bytes / 1e6:.0f} MB output"
    levels = open_levels(res.path)
    assert levels["sr"].shape == (16384, 16384) and levels["mr"].shape == (8192, 8192)
    assert levels["sr"].dtype == np.uint8
    # every region in its place: the seam region equals bicubic of the whole image
    for name, f in (("sr", 4), ("mr", 2)):
        ref = np.clip(np.rint(imresize(window.astype(np.float64), f)), 0, 255)
        got = np.asarray(levels[name][f * 210 : f * 320, f * 240 : f * 340])
        assert np.abs(got.astype(int) - ref[f * 10 : f * 120, f * 10 : f * 110]).max() <= 1
    ms = json.loads((res.path / ".zattrs").read_text())["multiscales"][0]
    assert [d["path"] for d in ms["datasets"]] == ["0", "1"]
    assert [d["coordinateTransformations"][0]["scale"] for d in ms["datasets"]] == [
        [0.125, 0.125], [0.25, 0.25]]
    assert ms["axes"][-1] == {"name": "x", "type": "space", "unit": "micrometer"}


def _ome_slide(path: Path, rgb: np.ndarray, pixel_um: float):
    """Write ``rgb`` (Y, X, 3) as an OME-Zarr (c, y, x) with a pixel size, in 64 px chunks."""
    import zarr

    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    arr = root.create_array("0", shape=(3, *rgb.shape[:2]), chunks=(3, 64, 64), dtype="uint8")
    arr[:] = np.moveaxis(rgb, -1, 0)
    axes = [{"name": "c", "type": "channel"}] + [
        {"name": a, "type": "space", "unit": "micrometer"} for a in "yx"]
    root.attrs["multiscales"] = [{"version": "0.4", "axes": axes, "datasets": [{
        "path": "0", "coordinateTransformations": [
            {"type": "scale", "scale": [1.0, pixel_um, pixel_um]},
            {"type": "translation", "translation": [0.0, 3.0, 5.0]}]}]}]
    return path


def test_bundled_pathsrgan_slide_equals_untiled_with_ngff_geometry(tmp_path):
    """The real PathSRGAN through the slide path: 9 regions == one untiled pass; NGFF levels."""
    lr = _low_scan(1)
    assert lr.shape == (120, 160, 3)
    src = _ome_slide(tmp_path / "slide.zarr", lr, 1.172)
    events = []
    out = super_resolve_slide(src, tmp_path / "sr.zarr", "pathsrgan-x4", chunk=80,
                              progress=events.append)
    assert [e.done for e in events] == list(range(5)) and events[-1].total == 4
    ref = predict.predict("pathsrgan-x4", lr, tile=0, extras=True, device="cpu")
    levels = open_levels(out.path)
    for name, want in (("sr", ref.image), ("mr", ref.extras["mr"])):
        got = np.moveaxis(np.asarray(levels[name]), 0, -1).astype(int)
        assert got.shape == want.shape
        assert np.abs(got - np.clip(np.rint(want), 0, 255)).max() <= 1, name
    ms = json.loads((out.path / ".zattrs").read_text())["multiscales"][0]
    assert [a["name"] for a in ms["axes"]] == ["c", "y", "x"]
    for ds, f in zip(ms["datasets"], (4, 2)):
        scale, shift = (t[k] for t, k in zip(ds["coordinateTransformations"],
                                             ("scale", "translation")))
        assert scale == pytest.approx([1.0, 1.172 / f, 1.172 / f])
        # pixel centres: LR pixel i at 3.0 + 1.172 i is the centre of SR pixels f i .. f i + f - 1
        assert shift[1] + scale[1] * (f - 1) / 2 == pytest.approx(3.0)
        assert shift[2] + scale[2] * (f - 1) / 2 == pytest.approx(5.0)
    assert out.levels["mr"]["factor"] == 2 and out.levels["sr"]["path"] == "0"


def test_slide_refusals_and_cancel_leave_nothing(tmp_path, ihc_rgb):
    lr = ihc_rgb[:96, :96]
    with pytest.raises(InputError, match="no MR"):
        super_resolve_slide(lr, tmp_path / "a.zarr", models.build("bicubic", in_channels=3))
    with pytest.raises(InputError, match="2-D plane"):
        super_resolve_slide(np.stack([lr, lr]), tmp_path / "a.zarr", TwoLevelBicubic(),
                            channel_axis=-1)
    with pytest.raises(InputError, match="unknown level"):
        super_resolve_slide(lr[..., 0], tmp_path / "a.zarr", TwoLevelBicubic(), levels=("hr",))
    (tmp_path / "exists.zarr").mkdir()
    with pytest.raises(InputError, match="exists"):
        super_resolve_slide(lr[..., 0], tmp_path / "exists.zarr", TwoLevelBicubic())
    # stop after two of four regions: no output, no temporary folder
    gen = super_resolve_slide_iter(lr[..., 0], tmp_path / "b.zarr", TwoLevelBicubic(), chunk=48)
    assert [next(gen).done for _ in range(3)] == [0, 1, 2]
    gen.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exists.zarr"]
    # a last region thinner than 16 px joins its neighbour instead of reaching the network
    out = super_resolve_slide(lr[:, :58, 0], tmp_path / "d.zarr", TwoLevelBicubic(), chunk=48,
                              overlap=0)
    assert out.meta["slide"]["regions"] == 2 and open_levels(out.path)["sr"].shape == (384, 232)
    # levels=("sr",) works for any model; floats stay float32
    out = super_resolve_slide(lr[..., 0].astype(np.float32) / 255, tmp_path / "c.zarr",
                              models.build("bicubic", scale=2), levels="sr", chunk=48)
    sr = open_levels(out.path)["sr"]
    assert sr.shape == (192, 192) and sr.dtype == np.float32 and set(out.levels) == {"sr"}


def test_slide_command_writes_mr_and_hr(tmp_path, capsys):
    from napari_resolve.cli import main

    src = _ome_slide(tmp_path / "in.zarr", _low_scan(2)[:64, :64], 1.172)
    dst = tmp_path / "out.zarr"
    assert main(["slide", str(src), "-o", str(dst), "--model", "pathsrgan-x4",
                 "--levels", "mr", "sr", "--chunk", "32"]) == 0
    levels = open_levels(dst)
    assert levels["mr"].shape == (3, 128, 128) and levels["sr"].shape == (3, 256, 256)
    assert main(["slide", str(src), "-o", str(dst), "--model", "pathsrgan-x4"]) == 2
    assert "exists" in capsys.readouterr().err
    assert main(["slide", str(src), "-o", str(tmp_path / "x.zarr"), "--model", "bicubic",
                 "--levels", "mr"]) == 2
    assert "no MR" in capsys.readouterr().err
