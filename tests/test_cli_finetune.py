"""``napari-resolve finetune`` (headless fine-tuning), the pretrained-name alias and the data checks.

Data: the real two-photon BPAE field of ``sample_data`` (frame average as HR,
the raw single frame binned 2×2 as a real LR partner), written as OME-TIFF
with a pixel size so that resolutions come out in nm.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_resolve import bundle, cli, models
from napari_resolve.errors import BundleError, InputError
from napari_resolve.io import write_image
from napari_resolve.train.finetuning import TrainingImage, check_images, hold_out

PX_UM = 0.0313


@pytest.fixture(scope="module")
def bpae():
    from napari_resolve.data.samples import twophoton

    tp = twophoton("bpae")
    return tp.avg, tp.raw


@pytest.fixture(scope="module")
def small_bundle(tmp_path_factory):
    """MHTCUN-lite ×2 (paper 003), small, with the bundled model's metadata (pairs-trained)."""
    torch.manual_seed(0)
    model = models.build("mhtcun-lite", scale=2, channels=(8, 8, 16), reduction=4)
    return bundle.save(tmp_path_factory.mktemp("m") / "small.safetensors", model, {
        "normalization": {"mode": "percentile", "low": 1.0, "high": 99.8},
        "degradation": {"kind": "paired", "scale": 2},
        "pixel_size": {"value": 0.0626, "unit": "µm"},
    })


def test_pretrained_name_without_variant_resolves_when_unambiguous(tmp_path, monkeypatch):
    model = models.build("srcnn", scale=2, filters=(4, 2))
    for name in ("foo-x2", "gp-x4", "gp-x8"):
        bundle.save(tmp_path / f"{name}.safetensors", model)
    bundle.save(tmp_path / "foo-x2.state.safetensors", model)  # a resume state is not a model
    monkeypatch.setattr(bundle, "pretrained_dir", lambda: tmp_path)
    assert bundle.resolve("foo") == tmp_path / "foo-x2.safetensors"
    assert bundle.resolve("gp-x8") == tmp_path / "gp-x8.safetensors"
    with pytest.raises(BundleError, match="'gp' is ambiguous: gp-x4, gp-x8; give the full name"):
        bundle.resolve("gp")
    with pytest.raises(BundleError, match="no model file or pretrained bundle named 'fo'"):
        bundle.resolve("fo")  # a prefix must end where a name part ends
    assert bundle.load("foo")[0].scale == 2


def test_the_bundled_mhtcun_lite_answers_to_its_short_name():
    path = bundle.resolve("mhtcun-lite")
    assert path.name == "mhtcun-lite-x2.safetensors"
    assert bundle.read_meta("mhtcun-lite")["architecture"] == "mhtcun-lite"


def test_checks_and_held_out_validation_never_overlap(bpae):
    avg, raw = bpae
    lr = raw[:48, :48]
    # an HR side off by one pixel is cropped with a warning; more is an error
    (im,), warnings = check_images([TrainingImage("p", avg[:97, :96], lr=lr)], scale=2)
    assert im.hr.shape == (96, 96) and "not ×2 of LR 48×48" in warnings[0]
    with pytest.raises(InputError, match="HR is 96×96 but ×2 of LR 40×40 is 80×80"):
        check_images([TrainingImage("p", avg[:96, :96], lr=raw[:40, :40])], scale=2)
    with pytest.raises(InputError, match="mix forms"):
        check_images([TrainingImage("a", avg), TrainingImage("b", avg, lr=raw[:128, :128])], scale=2)
    # one image: a band at the end of the longer side; the two parts tile the image
    (train,), (val,) = hold_out([TrainingImage("f", avg[:100, :256], lr=None)], 0.2, 2)
    assert train.hr.shape == (100, 192) and val.hr.shape == (100, 64) and val.origin == (0, 192)
    assert np.array_equal(np.concatenate([train.hr, val.hr], axis=1), avg[:100, :256])
    pairs = [TrainingImage(str(i), avg[:64, :64], lr=raw[:32, :32]) for i in range(5)]
    train, val = hold_out(pairs, 0.2, 2)
    assert [t.name for t in train] == ["0", "1", "2", "3"] and [v.name for v in val] == ["4"]


