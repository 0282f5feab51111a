"""ONNX export and the onnxruntime backend (issue 16 item 2, issue 17 item 1).

:func:`export_onnx` writes a model's ``"sr"`` (and, for geometry-prior models,
``"parsing"``) graph with dynamic batch, height and width, opset 17, via
torch's TorchScript-based exporter (``dynamo=False``: it needs no extra
package and traces our models, whose size arithmetic is trace-safe). The
bundle metadata (scale, normalisation, domain card...) and the engine's facts
(size multiple, receptive field) go into the file's ``metadata_props``, so
that ``predict --model file.onnx`` (:func:`load_onnx`) runs it through the
same tiled engine with the same normalisation.

MHTCUN (paper 003) does not export: its FCAB channel attention takes
``torch.fft.fft2``, which the TorchScript exporter cannot write at any opset;
the dynamo exporter maps it to ONNX ``DFT`` but needs ``onnxscript``, and
onnxruntime then runs MHTCUN-lite at 0.34x the eager speed (OpenVINO 0.70x,
measured in issue 17), so napari-resolve keeps it on eager PyTorch.

:class:`OrtRunner` runs tiles through an ``onnxruntime.InferenceSession``
(CPU provider) with the thread rule of :mod:`napari_resolve.threads` and no
spin-waiting on a busy machine; Cancel sets ``RunOptions.terminate`` from the
engine's thread. Exported graphs are cached per model (weights, code and
versions: :mod:`napari_resolve.runtime.cache`); dynamic sizes make one file
serve every tile shape.
"""

from __future__ import annotations

import json
import warnings
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from napari_resolve.errors import BundleError, Cancelled, ResolveError
from napari_resolve.models.base import SRModel
from napari_resolve.runtime.base import Runner

__all__ = ["ONNX_OPSET", "ExportError", "export_onnx", "load_onnx", "read_onnx_meta", "OrtRunner"]

ONNX_OPSET = 17
META_KEY = "napari_resolve.meta"  # the bundle metadata (JSON)
MODEL_KEY = "napari_resolve.model"  # what the tiled engine needs to know (JSON)
FFT_REASON = (
    "it uses torch.fft (FFT channel attention, paper 003), which torch's ONNX exporter cannot "
    "write (the dynamo exporter maps it to DFT but needs onnxscript, and onnxruntime then ran "
    "mhtcun-lite at 0.34x eager speed); use the eager backend or a safetensors bundle"
)


class ExportError(ResolveError):
    """A model that cannot be exported, with the reason in one line."""


