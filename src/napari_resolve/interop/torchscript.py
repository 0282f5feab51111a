"""TorchScript super-resolution models in napari-resolve's tiled engine.

A TorchScript file (``torch.jit.save``) is accepted when it declares its
scale: either inside a BioImage Model Zoo package (the output's spatial axes
are sized by reference to the input's, ``scale_out = scale_in / factor``) or
with an extra file ``napari_resolve.json`` = ``{"scale": 4, ...}`` saved in
the archive (``torch.jit.save(m, path, _extra_files={"napari_resolve.json":
...})``; napari-resolve writes it into its own exports). Without a declared
scale the file is refused: a scale guessed from one test run could be wrong
for the model's size rules.

Safety review (issue 16): ``torch.jit.load`` does not run Python's pickle
machinery on arbitrary globals: the archive's ``data.pkl`` / ``constants.pkl``
are read by TorchScript's own restricted unpickler, which rebuilds only
tensors, containers and TorchScript classes compiled from the archive's
``code/`` folder. But that code is a program: calling the model runs any
TorchScript operator the author put in it (operators that read or write
files exist), and the deserialiser has had memory-safety bugs. So a
TorchScript model is as trusted as its source: load only files from people
you trust, as you would a plug-in. napari-resolve's own bundles are
safetensors and never run code; this importer is for models made elsewhere.
A pickle checkpoint renamed ``.pt`` (``torch.save``, no ``code/`` folder) is
refused before anything is read by torch.

The model is wrapped in :class:`TorchScriptSR`, an ordinary
:class:`~napari_resolve.models.base.SRModel` (``forward`` returns
``{"sr": ...}``), so the predictor tiles it like any network: unknown
receptive field, so tiles overlap by 32 LR px and blend (paper 002 §IV.D).
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import torch

from napari_resolve.errors import BundleError
from napari_resolve.models.base import SRModel

__all__ = ["TorchScriptSR", "is_torchscript", "load_torchscript", "from_bioimageio",
           "EXTRA_FILE"]

EXTRA_FILE = "napari_resolve.json"


class TorchScriptSR(SRModel):
    """A TorchScript SR network (N, C, h, w) -> (N, C, s*h, s*w) as an SRModel."""

    receptive_field = 0  # unknown: the predictor overlaps tiles by 32 LR px
    global_ops = True  # unknown, so assume the worst for tiling

    def __init__(self, module, scale: int, in_channels: int, size_multiple: int = 1):
        super().__init__(scale, in_channels)
        self.module = module
        self.size_multiple = max(int(size_multiple), 1)
        self.arch = "torchscript"
        self.config = {"scale": int(scale), "in_channels": int(in_channels)}

    def forward(self, x, prior=None):
        self.check_input(x)
        x, hw = self.pad_input(x)
        out = self.module(x)
        if isinstance(out, (tuple, list)):
            out = out[0]
        if isinstance(out, dict):
            out = out["sr"]
        return {"sr": self.crop_output(out, hw)}


def is_torchscript(path) -> bool:
    """True for a zip archive with TorchScript's ``code/`` folder (not a pickle checkpoint)."""
    p = Path(path)
    if not p.is_file() or not zipfile.is_zipfile(p):
        return False
    try:
        with zipfile.ZipFile(p) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any("/code/" in n for n in names) and any(n.endswith("constants.pkl") for n in names)


def _jit_load(data, name: str, extra: dict | None = None):
    try:
        return torch.jit.load(io.BytesIO(data) if isinstance(data, bytes) else str(data),
                              map_location="cpu", _extra_files=extra if extra is not None else {})
    except Exception as exc:
        raise BundleError(f"{name}: not a loadable TorchScript model: "
                          f"{' '.join(str(exc).split())[:160]}") from None


