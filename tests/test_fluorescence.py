"""Simulated fluorescence: optics (PSF width), camera noise statistics, structures, seeds."""

from __future__ import annotations


import numpy as np
import pytest

from napari_resolve.data import fluorescence as fl
from napari_resolve.errors import InputError


def _fwhm_1d(profile: np.ndarray, step: float) -> float:
    """Full width at half maximum of a peaked profile (linear interpolation)."""
    p = profile / profile.max()
    above = np.where(p >= 0.5)[0]
    lo, hi = above[0], above[-1]
    left = lo - 1 + (0.5 - p[lo - 1]) / (p[lo] - p[lo - 1])
    right = hi + (p[hi] - 0.5) / (p[hi] - p[hi + 1])
    return (right - left) * step


@pytest.mark.parametrize("wavelength, na", [(520.0, 1.3), (670.0, 1.4)])
def test_airy_psf_fwhm_is_0_51_lambda_over_na(wavelength, na):
    px = 10.0  # fine sampling so pixel integration barely widens the peak
    k = fl.airy_psf(wavelength, na, px)
    assert k.sum() == pytest.approx(1.0)
    c = k.shape[0] // 2
    fwhm = _fwhm_1d(k[c], px)
    assert fwhm == pytest.approx(0.5145 * wavelength / na, rel=0.03)
    assert fl.psf_fwhm(wavelength, na) == pytest.approx(0.5145 * wavelength / na)
    # the first dark ring of an Airy pattern lies at 0.61 λ/NA
    r0 = 0.61 * wavelength / na / px
    assert k[c, c + int(round(r0))] < 0.01 * k[c, c]


