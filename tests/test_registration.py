"""Correlation registration (paper 002 §II-B), simulated multi-objective scans, pairs folder, CLI.

Real images (the IHC tissue and a BCCD blood smear from sample_data) are taken
as 20× scans; their 10× and 4× scans are simulated with known offsets. Patches
are small (32 LR px) to keep the tests fast; the 128/256/512 px benchmark is
benchmarks/registration.py.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_resolve.cli import main
from napari_resolve.data.registration import (
    RegistrationProgress,
    build_dataset,
    integer_ratio_magnification,
    interpolate_to_ratio,
    register,
    register_iter,
)
from napari_resolve.data.samples import bccd_smear, ihc
from napari_resolve.data.simulate import airy_psf, simulate_scans
from napari_resolve.errors import InputError
from napari_resolve.io import read_image

P = 32  # LR patch size in these tests (MR 64, HR 128)
SMALL = {"patch_size": P, "stride": P // 2, "coarse_window": 8, "fine_window": 4}


@pytest.fixture(scope="module")
def tissue():
    return ihc()[0]


@pytest.fixture(scope="module")
def smooth_scans(tissue):
    """IHC scans with a random global offset and a smooth local offset field."""
    return simulate_scans(tissue, seed=7, max_global_shift=12, local_amplitude=3.0,
                          correlation_length=256)


def offset_errors(scans, result, target):
    """Signed error (LR px) of every kept offset against the ground truth at the patch centre."""
    hr_per_lr = result.report["magnifications"]["high"] / result.report["low_interpolated_to"]
    name = {"mr": "mid", "hr": "high"}[target]
    errs = []
    for m in result.kept:
        centre = hr_per_lr * (np.asarray(m.lr) + result.patch_size / 2) - 0.5
        truth = scans.true_offset(name, centre[None])[0] / hr_per_lr
        errs.append(np.asarray(m.offset[target]) - truth)
    return np.asarray(errs)


# ------------------------------------------------------------------ simulation


def test_airy_psf_matches_diffraction_limit():
    na, lam, px = 0.25, 0.55, 0.05
    psf = airy_psf(na, lam, px)
    assert psf.sum() == pytest.approx(1.0)
    c = psf.shape[0] // 2
    profile = psf[c, c:] / psf[c, c]
    # FWHM of the Airy disc = 0.514 λ / NA; first dark ring at 0.61 λ / NA
    half = np.interp(0.5, profile[::-1], np.arange(len(profile))[::-1]) * px
    assert 2 * half == pytest.approx(0.514 * lam / na, rel=0.05)
    first_zero = np.argmin(profile[: int(0.8 * lam / na / px)]) * px
    assert first_zero == pytest.approx(0.61 * lam / na, abs=1.5 * px)
    # a lower NA blurs more
    assert airy_psf(0.1, lam, px).shape[0] > psf.shape[0]


def test_simulated_scans_shapes_and_known_offset():
    # one dark blob on a bright slide: its position in the low scan follows the offset
    yy, xx = np.mgrid[0:400, 0:400]
    slide = 1.0 - 0.8 * np.exp(-((yy - 200.0) ** 2 + (xx - 180.0) ** 2) / (2 * 6.0**2))
    scans = simulate_scans(slide, global_shift=(8.0, -12.0), local_amplitude=0.0, photons=0)
    assert scans.low.shape == (80, 80) and scans.mid.shape == (200, 200)
    assert scans.factors == (5, 2, 1)
    assert scans.pixel_size_um == pytest.approx((1.465, 0.586, 0.293))
    w = 1.0 - scans.low
    r, c = np.mgrid[0 : w.shape[0], 0 : w.shape[1]]
    centre = np.array([(w * (5 * r + 2)).sum(), (w * (5 * c + 2)).sum()]) / w.sum()
    # the low scan shows the blob where u + d(u) = (200, 180)
    np.testing.assert_allclose(centre, [192.0, 192.0], atol=0.05)
    np.testing.assert_allclose(scans.true_offset("high", centre[None])[0], [8.0, -12.0])


def test_simulated_scans_are_noisy_blurred_uint8(tissue):
    scans = simulate_scans(tissue, seed=1)
    assert scans.low.dtype == np.uint8 and scans.low.shape == (102, 102, 3)
    assert scans.mid.shape == (255, 255, 3)
    assert scans.high.shape == (510, 510, 3)
    again = simulate_scans(tissue, seed=2)
    assert not np.array_equal(scans.mid, again.mid)  # noise and offsets depend on the seed
    # the low scan (NA 0.1) has far less fine detail than the mid one (NA 0.25)
    lap = lambda a: np.abs(np.diff(a[..., 1].astype(float), axis=1)).mean()
    assert lap(scans.low) / 5 < lap(scans.mid) / 2


# ---------------------------------------------------------------- geometry


def test_integer_ratio_magnification_follows_the_paper():
    assert integer_ratio_magnification(4, [10, 20]) == 5  # paper: 4x -> 5x
    assert integer_ratio_magnification(4, [20]) == 4
    assert integer_ratio_magnification(10, [20, 40]) == 10
    assert integer_ratio_magnification(4, [10]) == 5


def test_interpolation_keeps_pixel_centres():
    yy, xx = np.mgrid[0:40, 0:40]
    blob = np.exp(-((yy - 17.3) ** 2 + (xx - 22.6) ** 2) / (2 * 3.0**2))
    up = interpolate_to_ratio(blob, 1.25)
    assert up.shape == (50, 50)
    r, c = np.mgrid[0:50, 0:50]
    centre = np.array([(up * r).sum(), (up * c).sum()]) / up.sum()
    # pixel j of the finer grid sits at (j + 0.5) / 1.25 - 0.5 of the coarse one
    np.testing.assert_allclose((centre + 0.5) / 1.25 - 0.5, [17.3, 22.6], atol=0.02)
    u8 = interpolate_to_ratio((blob * 255).astype(np.uint8), 1.25)
    assert u8.dtype == np.uint8


# ---------------------------------------------------------------- registration


@pytest.mark.parametrize(
    "shift_hr, expected_lr",
    [((8.0, -12.0), (2.0, -3.0)), ((5.0, -2.6), (1.25, -0.65))],
    ids=["integer", "subpixel"],
)
def test_known_global_shift_recovered(tissue, shift_hr, expected_lr):
    scans = simulate_scans(tissue, seed=3, global_shift=shift_hr, local_amplitude=0.0)
    res = register(scans.low, scans.mid, scans.high, **SMALL)
    assert len(res) >= 20
    hr = np.array([m.offset["hr"] for m in res.kept])
    np.testing.assert_allclose(hr.mean(axis=0), expected_lr, atol=0.08)
    assert np.abs(hr - expected_lr).max() < 0.35
    err_mr = offset_errors(scans, res, "mr")
    assert np.abs(err_mr).mean() < 0.12
    # cut positions: whole pixels of each scan, as near the estimate as possible
    m = res.kept[0]
    np.testing.assert_allclose(m.position["hr"], 4 * (np.array(m.lr) + m.offset["hr"]), atol=0.5)


def test_smooth_offset_field_recovered_per_patch(smooth_scans):
    res = register(smooth_scans.low, smooth_scans.mid, smooth_scans.high, **SMALL)
    assert len(res) >= 20
    for target in ("mr", "hr"):
        err = offset_errors(smooth_scans, res, target)
        assert np.abs(err).mean() < 0.15, target
        assert err.std(axis=0).max() < 0.2, target
    # the field is not global: per-patch offsets differ by far more than the error
    hr = np.array([m.offset["hr"] for m in res.kept])
    assert np.ptp(hr, axis=0).max() > 0.5
    pair = res[0]
    assert pair["lr"].shape == (P, P, 3)
    assert pair["mr"].shape == (2 * P, 2 * P, 3) and pair["hr"].shape == (4 * P, 4 * P, 3)


def test_low_high_pairs_without_mid(smooth_scans):
    res = register(smooth_scans.low, None, smooth_scans.high, magnifications=(4, 20),
                   patch_size=24, stride=12, coarse_window=8, fine_window=4)
    assert res.ratios == {"hr": 5}  # no interpolation needed: 20 / 4
    assert res[0]["hr"].shape == (120, 120, 3)
    err = offset_errors(smooth_scans, res, "hr")
    assert np.abs(err).mean() < 0.15


def test_blank_glass_rejected_by_foreground():
    smear = bccd_smear()[0]  # 480 x 640 blood smear
    glass = np.percentile(smear.reshape(-1, 3), 99, axis=0).astype(np.uint8)
    slide = smear.copy()
    slide[:, 320:] = glass  # right half: empty slide
    scans = simulate_scans(slide, seed=5, max_global_shift=8, local_amplitude=1.0)
    res = register(scans.low, scans.mid, scans.high, **SMALL)
    blank_start = 320 / 4  # in LR px
    on_glass = [m for m in res.matches if m.lr[1] >= blank_start]
    on_smear = [m for m in res.matches if m.lr[1] + P <= blank_start]
    assert on_glass and on_smear
    assert all(m.reason == "foreground" for m in on_glass)
    assert all(m.foreground < 0.02 for m in on_glass)
    assert sum(m.kept for m in on_smear) >= 0.8 * len(on_smear)
    assert res.report["rejected"]["foreground"] >= len(on_glass)


def test_unrelated_content_rejected_by_threshold(tissue):
    scans = simulate_scans(tissue, seed=4, max_global_shift=8, local_amplitude=0.0)
    mid = scans.mid.copy()
    # the lower-left quarter of the mid scan shows another slide (a blood smear)
    mid[128:, :128] = bccd_smear()[0][200:327, 300:428]
    res = register(scans.low, mid, scans.high, threshold=0.6, min_foreground=0.0, **SMALL)
    hit = [m for m in res.matches if m.lr[0] >= 72 and m.lr[1] + P <= 56]
    assert hit and not any(m.kept for m in hit)
    # below T; a chance peak above T on the window's edge is not a match either
    assert all(m.reason in ("threshold", "window") for m in hit)
    low_corr = [m for m in hit if m.reason == "threshold"]
    assert len(low_corr) >= len(hit) / 2
    assert all(m.correlation["mr"] < 0.6 for m in low_corr)
    assert res.report["rejected"]["threshold"] >= len(low_corr)
    assert len(res) >= 20 and all(m.correlation["mr"] >= 0.6 for m in res.kept)


def test_register_is_a_generator_of_progress(smooth_scans):
    gen = register_iter(smooth_scans.low, smooth_scans.mid, smooth_scans.high, **SMALL)
    events = []
    with pytest.raises(StopIteration) as stop:
        while True:
            events.append(next(gen))
    assert all(isinstance(e, RegistrationProgress) for e in events)
    stages = [e.stage for e in events]
    assert stages[0] == "coarse" and stages[-1] == "fine"
    assert events[-1].done == events[-1].total == len(stop.value.value.matches)


def test_bad_input_gives_one_line_errors(tissue, smooth_scans):
    s = smooth_scans
    with pytest.raises(InputError, match="smaller than one 128 px patch"):
        register(s.low, s.mid, s.high)  # a 127 px interpolated low scan
    with pytest.raises(InputError, match="magnifications"):
        register(s.low, s.mid, s.high, magnifications=(10, 4, 20), patch_size=P)
    with pytest.raises(InputError, match="coarse registration of the mid scan failed"):
        noise = np.random.default_rng(0).integers(0, 255, s.mid.shape, dtype=np.uint8)
        register(s.low, noise, s.high, **SMALL)
    with pytest.raises(InputError, match="disagree on the offset"):
        # two coarse matches of pure noise (any correlation passes T=-1) land far apart:
        # the error says so instead of registering at a NaN offset
        noise = np.random.default_rng(1).integers(0, 255, s.mid.shape, dtype=np.uint8)
        register(s.low, noise, s.high, **{**SMALL, "coarse_window": 32}, threshold=-1.0,
                 coarse_patches=2)
    with pytest.raises(InputError, match="the high scan is missing"):
        register(s.low, s.mid, None)
    with pytest.raises(InputError, match="shape"):
        register(s.low[..., 0][None], s.mid, s.high)


# ------------------------------------------------------------- pairs folder, CLI


def test_build_dataset_writes_pairs_folder(smooth_scans, tmp_path):
    out = tmp_path / "pairs"
    res, path = build_dataset(smooth_scans.low, smooth_scans.mid, smooth_scans.high, out,
                              pixel_size=0.293, **SMALL)
    assert path == out
    report = json.loads((out / "report.json").read_text())
    n = len(res)
    assert report["kept"] == n and report["candidates"] == len(res.matches)
    assert report["patch_size"] == {"lr": P, "mr": 2 * P, "hr": 4 * P}
    assert report["pixel_size_um"]["lr"] == pytest.approx(4 * 0.293)
    files = [p["file"] for p in report["patches"] if p["kept"]]
    assert files[0] == "00001.tif" and len(files) == n
    for kind, size in (("lr", P), ("mr", 2 * P), ("hr", 4 * P)):
        names = sorted(p.name for p in (out / kind).iterdir())
        assert names == files
    lr, meta = read_image(out / "lr" / files[3])
    np.testing.assert_array_equal(lr, res[3]["lr"])
    assert meta["pixel_size"] == pytest.approx(4 * 0.293)
    hr, _ = read_image(out / "hr" / files[3])
    assert hr.shape == (4 * P, 4 * P, 3)
    # a non-empty folder is not overwritten without asking, and never a foreign one
    with pytest.raises(InputError, match="not empty"):
        build_dataset(smooth_scans.low, smooth_scans.mid, smooth_scans.high, out, **SMALL)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("keep me")
    with pytest.raises(InputError, match="not a pairs folder"):
        build_dataset(smooth_scans.low, smooth_scans.mid, smooth_scans.high,
                      tmp_path / "other", overwrite=True, **SMALL)
    assert (tmp_path / "other" / "notes.txt").read_text() == "keep me"
    build_dataset(smooth_scans.low, smooth_scans.mid, smooth_scans.high, out,
                  overwrite=True, **{**SMALL, "stride": P})
    assert json.loads((out / "report.json").read_text())["params"]["stride"] == P
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp left


def test_cli_register(smooth_scans, tmp_path, capsys):
    import tifffile

    for name in ("low", "mid", "high"):
        tifffile.imwrite(tmp_path / f"{name}.tif", getattr(smooth_scans, name))
    args = ["register", "--low", str(tmp_path / "low.tif"), "--mid", str(tmp_path / "mid.tif"),
            "--high", str(tmp_path / "high.tif"), "-o", str(tmp_path / "pairs"),
            "--patch-size", str(P), "--coarse-window", "8", "--fine-window", "4"]
    assert main(args) == 0
    out = capsys.readouterr().out
    report = json.loads((tmp_path / "pairs" / "report.json").read_text())
    assert f"kept {report['kept']} of {report['candidates']}" in out
    assert len(list((tmp_path / "pairs" / "mr").iterdir())) == report["kept"] > 0
    # errors: missing file, patch too large, existing output
    assert main([*args[:2], str(tmp_path / "nope.tif"), *args[3:]]) == 2
    assert "low scan not found" in capsys.readouterr().err
    assert main([*args[:-6], "-o", str(tmp_path / "p2")]) == 2
    assert "smaller than one 128 px patch" in capsys.readouterr().err
    assert main(args) == 2
    assert "not empty" in capsys.readouterr().err
    assert not (tmp_path / "p2").exists()
