"""Model cards in plain words, and a warning when an image does not look like a model's data.

Qt-free (the napari panels, the CLI and scripts share it). A bundle written
from issue 18 on carries ``meta["domain"]`` (the contract in
``docs/architecture.md``, "Model cards"): what images the model is for, what
it was trained on and how it scored against bicubic on images it never saw.
:func:`card_text` / :func:`card_html` turn that into a few sentences a
biologist reads; bundles without it get a card built from what their
metadata does say (architecture, scale, colour mode, training data) with no
developer words (no metric keys, no temporary paths).

:func:`domain_warning` compares an image with the model's domain: colour
against grey, bright-field against fluorescence (a bright against a dark
background), physical pixel size, and the intensity statistics of the
training inputs (``domain["input_stats"]``, after the bundle's
normalisation). The thresholds are ours (the papers give none): a mean
more than 0.2 (of the normalised range) from the training mean, or a
spread (std) more than 2× off, in any channel; a pixel size more than 2×
off. Where the card keeps per-image statistics (``input_stats["images"]``),
the image is compared with each training image and warned about only when
none is close. A warning is advice, never a refusal.
"""

from __future__ import annotations

import math
import re

import numpy as np

__all__ = ["card_text", "card_html", "card_lines", "domain_warning", "image_stats"]

PAPERS = {
    "gp": "the geometry-prior network of Hua et al. 2020 (white blood cells)",
    "np": "the no-prior network of Hua et al. 2020 (white blood cells)",
    "pathsrgan": "PathSRGAN (Ma et al. 2020, whole-slide pathology scans)",
    "mhtcun-lite": "MHTCUN (Gong et al. 2021, fluorescence microscopy), light version",
    "mhtcun": "MHTCUN (Gong et al. 2021, fluorescence microscopy)",
    "srseg": "SRSEG (super-resolution with segmentation)",
    "srresnet": "SRResNet",
    "srcnn": "SRCNN",
    "dfcan": "DFCAN (Qiao et al. 2021, fluorescence microscopy), the baseline of MHTCUN's paper",
    "bicubic": "bicubic interpolation (no learning)",
}
COLOUR_WORDS = {"rgb": "colour (RGB) images", "y": "colour or grey images (sharpens brightness, "
                "colour is enlarged smoothly)", "grey": "grey (single-channel) images"}
MODALITY_WORDS = {"brightfield": "bright-field (stained, light background)",
                  "fluorescence": "fluorescence (dark background)"}
#: words of older metadata that mean something only to developers
PLAIN_WORDS = {"sample_data": "the example", "val ": "validation "}
#: mean shift (normalised units) and spread ratio beyond which the intensities look foreign
MEAN_SHIFT, STD_RATIO, PIXEL_RATIO = 0.2, 2.0, 2.0

_DEV_WORDS = re.compile(r"(/tmp/\S*|/[\w.\-]+/\S*|\b\w+: \d+ images in memory\b|\bin memory\b)")


def _clean(text) -> str:
    """A free-text metadata value without file paths or 'N images in memory' bookkeeping."""
    text = str(text or "").strip()
    if not text or _DEV_WORDS.search(text):
        return ""
    for dev, plain in PLAIN_WORDS.items():  # whole words only ("removal stage" stays)
        text = re.sub(rf"\b{re.escape(dev)}", plain, text)
    return text


def _pixel(px) -> str:
    if isinstance(px, dict) and px.get("value"):
        value, unit = float(px["value"]), str(px.get("unit") or "µm")
        if unit in ("µm", "um", "micron") and value < 1:
            return f"{value * 1000:.4g} nm"
        return f"{value:.4g} {unit}"
    return ""


def _domain(meta: dict) -> dict:
    dom = meta.get("domain")
    return dom if isinstance(dom, dict) else {}


def _quality_sentence(meta: dict) -> str:
    dom = _domain(meta)
    held = dom.get("heldout") if isinstance(dom.get("heldout"), dict) else None
    if held and held.get("model") is not None:
        model, bic = float(held["model"]), held.get("bicubic")
        metric = str(held.get("metric") or "PSNR (dB)")
        data = str(held.get("data") or "images it never saw")
        if bic is not None:
            gain = model - float(bic)
            verdict = ("better than" if gain > 0.05 else "worse than" if gain < -0.05
                       else "about as good as")
            measure = metric.replace("(dB)", "").strip()
            text = (f"On {data}, it is {verdict} plain bicubic enlargement: "
                    f"{model:.2f} vs {float(bic):.2f} dB {measure} ({gain:+.2f} dB)")
        else:
            text = f"On {data}: {model:.2f} {metric}"
        if held.get("ssim_model") is not None and held.get("ssim_bicubic") is not None:
            text += (f"; structural similarity {float(held['ssim_model']):.3f} vs "
                     f"{float(held['ssim_bicubic']):.3f}")
        note = _clean(held.get("note"))
        return text + "." + (f" {note}" if note else "")
    ft = meta.get("finetune")
    if isinstance(ft, dict) and isinstance(ft.get("before"), dict) and isinstance(ft.get("after"), dict):
        b, a = ft["before"].get("val_psnr"), ft["after"].get("val_psnr")
        if b is not None and a is not None:
            return (f"Fine-tuned on your images: on the part held back from training it went from "
                    f"{b:.2f} to {a:.2f} dB ({a - b:+.2f} dB).")
    metrics = meta.get("metrics") if isinstance(meta.get("metrics"), dict) else {}
    if metrics.get("val_psnr") is not None:
        return (f"Scored {float(metrics['val_psnr']):.2f} dB on images kept aside during its "
                "training; no comparison with bicubic is recorded.")
    return "No test on held-out images is recorded for this model."


