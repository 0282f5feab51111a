"""Tiled inference engine (issue 4): seamless tiling, layouts, dtypes, prior, OOM, cancel, dask.

Images are crops of the real sample data (two-photon uint16, IHC RGB, WBC
cells with their parsing maps). Two tiny local networks with a known
receptive field stand in for trained models where exact tiling is checked;
``bicubic`` (MATLAB imresize) is checked against :func:`imresize` itself.
"""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from napari_resolve import bundle, models
from napari_resolve import predict as P
from napari_resolve.data import samples
from napari_resolve.data.degrade import imresize
from napari_resolve.errors import InputError, ResolveError
from napari_resolve.models.base import SRModel
from napari_resolve.predict import PredictResult, Progress, predict, predict_dask, predict_iter


class TinyConv(SRModel):
    """Three 3x3 LR convs + pixel shuffle: receptive field 3 LR px, no global ops."""

    receptive_field = 3

    def __init__(self, scale: int = 2, in_channels: int = 1, width: int = 6):
        super().__init__(scale, in_channels)
        torch.manual_seed(0)
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1),
            nn.Tanh(),
            nn.Conv2d(width, width, 3, padding=1),
            nn.Tanh(),
            nn.Conv2d(width, in_channels * scale * scale, 3, padding=1),
            nn.PixelShuffle(scale),
        )

    def forward(self, x, prior=None):
        return {
            "sr": F.interpolate(x, scale_factor=self.scale, mode="nearest") + 0.2 * self.body(x)
        }


class TinyParsing(SRModel):
    """A geometry-prior-like net: parsing logits at SR size, SR guided by the mask.

    With a prior its logits are 10 x one-hot(prior), so ``labels`` must give
    the prior back: a check that prior tiles line up with image tiles.
    """

    predicts_parsing = True
    receptive_field = 2

    def __init__(self, scale: int = 2, in_channels: int = 1):
        super().__init__(scale, in_channels)
        torch.manual_seed(1)
        self.parse = nn.Conv2d(in_channels, 3, 3, padding=1)
        self.fuse = nn.Conv2d(in_channels + 3, in_channels, 3, padding=1)
        self.mr = nn.Conv2d(in_channels, in_channels, 3, padding=1)

    def forward(self, x, prior=None):
        up = F.interpolate(x, scale_factor=self.scale, mode="nearest")
        logits = self.parse(up)
        if prior is not None:
            if prior.ndim == 3:
                prior = F.one_hot(prior.long(), 3).permute(0, 3, 1, 2).float()
            logits = 10.0 * prior
        mask = torch.softmax(logits, 1)
        sr = up + 0.1 * self.fuse(torch.cat([up, mask], 1))
        return {"sr": sr, "parsing": logits, "stages": [up, sr], "mr": x + 0.1 * self.mr(x)}


@pytest.fixture(scope="module")
def twophoton():
    raw = samples.twophoton("bpae").raw  # 256 x 256 uint16, real fluorescence
    return raw[40:101, 60:135]  # 61 x 75: no tile size below divides it


@pytest.fixture(scope="module")
def ihc():
    return samples.ihc()[0][100:148, 200:240]  # 48 x 40 RGB uint8


@pytest.fixture(scope="module")
def wbc():
    image, labels, _ = samples.wbc(1, ids=[1])[0]  # 120 x 120 RGB + parsing map
    return image, labels


def _unit(img):
    return img.astype(np.float32) / np.float32(np.iinfo(img.dtype).max)


# ----------------------------------------------------------------------------- tile plan


