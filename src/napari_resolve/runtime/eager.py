"""Eager PyTorch: the default runtime, and the only one on a GPU (CUDA with AMP, MPS).

On the CPU the input goes in ``channels_last`` (oneDNN's blocked convolutions:
1.57x on gp-x4 in issue 17's measurement, same numbers to float rounding).
Forward hooks on the network's leaf modules count the blocks run (progress
inside a tile) and raise :class:`~napari_resolve.errors.Cancelled` at the
next block once :meth:`cancel` was called (Cancel inside a tile, issue 18).
"""

from __future__ import annotations

import weakref

import torch

from napari_resolve.errors import Cancelled
from napari_resolve.runtime.base import Runner, flatten_outputs


CHANNELS_LAST = True  # on the CPU; benchmarks/predict.py turns it off for the old baseline

# leaf-module calls of one forward, per model (learned on its first run)
_CALLS_PER_FORWARD: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class EagerRunner(Runner):
    name = "eager"
    supports_prior = True
    supports_extras = True

    def __init__(self, model, device: torch.device, amp_dtype=None, channels_last=None):
        super().__init__()
        self.model = model
        self.device = device
        self.amp_dtype = amp_dtype
        if channels_last is None:
            channels_last = CHANNELS_LAST and device.type == "cpu"
        self.channels_last = channels_last
        self._calls = 0
        # TorchScript modules (an imported .pt) take no hooks: progress per tile only there
        self._leaves = [m for m in model.modules() if not any(True for _ in m.children())
                        and not isinstance(m, torch.jit.ScriptModule)]
        # leaf calls of one forward: learned after a run; until then one call per leaf
        self._per_forward = _CALLS_PER_FORWARD.get(model) or len(self._leaves) or None

    def _hook(self, module, args, output):
        self._calls += 1
        if self._cancel.is_set():
            raise Cancelled("cancelled inside a tile")

    def fraction(self):
        if not self._per_forward:
            return None
        return min(self._calls / self._per_forward, 0.99)

    def run(self, x, prior, want_extras):
        if self.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        handles = [m.register_forward_hook(self._hook) for m in self._leaves]
        self._calls = 0
        try:
            with torch.inference_mode():
                if self.amp_dtype is not None:
                    with torch.autocast(device_type=self.device.type, dtype=self.amp_dtype):
                        out = self.model(x, prior=prior)
                else:
                    out = self.model(x, prior=prior)
        finally:
            for h in handles:
                h.remove()
        if prior is None and self._calls:
            self._per_forward = self._calls
            _CALLS_PER_FORWARD[self.model] = self._calls
        flat = flatten_outputs(out, want_extras)
        return {k: v.contiguous() for k, v in flat.items()}