def _meta(scale: int, in_channels: int, normalization: dict, source: dict, extra=None) -> dict:
    return {
        "architecture": "torchscript", "config": {"scale": scale, "in_channels": in_channels},
        "scale": scale, "in_channels": in_channels,
        "color_mode": "rgb" if in_channels == 3 else "grey", "input_mode": "lr",
        "normalization": normalization, "labels": None, "pixel_size": None,
        "paper": "", "source": source, **(extra or {}),
    }


def load_torchscript(path):
    """``(model, meta)`` of a TorchScript file that declares its scale (module docstring)."""
    path = Path(path)
    extra = {EXTRA_FILE: ""}
    module = _jit_load(path, path.name, extra)
    try:
        declared = json.loads(extra[EXTRA_FILE] or "null")
    except (json.JSONDecodeError, UnicodeDecodeError):
        declared = None
    if not isinstance(declared, dict) or not isinstance(declared.get("scale"), int):
        raise BundleError(
            f"{path.name}: a TorchScript model must declare its scale: save it with "
            f"_extra_files={{'{EXTRA_FILE}': '{{\"scale\": 4, \"in_channels\": 1}}'}} or "
            "in a bioimage.io package"
        )
    scale, ch = int(declared["scale"]), int(declared.get("in_channels", 1))
    norm = declared.get("normalization") or {"mode": "dtype"}
    model = TorchScriptSR(module.eval(), scale, ch, declared.get("size_multiple", 1))
    meta = _meta(scale, ch, norm, {"format": "torchscript", "path": str(path)},
                 {k: v for k, v in declared.items() if k in ("pixel_size", "domain", "paper")})
    return model.eval(), meta


def from_bioimageio(descr, weights: bytes, path: Path):
    """``(model, meta)`` from a bioimage.io model description and its TorchScript weights."""
    if len(descr.inputs) != 1 or len(descr.outputs) != 1:
        raise BundleError(f"{path.name}: napari-resolve runs one-input, one-output models")
    inp, out = descr.inputs[0], descr.outputs[0]
    in_axes = {str(a.id): a for a in inp.axes}
    out_axes = {str(a.id): a for a in out.axes}
    if set(in_axes) - {"batch", "channel", "y", "x"} or not {"y", "x"} <= set(out_axes):
        raise BundleError(f"{path.name}: napari-resolve runs 2-D (batch, channel, y, x) models")
    scales = set()
    for a in ("y", "x"):
        ref = getattr(out_axes[a], "size", None)
        if not hasattr(ref, "tensor_id") or str(ref.axis_id) != a:
            raise BundleError(f"{path.name}: the output's {a} size is not declared from the "
                              "input's, so its scale is unknown")
        scales.add(in_axes[a].scale / out_axes[a].scale)
    if len(scales) != 1 or abs(next(iter(scales)) - round(next(iter(scales)))) > 1e-6:
        raise BundleError(f"{path.name}: the package's scale {sorted(scales)} is not one whole "
                          "number for y and x")
    scale = int(round(scales.pop()))
    ch = len(in_axes["channel"].channel_names) if "channel" in in_axes else 1
    pre = [p.id for p in inp.preprocessing if p.id != "ensure_dtype"]
    norm = {"mode": "dtype"}
    if pre == ["scale_range"]:
        k = inp.preprocessing[[p.id for p in inp.preprocessing].index("scale_range")].kwargs
        norm = {"mode": "percentile", "low": float(k.min_percentile),
                "high": float(k.max_percentile)}
    elif pre not in ([], ["scale_linear"]):
        raise BundleError(f"{path.name}: preprocessing {', '.join(pre)} is not one napari-resolve "
                          "reproduces (it has dtype and percentile normalisation)")
    step = getattr(in_axes["y"].size, "step", 1) or 1
    module = _jit_load(weights, path.name)
    model = TorchScriptSR(module.eval(), scale, ch, step)
    meta = _meta(scale, ch, norm, {"format": "bioimageio", "path": str(path), "name": descr.name})
    return model.eval(), meta
