"""Training engine, recipes, datasets, checkpoints and the train / finetune CLI.

Real data: white-blood-cell crops (``sample_data/wbc-zheng2018``) for the
×4 and RGB models, simulated fluorescence for the ×2 microscopy models.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_resolve import bundle, models
from napari_resolve import train as T
from napari_resolve.data import datasets as D
from napari_resolve.data import fluorescence as fl
from napari_resolve.data.degrade import imresize
from napari_resolve.errors import InputError, ResolveError
from napari_resolve.train import checkpoint as ckpt
from napari_resolve.train import recipes as R

ROOT = Path(__file__).resolve().parents[1]
WBC2 = ROOT / "sample_data" / "wbc-zheng2018" / "dataset2"
WBC1 = ROOT / "sample_data" / "wbc-zheng2018" / "dataset1"

#: small configs of every trainable architecture (CPU seconds, same code paths)
SMALL = {
    "gp": dict(
        features=8, prior_base_channels=4, prior_depth=2, encoder_blocks=1, decoder_blocks=1
    ),
    "np": dict(features=8, encoder_blocks=1, decoder_blocks=1),
    "srcnn": dict(filters=(8, 4)),
    "srresnet": dict(features=8, num_blocks=2),
    "srseg": dict(features=8, num_blocks=2),
    "mhtcun": dict(channels=(4, 8, 16), blocks=1, reduction=2),
    "mhtcun-lite": dict(channels=(4, 8, 16), blocks=1, reduction=2),
    "dfcan": dict(channels=8, groups=1, blocks=1, reduction=2),
    "pathsrgan": dict(channels=(8, 16, 32), growth=4, dense_layers=2, g2_channels=8),
}


def _wbc(n: int, size: int = 64, rgb: bool = True):
    """``n`` real leukocyte crops (centre ``size`` px) and their 0/1/2 labels."""
    from skimage.io import imread

    from napari_resolve.data.color import rgb_to_y

    imgs, labs = [], []
    for img_path, mask_path in list(
        zip(sorted((WBC2 / "images").glob("*.bmp")), sorted((WBC2 / "masks").glob("*.png")))
    )[:n]:
        img = imread(img_path)
        lab = D.read_labels(mask_path)
        h, w = lab.shape
        sl = (slice((h - size) // 2, (h + size) // 2), slice((w - size) // 2, (w + size) // 2))
        imgs.append(img[sl] if rgb else rgb_to_y(img[sl]))
        labs.append(lab[sl])
    return imgs, labs


def _tiny_srcnn(seed: int = 0):
    torch.manual_seed(seed)
    return models.build("srcnn", scale=2, **SMALL["srcnn"])


# --------------------------------------------------------------------------- recipes
def test_recipes_follow_the_papers_and_rescale_epochs():
    srseg = R.get("srseg")
    assert [p.epochs for p in srseg.phases] == [25, 25, 55]  # paper 004 §4
    assert srseg.phases[2].losses == {
        "mse": 1.0,
        "perceptual": 2e-6,
        "adversarial": 1e-3,
        "segmentation": 0.8,
    }
    assert (srseg.lr, srseg.gamma, srseg.step_epochs) == (1e-3, 0.1, 20)
    # 21 epochs shared 25 : 25 : 55  ->  5, 5, 11; the step decay shrinks with them
    plan = R.plan(srseg, epochs=21)
    assert [p["epochs"] for p in plan] == [5, 5, 11]
    assert [p["step_epochs"] for p in plan] == [4, 4, 4]
    assert [p["epochs"] for p in R.plan(srseg, epochs=[1, 0, 2])] == [1, 0, 2]
    # a time budget alone: phases get their share of the minutes
    timed = R.plan(srseg, minutes=10.5)
    assert [p["seconds"] for p in timed] == pytest.approx([150.0, 150.0, 330.0])
    assert all(p["epochs"] is None for p in timed)
    ps = R.get("pathsrgan")
    assert [p.train for p in ps.phases] == [("g1",), ("g2",), ()]
    assert ps.phases[2].lr == 1e-5 and ps.schedule == "halve-per-epoch"
    gp = R.get("gp")
    assert gp.phases[0].losses == {"charbonnier": 1.0, "parsing": 1.0}
    assert (gp.lr, gp.batch_size, gp.patch_size) == (1e-4, 8, None)
    assert R.default_for("mhtcun-lite").phases[0].losses == {"staged": 1.0}
    ft = R.finetune_recipe(R.get("srseg"))
    assert "adversarial" not in ft.phases[0].losses and ft.lr == 1e-4
    with pytest.raises(InputError, match="3 phases"):
        R.plan(srseg, epochs=2)
    with pytest.raises(InputError, match="unknown recipe"):
        R.get("esrgan")


# --------------------------------------------------------------------------- datasets
def test_paired_folders_labels_and_aligned_patches(tmp_path):
    import tifffile

    imgs, labs = _wbc(3, 96, rgb=False)
    for sub in ("HR", "LR", "labels"):
        (tmp_path / sub).mkdir()
    for i, (img, lab) in enumerate(zip(imgs, labs)):
        tifffile.imwrite(tmp_path / "HR" / f"c{i}.tif", img)
        tifffile.imwrite(tmp_path / "LR" / f"c{i}.tif", imresize(img, 0.25))
        tifffile.imwrite(tmp_path / "labels" / f"c{i}.tif", (lab * 127.5).round().astype(np.uint8))
    ds = D.make_dataset(tmp_path, scale=4, patch_size=48, augment=False, seed=1)
    assert ds.has_lr and ds.has_labels and len(ds.items) == 3
    smp = ds[1]
    assert smp["hr"].shape == (1, 48, 48) and smp["lr"].shape == (1, 12, 12)
    assert smp["labels"].shape == (48, 48) and set(smp["labels"].unique().tolist()) <= {0, 1, 2}
    # the LR patch is the LR file cropped at the HR patch's position / 4
    entry = ds._load(smp["index"])
    hr_full, lr_full = entry["hr"][0], entry["lr"][0]
    hr_patch = smp["hr"][0].numpy()
    pos = [
        (y, x)
        for y in range(0, 96 - 47, 4)
        for x in range(0, 96 - 47, 4)
        if np.array_equal(hr_full[y : y + 48, x : x + 48], hr_patch)
    ]
    assert len(pos) == 1
    y, x = pos[0]
    np.testing.assert_array_equal(
        smp["lr"][0].numpy(), lr_full[y // 4 : y // 4 + 12, x // 4 : x // 4 + 12]
    )
    np.testing.assert_array_equal(smp["labels"].numpy(), labs[smp["index"]][y : y + 48, x : x + 48])


def test_pairs_folder_with_real_mr_targets_feeds_pathsrgan(tmp_path):
    """A registration pairs folder (lr/, mr/, hr/): the MR loss uses the real 10× patch."""
    import tifffile

    from napari_resolve.train.engine import _Terms

    imgs, _ = _wbc(2, 96, rgb=True)
    for sub in ("lr", "mr", "hr"):
        (tmp_path / sub).mkdir()
    for i, img in enumerate(imgs):
        tifffile.imwrite(tmp_path / "hr" / f"{i:05d}.tif", img)
        tifffile.imwrite(
            tmp_path / "mr" / f"{i:05d}.tif", np.flipud(imresize(img, 0.5, channel_axis=-1))
        )
        tifffile.imwrite(tmp_path / "lr" / f"{i:05d}.tif", imresize(img, 0.25, channel_axis=-1))
    ds = D.make_dataset(tmp_path, scale=4, in_channels=3, patch_size=64, seed=0)
    batch = D.collate([ds[0], ds[1]])
    assert batch["mr"].shape == (2, 3, 32, 32) and batch["hr"].shape == (2, 3, 64, 64)
    net = models.build("pathsrgan", **SMALL["pathsrgan"])
    phase = R.get("pathsrgan").phases[0]
    terms = _Terms(R.get("pathsrgan"), phase, 4, None, None, False, net)
    out = {"mr": torch.zeros(2, 3, 32, 32), "sr": torch.zeros(2, 3, 64, 64)}
    assert terms.target(out, "mr", batch) is batch["mr"]  # the flipped real scan, not HR resized
    del batch["mr"]
    resized = terms.target(out, "mr", batch)
    assert resized.shape == (2, 3, 32, 32) and not torch.equal(
        resized, D.collate([ds[0], ds[1]])["mr"]
    )


def test_hr_only_arrays_augment_consistently_and_reproducibly():
    imgs, labs = _wbc(2, 96, rgb=True)  # RGB for a 1-channel model: the Y of YCbCr
    ds = D.make_dataset(
        {"hr": imgs, "labels": labs},
        scale=2,
        in_channels=1,
        patch_size=32,
        patches_per_image=4,
        seed=3,
    )
    assert len(ds) == 8 and not ds.has_lr
    seen = set()
    for i in range(len(ds)):
        smp = ds[i]
        hr = smp["hr"][0].numpy().astype(np.float64)
        # whatever flip / rotation was drawn, LR is still the bicubic image of HR
        # (compare away from the patch border, where the kernel reached outside)
        lr_of_hr = imresize(hr, 0.5)
        np.testing.assert_allclose(
            smp["lr"][0].numpy()[3:-3, 3:-3], lr_of_hr[3:-3, 3:-3], atol=0.02
        )
        seen.add(hr.tobytes())
    assert len(seen) == 8  # different patches / orientations
    again = D.make_dataset(
        {"hr": imgs, "labels": labs},
        scale=2,
        in_channels=1,
        patch_size=32,
        patches_per_image=4,
        seed=3,
    )
    assert torch.equal(ds[5]["hr"], again[5]["hr"]) and torch.equal(
        ds[5]["labels"], again[5]["labels"]
    )
    ds.set_epoch(1)
    assert not torch.equal(ds[5]["hr"], again[5]["hr"])  # a new epoch draws anew
    with pytest.raises(InputError, match="greyscale"):
        D.make_dataset([imgs[0][..., 0]], scale=2, in_channels=3)[0]


def test_widefield_degradation_redraws_noise_each_epoch():
    hr = [fl.simulate((128, 128), scale=2, seed=s).hr for s in range(2)]
    spec = {"kind": "widefield", "pixel_size": 31.3, "photons": 50.0, "background": 5.0}
    ds = D.make_dataset(
        hr,
        scale=2,
        degradation=spec,
        normalization={"mode": "percentile"},
        patch_size=None,
        augment=False,
    )
    a, b = ds[0]["lr"], ds[0]["lr"]
    assert torch.equal(a, b) and a.shape == (1, 64, 64)
    ds.set_epoch(1)
    c = ds[0]["lr"]
    assert not torch.equal(a, c)
    assert float(torch.corrcoef(torch.stack([a.ravel(), c.ravel()]))[0, 1]) > 0.5  # same scene


# --------------------------------------------------------------------------- one step, every model
def _dataset_for(net):
    if net.in_channels == 3:
        imgs, labs = _wbc(1, 64, rgb=True)
        return D.make_dataset(
            {"hr": imgs, "labels": labs}, scale=net.scale, in_channels=3, augment=False
        )
    if net.scale == 2:  # the fluorescence models
        return D.make_dataset([fl.simulate((32, 32), scale=2, seed=0)], scale=2, augment=False)
    imgs, labs = _wbc(1, 64, rgb=True)
    return D.make_dataset(
        {"hr": imgs, "labels": labs}, scale=net.scale, in_channels=1, augment=False
    )


@pytest.mark.slow  # ~10 s: nine architectures (and the first optimiser's torch._dynamo import)
def test_one_training_step_reduces_the_loss_for_every_architecture():
    from napari_resolve.losses import FrozenFeatures

    trained = []
    for info in models.available():
        if info.parameters == 0:  # bicubic: nothing to learn, and training says so
            with pytest.raises(InputError, match="no weights"):
                T.train(info.name, [np.zeros((32, 32))], max_steps=1)
            continue
        torch.manual_seed(0)
        net = models.build(info.name, **SMALL[info.name])
        rec = T.default_for(info.name)
        # two steps of the paper's phase that has the most terms (SRSEG: + segmentation)
        phase = 1 if info.name == "srseg" else 0
        epochs = [2 if i == phase else 0 for i in range(len(rec.phases))]
        feats = FrozenFeatures(torch.nn.Conv2d(net.in_channels, 4, 3), net.in_channels)
        events = []
        T.train(
            net,
            _dataset_for(net),
            epochs=epochs,
            max_steps=2,
            batch_size=1,
            learning_rate=1e-4,
            feature_extractor=feats,
            callback=events.append,
        )
        steps = [e.losses for e in events if e.kind == "step"]
        assert len(steps) == 2, info.name
        # the same batch (one whole image, no augmentation) before and after one step;
        # GAN terms move with their discriminator, so compare the reconstruction terms
        pixel = [
            k
            for k in steps[0]
            if k.split("@")[0]
            in ("charbonnier", "mse", "mse_ssim", "staged", "parsing", "segmentation")
        ]
        assert pixel, info.name
        before = sum(steps[0][k] for k in pixel)
        after = sum(steps[1][k] for k in pixel)
        assert after < before, (info.name, steps)
        trained.append(info.name)
    assert {"gp", "srseg", "mhtcun-lite", "pathsrgan"} <= set(trained)


def test_srseg_gan_phase_learns_its_feature_network_and_discriminator():
    """Paper 004's last phase: MSE + perceptual (own encoder, no VGG) + SRGAN + masked CE."""
    imgs, labs = _wbc(3, 64, rgb=True)
    torch.manual_seed(0)
    net = models.build("srseg", **SMALL["srseg"])
    events = []
    res = T.train(
        net,
        {"hr": imgs, "labels": labs},
        epochs=[0, 0, 1],
        max_steps=2,
        batch_size=2,
        patch_size=32,
        feature_steps=5,
        callback=events.append,
    )
    assert any("fitting the feature network" in e.message for e in events if e.kind == "info")
    losses = [e.losses for e in events if e.kind == "step"]
    assert set(losses[0]) == {"D@sr", "mse", "perceptual", "adversarial", "segmentation", "total"}
    assert all(math.isfinite(v) for step in losses for v in step.values())
    expected = losses[0]["mse"] + 2e-6 * losses[0]["perceptual"] + 1e-3 * losses[0]["adversarial"]
    assert losses[0]["total"] == pytest.approx(expected + 0.8 * losses[0]["segmentation"], rel=1e-5)
    assert res.stopped == "steps"


