"""Issue 15, item 4: hostile files and options end in one ``error:`` line and exit 2.

Never a traceback: corrupt compressed TIFFs, model files with absurd or
deeply nested metadata, resume states with broken JSON, impossible options,
a stale ``.NAME.old`` folder from a killed run.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_resolve import bundle, models
from napari_resolve.cli import main
from napari_resolve.io import write_image


def _one_line_error(argv, capsys) -> str:
    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    last = err.splitlines()[-1]
    assert last.startswith("error: ") and "Traceback" not in err, err
    return last


@pytest.fixture
def img(tmp_path, rng) -> Path:
    path = tmp_path / "cell.tif"
    write_image(path, rng.integers(0, 255, (32, 32), dtype=np.uint8))
    return path


def _rewrite_meta(src: Path, dst: Path, raw: str) -> Path:
    """A copy of bundle ``src`` whose napari-resolve metadata string is ``raw``."""
    from safetensors.torch import load_file, save_file

    save_file(load_file(str(src)), str(dst), metadata={bundle.META_KEY: raw})
    return dst


@pytest.fixture
def srcnn_file(tmp_path) -> Path:
    return bundle.save(tmp_path / "srcnn.safetensors", models.build("srcnn", scale=2))


def test_corrupt_deflate_tiff(tmp_path, rng, capsys):
    path = tmp_path / "bad.tif"
    tifffile.imwrite(path, rng.integers(0, 255, (64, 64), dtype=np.uint8), compression="zlib")
    with tifffile.TiffFile(path) as tif:
        offset = tif.pages[0].dataoffsets[0]
    data = bytearray(path.read_bytes())
    data[offset + 2 : offset + 40] = b"\xff" * 38  # the deflate stream, not the header
    path.write_bytes(bytes(data))
    err = _one_line_error(["predict", path, "-o", tmp_path / "o.tif", "--model", "bicubic",
                           "--scale", "2"], capsys)
    assert "bad.tif is not a readable TIFF" in err


@pytest.mark.parametrize(
    "change, needle",
    [
        (lambda m: m.update(scale="abc"), "'scale'"),
        (lambda m: m["config"].update(features=-5), "out of range"),
        (lambda m: m.update(color_mode="cmyk"), "color_mode"),
        (lambda m: m.update(normalization={"mode": "sqrt"}), "normalization"),
    ],
)
def test_bad_metadata_values(srcnn_file, img, tmp_path, capsys, change, needle):
    meta = bundle.read_meta(srcnn_file)
    change(meta)
    bad = _rewrite_meta(srcnn_file, tmp_path / "bad.safetensors", json.dumps(meta))
    err = _one_line_error(["predict", img, "-o", tmp_path / "o.tif", "--model", bad], capsys)
    assert needle in err


def test_deeply_nested_metadata(srcnn_file, img, tmp_path, capsys):
    deep = '{"architecture": "srcnn", "scale": 2, "x": ' + "[" * 100000 + "]" * 100000 + "}"
    bad = _rewrite_meta(srcnn_file, tmp_path / "deep.safetensors", deep)
    err = _one_line_error(["predict", img, "-o", tmp_path / "o.tif", "--model", bad], capsys)
    assert "corrupt" in err


@pytest.mark.parametrize("raw", ["{not json", "{}", "[]"])
def test_resume_state_with_bad_json(tmp_path, raw, capsys):
    import torch
    from safetensors.torch import save_file

    from napari_resolve.train.checkpoint import STATE_KEY

    state = tmp_path / "run.state.safetensors"
    save_file({"model/w": torch.zeros(1)}, str(state), metadata={STATE_KEY: raw})
    err = _one_line_error(["train", "--resume", state, "-o", tmp_path / "run.safetensors"],
                          capsys)
    assert "corrupt training state" in err


@pytest.mark.parametrize(
    "option, needle",
    [(["--workers", "-1"], "--workers"), (["--batch-size", "0"], "--batch-size"),
     (["--val-fraction", "2"], "--val-fraction")],
)
def test_impossible_training_options(img, tmp_path, capsys, option, needle):
    err = _one_line_error(["train", "--arch", "srcnn", "--scale", "2", "--data", img, "-o",
                           tmp_path / "m.safetensors", *option], capsys)
    assert needle in err


def test_stale_old_folder_does_not_block_a_folder_replacement(tmp_path):
    from napari_resolve._atomic import atomic_path

    out = tmp_path / "pairs"
    out.mkdir()
    (out / "report.json").write_text("{}")
    stale = tmp_path / ".pairs.old"  # left by a run killed between its two renames
    stale.mkdir()
    (stale / "report.json").write_text("{}")
    with atomic_path(out, suffix="") as tmp:
        tmp.mkdir()
        (tmp / "report.json").write_text('{"new": 1}')
    assert json.loads((out / "report.json").read_text()) == {"new": 1}
    assert stale.is_dir()  # not ours to delete
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".old")] == [".pairs.old"]