def card_lines(meta: dict) -> list[tuple[str, str]]:
    """The card as (heading, plain sentence) pairs."""
    meta = meta or {}
    dom = _domain(meta)
    arch = str(meta.get("architecture") or "model")
    s = meta.get("scale", dom.get("scale", "?"))
    if arch == "bicubic" and not dom:
        return [("For", f"Any image, {s}× finer by plain bicubic interpolation (MATLAB's)."),
                ("Trained on", "nothing: no learning"),
                ("How good", "The yardstick: every learned model is measured against it."),
                ("Method", PAPERS["bicubic"])]
    lines = []
    summary = _clean(dom.get("summary"))
    if not summary:
        colour = COLOUR_WORDS.get(str(meta.get("color_mode")), "images")
        summary = f"Makes {colour} {s}× finer."
        if meta.get("labels"):
            summary += " It also outlines nucleus and cytoplasm (a parsing map you can edit)."
    lines.append(("For", summary))
    what = []
    if dom.get("modality"):
        what.append(MODALITY_WORDS.get(str(dom["modality"]), str(dom["modality"])))
    if _clean(dom.get("sample")):
        what.append(_clean(dom["sample"]))
    if _clean(dom.get("microscope")):
        what.append(_clean(dom["microscope"]))
    if what:
        lines.append(("Images", "; ".join(what)))
    px = _pixel(dom.get("pixel_size")) or _pixel(meta.get("pixel_size"))
    scale_text = f"{s}× finer pixels" + (f"; input pixels of {px}" if px else
                                         "; input pixel size not fixed")
    lines.append(("Scale", scale_text))
    trained = _clean(dom.get("trained_on")) or _clean(meta.get("training_data"))
    if not trained:
        training = meta.get("training") if isinstance(meta.get("training"), dict) else {}
        n = training.get("images")
        trained = f"{n} images (not described further)" if isinstance(n, int) else "not recorded"
    if meta.get("parent"):
        parent = str(meta["parent"])
        parent = parent.rsplit("/", 1)[-1].removesuffix(".safetensors")
        trained += f". Fine-tuned from {parent}"
    lines.append(("Trained on", trained))
    lines.append(("How good", _quality_sentence(meta)))
    lines.append(("Method", PAPERS.get(arch, arch)))
    return lines


def card_text(meta: dict) -> str:
    """The model card in plain words (several lines of text)."""
    return "\n".join(f"{head}: {text}" for head, text in card_lines(meta))


def card_html(meta: dict, rows=None, table: bool = True) -> str:
    """The card as HTML for a Qt label (``rows``: only these headings; ``table=False``:
    one paragraph per heading, which wraps in narrow panels)."""
    from html import escape

    rows = [(h, t) for h, t in card_lines(meta) if rows is None or h in rows]
    if not table:
        return "<br>".join(f"<span style='color:#999'>{escape(h)}:</span> {escape(t)}"
                           for h, t in rows)
    return "<table>" + "".join(
        f"<tr><td style='padding-right:8px;color:#999' valign='top'>{escape(h)}</td>"
        f"<td>{escape(t)}</td></tr>" for h, t in rows) + "</table>"


# ----------------------------------------------------------------------------- domain check


def image_stats(image, normalization: dict | None = None, channels: int | None = None) -> dict:
    """Per-channel mean / std / median of ``image`` after the bundle ``normalization``.

    ``channels=1`` gives the statistics of the luminance (Y of an RGB image);
    3 those of R, G, B; None: the image's own channels. The image is
    subsampled to at most ~0.25 M pixels (it runs in the GUI thread when a layer is chosen).
    """
    from napari_resolve.data.normalize import Normalizer

    arr = np.asarray(image)
    step = max(1, int(math.ceil(math.sqrt(arr.shape[0] * arr.shape[1] / 2.5e5))))
    arr = arr[::step, ::step]
    norm = Normalizer.from_meta(normalization).fit(arr)
    x = np.asarray(norm.forward(arr), dtype=np.float64)
    rgb = x.ndim == 3 and x.shape[-1] in (3, 4)
    if rgb:
        x = x[..., :3]
    if channels == 1 and rgb:
        x = x @ np.array([0.299, 0.587, 0.114])  # luminance (ITU-R BT.601)
    planes = [x[..., c] for c in range(3)] if (rgb and channels != 1) else [x]
    return {"channels": len(planes), "mean": [round(float(p.mean()), 4) for p in planes],
            "std": [round(float(p.std()), 4) for p in planes],
            "median": [round(float(np.median(p)), 4) for p in planes]}


