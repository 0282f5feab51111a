"""Runtimes for the tiled engine, chosen per model by measurement (issue 17).

Backends (``backend=`` in :func:`napari_resolve.predict.predict`, ``--backend``
on the CLI):

* ``"eager"``: PyTorch as written (``channels_last`` on the CPU); the only one
  on a GPU (CUDA with AMP, MPS), the only one that takes a parsing prior or
  returns extra outputs, and the default when no extra is installed.
* ``"onnxruntime"`` (``pip install 'napari-resolve[onnx]'``) and
  ``"openvino"`` (``[openvino]``): the model exported once to ONNX
  (:func:`napari_resolve.runtime.onnx.export_onnx`) and cached on disk
  (:mod:`napari_resolve.runtime.cache`). 3.2-3.5x eager on gp / np tiles on
  a 2-core AVX2 CPU (issue 17). Not for MHTCUN (FFT: no ONNX export).
* ``"compile"``: ``torch.compile``; explicit only (15-60 s of compilation per
  tile shape).
* ``"auto"`` (default): on the CPU, for a job of at least
  :data:`AUTO_MIN_SR_PX` output pixels (:data:`AUTO_CACHED_MIN_SR_PX` once
  the architecture was measured), the fastest of eager and the installed
  ONNX runtimes as measured once per model, thread count and versions on a
  small probe (:func:`calibrate`, cached in ``calibration.json`` per
  architecture: a fine-tuned model reuses it); eager for
  small jobs, GPUs, priors and extras.
"""

from __future__ import annotations

import importlib.util
import time
from collections import OrderedDict

import torch

from napari_resolve.errors import InputError
from napari_resolve.runtime.base import Runner, flatten_outputs

__all__ = [
    "BACKENDS",
    "AUTO_MIN_SR_PX",
    "Runner",
    "available",
    "check_backend",
    "select",
    "make_runner",
    "calibrate",
    "flatten_outputs",
]

BACKENDS = ("auto", "eager", "onnxruntime", "openvino", "compile")
ONNX_BACKENDS = ("onnxruntime", "openvino")
EXTRA = {"onnxruntime": "onnx", "openvino": "openvino"}
MODULE = {"onnxruntime": "onnxruntime", "openvino": "openvino"}
AUTO_MIN_SR_PX = 1 << 20  # below ~1 MP of output a first calibration does not pay
AUTO_CACHED_MIN_SR_PX = 1 << 16  # with a cached calibration, from 256 x 256 output px
AUTO_MARGIN = 1.15  # a runtime must beat eager by this factor to be chosen
PROBE_SIDE = 96  # LR px of the calibration probe


def available() -> dict[str, bool]:
    """Which backends can run here (optional packages installed)."""
    out = {"eager": True, "compile": hasattr(torch, "compile")}
    for name in ONNX_BACKENDS:
        out[name] = importlib.util.find_spec(MODULE[name]) is not None
    return out


def check_backend(name) -> str:
    """Validate a backend name; an optional one must be installed."""
    name = "auto" if name is None else str(name)
    if name not in BACKENDS:
        raise InputError(f"unknown backend {name!r}; use one of {', '.join(BACKENDS)}")
    if name in ONNX_BACKENDS and not available()[name]:
        raise InputError(
            f"backend {name!r} needs the {MODULE[name]} package: "
            f"pip install 'napari-resolve[{EXTRA[name]}]'"
        )
    return name


def _is_onnx_model(model) -> bool:
    from napari_resolve.runtime.onnx import OnnxModel

    return isinstance(model, OnnxModel)


def _exportable(model) -> bool:
    from napari_resolve.runtime.onnx import _uses_fft

    return not _uses_fft(model)


def select(model, backend, device: torch.device, *, sr_px: int, prior=False, extras=False,
           threads: int | None = None) -> str:
    """The backend that runs this job (see the module docstring)."""
    backend = check_backend(backend)
    if _is_onnx_model(model):
        if backend not in ("auto", "onnxruntime"):
            raise InputError(f"an .onnx model runs with onnxruntime, not backend {backend!r}")
        return "onnxruntime"
    if backend == "eager":
        return "eager"
    if backend != "auto":
        if device.type != "cpu":
            raise InputError(f"backend {backend!r} runs on the CPU; use device='cpu' or eager")
        if prior or extras:
            what = "a parsing prior" if prior else "extra outputs"
            raise InputError(f"backend {backend!r} cannot take {what}; use backend='eager'")
        if backend in ONNX_BACKENDS and not _exportable(model):
            from napari_resolve.runtime.onnx import FFT_REASON

            raise InputError(f"backend {backend!r} cannot run this model: {FFT_REASON}")
        return backend
    # auto
    if device.type != "cpu" or prior or extras or sr_px < AUTO_CACHED_MIN_SR_PX:
        return "eager"
    candidates = [b for b in ONNX_BACKENDS if available()[b]]
    if not candidates or not _exportable(model):
        return "eager"
    known = cached_calibration(model, threads)
    if known is not None:  # measured before (this architecture): worth it from a small job
        return known["choice"]
    if sr_px < AUTO_MIN_SR_PX:
        return "eager"
    return calibrate(model, threads=threads)["choice"]


