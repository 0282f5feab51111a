"""``napari-resolve evaluate`` on real sample images: HR-only, LR/HR pairs, bundles, errors."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from napari_resolve import bundle, models
from napari_resolve.cli import main
from napari_resolve.data.degrade import imresize
from napari_resolve.io import read_image, write_image
from napari_resolve.metrics import psnr, ssim

ROW = re.compile(r"^(\S+)\s+(\d+)x(\d+)\s+([\d.]+)\s+([\d.]+)$", re.M)
MEAN = re.compile(r"^mean \((\d+) images?\)\s+([\d.]+)\s+([\d.]+)$", re.M)


def _rows(out: str) -> dict:
    return {m[1]: (float(m[4]), float(m[5])) for m in ROW.finditer(out)}


@pytest.fixture(scope="module")
def wbc2(sample_dir):
    return sample_dir / "wbc-zheng2018" / "dataset2" / "images"


def test_hr_only_bicubic_on_wbc(wbc2, capsys):
    paths = [wbc2 / "001.bmp", wbc2 / "034.bmp"]
    assert main(["evaluate", "--hr-only", *map(str, paths), "--scale", "4", "--model", "bicubic"]) == 0
    out = capsys.readouterr().out
    assert "x4, crop 4 px" in out and "Y channel" in out
    rows = _rows(out)
    assert set(rows) == {"001.bmp", "034.bmp"}
    # independent check: MATLAB bicubic down and up in RGB, metrics on Y with crop 4
    for path in paths:
        hr = read_image(path)[0]
        lr = imresize(hr, 0.25, channel_axis=-1)
        sr = np.clip(imresize(lr.astype(np.float64), 4, channel_axis=-1), 0, 255)
        p, s = rows[path.name]
        assert p == pytest.approx(psnr(sr, hr, crop=4), abs=0.01)
        assert s == pytest.approx(ssim(sr, hr, crop=4), abs=1e-3)
        assert 28 < p < 40 and 0.85 < s < 1
    mean = MEAN.search(out)
    assert int(mean[1]) == 2
    assert float(mean[2]) == pytest.approx(np.mean([r[0] for r in rows.values()]), abs=2e-3)


def test_pairs_equal_hr_only_and_json(wbc2, tmp_path, capsys):
    hr = read_image(wbc2 / "011.bmp")[0][:299, :298]  # not a multiple of 2: HR-only crops it
    write_image(tmp_path / "hr.png", hr)
    write_image(tmp_path / "lr.png", imresize(hr[:298, :298], 0.5, channel_axis=-1))
    out_json = tmp_path / "res.json"
    assert main(["evaluate", "--lr", str(tmp_path / "lr.png"), "--hr", str(tmp_path / "hr.png"),
                 "--json", str(out_json)]) == 2  # bicubic defaults to x4: 298 is not 4 x 149
    assert "not x4" in capsys.readouterr().err
    assert main(["evaluate", "--lr", str(tmp_path / "lr.png"), "--hr", str(tmp_path / "hr.png"),
                 "--scale", "2", "--json", str(out_json)]) == 0
    pair = _rows(capsys.readouterr().out)["hr.png"]
    assert main(["evaluate", "--hr-only", str(tmp_path / "hr.png"), "--scale", "2"]) == 0
    hr_only = _rows(capsys.readouterr().out)["hr.png"]
    assert pair == hr_only
    saved = json.loads(out_json.read_text())
    assert saved["images"][0]["shape"] == [298, 298, 3] and saved["images"][0]["crop"] == 2
    assert saved["mean"]["psnr"] == pytest.approx(pair[0], abs=1e-3)


def test_grey_fluorescence_all_channels_and_crop(sample_dir, capsys):
    avg = next((sample_dir / "nd-twophoton-srrf" / "bpae_fov08").glob("*AVG*.tif"))
    # raw figures (uint16 grey defaults to the fluorescence fit metric, tests/test_fluorescence_real.py)
    assert main(["evaluate", "--hr-only", str(avg), "--scale", "2", "--crop", "0", "--metric", "raw"]) == 0
    p0 = _rows(capsys.readouterr().out)[avg.name][0]
    assert main(["evaluate", "--hr-only", str(avg), "--scale", "2", "--metric", "raw"]) == 0
    p2 = _rows(capsys.readouterr().out)[avg.name][0]
    hr = read_image(avg)[0]
    sr = imresize(imresize(hr, 0.5).astype(np.float64), 2)
    assert p2 == pytest.approx(psnr(sr, hr, crop=2), abs=0.01)  # uint16: MAX 65535
    assert p0 != p2


def test_bundle_model_and_scale_check(sample_dir, tmp_path, capsys):
    torch.manual_seed(0)
    net = models.build("srcnn", scale=2)
    path = bundle.save(tmp_path / "srcnn-x2.safetensors", net)
    cell = sample_dir / "wbc-zheng2018" / "dataset1" / "images" / "001.bmp"
    assert main(["evaluate", "--hr-only", str(cell), "--model", str(path)]) == 0
    out = capsys.readouterr().out
    assert "x2, crop 2 px" in out and "001.bmp" in _rows(out)
    assert main(["evaluate", "--hr-only", str(cell), "--model", str(path), "--scale", "4"]) == 2
    assert "is x2" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--hr-only", "missing.tif", "--scale", "4"], "not found"),
        (["--scale", "4"], "give --hr-only"),
        (["--lr", "a.png", "b.png", "--hr", "c.png"], "pair them"),
        (["--hr-only", "x.png", "--lr", "a.png", "--hr", "b.png"], "not both"),
        (["--hr-only", "{cell}", "--model", "gp"], "architecture, not a trained model"),
        (["--hr-only", "{cell}", "--model", "weights.pth"], "pickle"),
        (["--hr-only", "{cell}", "--model", "nosuchmodel"], "nosuchmodel"),
        (["--hr-only", "{cell}", "--scale", "0"], "positive"),
        (["--hr-only", "{cell}", "--scale", "200"], "at most 16"),  # issue 15: scale bound
    ],
)
def test_bad_input_exits_2_with_one_line(sample_dir, capsys, argv, message):
    cell = str(sample_dir / "wbc-zheng2018" / "dataset1" / "images" / "001.bmp")
    code = main(["evaluate", *[a.replace("{cell}", cell) for a in argv]])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
