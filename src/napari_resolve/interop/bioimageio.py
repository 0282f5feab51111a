"""BioImage Model Zoo (bioimage.io) model packages: export a bundle, load one back.

Export (:func:`export_bioimageio`) writes a model package of format 0.5, built
with ``bioimageio.spec`` and checked with ``bioimageio.core``'s own test
(``test_description``: the package's prediction on its test input equals its
test output) before it is renamed into place. Such a package runs in
bioimageio.core, ilastik, deepImageJ (TorchScript), QuPath and CAREamics.

What goes in (choices the BMZ spec leaves to the exporter):

* **Weights**: ``pytorch_state_dict`` (``torch.save`` of the state dict,
  architecture source :mod:`~napari_resolve.interop._vendor`: one generated
  file with the networks' exact source, needing only torch + numpy), and
  ``torchscript`` (``torch.jit.trace`` of the same network) when the traced
  graph is size-independent: the trace is checked against the eager network
  on a second, different image size and left out with a note otherwise. ONNX
  weights come from :mod:`napari_resolve.runtime` when it offers an exporter.
* **Tensors**: input ``(batch, channel, y, x)``, float32; spatial sizes
  ``min + n * step`` with ``step`` the network's size rule and ``min`` large
  enough for the halo; output ``(batch, channel, y, x)`` with its ``y`` / ``x``
  sized by reference to the input's and a spatial ``scale`` of the input's
  divided by the SR factor (so ``size_out = factor * size_in``): 1 and
  1/factor, exact in binary (a physical 1.172 / 4 µm fails bioimageio's size
  check by float rounding); the pixel sizes in µm are under ``config``.
* **Halo**: the tiling context of napari-resolve's own engine
  (:func:`napari_resolve.predict.default_overlap`: the receptive field for
  local networks, 32 LR px for networks with global operations), in output
  pixels (``factor * overlap``), to be cropped from each side of a tile.
* **Channels**: grey models take ``"grey"``; the Y-channel models of paper 000
  (``color_mode == "y"``) take ``"y"``, the luma of MATLAB ``rgb2ycbcr`` on
  the 0-255 scale (convert RGB first; napari-resolve does it for you);
  RGB models take ``"r", "g", "b"``.
* **Intensities** (the bundle's ``normalization``): ``"dtype"`` bundles,
  all trained on 8-bit images, get ``scale_linear`` x 1/255 as preprocessing
  and x 255 as postprocessing (in and out on the 0-255 scale);
  ``"percentile"`` bundles get ``scale_range`` with the bundle's percentiles
  over the whole image (CSBDeep's normalisation; its epsilon 1e-6 is
  negligible next to image ranges) and their output stays in the
  normalised scale (the BMZ spec has no inverse of ``scale_range``).
* **Test tensors** from the bundled sample data (the sample the domain
  fits: a WBC cell, the BCCD smear or the wide-field microtubules), reduced
  by MATLAB bicubic to an LR image; the expected output is the network's.
* A cover (LR nearest-neighbour | SR), a README with a Validation section,
  the authors, the papers and data sets to cite, a licence (the most
  restrictive of the training data's; BSD-3-Clause for the code), and under
  ``config["napari_resolve"]`` the full bundle metadata, the input / output
  pixel sizes and the value range, so :func:`load_bioimageio` rebuilds the
  bundle exactly.

Load (:func:`load_bioimageio`): a package folder (with ``rdf.yaml`` or
``bioimageio.yaml``), that file itself, or a ``.zip`` package. Packages made
by napari-resolve come back as the bundle they were made from (network,
config and metadata), read from the ``pytorch_state_dict`` with
``torch.load(weights_only=True)`` only; other packages are accepted when they
have ``torchscript`` weights and a declared spatial scale
(:mod:`~napari_resolve.interop.torchscript`). Everything else is refused with a
one-line reason. Nothing is unpickled.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from napari_resolve._generators import run_to_end
from napari_resolve.errors import BundleError, InputError

__all__ = [
    "ExportResult",
    "export_bioimageio",
    "export_bioimageio_iter",
    "is_bioimageio",
    "load_bioimageio",
    "CONFIG_KEY",
    "WEIGHT_FORMATS",
]

CONFIG_KEY = "napari_resolve"
WEIGHT_FORMATS = ("pytorch_state_dict", "torchscript", "onnx")
RDF_NAMES = ("rdf.yaml", "bioimageio.yaml")
VALUE_RANGE_8BIT = 255.0  # "dtype" bundles are trained on 8-bit images
TEST_LR_SIDE = 64  # LR side of the test input before the halo rule
STATE_PREFIX = "net."

PAPERS = {
    "gp": ("Hua X, Cai Y, Zhou Y, Yan F, Cao X. Leukocyte super-resolution via geometry prior "
           "and structural consistency. J. Biomed. Opt. 25(10):106501 (2020).",
           {"doi": "10.1117/1.JBO.25.10.106501"}),
    "pathsrgan": ("Ma J, Yu J, Liu S, et al. PathSRGAN: multi-supervised super-resolution for "
                  "cytopathological images using generative adversarial network. IEEE Trans. "
                  "Med. Imaging 39(12):3924-3936 (2020).", {"doi": "10.1109/TMI.2020.3006548"}),
    "mhtcun": ("Gong D, Ma T, Evans J, He S. Deep neural networks for image super-resolution in "
               "optical microscopy by using modified hybrid task cascade U-Net. Progress In "
               "Electromagnetics Research 171 (2021).", {"url": "https://www.jpier.org/"}),
    "srseg": ("Rad MS, Bozorgtabar B, Musat C, et al. Benefiting from multitask learning to "
              "improve single image super-resolution. Neurocomputing 398:304-313 (2020).",
              {"doi": "10.1016/j.neucom.2019.07.107"}),
}
PAPERS["np"] = PAPERS["gp"]
PAPERS["mhtcun-lite"] = PAPERS["mhtcun"]
CODE = ("napari-resolve: interactive super-resolution for light microscopy (napari plugin, "
        "CLI and Python API).", {"url": "https://github.com/napari-resolve/napari-resolve"})

# Training-data words in a bundle's metadata -> (licence of the data, data citation key)
_DATA_LICENCES = (
    ("wbc", "GPL-3.0-only", "wbc-zheng2018"),
    ("zheng", "GPL-3.0-only", "wbc-zheng2018"),
    ("bccd", "MIT", "bccd"),
    ("ihc", "BSD-3-Clause", "skimage-ihc"),
    ("two-photon", "GPL-3.0-only", "nd-twophoton-srrf"),
    ("rdl-sim", "MIT", "rdl-sim-microtubules-raw"),
)
_LICENCE_ORDER = ("BSD-3-Clause", "MIT", "GPL-3.0-only")  # least to most restrictive


@dataclass
class ExportResult:
    """What :func:`export_bioimageio` wrote: the package, its weight formats, notes."""

    path: Path
    weight_formats: list[str]
    notes: list[str] = field(default_factory=list)
    test: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------- helpers


def _require_bioimageio():
    try:
        import bioimageio.core  # noqa: F401
        import bioimageio.spec  # noqa: F401
    except ImportError:
        raise BundleError(
            "BioImage Model Zoo export needs bioimageio.core: pip install bioimageio.core"
        ) from None


def _bundle_name(src, meta: dict) -> str:
    if isinstance(src, (str, Path)):
        return Path(str(src)).name.removesuffix(".safetensors")
    return f"{meta.get('architecture', 'model')}-x{meta.get('scale')}"


def _value_range(meta: dict) -> float | None:
    """The 0..R scale of the package's input and output (``None`` for percentile bundles)."""
    norm = meta.get("normalization") or {"mode": "dtype"}
    return None if norm.get("mode") == "percentile" else VALUE_RANGE_8BIT