# --------------------------------------------------------------------------- checkpoints
def test_resume_continues_from_the_saved_step_and_matches_an_uninterrupted_run(tmp_path):
    imgs, _ = _wbc(5, 48, rgb=False)
    common = dict(batch_size=2, patch_size=32, patches_per_image=2, learning_rate=1e-3, seed=4)
    full = T.train(_tiny_srcnn(), imgs, epochs=3, output=tmp_path / "full.safetensors", **common)
    part = T.train(_tiny_srcnn(), imgs, epochs=2, output=tmp_path / "part.safetensors", **common)
    steps_per_epoch = part.history[-1]["step"] // 2
    assert steps_per_epoch == 4  # 4 train images x 2 patches / batch 2
    meta = ckpt.read_state_meta(part.state)
    assert meta["step"] == 8 and meta["epoch"] == 2
    events = []
    resumed = T.train(None, imgs, resume=part.state, epochs=3, callback=events.append, **common)
    first = next(e for e in events if e.kind == "step")
    assert first.step == 2 * steps_per_epoch + 1 and first.epoch == 3
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    a, _ = ckpt.load_state(full.state)
    b, pb = ckpt.load_state(part.state)
    _, pa = ckpt.load_state(full.state)
    for key, value in pa["model"].items():
        torch.testing.assert_close(pb["model"][key], value, rtol=1e-5, atol=1e-6)
    assert a["step"] == b["step"] == 12
    assert resumed.history[-1]["val"]["psnr"] == pytest.approx(
        full.history[-1]["val"]["psnr"], abs=1e-4
    )


