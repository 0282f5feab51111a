"""The tiled engine: model / device resolution, the tile loop, blending, OOM fallback.

See :mod:`napari_resolve.predict` for the procedure and its choices.
"""

from __future__ import annotations

import copy
import threading
import time
import warnings
import weakref
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from napari_resolve.errors import BundleError, InputError, ResolveError
from napari_resolve.predict.tiling import (
    _profile,
    _snap_down,
    default_overlap,
    default_tile,
    fit_tile,
    tile_plan,
)


@dataclass(frozen=True)
class Progress:
    """A progress event: ``done`` of ``total`` units (tiles) of ``stage``.

    ``done`` / ``total`` count whole units as before (widgets may keep using
    them). The engine also reports inside a tile, at least every
    :data:`PROGRESS_EVERY_S` seconds: ``fraction`` is the part of the whole
    job done (0..1, including the running tile's share), ``eta_s`` the
    estimated seconds left (None until it can be estimated) and ``message`` a
    short human-readable line. Events inside a tile repeat ``done``.
    """

    done: int
    total: int
    stage: str = "tiles"
    fraction: float | None = None
    eta_s: float | None = None
    message: str = ""


@dataclass
class PredictResult:
    """Result of :func:`predict`: SR image (float32, input's layout and intensity scale),
    parsing labels (uint8 at SR size or None), extra outputs and the run's metadata
    (the bundle metadata plus ``"predict"``: tile, overlap, batch, device, amp)."""

    image: np.ndarray
    labels: np.ndarray | None = None
    extras: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------- model / device


def resolve_model(model_or_bundle):
    """``(model, meta)`` from a pretrained name, a path, a ``(model, meta)`` tuple or a model.

    A name that is neither a file nor a pretrained bundle but a registered
    architecture without weights (``"bicubic"``) is built with its defaults.
    """
    from napari_resolve import bundle, models
    from napari_resolve.models.base import SRModel

    if isinstance(model_or_bundle, SRModel):
        return model_or_bundle, bundle.default_meta(model_or_bundle)
    if isinstance(model_or_bundle, tuple):
        if len(model_or_bundle) != 2 or not isinstance(model_or_bundle[0], torch.nn.Module):
            raise InputError("a model tuple must be (model, meta) as returned by bundle.load")
        model, meta = model_or_bundle
        meta = {**bundle.default_meta(model), **(meta or {})}
        return model, meta
    if isinstance(model_or_bundle, (str, Path)) and str(model_or_bundle).lower().endswith(".onnx"):
        from napari_resolve.runtime.onnx import load_onnx

        return load_onnx(model_or_bundle)
    if isinstance(model_or_bundle, (str, Path)):
        try:
            return bundle.load(model_or_bundle)
        except BundleError:
            name = str(model_or_bundle)
            if isinstance(model_or_bundle, str) and not Path(name).exists():
                try:
                    info = models.info(name)
                except ResolveError:
                    info = None
                if info is not None:
                    if info.parameters == 0:
                        model = models.build(name)
                        return model, bundle.default_meta(model)
                    raise BundleError(
                        f"{name!r} is an architecture, not a trained model: give a .safetensors "
                        "file or a pretrained name (napari-resolve models lists them)"
                    ) from None
            raise
    raise InputError(
        f"model must be a pretrained name, a .safetensors path, (model, meta) or a model, "
        f"got {type(model_or_bundle).__name__}"
    )


def choose_device(device="auto") -> torch.device:
    """``"auto"`` = CUDA, then MPS, then CPU; otherwise a checked ``torch.device``."""
    mps = getattr(torch.backends, "mps", None)
    mps_ok = bool(mps is not None and mps.is_available())
    if device is None or device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if mps_ok else torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise InputError(f"unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {device!r} asked for but CUDA is not available here")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise InputError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s)")
    if dev.type == "mps" and not mps_ok:
        raise InputError("device 'mps' asked for but Apple MPS is not available here")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise InputError(f"unsupported device {device!r}; use auto, cpu, cuda or mps")
    return dev


def _amp_dtype(dev: torch.device, amp):
    """The autocast dtype, or None when AMP is off (default: on for CUDA only)."""
    if amp is None:
        amp = dev.type == "cuda"
    if not amp:
        return None
    if dev.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if dev.type == "mps":
        return torch.float16
    return torch.bfloat16


# ----------------------------------------------------------------------------- the engine


@dataclass
class _Opts:
    tile: tuple[int, int]
    overlap: int
    batch: int
    device: torch.device
    amp_dtype: object
    backend: str = "auto"  # as asked; predict_iter resolves it (runtime.select)
    threads: int | None = None
    # the tile came from the memory budget: its side squared is an area that the
    # engine fits to each plane's shape (tiling.fit_tile)
    area_budget: bool = False


