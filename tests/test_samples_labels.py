"""Sample-data loaders and parsing maps (masks, label checks, one-hot, LabelMe)."""

from __future__ import annotations

import json
import shutil
import warnings

import mrcfile
import numpy as np
import pytest
import torch
from skimage.io import imread

from napari_resolve.data import samples
from napari_resolve.data.labels import (
    LABEL_NAMES,
    check_labels,
    labelme_to_labels,
    labels_to_labelme,
    labels_to_mask,
    labels_to_onehot,
    mask_to_labels,
)
from napari_resolve.errors import InputError

# --- sample data ----------------------------------------------------------------------


def test_sample_data_is_small_and_licensed(sample_dir):
    total = sum(p.stat().st_size for p in sample_dir.rglob("*") if p.is_file())
    assert total < 15 * 2**20
    for folder in ("wbc-zheng2018", "bccd", "nd-twophoton-srrf", "rdl-sim-microtubules-raw", "skimage-ihc"):
        assert (sample_dir / folder / "SOURCE.md").is_file()
        assert list((sample_dir / folder).glob("LICENSE-*.txt")), folder
        assert "napari-resolve `sample_data/`" in (sample_dir / folder / "SOURCE.md").read_text()
    readme = (sample_dir / "README.md").read_text()
    assert "licence" in readme.lower()
    for folder in (p for p in sample_dir.iterdir() if p.is_dir()):  # every folder, new ones too
        assert (folder / "SOURCE.md").is_file(), folder.name
        assert list(folder.glob("LICENSE*")), folder.name
        assert f"`{folder.name}/`" in readme, folder.name


@pytest.mark.parametrize("dataset", [1, 2])
def test_wbc_loader(dataset):
    items = samples.wbc(dataset)
    assert len(items) == 12 == len(samples.wbc_ids(dataset))
    for image, labels, meta in items:
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
        assert labels.dtype == np.uint8 and labels.shape == image.shape[:2]
        assert set(np.unique(labels)) == {0, 1, 2}  # every cell has background, cytoplasm, nucleus
        assert meta.licence == "GPL-3.0" and meta.pixel_size is None
        assert meta.extra["dataset"] == dataset and meta.extra["cell_class"] in samples.WBC_CLASSES.values()
        # nucleus is darker than the background in these stains (Y channel)
        grey = image.mean(axis=2)
        assert grey[labels == 2].mean() < grey[labels == 0].mean()
    if dataset == 2:
        assert {it[0].shape for it in items} == {(300, 300, 3)}


def test_wbc_ids_classes_and_stray_mask_values(sample_dir):
    (image, labels, meta), = samples.wbc(2, ids=[7])
    assert meta.extra == {"id": 7, "dataset": 2, "cell_class": "eosinophil"}  # class 4 in the CSV
    (_, labels34, _), = samples.wbc(2, ids=[34])
    raw = imread(sample_dir / "wbc-zheng2018/dataset2/masks/034.png")
    stray = ~np.isin(raw, [0, 128, 255])
    assert stray.sum() == 97  # values 2..45 (SOURCE.md): all nearest to 0
    assert (labels34[stray] == 0).all()
    first = samples.wbc(1, ids="073")[0]
    assert first[0].shape == (108, 112, 3)  # dataset1 sizes vary


def test_loaders_take_another_root(sample_dir, tmp_path):
    # the full data set is used the same way: root = the source folder or its parent
    via_parent = samples.wbc(1, ids=[1], root=sample_dir)[0]
    via_folder = samples.wbc(1, ids=[1], root=sample_dir / "wbc-zheng2018")[0]
    np.testing.assert_array_equal(via_parent[0], via_folder[0])
    copy = tmp_path / "wbc-zheng2018" / "dataset1"
    for sub in ("images", "masks"):
        (copy / sub).mkdir(parents=True)
    shutil.copy(sample_dir / "wbc-zheng2018/dataset1/images/025.bmp", copy / "images")
    shutil.copy(sample_dir / "wbc-zheng2018/dataset1/masks/025.png", copy / "masks")
    items = samples.wbc(1, root=tmp_path)
    assert [m.extra["id"] for *_, m in items] == [25]
    assert items[0][2].extra["cell_class"] is None  # no class_labels.csv in this copy
    with pytest.raises(InputError, match="no image"):
        samples.wbc(1, ids=[2], root=tmp_path)
    with pytest.raises(InputError, match="dataset2 not found"):
        samples.wbc(2, root=tmp_path)
    with pytest.raises(InputError, match="not found"):
        samples.ihc(root=tmp_path / "nowhere")


def test_bad_loader_arguments():
    with pytest.raises(InputError, match="1 or 2"):
        samples.wbc(3)
    with pytest.raises(InputError, match="integers"):
        samples.wbc(1, ids=["one"])
    with pytest.raises(InputError, match="unknown two-photon"):
        samples.twophoton("zebrafish")
    with pytest.raises(InputError, match="not found"):
        samples.bccd_smear("BloodImage_99999")
    with pytest.raises(InputError, match="invalid"):
        samples.bccd_smear("../../etc/passwd")