def test_a_resumed_run_that_never_improves_keeps_the_best_bundle(tmp_path):
    """The best bundle of before a resume survives a resumed run no step of which beats it
    (it was overwritten with the last weights: session 10 found it on a 1000-step run)."""
    import json

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    imgs, _ = _wbc(4, 48, rgb=False)
    out = tmp_path / "m.safetensors"
    common = dict(batch_size=2, patch_size=32, patches_per_image=2, learning_rate=1e-3, seed=1)
    first = T.train(_tiny_srcnn(), imgs, epochs=1, output=out, **common)
    before = out.read_bytes()
    # a best that no later step can reach, as after a lucky epoch
    with safe_open(str(first.state), "pt") as f:
        meta = json.loads(f.metadata()[ckpt.STATE_KEY])
    meta["best"]["psnr"] = 1e9
    save_file(load_file(str(first.state)), str(first.state),
              metadata={ckpt.STATE_KEY: json.dumps(meta)})
    res = T.train(None, imgs, resume=first.state, epochs=3, **common)
    assert len(res.history) == 3 and not any(h["best"] for h in res.history[1:])
    assert out.read_bytes() == before
    kept, _ = bundle.load(out)
    for key, value in kept.state_dict().items():
        assert torch.equal(res.model.state_dict()[key], value)
    _, last = ckpt.load_state(res.state)  # and the last weights were not those
    assert not all(torch.equal(last["model"][k], v) for k, v in kept.state_dict().items())