def _resolve_opts(model, tile, overlap, batch, device, amp, backend="auto", threads=None,
                  share: int = 1, area_budget: bool | None = None) -> _Opts:
    from napari_resolve import runtime

    backend = runtime.check_backend(backend)
    if threads is not None and (
        isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 0
    ):
        raise InputError(f"threads must be a whole number >= 0 (0 = automatic), got {threads!r}")
    threads = int(threads) if threads else None
    dev = choose_device(device)
    mult = max(int(getattr(model, "size_multiple", 1) or 1), 1)
    if overlap is None:
        ov = default_overlap(model)
    else:
        if isinstance(overlap, bool) or not isinstance(overlap, (int, np.integer)) or overlap < 0:
            raise InputError(f"overlap must be a whole number of LR pixels >= 0, got {overlap!r}")
        ov = int(overlap)
    if tile is None or (not isinstance(tile, (tuple, list)) and tile == 0):
        if tile is None:
            t = default_tile(model, dev, ov, share=share)
            tiles = (t, t)
        else:
            tiles = (1 << 30, 1 << 30)  # tile=0: the whole image in one piece
    else:
        vals = tuple(tile) if isinstance(tile, (tuple, list)) else (tile, tile)
        if len(vals) != 2 or any(
            isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1 for v in vals
        ):
            raise InputError(f"tile must be a positive whole number of LR pixels, got {tile!r}")
        tiles = tuple(_snap_down(int(v), mult) for v in vals)
        if min(tiles) <= 2 * ov:
            raise InputError(f"tile ({min(tiles)} LR px) must be larger than 2 x overlap ({ov})")
    if batch is None:
        nb = 1 if dev.type == "cpu" else 4
    else:
        if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or batch < 1:
            raise InputError(f"batch must be a positive whole number, got {batch!r}")
        nb = int(batch)
    if area_budget is None:
        area_budget = tile is None and dev.type == "cpu"
    return _Opts(tiles, ov, nb, dev, _amp_dtype(dev, amp), backend, threads, bool(area_budget))


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    # MPS and the CPU allocator raise plain RuntimeErrors
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and (
        "out of memory" in text or "can't allocate memory" in text
    )


def _run_model(model, x, prior, opts: _Opts) -> dict:
    """One eager forward (kept for callers outside the engine)."""
    from napari_resolve.runtime.eager import EagerRunner

    return EagerRunner(model, opts.device, opts.amp_dtype).run(x, prior, True)


def _flatten_outputs(out: dict, want_extras: bool) -> dict:
    from napari_resolve.runtime.base import flatten_outputs

    return flatten_outputs(out, want_extras)


PROGRESS_EVERY_S = 1.0  # progress events inside a tile at least this often (issue 18: <= 3 s)
# seconds per LR tile pixel last seen, per model and backend (first estimate of the next run)
RATES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _run_tile(runner, xt, pt, want_extras, clock):
    """Run one batch on a worker thread; yield the running batch's fraction (or None)
    every :data:`PROGRESS_EVERY_S` s; return its outputs. Closing the generator
    cancels the batch inside the runtime and waits for it to stop."""
    box: dict = {}

    def work():
        try:
            box["out"] = runner.run(xt, pt, want_extras)
        except BaseException as exc:  # noqa: BLE001 - re-raised on the engine's thread
            box["err"] = exc

    worker = threading.Thread(target=work, name="napari-resolve-tile", daemon=True)
    worker.start()
    try:
        while worker.is_alive():
            worker.join(PROGRESS_EVERY_S)
            if worker.is_alive():
                yield runner.fraction()
    finally:
        if worker.is_alive():  # cancelled (generator closed) while the tile runs
            runner.cancel()
            worker.join()
    if "err" in box:
        raise box["err"]
    return box["out"]


def _inside_batch(reported, elapsed, clock, rate_hint, batch_px):
    """(fraction of the running batch, its seconds left) from what is known.

    The runtime's own count (eager: layers run) when it gives one, else the
    expected batch time (seconds per pixel of the tiles already run, or the
    hint: the last run of this model, its calibration). Past the expected
    time the fraction stops at 0.9 and the time left stays a tenth of the time
    spent: a late estimate never claims to be done.
    """
    rate = clock["busy"] / clock["px_done"] if clock["px_done"] else rate_hint
    if reported is not None and reported > 0.02:
        return reported, elapsed / reported * (1 - reported)
    if not rate:
        return reported, None
    expected = rate * batch_px
    if elapsed < 0.9 * expected:
        return elapsed / expected, expected - elapsed
    return 0.9, 0.1 * elapsed