def _far_from_training(stats: dict, ref: dict) -> list[str]:
    """"brightness" / "contrast" when ``stats`` is far from every training image of ``ref``.

    ``ref["images"]`` (per-image statistics, the fluorescence bundles since
    issue 13's twelfth session) or else the one ``mean`` / ``std`` of the card.
    """
    images = [r for r in (ref.get("images") or []) if isinstance(r, dict) and r.get("mean")]
    refs = images or [{"mean": ref["mean"], "std": ref.get("std") or []}]

    def close_mean(r):
        return all(abs(m - rm) <= MEAN_SHIFT for m, rm in zip(stats["mean"], r["mean"]))

    def close_std(r):
        return all(not (rs and s_) or 1 / STD_RATIO <= s_ / rs <= STD_RATIO
                   for s_, rs in zip(stats["std"], r.get("std") or []))

    far = []
    if not any(close_mean(r) for r in refs):
        far.append("brightness")
    if not any(close_std(r) for r in refs):
        far.append("contrast")
    return far


def domain_warning(meta: dict, image, *, rgb: bool | None = None,
                   pixel_size_nm: float | None = None) -> str | None:
    """A one-line warning when ``image`` does not look like the model's training images.

    ``image``: one 2-D plane, grey (H, W) or colour (H, W, 3); ``rgb``: whether
    the layer is colour (default: a last axis of 3 or 4); ``pixel_size_nm``:
    the layer's pixel size when it is calibrated. None when nothing looks wrong.
    """
    meta = meta or {}
    dom = _domain(meta)
    arr = np.asarray(image)
    if arr.size == 0:
        return None
    is_rgb = bool(rgb) if rgb is not None else (arr.ndim == 3 and arr.shape[-1] in (3, 4))
    name = meta.get("name") or str(meta.get("architecture") or "this model")
    problems = []
    model_rgb = int(meta.get("in_channels", 1)) == 3
    if model_rgb and not is_rgb:
        problems.append("it works on colour images and this one is grey")
    modality = dom.get("modality")
    if modality == "fluorescence" and is_rgb:
        problems.append("it was trained on grey fluorescence images and this one is colour")
    try:
        stats = image_stats(arr, meta.get("normalization"),
                            channels=1 if not is_rgb else (3 if model_rgb else 1))
    except Exception:  # noqa: BLE001 - a warning must never break a run
        return "; ".join(problems) or None
    if modality == "brightfield" and not problems and max(stats["mean"]) < 0.3:
        problems.append("it was trained on bright-field images (bright background) and this "
                        "one is dark, like fluorescence")
    elif modality == "fluorescence" and not problems and min(stats["median"]) > 0.85:
        # the bulk of the pixels at the top: a bright background. (A crop inside a hazy
        # cell, e.g. the SFSRM ER sample, has a mean of 0.7 but a median of 0.77.)
        problems.append("it was trained on fluorescence (dark background) and this one is "
                        "bright, like bright-field")
    ref = dom.get("input_stats") if isinstance(dom.get("input_stats"), dict) else None
    if not problems and ref and ref.get("mean") and int(ref.get("channels", 0)) == stats["channels"]:
        far = _far_from_training(stats, ref)
        if far:
            kinds = sorted(set(far))
            verb = "differ" if len(kinds) > 1 else "differs"
            problems.append(f"its {' and '.join(kinds)} {verb} from the training images (e.g. "
                            "another stain, magnification or microscope)")
    px = dom.get("pixel_size") if isinstance(dom.get("pixel_size"), dict) else None
    if pixel_size_nm and px and px.get("value"):
        unit = str(px.get("unit") or "nm")
        want = float(px["value"]) * (1000.0 if unit in ("µm", "um") else 1.0)
        ratio = pixel_size_nm / want
        if not (1 / PIXEL_RATIO <= ratio <= PIXEL_RATIO):
            problems.append(f"its pixels are {pixel_size_nm:.4g} nm, the model expects about "
                            f"{want:.4g} nm")
    if not problems:
        return None
    summary = _clean(dom.get("summary"))
    text = f"This image may not suit {name}: " + "; ".join(problems) + "."
    if summary:
        text += f" The model is for: {summary[0].lower() + summary[1:]}"
        text += "" if text.endswith((".", "!", "?")) else "."
    return text + " Results may be worse than bicubic."
