"""Resolution estimates: decorrelation analysis (Descloux 2019) and FRC, API and CLI.

Known answers come from images whose cut-off is set by construction (white
noise through an ideal circular low-pass, plus white detection noise) and from
the real wide-field microtubule sample blurred by a known Gaussian.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from napari_resolve.cli import main
from napari_resolve.errors import InputError
from napari_resolve.metrics import resolution as res
from napari_resolve.metrics.resolution import decorrelation, edge_taper, frc


def band_limited_noise(rng, shape, cutoff, noise=0.2):
    """White noise through an ideal circular low-pass of ``cutoff`` (1 = Nyquist), std 1, + white noise."""
    spectrum = np.fft.fft2(rng.standard_normal(shape))
    ky = 2.0 * np.fft.fftfreq(shape[0])[:, None]
    kx = 2.0 * np.fft.fftfreq(shape[1])[None, :]
    spectrum[np.hypot(ky, kx) >= cutoff] = 0
    obj = np.fft.ifft2(spectrum).real
    obj /= obj.std()
    return obj, obj + noise * rng.standard_normal(shape)


@pytest.fixture(scope="module")
def mt_widefield():
    """Real wide-field microtubules (mean of the 9 SIM frames of MT.mrc), 62.6 nm pixels."""
    from napari_resolve.data.samples import mt_widefield

    image, meta = mt_widefield()
    return image.astype(np.float64), meta


# --------------------------------------------------------------------------- decorrelation


def test_kc_tracks_the_cutoff_of_band_limited_noise(rng):
    cutoffs = [0.2, 0.35, 0.5, 0.65, 0.8]
    kcs = [decorrelation(band_limited_noise(rng, (256, 256), k)[1]).kc for k in cutoffs]
    assert all(b > a for a, b in zip(kcs, kcs[1:])), kcs
    for k, kc in zip(cutoffs, kcs):
        assert kc == pytest.approx(k, rel=0.15)
        # The mask |k| < r is strict, so the curve peaks at the first radius
        # sample past the cut-off: the bias is at most one step (1/49) high.
        assert 0 <= kc - k <= 1 / 49 + 1e-9, (k, kc)


def test_non_square_image_gives_the_same_cutoff(rng):
    result = decorrelation(band_limited_noise(rng, (200, 300), 0.5)[1])
    assert result.kc == pytest.approx(0.5, abs=0.025)


def test_gaussian_blur_makes_resolution_monotonically_worse(mt_widefield):
    image, _ = mt_widefield
    image = image - image.min()
    rng = np.random.default_rng(7)
    resolutions = []
    for sigma in (1.0, 1.5, 2.0, 3.0, 4.0):
        blurred = gaussian_filter(image, sigma)
        counts = 500.0 / blurred.mean()  # optics first, then shot noise at ~500 photons
        noisy = rng.poisson(blurred * counts).astype(np.float64)
        resolutions.append(decorrelation(noisy, pixel_size=62.6, unit="nm").resolution)
    assert all(b > a for a, b in zip(resolutions, resolutions[1:])), resolutions


def test_pixel_size_scales_the_resolution_exactly(mt_widefield):
    image, meta = mt_widefield
    in_px = decorrelation(image)
    in_um = decorrelation(image, pixel_size=meta.pixel_size, unit="um")
    assert in_px.unit == "px" and in_um.unit == "um"
    assert in_um.kc == in_px.kc and np.array_equal(in_um.d0, in_px.d0)
    assert in_um.resolution == pytest.approx(in_px.resolution * meta.pixel_size, rel=1e-12)
    assert in_um.resolution == pytest.approx(2 * meta.pixel_size / in_um.kc, rel=1e-12)


def test_averaging_frames_improves_the_estimate(sample_dir):
    """More signal per pixel moves the decorrelation peak up: the 9-frame mean beats each frame."""
    from napari_resolve.io import read_image

    frames, _ = read_image(sample_dir / "rdl-sim-microtubules-raw" / "MT.mrc")
    per_frame = decorrelation(frames)
    assert isinstance(per_frame, list) and [r.plane for r in per_frame] == [(i,) for i in range(9)]
    mean = decorrelation(frames.astype(np.float64).mean(axis=0))
    assert mean.kc > max(r.kc for r in per_frame)
    # a stack gives the same answer as its planes one by one
    assert per_frame[4].kc == decorrelation(frames[4]).kc


def _direct_curve(image, radii, sigma=None):
    """d(r) straight from the paper's definition: complex spectra, explicit masks."""
    img = edge_taper(image, 20)
    h, w = img.shape
    img = img[: h - (h % 2 == 0), : w - (w % 2 == 0)]
    spec = np.fft.fft2(img)
    spec[0, 0] = 0
    ky = 2.0 * np.fft.fftfreq(img.shape[0])[:, None]
    kx = 2.0 * np.fft.fftfreq(img.shape[1])[None, :]
    r2 = ky**2 + kx**2
    with np.errstate(all="ignore"):
        phase = np.where(np.abs(spec) > 0, spec / np.abs(spec), 0)
    spec, phase = spec * (r2 < 1), phase * (r2 < 1)
    if sigma is not None:
        spec = spec * (1 - np.exp(-2 * sigma**2 * r2))
    norm = np.sqrt((np.abs(spec) ** 2).sum())
    out = []
    for r in radii:
        masked = phase * (r2 < r * r)
        with np.errstate(all="ignore"):
            d = (spec * masked.conj()).real.sum() / (norm * np.sqrt((np.abs(masked) ** 2).sum()))
        out.append(d if np.isfinite(d) else 0.0)
    return np.floor(np.array(out) * 1000) / 1000


