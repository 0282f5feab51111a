"""Add a plain-language ``domain`` card to bundled models that lack one (issue 18).

    python scripts/describe_bundles.py                 # every bundle without a domain
    python scripts/describe_bundles.py pathsrgan-x4    # only these
    python scripts/describe_bundles.py --dry-run       # print, write nothing
    python scripts/describe_bundles.py --force NAME    # replace an existing domain

A metadata-only rewrite: the safetensors header's ``__metadata__`` gets the
new JSON, the tensor bytes are copied unchanged (the header's offsets are
relative to the data section), the file is replaced atomically
(:func:`napari_resolve._atomic.atomic_path`) and read back to check that
every tensor is byte-identical. A bundle that already has ``domain`` is left
alone unless ``--force`` names it (retrained bundles write their own).

The facts (``FACTS``) come from each bundle's metadata and the held-out
figures of ``docs/benchmarks.md`` ("Bundled models", "PathSRGAN",
"Fine-tuning"). ``input_stats`` (the domain warning's reference) are
measured here on the repository's ``sample_data`` made into model inputs the
way the training data were (shrunk with MATLAB bicubic, or simulated
fluorescence), after the bundle's normalisation; their source is recorded.
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
from pathlib import Path

import numpy as np

WBC_TRAINED = ("354 white-blood-cell photos of the two WBC data sets of Zheng et al. 2018 "
               "(Jiangxi Tecom and CellaVision; GPL-3.0), each shrunk {s}× with "
               "bicubic interpolation to make the low-resolution input")
WBC_HELDOUT = "12 white blood cells of the CellaVision set that the model never trained on"


def _wbc(name, s, model, bicubic, ssim_model, ssim_bicubic, parsing):
    summary = (f"Colour photos of single white blood cells in stained blood smears, made {s}× "
               "finer")
    summary += (", with an outline of nucleus and cytoplasm you can correct." if parsing else ".")
    return {
        "summary": summary,
        "modality": "brightfield",
        "sample": "Wright-Giemsa-type stained peripheral blood smear, one white blood cell per "
                  "image (neutrophils, lymphocytes, monocytes, eosinophils, basophils)",
        "microscope": "bright-field light microscope with a colour camera, high magnification "
                      "(a cell fills most of the image)",
        "scale": s,
        "pixel_size": None,
        "trained_on": WBC_TRAINED.format(s=s),
        "heldout": {"data": WBC_HELDOUT, "metric": "PSNR on brightness (dB)", "model": model,
                    "bicubic": bicubic, "ssim_model": ssim_model, "ssim_bicubic": ssim_bicubic},
    }


FACTS = {
    "gp-x4": _wbc("gp-x4", 4, 36.275, 34.964, 0.9419, 0.9305, True),  # hard parsing map (issue 14)
    "gp-x8": _wbc("gp-x8", 8, 29.496, 28.737, 0.8309, 0.8189, True),
    "np-x4": _wbc("np-x4", 4, 35.569, 34.964, 0.9356, 0.9305, False),
    "np-x8": _wbc("np-x8", 8, 29.828, 28.737, 0.8416, 0.8189, False),
    "mhtcun-lite-x2": {
        "summary": "Grey wide-field fluorescence images of thin cell structures (filaments, "
                   "vesicles, membranes), made 2× finer.",
        "modality": "fluorescence",
        "sample": "fluorescently labelled microtubules, vesicles and endoplasmic reticulum",
        "microscope": "wide-field fluorescence, 1.3 NA objective, green emission (520 nm), "
                      "62.6 nm camera pixels",
        "scale": 2,
        "pixel_size": {"value": 62.6, "unit": "nm"},
        "trained_on": "48 simulated image pairs (computer-made microtubules, vesicles and ER "
                      "seen through a simulated wide-field microscope); no real images",
        "heldout": {"data": "4 tiles of a real two-photon image of BPAE cells it never saw",
                    "metric": "PSNR (dB)", "model": 22.84, "bicubic": 22.53,
                    "ssim_model": 0.525, "ssim_bicubic": 0.547,
                    "note": "On simulated images like its training data it scores 21.9 dB vs "
                            "about 19.1 dB for bicubic. Fine-tune it on your own images."},
    },
    "pathsrgan-x4": {
        "summary": "Colour whole-slide scans of stained blood smears and tissue taken with a 4× "
                   "objective, made 4× finer (towards a 20× scan).",
        "modality": "brightfield",
        "sample": "stained blood smears and immunohistochemistry tissue sections, many cells "
                  "per image",
        "microscope": "bright-field slide scanner, 4× / 0.1 NA objective, about 1.2 µm pixels",
        "scale": 4,
        "pixel_size": {"value": 1172.0, "unit": "nm"},
        "trained_on": "73 simulated 4×/20× scan pairs made from 96 blood-smear photos of the "
                      "BCCD data set (MIT licence) and one scikit-image tissue image (IHC)",
        "heldout": {"data": "16 blood smears of a slide it never trained on (simulated scans)",
                    "metric": "PSNR on colour (dB)", "model": 35.89, "bicubic": 34.66,
                    "ssim_model": 0.933, "ssim_bicubic": 0.927},
    },
}


# ----------------------------------------------------------------------------- input statistics


def input_stats(name: str, meta: dict) -> dict:
    """Mean / std per channel of model inputs made from sample_data (see the module docstring)."""
    from napari_resolve.cards import image_stats
    from napari_resolve.data import samples
    from napari_resolve.data.degrade import imresize

    s = int(meta["scale"])
    norm = meta.get("normalization")
    channels = int(meta.get("in_channels", 1))
    if name.startswith(("gp", "np")):
        images = [np.clip(imresize(hr, 1.0 / s, channel_axis=-1), 0, 255)
                  for hr, _, _ in samples.wbc(2)]
        source = f"the {len(images)} sample_data cells of WBC data set 2, shrunk {s}× (bicubic)"
    elif name.startswith("pathsrgan"):
        smear, _ = samples.bccd_smear()
        images = [np.clip(imresize(smear, 1.0 / s, channel_axis=-1), 0, 255)]
        source = f"the BCCD smear of sample_data shrunk {s}× (bicubic), as a 4× scan"
    elif name.startswith("mhtcun"):
        from napari_resolve.data.fluorescence import simulate_pairs

        pairs = simulate_pairs(6, shape=(128, 128), scale=s, seed=0)
        images = [np.asarray(p.lr) for p in pairs]
        source = "6 pairs of the fluorescence simulator the model was trained with"
    else:
        raise SystemExit(f"no input statistics rule for {name}")
    per = [image_stats(im, norm, channels=1 if channels == 1 else 3) for im in images]
    return {"channels": per[0]["channels"],
            "mean": [round(float(np.mean([p["mean"][c] for p in per])), 4)
                     for c in range(per[0]["channels"])],
            "std": [round(float(np.mean([p["std"][c] for p in per])), 4)
                    for c in range(per[0]["channels"])],
            "from": source}


# ----------------------------------------------------------------------------- rewriting


def rewrite_metadata(path: Path, meta: dict) -> None:
    """Replace the bundle metadata of ``path`` (header only; tensor bytes copied as they are)."""
    from napari_resolve import bundle
    from napari_resolve._atomic import atomic_path

    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    header.setdefault("__metadata__", {})[bundle.META_KEY] = json.dumps(meta, sort_keys=True)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # safetensors aligns the data section to 8 bytes
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + n:])


def same_tensors(a: bytes, b_path: Path) -> bool:
    from safetensors.numpy import load

    before, after = load(a), load(b_path.read_bytes())
    return before.keys() == after.keys() and all(
        before[k].dtype == after[k].dtype and np.array_equal(before[k], after[k]) for k in before)


def main(argv=None) -> int:
    from napari_resolve import bundle

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", help="bundle names (default: every bundle)")
    ap.add_argument("--dry-run", action="store_true")
    ap.add_argument("--force", action="store_true", help="replace an existing domain")
    args = ap.parse_args(argv)
    names = args.names or [e["name"] for e in bundle.pretrained()]
    for name in names:
        path = bundle.resolve(name)
        meta = bundle.read_meta(path)
        if meta.get("domain") and not args.force:
            print(f"{name}: has a domain card, left alone")
            continue
        if name not in FACTS:
            print(f"{name}: no facts written for it, left alone", file=sys.stderr)
            continue
        domain = dict(FACTS[name])
        domain["input_stats"] = input_stats(name, meta)
        meta["domain"] = domain
        if args.dry_run:
            print(f"--- {name}\n{json.dumps(domain, indent=2, ensure_ascii=False)}")
            continue
        before = path.read_bytes()
        rewrite_metadata(path, meta)
        if not same_tensors(before, path) or bundle.read_meta(path).get("domain") != domain:
            path.write_bytes(before)
            raise SystemExit(f"{name}: the rewrite changed the tensors; the file was restored")
        print(f"{name}: domain card added ({path.name}, tensors unchanged)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