def test_gaussian_psf_has_sigma_0_21_lambda_over_na():
    px = 10.0
    k = fl.gaussian_psf(520.0, 1.3, px)
    ax = (np.arange(k.shape[0]) - k.shape[0] // 2) * px
    sigma = np.sqrt((k.sum(axis=0) * ax**2).sum())
    assert sigma == pytest.approx(0.21 * 520 / 1.3, rel=0.01)


def test_two_filaments_200_nm_apart_resolved_in_target_not_in_widefield():
    """The SIM-like target (NA × 2) separates what wide field blurs together."""
    px = 10.0
    obj = np.zeros((160, 160))
    obj[:, 70] = obj[:, 90] = 1.0  # 200 nm apart, far from the edges
    wf_img = fl.widefield(obj, 520.0, 1.3, px)
    assert wf_img.sum() == pytest.approx(obj.sum(), rel=1e-3)  # blur keeps the photons
    wf = wf_img[80]
    sim = fl.widefield(obj, 520.0, 2.6, px)[80]
    dip_wf = wf[80] / wf[70]
    dip_sim = sim[80] / sim[70]
    assert dip_wf > 0.9  # one blob in wide field
    assert dip_sim < 0.5  # two lines in the target


def test_camera_noise_is_poisson_plus_read_noise():
    flat = np.ones((128, 128))
    rng = np.random.default_rng(0)
    counts = fl.camera(flat, 2, photons=100.0, background=0.0, read_noise=0.0, rng=rng)
    assert counts.shape == (64, 64) and counts.dtype == np.float32
    assert counts.mean() == pytest.approx(100.0, rel=0.02)
    assert counts.var() == pytest.approx(100.0, rel=0.1)  # Poisson: variance = mean
    noisy = fl.camera(flat, 2, photons=100.0, background=0.0, read_noise=5.0, rng=rng)
    assert noisy.var() == pytest.approx(125.0, rel=0.1)  # + σ² of the read noise


def test_simulate_shapes_pixel_sizes_and_seeds():
    s = fl.simulate((130, 96), scale=2, pixel_size=31.3, seed=5)
    assert s.hr.shape == (130, 96) and s.lr.shape == (65, 48)
    assert s.hr.dtype == np.float32 and s.lr.dtype == np.float32
    assert s.hr_pixel_size == pytest.approx(31.3) and s.lr_pixel_size == pytest.approx(62.6)
    assert s.hr.max() == pytest.approx(1.0) and s.hr.min() >= 0
    assert s.meta["photons"] == 200.0 and s.meta["structures"] == ["microtubules", "vesicles", "er"]
    again = fl.simulate((130, 96), scale=2, pixel_size=31.3, seed=5)
    np.testing.assert_array_equal(s.hr, again.hr)
    np.testing.assert_array_equal(s.lr, again.lr)
    other = fl.simulate((130, 96), scale=2, pixel_size=31.3, seed=6)
    assert not np.array_equal(s.hr, other.hr)
    s4 = fl.simulate((128, 128), scale=4, seed=1)
    assert s4.lr.shape == (32, 32) and s4.lr_pixel_size == pytest.approx(4 * 31.3)


def test_lr_is_the_blurred_noisy_hr_and_targets_are_sharper():
    from skimage.transform import resize

    s = fl.simulate((256, 256), scale=2, structures=("microtubules",), seed=2, photons=1000.0)
    lr = (s.lr - s.lr.mean()) / s.lr.std()
    hr_small = resize(s.hr, s.lr.shape, order=1, anti_aliasing=True)
    # same scene: LR correlates with the downsampled target
    corr = np.corrcoef(lr.ravel(), hr_small.ravel())[0, 1]
    assert corr > 0.7
    # beyond the wide-field cut-off 2·NA/λ the target still has signal, wide field none
    n = s.hr.shape[0]
    cutoff = 2 * 1.3 / 520.0 * 31.3 * n  # in frequency bins of the 256-px grid

    def beyond_cutoff(img):
        f = np.abs(np.fft.fftshift(np.fft.fft2(img - img.mean()))) ** 2
        yy, xx = np.mgrid[:n, :n] - n // 2
        return f[np.hypot(yy, xx) > 1.05 * cutoff].sum() / f.sum()

    obj_wf = fl.widefield(s.truth.astype(np.float64), 520.0, 1.3, 31.3)
    assert beyond_cutoff(s.hr) > 5 * beyond_cutoff(obj_wf)


def test_out_of_focus_haze_is_smooth_light_in_the_widefield_only():
    from scipy import ndimage

    kw = dict(shape=(384, 384), scale=4, structures=("er",), photons=4000.0, read_noise=0.5)
    clean = fl.simulate(seed=3, **kw)
    assert np.array_equal(clean.lr, fl.simulate(seed=3, haze=0.0, **kw).lr)  # off = as before
    hazy = fl.simulate(seed=3, haze=0.6, haze_sigma=8.0, **kw)
    assert np.array_equal(clean.hr, hazy.hr)  # SIM / STORM section it away: target unchanged
    assert hazy.meta["haze"] == 0.6 and hazy.meta["haze_sigma_lr_px"] == 8.0

    def smooth_share(lr):  # share of the LR's variation that survives a 4-px blur
        lr = lr.astype(np.float64)
        return ndimage.gaussian_filter(lr, 4.0).std() / lr.std()

    assert smooth_share(hazy.lr) > smooth_share(clean.lr) + 0.1
    # the in-focus detail is still there, with less of the signal
    corr = np.corrcoef((hazy.lr - ndimage.gaussian_filter(hazy.lr, 6.0)).ravel(),
                       (clean.lr - ndimage.gaussian_filter(clean.lr, 6.0)).ravel())[0, 1]
    assert corr > 0.7
    for bad in (dict(haze=1.0), dict(haze=-0.1), dict(haze=0.3, haze_sigma=0.0)):
        with pytest.raises(InputError, match="haze"):
            fl.simulate((64, 64), **bad)


def test_calibrated_pairs_with_haze_keep_the_in_focus_samples():
    from napari_resolve.data.camera import HAZE_RANGES, TRAINING_RANGES

    plain = fl.calibrated_pairs(3, 4, (128, 128), seed=4)
    hazy = fl.calibrated_pairs(3, 4, (128, 128), seed=4,
                               calibration={**TRAINING_RANGES[4], **HAZE_RANGES[4]})
    lo, hi = HAZE_RANGES[4]["haze"]
    for p, h in zip(plain, hazy):
        assert np.array_equal(p.hr, h.hr) and p.meta["haze"] == 0.0
        assert lo <= h.meta["haze"] <= hi


@pytest.mark.parametrize("structure", ["microtubules", "vesicles", "er"])
def test_each_structure_renders_sparse_bright_content(structure):
    obj = fl.render_structures((128, 128), 31.3, (structure,), rng=0)
    assert obj.min() >= 0 and obj.max() > 0
    fg = (obj > 0.1 * obj.max()).mean()
    assert 0.005 < fg < 0.6  # curvilinear / punctate, not a flat field


def test_simulate_varies_photons_and_checks_input():
    # (no timed assertion: speed belongs to benchmarks, helper rules; ~0.05 s per 256² pair idle)
    pairs = fl.simulate_pairs(4, shape=(256, 256), scale=2, seed=1)
    photons = [p.meta["photons"] for p in pairs]
    assert len(set(photons)) == 4 and all(100 <= p <= 400 for p in photons)
    with pytest.raises(InputError, match="structure"):
        fl.simulate((64, 64), structures=("mitochondria",))
    with pytest.raises(InputError, match="NA"):
        fl.simulate((64, 64), na=0)
    with pytest.raises(InputError, match="too small"):
        fl.simulate((8, 8), scale=4)


def test_recorded_degradation_makes_lr_like_the_simulator():
    """``pairs_degradation``'s HR-only spec reproduces the simulator's LR (what fine-tuning relies on)."""
    from napari_resolve.data.datasets import degrade

    spec = fl.pairs_degradation(1, 2)["for_hr_only"]
    for seed in range(2):
        s = fl.simulate((256, 256), 2, photons=200, seed=seed)
        simulated = (s.lr - 10.0) / 200.0  # the camera's counts in degrade()'s units
        made = degrade(s.hr, spec, np.random.default_rng(seed))
        bicubic = degrade(s.hr, {"kind": "matlab-bicubic", "scale": 2})
        assert made.shape == simulated.shape
        assert made.mean() == pytest.approx(simulated.mean(), rel=0.05)
        corr = np.corrcoef(made.ravel(), simulated.ravel())[0, 1]
        assert corr > 0.9 and corr > np.corrcoef(bicubic.ravel(), simulated.ravel())[0, 1]


def test_bundled_fluorescence_model_records_how_to_degrade_hr_only_images():
    from napari_resolve import bundle
    from napari_resolve.train.finetuning import self_supervised_degradation

    meta = bundle.read_meta(bundle.resolve("mhtcun-lite-x2"))
    assert meta["degradation"]["kind"] == "paired"
    spec = self_supervised_degradation(meta)
    assert spec == {**meta["degradation"]["for_hr_only"], "scale": 2}
    assert spec["kind"] == "widefield" and spec["pixel_size"] == pytest.approx(31.3)