def test_tile_plan_covers_with_overlap_and_snaps():
    for n in (17, 64, 100, 257, 1000):
        for tile in (16, 40, 64, 128):
            for overlap in (0, 3, 7):
                for mult in (1, 4, 8):
                    t = (tile // mult) * mult
                    if t <= 2 * overlap or t < mult:
                        continue
                    size, starts = P.tile_plan(n, t, overlap, mult)
                    assert size <= max(t, 1) or n <= t
                    assert starts[0] == 0 and starts[-1] + size == n
                    for a, b in zip(starts[:-1], starts[1:], strict=True):
                        assert b > a
                        assert a + size - b >= 2 * overlap  # shared band
                    if t > 2 * overlap + mult - 1:
                        assert all(s % mult == 0 for s in starts[:-1])
                    if n > t:
                        assert size % mult == 0


def test_blend_weights_not_down_weighted_at_image_border():
    starts, size = [0, 30, 60], 40
    first = P._profile(starts, size, 0, 2, lambda band: 2)
    last = P._profile(starts, size, 2, 2, lambda band: 2)
    assert first[:20].min() == 1.0 and last[-20:].min() == 1.0  # image borders
    assert first[-1] == 0.0 and first.max() == 1.0  # interior edge: margin dropped
    # two neighbours sum to one across their shared band
    mid = P._profile(starts, size, 1, 2, lambda band: 2)
    assert np.allclose(first[60:80] + mid[:20], 1.0)


# ----------------------------------------------------------------------------- seamless tiling


@pytest.mark.parametrize("tile", [16, 23, 40])
def test_tiled_equals_untiled_local_model(twophoton, tile):
    model = TinyConv()
    img = _unit(twophoton)
    whole = predict(model, img, tile=0).image
    tiled = predict(model, img, tile=tile, overlap=model.receptive_field)
    assert tiled.image.shape == (122, 150)
    assert np.abs(tiled.image - whole).max() < 1e-4
    # the same with the default overlap (= receptive field) and default tile
    assert np.abs(predict(model, img).image - whole).max() < 1e-4


def test_tiled_bicubic_matches_matlab_imresize(twophoton):
    model = models.build("bicubic", scale=4)
    img = _unit(twophoton)
    ref = imresize(img, 4)
    for tile in (20, 33):
        out = predict(model, img, tile=tile, overlap=2).image
        assert out.shape == ref.shape == (244, 300)
        assert np.abs(out - ref).max() < 1e-4


def test_too_small_overlap_is_not_exact(twophoton):
    """The check above can fail: without context tiles show seams."""
    model = TinyConv()
    img = _unit(twophoton)
    whole = predict(model, img, tile=0).image
    seamy = predict(model, img, tile=16, overlap=0).image
    assert np.abs(seamy - whole).max() > 1e-3


# ----------------------------------------------------------------------------- dtypes and layouts


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16", "float32", "float64"])
def test_dtype_round_trip_with_bicubic(twophoton, dtype):
    base = twophoton.astype(np.float64) / 65535.0
    if dtype == "uint8":
        img = np.round(base * 255).astype(np.uint8)
    elif dtype == "uint16":
        img = twophoton
    elif dtype == "int16":
        img = (base * 60000 - 30000).astype(np.int16)  # negative values too
    else:
        img = base.astype(dtype)
    out = predict("bicubic", img).image
    # float32, float64 for float64 input (issue 15: float32 cannot hold its values exactly)
    assert out.dtype == (np.float64 if dtype == "float64" else np.float32)
    assert out.shape == (244, 300)
    ref = imresize(img.astype(np.float64), 4)
    if np.issubdtype(img.dtype, np.integer):
        info = np.iinfo(img.dtype)
        ref = np.clip(ref, info.min, info.max)
    span = float(img.max()) - float(img.min())
    assert np.abs(out - ref).max() < 1e-5 * max(span, 1.0) * 10
    # output is on the input's scale, not [0, 1]
    assert abs(float(out.mean()) - float(img.mean())) < 0.02 * span


def test_rgb_through_single_channel_model_uses_y_and_bicubic_chroma(ihc):
    out = predict(models.build("bicubic", scale=2), ihc)
    assert out.image.shape == (96, 80, 3) and out.image.dtype == np.float32
    assert out.meta["predict"]["via_y"]
    # bicubic is linear, YCbCr affine: Y via the net + CbCr bicubic == bicubic on RGB
    ref = np.clip(imresize(ihc.astype(np.float64), 2, channel_axis=-1), 0, 255)
    assert np.abs(out.image - ref).max() < 0.05


def test_rgb_model_tiled_and_channel_first(ihc):
    model = TinyConv(in_channels=3)
    img = _unit(ihc)
    whole = predict(model, img, tile=0).image
    assert whole.shape == (96, 80, 3)
    assert np.abs(predict(model, img, tile=20).image - whole).max() < 1e-4
    first = predict(model, np.moveaxis(img, -1, 0), channel_axis=0).image
    assert first.shape == (3, 96, 80)
    assert np.abs(np.moveaxis(first, 0, -1) - whole).max() < 1e-4
    with pytest.raises(InputError, match="expects RGB"):
        predict(model, img[..., 0])


def test_stacks_run_plane_by_plane(twophoton, ihc):
    model = TinyConv()
    planes = np.stack([twophoton, twophoton[::-1], twophoton[:, ::-1]])
    out = predict(model, planes, tile=24, batch=3).image
    assert out.shape == (3, 122, 150)
    for z in range(3):
        assert np.abs(out[z] - predict(model, planes[z], tile=0).image).max() < 1e-2  # uint16 scale
    rgb_stack = np.stack([ihc, ihc[::-1]])
    out = predict("bicubic", rgb_stack).image
    assert out.shape == (2, 192, 160, 3)
    assert np.abs(out[1] - predict("bicubic", ihc[::-1]).image).max() < 1e-3


class BoxBlur(SRModel):
    """A 7x7 mean (zeros outside) then nearest x2: mirror-symmetric, reads 3 LR px around."""

    receptive_field = 3

    def forward(self, x, prior=None):
        return {"sr": F.interpolate(F.avg_pool2d(x, 7, stride=1, padding=3), scale_factor=2,
                                    mode="nearest")}


def test_tiny_image_is_padded_on_all_sides_alike():
    """A mirror-symmetric network gives the mirror image of a tiny image's result: each
    side gets the same padding (one-sided padding gave the top and left edges none)."""
    img = np.random.default_rng(0).random((6, 8)).astype(np.float32)  # padded 5 + 5, 4 + 4
    model = BoxBlur(2, 1)
    out = predict(model, img, tile=0).image
    assert out.shape == (12, 16)
    np.testing.assert_allclose(predict(model, img[::-1], tile=0).image, out[::-1], atol=1e-6)
    np.testing.assert_allclose(predict(model, img[:, ::-1], tile=0).image, out[:, ::-1], atol=1e-6)


def test_tiny_image_is_padded_and_cropped():
    img = np.linspace(0, 1, 35, dtype=np.float32).reshape(5, 7)
    out = predict(TinyConv(), img).image
    assert out.shape == (10, 14)
    assert np.isfinite(out).all()
    # the padding is mirrored on all sides, centred (5 + 11 rows, 7 + 9 columns), which is
    # MATLAB imresize's own boundary rule: bicubic of the padded image is imresize everywhere
    # (one-sided padding differed near the bottom and right edges)
    ref = imresize(img, 4)
    got = predict(models.build("bicubic", scale=4), img).image
    assert np.abs(got - ref).max() < 1e-4


# ----------------------------------------------------------------------------- prior, labels


def test_prior_tiles_line_up_and_labels_come_back(wbc):
    image, labels = wbc
    grey = image.mean(-1).astype(np.float32) / 255.0
    lr = imresize(grey, 0.5)  # 60 x 60 LR, labels at the 120 x 120 SR grid
    model = TinyParsing()
    whole = predict(model, lr, prior=labels, tile=0)
    tiled = predict(model, lr, prior=labels, tile=20, overlap=2, extras=True)
    assert tiled.labels.dtype == np.uint8 and tiled.labels.shape == (120, 120)
    assert np.array_equal(tiled.labels, labels)  # prior cut with the tiles
    assert np.abs(tiled.image - whole.image).max() < 1e-4
    onehot = np.eye(3, dtype=np.float32)[labels].transpose(2, 0, 1)
    assert np.array_equal(predict(model, lr, prior=onehot, tile=24).labels, labels)
    # extras: stages at SR size, "mr" at LR size, all tiled like "sr"
    assert [s.shape for s in tiled.extras["stages"]] == [(120, 120), (120, 120)]
    assert tiled.extras["mr"].shape == (60, 60)
    ref = predict(model, lr, prior=labels, tile=0, extras=True).extras
    assert np.abs(tiled.extras["mr"] - ref["mr"]).max() < 1e-4
    assert not predict(model, lr, prior=labels).extras  # only on request


def test_own_parsing_gives_labels_without_prior(wbc):
    image, _ = wbc
    out = predict(TinyParsing(), image[:64, :64], tile=24)  # RGB via Y
    assert out.labels.shape == (128, 128) and out.labels.max() <= 2
    assert predict(TinyConv(), image[:64, :64, 0]).labels is None


def test_prior_errors(wbc):
    image, labels = wbc
    lr = imresize(image[..., 0].astype(np.float32) / 255, 0.5)
    with pytest.raises(InputError, match="LR size"):
        predict(TinyParsing(), lr, prior=labels[::2, ::2])
    with pytest.raises(InputError, match="0 \\(background\\)"):
        predict(TinyParsing(), lr, prior=labels.astype(np.int32) + 1)
    with pytest.raises(InputError, match="no parsing prior"):
        predict(TinyConv(), lr, prior=labels)
    with pytest.raises(InputError, match="one-hot"):
        predict(TinyParsing(), lr, prior=np.full((3, 120, 120), 2.0, np.float32))


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "image, match",
    [
        (np.array([[np.nan, 1.0] * 4] * 8), "NaN"),
        (np.zeros((0, 5), np.float32), "empty"),
        (np.ones((1, 1), np.uint8), "smallest image"),
        (np.ones((3, 3), np.uint8), "smallest image"),
        (np.ones((2, 2, 8, 8, 8), np.float32), "5 dimensions"),
        (np.ones((16, 16, 4), np.uint8), "RGBA"),
        (np.ones((2, 16, 16, 2), np.uint8), "has 2"),
        (np.ones((16, 16), bool), "dtype bool"),
        ("not an image", "dtype"),
    ],
)
def test_bad_images_give_one_clear_error(image, match):
    with pytest.raises(InputError, match=match) as info:
        predict(TinyConv(), image)
    assert "\n" not in str(info.value)