def test_closing_the_generator_keeps_a_resumable_state(tmp_path):
    """napari's Stop (worker.quit) closes the generator: the state is saved, resume goes on."""
    imgs, _ = _wbc(4, 48, rgb=False)
    out = tmp_path / "m.safetensors"
    gen = T.train_iter(
        _tiny_srcnn(), imgs, epochs=4, batch_size=2, patch_size=32, patches_per_image=2, output=out
    )  # 3 train images: 3 steps per epoch
    for ev in gen:
        if ev.kind == "step" and ev.step == 5:
            break
    gen.close()
    meta = ckpt.read_state_meta(out)
    assert (meta["step"], meta["epoch"], meta["batch_in_epoch"]) == (5, 1, 2)
    assert meta["training"]["stopped"] == "user"
    events = []
    res = T.train(None, imgs, resume=out, callback=events.append)
    steps = [e.step for e in events if e.kind == "step"]
    assert steps[0] == 6 and steps[-1] == 12 and res.stopped is None
    assert [h["epoch"] for h in res.history] == [1, 2, 3, 4]


def test_resume_with_a_time_budget_plans_the_phase_from_the_resume(tmp_path):
    """``--resume --minutes M`` gives M more minutes (commit f6bae9e).

    A run interrupted after an hour in its phase resumed with a 10-minute
    budget: the phase's share must count from the resume, not from the phase's
    original start (then it was spent at once and the run stopped after one step).
    """
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    imgs, _ = _wbc(4, 48, rgb=False)  # 3 train images x 2 patches / batch 2: 3 steps per epoch
    common = dict(batch_size=2, patch_size=32, patches_per_image=2)
    out = tmp_path / "m.safetensors"
    part = T.train(_tiny_srcnn(), imgs, minutes=10, max_steps=2, output=out, **common)
    assert part.stopped == "steps"
    state = ckpt.state_path(out)
    with safe_open(str(state), framework="pt", device="cpu") as fh:
        raw = json.loads(fh.metadata()[ckpt.STATE_KEY])
    assert raw["step"] == 2 and raw["phase_index"] == 0
    raw["phase_elapsed_s"] = 3600.0  # as if the phase had been training for an hour
    save_file(load_file(str(state)), str(state), metadata={ckpt.STATE_KEY: json.dumps(raw)})
    events = []
    res = T.train(None, imgs, resume=state, minutes=10, max_steps=7, callback=events.append,
                  **common)
    steps = [e.step for e in events if e.kind == "step"]
    assert steps == [3, 4, 5, 6, 7] and res.stopped == "steps"
    assert ckpt.read_state_meta(state)["step"] == 7


