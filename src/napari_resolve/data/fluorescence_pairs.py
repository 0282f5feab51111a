"""Real fluorescence LR/HR pairs and their fixed spatial splits (issue 13).

Two real data sets (``../shared/data``, each with its SOURCE.md and licence):

* **DL-SIM microtubules** (Jin et al. 2020, MIT): one 3D-SIM field. The
  wide-field image is the mean of the 15 raw frames (``HE_15`` / ``LE_15``),
  which the authors had bicubic-upsampled ×2 onto the SIM grid; binning 2×2
  gives the 128² camera-grid LR. The target is the normal-light SIM
  reconstruction (``HER``) for both the normal- and the low-light input (the
  DL-SIM task: low light in, high-quality SIM out). ×2.
* **SFSRM ER** (SFSRM, BSD-3): wide-field 640² → STORM 2560², the same field,
  aligned at offset 0 (SOURCE.md). 8-bit display-scaled. ×4.

Each field is split **spatially**, in LR pixels, into three disjoint regions
(:data:`REGIONS`): ``train`` (the only pixels a model learns from),
``select`` (checkpoint selection) and ``heldout`` (the reported figures; never
trained on, never used to choose). ``finetune`` is the 3/4 of the DL-SIM field
outside ``heldout`` (issue 13, item 5).

DL-SIM (128² LR): train = left half (cols 0–63), select = top-right quadrant
(rows 0–63, cols 64–127), heldout = bottom-right quadrant (rows 64–127,
cols 64–127). SFSRM ER (640² LR): train = rows 0–399, select = rows 400–479,
heldout = rows 480–639 (the bottom quarter); all columns.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_resolve.errors import InputError

__all__ = ["RealPair", "REGIONS", "dlsim_pair", "sfsrm_er_pair", "sfsrm_er_sample", "region",
           "real_pairs", "bin2"]

DLSIM = "dlsim-microtubules/Testing_data/microtuble"
SFSRM_ER = "sfsrm-wf-storm/test_data/endoplasmic_reticulum"
SFSRM_ER_SAMPLE = "sfsrm-er-heldout"  # in sample_data/: a crop of the held-out rows

# (row slice, col slice) in LR pixels; see the module docstring
REGIONS = {
    "dlsim": {
        "train": ((0, 128), (0, 64)),
        "select": ((0, 64), (64, 128)),
        "heldout": ((64, 128), (64, 128)),
        "finetune": (((0, 128), (0, 64)), ((0, 64), (64, 128))),  # everything but heldout
    },
    "sfsrm-er": {
        "train": ((0, 400), (0, 640)),
        "select": ((400, 480), (0, 640)),
        "heldout": ((480, 640), (0, 640)),
        "finetune": (((0, 480), (0, 640)),),
    },
}


@dataclass
class RealPair:
    """One real field: ``lr`` (float32, camera grid), ``hr`` (float32, ×``scale``)."""

    name: str
    dataset: str  # key of REGIONS
    lr: np.ndarray
    hr: np.ndarray
    scale: int
    lr_pixel_size_nm: float | None
    source: str


def bin2(image: np.ndarray) -> np.ndarray:
    """Mean over 2×2 blocks (undoes DL-SIM's ×2 bicubic upsampling onto the SIM grid)."""
    a = np.asarray(image, dtype=np.float64)
    h, w = a.shape[0] // 2 * 2, a.shape[1] // 2 * 2
    return a[:h, :w].reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3)).astype(np.float32)


def _read(path: Path) -> np.ndarray:
    import tifffile

    if not path.is_file():
        raise InputError(f"missing data file {path}; give the folder that holds ../shared/data")
    return tifffile.imread(path)


def dlsim_pair(root, light: str = "normal") -> RealPair:
    """The DL-SIM pair at ``light`` "normal" or "low" (module docstring)."""
    if light not in ("normal", "low"):
        raise InputError(f"light must be 'normal' or 'low', got {light!r}")
    base = Path(root) / DLSIM
    tag = "HE" if light == "normal" else "LE"
    wf = _read(base / f"{tag}_X2" / "Sample_1" / f"{tag}_15.tif")
    hr = _read(base / "HER" / "Sample_1.tif").astype(np.float32)
    # DL-SIM's 3D-SIM: 1.49 NA, 512² EMCCD... the repo gives no pixel size; None = unknown
    return RealPair(f"DL-SIM microtubules, {light} light", "dlsim", bin2(wf), hr, 2, None,
                    "Jin et al. 2020 (DL-SIM), MIT")