def test_bad_options():
    img = np.random.default_rng(0).random((32, 32), dtype=np.float32)
    with pytest.raises(InputError, match="2 x overlap"):
        predict(TinyConv(), img, tile=8, overlap=4)
    with pytest.raises(InputError, match="overlap"):
        predict(TinyConv(), img, overlap=-1)
    with pytest.raises(InputError, match="unknown device"):
        predict(TinyConv(), img, device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="CUDA is not available"):
            predict(TinyConv(), img, device="cuda")
    with pytest.raises(ResolveError, match="not a trained model"):
        predict("srcnn", img)


# ----------------------------------------------------------------------------- long work


def test_progress_events_and_result(twophoton):
    events = []
    out = predict(TinyConv(), _unit(twophoton), tile=24, progress=events.append)
    assert isinstance(out, PredictResult)
    assert all(isinstance(e, Progress) for e in events)
    assert events[0].done == 0 and events[-1].done == events[-1].total > 1
    assert [e.done for e in events] == sorted(e.done for e in events)
    assert out.meta["architecture"] == "" and out.meta["predict"]["overlap"] == 8  # RF 3, min 8


def test_cancel_mid_way_returns_nothing(twophoton):
    model = TinyConv().train()
    gen = predict_iter(model, _unit(twophoton), tile=16, overlap=3)
    first = [next(gen) for _ in range(3)]
    assert first[-1].done < first[-1].total
    gen.close()
    with pytest.raises(StopIteration) as stop:
        next(gen)
    assert stop.value.value is None
    assert model.training  # the caller's mode is restored