def test_fit_validation_chooses_on_the_fluorescence_fit_psnr():
    """Recipe option ``val_metric="fit"`` (the fluorescence recipes): validation is CARE's fit-PSNR."""
    from dataclasses import replace

    from napari_resolve.metrics.quality import fit_metrics, psnr

    assert R.get("mhtcun-fluo").options["val_metric"] == "fit"
    assert R.finetune_recipe(R.get("mhtcun-fluo")).options["val_metric"] == "fit"
    imgs, _ = _wbc(4, 48, rgb=False)
    val = {"hr": [imgs[3]], "lr": [imresize(imgs[3], 0.5)]}
    rec = replace(R.get("sr-mse"), name="sr-mse-fit", options={"val_metric": "fit"})
    common = dict(epochs=1, batch_size=2, patch_size=32, val_data=val, val_patch=None)
    fit = T.train(_tiny_srcnn(), imgs[:3], recipe=rec, **common)
    raw = T.train(_tiny_srcnn(), imgs[:3], **common)  # same seed, same steps, raw PSNR
    with torch.no_grad():
        lr = torch.as_tensor(val["lr"][0] / 255.0, dtype=torch.float32)[None, None]
        out = fit.model(lr)["sr"][0, 0].numpy().astype(np.float64)
    hr = imgs[3].astype(np.float64) / 255.0
    expected = fit_metrics(out, hr, crop=2)["psnr"]
    assert fit.history[-1]["val"]["psnr"] == pytest.approx(expected, abs=1e-3)
    raw_expected = psnr(np.clip(out, 0, 1), hr, data_range=1.0, crop=2)
    assert raw.history[-1]["val"]["psnr"] == pytest.approx(raw_expected, abs=1e-3)
    assert abs(expected - raw_expected) > 0.1  # the two metrics really differ here