def _calibration_key(model, n: int, names) -> str:
    from napari_resolve.runtime import cache

    vers = []
    for b in names:
        mod = importlib.import_module(MODULE[b])
        vers.append(f"{b}={getattr(mod, '__version__', '?')}")
    # speed does not depend on the weights: a fine-tuned model reuses its architecture's
    arch = cache.model_hash(model, weights=False)
    return cache.key("calibration", arch, n, cache.versions(*vers), PROBE_SIDE)


def cached_calibration(model, threads: int | None = None) -> dict | None:
    """The cached :func:`calibrate` result of this architecture and thread count, or None."""
    from napari_resolve import threads as thread_rule
    from napari_resolve.runtime import cache

    names = [b for b in ONNX_BACKENDS if available()[b]]
    try:
        return cache.read_json("calibration.json").get(
            _calibration_key(model, thread_rule.choose(threads), names)
        )
    except Exception:  # noqa: BLE001 - a missing or unreadable cache: not measured
        return None


def calibration_rate(model, backend: str, threads: int | None = None) -> float | None:
    """Seconds per LR pixel of ``backend`` from a cached calibration, else None (no timing)."""
    entry = cached_calibration(model, threads)
    if not entry or backend not in entry.get("seconds", {}):
        return None
    return float(entry["seconds"][backend]) / float(entry["probe"]) ** 2


def calibrate(model, *, threads: int | None = None, backends=None, force: bool = False) -> dict:
    """Time eager and each installed ONNX runtime on a probe; cached per architecture
    (config and code, not the weights), thread count and versions.

    Returns ``{"choice": name, "seconds": {name: s per probe}, "probe": side}``.
    One warm-up and the best of two timed runs each (export and compilation
    excluded); a runtime must beat eager by :data:`AUTO_MARGIN`.
    """
    from napari_resolve import threads as thread_rule
    from napari_resolve.runtime import cache

    n = thread_rule.choose(threads)
    names = list(backends or [b for b in ONNX_BACKENDS if available()[b]])
    entry = _calibration_key(model, n, names)
    if not force:
        hit = cache.read_json("calibration.json").get(entry)
        if hit:
            return hit
    mult = max(int(getattr(model, "size_multiple", 1) or 1), 1)
    side = -(-PROBE_SIDE // mult) * mult
    x = torch.rand(1, int(model.in_channels), side, side)
    seconds = {}
    for name in ["eager", *names]:
        try:
            runner = make_runner(model, name, torch.device("cpu"), threads=n)
            runner.run(x, None, False)  # warm-up (and shape compilation)
            best = float("inf")
            for _ in range(2):
                t0 = time.perf_counter()
                runner.run(x, None, False)
                best = min(best, time.perf_counter() - t0)
            seconds[name] = best
        except Exception:  # noqa: BLE001 - a runtime that fails here is simply not chosen
            continue
    choice = min(seconds, key=seconds.get) if seconds else "eager"
    eager_s = seconds.get("eager")
    if choice != "eager" and eager_s is not None and seconds[choice] * AUTO_MARGIN > eager_s:
        choice = "eager"
    result = {"choice": choice, "seconds": seconds, "probe": side, "threads": n}
    try:
        cache.update_json("calibration.json", entry, result)
    except OSError:
        pass  # a read-only cache costs a re-calibration next time, nothing else
    return result


_RUNNERS: OrderedDict = OrderedDict()  # (model hash, backend, threads) -> Runner
_MAX_RUNNERS = 4


def make_runner(model, backend: str, device: torch.device, *, amp_dtype=None,
                threads: int | None = None) -> Runner:
    """A :class:`Runner` for ``backend`` (a resolved name, not ``"auto"``).

    ONNX sessions and OpenVINO executables are kept for the last few models
    (keyed by the weights' hash), so a second run starts at once.
    """
    from napari_resolve import threads as thread_rule

    if backend == "eager":
        from napari_resolve.runtime.eager import EagerRunner

        return EagerRunner(model, device, amp_dtype)
    if backend == "compile":
        from napari_resolve.runtime.compile import CompileRunner

        return CompileRunner(model, device)
    n = thread_rule.choose(threads)
    if _is_onnx_model(model):
        runner = model.runner(n)
        runner.reset()
        return runner
    from napari_resolve.runtime import cache
    from napari_resolve.runtime.onnx import cached_export

    k = (cache.model_hash(model), backend, n)
    runner = _RUNNERS.get(k)
    if runner is None:
        path = cached_export(model)
        if backend == "onnxruntime":
            from napari_resolve.runtime.onnx import OrtRunner

            runner = OrtRunner(path, n)
        elif backend == "openvino":
            from napari_resolve.runtime.openvino import OpenVinoRunner

            runner = OpenVinoRunner(path, n)
        else:
            raise InputError(f"unknown backend {backend!r}")
        _RUNNERS[k] = runner
        while len(_RUNNERS) > _MAX_RUNNERS:
            _RUNNERS.popitem(last=False)[1].close()
    _RUNNERS.move_to_end(k)
    runner.reset()
    return runner