def _pixel_size_um(meta: dict) -> float | None:
    ps = meta.get("pixel_size")
    if not isinstance(ps, dict) or ps.get("value") in (None, 0):
        return None
    unit = str(ps.get("unit", "µm")).replace("u", "µ")
    factor = {"µm": 1.0, "micrometer": 1.0, "nm": 1e-3, "nanometer": 1e-3, "mm": 1e3}.get(unit)
    return None if factor is None else float(ps["value"]) * factor


def _channel_names(meta: dict, in_channels: int) -> list[str]:
    if in_channels == 3:
        return ["r", "g", "b"]
    if meta.get("color_mode") == "y":
        return ["y"]
    return ["grey"] if in_channels == 1 else [f"c{i}" for i in range(in_channels)]


def _snap_up(v: int, m: int) -> int:
    return -(-int(v) // m) * m


def _geometry(model) -> dict:
    """Size rule, halo (LR and output px), minimum and test LR side of the package."""
    from napari_resolve.predict import default_overlap

    step = max(int(getattr(model, "size_multiple", 1) or 1), 1)
    overlap = int(default_overlap(model))
    # a tile must be larger than the two halos it loses
    min_side = _snap_up(2 * overlap + max(step, 8), step)
    test_side = _snap_up(max(TEST_LR_SIDE, min_side), step)
    return {"step": step, "overlap": overlap, "halo": overlap * int(model.scale),
            "min": min_side, "test": test_side}


def _test_image(meta: dict, in_channels: int, side: int) -> tuple[np.ndarray, str]:
    """An LR test image (side x side x C, float32, on the package's input scale) and its source.

    The sample of the bundle's domain from ``sample_data/``, reduced by MATLAB
    bicubic so that its HR version would be ``scale`` times larger.
    """
    from napari_resolve.data import samples
    from napari_resolve.data.degrade import imresize

    s = int(meta["scale"])
    hr_side = side * s
    if _value_range(meta) is None:  # fluorescence: the wide-field microtubules as they are
        img, _ = samples.mt_widefield()
        if img.shape[0] < side:
            img = np.pad(img, ((0, side - img.shape[0]), (0, side - img.shape[1])), "symmetric")
        y0 = (img.shape[0] - side) // 2
        return img[y0 : y0 + side, y0 : y0 + side, None].astype(np.float32), "rdl-sim-microtubules-raw"
    if in_channels == 3:
        rgb, _ = samples.bccd_smear()
        source = "bccd"
    else:
        rgb = samples.wbc(2, ids=[1])[0][0]
        source = "wbc-zheng2018"
    if min(rgb.shape[:2]) < hr_side:  # x8: a 300 px cell is smaller than 8 x the test side
        reps = -(-hr_side // min(rgb.shape[:2]))
        rgb = np.pad(rgb, ((0, rgb.shape[0] * (reps - 1)),) * 2 + ((0, 0),), "symmetric")
    y0, x0 = (rgb.shape[0] - hr_side) // 2, (rgb.shape[1] - hr_side) // 2
    lr = imresize(rgb[y0 : y0 + hr_side, x0 : x0 + hr_side], 1.0 / s, channel_axis=-1)
    lr = lr.astype(np.float32)
    if in_channels == 1:
        from napari_resolve.data.color import rgb_to_y

        lr = rgb_to_y(lr / 255.0)[..., None] * 255.0  # MATLAB rgb2ycbcr luma, 0-255 scale
    return lr.astype(np.float32), source


def _run_network(wrapped, x_bcyx: np.ndarray, meta: dict) -> np.ndarray:
    """Pre-process, run, post-process exactly as the package describes (float32)."""
    x = x_bcyx.astype(np.float64)
    vr = _value_range(meta)
    if vr is None:
        norm = meta["normalization"]
        lo, hi = np.percentile(x, [float(norm.get("low", 1.0)), float(norm.get("high", 99.8))])
        x = (x - lo) / (hi - lo + 1e-6)
    else:
        x = x * np.float32(1.0 / vr)
    with torch.no_grad():
        y = wrapped(torch.from_numpy(x.astype(np.float32))).numpy()
    if vr is not None:
        y = y * np.float32(vr)
    return y.astype(np.float32)


def _cover(lr_bcyx: np.ndarray, sr_bcyx: np.ndarray, path: Path, vr: float | None) -> None:
    """LR (nearest-neighbour to the SR size) beside SR: a 2:1 PNG."""
    import imageio.v3 as iio

    def to8(a):
        a = np.moveaxis(a[0], 0, -1)
        lo, hi = (0.0, vr) if vr else np.percentile(a, [0.5, 99.5])
        a = np.clip((a - lo) / max(hi - lo, 1e-6), 0, 1)
        a = np.rint(a * 255).astype(np.uint8)
        return np.repeat(a, 3, axis=-1) if a.shape[-1] == 1 else a

    f = sr_bcyx.shape[-1] // lr_bcyx.shape[-1]
    lr = np.repeat(np.repeat(to8(lr_bcyx), f, axis=0), f, axis=1)
    iio.imwrite(path, np.concatenate([lr, to8(sr_bcyx)], axis=1))


def _licence_and_data(meta: dict) -> tuple[str, list[str]]:
    text = json.dumps({k: meta.get(k) for k in ("training_data", "training", "domain")}).lower()
    found = [(lic, key) for word, lic, key in _DATA_LICENCES if word in text]
    licence = "BSD-3-Clause"
    for lic, _ in found:
        if _LICENCE_ORDER.index(lic) > _LICENCE_ORDER.index(licence):
            licence = lic
    return licence, list(dict.fromkeys(key for _, key in found))


def _citations(meta: dict, data_keys: list[str]):
    from bioimageio.spec.model.v0_5 import CiteEntry

    from napari_resolve.data.samples import _SOURCES

    entries = []
    arch = str(meta.get("architecture", ""))
    if arch in PAPERS:
        text, ref = PAPERS[arch]
        entries.append(CiteEntry(text=text, **ref))
    for key in data_keys:
        src = _SOURCES.get(key)
        if src:
            url = src["source"].split()[0]
            ref = {"url": url} if url.startswith("http") else {"url": "https://scikit-image.org"}
            entries.append(CiteEntry(text=f"Data: {src['citation']}", **ref))
    text, ref = CODE
    entries.append(CiteEntry(text=text, **ref))
    return entries


def _readme(name: str, meta: dict, geometry: dict, notes: list[str], licence: str) -> str:
    domain = meta.get("domain") or {}
    metrics = meta.get("metrics") or {}
    heldout = domain.get("heldout") or {}
    lines = [
        f"# {name} (napari-resolve)",
        "",
        domain.get("summary") or f"{meta.get('architecture')} super-resolution x{meta['scale']} "
        f"({meta.get('paper', '')}).",
        "",
        f"- Architecture: `{meta.get('architecture')}` ({meta.get('paper', '')}), "
        f"x{meta['scale']}, input channels: {meta.get('in_channels')} "
        f"(colour mode `{meta.get('color_mode')}`).",
        f"- Training data: {meta.get('training_data') or (meta.get('training') or {}).get('data')}",
        f"- Normalisation: `{json.dumps(meta.get('normalization'))}`.",
        f"- Tiling: tiles of at least {geometry['min']} input px, multiples of {geometry['step']}; "
        f"crop {geometry['halo']} output px ({geometry['overlap']} input px) from each tile side.",
        f"- Licence: {licence}.",
        "",
        "## Validation",
        "",
    ]
    if heldout:
        lines.append(f"Held-out data: {heldout.get('data')}; {heldout.get('metric')}: model "
                     f"{heldout.get('model')}, bicubic {heldout.get('bicubic')}.")
    shown = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    if shown:
        lines.append("Figures recorded when the model was trained (napari-resolve bundle "
                     "metadata): " + ", ".join(f"{k} {v:.4g}" for k, v in shown.items()) + ".")
    if not heldout and not shown:
        lines.append("No held-out figures were recorded for this model.")
    lines += ["", "Check a new image with `napari-resolve evaluate` against a reference, or "
              "compare with bicubic interpolation at the same factor.", ""]
    if notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- export


def _torchscript(wrapped, x: torch.Tensor, step: int, path: Path) -> str | None:
    """Trace ``wrapped``; save it when a second image size gives the eager result. Returns a
    note when it is left out."""
    try:
        with torch.no_grad(), _quiet():
            traced = torch.jit.trace(wrapped, x, check_trace=False)
            other = torch.rand(1, x.shape[1], x.shape[2] + 3 * step, x.shape[3] + 5 * step)
            ok = torch.allclose(traced(other), wrapped(other), atol=1e-5, rtol=1e-4)
    except Exception as exc:  # an operator the tracer cannot record
        return f"torchscript left out: the network does not trace ({type(exc).__name__})"
    if not ok:
        return ("torchscript left out: the traced graph depends on the image size "
                "(it would be wrong for other sizes)")
    from napari_resolve.interop.torchscript import EXTRA_FILE

    net = wrapped.net
    declared = {"scale": int(net.scale), "in_channels": int(net.in_channels),
                "size_multiple": int(getattr(net, "size_multiple", 1) or 1)}
    torch.jit.save(traced, str(path), _extra_files={EXTRA_FILE: json.dumps(declared)})
    return None


class _quiet:
    """Silence the tracer's warnings (they are checked by running a second size instead)."""

    def __enter__(self):
        import warnings

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("ignore")

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)


def _onnx_exporter():
    """napari_resolve.runtime.onnx.export_onnx when it exists (issue 17), else None."""
    try:
        from napari_resolve.runtime.onnx import export_onnx
    except ImportError:
        return None
    return export_onnx


def _check_out(out: Path, overwrite: bool) -> bool:
    """True for a .zip package, False for a folder; refuses an existing output."""
    if out.suffix.lower() not in ("", ".zip"):
        raise InputError(f"output {out.name}: give a folder or a .zip file for the package")
    if out.exists() and not overwrite:
        raise InputError(f"output {out} exists; use --overwrite or another name")
    return out.suffix.lower() == ".zip"


def export_bioimageio_iter(model_src, out, *, weight_formats=("pytorch_state_dict", "torchscript"),
                           overwrite=False, test=True, name=None):
    """Generator form of :func:`export_bioimageio`: yields Progress, returns ExportResult."""
    from napari_resolve import bundle
    from napari_resolve.interop._vendor import CALLABLE, SROutput, architecture_source
    from napari_resolve.predict import Progress, resolve_model

    _require_bioimageio()
    formats = [f for f in WEIGHT_FORMATS if f in set(weight_formats)]
    unknown = sorted(set(weight_formats) - set(WEIGHT_FORMATS))
    if unknown or "pytorch_state_dict" not in formats:
        raise InputError(
            f"weight formats: pytorch_state_dict plus any of torchscript, onnx (got "
            f"{', '.join(weight_formats)})"
        )
    out = Path(out).expanduser()
    as_zip = _check_out(out, overwrite)
    model, meta = resolve_model(model_src)
    if not getattr(model, "arch", ""):
        raise BundleError("only napari-resolve models (a bundle or a registry model) can be exported")
    meta = {**bundle.default_meta(model), **meta}
    name = name or _bundle_name(model_src, meta)
    model = model.cpu().eval()
    wrapped = SROutput(model).eval()
    total = 3 + len(formats) + int(test)
    done = 0
    yield Progress(done, total, "test data")

    from bioimageio.spec.model import v0_5 as v

    geometry = _geometry(model)
    in_ch, s = int(model.in_channels), int(model.scale)
    lr, data_source = _test_image(meta, in_ch, geometry["test"])
    x = np.ascontiguousarray(np.moveaxis(lr, -1, 0)[None])  # (1, C, y, x)
    y = _run_network(wrapped, x, meta)
    vr = _value_range(meta)
    notes: list[str] = []
    work = Path(tempfile.mkdtemp(prefix="napari-resolve-bmz-"))
    try:
        np.save(work / "test_input.npy", x)
        np.save(work / "test_output.npy", y)
        _cover(x, y, work / "cover.png", vr)
        (work / "napari_resolve_arch.py").write_text(architecture_source(), encoding="utf-8")
        state = {STATE_PREFIX + k: t for k, t in bundle._tensors_for_file(model).items()}
        torch.save(state, work / "weights.pt")
        done += 1
        yield Progress(done, total, "weights")

        torch_version = v.Version(torch.__version__.split("+")[0])
        weights = {"pytorch_state_dict": v.PytorchStateDictWeightsDescr(
            source=work / "weights.pt",
            architecture=v.ArchitectureFromFileDescr(
                source=work / "napari_resolve_arch.py", callable=CALLABLE,
                kwargs={"architecture": meta["architecture"], "config": meta["config"]},
            ),
            pytorch_version=torch_version,
            comment="napari-resolve bundle weights; the network's keys with a 'net.' prefix",
        )}
        if "torchscript" in formats:
            note = _torchscript(wrapped, torch.from_numpy(x), geometry["step"],
                                work / "weights.torchscript.pt")
            if note:
                notes.append(note)
            else:
                weights["torchscript"] = v.TorchscriptWeightsDescr(
                    source=work / "weights.torchscript.pt", pytorch_version=torch_version,
                    parent="pytorch_state_dict", comment="torch.jit.trace, checked at two sizes")
            done += 1
            yield Progress(done, total, "torchscript")
        if "onnx" in formats:
            exporter = _onnx_exporter()
            if exporter is None:
                notes.append("onnx left out: this napari-resolve has no ONNX exporter "
                             "(napari_resolve.runtime.export_onnx)")
            else:
                try:
                    exporter((model, meta), work / "weights.onnx")
                except Exception as exc:  # an operator ONNX cannot express (FFT)
                    notes.append(f"onnx left out: {' '.join(str(exc).split())[:160]}")
                else:
                    import onnx

                    proto = onnx.load(str(work / "weights.onnx"))
                    opset = max(o.version for o in proto.opset_import
                                if o.domain in ("", "ai.onnx"))
                    if len(proto.graph.output) != 1:  # gp's parsing logits: not in the package
                        notes.append("onnx left out: the graph has more outputs than the SR image")
                    else:
                        weights["onnx"] = v.OnnxWeightsDescr(
                            source=work / "weights.onnx", opset_version=opset,
                            parent="pytorch_state_dict")
            done += 1
            yield Progress(done, total, "onnx")

        licence, data_keys = _licence_and_data(meta)
        px = _pixel_size_um(meta)
        # axis scales 1 and 1/s (exact in binary for s = 2, 4, 8): physical ones such as
        # 1.172 / 4 make bioimageio's size rule miss by rounding (456.00000000000006 != 456);
        # the pixel size goes under config instead
        unit, in_scale = None, 1.0
        channels = _channel_names(meta, in_ch)
        space_in = [v.SpaceInputAxis(id=v.AxisId(a), unit=unit, scale=in_scale,
                                     size=v.ParameterizedSize(min=geometry["min"],
                                                              step=geometry["step"]))
                    for a in ("y", "x")]
        space_out = [v.SpaceOutputAxisWithHalo(
            id=v.AxisId(a), unit=unit, scale=in_scale / s, halo=geometry["halo"],
            size=v.SizeReference(tensor_id=v.TensorId("input"), axis_id=v.AxisId(a)))
            for a in ("y", "x")]
        if vr is None:
            norm = meta["normalization"]
            pre = [v.ScaleRangeDescr(kwargs=v.ScaleRangeKwargs(
                axes=[v.AxisId("channel"), v.AxisId("y"), v.AxisId("x")],
                min_percentile=float(norm.get("low", 1.0)),
                max_percentile=float(norm.get("high", 99.8))))]
            post = []
            out_range = "normalised: input percentiles low -> 0, high -> 1"
        else:
            pre = [v.ScaleLinearDescr(kwargs=v.ScaleLinearKwargs(gain=1.0 / vr))]
            post = [v.ScaleLinearDescr(kwargs=v.ScaleLinearKwargs(gain=vr))]
            out_range = f"0-{vr:g}, as the input"
        channel_text = {"y": "Y (luma) of MATLAB rgb2ycbcr, 0-255", "grey": "grey"}.get(
            channels[0], "RGB, 0-255") if vr else "grey, any range (percentile-normalised)"
        inputs = [v.InputTensorDescr(
            id=v.TensorId("input"), description=f"LR image: {channel_text}"[:128],
            axes=[v.BatchAxis(), v.ChannelAxis(channel_names=[v.Identifier(c) for c in channels]),
                  *space_in],
            test_tensor=v.FileDescr(source=work / "test_input.npy"),
            preprocessing=pre)]
        outputs = [v.OutputTensorDescr(
            id=v.TensorId("output"), description=f"SR image x{s}: {out_range}"[:128],
            axes=[v.BatchAxis(), v.ChannelAxis(channel_names=[v.Identifier(c) for c in channels]),
                  *space_out],
            test_tensor=v.FileDescr(source=work / "test_output.npy"),
            postprocessing=post)]
        readme = _readme(name, meta, geometry, notes, licence)
        (work / "README.md").write_text(readme, encoding="utf-8")
        domain = meta.get("domain") or {}
        config = {CONFIG_KEY: {
            "bundle": meta,
            "pixel_size": {"input": px, "output": px / s if px else None, "unit": "micrometer"},
            "value_range": vr,
            "halo_lr": geometry["overlap"],
            "test_data": data_source,
        }}
        descr = v.ModelDescr(
            name=f"napari-resolve {name}",
            description=(domain.get("summary") or
                         f"{meta['architecture']} super-resolution x{s} ({meta.get('paper', '')})"
                         )[:1024],
            authors=[v.Author(name="napari-resolve developers")],
            cite=_citations(meta, data_keys),
            license=v.LicenseId(licence),
            documentation=v.FileDescr(source=work / "README.md"),
            covers=[v.FileDescr(source=work / "cover.png")],
            tags=["super-resolution", "napari-resolve", str(meta["architecture"]),
                  str(domain.get("modality") or ("fluorescence" if vr is None else "brightfield"))],
            inputs=inputs,
            outputs=outputs,
            weights=v.WeightsDescr(**weights),
            config=config,
        )
        done += 1
        yield Progress(done, total, "package")
        from bioimageio.spec import save_bioimageio_package, save_bioimageio_package_as_folder

        from napari_resolve._atomic import atomic_path

        with atomic_path(out) as tmp:
            if as_zip:
                save_bioimageio_package(descr, output_path=tmp)
            else:
                save_bioimageio_package_as_folder(descr, output_path=tmp)
            summary = {}
            if test:
                yield Progress(done, total, "bioimageio.core test")
                summary = _test_package(tmp, formats=list(weights))
        yield Progress(total, total, "done")
        return ExportResult(out, list(weights), notes, summary)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _test_package(path: Path, formats) -> dict:
    """bioimageio.core's test of the package; a failure raises BundleError with its reason."""
    from bioimageio.core import test_description

    results = {}
    for fmt in formats:
        summary = test_description(path, weight_format=fmt, devices=["cpu"])
        results[fmt] = summary.status
        if summary.status != "passed":
            failed = [d for d in summary.details if d.status == "failed"]
            why = "; ".join(f"{d.name}: {(d.errors[0].msg if d.errors else '')}" for d in failed)
            raise BundleError(f"the package failed bioimageio.core's test ({fmt}): {why}"[:400])
    return results


def export_bioimageio(model_src, out, *, progress=None, **kwargs) -> ExportResult:
    """Write a BioImage Model Zoo package (``.zip`` or a folder) of ``model_src``.

    ``model_src``: a pretrained name, a ``.safetensors`` bundle or ``(model, meta)``.
    ``weight_formats``: ``pytorch_state_dict`` (always) plus ``torchscript`` (default)
    and/or ``onnx``. ``test=True`` runs bioimageio.core's test on the written package
    (before it is renamed into place) and refuses to keep a failing package.
    """
    return run_to_end(export_bioimageio_iter(model_src, out, **kwargs), progress)


# ----------------------------------------------------------------------------- load


def rdf_path(path) -> Path | None:
    """The ``rdf.yaml`` / ``bioimageio.yaml`` of a package folder (or the file itself)."""
    p = Path(path)
    if p.is_file() and p.name in RDF_NAMES:
        return p
    if p.is_dir():
        for n in RDF_NAMES:
            if (p / n).is_file():
                return p / n
    return None


def is_bioimageio(path) -> bool:
    """True for a package folder, its rdf file, or a zip that holds an rdf at its root."""
    p = Path(path)
    if rdf_path(p) is not None:
        return True
    if p.is_file() and zipfile.is_zipfile(p):
        try:
            with zipfile.ZipFile(p) as zf:
                return any(n in RDF_NAMES for n in zf.namelist())
        except (zipfile.BadZipFile, OSError):
            return False
    return False


def _load_descr(path: Path):
    from bioimageio.spec import InvalidDescr, load_model_description

    src = rdf_path(path) or path
    try:
        descr = load_model_description(src, perform_io_checks=False)
    except Exception as exc:
        raise BundleError(f"{path.name}: not a readable bioimage.io model: "
                          f"{' '.join(str(exc).split())[:160]}") from None
    if isinstance(descr, InvalidDescr):
        raise BundleError(f"{path.name}: invalid bioimage.io model description")
    if not str(descr.format_version).startswith("0.5"):
        raise BundleError(f"{path.name}: bioimage.io format {descr.format_version}; "
                          "napari-resolve reads format 0.5 packages")
    return descr


def _read_bytes(file_descr) -> bytes:
    from bioimageio.spec._internal.io import get_reader

    return get_reader(file_descr.source, sha256=file_descr.sha256).read()


def load_bioimageio(path):
    """``(model, meta)`` from a BioImage Model Zoo package (see the module docstring)."""
    import io

    from napari_resolve import bundle, models
    from napari_resolve.errors import ResolveError

    _require_bioimageio()
    path = Path(path)
    descr = _load_descr(path)
    ours = (descr.config.model_extra or {}).get(CONFIG_KEY) if descr.config else None
    w = descr.weights
    if ours and w.pytorch_state_dict is not None:
        meta = dict(ours.get("bundle") or {})
        try:
            model = models.build(str(meta["architecture"]), **(meta.get("config") or {}))
        except (KeyError, ResolveError) as exc:
            raise BundleError(f"{path.name}: cannot rebuild the model: {exc}") from None
        raw = _read_bytes(w.pytorch_state_dict)
        try:  # never unpickle: tensors and plain containers only
            state = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
        except Exception as exc:
            raise BundleError(f"{path.name}: its pytorch_state_dict is not a plain state dict "
                              f"(refused, never unpickled): {type(exc).__name__}") from None
        if not isinstance(state, dict) or not all(
                isinstance(k, str) and k.startswith(STATE_PREFIX) for k in state):
            raise BundleError(f"{path.name}: its state dict is not a napari-resolve network's")
        state = {k[len(STATE_PREFIX):]: t for k, t in state.items()}
        bundle._compare(model, state, path.name)
        model.load_state_dict(state, strict=True)
        meta["source"] = {"format": "bioimageio", "path": str(path), "name": descr.name}
        return model.eval(), meta
    if w.torchscript is not None:
        from napari_resolve.interop.torchscript import from_bioimageio

        return from_bioimageio(descr, _read_bytes(w.torchscript), path)
    present = [f for f in ("pytorch_state_dict", "torchscript", "onnx", "tensorflow_saved_model_bundle",
                           "keras_hdf5") if getattr(w, f, None) is not None]
    raise BundleError(
        f"{path.name}: napari-resolve runs bioimage.io packages with torchscript weights or "
        f"pytorch_state_dict weights of its own networks; this one has {', '.join(present)}"
    )