def test_storm_recipes_drop_the_ssim_term_of_the_paper_loss():
    """``ssim_weight`` 0 (the x4 wide-field -> STORM recipes): MHTCUN's staged loss is MSE per stage."""
    from napari_resolve import losses as L
    from napari_resolve.train.objectives import _Terms

    torch.manual_seed(0)
    net = models.build("mhtcun-lite", scale=2, **SMALL["mhtcun-lite"])
    lr, hr = torch.rand(2, 1, 16, 16), torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        out = net(lr)
    batch = {"lr": lr, "hr": hr, "labels": None}
    values = {}
    for name in ("mhtcun-fluo", "mhtcun-fluo-storm"):
        rec = R.get(name)
        terms = _Terms(rec, rec.phases[0], 2, None, None, False, net)
        values[name] = float(terms.generator(out, batch, {})["staged"][1])
    mse_only = sum(w * float(L.mse(o, L.blur_downsample_torch(hr, f)))
                   for o, w, f in zip(out["stages"], L.STAGE_WEIGHTS, L.STAGE_BLUR))
    assert values["mhtcun-fluo-storm"] == pytest.approx(mse_only, rel=1e-5)
    assert values["mhtcun-fluo"] == pytest.approx(float(L.staged_loss(out["stages"], hr)[0]), rel=1e-5)
    assert values["mhtcun-fluo"] > values["mhtcun-fluo-storm"] + 0.01
    assert R.get("mse-ssim-fluo-storm").options == {"val_metric": "fit", "ssim_weight": 0.0}


def test_keep_initial_returns_the_starting_weights_when_no_step_beats_them(tmp_path):
    """Fine-tuning (``keep_initial``, the default of finetune): a base no step improves comes back."""
    imgs, _ = _wbc(4, 48, rgb=False)
    net = _tiny_srcnn()
    start = {k: v.detach().clone() for k, v in net.state_dict().items()}
    out = tmp_path / "m.safetensors"
    res = T.train(net, imgs, epochs=1, batch_size=2, patch_size=32, learning_rate=5.0,
                  keep_initial=True, output=out)  # a rate that wrecks the weights
    assert res.best["step"] == 0
    model, meta = bundle.load(out)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, start[key])
    assert R.for_bundle({"architecture": "mhtcun-lite", "training": {"recipe": {
        "name": "mhtcun-fluo", "options": {}}}}).options["val_metric"] == "fit"
    assert R.for_bundle({"architecture": "srcnn"}) == R.get("sr-mse")


def test_checkpoint_is_safetensors_with_optimizer_state(tmp_path):
    imgs, _ = _wbc(3, 48, rgb=False)
    res = T.train(
        _tiny_srcnn(),
        imgs,
        epochs=1,
        batch_size=2,
        patch_size=32,
        output=tmp_path / "m.safetensors",
    )
    raw = res.state.read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + header_len])
    assert any(k.startswith("opt/generator/") and k.endswith("/exp_avg") for k in header)
    assert "rng/torch" in header and ckpt.STATE_KEY in header["__metadata__"]
    meta, parts = ckpt.load_state(res.state)
    opt = torch.optim.Adam(_tiny_srcnn().parameters())
    opt.load_state_dict(parts["optimizers"]["generator"])  # loads into a fresh Adam
    assert meta["run"]["batch_size"] == 2 and meta["architecture"] == "srcnn"
    with pytest.raises(ResolveError, match="pickle"):
        bundle.load(tmp_path / "m.pt")


def test_nan_loss_stops_cleanly_and_keeps_the_last_good_weights(tmp_path):
    imgs, _ = _wbc(4, 48, rgb=False)
    net = _tiny_srcnn()
    calls = {"n": 0}

    def poison(module, inputs, output):
        if module.training:
            calls["n"] += 1
            if calls["n"] == 7:  # first step of epoch 3
                return {"sr": output["sr"] * float("nan")}
        return None

    net.register_forward_hook(poison)
    saved = {}

    def on_event(ev):
        if ev.kind == "step":
            saved[ev.step] = {k: v.detach().clone() for k, v in net.state_dict().items()}

    out = tmp_path / "m.safetensors"
    res = T.train(
        net,
        imgs,
        epochs=5,
        batch_size=2,
        patch_size=32,
        patches_per_image=2,
        output=out,
        callback=on_event,
    )
    assert res.stopped == "nan"
    assert "not finite" in res.message and "last good weights" in res.message
    assert max(saved) == 6 and len(res.history) == 2
    _, parts = ckpt.load_state(res.state)
    for key, value in saved[6].items():  # the checkpoint holds the weights of step 6
        assert torch.isfinite(parts["model"][key]).all()
        torch.testing.assert_close(parts["model"][key], value)
    model, meta = bundle.load(out)  # the best bundle is intact
    assert meta["metrics"]["val_psnr"] == pytest.approx(res.best["psnr"])
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_stop_event_and_time_budget_keep_the_best_weights(tmp_path):
    imgs, _ = _wbc(4, 48, rgb=False)
    stop = threading.Event()

    def press_stop(ev):
        if ev.kind == "step" and ev.step == 3:
            stop.set()

    res = T.train(
        _tiny_srcnn(),
        imgs,
        epochs=50,
        batch_size=2,
        patch_size=32,
        stop=stop,
        output=tmp_path / "stopped.safetensors",
        callback=press_stop,
    )
    assert res.stopped == "user" and res.history[-1]["step"] == 3
    _, meta = bundle.load(res.bundle)
    assert meta["training"]["steps"] == 3 and meta["metrics"]["step"] == res.best["step"]
    t0 = time.monotonic()
    timed = T.train(_tiny_srcnn(), imgs, minutes=0.03, batch_size=2, patch_size=32)
    assert timed.stopped == "time" and time.monotonic() - t0 < 30
    # how far it gets in 1.8 s depends on the machine's load: ask only that it
    # validated what it had when the budget ran out and wrote nothing
    assert timed.history and timed.history[-1]["step"] >= 1
    assert math.isfinite(timed.best["psnr"]) and timed.bundle is None