def test_sample_root_env_override(monkeypatch, tmp_path, sample_dir):
    monkeypatch.setenv(samples.ENV_VAR, str(sample_dir))
    assert samples.sample_root() == sample_dir
    monkeypatch.setenv(samples.ENV_VAR, str(tmp_path / "missing"))
    with pytest.raises(InputError, match="not a folder"):
        samples.sample_root()


def test_bccd_smear_with_boxes():
    image, meta = samples.bccd_smear()
    assert image.shape == (480, 640, 3) and image.dtype == np.uint8
    boxes = meta.extra["boxes"]
    names = [b["name"] for b in boxes]
    assert names.count("WBC") == 1 and "RBC" in names
    wbc = next(b for b in boxes if b["name"] == "WBC")
    assert 0 <= wbc["xmin"] < wbc["xmax"] <= 640 and 0 <= wbc["ymin"] < wbc["ymax"] <= 480
    assert samples.bccd_names()[0] == "BloodImage_00000" and len(samples.bccd_names()) == 4
    # the stained WBC is darker than the smear around it
    inside = image[int(wbc["ymin"]):int(wbc["ymax"]), int(wbc["xmin"]):int(wbc["xmax"])]
    assert inside.mean() < image.mean()


@pytest.mark.parametrize("name", ["bpae", "mouse_kidney", "bpae_fov08"])
def test_twophoton(name):
    raw, avg, srrf, meta = samples.twophoton(name)
    assert raw.shape == avg.shape == srrf.shape == (256, 256)
    assert raw.dtype == avg.dtype == srrf.dtype == np.uint16
    assert meta.licence == "GPL-3.0" and "srrf" in meta.extra["srrf"].lower()
    # same field of view: the average correlates with the raw frame
    assert np.corrcoef(raw.ravel().astype(float), avg.ravel().astype(float))[0, 1] > 0.5
    # averaging frames lowers shot noise: the average is smoother than one raw frame
    assert np.abs(np.diff(avg.astype(float), axis=1)).mean() < np.abs(np.diff(raw.astype(float), axis=1)).mean()


def test_mt_widefield_is_mean_of_nine_frames(sample_dir):
    image, meta = samples.mt_widefield()
    with warnings.catch_warnings():  # Priism-style header: mrcfile warns, reads it fine
        warnings.simplefilter("ignore")
        with mrcfile.open(sample_dir / "rdl-sim-microtubules-raw/MT.mrc", permissive=True) as mrc:
            frames = np.array(mrc.data, dtype=np.float64)
    assert frames.shape == (9, 256, 256)
    assert image.shape == (256, 256) and image.dtype == np.float32
    np.testing.assert_allclose(image, frames.mean(axis=0), rtol=1e-6)
    assert meta.pixel_size == pytest.approx(0.0626) and meta.unit == "µm"


def test_ihc():
    image, meta = samples.ihc()
    assert image.shape == (512, 512, 3) and image.dtype == np.uint8
    assert meta.to_dict()["licence"].startswith("BSD")


# --- labels ---------------------------------------------------------------------------


def test_mask_to_labels_nearest_class():
    mask = np.array([[0, 7, 63, 64, 65], [128, 191, 192, 250, 255]], dtype=np.uint8)
    np.testing.assert_array_equal(mask_to_labels(mask), [[0, 0, 0, 0, 1], [1, 1, 2, 2, 2]])
    assert LABEL_NAMES == {0: "background", 1: "cytoplasm", 2: "nucleus"}
    rgb_mask = np.repeat(mask[..., None], 3, axis=2)
    np.testing.assert_array_equal(mask_to_labels(rgb_mask), mask_to_labels(mask))
    np.testing.assert_array_equal(labels_to_mask(mask_to_labels(mask)),
                                  [[0, 0, 0, 0, 128], [128, 128, 255, 255, 255]])


def test_mask_round_trip_on_real_mask(sample_dir):
    raw = imread(sample_dir / "wbc-zheng2018/dataset1/masks/001.png")
    np.testing.assert_array_equal(labels_to_mask(mask_to_labels(raw)), raw)


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.zeros((4, 4, 3), np.uint8) + np.array([0, 128, 255], np.uint8), "colours"),
        (np.zeros((2, 3, 4, 5)), "2-D"),
        (np.zeros((0, 4)), "empty"),
        (np.full((2, 2), np.nan), "NaN"),
        (np.array([["x"]]), "numeric"),
    ],
)
def test_mask_bad_input(bad, match):
    with pytest.raises(InputError, match=match):
        mask_to_labels(bad)


