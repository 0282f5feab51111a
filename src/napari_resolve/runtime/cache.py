"""On-disk cache of exported graphs and calibrations, keyed so that it cannot go stale.

A key is the SHA-256 of: the model's weights (every tensor of its state dict,
name, dtype, shape and bytes), its architecture and config, the source of the
modules that define what the network computes (``models/*.py`` and
``data/degrade.py``), and the versions of napari-resolve, torch and the
runtime. A changed bundle, a changed architecture or an upgraded runtime
therefore gets a new key, and the old entry is simply never read again.
Folder: ``$NAPARI_RESOLVE_CACHE``, else ``$XDG_CACHE_HOME/napari-resolve``,
else ``~/.cache/napari-resolve``.
"""

from __future__ import annotations

import hashlib
import json
import os
from functools import lru_cache
from pathlib import Path

import torch

ENV_VAR = "NAPARI_RESOLVE_CACHE"


def cache_dir() -> Path:
    """The cache folder (created on first use)."""
    base = os.environ.get(ENV_VAR)
    if base:
        path = Path(base).expanduser()
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        path = (Path(xdg) if xdg else Path.home() / ".cache") / "napari-resolve"
    path.mkdir(parents=True, exist_ok=True)
    return path


@lru_cache(maxsize=1)
def _code_hash() -> str:
    """Hash of the source files that define the networks' computation."""
    root = Path(__file__).resolve().parents[1]
    files = sorted((root / "models").glob("*.py")) + [root / "data" / "degrade.py"]
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def model_hash(model, *, weights: bool = True) -> str:
    """SHA-256 (hex, 24 chars) of the weights, architecture, config and model code.

    ``weights=False``: the architecture only (tensor names, dtypes and shapes),
    for what does not depend on the values, such as a runtime's speed.
    """
    h = hashlib.sha256()
    h.update(type(model).__qualname__.encode())
    h.update(str(getattr(model, "arch", "")).encode())
    h.update(json.dumps(getattr(model, "config", {}) or {}, sort_keys=True, default=str).encode())
    h.update(repr(model).encode())  # the module tree: a twin without an output stage differs
    h.update(_code_hash().encode())
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        if weights and t.numel():
            # reshape: a 0-d tensor (BatchNorm's num_batches_tracked) cannot be viewed as bytes
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:24]


def versions(*extra: str) -> str:
    """napari-resolve and torch versions plus ``extra`` (e.g. the runtime's)."""
    from napari_resolve import __version__

    return "|".join((__version__, torch.__version__, *extra))


def key(*parts) -> str:
    """A short file-name-safe key of ``parts``."""
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:24]


MAX_GRAPHS = 32  # exported graphs kept; the least recently used go first


def prune(pattern: str = "*.onnx", keep: int = MAX_GRAPHS) -> None:
    """Remove all but the ``keep`` most recently used files matching ``pattern``."""
    files = sorted(cache_dir().glob(pattern), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in files[keep:]:
        try:
            old.unlink()
        except OSError:
            pass


def read_json(name: str) -> dict:
    path = cache_dir() / name
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def update_json(name: str, entry_key: str, value) -> None:
    """Merge one entry into a JSON file of the cache (atomic replace; last writer wins)."""
    from napari_resolve._atomic import atomic_path

    data = read_json(name)
    data[entry_key] = value
    path = cache_dir() / name
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(data, indent=1, sort_keys=True))