def _message(done, total, frac, eta) -> str:
    text = f"{100 * frac:.0f}% ({done}/{total} tiles)"
    if eta is not None:
        text += f", about {eta:.0f} s left" if eta >= 1 else ", almost done"
    return text


def _tiles_iter(model, planes: np.ndarray, prior, opts: _Opts, want_extras: bool, tile_hw,
                runner=None, rate_hint: float | None = None):
    """Run all tiles of ``planes`` (Z, C, H, W) with tile size ``tile_hw`` through ``runner``.

    Generator: yields Progress (per batch and, while a batch runs, every
    :data:`PROGRESS_EVERY_S` s), returns {key: (Z, C', f*H, f*W) float32}.
    ``rate_hint``: seconds per LR tile pixel, for the first estimate.
    """
    if runner is None:
        from napari_resolve.runtime.eager import EagerRunner

        runner = EagerRunner(model, opts.device, opts.amp_dtype)
    zn, _, h, w = planes.shape
    mult = max(int(getattr(model, "size_multiple", 1) or 1), 1)
    th, ys = tile_plan(h, tile_hw[0], opts.overlap, mult)
    tw, xs = tile_plan(w, tile_hw[1], opts.overlap, mult)
    rf = int(getattr(model, "receptive_field", 0) or 0)
    ov = opts.overlap

    def margin_of(band: int) -> int:
        m = min(rf, ov) if rf > 0 else ov // 2
        return min(m, band // 2)

    jobs = [(z, iy, ix) for z in range(zn) for iy in range(len(ys)) for ix in range(len(xs))]
    single = len(ys) == 1 and len(xs) == 1
    total = len(jobs)
    acc: dict[str, np.ndarray] = {}
    factors: dict[str, int] = {}
    profiles: dict[tuple, np.ndarray] = {}  # 1-D profiles only: few and small

    def weight(iy, ix, f):
        if ("y", iy, f) not in profiles:
            profiles[("y", iy, f)] = _profile(ys, th, iy, f, margin_of)
        if ("x", ix, f) not in profiles:
            profiles[("x", ix, f)] = _profile(xs, tw, ix, f, margin_of)
        return np.outer(profiles[("y", iy, f)], profiles[("x", ix, f)])

    dev = opts.device
    clock = {"t0": time.perf_counter(), "px_done": 0, "busy": 0.0}
    tile_px = th * tw
    total_px = total * tile_px
    yield Progress(0, total, "tiles", 0.0, None, f"0/{total} tiles")
    done = 0
    for b0 in range(0, total, opts.batch):
        chunk = jobs[b0 : b0 + opts.batch]
        x = np.stack(
            [planes[z, :, ys[iy] : ys[iy] + th, xs[ix] : xs[ix] + tw] for z, iy, ix in chunk]
        )
        xt = torch.from_numpy(np.ascontiguousarray(x)).to(dev)
        pt = None
        if prior is not None:
            s = int(model.scale)
            tiles = [
                prior[z, ..., s * ys[iy] : s * (ys[iy] + th), s * xs[ix] : s * (xs[ix] + tw)]
                for z, iy, ix in chunk
            ]
            pt = torch.from_numpy(np.ascontiguousarray(np.stack(tiles))).to(dev)
        t_batch = time.perf_counter()
        run = _run_tile(runner, xt, pt, want_extras, clock)
        while True:
            try:
                inner = next(run)
            except StopIteration as stop:
                out = stop.value
                break
            elapsed = time.perf_counter() - t_batch
            inner, batch_left = _inside_batch(
                inner, elapsed, clock, rate_hint, len(chunk) * tile_px
            )
            frac = (done * tile_px + (inner or 0.0) * len(chunk) * tile_px) / total_px
            eta = None
            if batch_left is not None:
                per_px = (elapsed + batch_left) / (len(chunk) * tile_px)
                eta = batch_left + per_px * (total - done - len(chunk)) * tile_px
            yield Progress(done, total, "tiles", frac, eta, _message(done, total, frac, eta))
        clock["busy"] += time.perf_counter() - t_batch
        clock["px_done"] += len(chunk) * tile_px
        for key, val in out.items():
            fh, fw = val.shape[-2] / th, val.shape[-1] / tw
            if fh != fw or fh != int(fh) or fh < 1:
                raise RuntimeError(
                    f"model output {key!r} has shape {tuple(val.shape)} for a {th}x{tw} tile"
                )
            f = int(fh)
            arr = val.detach().float().cpu().numpy()
            if total == 1:  # the whole image in one piece: the output is the result
                acc[key] = arr
                continue
            if key not in acc:
                acc[key] = np.zeros((zn, val.shape[1], f * h, f * w), dtype=np.float32)
                factors[key] = f
            for j, (z, iy, ix) in enumerate(chunk):
                y0, x0 = f * ys[iy], f * xs[ix]
                if single:  # one tile per plane: its weights are all 1
                    acc[key][z] = arr[j]
                    continue
                acc[key][z, :, y0 : y0 + f * th, x0 : x0 + f * tw] += arr[j] * weight(iy, ix, f)
        done += len(chunk)
        rate = clock["busy"] / clock["px_done"]
        eta = rate * (total_px - done * tile_px)
        frac = done / total
        yield Progress(done, total, "tiles", frac, eta, _message(done, total, frac, eta))
    try:
        RATES.setdefault(model, {})[runner.name] = clock["busy"] / max(clock["px_done"], 1)
    except TypeError:  # a model that cannot be weakly referenced: no memory of its speed
        pass
    if single:
        return acc
    # normalise by the summed weights (the same grid for every plane)
    wsums = {}
    for key, arr in acc.items():
        f = factors[key]
        if f not in wsums:
            ws = np.zeros((f * h, f * w), dtype=np.float32)
            for iy in range(len(ys)):
                for ix in range(len(xs)):
                    y0, x0 = f * ys[iy], f * xs[ix]
                    ws[y0 : y0 + f * th, x0 : x0 + f * tw] += weight(iy, ix, f)
            if not (ws > 0).all():  # cannot happen with tile > 2 * overlap
                raise RuntimeError("tile weights leave pixels uncovered")
            wsums[f] = ws
        arr /= wsums[f]
    return acc


def whole_image_stage(model):
    """``(runnable, stage)``: the model to run tile by tile without its whole-image output
    stage (``model.haze``, the out-of-focus background removal of the x4 fluorescence
    bundles, issue 13), and that stage (or None; then ``runnable`` is ``model``).

    Its Gaussian reaches 3 sigma (up to 192 LR px), far past any tile overlap, so tiles run
    without it and :func:`apply_whole_image_stage` applies it to the stitched output: tiled
    prediction then equals untiled whatever the tile (and the lazy paths apply it per chunk,
    with the chunk's halo). ``runnable`` is a twin sharing the model's parameters with a
    module table of its own: the shared model is never changed, so another run or an
    export at the same time still sees the stage (before session 12 the stage was taken
    out of the model itself for the run), and the runtime caches key the twin apart
    (``runtime.cache.model_hash`` reads the module tree).
    """
    stage = getattr(model, "haze", None)
    if stage is None:
        return model, None
    twin = copy.copy(model)
    twin._modules = dict(model._modules)  # noqa: SLF001 - its own table: the model keeps its stage
    twin.haze = None
    return twin, stage


def apply_whole_image_stage(stage, outputs: dict) -> dict:
    """``outputs`` with ``stage`` applied to each plane of ``"sr"`` (on the CPU, float32)."""
    if stage is None:
        return outputs
    sr = torch.from_numpy(np.ascontiguousarray(outputs["sr"], dtype=np.float32))
    with torch.no_grad():
        done = torch.cat([stage(sr[i : i + 1]) for i in range(sr.shape[0])])
    return {**outputs, "sr": done.numpy()}


def _engine(model, planes, prior, opts: _Opts, want_extras: bool, runner=None, rate_hint=None):
    """Tiled pass with OOM fallback (halve the tile, restart). Returns (outputs, tile_used)."""
    tile_hw = opts.tile
    mult = max(int(getattr(model, "size_multiple", 1) or 1), 1)
    if opts.area_budget:
        tile_hw = fit_tile(tile_hw[0], planes.shape[-2], planes.shape[-1], mult)
    warned = False
    while True:
        try:
            result = yield from _tiles_iter(
                model, planes, prior, opts, want_extras, tile_hw, runner, rate_hint
            )
            return result, tile_hw
        except Exception as exc:
            if not _is_oom(exc):
                raise
            if opts.device.type == "cuda":
                torch.cuda.empty_cache()
            h, w = planes.shape[-2:]
            cur = (min(tile_hw[0], h), min(tile_hw[1], w))
            new = tuple(_snap_down(c // 2, mult) for c in cur)
            if min(new) <= 2 * opts.overlap or new == cur:
                hint = "a smaller overlap" + (
                    " or device='cpu'" if opts.device.type != "cpu" else ""
                )
                raise ResolveError(
                    f"out of {opts.device.type} memory even with {cur[0]}x{cur[1]} px tiles "
                    f"(overlap {opts.overlap}); try {hint}"
                ) from None
            if not warned:
                warnings.warn(
                    f"out of {opts.device.type} memory with {cur[0]}x{cur[1]} px tiles; "
                    f"retrying with smaller tiles ({new[0]}x{new[1]})",
                    RuntimeWarning,
                    stacklevel=3,
                )
                warned = True
            tile_hw = new
