"""Image I/O: formats, physical pixel size, atomic writes, pickles refused."""

from __future__ import annotations

import pickle
import warnings

import mrcfile
import numpy as np
import pytest
import tifffile

from napari_resolve.errors import InputError
from napari_resolve.io import read_image, write_image


def test_ome_tiff_round_trip_with_pixel_size(tmp_path, rng):
    image = rng.integers(0, 65535, (37, 53), dtype=np.uint16)
    path = write_image(tmp_path / "out.ome.tif", image, pixel_size=0.0313)
    back, meta = read_image(path)
    np.testing.assert_array_equal(back, image)
    assert back.dtype == np.uint16
    assert meta["pixel_size"] == pytest.approx(0.0313) and meta["unit"] == "µm"
    assert meta["axes"] == "YX" and meta["format"] == "tiff" and meta["rgb"] is False
    with tifffile.TiffFile(path) as tif:  # a real OME-TIFF, readable by other software
        assert tif.is_ome and 'PhysicalSizeX="0.0313"' in tif.ome_metadata
    assert [p.name for p in tmp_path.iterdir()] == ["out.ome.tif"]  # no temp file left


def test_rgb_and_anisotropic_nm_pixel_size(tmp_path, wbc_cell):
    image = wbc_cell[0]
    write_image(tmp_path / "cell.tif", image, pixel_size=(65.0, 70.0), unit="nm")
    back, meta = read_image(tmp_path / "cell.tif")
    np.testing.assert_array_equal(back, image)
    assert meta["rgb"] is True and meta["axes"] == "YXS"
    assert meta["pixel_size_yx"] == pytest.approx((0.065, 0.070))
    stack = np.stack([image[..., 0]] * 4).astype(np.float32)
    write_image(tmp_path / "stack.tif", stack, pixel_size=0.1)
    back, meta = read_image(tmp_path / "stack.tif")
    assert back.shape == (4, 300, 300) and back.dtype == np.float32 and meta["axes"] == "ZYX"


def test_imagej_and_resolution_tags(tmp_path):
    image = np.arange(64, dtype=np.uint16).reshape(8, 8)
    tifffile.imwrite(tmp_path / "ij.tif", image, imagej=True, resolution=(1 / 0.065, 1 / 0.065),
                     metadata={"unit": "micron"})
    assert read_image(tmp_path / "ij.tif")[1]["pixel_size"] == pytest.approx(0.065)
    tifffile.imwrite(tmp_path / "ij_nm.tif", image, imagej=True, resolution=(1 / 40, 1 / 40),
                     metadata={"unit": "nm"})
    assert read_image(tmp_path / "ij_nm.tif")[1]["pixel_size"] == pytest.approx(0.040)
    tifffile.imwrite(tmp_path / "cm.tif", image, resolution=(20000, 20000), resolutionunit="CENTIMETER")
    assert read_image(tmp_path / "cm.tif")[1]["pixel_size"] == pytest.approx(0.5)
    tifffile.imwrite(tmp_path / "dpi.tif", image, resolution=(72, 72), resolutionunit="INCH")
    assert read_image(tmp_path / "dpi.tif")[1]["pixel_size"] is None  # a print setting
    tifffile.imwrite(tmp_path / "plain.tif", image)
    assert read_image(tmp_path / "plain.tif")[1]["pixel_size_yx"] is None


def test_sample_formats(sample_dir):
    mt, meta = read_image(sample_dir / "rdl-sim-microtubules-raw/MT.mrc")
    assert mt.shape == (9, 256, 256) and mt.dtype == np.uint16
    assert meta["pixel_size"] == pytest.approx(0.0626) and meta["axes"] == "ZYX"  # Priism header, µm
    bmp, meta = read_image(sample_dir / "wbc-zheng2018/dataset2/images/001.bmp")
    assert bmp.shape == (300, 300, 3) and meta["pixel_size"] is None and meta["rgb"]
    jpg, _ = read_image(sample_dir / "bccd/JPEGImages/BloodImage_00000.jpg")
    assert jpg.shape == (480, 640, 3)
    mask, meta = read_image(sample_dir / "wbc-zheng2018/dataset2/masks/001.png")
    assert mask.shape == (300, 300) and meta["axes"] == "YX"
    tif, meta = read_image(next((sample_dir / "nd-twophoton-srrf/bpae_fov08").glob("*SRRF.tif")))
    assert tif.shape == (256, 256) and tif.dtype == np.uint16