def test_check_labels():
    good = np.array([[0, 1], [2, 1]])
    out = check_labels(good, shape=(2, 2))
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(check_labels(good.astype(np.float32)), good)
    with pytest.raises(InputError, match=r"shape \(2, 2\), expected \(4, 4\)"):
        check_labels(good, shape=(4, 4))
    with pytest.raises(InputError, match="2-D"):
        check_labels(np.zeros((2, 2, 2), int))
    with pytest.raises(InputError, match="1 pixel"):
        check_labels(np.array([[0, 3], [1, 2]]))
    with pytest.raises(InputError, match="1 pixel"):
        check_labels(np.array([[0, -1], [1, 2]]))
    with pytest.raises(InputError, match="fractional"):
        check_labels(np.array([[0.5, 1.0]]))
    with pytest.raises(InputError, match="NaN"):
        check_labels(np.array([[np.nan, 1.0]]))
    with pytest.raises(InputError, match="dtype bool"):
        check_labels(np.ones((2, 2), bool))
    with pytest.raises(InputError, match="missing"):
        check_labels(None)


def test_onehot_numpy_and_torch(wbc_cell):
    labels = wbc_cell[1]
    onehot = labels_to_onehot(labels)
    assert onehot.shape == (3, *labels.shape) and onehot.dtype == np.float32
    np.testing.assert_array_equal(onehot.sum(axis=0), 1.0)
    np.testing.assert_array_equal(onehot.argmax(axis=0), labels)
    batch = labels_to_onehot(np.stack([labels, labels[::-1]]))
    assert batch.shape == (2, 3, *labels.shape)
    t = labels_to_onehot(torch.from_numpy(labels).long()[None])
    assert t.shape == (1, 3, *labels.shape) and t.dtype == torch.float32
    np.testing.assert_array_equal(t[0].numpy(), onehot)
    with pytest.raises(InputError, match="0..2"):
        labels_to_onehot(torch.full((2, 2), 3))
    with pytest.raises(InputError, match="integer"):
        labels_to_onehot(torch.zeros(2, 2))
    with pytest.raises(InputError, match=r"\(H, W\)"):
        labels_to_onehot(np.zeros(4, int))


def _square(x0, y0, x1, y1):
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]


def test_labelme_painting_order_and_names():
    doc = {
        "imageHeight": 20,
        "imageWidth": 30,
        "shapes": [  # nucleus listed first: it must still end up on top of the cytoplasm
            {"label": "Nucleus", "points": _square(10, 6, 14, 10), "shape_type": "polygon"},
            {"label": "CYTOPLASM", "points": _square(5, 2, 20, 15)},
            {"label": "background", "points": _square(0, 0, 2, 2)},
        ],
    }
    labels = labelme_to_labels(doc)
    assert labels.shape == (20, 30) and labels.dtype == np.uint8
    expected = np.zeros((20, 30), np.uint8)
    expected[2:16, 5:21] = 1  # pixel centres inside (boundary included, as skimage.draw)
    expected[6:11, 10:15] = 2
    np.testing.assert_array_equal(labels, expected)
    assert labelme_to_labels(doc, shape=(10, 12)).shape == (10, 12)  # clipped to the shape


def test_labelme_bad_input(tmp_path):
    base = {"imageHeight": 8, "imageWidth": 8}
    with pytest.raises(InputError, match="'RBC'"):
        labelme_to_labels({**base, "shapes": [{"label": "RBC", "points": _square(1, 1, 3, 3)}]})
    with pytest.raises(InputError, match="needs 3"):
        labelme_to_labels({**base, "shapes": [{"label": "nucleus", "points": [[1, 1], [2, 2]]}]})
    with pytest.raises(InputError, match="imageHeight"):
        labelme_to_labels({"shapes": []})
    with pytest.raises(InputError, match="linestrip"):
        labelme_to_labels({**base, "shapes": [{"label": "nucleus", "points": _square(1, 1, 3, 3),
                                               "shape_type": "linestrip"}]})
    with pytest.raises(InputError, match="not found"):
        labelme_to_labels(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(InputError, match="not a LabelMe JSON"):
        labelme_to_labels(bad)


def test_labelme_round_trip_on_real_masks(tmp_path):
    cells = samples.wbc(1) + samples.wbc(2, ids=[1, 34, 76, 88])  # 76, 88: cytoplasm inside nuclei
    for _, labels, meta in cells:
        doc = labels_to_labelme(labels)
        assert {s["label"] for s in doc["shapes"]} == {"cytoplasm", "nucleus"}
        back = labelme_to_labels(doc)
        # exact except where a nucleus encloses cytoplasm (LabelMe polygons have no holes)
        changed = back != labels
        assert changed.mean() < 0.01, meta.name
        assert (labels[changed] == 1).all() and (back[changed] == 2).all()
        if meta.extra["dataset"] == 1 or meta.extra["id"] in (1, 34):
            np.testing.assert_array_equal(back, labels)
    path = tmp_path / "cell.json"
    labels = samples.wbc(1, ids=[50])[0][1]
    labels_to_labelme(labels, path=path, image_path="050.bmp")
    assert json.loads(path.read_text())["imagePath"] == "050.bmp"
    np.testing.assert_array_equal(labelme_to_labels(path), labels)
    # cells touching the image border still give closed polygons
    edge = np.zeros((10, 10), np.uint8)
    edge[:4, :5], edge[:2, :2] = 1, 2
    np.testing.assert_array_equal(labelme_to_labels(labels_to_labelme(edge)), edge)
