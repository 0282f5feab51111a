"""The model file ("bundle"): one ``.safetensors`` file, weights plus JSON metadata.

A bundle is everything needed to run a model on a new image: the weights, the
registry name and full config to rebuild the network (:func:`models.build`),
and what the predictor must know about the data (scale, channels, colour mode,
intensity normalisation, label names, the degradation used in training, the
input pixel size). See ``docs/architecture.md`` ("Bundle") for the keys.

The metadata is one JSON string under the key ``"napari_resolve"`` in the
safetensors header, so :func:`read_meta` reads it without touching the
weights. Safetensors holds only tensors and strings: nothing in a bundle can
execute code when read. Pickle-based checkpoints (``.pt``, ``.pth``,
``.ckpt``, ``.pkl`` or any file that starts like a pickle or zip archive) are
refused before they are opened and are never passed to ``torch.load``.

>>> from napari_resolve import bundle, models
>>> path = bundle.save("srcnn.safetensors", models.build("srcnn", scale=4))
>>> model, meta = bundle.load(path)
"""

from __future__ import annotations

import datetime as _dt
import json
import struct
from pathlib import Path

from napari_resolve._atomic import atomic_path
from napari_resolve.errors import BundleError, ResolveError

__all__ = [
    "META_KEY",
    "SUFFIX",
    "PICKLE_SUFFIXES",
    "save",
    "load",
    "load_state",
    "read_meta",
    "default_meta",
    "pretrained",
    "pretrained_dir",
    "resolve",
]

