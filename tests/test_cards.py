"""Plain-language model cards and the domain warning (issue 18), on the bundled models."""

from __future__ import annotations

import importlib.util
import re
import shutil

import numpy as np
import pytest

from napari_resolve import bundle, cards
from napari_resolve.data import samples
from napari_resolve.data.degrade import imresize

DEV_WORDS = re.compile(r"val_psnr|test_bic|in memory|/tmp/|hr: |metrics|_ssim|sample_data")


def _lr(image, s=4):
    return np.clip(imresize(image, 1.0 / s, channel_axis=-1), 0, 255).astype(np.uint8)


def _describe_module(repo_root):
    spec = importlib.util.spec_from_file_location("describe_bundles",
                                                  repo_root / "scripts" / "describe_bundles.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", [e["name"] for e in bundle.pretrained()])
def test_every_bundled_card_speaks_plainly(name):
    meta = bundle.read_meta(name)
    text = cards.card_text(meta)
    assert not DEV_WORDS.search(text), text
    heads = [h for h, _ in cards.card_lines(meta)]
    assert heads[0] == "For" and {"Scale", "Trained on", "How good"} <= set(heads)
    assert f"{meta['scale']}×" in text


def test_card_with_a_domain_says_what_for_and_how_good_against_bicubic():
    meta = bundle.read_meta("pathsrgan-x4")
    assert meta["domain"]["modality"] == "brightfield"  # written by scripts/describe_bundles.py
    text = cards.card_text(meta)
    assert "4× objective" in text and "bright-field" in text
    assert "better than plain bicubic" in text and "35.89 vs 34.66 dB" in text and "+1.23 dB" in text
    assert "1172 nm" in text and "BCCD" in text
    # the developer's bookkeeping of the same bundle is not shown
    assert "test_bic_hr_psnr" in str(meta["metrics"]) and "test_bic" not in text


def test_fallback_card_for_a_bundle_without_domain():
    meta = {k: v for k, v in bundle.read_meta("gp-x4").items() if k != "domain"}
    meta["training"] = {"data": "hr: 354 images in memory", "images": 354}
    meta.pop("training_data", None)
    text = cards.card_text(meta)
    assert "4× finer" in text and "nucleus and cytoplasm" in text
    assert "354 images" in text and "in memory" not in text
    assert "no comparison with bicubic" in text


def test_domain_warning_flags_foreign_images_and_stays_quiet_on_its_own():
    path_meta = {**bundle.read_meta("pathsrgan-x4"), "name": "pathsrgan-x4"}
    (cell, _, _), = samples.wbc(2, ids=[64])
    smear, _ = samples.bccd_smear()
    # the case: pathsrgan-x4 on a leukocyte crop (27.8 dB vs bicubic 33.3)
    warning = cards.domain_warning(path_meta, _lr(cell))
    assert warning and "pathsrgan-x4" in warning and "contrast" in warning
    assert cards.domain_warning(path_meta, _lr(smear)) is None  # what it was made for
    # an RGB model on a grey image; a bright-field model on a dark fluorescence image
    assert "grey" in cards.domain_warning(path_meta, _lr(smear)[..., 0])
    fluo = samples.twophoton("bpae").avg
    rgb_fluo = np.repeat((fluo / fluo.max() * 80).astype(np.uint8)[..., None], 3, axis=-1)
    assert "dark, like fluorescence" in cards.domain_warning(path_meta, rgb_fluo)
    # a physical pixel size far from the model's (a 100× oil image for a 4× scan model)
    assert "1172 nm" in cards.domain_warning(path_meta, _lr(smear), pixel_size_nm=65.0)


def test_fluorescence_domain_warns_on_a_colour_photo(repo_root):
    describe = _describe_module(repo_root)
    meta = dict(bundle.read_meta("mhtcun-lite-x2"))
    meta["domain"] = describe.FACTS["mhtcun-lite-x2"]
    smear, _ = samples.bccd_smear()
    assert "grey fluorescence" in cards.domain_warning(meta, smear)
    assert cards.domain_warning(meta, samples.twophoton("bpae").avg) is None
    assert "fluorescence" in cards.card_text(meta) and "+0.31 dB" in cards.card_text(meta)