def test_out_of_memory_halves_tile_and_warns_once(twophoton):
    model = TinyConv()
    img = _unit(twophoton)
    whole = predict(model, img, tile=0).image
    forward = model.forward
    sizes = []

    def fussy(x, prior=None):
        sizes.append(x.shape[-1])
        if max(x.shape[-2:]) > 24:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return forward(x, prior)

    model.forward = fussy
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = predict(model, img, tile=64, overlap=3)
    oom = [w for w in caught if "out of" in str(w.message)]
    assert len(oom) == 1  # 61 -> 30 -> 15: two retries, one warning
    assert max(out.meta["predict"]["tile"]) <= 24
    assert np.abs(out.image - whole).max() < 1e-4

    def always(x, prior=None):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    model.forward = always
    with pytest.raises(ResolveError, match="out of cpu memory"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            predict(model, img, tile=64)


# ----------------------------------------------------------------------------- dask


def test_dask_equals_numpy(twophoton, ihc):
    import dask.array as da

    model = TinyConv()
    planes = np.stack([twophoton, twophoton[::-1]])
    ref = predict(model, planes, tile=0).image
    lazy = predict_dask(da.from_array(planes, chunks=(1, 30, 40)), model, tile=24, chunks=32)
    assert lazy.shape == ref.shape and lazy.chunks[1][0] == 64
    assert np.abs(lazy.compute() - ref).max() < 1e-2  # uint16 scale: < 2e-7 relative
    rgb = predict_dask(da.from_array(ihc, chunks=(20, 20, 3)), "bicubic", chunks=24).compute()
    assert np.abs(rgb - predict("bicubic", ihc).image).max() < 1e-3


def test_model_ref_loads_once_per_process(tmp_path):
    path = bundle.save(
        tmp_path / "srcnn.safetensors", models.build("srcnn", scale=2, filters=(4, 2))
    )
    ref = P._ModelRef.for_model(path, *bundle.load(path))
    clone = pickle.loads(pickle.dumps(ref))
    assert clone.path == str(path.resolve()) and clone.payload is None  # only the path travels
    P._WORKER_MODELS.pop(clone.token)
    before = P._LOAD_COUNT["n"]
    first, second = clone.get(), pickle.loads(pickle.dumps(ref)).get()
    assert first[0] is second[0] and P._LOAD_COUNT["n"] == before + 1


def test_predict_to_zarr_writes_ome_metadata(tmp_path, twophoton):
    import zarr

    src = tmp_path / "in.zarr"
    group = zarr.open_group(str(src), mode="w", zarr_format=2)
    group.create_array("0", data=twophoton, chunks=(32, 32))
    group.attrs["multiscales"] = [
        {
            "version": "0.4",
            "axes": [
                {"name": "y", "type": "space", "unit": "micrometer"},
                {"name": "x", "type": "space", "unit": "micrometer"},
            ],
            "datasets": [
                {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [0.5, 0.5]}]}
            ],
        }
    ]
    dst = tmp_path / "out.zarr"
    model = models.build("bicubic", scale=2)
    events = []
    P.predict_to_zarr(src, dst, model, progress=events.append)
    out = zarr.open_group(str(dst), mode="r")
    ms = out.attrs["multiscales"][0]
    transforms = ms["datasets"][0]["coordinateTransformations"]
    assert transforms[0]["scale"] == [0.25, 0.25]
    assert transforms[1]["translation"] == [-0.125, -0.125]
    assert ms["axes"][0]["unit"] == "micrometer"
    data = np.asarray(out["0"][:])
    assert data.shape == (122, 150) and data.dtype == np.float32
    assert np.abs(data - predict(model, twophoton).image).max() < 1e-2
    assert events and events[-1].done == events[-1].total
    with pytest.raises(InputError, match="exists"):
        P.predict_to_zarr(src, dst, model)
    P.predict_to_zarr(src, dst, model, overwrite=True)


def test_predict_to_zarr_cancel_leaves_nothing(tmp_path, twophoton):
    def stop(event):
        if event.done >= 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        P.predict_to_zarr(twophoton, tmp_path / "out.zarr", TinyConv(), chunks=32, progress=stop)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_distributed_two_workers(tmp_path, twophoton):
    import zarr
    from distributed import Client, LocalCluster

    path = bundle.save(
        tmp_path / "srcnn.safetensors", models.build("srcnn", scale=2, filters=(4, 2))
    )
    src = tmp_path / "in.zarr"
    zarr.open_array(
        str(src), mode="w", shape=twophoton.shape, chunks=(32, 32), dtype="uint16", zarr_format=2
    )[:] = twophoton
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None
        ) as cluster,
        Client(cluster),
    ):
        P.predict_to_zarr(src, tmp_path / "out.zarr", path, chunks=32)
    data = np.asarray(zarr.open_group(str(tmp_path / "out.zarr"), mode="r")["0"][:])
    assert np.abs(data - predict(path, twophoton).image).max() < 1e-2
