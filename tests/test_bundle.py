"""The model file (issue 2.7): safetensors weights + JSON metadata, never a pickle."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from napari_resolve import bundle, models
from napari_resolve.data import samples
from napari_resolve.errors import BundleError


def _small_srresnet():
    """SRResNet with BatchNorm buffers (running stats, int64 counter) filled in."""
    torch.manual_seed(0)
    model = models.build("srresnet", scale=2, in_channels=1, features=8, num_blocks=2)
    model.train()
    with torch.no_grad():
        model(torch.rand(2, 1, 16, 16))  # non-trivial BN running statistics
    return model.eval()


@pytest.fixture(scope="module")
def lr_tensor():
    raw = samples.twophoton("bpae").raw[100:132, 100:140].astype(np.float32) / 65535.0
    return torch.from_numpy(raw)[None, None]


def test_round_trip_gives_identical_output(tmp_path, lr_tensor):
    model = _small_srresnet()
    path = bundle.save(tmp_path / "m.safetensors", model)
    assert path.is_file() and not list(tmp_path.glob(".*part*"))  # atomic: no temp left
    loaded, meta = bundle.load(path)
    assert type(loaded) is type(model) and not loaded.training
    with torch.no_grad():
        assert torch.equal(loaded(lr_tensor)["sr"], model(lr_tensor)["sr"])
    assert meta["architecture"] == "srresnet" and meta["config"]["num_blocks"] == 2
    assert meta["scale"] == 2 and meta["in_channels"] == 1


def test_metadata_round_trip_without_loading_weights(tmp_path):
    model = models.build("srcnn", scale=3, filters=(8, 4))
    extra = {
        "normalization": {"mode": "percentile", "low": 1.0, "high": 99.8},
        "pixel_size": {"value": 0.0626, "unit": "µm"},
        "training": {"data": "wbc-zheng2018 dataset1", "epochs": 3},
        "metrics": {"psnr": 31.25, "ssim": 0.91},
        "parent": "srcnn-x3-base",
        "color_mode": "y",
    }
    path = bundle.save(tmp_path / "m.safetensors", model, extra)
    meta = bundle.read_meta(path)
    for key, value in extra.items():
        assert meta[key] == value
    assert meta["input_mode"] == "bicubic-inside" and meta["labels"] is None
    assert meta["degradation"] == {"kind": "matlab-bicubic", "scale": 3}
    assert meta["version"] and meta["created"].endswith("+00:00")
    assert "Dong" in meta["paper"]
    assert bundle.load(path)[1] == meta


def test_tied_weights_are_saved(tmp_path, lr_tensor):
    model = _small_srresnet()
    convs = [[m for m in block.modules() if isinstance(m, nn.Conv2d)] for block in model.body[:2]]
    convs[1][0].weight = convs[0][0].weight  # two keys, one storage
    path = bundle.save(tmp_path / "tied.safetensors", model)
    loaded, _ = bundle.load(path)
    with torch.no_grad():
        assert torch.equal(loaded(lr_tensor)["sr"], model(lr_tensor)["sr"])


def _forbid_unpickling(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("a user file was unpickled")

    monkeypatch.setattr(torch, "load", boom)
    monkeypatch.setattr(pickle, "load", boom)
    monkeypatch.setattr(pickle, "loads", boom)


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".ckpt", ".pkl"])
def test_pickles_refused_by_extension(tmp_path, monkeypatch, suffix):
    path = tmp_path / f"model{suffix}"
    torch.save({"w": torch.zeros(2)}, path)
    _forbid_unpickling(monkeypatch)
    with pytest.raises(BundleError, match="pickle"):
        bundle.load(path)
    with pytest.raises(BundleError, match="pickle"):
        bundle.read_meta(path)


def test_disguised_pickles_refused_by_magic_bytes(tmp_path, monkeypatch):
    zipped = tmp_path / "zip.safetensors"
    torch.save({"w": torch.zeros(2)}, zipped)  # torch's zip format
    raw = tmp_path / "raw.safetensors"
    raw.write_bytes(pickle.dumps({"w": [0.0]}, protocol=4))
    _forbid_unpickling(monkeypatch)
    for path in (zipped, raw):
        with pytest.raises(BundleError, match="pickle"):
            bundle.load(path)


def test_truncated_and_corrupt_files(tmp_path):
    good = bundle.save(tmp_path / "good.safetensors", _small_srresnet())
    data = good.read_bytes()
    cases = {
        "truncated.safetensors": data[: len(data) // 2],
        "header_only.safetensors": data[:40],
        "empty.safetensors": b"",
        "text.safetensors": b"this is not a model file at all, just some text\n" * 4,
    }
    for name, content in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(BundleError) as info:
            bundle.load(path)
        message = str(info.value)
        assert "\n" not in message and name in message


def test_missing_metadata(tmp_path):
    path = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(3)}, str(path))
    with pytest.raises(BundleError, match="no napari-resolve metadata"):
        bundle.load(path)


def _rewrite_meta(src, dst, **changes):
    from safetensors.torch import load_file

    meta = bundle.read_meta(src)
    meta.update(changes)
    save_file(load_file(str(src)), str(dst), metadata={bundle.META_KEY: json.dumps(meta)})
    return dst


def test_architecture_mismatch_messages(tmp_path):
    model = models.build("srcnn", scale=2, filters=(8, 4))
    good = bundle.save(tmp_path / "srcnn.safetensors", model)
    bad = _rewrite_meta(good, tmp_path / "arch.safetensors", architecture="no-such-net")
    with pytest.raises(BundleError, match="no-such-net"):
        bundle.load(bad)
    wide = _rewrite_meta(
        good, tmp_path / "wide.safetensors", config={**model.config, "filters": [16, 4]}
    )
    with pytest.raises(
        BundleError, match=r"shape mismatch.*body\.0\.weight \(8, 1, 9, 9\) vs \(16, 1, 9, 9\)"
    ):
        bundle.load(wide)
    res = bundle.save(tmp_path / "res.safetensors", _small_srresnet())
    deeper = _rewrite_meta(
        res,
        tmp_path / "deeper.safetensors",
        config={**bundle.read_meta(res)["config"], "num_blocks": 3},
    )
    with pytest.raises(BundleError, match=r"missing: body\.2\.") as info:
        bundle.load(deeper)
    assert "more)" in str(info.value)  # long lists are shortened
    shallower = models.build("srresnet", scale=2, in_channels=1, features=8, num_blocks=1)
    with pytest.raises(BundleError, match=r"unexpected: body\.1\."):
        bundle.load_state(shallower, res)


def test_load_state_into_existing_model(tmp_path, lr_tensor):
    model = _small_srresnet()
    path = bundle.save(tmp_path / "m.safetensors", model, {"training": {"epoch": 7}})
    fresh = models.build("srresnet", scale=2, in_channels=1, features=8, num_blocks=2).eval()
    meta = bundle.load_state(fresh, path)
    assert meta["training"] == {"epoch": 7}
    with torch.no_grad():
        assert torch.equal(fresh(lr_tensor)["sr"], model(lr_tensor)["sr"])


def test_pretrained_catalogue_and_names(tmp_path, monkeypatch):
    monkeypatch.setattr(bundle, "pretrained_dir", lambda: tmp_path)
    bundle.save(
        tmp_path / "srcnn-x2.safetensors",
        models.build("srcnn", scale=2, filters=(8, 4)),
        {"metrics": {"psnr": 30.5}, "training": {"data": "wbc"}},
    )
    (tmp_path / "broken.safetensors").write_bytes(b"\x00" * 4)
    listed = {p["name"]: p for p in bundle.pretrained()}
    assert listed["srcnn-x2"]["path"] == tmp_path / "srcnn-x2.safetensors"
    assert (
        "srcnn x2" in listed["srcnn-x2"]["summary"] and "psnr 30.5" in listed["srcnn-x2"]["summary"]
    )
    assert listed["broken"]["summary"].startswith("unreadable")
    model, meta = bundle.load("srcnn-x2")
    assert model.scale == 2 and meta["training"] == {"data": "wbc"}
    with pytest.raises(BundleError, match="pretrained: broken, srcnn-x2"):
        bundle.load("gp-x4")


def test_metadata_of_a_bundle_older_than_an_option_saves_again(tmp_path):
    """A bundle's config written before an option existed reads as that option's default
    (gp's prior_guide_* came in session 10; re-saving a loaded gp-x4 failed)."""
    model = models.build("gp", scale=4, features=8, prior_base_channels=4)
    old = {k: v for k, v in model.config.items() if not k.startswith("prior_guide")}
    out = bundle.save(tmp_path / "m.safetensors", model, {"config": old})
    assert bundle.load(out)[0].config == model.config
    guided = models.build("gp", scale=4, features=8, prior_base_channels=4, prior_guide_radius=4)
    with pytest.raises(BundleError, match="'config' = .* disagrees"):
        bundle.save(tmp_path / "g.safetensors", guided, {"config": old})


def test_save_refuses_bad_requests(tmp_path):
    model = models.build("srcnn", scale=2, filters=(8, 4))
    with pytest.raises(BundleError, match=".safetensors"):
        bundle.save(tmp_path / "m.pt", model)
    with pytest.raises(BundleError, match="'scale' = 4 disagrees"):
        bundle.save(tmp_path / "m.safetensors", model, {"scale": 4})
    with pytest.raises(BundleError, match="not JSON"):
        bundle.save(tmp_path / "m.safetensors", model, {"training": {"x": object()}})

    class Anonymous(models.SRModel):
        def forward(self, x, prior=None):
            return {"sr": x}

    with pytest.raises(BundleError, match="no registry name"):
        bundle.save(tmp_path / "m.safetensors", Anonymous(2, 1))
    assert not any(tmp_path.iterdir())
