"""Shipping the leukocyte bundles (gp, np, srseg): held-out figures and the model card (issue 14).

Used by ``scripts/train_pretrained.py`` (CPU) and ``scripts/train_gpu_leukocyte.py``
(CUDA). A finished run is evaluated on cells it never saw (the 12 data-set-2
cells of ``sample_data/`` and the :data:`~napari_resolve.train.parsing.HELDOUT_RULE`
cells), GP's parsing map on the same cells (IoU per class) and on held-out
BCCD smears (red-cell box area called nucleus / cell), and written as a bundle
with a ``domain`` card (contract: helper-rules, issue 18) and these figures.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["GP_CONFIGS", "GP_PRIOR", "GP_PRIOR_GUIDE", "GP_PRIOR_ZOOM", "gp_map_options", "gp_config", "leukocyte_domain", "evaluate_bundle", "smear_figures",
           "finish_bundle"]

#: GP's CPU configs by prior (scripts/train_pretrained.py, scripts/train_gpu_leukocyte.py):
#: "y16" reads the bicubic-upsampled Y (paper 000 §2.1 at a quarter of its width; the bundles
#: up to issue 14's sixth round), "lr-rgb32" reads the LR RGB image (ours: docs/benchmarks.md
#: "Prior at the LR size, in colour"; since session 9 with the 8-orientation prior,
#: ``prior_tta``); the SR branch works on Y in both
GP_CONFIGS = {
    "y16": {"features": 32, "prior_base_channels": 16},
    "lr-rgb32": {"features": 32, "in_channels": 3, "luma_sr": True, "prior_input": "lr",
                 "prior_base_channels": 32, "prior_depth": 3, "prior_tta": True},
}
GP_PRIOR = "lr-rgb32"  # the bundled one
#: the guided-filter refinement of the map per scale (models.geometry_prior, prior_guide_*),
#: chosen on 60 training cells by benchmarks/prior_guide.py (issue 14, session 10; x8 eps
#: 1e-3 since session 12, chosen with the x8 prior zoom below)
GP_PRIOR_GUIDE = {
    4: {"prior_guide_radius": 6, "prior_guide_eps": 1e-3},
    8: {"prior_guide_radius": 8, "prior_guide_eps": 1e-3},
}
#: how much the prior enlarges the LR image it reads, per scale (models.geometry_prior,
#: prior_zoom): at x8 the mean of the maps at 1x and 2x, chosen on the same 60 training
#: cells among 1, 2, 4 and [1, 2], at the training magnification and at twice it (issue 14,
#: session 12; docs/benchmarks.md "Prior zoom"); the x8 guide above was chosen with it
GP_PRIOR_ZOOM = {8: [1, 2]}


def gp_map_options(scale: int) -> dict:
    """The map options of the bundled GP at ``scale``: guided filter and prior zoom."""
    zoom = {"prior_zoom": GP_PRIOR_ZOOM[scale]} if scale in GP_PRIOR_ZOOM else {}
    return {**GP_PRIOR_GUIDE.get(scale, {}), **zoom}


def gp_config(scale: int) -> dict:
    """The bundled GP's CPU config at ``scale``: the ``GP_PRIOR`` config with the scale's map
    options (:func:`gp_map_options`; none for a scale without them)."""
    return {**GP_CONFIGS[GP_PRIOR], **gp_map_options(scale)}


def leukocyte_domain(scale: int, train_cells: int, heldout: dict | None, channels: int = 1,
                     with_prior: bool = True, luma: bool | None = None) -> dict:
    """The bundle's ``domain`` card (``input_stats`` filled by :func:`finish_bundle`).

    ``with_prior``: the model has GP's prior net (its pre-training is named);
    ``luma``: the SR works on Y (default: one-channel models).
    """
    luma = channels == 1 if luma is None else luma
    return {
        "summary": "Bright-field images of Wright-Giemsa stained blood smears around white "
                   "blood cells" + (", super-resolved on the luma (Y)." if luma else "."),
        "modality": "brightfield",
        "sample": "Wright-Giemsa stained peripheral blood smear, white blood cells",
        "microscope": "bright-field, 8-bit RGB camera (CellaVision / Jiangxi Tecom images; "
                      "objective not given by the data set)",
        "scale": int(scale),
        "pixel_size": None,
        "trained_on": f"{train_cells} white-blood-cell crops of Zheng et al. 2018 (data sets 1 "
                      "and 2, GPL-3.0) with nucleus / cytoplasm masks, LR = MATLAB bicubic"
                      + ("; the prior net was pre-trained on the same cells plus BCCD smear "
                         "patches (MIT) as red-cell background" if with_prior else ""),
        "heldout": heldout,
        "input_stats": None,
    }


def _input_stats(cells, scale, channels):
    from napari_resolve.data.color import rgb_to_y
    from napari_resolve.data.degrade import imresize

    lrs = [imresize(hr, 1.0 / scale, channel_axis=-1) for hr in cells["hr"]]
    if channels == 1:
        vals = np.concatenate([rgb_to_y(lr).ravel() / 255.0 for lr in lrs])[:, None]
    else:
        vals = np.concatenate([lr.reshape(-1, 3) / 255.0 for lr in lrs])
    return {"channels": channels, "mean": [float(v) for v in vals.mean(0)],
            "std": [float(v) for v in vals.std(0)]}


def evaluate_bundle(model_meta, cells, scale, limit: int | None = None) -> dict:
    """Mean PSNR / SSIM on Y of a model and of bicubic over ``cells`` (``{"hr": [...]}``).

    For a model that predicts a parsing map and cells with ``labels``, also
    the mean IoU of cytoplasm and nucleus (``"iou"``), from the same run.
    """
    from napari_resolve import models
    from napari_resolve.bundle import default_meta
    from napari_resolve.data.degrade import imresize
    from napari_resolve.metrics.parsing import class_iou
    from napari_resolve.metrics.quality import evaluate_pair
    from napari_resolve.predict import predict

    bic = models.build("bicubic", scale=scale)
    bic_meta = (bic, default_meta(bic))
    rows, ious = [], []
    labels = cells.get("labels") or [None] * len(cells["hr"])
    for hr, lab in list(zip(cells["hr"], labels))[:limit]:
        h, w = hr.shape[0] // scale * scale, hr.shape[1] // scale * scale
        hr = hr[:h, :w]
        lr = imresize(hr, 1.0 / scale, channel_axis=-1)
        res = predict(model_meta, lr)
        m = evaluate_pair(res.image, hr, scale=scale)
        b = evaluate_pair(predict(bic_meta, lr).image, hr, scale=scale)
        rows.append((m["psnr"], m["ssim"], b["psnr"], b["ssim"]))
        if res.labels is not None and lab is not None:
            ious.append(class_iou(np.asarray(res.labels), np.asarray(lab)[:h, :w]))
    out = dict(zip(("psnr", "ssim", "bicubic_psnr", "bicubic_ssim"),
                   (float(v) for v in np.mean(rows, axis=0))))
    if ious:
        out["iou"] = {k: float(np.mean([i[k] for i in ious])) for k in ious[0]}
    return out


def smear_figures(model, smears, scale, magnifications=(1.0, 0.5, 1.5)) -> dict:
    """Red-cell shares of GP's parsing map on smears, per magnification.

    Only the prior net runs (the parsing map does not depend on the SR branch;
    :func:`napari_resolve.train.parsing.model_parser` feeds it as predict feeds GP).
    """
    from napari_resolve.metrics import parsing as MP
    from napari_resolve.train.parsing import model_parser

    parse = model_parser(model)
    return {f"bccd_rbc_share_mag{mag:g}": {k: round(v, 4) for k, v in
                                           MP.parse_smears(parse, smears, scale, mag).items()}
            for mag in magnifications}


def finish_bundle(run_path, out_path, data_root, scale, steps_info, *, smears: int = 6,
                  eval_limit: int | None = None, log=print) -> dict:
    """Evaluate the run ``run_path`` and write it to ``out_path`` with card and figures."""
    from napari_resolve import bundle
    from napari_resolve.train import parsing as P

    data_root = Path(data_root)
    train, sample_cells, heldout_cells = P.leukocyte_split(data_root / "wbc-zheng2018", min_size=96)
    model, meta = bundle.load(run_path)
    ev_sample = evaluate_bundle((model, meta), sample_cells, scale, eval_limit)
    ev_held = evaluate_bundle((model, meta), heldout_cells, scale, eval_limit)
    heldout = {"data": f"{len(sample_cells['hr'])} white blood cells of the CellaVision set "
                       "that the model never trained on and that did not choose the checkpoint",
               "metric": "PSNR on Y (dB)",
               "model": round(ev_sample["psnr"], 3), "bicubic": round(ev_sample["bicubic_psnr"], 3),
               "ssim_model": round(ev_sample["ssim"], 4),
               "ssim_bicubic": round(ev_sample["bicubic_ssim"], 4),
               "other_cells": {"data": f"{len(heldout_cells['hr'])} more white blood cells of both "
                                       "sets that the model never trained on",
                               **{k: round(v, 4) for k, v in ev_held.items() if k != "iou"}}}
    channels = int(model.in_channels)
    parses = bool(getattr(model, "predicts_parsing", False))
    domain = leukocyte_domain(scale, len(train["hr"]), heldout, channels, with_prior=parses,
                              luma=channels == 1 or bool(getattr(model, "luma_sr", False)))
    domain["input_stats"] = _input_stats(train, scale, channels)
    meta = dict(meta)
    meta["domain"] = domain
    last = (meta.get("metrics") or {}).get("weights") == "last step"  # train.checkpoint.final_model
    chosen = "the run's last weights" if last else "checkpoint chosen on 5 % of the training cells"
    meta["training_data"] = ("WBC (Zheng 2018) data sets 1+2 minus the 12 sample_data cells and "
                             f"the HELDOUT_RULE cells; {chosen}")
    meta["steps_info"] = dict(steps_info)
    if parses:
        _, bccd_held = P.bccd_split(data_root / "bccd")
        smear_list = P.load_smears(data_root / "bccd", bccd_held[:smears]) if smears else []
        meta["parsing"] = {
            "iou_sample_cells": {k: round(v, 4) for k, v in ev_sample["iou"].items()},
            "iou_heldout_cells": {k: round(v, 4) for k, v in ev_held["iou"].items()},
            "bccd_smears": len(smear_list),
            **(smear_figures(model, smear_list, scale) if smear_list else {}),
        }
        log(f"parsing {meta['parsing']}")
    bundle.save(out_path, model, meta)
    log(f"bundle {out_path}: {heldout}")
    return meta
