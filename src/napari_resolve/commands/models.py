"""``napari-resolve models``: the registered architectures and the pretrained bundles.

Architectures come from :func:`napari_resolve.models.available` (name, paper,
parameter count of the default config); bundles from
:func:`napari_resolve.bundle.pretrained` (name, one-line summary). ``--json``
prints the same as JSON for scripts.
"""

from __future__ import annotations

import json

NAME = "models"
HELP = "list model architectures and pretrained bundles"


def add_arguments(parser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")


def _rows(models_info, bundles):
    arch = [
        {
            "name": m.name,
            "paper": m.paper,
            "parameters": int(m.parameters),
            "description": m.description,
        }
        for m in models_info
    ]
    pre = [{"name": b["name"], "path": str(b["path"]), "summary": b["summary"]} for b in bundles]
    return arch, pre


def run(args) -> int:
    from napari_resolve import bundle, models

    arch, pre = _rows(models.available(), bundle.pretrained())
    if args.json:
        print(json.dumps({"architectures": arch, "pretrained": pre}, indent=2))
        return 0
    width = max([len(a["name"]) for a in arch] + [12])
    print("Architectures (napari-resolve train --arch NAME; weight-free ones run as they are)")
    print(f"  {'name':<{width}}  {'parameters':>11}  paper")
    for a in arch:
        print(f"  {a['name']:<{width}}  {a['parameters']:>11,}  {a['paper']}")
    print()
    if pre:
        pwidth = max(len(p["name"]) for p in pre)
        print("Pretrained bundles (napari-resolve predict IN -o OUT --model NAME)")
        for p in pre:
            print(f"  {p['name']:<{pwidth}}  {p['summary']}")
    else:
        print("Pretrained bundles: none installed")
    return 0
