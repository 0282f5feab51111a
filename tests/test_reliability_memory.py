"""Issue 15, item 3: sizes are checked from headers and estimates before anything is allocated.

Each hostile file here is tiny on disk and claims a huge array: a model file
whose metadata asks for 20000 features, a deflate-bomb TIFF, a ``.npy``
header claiming 100000², an ``imresize`` to 1e-9 or 1e5 times the size.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from napari_resolve import bundle, models
from napari_resolve.cli import main
from napari_resolve.errors import BundleError, InputError
from napari_resolve.io import read_image, set_pixel_limit


def test_bundle_shapes_are_checked_before_the_model_is_built(tmp_path, monkeypatch):
    from safetensors.torch import load_file, save_file

    src = bundle.save(tmp_path / "np.safetensors", models.build("np", scale=2))
    meta = bundle.read_meta(src)
    meta["config"]["features"] = 20000  # ~300 GB of weights if built
    bad = tmp_path / "bomb.safetensors"
    save_file(load_file(str(src)), str(bad), metadata={bundle.META_KEY: json.dumps(meta)})
    assert bad.stat().st_size < 3_000_000

    import torch

    real_build = models.build

    def guarded_build(name, **config):
        if config.get("features") == 20000 and torch.empty(0).device.type != "meta":
            raise AssertionError("the 20000-feature model was allocated")
        return real_build(name, **config)

    monkeypatch.setattr(models, "build", guarded_build)
    with pytest.raises(BundleError, match="does not fit architecture"):
        bundle.load(bad)


def test_deflate_bomb_tiff_is_refused_from_its_header(tmp_path):
    path = tmp_path / "bomb.tif"
    side, tile = 12288, 1024  # 151 M px of zeros: a few hundred kB compressed
    tiles = (np.zeros((tile, tile), np.uint8) for _ in range((side // tile) ** 2))
    tifffile.imwrite(path, tiles, shape=(side, side), dtype=np.uint8, tile=(tile, tile),
                     compression="zlib")
    assert path.stat().st_size < 2_000_000
    with pytest.raises(InputError, match="limit for in-memory work.*zarr.*--max-pixels"):
        read_image(path)


def test_npy_header_claiming_100000_squared_is_refused(tmp_path):
    from numpy.lib import format as npformat

    path = tmp_path / "huge.npy"
    with open(path, "wb") as fh:
        npformat.write_array_header_1_0(
            fh, {"descr": "<f8", "fortran_order": False, "shape": (100000, 100000)})
        fh.write(b"\0" * 64)
    with pytest.raises(InputError, match="limit for in-memory work"):
        read_image(path)
    set_pixel_limit(10**11)  # even when allowed, a header that lies about the size is refused
    try:
        with pytest.raises(InputError, match="truncated"):
            read_image(path)
    finally:
        set_pixel_limit(None)


def test_max_pixels_override(tmp_path, rng, capsys):
    path = tmp_path / "a.npy"
    np.save(path, rng.random((64, 64)))
    set_pixel_limit(1000)
    try:
        with pytest.raises(InputError, match="1,000 limit"):
            read_image(path)
    finally:
        set_pixel_limit(None)
    assert read_image(path)[0].shape == (64, 64)
    rc = main(["resolution", str(path), "--max-pixels", "1000"])
    assert rc == 2 and "--max-pixels" in capsys.readouterr().err
    assert main(["resolution", str(path), "--max-pixels", "100000"]) == 0


def test_imresize_estimates_its_output_before_allocating(rng):
    from napari_resolve.data.degrade import imresize

    x = rng.random((32, 32))
    with pytest.raises(InputError, match="below one pixel"):
        imresize(x, 1e-9)
    with pytest.raises(InputError, match="exceeds"):
        imresize(x, 1e5)


def test_huge_scale_for_bicubic_is_refused(tmp_path, rng, capsys):
    path = tmp_path / "a.tif"
    tifffile.imwrite(path, rng.integers(0, 255, (16, 16), dtype=np.uint8))
    rc = main(["predict", str(path), "-o", str(tmp_path / "o.tif"), "--model", "bicubic",
               "--scale", "5000"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: --scale must be a positive integer (at most 16)")
    assert not (tmp_path / "o.tif").exists()