def sfsrm_er_pair(root) -> RealPair:
    """The SFSRM ER wide-field / STORM pair (×4, aligned)."""
    base = Path(root) / SFSRM_ER
    lr = _read(base / "widefield" / "ER_widefield.tif").astype(np.float32)
    hr = _read(base / "reference" / "ER_STORM.tif").astype(np.float32)
    if hr.shape[0] != 4 * lr.shape[0]:
        raise InputError(f"SFSRM ER: STORM {hr.shape} is not 4x the wide field {lr.shape}")
    return RealPair("SFSRM ER (wide field -> STORM)", "sfsrm-er", lr, hr, 4, None,
                    "SFSRM (crrayna/SFSRM), BSD-3-Clause")


def sfsrm_er_sample(root) -> RealPair:
    """The held-out crop of SFSRM ER in ``sample_data/`` (rows 480–639, cols 0–319 LR; SOURCE.md).

    Every pixel of it lies in the ``heldout`` region, so the whole crop is held out.
    """
    base = Path(root) / SFSRM_ER_SAMPLE
    lr = _read(base / "ER_widefield_heldout.tif").astype(np.float32)
    hr = _read(base / "ER_STORM_heldout.tif").astype(np.float32)
    if hr.shape != (4 * lr.shape[0], 4 * lr.shape[1]):
        raise InputError(f"SFSRM ER sample: STORM {hr.shape} is not 4x the wide field {lr.shape}")
    return RealPair("SFSRM ER (wide field -> STORM), held-out crop", "sfsrm-er", lr, hr, 4, None,
                    "SFSRM (crrayna/SFSRM), BSD-3-Clause")


def region(pair: RealPair, which: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """(LR, HR) crops of ``pair`` in region ``which`` (train / select / heldout / finetune)."""
    regs = REGIONS[pair.dataset]
    if which not in regs:
        raise InputError(f"unknown region {which!r}; use one of {', '.join(regs)}")
    boxes = regs[which]
    if not isinstance(boxes[0][0], tuple):
        boxes = (boxes,)
    s = pair.scale
    out = []
    for (r0, r1), (c0, c1) in boxes:
        out.append((pair.lr[r0:r1, c0:c1], pair.hr[r0 * s:r1 * s, c0 * s:c1 * s]))
    return out


def real_pairs(root, scale: int) -> list[RealPair]:
    """The real pairs at ``scale`` (2: DL-SIM normal and low light; 4: SFSRM ER)."""
    if scale == 2:
        return [dlsim_pair(root, "normal"), dlsim_pair(root, "low")]
    if scale == 4:
        return [sfsrm_er_pair(root)]
    raise InputError(f"no real fluorescence pairs at x{scale}; use 2 or 4")


def evaluate_region(model, pair: RealPair, which: str = "heldout", device: str = "cpu",
                    post=None) -> dict:
    """Fit-PSNR / SSIM / NRMSE (CARE, :func:`napari_resolve.metrics.quality.fit_metrics`,
    border of ``scale`` px left out) and decorrelation resolution (HR px) of
    ``model`` on region ``which`` of ``pair``; several boxes are pooled by
    pixel count. ``model``: bundle path / name, loaded ``(model, meta)`` or an
    SRModel (e.g. ``models.build("bicubic", scale=s)``). ``post``: a function applied to
    each SR image (float64, HR grid) before it is measured.
    """
    from napari_resolve.metrics.quality import fit_metrics
    from napari_resolve.metrics.resolution import decorrelation
    from napari_resolve.predict import predict

    rows, weights, res = [], [], []
    for lr, hr in region(pair, which):
        sr = np.asarray(predict(model, lr, device=device).image, dtype=np.float64)
        if post is not None:
            sr = np.asarray(post(sr), dtype=np.float64)
        rows.append(fit_metrics(sr, hr, crop=pair.scale))
        weights.append(hr.size)
        r = decorrelation(sr)
        res.append(float(r.resolution) if r.found else float("nan"))
    w = np.asarray(weights, dtype=np.float64) / sum(weights)
    out = {k: float(sum(wi * r[k] for wi, r in zip(w, rows))) for k in ("psnr", "ssim", "nrmse")}
    out["resolution_px"] = float(sum(wi * v for wi, v in zip(w, res)))
    return out
