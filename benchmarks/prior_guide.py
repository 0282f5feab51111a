"""Choose GP's guided-filter refinement of the parsing map on training cells; report held-out IoU.

    PYTHONPATH=src .venv/bin/python benchmarks/prior_guide.py [gp-x4 gp-x8] [--zooms 1 2 1,2] [--write]

For each GP bundle: the prior's map (8 orientations, as shipped) is computed
once per cell; the guided filter (``models.geometry_prior.guided_filter``,
guide = the bicubic-upsampled image) is applied with every window radius of
``scale/2, scale, 3·scale/2`` HR px and every ``eps`` of 1e-4 … 3e-3, and the
pair with the highest mean of cytoplasm and nucleus IoU on 60 *training*
cells (drawn with seed 0 from ``leukocyte_split``'s training cells) is
chosen. Only then are the 12 sample cells and the 31 other held-out cells
parsed, through the model itself (``model_parser`` with the chosen values
set), without and with the filter. Issue 14's tenth session; the bundles
carry the chosen values (``prior_guide_radius``, ``prior_guide_eps``).

``--zooms 1 2 1,2`` first chooses how much the prior enlarges the LR image
it reads (``prior_zoom``, divisors of the scale; ``1,2``: the mean of the
maps at both) on the same training cells, with the bundle's own filter, by
the mean over the training magnification and twice it (``ZOOM_MAGS``), then
the filter for that zoom (session 12: ``gp-x8`` reads its LR image at 1×
and 2× and averages). ``--zoom Z`` fixes it.

``--magnifications 0.5 0.75 1 1.5 2`` trains and chooses nothing: the
shipped maps' IoU on the training, sample and other held-out cells when the
cells are that many times larger in pixels than in the WBC sets (a user's
microscope; ``metrics.parsing.parse_cells(magnification=)``), as a table
between the ``prior-magnification`` markers with ``--write`` (session 13).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
EPS = (1e-4, 3e-4, 1e-3, 3e-3)
TRAIN_CELLS = 60
TAG = "prior-guide"


def _radii(scale: int) -> tuple[int, ...]:
    return (scale // 2, scale, 3 * scale // 2)


@contextmanager
def guide_set(model, radius: int, eps: float):
    """``model``'s map refinement set to ``radius`` / ``eps`` inside the block, restored after."""
    old = model.prior_guide_radius, model.prior_guide_eps
    model.prior_guide_radius, model.prior_guide_eps = radius, eps
    try:
        yield model
    finally:
        model.prior_guide_radius, model.prior_guide_eps = old


def training_choice(model, cells, scale: int) -> tuple[dict, dict]:
    """Mean IoU per (radius, eps) on ``cells`` (radius 0 = no filter), and the chosen pair."""
    from napari_resolve.data.degrade import imresize, imresize_torch
    from napari_resolve.metrics.parsing import class_iou
    from napari_resolve.models.geometry_prior import guided_filter
    from napari_resolve.train import parsing as P

    scores: dict = {}
    with guide_set(model, 0, model.prior_guide_eps):  # the plain map, filtered per candidate
        for hr, lab in zip(cells["hr"], cells["labels"]):
            h, w = hr.shape[0] // scale * scale, hr.shape[1] // scale * scale
            lr = imresize(np.asarray(hr)[:h, :w], 1.0 / scale, channel_axis=-1)
            x = P.model_input(lr, model.in_channels)
            with torch.no_grad():
                soft = torch.softmax(model.parsing_logits(x, scale), 1)
                guide = imresize_torch(x, scale).mean(1, keepdim=True)
                cands = {(0, 0.0): soft}
                for r in _radii(scale):
                    for e in EPS:
                        cands[(r, e)] = guided_filter(guide, soft, r, e)
            for key, q in cands.items():
                iou = class_iou(q[0].argmax(0).numpy().astype(np.uint8), np.asarray(lab)[:h, :w])
                scores.setdefault(key, []).append((iou["cytoplasm"], iou["nucleus"]))
    means = {k: tuple(float(x) for x in np.mean(v, axis=0)) for k, v in scores.items()}
    best = max((k for k in means if k[0]), key=lambda k: sum(means[k]))
    return means, {"radius": best[0], "eps": best[1]}


def heldout(model, cells, scale: int, radius: int, eps: float) -> dict:
    """Mean IoU of the model's own parser on ``cells`` with the filter set as given."""
    from napari_resolve.metrics.parsing import parse_cells
    from napari_resolve.train import parsing as P

    with guide_set(model, radius, eps):
        return parse_cells(P.model_parser(model), cells, scale)