def test_bundle_metadata_records_the_run_and_finetuning_from_memory(tmp_path):
    imgs, labs = _wbc(4, 64, rgb=True)
    out = tmp_path / "gp.safetensors"
    torch.manual_seed(0)
    net = models.build("gp", **SMALL["gp"])
    res = T.train(net, {"hr": imgs, "labels": labs}, epochs=1, batch_size=2, output=out)
    _, meta = bundle.load(out)
    tr = meta["training"]
    assert tr["recipe"]["name"] == "gp" and tr["recipe"]["phases"][0]["losses"]["parsing"] == 1.0
    assert tr["device"] == "cpu" and tr["epochs"] == 1 and tr["steps"] == 1 and tr["labels"]
    assert tr["time_s"] > 0 and tr["images"] == 3 and tr["val_images"] == 1
    assert meta["color_mode"] == "y" and meta["degradation"] == {
        "kind": "matlab-bicubic",
        "scale": 4,
    }
    assert meta["metrics"]["val_psnr"] == pytest.approx(res.best["psnr"])
    # issue 8: fine-tune that bundle on arrays in memory, for a time budget
    out2 = tmp_path / "mine.safetensors"
    events = []
    ft = T.finetune(out, [im for im in imgs[:2]], minutes=0.02, output=out2, callback=events.append)
    assert ft.stopped == "time" and ft.bundle == out2
    _, meta2 = bundle.load(out2)
    assert meta2["parent"] == str(out) and meta2["training"]["recipe"]["name"] == "gp-finetune"
    assert any(
        "left out: parsing (no label images)" in e.message for e in events if e.kind == "phase"
    )


# --------------------------------------------------------------------------- CLI
def test_cli_train_then_finetune_with_table_and_errors(tmp_path, capsys):
    from napari_resolve import cli

    out = tmp_path / "srcnn.safetensors"
    argv = [
        "train",
        "--arch",
        "srcnn",
        "--config",
        "filters=[8,4]",
        "--scale",
        "2",
        "--data",
        str(WBC1 / "images"),
        "--epochs",
        "2",
        "--batch-size",
        "4",
        "--patch-size",
        "32",
        "--quiet",
        "-o",
        str(out),
    ]
    assert cli.main(argv) == 0
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    assert lines[0].split()[:5] == ["epoch", "phase", "step", "loss", "val"]
    assert len([ln for ln in lines if ln.strip().startswith(("1 ", "2 "))]) == 2
    assert "best: epoch" in captured.out
    model, meta = bundle.load(out)
    assert model.scale == 2 and meta["training"]["data"].endswith("images")
    assert meta["color_mode"] == "y"
    # existing output is refused, --resume continues it (with a progress bar)
    assert cli.main(argv) == 2
    assert "exists" in capsys.readouterr().err
    state = tmp_path / "srcnn.state.safetensors"
    assert cli.main(["train", "--resume", str(state), "--epochs", "3", "-o", str(out)]) == 0
    captured = capsys.readouterr()
    assert "resumed from srcnn.state.safetensors" in captured.err and "step" in captured.err
    assert [ln.split()[0] for ln in captured.out.splitlines()[2:5]] == ["1", "2", "3"]
    files = sorted((WBC1 / "images").glob("*.bmp"))[:3]
    out2 = tmp_path / "ft.safetensors"
    rc = cli.main(
        [
            "finetune",
            "--from",
            str(out),
            "--hr",
            *map(str, files),
            "--epochs",
            "1",
            "--batch-size",
            "2",
            "--patch-size",
            "32",
            "--quiet",
            "-o",
            str(out2),
        ]
    )
    assert rc == 0, capsys.readouterr().err
    _, meta2 = bundle.load(out2)
    assert meta2["parent"] == str(out)
    assert (
        cli.main(["train", "--data", str(WBC1 / "images"), "-o", str(tmp_path / "x.safetensors")])
        == 2
    )
    assert "--arch" in capsys.readouterr().err
    assert (
        cli.main(
            [
                "train",
                "--arch",
                "srcnn",
                "--data",
                str(WBC1 / "images"),
                "-o",
                str(tmp_path / "x.pt"),
            ]
        )
        == 2
    )
    assert ".safetensors" in capsys.readouterr().err