@pytest.mark.parametrize("shape", [(65, 65), (64, 80)])
def test_fast_curves_equal_the_direct_definition(rng, shape):
    image = gaussian_filter(rng.random(shape), 1.0) + 0.05 * rng.random(shape)
    result = decorrelation(image)
    assert np.array_equal(result.d0, _direct_curve(image, result.radii))
    for sigma, curve in zip(result.sigmas[[0, 5, -1]], result.curves[[0, 5, -1]]):
        assert np.abs(curve - _direct_curve(image, result.radii, sigma)).max() <= 1e-3
    for sigma, curve in zip(result.refined_sigmas[[0, -1]], result.refined_curves[[0, -1]]):
        assert np.abs(curve - _direct_curve(image, result.refined_radii, sigma)).max() <= 1e-3


def test_result_holds_curves_and_the_chosen_peak(rng):
    result = decorrelation(band_limited_noise(rng, (128, 128), 0.5)[1], n_r=40, n_g=8)
    assert result.radii.shape == result.d0.shape == (40,)
    assert result.curves.shape == (9, 40) and result.sigmas[0] == pytest.approx(127 / 4)
    assert result.refined_curves.shape == (8, 40)
    assert result.peaks.shape == (1 + 9 + 8, 2)
    assert tuple(result.peaks[result.chosen]) == (result.kc, result.amplitude)
    assert result.amplitude >= res.MIN_AMPLITUDE and result.found
    assert (result.peaks[:, 1][result.peaks[:, 0] > 0] >= res.MIN_AMPLITUDE).all()


def test_white_noise_has_no_resolution(rng):
    result = decorrelation(rng.standard_normal((128, 128)))
    assert not result.found and result.kc == 0 and math.isinf(result.resolution)
    assert "no significant" in result.summary()


def test_local_max_rules():
    rising = np.linspace(0, 1, 20)
    assert res._local_max(rising) == (0, 0.0)
    peaked = np.array([0, 0.3, 0.6, 0.5, 0.4, 0.45])
    assert res._local_max(peaked) == (2, 0.6)
    # a bump smaller than 5e-4 above what follows is not a peak
    flat_bump = np.array([0.0, 0.2, 0.5, 0.5004, 0.5002, 0.6, 0.7])
    idx, amp = res._local_max(flat_bump)
    assert (idx, amp) == (0, 0.0)
    real_bump = np.array([0.0, 0.2, 0.5, 0.52, 0.51, 0.6, 0.7])
    assert res._local_max(real_bump) == (3, 0.52)
    # a curve that rises into a flat end (equal after the 3-decimal floor) has no peak
    assert res._local_max(np.array([0.0, 0.5, 0.8, 0.9, 0.9])) == (0, 0.0)