def test_describe_bundles_rewrites_only_the_metadata(repo_root, tmp_path, monkeypatch):
    describe = _describe_module(repo_root)
    src = bundle.resolve("np-x4")
    copy = tmp_path / "np-x4.safetensors"
    shutil.copy(src, copy)
    before = copy.read_bytes()
    meta = {k: v for k, v in bundle.read_meta(copy).items() if k != "domain"}
    meta["domain"] = dict(describe.FACTS["np-x4"])
    describe.rewrite_metadata(copy, meta)
    assert describe.same_tensors(before, copy)
    assert bundle.read_meta(copy)["domain"]["heldout"]["bicubic"] == pytest.approx(34.964)
    model, _ = bundle.load(copy)  # still a loadable bundle
    assert model.scale == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["np-x4.safetensors"]  # no temp left


def test_the_bicubic_baseline_card_says_it_is_the_yardstick():
    from napari_resolve import models

    meta = bundle.default_meta(models.build("bicubic", scale=4, in_channels=1))
    text = cards.card_text(meta)
    assert "no learning" in text and "yardstick" in text and "not recorded" not in text


def test_plain_words_replace_whole_words_only_and_a_hazy_cell_is_not_bright_field():
    from napari_resolve.data import fluorescence_pairs as FP

    assert cards._clean("val psnr of a background-removal stage") == \
        "validation psnr of a background-removal stage"
    meta = {**bundle.read_meta("mhtcun-lite-x4"), "name": "mhtcun-lite-x4"}
    er = FP.sfsrm_er_sample(samples.sample_root()).lr  # inside a thick, hazy cell: mean 0.7
    warning = cards.domain_warning(meta, er) or ""
    assert "bright-field" not in warning
    wbc = samples.wbc(1)[0][0][..., 0]  # a bright-field smear in grey: median ~ 1
    assert "bright, like bright-field" in cards.domain_warning(meta, wbc)
    assert "background-removal stage" in cards._clean(meta["domain"]["summary"])


@pytest.mark.parametrize("name", ["mhtcun-lite-x4", "dfcan-x4"])
def test_x4_fluorescence_bundles_do_not_warn_on_their_own_heldout_crop(name):
    """Their cards keep per-tile statistics (each tile normalised alone, as trained): the
    held-out crop inside the hazy cell (normalised mean 0.71) is close to real training
    tiles, though far from the pooled mean (0.31) the cards used to compare with."""
    from napari_resolve.data import fluorescence_pairs as FP

    meta = {**bundle.read_meta(name), "name": name}
    stats = meta["domain"]["input_stats"]
    assert len(stats["images"]) > 100 and abs(stats["mean"][0] - 0.71) > cards.MEAN_SHIFT
    er = FP.sfsrm_er_sample(samples.sample_root()).lr
    assert cards.domain_warning(meta, er) is None
    # the per-image reference still flags an image unlike every training input
    assert cards._far_from_training({"mean": [0.95], "std": [0.02]}, stats) == \
        ["brightness", "contrast"]  # a flat, bright field is still far from every training input


def test_per_image_statistics_warn_only_when_no_training_image_is_close():
    ref = {"channels": 1, "mean": [0.3], "std": [0.2],
           "images": [{"mean": [0.1], "std": [0.2]}, {"mean": [0.7], "std": [0.2]}]}
    near_second = {"channels": 1, "mean": [0.8], "std": [0.25]}
    assert cards._far_from_training(near_second, ref) == []
    assert cards._far_from_training(near_second, {k: v for k, v in ref.items() if k != "images"}) \
        == ["brightness"]
    assert cards._far_from_training({"channels": 1, "mean": [0.6], "std": [0.9]}, ref) == ["contrast"]