META_KEY = "napari_resolve"
SUFFIX = ".safetensors"
PICKLE_SUFFIXES = frozenset({".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".bin", ".tar", ".zip"})
#: short names of families with several bundled variants that still name one
#: (the fluorescence fine-tuning default, ×2, since mhtcun-lite-x4 is bundled too)
DEFAULT_VARIANT = {"mhtcun-lite": "mhtcun-lite-x2"}
LABEL_NAMES = {"0": "background", "1": "cytoplasm", "2": "nucleus"}
# Keys that describe the network itself: they always come from the model.
_MODEL_KEYS = ("architecture", "config", "scale", "in_channels")
# A safetensors header larger than this is not a model file (real ones are kB).
_MAX_HEADER = 100 * 1024 * 1024


def pretrained_dir() -> Path:
    """Folder of the bundles shipped with the package (``napari_resolve/pretrained``)."""
    return Path(__file__).resolve().parent / "pretrained"


# ----------------------------------------------------------------------------- metadata


def _version() -> str:
    from napari_resolve import __version__

    return __version__


def _jsonable(value, where: str):
    """Convert tuples/numpy scalars to JSON types; refuse anything else by name."""
    try:
        return json.loads(json.dumps(value, default=_json_default))
    except (TypeError, ValueError) as exc:
        raise BundleError(f"metadata {where} is not JSON-serialisable: {exc}") from None


def _json_default(obj):
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} {obj!r}")


def default_meta(model) -> dict:
    """Metadata for ``model`` with the defaults a bundle needs.

    Choices made here (the papers do not fix a file format): ``color_mode`` is
    ``"grey"`` for single-channel and ``"rgb"`` for three-channel models (a
    model may override it with a ``color_mode`` attribute, e.g. ``"y"`` for
    paper 000's Y-channel networks); intensities are normalised by dtype;
    ``degradation`` is MATLAB bicubic at the model's scale, as in papers 000
    §3.1 and 004 §4.
    """
    arch = getattr(model, "arch", "") or ""
    scale = int(getattr(model, "scale", 1))
    in_channels = int(getattr(model, "in_channels", 1))
    color_mode = getattr(model, "color_mode", None) or ("rgb" if in_channels == 3 else "grey")
    paper = getattr(model, "paper", "") or ""
    if arch and not paper:
        try:
            from napari_resolve import models

            paper = models.info(arch).paper
        except ResolveError:
            paper = ""
    return {
        "architecture": arch,
        "config": _jsonable(dict(getattr(model, "config", {}) or {}), "'config'"),
        "scale": scale,
        "in_channels": in_channels,
        "color_mode": color_mode,
        "input_mode": "bicubic-inside" if getattr(model, "upsamples_input", False) else "lr",
        "normalization": {"mode": "dtype"},
        "labels": dict(LABEL_NAMES) if getattr(model, "predicts_parsing", False) else None,
        "degradation": {"kind": "matlab-bicubic", "scale": scale},
        "pixel_size": None,
        "training": None,
        "metrics": {},
        "parent": None,
        "version": _version(),
        "paper": paper,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def _merge_meta(model, meta: dict | None) -> dict:
    full = default_meta(model)
    if not full["architecture"]:
        raise BundleError(
            f"{type(model).__name__} has no registry name; build it with "
            "napari_resolve.models.build() so that the bundle can rebuild it"
        )
    for key, value in (meta or {}).items():
        if key in _MODEL_KEYS and value is not None:
            theirs = _jsonable(value, repr(key))
            if key == "config" and isinstance(theirs, dict):  # options added since: defaults
                from napari_resolve.models import full_config

                theirs = _jsonable(full_config(full["architecture"], **theirs), repr(key))
            if theirs != full[key]:
                raise BundleError(
                    f"metadata {key!r} = {theirs!r} disagrees with the model ({full[key]!r})"
                )
            continue
        full[key] = _jsonable(value, repr(key))
    full["version"] = _version()
    return full


# ----------------------------------------------------------------------------- file checks


def _is_pickle_or_zip(head: bytes) -> bool:
    # torch.save writes a zip archive (PK..); older torch and pickle.dump start
    # with the PROTO opcode 0x80 followed by the protocol number (2..5).
    return head.startswith(b"PK\x03\x04") or (
        len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5
    )


def _check_file(path: Path) -> None:
    """Refuse unsafe or malformed files before safetensors parses them."""
    name = path.name
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise BundleError(
            f"{name} is a pickle-based checkpoint ({path.suffix}); napari-resolve reads only "
            ".safetensors model files and never unpickles files"
        )
    if not path.exists():
        raise BundleError(f"model file not found: {path}")
    if not path.is_file():
        raise BundleError(f"model file {path} is not a file")
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        if _is_pickle_or_zip(head):
            raise BundleError(
                f"{name} is a pickle/zip (torch.save) file renamed; napari-resolve reads only "
                "safetensors and never unpickles files"
            )
        if len(head) < 8:
            raise BundleError(f"{name} is not a safetensors file (only {size} bytes)")
        (n,) = struct.unpack("<Q", head)
        if n < 2 or n > _MAX_HEADER or 8 + n > size:
            raise BundleError(
                f"{name} is not a safetensors file or is truncated (bad header length)"
            )
        first = fh.read(1)
        if first != b"{":
            raise BundleError(f"{name} is not a safetensors file (header is not JSON)")


def _raw_metadata(path: Path) -> dict:
    from safetensors import safe_open

    _check_file(path)
    try:
        # "numpy": the metadata is the same, and listing models does not import torch
        with safe_open(str(path), framework="numpy") as fh:
            return dict(fh.metadata() or {})
    except Exception as exc:  # SafetensorError and friends: corrupt/truncated file
        raise BundleError(
            f"{path.name} is not a readable safetensors file: {_one_line(exc)}"
        ) from None


def _one_line(exc) -> str:
    return " ".join(str(exc).split())[:200] or type(exc).__name__


def read_meta(src) -> dict:
    """The bundle metadata of a file or pretrained name, without loading the weights."""
    path = resolve(src)
    raw = _raw_metadata(path)
    if META_KEY not in raw:
        raise BundleError(
            f"{path.name} has no napari-resolve metadata (not a napari-resolve model file)"
        )
    try:
        meta = json.loads(raw[META_KEY])
    except (json.JSONDecodeError, RecursionError) as exc:
        raise BundleError(f"{path.name} has corrupt napari-resolve metadata: "
                          f"{_one_line(exc)}") from None
    if not isinstance(meta, dict):
        raise BundleError(f"{path.name} has corrupt napari-resolve metadata (not a JSON object)")
    for key in ("architecture", "scale"):
        if key not in meta:
            raise BundleError(f"{path.name} metadata lacks {key!r}")
    meta.setdefault("config", {})
    validate_meta(meta, path.name)
    return meta


#: largest integer a model config may hold (channels, blocks...); real ones are < 1000
MAX_CONFIG_INT = 65536
#: colour modes a bundle may declare
COLOR_MODES = ("grey", "rgb", "y")


def _check_config_value(value, where: str, name: str, depth: int = 0) -> None:
    if depth > 4:
        raise BundleError(f"{name}: metadata {where} is nested too deeply")
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return
    if isinstance(value, int):
        if value < 0 or value > MAX_CONFIG_INT:
            raise BundleError(f"{name}: metadata {where} = {value} is out of range "
                              f"(0..{MAX_CONFIG_INT}); the file is damaged or not a real model")
        return
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise BundleError(f"{name}: metadata {where} is not a finite number")
        return
    if isinstance(value, list):
        if len(value) > 64:
            raise BundleError(f"{name}: metadata {where} has {len(value)} entries (at most 64)")
        for i, v in enumerate(value):
            _check_config_value(v, f"{where}[{i}]", name, depth + 1)
        return
    if isinstance(value, dict):
        for k, v in value.items():
            _check_config_value(v, f"{where}.{k}", name, depth + 1)
        return
    raise BundleError(f"{name}: metadata {where} has an unexpected type")


def validate_meta(meta: dict, name: str = "model file") -> dict:
    """Check the keys the loader acts on; one :class:`BundleError` line per problem.

    ``scale`` an integer 1..16, ``in_channels`` 1..4, ``architecture`` a
    string, ``config`` an object of numbers / strings / short lists (integers
    0..:data:`MAX_CONFIG_INT`), ``color_mode`` one of :data:`COLOR_MODES`,
    ``normalization`` one :class:`~napari_resolve.data.normalize.Normalizer`
    accepts. Returns ``meta``.
    """
    if not isinstance(meta.get("architecture"), str) or not meta["architecture"]:
        raise BundleError(f"{name}: metadata 'architecture' must be a registry name")
    for key, lo, hi in (("scale", 1, 16), ("in_channels", 1, 4)):
        if key not in meta or (key == "in_channels" and meta[key] is None):
            continue
        value = meta[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value \
                or not lo <= int(value) <= hi:
            raise BundleError(f"{name}: metadata {key!r} = {value!r} must be an integer "
                              f"{lo}..{hi}")
        meta[key] = int(value)
    config = meta.get("config")
    if not isinstance(config, dict):
        raise BundleError(f"{name}: metadata 'config' is not a JSON object")
    for key, value in config.items():
        _check_config_value(value, f"config.{key}", name)
    cm = meta.get("color_mode")
    if cm is not None and cm not in COLOR_MODES:
        raise BundleError(f"{name}: metadata color_mode {cm!r} is not one of "
                          f"{', '.join(COLOR_MODES)}")
    if meta.get("normalization") is not None:
        from napari_resolve.data.normalize import Normalizer

        try:
            Normalizer.from_meta(meta["normalization"])
        except ResolveError as exc:
            raise BundleError(f"{name}: metadata normalization: {exc}") from None
    return meta


def header_shapes(path) -> dict[str, tuple]:
    """Tensor name -> shape, read from the safetensors header alone (no tensor is loaded)."""
    path = Path(path)
    _check_file(path)
    with open(path, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        head = fh.read(n)
    try:
        header = json.loads(head)
    except (ValueError, RecursionError) as exc:
        raise BundleError(f"{path.name}: unreadable safetensors header: {_one_line(exc)}") from None
    if not isinstance(header, dict):
        raise BundleError(f"{path.name}: unreadable safetensors header (not a JSON object)")
    out = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        shape = info.get("shape") if isinstance(info, dict) else None
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise BundleError(f"{path.name}: tensor {key!r} has no valid shape in the header")
        out[key] = tuple(shape)
    return out


def build_checked(path: Path, arch: str, config: dict, prefix: str = ""):
    """Build ``arch`` only after its tensor shapes match the file's header.

    ``prefix``: compare only the header's tensors under it (``"model/"`` in a
    training state, :func:`napari_resolve.train.checkpoint.build_model`).

    The network is first built on torch's ``meta`` device (no memory), its
    parameter shapes compared with the header; only a model that fits the
    file is then built for real, so memory is bounded by the file's own size
    (a 500 kB file claiming ``features=20000`` would otherwise ask for 14 GB).
    """
    import torch

    from napari_resolve import models

    try:
        with torch.device("meta"):
            skeleton = models.build(arch, **config)
    except ResolveError as exc:
        raise BundleError(f"{path.name}: cannot rebuild the model: {exc}") from None
    except (TypeError, ValueError, RuntimeError, AttributeError, IndexError) as exc:
        raise BundleError(f"{path.name}: metadata config does not build {arch!r}: "
                          f"{_one_line(exc)}") from None
    shapes = {k[len(prefix):]: v for k, v in header_shapes(path).items() if k.startswith(prefix)}
    expected = {k: tuple(v.shape) for k, v in skeleton.state_dict().items() if torch.is_tensor(v)}
    _compare_shapes(expected, shapes, path.name, getattr(skeleton, "arch", arch))
    del skeleton
    try:
        return models.build(arch, **config)
    except ResolveError as exc:
        raise BundleError(f"{path.name}: cannot rebuild the model: {exc}") from None


# ----------------------------------------------------------------------------- catalogue


def pretrained() -> list[dict]:
    """The bundles shipped with the package: ``name``, ``path`` and a one-line ``summary``."""
    out = []
    folder = pretrained_dir()
    if not folder.is_dir():
        return out
    for path in sorted(folder.glob(f"*{SUFFIX}")):
        if path.name.endswith(f".state{SUFFIX}"):
            continue  # a training run's resume state, not a model
        try:
            meta = read_meta(path)
        except BundleError as exc:
            summary = f"unreadable: {exc}"
        else:
            summary = _summary(meta)
        out.append({"name": path.stem, "path": path, "summary": summary})
    return out


def _summary(meta: dict) -> str:
    parts = [f"{meta.get('architecture')} x{meta.get('scale')}", str(meta.get("color_mode") or "")]
    training = meta.get("training") or {}
    if isinstance(training, dict) and training.get("data"):
        parts.append(f"trained on {training['data']}")
    metrics = meta.get("metrics") or {}
    if isinstance(metrics, dict):
        shown = [f"{k} {v:.4g}" for k, v in metrics.items() if isinstance(v, (int, float))][:3]
        parts.extend(shown)
    if meta.get("paper"):
        parts.append(str(meta["paper"]))
    return "; ".join(p for p in parts if p)


def resolve(src) -> Path:
    """Path of a bundle given as a file path or a pretrained name."""
    if isinstance(src, (str, Path)):
        path = Path(src).expanduser()
        if path.exists() or path.suffix.lower() in PICKLE_SUFFIXES:
            return path
        if isinstance(src, str) and "/" not in src and "\\" not in src:
            cand = pretrained_dir() / f"{src}{SUFFIX}"
            if cand.is_file():
                return cand
            names = ", ".join(p["name"] for p in pretrained()) or "none installed"
            # a name without its variant suffix ("mhtcun-lite" for "mhtcun-lite-x2"): the one
            # bundled model whose name starts with it (resume states are not models)
            prefixed = [
                p for p in sorted(pretrained_dir().glob(f"*{SUFFIX}"))
                if p.stem.startswith(f"{src}-") and not p.name.endswith(f".state{SUFFIX}")
            ] if pretrained_dir().is_dir() and path.suffix.lower() != SUFFIX else []
            if len(prefixed) == 1:
                return prefixed[0]
            default = pretrained_dir() / f"{DEFAULT_VARIANT.get(src, '')}{SUFFIX}"
            if len(prefixed) > 1 and default in prefixed:
                return default
            if len(prefixed) > 1:
                raise BundleError(
                    f"pretrained name {src!r} is ambiguous: "
                    f"{', '.join(p.stem for p in prefixed)}; give the full name"
                )
            if path.suffix.lower() != SUFFIX:
                raise BundleError(
                    f"no model file or pretrained bundle named {src!r} (pretrained: {names})"
                )
        raise BundleError(f"model file not found: {path}")
    raise BundleError(f"expected a model file path or pretrained name, got {type(src).__name__}")


# ----------------------------------------------------------------------------- save / load


def _tensors_for_file(model) -> dict[str, torch.Tensor]:
    """A state dict safetensors accepts: own contiguous CPU storage per tensor.

    safetensors refuses tensors that share memory (tied weights, views); each
    tensor is cloned, so tied weights are stored twice and tied again by
    ``load_state_dict`` (both keys load the same values).
    """
    import torch  # here, not at the top: listing and reading metadata need no torch (issue 18)

    out = {}
    for key, value in model.state_dict().items():
        if torch.is_tensor(value):
            out[key] = value.detach().to("cpu").contiguous().clone()
    return out


def save(path, model, meta: dict | None = None) -> Path:
    """Write ``model`` and its metadata to ONE ``.safetensors`` file, atomically.

    ``meta`` overrides :func:`default_meta` (training data, metrics,
    normalisation, pixel size, parent...); the keys that describe the network
    (``architecture``, ``config``, ``scale``, ``in_channels``) always come from
    the model and a disagreeing value is an error. Returns the path written.
    """
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix.lower() != SUFFIX:
        raise BundleError(f"model files must end in {SUFFIX}, got {path.name}")
    full = _merge_meta(model, meta)
    tensors = _tensors_for_file(model)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={META_KEY: json.dumps(full, sort_keys=True)})
    return path


def _compare(model, state: dict, name: str) -> None:
    import torch
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items() if torch.is_tensor(v)}
    got = {k: tuple(v.shape) for k, v in state.items()}
    _compare_shapes(expected, got, name, getattr(model, "arch", "") or type(model).__name__)


def _compare_shapes(expected: dict, state: dict, name: str, arch: str) -> None:
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [
        f"{k} {state[k]} vs {expected[k]}"
        for k in sorted(set(state) & set(expected))
        if tuple(state[k]) != tuple(expected[k])
    ]
    if not (missing or unexpected or mismatched):
        return
    parts = []
    for label, items in (
        ("missing", missing),
        ("unexpected", unexpected),
        ("shape mismatch (file vs model)", mismatched),
    ):
        if items:
            shown = ", ".join(items[:5]) + (f" (+{len(items) - 5} more)" if len(items) > 5 else "")
            parts.append(f"{len(items)} {label}: {shown}")
    raise BundleError(f"{name} does not fit architecture {arch!r}: " + "; ".join(parts))


def _read_tensors(path: Path) -> dict:
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:
        raise BundleError(
            f"{path.name} is not a readable safetensors file: {_one_line(exc)}"
        ) from None


def load_state(model, src) -> dict:
    """Load the weights of bundle ``src`` into an existing ``model`` (strict); return its meta.

    For resuming or fine-tuning: the caller built the model; the file must
    match it key for key and shape for shape.
    """
    import torch

    path = resolve(src)
    meta = read_meta(path)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items() if torch.is_tensor(v)}
    _compare_shapes(expected, header_shapes(path), path.name,
                    getattr(model, "arch", "") or type(model).__name__)
    state = _read_tensors(path)
    _compare(model, state, path.name)
    model.load_state_dict(state, strict=True)
    return meta


def load(src):
    """Rebuild the model of bundle ``src`` (path or pretrained name); return ``(model, meta)``.

    The network is rebuilt with ``models.build(meta["architecture"],
    **meta["config"])`` and the weights are loaded strictly; missing,
    unexpected or shape-mismatched tensors are listed in one
    :class:`~napari_resolve.errors.BundleError`. The model is returned in
    ``eval()`` mode on the CPU.

    A BioImage Model Zoo package (``.zip``, folder or its ``rdf.yaml``) or a
    TorchScript file with a declared scale is handed to
    :mod:`napari_resolve.interop` (never unpickled; see there).
    """
    from napari_resolve import interop

    imported = interop.load(src)
    if imported is not None:
        return imported
    path = resolve(src)
    meta = read_meta(path)
    config = meta.get("config") or {}
    if not isinstance(config, dict):
        raise BundleError(f"{path.name} metadata 'config' is not a JSON object")
    model = build_checked(path, str(meta["architecture"]), config)
    state = _read_tensors(path)
    _compare(model, state, path.name)
    model.load_state_dict(state, strict=True)
    if int(meta["scale"]) != model.scale:
        raise BundleError(
            f"{path.name}: metadata scale {meta['scale']} but the model is x{model.scale}"
        )
    model.eval()
    return model, meta