def cost(model, side: int = 256, repeats: int = 3) -> dict:
    """Seconds (best of ``repeats``, this process's torch threads) of the map without and with
    the bundle's filter, and of the whole forward pass, for a random ``side``² LR image."""
    from napari_resolve.data.degrade import imresize_torch

    x = torch.rand(1, model.in_channels, side, side, generator=torch.Generator().manual_seed(0))
    out = {}
    with torch.no_grad():
        up = imresize_torch(x, model.scale)
        for label, r in (("map", 0), ("map, filtered", model.prior_guide_radius)):
            times = []
            with guide_set(model, r, model.prior_guide_eps):
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    model.parsing_logits(x, up=up)
                    times.append(time.perf_counter() - t0)
            out[label] = min(times)
        t0 = time.perf_counter()
        model(x)
        out["forward"] = time.perf_counter() - t0
    return {k: round(v, 2) for k, v in out.items()}


#: magnifications the zoom is chosen over: as trained, and an image twice as magnified
#: (a x4 LR image given to the x8 model: a user's image need not be at the training scale)
ZOOM_MAGS = (1, 2)


def zoom_choice(model, cells, scale: int, candidates) -> tuple[dict, object]:
    """Mean IoU (cytoplasm, nucleus) on ``cells`` per ``prior_zoom`` candidate (an int, or a
    tuple of ints: the mean over those zooms) at each of :data:`ZOOM_MAGS`, with the model's
    own filter; the candidate of the highest sum, averaged over the magnifications."""
    from napari_resolve.metrics.parsing import parse_cells
    from napari_resolve.train import parsing as P

    old, scores = model.prior_zoom, {}
    try:
        for cand in candidates:
            if any(scale % z for z in (cand if isinstance(cand, tuple) else (cand,))):
                continue
            model.prior_zoom = cand
            per = {m: parse_cells(P.model_parser(model), cells, scale, magnification=m)
                   for m in ZOOM_MAGS}
            scores[cand] = {f"x{m} magnification": (v["cytoplasm"], v["nucleus"])
                            for m, v in per.items()}
    finally:
        model.prior_zoom = old
    best = max(scores, key=lambda c: np.mean([sum(v) for v in scores[c].values()]))
    return scores, best


def _zoom_text(zoom) -> str:
    """2 -> "2"; (1, 2) or [1, 2] -> "1,2" (what ``--zooms`` reads)."""
    return ",".join(map(str, zoom)) if isinstance(zoom, (list, tuple)) else str(zoom)


def _zoom_arg(text: str):
    """``"2"`` -> 2; ``"1,2"`` -> (1, 2) (the mean over those zooms)."""
    values = tuple(int(v) for v in text.split(","))
    return values[0] if len(values) == 1 else values


def study(name: str, data: Path, zoom: int | None = None, zooms=None) -> dict:
    """``zoom``: the prior's ``prior_zoom`` to study instead of the bundle's own; ``zooms``:
    choose it among these on the training cells first (with the bundle's filter)."""
    from napari_resolve import bundle
    from napari_resolve.train import parsing as P

    model, meta = bundle.load(name)
    model.eval()
    scale = int(meta["scale"])
    if zoom is not None:
        model.prior_zoom = zoom
    train, sample, held = P.leukocyte_split(data)
    cells = training_cells(train)
    t0 = time.monotonic()
    zoom_scores = None
    if zooms:
        zoom_scores, zoom = zoom_choice(model, cells, scale, zooms)
        model.prior_zoom = zoom
    means, chosen = training_choice(model, cells, scale)
    out = {"bundle": name, "scale": scale, "prior_zoom": model.prior_zoom, "shipped": {"radius": model.prior_guide_radius,
                                                       "eps": model.prior_guide_eps},
           "chosen": chosen, "training": {f"r{k[0]} eps{k[1]:g}": v for k, v in means.items()},
           "zoom_training": None if zoom_scores is None else {
               _zoom_text(k): v for k, v in zoom_scores.items()}}
    for label, cells_ in (("12 sample cells", sample), (f"{len(held['hr'])} other cells", held)):
        out[label] = {"no filter": heldout(model, cells_, scale, 0, 1e-3),
                      "chosen": heldout(model, cells_, scale, chosen["radius"], chosen["eps"])}
    out["seconds"] = round(time.monotonic() - t0, 1)
    with guide_set(model, chosen["radius"], chosen["eps"]):
        out["cost_s"] = cost(model)
    return out


