"""Resume checkpoints: model, discriminators, optimisers and position, in safetensors.

Beside the best bundle ``model.safetensors`` the engine keeps
``model.state.safetensors``: the *latest* weights (not the best), every
optimiser's state tensors flattened to ``opt/<name>/<param>/<key>``, the
discriminators' weights, the torch RNG state (a uint8 tensor), and one JSON
string (key ``napari_resolve_state``) with the rest: architecture and config,
recipe, phase, epoch, batch within the epoch, step, history, best metrics,
optimiser hyper-parameters. No pickle is involved (never ``torch.save``), so
a checkpoint from elsewhere is as safe to open as a bundle. Written through
:func:`napari_resolve._atomic.atomic_path`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from napari_resolve._atomic import atomic_path
from napari_resolve.errors import BundleError

__all__ = ["STATE_KEY", "state_path", "save_state", "load_state", "read_state_meta"]

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
    return json.loads(raw)


def load_state(path) -> tuple[dict, dict]:
    """Read a checkpoint: ``(meta, parts)``; ``parts``: model / disc / opt state dicts, rng."""
    from safetensors.torch import load_file

    path = state_path(path)
    meta = read_state_meta(path)
    tensors = load_file(str(path), device="cpu")
    model_sd = {k[len("model/") :]: v for k, v in tensors.items() if k.startswith("model/")}
    discs: dict[str, dict] = {}
    for k, v in tensors.items():
        if k.startswith("disc/"):
            dname, key = k[len("disc/") :].split("/", 1)
            discs.setdefault(dname, {})[key] = v
    opts = {
        name: _unflatten_optimizer(name, info, tensors) for name, info in meta["optimizers"].items()
    }
    return meta, {
        "model": model_sd,
        "discriminators": discs,
        "optimizers": opts,
        "rng": tensors.get("rng/torch"),
    }