class _Graph(torch.nn.Module):
    """The exported function: LR (N, C, h, w) -> sr (N, C, sh, sw) [, parsing logits]."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.parsing = bool(getattr(model, "predicts_parsing", False))

    def forward(self, x):
        out = self.model(x)
        return (out["sr"], out["parsing"]) if self.parsing else out["sr"]


def _engine_facts(model) -> dict:
    return {
        "scale": int(model.scale),
        "in_channels": int(model.in_channels),
        "size_multiple": int(getattr(model, "size_multiple", 1) or 1),
        "receptive_field": int(getattr(model, "receptive_field", 0) or 0),
        "global_ops": bool(getattr(model, "global_ops", False)),
        "predicts_parsing": bool(getattr(model, "predicts_parsing", False)),
        "arch": str(getattr(model, "arch", "") or type(model).__name__),
    }


def _code_names(code) -> set:
    names = set(code.co_names)
    for const in code.co_consts:
        if hasattr(const, "co_names"):
            names |= _code_names(const)
    return names


@lru_cache(maxsize=256)
def _class_uses_fft(cls) -> bool:
    """True when a method of ``cls`` (not its bases) reads ``torch.fft`` (bytecode names)."""
    for value in vars(cls).values():
        func = getattr(value, "__func__", value)
        code = getattr(func, "__code__", None)
        if code is not None and "fft" in _code_names(code):
            return True
    return False


def _uses_fft(model) -> bool:
    """Whether any module of ``model`` calls ``torch.fft`` (which does not export)."""
    return any(_class_uses_fft(type(m)) for m in model.modules())


def export_onnx(model_or_bundle, path, *, dynamic_hw: bool = True, opset: int = ONNX_OPSET,
                example_hw: tuple[int, int] | None = None) -> Path:
    """Export a model to ONNX at ``path``; returns the path.

    Parameters
    ----------
    model_or_bundle : str, Path, (model, meta) or SRModel
        As :func:`napari_resolve.predict.predict` takes it.
    path : str or Path
        The ``.onnx`` file to write (atomically; an existing file is replaced).
    dynamic_hw : bool
        Dynamic batch, height and width (default). ``False`` fixes them to
        ``example_hw`` (batch 1).
    opset : int
        ONNX opset (default 17).
    example_hw : (int, int), optional
        LR size of the tracing example (default: 8 size multiples, >= 32 px).

    Input ``"lr"`` (N, C, h, w) float32 in the bundle's normalised scale,
    outputs ``"sr"`` and, for geometry-prior models, ``"parsing"`` (logits).
    ``metadata_props``: ``napari_resolve.meta`` (bundle metadata, JSON) and
    ``napari_resolve.model`` (scale, channels, size multiple, receptive field).
    Raises :class:`ExportError` when the model cannot be exported (MHTCUN: FFT).
    """
    import onnx

    from napari_resolve._atomic import atomic_path
    from napari_resolve.predict import resolve_model

    model, meta = resolve_model(model_or_bundle)
    name = meta.get("architecture") or type(model).__name__
    if _uses_fft(model):
        raise ExportError(f"{name} cannot be exported to ONNX: {FFT_REASON}")
    model = model.eval().to("cpu")
    facts = _engine_facts(model)
    if example_hw is None:
        side = max(8 * facts["size_multiple"], 32)
        example_hw = (side, side)
    x = torch.rand(1, facts["in_channels"], *example_hw)
    graph = _Graph(model)
    outputs = ["sr", "parsing"] if graph.parsing else ["sr"]
    dyn = None
    if dynamic_hw:
        dyn = {"lr": {0: "n", 2: "h", 3: "w"}}
        dyn.update({o: {0: "n", 2: "sh", 3: "sw"} for o in outputs})
    path = Path(path)
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings on constant size checks
        try:
            with torch.inference_mode(False), torch.no_grad():
                torch.onnx.export(
                    graph, (x,), str(tmp), input_names=["lr"], output_names=outputs,
                    dynamic_axes=dyn, opset_version=int(opset), dynamo=False,
                )
        except Exception as exc:  # an operator the exporter lacks, and the like
            text = " ".join(str(exc).split())
            reason = FFT_REASON if "fft" in text.lower() else text[:200]
            raise ExportError(f"{name} cannot be exported to ONNX: {reason}") from None
        proto = onnx.load(str(tmp))
        del proto.metadata_props[:]
        for k, v in (
            (META_KEY, json.dumps(meta, default=str)),
            (MODEL_KEY, json.dumps(facts)),
        ):
            entry = proto.metadata_props.add()
            entry.key, entry.value = k, v
        proto.producer_name = "napari-resolve"
        onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))
    return path


def read_onnx_meta(path) -> tuple[dict, dict]:
    """``(engine facts, bundle meta)`` from an ONNX file written by :func:`export_onnx`."""
    import onnx

    path = Path(path)
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise BundleError(f"{path.name} is not a readable ONNX file: {exc}") from None
    props = {p.key: p.value for p in proto.metadata_props}
    if MODEL_KEY not in props:
        raise BundleError(
            f"{path.name} has no napari-resolve metadata (scale, normalisation); export it with "
            "napari_resolve.runtime.onnx.export_onnx or napari-resolve export --format onnx"
        )
    facts = json.loads(props[MODEL_KEY])
    meta = json.loads(props.get(META_KEY, "{}"))
    return facts, meta


def _session(path, threads: int | None = None):
    import onnxruntime as ort

    from napari_resolve import threads as thread_rule

    opts = ort.SessionOptions()
    n = thread_rule.choose(threads)
    opts.intra_op_num_threads = n
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if n < thread_rule.usable_cores():  # a busy machine: sleep, never spin (threads.py)
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


class OrtRunner(Runner):
    """Tiles through an onnxruntime session; Cancel terminates the running call."""

    name = "onnxruntime"

    def __init__(self, onnx_path, threads: int | None = None):
        super().__init__()
        import onnxruntime as ort

        self._ort = ort
        self.path = Path(onnx_path)
        self.session = _session(self.path, threads)
        self.outputs = [o.name for o in self.session.get_outputs()]
        self._options = None

    def cancel(self):
        super().cancel()
        opts = self._options
        if opts is not None:
            opts.terminate = True

    def run(self, x, prior, want_extras):
        if self._cancel.is_set():
            raise Cancelled("cancelled")
        self._options = self._ort.RunOptions()
        arr = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        try:
            res = self.session.run(self.outputs, {"lr": arr}, run_options=self._options)
        except Exception:
            if self._cancel.is_set():
                raise Cancelled("cancelled inside a tile") from None
            raise
        finally:
            self._options = None
        return {k: torch.from_numpy(v) for k, v in zip(self.outputs, res)}

    def close(self):
        self.session = None


class OnnxModel(SRModel):
    """An ONNX file exported by :func:`export_onnx`, usable wherever a model is.

    ``forward`` runs the graph with onnxruntime; the engine gives it its own
    runner (:class:`OrtRunner`, with Cancel inside a tile).
    """

    paper = "ONNX export"

    def __init__(self, path, facts: dict):
        super().__init__(int(facts["scale"]), int(facts["in_channels"]))
        self.path = Path(path)
        self.size_multiple = int(facts.get("size_multiple", 1))
        self.receptive_field = int(facts.get("receptive_field", 0))
        self.global_ops = bool(facts.get("global_ops", False))
        self.predicts_parsing = bool(facts.get("predicts_parsing", False))
        self.arch = str(facts.get("arch", "onnx"))
        self._runner = None

    def runner(self, threads=None) -> OrtRunner:
        if self._runner is None:
            self._runner = OrtRunner(self.path, threads)
        return self._runner

    def forward(self, x, prior=None):
        if prior is not None:
            raise ResolveError(f"{self.path.name} (ONNX) takes no parsing prior")
        return self.runner().run(x, None, False)


def load_onnx(path):
    """``(model, meta)`` of an ONNX file written by :func:`export_onnx`."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        raise BundleError(
            "running an .onnx model needs onnxruntime: pip install 'napari-resolve[onnx]'"
        ) from None
    path = Path(path)
    if not path.is_file():
        raise BundleError(f"model file not found: {path}")
    facts, meta = read_onnx_meta(path)
    model = OnnxModel(path, facts)
    meta = dict(meta)
    meta.setdefault("architecture", facts["arch"])
    meta["scale"] = facts["scale"]
    meta.setdefault("in_channels", facts["in_channels"])
    meta["runtime"] = "onnx"
    return model, meta


def cached_export(model, meta=None) -> Path:
    """The model's ONNX graph in the cache (exported on first use)."""
    import onnx

    from napari_resolve.runtime import cache

    k = cache.key("onnx", cache.model_hash(model), cache.versions(onnx.__version__), ONNX_OPSET)
    path = cache.cache_dir() / f"{k}.onnx"
    if path.is_file():
        path.touch()  # recently used: pruned last
    else:
        export_onnx((model, meta or {}), path)
        cache.prune("*.onnx")
    return path
