"""The OpenVINO backend (issue 17 item 1): the cached ONNX graph compiled for the CPU.

OpenVINO reads the ONNX file written by :func:`~napari_resolve.runtime.onnx.export_onnx`
and compiles it once with its dynamic batch, height and width (a static
reshape per tile shape ran no faster here, 3.1 s vs 3.3-3.6 s for a 64² gp-x4
tile under load, and cost a 1.6-3 s compilation for every new image size),
with ``INFERENCE_NUM_THREADS`` from :mod:`napari_resolve.threads`, the latency
hint and f32 precision. Cancel calls ``InferRequest.cancel`` on the running
request.
"""

from __future__ import annotations

import numpy as np
import torch

from napari_resolve.errors import Cancelled
from napari_resolve.runtime.base import Runner


class OpenVinoRunner(Runner):
    name = "openvino"

    def __init__(self, onnx_path, threads: int | None = None):
        super().__init__()
        import openvino as ov

        from napari_resolve import threads as thread_rule

        self._ov = ov
        self.core = ov.Core()
        self.model = self.core.read_model(str(onnx_path))
        self.config = {
            "INFERENCE_NUM_THREADS": thread_rule.choose(threads),
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": "f32",  # never bf16/f16 behind our back
        }
        self.outputs = [o.get_any_name() for o in self.model.outputs]
        self.compiled = self.core.compile_model(self.model, "CPU", self.config)
        self._infer = self.compiled.create_infer_request()
        self._request = None

    def cancel(self):
        super().cancel()
        req = self._request
        if req is not None:
            try:
                req.cancel()
            except Exception:  # noqa: BLE001 - finished in the meantime
                pass

    def run(self, x, prior, want_extras):
        if self._cancel.is_set():
            raise Cancelled("cancelled")
        arr = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        req = self._infer
        self._request = req
        try:
            req.start_async({0: arr})
            while not req.wait_for(100):  # ms; lets cancel() act between checks
                if self._cancel.is_set():
                    req.cancel()
                    raise Cancelled("cancelled inside a tile")
        except Cancelled:
            raise
        except Exception:
            if self._cancel.is_set():
                raise Cancelled("cancelled inside a tile") from None
            raise
        finally:
            self._request = None
        return {
            name: torch.from_numpy(np.array(req.get_output_tensor(i).data, copy=True))
            for i, name in enumerate(self.outputs)
        }

    def close(self):
        self._infer = self.compiled = None