def test_standard_mrc_is_in_angstrom(tmp_path):
    data = np.arange(48, dtype=np.float32).reshape(6, 8)
    with mrcfile.new(tmp_path / "em.mrc") as mrc:
        mrc.set_data(data)
        mrc.voxel_size = 12.5  # Å, the MRC standard
    back, meta = read_image(tmp_path / "em.mrc")
    np.testing.assert_array_equal(back, data)
    assert meta["pixel_size"] == pytest.approx(12.5e-4)


def test_png_and_npy_round_trips(tmp_path, wbc_cell):
    write_image(tmp_path / "cell.png", wbc_cell[0])
    np.testing.assert_array_equal(read_image(tmp_path / "cell.png")[0], wbc_cell[0])
    labels16 = wbc_cell[1].astype(np.uint16) * 1000
    write_image(tmp_path / "labels.png", labels16)
    np.testing.assert_array_equal(read_image(tmp_path / "labels.png")[0], labels16)
    write_image(tmp_path / "x.npy", wbc_cell[1])
    np.testing.assert_array_equal(read_image(tmp_path / "x.npy")[0], wbc_cell[1])
    with pytest.raises(InputError, match="PNG"):
        write_image(tmp_path / "f.png", np.zeros((4, 4), np.float32))


def test_pickles_are_never_opened(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    for name in ("model.pt", "model.pth", "weights.ckpt", "image.pkl"):
        path = tmp_path / name
        path.write_bytes(pickle.dumps(Evil()))
        with pytest.raises(InputError, match="pickle"):
            read_image(path)
    assert not marker.exists()
    np.save(tmp_path / "objects.npy", np.array([Evil()], dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match="unpickling"):
        read_image(tmp_path / "objects.npy")
    assert not marker.exists()
    with pytest.raises(InputError, match="pickle"):
        write_image(tmp_path / "out.pt", np.zeros((4, 4)))


def test_read_errors(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_image(tmp_path / "missing.tif")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(InputError, match="unknown image format .txt"):
        read_image(tmp_path / "notes.txt")
    with pytest.raises(InputError, match="folder"):
        read_image(tmp_path)
    (tmp_path / "broken.tif").write_bytes(b"II*\x00garbage")
    with pytest.raises(InputError, match="not a readable TIFF"):
        read_image(tmp_path / "broken.tif")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(InputError, match="not a readable PNG"):
        read_image(tmp_path / "broken.png")
    (tmp_path / "broken.mrc").write_bytes(b"\x00" * 100)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(InputError, match="not a readable MRC"):
            read_image(tmp_path / "broken.mrc")


@pytest.mark.parametrize(
    "array, kwargs, match",
    [
        (np.zeros(5), {}, "2-D"),
        (np.zeros((0, 5)), {}, "2-D"),
        (np.array([["a", "b"]]), {}, "dtype"),
        (np.zeros((4, 4)), {"axes": "ZYX"}, "axes"),
        (np.zeros((4, 4)), {"pixel_size": -1.0}, "positive"),
        (np.zeros((4, 4)), {"pixel_size": 1.0, "unit": "furlong"}, "unit"),
    ],
)
def test_write_errors(tmp_path, array, kwargs, match):
    with pytest.raises(InputError, match=match):
        write_image(tmp_path / "out.tif", array, **kwargs)
    assert not list(tmp_path.iterdir())


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    target = tmp_path / "keep.tif"
    write_image(target, np.ones((4, 4), np.uint8))

    def boom(path, *args, **kwargs):
        with open(path, "wb") as fh:
            fh.write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(tifffile, "imwrite", boom)
    with pytest.raises(OSError, match="disk full"):
        write_image(target, np.zeros((4, 4), np.uint8))
    np.testing.assert_array_equal(read_image(target)[0], 1)  # the old file is intact
    assert [p.name for p in tmp_path.iterdir()] == ["keep.tif"]
    with pytest.raises(InputError, match="cannot write"):
        write_image(tmp_path / "x.jpg", np.zeros((4, 4), np.uint8))
