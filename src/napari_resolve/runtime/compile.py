"""``torch.compile`` (inductor) backend: explicit only (``backend="compile"``).

Measured in issue 17: 2.22x eager on gp-x4 with freezing, but 15-60 s to
compile per tile shape, so ``auto`` never picks it; worth it for long slide
runs with one tile shape. Cancel and progress as eager are not available
inside a compiled graph: the engine estimates progress from the time per pixel
and Cancel acts between tiles.
"""

from __future__ import annotations

import torch

from napari_resolve.errors import Cancelled
from napari_resolve.runtime.base import Runner, flatten_outputs


class CompileRunner(Runner):
    name = "compile"

    def __init__(self, model, device: torch.device):
        super().__init__()
        self.model = model
        self.device = device
        self.compiled = torch.compile(model, dynamic=False)

    def run(self, x, prior, want_extras):
        if self._cancel.is_set():
            raise Cancelled("cancelled")
        with torch.inference_mode():
            out = self.compiled(x, prior=prior)
        return {k: v.contiguous() for k, v in flatten_outputs(out, want_extras).items()}
