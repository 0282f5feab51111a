"""Resume checkpoints: model, discriminators, optimisers and position, in safetensors.

Beside the best bundle ``model.safetensors`` the engine keeps
``model.state.safetensors``: the *latest* weights (not the best), every
optimiser's state tensors flattened to ``opt/<name>/<param>/<key>``, the
discriminators' weights, the torch RNG state (a uint8 tensor), and one JSON
string (key ``napari_resolve_state``) with the rest: architecture and config,
recipe, phase, epoch, batch within the epoch, step, history, best metrics,
optimiser hyper-parameters. No pickle is involved (never ``torch.save``), so
a checkpoint from elsewhere is as safe to open as a bundle. Written through
:func:`napari_resolve._atomic.atomic_path`. :func:`_source_spec` records data given
as paths, so that ``--resume`` alone finds it again.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from napari_resolve._atomic import atomic_path
from napari_resolve.errors import BundleError

__all__ = ["STATE_KEY", "state_path", "save_state", "load_state", "read_state_meta",
           "final_model"]

STATE_KEY = "napari_resolve_state"


def state_path(output) -> Path:
    """``model.safetensors`` -> ``model.state.safetensors`` (a state path is returned as is)."""
    output = Path(output)
    if output.name.endswith(".state.safetensors"):
        return output
    return output.with_name(f"{output.stem}.state.safetensors")


def _flatten_optimizer(name: str, opt: torch.optim.Optimizer, tensors: dict) -> dict:
    sd = opt.state_dict()
    scalars = {}
    for pid, st in sd["state"].items():
        for key, value in st.items():
            if torch.is_tensor(value):
                tensors[f"opt/{name}/{pid}/{key}"] = value.detach().to("cpu").contiguous().clone()
            else:
                scalars[f"{pid}/{key}"] = value
    groups = [
        {k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()}
        for g in sd["param_groups"]
    ]
    return {"param_groups": groups, "scalars": scalars}


def _unflatten_optimizer(name: str, info: dict, tensors: dict) -> dict:
    state: dict = {}
    prefix = f"opt/{name}/"
    for key, value in tensors.items():
        if key.startswith(prefix):
            pid, skey = key[len(prefix) :].split("/", 1)
            state.setdefault(int(pid), {})[skey] = value
    for key, value in (info.get("scalars") or {}).items():
        pid, skey = key.split("/", 1)
        state.setdefault(int(pid), {})[skey] = value
    groups = []
    for g in info["param_groups"]:
        g = dict(g)
        if isinstance(g.get("betas"), list):
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    return {"state": state, "param_groups": groups}


def save_state(path, *, model, optimizers: dict, discriminators: dict, meta: dict) -> Path:
    """Write a resume checkpoint (atomic). ``meta`` must be JSON-able."""
    from safetensors.torch import save_file

    path = state_path(path)
    tensors: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        tensors[f"model/{key}"] = value.detach().to("cpu").contiguous().clone()
    for dname, disc in discriminators.items():
        for key, value in disc.state_dict().items():
            tensors[f"disc/{dname}/{key}"] = value.detach().to("cpu").contiguous().clone()
    opt_info = {name: _flatten_optimizer(name, opt, tensors) for name, opt in optimizers.items()}
    tensors["rng/torch"] = torch.get_rng_state().clone()
    full = dict(meta)
    full["optimizers"] = opt_info
    full["discriminators"] = sorted(discriminators)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={STATE_KEY: json.dumps(full)})
    return path


def read_state_meta(path) -> dict:
    """The JSON part of a resume checkpoint."""
    from safetensors import safe_open

    path = state_path(path)
    if not path.is_file():
        raise BundleError(f"resume checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            raw = (fh.metadata() or {}).get(STATE_KEY)
    except Exception as exc:
        raise BundleError(
            f"{path.name} is not a readable checkpoint: {' '.join(str(exc).split())[:150]}"
        ) from None
    if raw is None:
        raise BundleError(f"{path.name} is not a napari-resolve training checkpoint")
    try:
        meta = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise BundleError(f"{path.name} has a corrupt training state "
                          f"({' '.join(str(exc).split())[:120]}); start a new run") from None
    return validate_state_meta(meta, path.name)


#: the keys a resume acts on, with their types
_STATE_KEYS = {
    "architecture": str, "config": dict, "step": int, "epoch": int, "phase_index": int,
    "epoch_in_phase": int, "batch_in_epoch": int, "optimizers": dict,
}


def validate_state_meta(meta, name: str = "checkpoint") -> dict:
    """One :class:`BundleError` line when a resume state lacks a key or has a wrong type."""
    if not isinstance(meta, dict):
        raise BundleError(f"{name} has a corrupt training state (not a JSON object); "
                          "start a new run")
    for key, typ in _STATE_KEYS.items():
        value = meta.get(key)
        if not isinstance(value, typ) or isinstance(value, bool) or (
                typ is int and value < 0):
            raise BundleError(f"{name} has a corrupt training state: {key!r} is missing or "
                              "invalid; start a new run")
    for key, info in meta["optimizers"].items():
        if not isinstance(info, dict) or not isinstance(info.get("param_groups"), list):
            raise BundleError(f"{name} has a corrupt training state: optimizer {key!r}")
    for key in ("run", "best", "training"):
        if meta.get(key) is not None and not isinstance(meta[key], dict):
            raise BundleError(f"{name} has a corrupt training state: {key!r} is not an object")
    if meta.get("history") is not None and not isinstance(meta["history"], list):
        raise BundleError(f"{name} has a corrupt training state: 'history' is not a list")
    from napari_resolve.bundle import validate_meta

    validate_meta({"architecture": meta["architecture"], "config": meta["config"]}, name)
    return meta


def build_model(path, meta: dict):
    """The checkpoint's network, built only after its shapes match the file's header.

    As :func:`napari_resolve.bundle.load`: a skeleton on torch's ``meta``
    device is compared with the ``model/`` tensors of the header first, so a
    crafted config cannot allocate more than the file holds.
    """
    from napari_resolve import bundle

    return bundle.build_checked(state_path(path), meta["architecture"], meta["config"],
                                prefix="model/")


def load_state(path) -> tuple[dict, dict]:
    """Read a checkpoint: ``(meta, parts)``; ``parts``: model / disc / opt state dicts, rng."""
    from safetensors.torch import load_file

    path = state_path(path)
    meta = read_state_meta(path)
    try:
        tensors = load_file(str(path), device="cpu")
    except Exception as exc:  # noqa: BLE001 - truncated / corrupt tensor data
        raise BundleError(f"{path.name} is not a readable checkpoint: "
                          f"{' '.join(str(exc).split())[:150]}") from None
    model_sd = {k[len("model/") :]: v for k, v in tensors.items() if k.startswith("model/")}
    discs: dict[str, dict] = {}
    for k, v in tensors.items():
        if k.startswith("disc/"):
            dname, key = k[len("disc/") :].split("/", 1)
            discs.setdefault(dname, {})[key] = v
    try:
        opts = {
            name: _unflatten_optimizer(name, info, tensors)
            for name, info in meta["optimizers"].items()
        }
    except (ValueError, KeyError, TypeError) as exc:
        raise BundleError(f"{path.name} has a corrupt optimiser state ({exc}); "
                          "start a new run") from None
    return meta, {
        "model": model_sd,
        "discriminators": discs,
        "optimizers": opts,
        "rng": tensors.get("rng/torch"),
    }


def _json_num(v):
    """A number for JSON metadata: NaN -> None, ±inf -> ±1e9."""
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else (1e9 if v > 0 else -1e9)
    return v


def _source_spec(data):
    """Data given as paths (JSON-able) is recorded so that a resume can find it again."""
    if isinstance(data, (str, Path)):
        return str(data)
    if isinstance(data, (list, tuple)) and all(isinstance(d, (str, Path)) for d in data):
        return [str(d) for d in data]
    if isinstance(data, dict):
        out = {k: _source_spec(v) for k, v in data.items() if v is not None}
        return out if all(v is not None for v in out.values()) else None
    return None


def final_model(path):
    """``(model, meta, step)``: the run's *last* weights from its resume state.

    ``path`` is a run's output bundle (its best checkpoint); the resume state
    beside it holds the weights of the last step. The GAN recipes (SRSEG) are
    judged on these: their later phases trade PSNR for other goals, so a
    PSNR-chosen checkpoint would fall in the shared MSE phase.
    """
    from napari_resolve import bundle

    model, meta = bundle.load(path)
    state, parts = load_state(path)
    model.load_state_dict(parts["model"])
    step, epoch = int(state.get("step", 0)), int(state.get("epoch", 0))
    # the bundle's metrics and step counts describe the best checkpoint, not these weights
    meta = dict(meta)
    best = meta.get("metrics") or {}
    meta["metrics"] = {"step": step, "epoch": epoch, "weights": "last step",
                       "best_validation_step": best.get("step")}
    if isinstance(meta.get("training"), dict):
        meta["training"] = {**meta["training"], "steps": step, "epochs": epoch}
    return model, meta, step
