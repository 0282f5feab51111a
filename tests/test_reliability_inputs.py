"""Issue 15, item 8: small gaps: compressed TIFFs read, impossible values refused in one line."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_resolve.cli import main
from napari_resolve.errors import InputError
from napari_resolve.io import read_image, write_image


@pytest.mark.parametrize("compression", ["lzw", "jpeg", "zstd"])
def test_compressed_tiffs_are_read(tmp_path, rng, compression):
    import imagecodecs  # noqa: F401 - a dependency (pyproject): no skip

    image = rng.integers(0, 255, (64, 64), dtype=np.uint8)
    path = tmp_path / f"{compression}.tif"
    tifffile.imwrite(path, image, compression=compression)
    arr, _ = read_image(path)
    assert arr.shape == (64, 64)
    if compression != "jpeg":  # lossless
        np.testing.assert_array_equal(arr, image)
    else:
        assert np.abs(arr.astype(int) - image).mean() < 60


def test_resolution_refuses_an_unknown_unit(tmp_path, rng, capsys):
    path = tmp_path / "a.npy"
    np.save(path, rng.random((64, 64)))
    rc = main(["resolution", str(path), "--pixel-size", "1", "--unit", "parsec"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: unknown --unit 'parsec'")


def test_training_on_a_constant_image_is_refused(tmp_path):
    from napari_resolve.train import train

    folder = tmp_path / "hr"
    folder.mkdir()
    write_image(folder / "flat.tif", np.full((48, 48), 77, np.uint8))
    write_image(folder / "flat2.tif", np.full((48, 48), 12, np.uint8))
    with pytest.raises(InputError, match="constant"):
        train("srcnn", str(folder), scale=2, patch_size=16, max_steps=1, device="cpu")


@pytest.mark.parametrize("value", [2.0, 0.0, -0.5])
def test_val_fraction_outside_0_1_is_refused_by_the_api(tmp_path, rng, value):
    from napari_resolve.train import train

    with pytest.raises(InputError, match="val_fraction"):
        train("srcnn", rng.random((3, 32, 32)), scale=2, val_fraction=value, max_steps=1)
