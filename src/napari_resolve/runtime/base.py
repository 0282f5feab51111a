"""What every runtime gives the tiled engine: a :class:`Runner` that runs one batch of tiles.

``run(x, prior, want_extras)`` takes an LR batch (N, C, h, w) float32 tensor on
the engine's device and returns the flattened outputs (``"sr"``, ``"parsing"``
and, with ``want_extras``, the others) as tensors. It is called on a worker
thread of the engine (:mod:`napari_resolve.predict.engine`), so that the engine
can report progress while it runs; ``cancel()`` is called from the engine's
thread and must make ``run`` raise :class:`~napari_resolve.errors.Cancelled`
soon (between two blocks for eager, ``RunOptions.terminate`` for onnxruntime,
``InferRequest.cancel`` for OpenVINO). ``fraction()`` is the part of the
current run already done when the runtime can tell (eager: blocks run / blocks
per forward), else None (the engine then estimates it from the time per pixel).
"""

from __future__ import annotations

import threading

import torch


class Runner:
    """Base runner: cancellation flag and the fraction protocol."""

    name = "base"
    supports_prior = False  # takes a parsing prior
    supports_extras = False  # returns outputs beyond "sr" / "parsing"

    def __init__(self):
        self._cancel = threading.Event()

    def cancel(self) -> None:
        self._cancel.set()

    def reset(self) -> None:
        self._cancel.clear()

    def fraction(self) -> float | None:
        return None

    def run(self, x: torch.Tensor, prior, want_extras: bool) -> dict:
        raise NotImplementedError

    def close(self) -> None:
        """Release sessions / compiled graphs (the runner is not used again)."""


def flatten_outputs(out: dict, want_extras: bool) -> dict:
    """``"sr"``, ``"parsing"`` and (``want_extras``) every other 4-D output, lists as ``key/i``."""
    if not isinstance(out, dict) or "sr" not in out:
        raise RuntimeError("a model's forward must return a dict with 'sr'")
    flat = {"sr": out["sr"]}
    if out.get("parsing") is not None:
        flat["parsing"] = out["parsing"]
    if want_extras:
        for key, val in out.items():
            if key in ("sr", "parsing"):
                continue
            if torch.is_tensor(val) and val.ndim == 4:
                flat[key] = val
            elif isinstance(val, (list, tuple)):
                for i, v in enumerate(val):
                    if torch.is_tensor(v) and v.ndim == 4:
                        flat[f"{key}/{i}"] = v
    return flat