def test_cli_finetune_hr_only_with_before_after(tmp_path, capsys, bpae):
    avg, _ = bpae
    hr = tmp_path / "bpae.ome.tif"
    write_image(hr, avg[:96, :128], pixel_size=PX_UM)
    out = tmp_path / "mine.safetensors"
    argv = ["finetune", "--from", "mhtcun-lite", "--hr", str(hr), "--max-steps", "2",
            "--patch-size", "32", "--batch-size", "2", "--val-fraction", "0.3", "--quiet",
            "-o", str(out)]
    assert cli.main(argv) == 0, capsys.readouterr().err
    printed = capsys.readouterr()
    assert "val PSNR (dB)" in printed.out and "fine-tuned" in printed.out
    assert "PSNR gain" in printed.out and "resolution (nm)" in printed.out
    assert f"wrote {out}" in printed.err
    _, meta = bundle.load(out)
    assert meta["parent"] == "mhtcun-lite-x2" and meta["architecture"] == "mhtcun-lite"
    ft = meta["finetune"]
    assert ft["images"][0]["pixel_size_nm"] == pytest.approx(31.3)
    assert ft["validation"]["images"][0]["origin"] == [0, 64]  # the last 64 columns held back
    assert ft["before"]["unit"] == "nm" and ft["after"]["val_psnr"] is not None
    assert meta["metrics"]["psnr_gain_db"] == pytest.approx(
        ft["after"]["val_psnr"] - ft["before"]["val_psnr"], abs=1e-3)
    # the bundled model trained on simulated pairs: HR-only data get the camera model it records
    recorded = bundle.read_meta(bundle.resolve("mhtcun-lite-x2"))["degradation"]["for_hr_only"]
    assert meta["degradation"] == {**recorded, "scale": 2}
    assert meta["degradation"]["kind"] == "widefield"
    assert meta["degradation"]["pixel_size"] == pytest.approx(31.3)
    assert meta["training"]["steps"] == 2 and meta["training"]["stopped"] == "steps"
    # an existing output is not replaced
    assert cli.main(argv) == 2 and "exists" in capsys.readouterr().err


def test_cli_finetune_pairs_and_wrong_inputs(tmp_path, capsys, bpae, small_bundle):
    avg, raw = bpae
    (tmp_path / "HR").mkdir()
    (tmp_path / "LR").mkdir()
    binned = raw.astype(np.float32).reshape(128, 2, 128, 2).mean(axis=(1, 3))
    for name, rows in (("a", slice(0, 64)), ("b", slice(64, 128)), ("c", slice(128, 192))):
        write_image(tmp_path / "HR" / f"{name}.tif", avg[rows, :128])
        lr_rows = slice(rows.start // 2, rows.stop // 2)
        write_image(tmp_path / "LR" / f"{name}.tif", binned[lr_rows, :64])
    out = tmp_path / "pairs.safetensors"
    rc = cli.main(["finetune", "--from", str(small_bundle), "--hr", str(tmp_path), "--epochs", "1",
                   "--patch-size", "32", "--batch-size", "4", "--quiet", "-o", str(out)])
    assert rc == 0, capsys.readouterr().err
    assert "base" in capsys.readouterr().out
    _, meta = bundle.load(out)
    assert meta["degradation"]["kind"] == "paired" and meta["finetune"]["form"] == "LR/HR pairs"
    assert [v["name"] for v in meta["finetune"]["validation"]["images"]] == ["c.tif"]
    assert meta["finetune"]["before"]["unit"] == "px"

    # wrong inputs: one line, exit 2, nothing written
    bad = tmp_path / "bad.safetensors"
    (tmp_path / "wrong").mkdir()
    write_image(tmp_path / "wrong" / "a.tif", binned[:20, :20])  # matched to HR a.tif by name
    cases = [
        (["--hr", str(tmp_path / "HR" / "a.tif"), "--lr", str(tmp_path / "wrong" / "a.tif"),
          "--epochs", "1"], "HR image must be 2× the LR image"),
        (["--hr", str(tmp_path / "HR" / "a.tif")], "give --minutes or --epochs"),
        (["--hr", str(tmp_path / "none.tif"), "--epochs", "1"], "not found"),
    ]
    for extra, message in cases:
        rc = cli.main(["finetune", "--from", str(small_bundle), *extra, "--quiet", "-o", str(bad)])
        err = capsys.readouterr().err
        assert rc == 2 and message in err and err.startswith("error: "), err
        assert not bad.exists()
    rc = cli.main(["finetune", "--from", "no-such-model", "--hr", str(tmp_path / "HR"),
                   "--epochs", "1", "-o", str(bad)])
    assert rc == 2 and "no model file or pretrained bundle named 'no-such-model'" in (
        capsys.readouterr().err)