# --------------------------------------------------------------------------- killed run, DDP
_KILL_SCRIPT = """
import sys, numpy as np, torch
from napari_resolve import models, train
from napari_resolve.data import fluorescence as fl
torch.manual_seed(0)
net = models.build("srcnn", scale=2, filters=(8, 4))
hr = [p.hr for p in fl.simulate_pairs(4, shape=(64, 64), scale=2, seed=0)]
for ev in train.train_iter(net, hr, epochs=100000, batch_size=2, patch_size=32, output=sys.argv[1]):
    if ev.kind == "epoch":
        print("epoch", ev.epoch, flush=True)
"""


@pytest.mark.slow
def test_a_killed_run_leaves_a_loadable_best_checkpoint(tmp_path):
    out = tmp_path / "killed.safetensors"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILL_SCRIPT, str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    try:
        epochs = 0
        deadline = time.monotonic() + 120
        while epochs < 2 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if line.startswith("epoch"):
                epochs = int(line.split()[1])
        assert epochs >= 2
        time.sleep(0.05)  # somewhere in the next epoch, maybe mid-write
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    _, meta = bundle.load(out)
    assert meta["metrics"]["epoch"] >= 1 and math.isfinite(meta["metrics"]["val_psnr"])
    state_meta, _ = ckpt.load_state(ckpt.state_path(out))
    assert state_meta["epoch"] >= 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sgd_recipe():
    # one plain gradient step with rate 1: new weights = old - gradient
    return R.Recipe(
        name="sgd-check",
        paper="test",
        description="gradient read-out",
        phases=(R.Phase("mse", 1, {"mse": 1.0}),),
        lr=1.0,
        optimizer="sgd",
        patch_size=None,
    )


def _ddp_data():
    return [p.hr for p in fl.simulate_pairs(9, shape=(48, 48), scale=2, seed=1)]


def _ddp_worker(rank, world, port, out_dir):
    from safetensors.torch import save_file

    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        WORLD_SIZE=str(world),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)
    res = T.train(
        _tiny_srcnn(0),
        _ddp_data(),
        recipe=_sgd_recipe(),
        batch_size=4 // world,
        max_steps=1,
        seed=2,
    )
    save_file(
        {k: v.contiguous() for k, v in res.model.state_dict().items()},
        str(Path(out_dir) / f"rank{rank}.safetensors"),
    )


@pytest.mark.slow
def test_ddp_with_two_gloo_processes_matches_single_process_gradients(tmp_path):
    import torch.multiprocessing as mp
    from safetensors.torch import load_file

    w0 = {k: v.clone() for k, v in _tiny_srcnn(0).state_dict().items()}
    single = T.train(
        _tiny_srcnn(0), _ddp_data(), recipe=_sgd_recipe(), batch_size=4, max_steps=1, seed=2
    )
    grad_single = {k: w0[k] - v for k, v in single.model.state_dict().items()}
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [load_file(str(tmp_path / f"rank{r}.safetensors")) for r in range(2)]
    for key, g in grad_single.items():
        assert g.abs().max() > 0
        torch.testing.assert_close(ranks[0][key], ranks[1][key], rtol=0, atol=0)  # in sync
        torch.testing.assert_close(w0[key] - ranks[0][key], g, rtol=1e-4, atol=1e-7)


def test_measure_survives_a_model_with_constant_output():
    """A barely trained model can output a constant image: no resolution for it, no crash."""
    from napari_resolve.data.samples import mt_widefield
    from napari_resolve.train.finetuning import TrainingImage, measure, validation_dataset

    image, _ = mt_widefield()
    hr = image[:128, :128].astype(np.float32)
    model = models.build("srcnn", scale=2, in_channels=1)
    with torch.no_grad():
        model.body[-1].weight.zero_()
        model.body[-1].bias.fill_(-1.0)  # every output pixel -1 -> clipped to a constant 0
    meta = bundle.default_meta(model)
    val = validation_dataset([TrainingImage("mt", hr)], meta)
    m = measure(model, val, pixel_size_nm=31.3)
    assert m.resolutions == [None] and m.resolution is None
    assert np.isfinite(m.psnr)