def test_edge_taper_goes_to_the_mean_at_the_border(rng):
    image = rng.random((64, 96)) + 5
    tapered = edge_taper(image, 20)
    mean = image.mean()
    assert np.allclose(tapered[0], mean) and np.allclose(tapered[:, -1], mean)
    assert np.array_equal(tapered[20:-20, 20:-20], image[20:-20, 20:-20])


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.full((64, 64), 3.0), "constant"),
        (np.where(np.eye(64) > 0, np.nan, 1.0), "NaN"),
        (np.ones((20, 200)), "at least 32"),
        (np.ones(100), "2D"),
        (np.ones((64, 64), dtype=complex), "real"),
        (np.array([["a"] * 40] * 40), "numeric"),
    ],
)
def test_bad_images_raise_clear_errors(image, message):
    with pytest.raises(InputError, match=message):
        decorrelation(image)


def test_bad_parameters_raise_clear_errors(rng):
    image = rng.random((64, 64))
    with pytest.raises(InputError, match="pixel size"):
        decorrelation(image, pixel_size=-1)
    with pytest.raises(InputError, match="n_r"):
        decorrelation(image, n_r=3)
    with pytest.raises(InputError, match="n_g"):
        decorrelation(image, n_g="many")
    with pytest.raises(InputError, match="constant"):
        decorrelation(np.stack([image, np.zeros_like(image)]))


# --------------------------------------------------------------------------- ImageJ variant


def test_imagej_variant_tracks_the_cutoff_and_reads_it_low(rng):
    # The plugin's refined pass often finds no peak and then reports the lower
    # edge of its window (first-pass kc - 0.05): NanoPyx gives the same 0.236,
    # 0.440, 0.644 on the benchmark's 0.3 / 0.5 / 0.7 images (docs/resolution.md).
    cutoffs = [0.3, 0.5, 0.7]
    kcs = [decorrelation(band_limited_noise(rng, (256, 256), k)[1], variant="imagej").kc
           for k in cutoffs]
    assert all(b > a for a, b in zip(kcs, kcs[1:])), kcs
    for k, kc in zip(cutoffs, kcs):
        assert -0.08 <= kc - k <= 0.03, (k, kc)


def _direct_curve_imagej(padded, r_lo, r_hi, n_r, sigma=None):
    """The plugin's d(r) from its definition: complex spectrum, explicit nearest-radius bins."""
    img = padded if sigma is None else padded - gaussian_filter(padded, sigma)
    spec = np.fft.fft2(img.astype(np.float64))
    if sigma is None:
        spec[0, 0] = 0
    n = padded.shape[0]
    f = np.fft.fftfreq(n)
    dist = 2 * np.hypot(f[:, None], f[None, :])
    with np.errstate(all="ignore"):
        phase = np.where(np.abs(spec) > 0, spec / np.abs(spec), 0)
    norm = np.sqrt((np.abs(spec[dist <= 1]) ** 2).sum())
    bins = np.floor((np.maximum(dist - r_lo, 0) / (r_hi - r_lo)) * (n_r - 1) + 0.5)
    out = []
    for i in range(n_r):
        m = (bins <= i) & (dist <= r_hi)
        with np.errstate(all="ignore"):
            d = (spec[m] * phase[m].conj()).real.sum() / (norm * np.sqrt((np.abs(phase[m]) ** 2).sum()))
        out.append(d if np.isfinite(d) else 0.0)
    return np.array(out)