def table(results: list[dict]) -> str:
    from _docs import measured_line  # benchmarks/ is on the path when a script runs

    lines = [
        measured_line("PYTHONPATH=src python benchmarks/prior_guide.py --write"),
        "",
        f"Chosen on {TRAIN_CELLS} training cells (mean of cytoplasm and nucleus IoU), then measured "
        "once on the held-out cells. IoU cytoplasm / nucleus.",
        "",
        "| bundle | chosen radius (HR px), eps | training cells: no filter | chosen "
        "| 12 sample cells: no filter | chosen | other held-out cells: no filter | chosen |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        c = r["chosen"]
        tr = r["training"]
        other = next(k for k in r if k.endswith("other cells"))
        f = lambda d: f"{d['cytoplasm']:.3f} / {d['nucleus']:.3f}"  # noqa: E731
        g = lambda t: f"{t[0]:.3f} / {t[1]:.3f}"  # noqa: E731
        key = "r{} eps{:g}".format(c["radius"], c["eps"])
        z = r.get("prior_zoom", 1)
        zoom = "" if z == 1 else f" (prior zoom {_zoom_text(z)})"
        lines.append(
            f"| {r['bundle']}{zoom} | {c['radius']}, {c['eps']:g} | {g(tr['r0 eps0'])} | {g(tr[key])} "
            f"| {f(r['12 sample cells']['no filter'])} | {f(r['12 sample cells']['chosen'])} "
            f"| {f(r[other]['no filter'])} | {f(r[other]['chosen'])} |")
    for r in results:
        if r.get("zoom_training"):
            lines += ["", f"Prior zoom of {r['bundle']}, chosen first on the training cells with "
                      "its own filter, by the mean over an image at the training magnification "
                      "and one twice as magnified (cytoplasm / nucleus at ×1; ×2; a, b = the "
                      "mean of zooms a and b): " + ", ".join(
                          f"{c}: " + "; ".join(f"{a:.3f} / {b:.3f}" for a, b in v.values())
                          for c, v in r["zoom_training"].items()) + f"; chosen {_zoom_text(r['prior_zoom'])}."]
    lines += ["", "Cost, one torch thread, a 256² LR image (seconds): " + "; ".join(
        f"{r['bundle']}: map {r['cost_s']['map']}, filtered {r['cost_s']['map, filtered']}, "
        f"whole forward pass {r['cost_s']['forward']}" for r in results) + "."]
    return "\n".join(lines)


def training_cells(train: dict) -> dict:
    """The :data:`TRAIN_CELLS` training cells every choice here is made on (seed 0)."""
    idx = np.random.default_rng(0).choice(len(train["hr"]), TRAIN_CELLS, replace=False)
    return {k: [train[k][i] for i in idx] for k in ("hr", "labels")}


def magnification_table(names, data: Path, mags) -> str:
    """IoU cytoplasm / nucleus of each shipped bundle's own map at each magnification."""
    from _docs import measured_line  # benchmarks/ is on the path when a script runs

    from napari_resolve import bundle
    from napari_resolve.metrics.parsing import parse_cells
    from napari_resolve.train import parsing as P

    train, sample, held = P.leukocyte_split(data)
    sets = {f"{TRAIN_CELLS} training cells": training_cells(train), "12 sample cells": sample,
            f"{len(held['hr'])} other cells": held}
    cols, rows = [], {m: [] for m in mags}
    for name in names:
        model, meta = bundle.load(name)
        model.eval()
        parse, scale = P.model_parser(model), int(meta["scale"])
        cols += [f"`{name}` {label}" for label in sets]
        for m in mags:
            for cells in sets.values():
                r = parse_cells(parse, cells, scale, magnification=m)
                rows[m].append(f"{r['cytoplasm']:.3f} / {r['nucleus']:.3f}")
            print(name, m, rows[m][-len(sets):], flush=True)
    mags_text = " ".join(f"{m:g}" for m in mags)
    lines = [measured_line(f"PYTHONPATH=src python benchmarks/prior_guide.py --magnifications "
                           f"{mags_text} --write"), "",
             ("IoU cytoplasm / nucleus of the shipped maps with the cells m times larger in "
              "pixels (LR = the cell reduced scale / m times, MATLAB bicubic; annotation resized "
              "nearest)."),
             "", "| m | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    lines += [f"| {m:g} | " + " | ".join(v) + " |" for m, v in rows.items()]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundles", nargs="*", default=["gp-x4", "gp-x8"])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "wbc-zheng2018")
    ap.add_argument("--json", type=Path, default=REPO / "bench_output" / "prior_guide.json")
    ap.add_argument("--zoom", type=_zoom_arg, default=None,
                    help="study the prior reading the LR image enlarged this many times "
                         "(prior_zoom) instead of the bundle's own setting")
    ap.add_argument("--zooms", type=_zoom_arg, nargs="+", default=None,
                    help="choose prior_zoom among these on the training cells first "
                         "(e.g. 1 2 1,2: a comma-separated list is the mean over those zooms)")
    ap.add_argument("--magnifications", type=float, nargs="+", default=None,
                    help="choose nothing: the shipped maps' IoU with the cells this many times "
                         "larger in pixels (e.g. 0.5 0.75 1 1.5 2)")
    ap.add_argument("--write", action="store_true",
                    help="put the table between the prior-guide markers of docs/benchmarks.md")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    from _docs import publish  # benchmarks/ is on the path when a script runs

    if args.magnifications:
        publish(magnification_table(args.bundles, args.data, args.magnifications),
                "prior-magnification", args.write)
        return 0
    results = []
    for name in args.bundles:
        res = study(name, args.data, args.zoom, args.zooms)
        print(json.dumps(res), flush=True)
        results.append(res)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=1))
    text = table(results)
    publish(text, TAG, args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