def test_imagej_curves_equal_the_direct_definition(rng):
    from napari_resolve.metrics import _decorrelation_imagej as ij

    image = gaussian_filter(rng.random((60, 50)), 1.0) + 0.05 * rng.random((60, 50))
    result = decorrelation(image, variant="imagej")
    padded = ij.pad_pow2(ij.apodise(image))
    assert padded.shape == (64, 64)
    assert np.abs(result.d0 - _direct_curve_imagej(padded, 0, 1, 50)).max() < 1e-5
    sigma = result.sigmas[4]
    assert np.abs(result.curves[4] - _direct_curve_imagej(padded, 0, 1, 50, sigma)).max() < 1e-5
    lo, hi = result.refined_radii[0], result.refined_radii[-1]
    sigma = result.refined_sigmas[-1]
    assert np.abs(result.refined_curves[-1]
                  - _direct_curve_imagej(padded, lo, hi, 50, sigma)).max() < 1e-5
    assert result.variant == "imagej"
    assert result.kc == result.peaks[result.chosen, 0] > 0


def test_imagej_apodisation_reaches_the_edge_mean_at_the_border(rng):
    from napari_resolve.metrics._decorrelation_imagej import apodise

    image = rng.random((80, 80)) + 5
    out = apodise(image)
    assert out[0, 0] == pytest.approx(out[0, 40]) == pytest.approx(out[40, 0])
    assert np.array_equal(out[25:55, 25:55], image[25:55, 25:55].astype(np.float32))


def test_imagej_peak_rules():
    from napari_resolve.metrics._decorrelation_imagej import _peak

    # an interior maximum is taken at once, however small its drop
    assert _peak(np.array([0.1, 0.5, 0.4999, 0.3])) == (1, 0.5)
    # a maximum on the last sample is cut; the next must stand 1e-3 above the
    # minimum of its tail, the last remaining sample left out (so 0.3 here)
    assert _peak(np.array([0.1, 0.5, 0.3, 0.2, 0.6]))[0] == 1
    assert _peak(np.array([0.1, 0.5, 0.3, 0.6]))[0] == 0
    assert _peak(np.array([0.1, 0.2, 0.3, 0.4]))[0] == 0  # rising to the end: no peak


def test_imagej_variant_scales_with_pixel_size_and_rejects_unknown_variants(mt_widefield):
    image = mt_widefield[0]
    a = decorrelation(image, variant="imagej")
    b = decorrelation(image, variant="imagej", pixel_size=0.0626, unit="um")
    assert b.kc == a.kc and b.resolution == pytest.approx(a.resolution * 0.0626)
    with pytest.raises(InputError, match="variant"):
        decorrelation(image, variant="matlab")


# --------------------------------------------------------------------------- FRC


def test_frc_of_two_noisy_acquisitions_crosses_near_the_cutoff(rng):
    obj, _ = band_limited_noise(rng, (256, 256), 0.5, noise=0)
    a = obj + 0.5 * rng.standard_normal(obj.shape)
    b = obj + 0.5 * rng.standard_normal(obj.shape)
    result = frc(a, b, pixel_size=0.1, unit="um")
    assert result.split == "pair"
    # The 20 px edge taper leaks a little signal past a brick-wall cut-off:
    # the crossing lands 0.02-0.045 above it (0.507 without taper).
    assert 0.5 <= result.k_one_seventh <= 0.55
    assert 0.5 <= result.k_half_bit <= 0.55
    assert frc(a, b, taper=0).k_one_seventh == pytest.approx(0.5, abs=0.012)
    assert result.resolution == pytest.approx(2 * 0.1 / result.k_one_seventh)
    inside = result.frequencies < 0.4
    assert result.correlation[inside][1:].min() > 0.5  # signal-dominated rings correlate


def test_frc_of_independent_noise_never_starts_high(rng):
    a, b = rng.standard_normal((128, 128)), rng.standard_normal((128, 128))
    result = frc(a, b)
    assert np.abs(result.correlation[2:]).max() < 0.4
    assert result.k_one_seventh < 0.1


def test_checkerboard_frc_of_an_oversampled_image(rng):
    _, image = band_limited_noise(rng, (256, 256), 0.3, noise=0.3)
    result = frc(image)
    assert result.split == "checkerboard" and result.max_frequency == pytest.approx(0.5)
    assert 0.3 <= result.k_one_seventh <= 0.35


def test_frc_rejects_mismatched_images(rng):
    with pytest.raises(InputError, match="same shape"):
        frc(rng.random((64, 64)), rng.random((64, 80)))
    with pytest.raises(InputError, match="2D"):
        frc(rng.random((2, 64, 64)))


# --------------------------------------------------------------------------- CLI


def test_cli_prints_resolution_and_saves_plot_and_json(sample_dir, tmp_path, capsys):
    mrc = sample_dir / "rdl-sim-microtubules-raw" / "MT.mrc"
    png, out_json = tmp_path / "curves.png", tmp_path / "res.json"
    rc = main(["resolution", str(mrc), "--mean", "--pixel-size", "0.0626", "--unit", "um",
               "--plot", str(png), "--json", str(out_json)])
    assert rc == 0
    printed = capsys.readouterr().out
    report = json.loads(out_json.read_text())
    entry = report["results"][0]
    assert report["method"] == "decorrelation" and entry["unit"] == "um"
    assert f"kc = {entry['kc']:.4f}" in printed
    assert f"{entry['resolution'] * 1000:.1f} nm" in printed
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # --variant imagej: the plugin's algorithm, as NanoPyx gives for this image (kc 0.428)
    rc = main(["resolution", str(mrc), "--mean", "--variant", "imagej", "--json", str(out_json),
               "--overwrite"])  # an existing --json is replaced only with --overwrite
    assert rc == 0
    report = json.loads(out_json.read_text())
    assert report["variant"] == "imagej"
    assert report["results"][0]["kc"] == pytest.approx(0.428, abs=0.001) != entry["kc"]


def test_cli_frc_of_two_files(tmp_path, rng, capsys):
    obj, _ = band_limited_noise(rng, (128, 128), 0.5, noise=0)
    for name in ("a", "b"):
        np.save(tmp_path / f"{name}.npy", obj + 0.5 * rng.standard_normal(obj.shape))
    rc = main(["resolution", str(tmp_path / "a.npy"), "--second", str(tmp_path / "b.npy")])
    assert rc == 0
    assert "FRC (pair): 1/7 threshold" in capsys.readouterr().out


def test_cli_reports_bad_input_as_one_line_error(tmp_path, capsys):
    np.save(tmp_path / "tiny.npy", np.random.default_rng(0).random((16, 16)))
    rc = main(["resolution", str(tmp_path / "tiny.npy")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error:") and "at least 32" in err and len(err.splitlines()) == 1
    assert main(["resolution", str(tmp_path / "tiny.npy"), "--unit", "nm"]) == 2


@pytest.mark.parametrize("shape", [(65, 65), (65, 81)])
def test_pixel_counts_include_every_fourier_pixel_of_the_disk(rng, shape, monkeypatch):
    h, w = shape
    ky = 2.0 * np.fft.fftfreq(h)[:, None]
    kx = 2.0 * np.fft.fftfreq(w)[None, :]
    in_disk = int((ky**2 + kx**2 < 1).sum()) - 1  # without the zero frequency
    plane = rng.random(shape).astype(np.float32)
    assert res._Spectrum(plane).wnonzero.sum() == in_disk
    # A Fourier pixel with I = 0 has In = 0 and is not counted (nor is its mirror -k).
    real_rfft2 = res.scipy.fft.rfft2

    def rfft2_with_a_hole(x):
        spectrum = real_rfft2(x)
        spectrum[3, 4] = 0
        return spectrum

    monkeypatch.setattr(res.scipy.fft, "rfft2", rfft2_with_a_hole)
    assert res._Spectrum(plane).wnonzero.sum() == in_disk - 2
