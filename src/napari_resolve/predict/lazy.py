"""Large data: lazy dask prediction chunk by chunk and OME-Zarr output (issue 4)."""

from __future__ import annotations

import math
import threading
import uuid
from pathlib import Path

import numpy as np

from napari_resolve._generators import run_to_end
from napari_resolve.errors import BundleError, InputError
from napari_resolve.predict import _check_finite, _finish, _layout, _prepare
from napari_resolve.predict.engine import (
    Progress,
    _engine,
    _resolve_opts,
    apply_whole_image_stage,
    resolve_model,
    whole_image_stage,
)
from napari_resolve.predict.tiling import MIN_SIZE


def fit_output_level(model_meta, array, norm, *, channel_axis=None, stack=False, side=256, **opts):
    """``norm`` with its ``"match-lr"`` level fitted once on a centre crop of ``array``.

    For the region-by-region paths (:func:`predict_dask`, the slide command),
    which must apply one gain / offset to the whole image (a fit per region
    would leave seams). ``array``: NumPy or dask, channels last when
    ``channel_axis`` is given; ``stack``: the first axis is Z (the middle
    plane is used). Returns ``norm`` unchanged when it does not match levels.
    """
    import dataclasses

    from napari_resolve.predict import predict

    if not norm.matches_lr:
        return norm
    idx = [slice(None)] * array.ndim
    if stack:
        idx[0] = array.shape[0] // 2
    first = 1 if stack else 0
    for ax in (first, first + 1):
        n = array.shape[ax]
        c = min(n, side)
        idx[ax] = slice((n - c) // 2, (n - c) // 2 + c)
    crop = array[tuple(idx)]
    crop = np.asarray(crop.compute() if hasattr(crop, "compute") else crop)
    res = predict(model_meta, crop, _norm=norm,
                  channel_axis=(crop.ndim - 1) if channel_axis is not None else None, **opts)
    fit = res.meta["predict"]["intensity"]
    return dataclasses.replace(norm, out_gain=fit["gain"], out_offset=fit["offset"])


_SR_NAME = "napari-resolve-sr"
_WORKER_MODELS: dict = {}
_WORKER_LOCK = threading.Lock()
_LOAD_COUNT = {"n": 0}  # models loaded by workers (tests check "once per worker")


class _ModelRef:
    """A picklable handle to a model, loaded once per worker process.

    Bundles (paths, pretrained names) travel as their path only; an in-memory
    model travels once per pickled graph and is looked up by a token on the
    worker, so it is rebuilt at most once per process.
    """

    def __init__(self, token, path=None, payload=None):
        self.token = token
        self.path = path
        self.payload = payload

    @classmethod
    def for_model(cls, model_or_bundle, model, meta):
        from napari_resolve import bundle

        if isinstance(model_or_bundle, (str, Path)):
            try:
                path = bundle.resolve(model_or_bundle).resolve()
            except BundleError:
                path = None
            if path is not None and path.is_file():
                st = path.stat()
                ref = cls(("path", str(path), st.st_mtime_ns, st.st_size), path=str(path))
                with _WORKER_LOCK:
                    _WORKER_MODELS.setdefault(ref.token, (model, meta))
                return ref
        ref = cls(("obj", uuid.uuid4().hex), payload=(model, meta))
        with _WORKER_LOCK:
            _WORKER_MODELS[ref.token] = (model, meta)
        return ref

    def get(self):
        with _WORKER_LOCK:
            hit = _WORKER_MODELS.get(self.token)
            if hit is None:
                if self.path is not None:
                    from napari_resolve import bundle

                    hit = bundle.load(self.path)
                else:
                    hit = self.payload
                hit[0].eval()
                _WORKER_MODELS[self.token] = hit
                _LOAD_COUNT["n"] += 1
            return hit

    def __reduce__(self):
        if self.path is not None:
            return (_ModelRef, (self.token, self.path, None))
        return (_ModelRef, (self.token, None, self.get()))


def _sr_block(block, *, ref, norm, spatial, depth, scale, lay_kw, opts_kw, block_info=None):
    """One dask chunk (with halo) -> its SR chunk without halo."""
    model, meta = ref.get()
    info = block_info[0]
    loc, nchunks = info["chunk-location"], info["num-chunks"]
    block = np.asarray(block)
    lay = _layout(block.shape, block.dtype, lay_kw["channel_axis"], model, guess=False)
    _check_finite(block)
    planes, pad, chroma, _ = _prepare(model, meta, block, lay, norm)
    opts_kw = dict(opts_kw)
    backend = opts_kw.pop("backend", "eager")
    opts = _resolve_opts(model, **opts_kw)
    param = next(model.parameters(), None)
    if param is not None and param.device != opts.device:
        with _WORKER_LOCK:
            model.to(opts.device)
    from napari_resolve import runtime

    tiles_model, stage = whole_image_stage(model)  # a twin: the shared model keeps its stage
    runner = runtime.make_runner(tiles_model, backend, opts.device, amp_dtype=opts.amp_dtype,
                                 threads=opts.threads)
    outputs, _ = run_to_end(_engine(tiles_model, planes, None, opts, False, runner))
    outputs = apply_whole_image_stage(stage, outputs)
    image, _, _ = _finish(model, outputs, lay, pad, chroma, norm, block.dtype, False)
    index = [slice(None)] * image.ndim
    for ax in spatial:
        d = depth.get(ax, 0)
        lo = scale * d if (d and loc[ax] > 0) else 0
        hi = scale * d if (d and loc[ax] < nchunks[ax] - 1) else 0
        index[ax] = slice(lo, image.shape[ax] - hi)
    return np.ascontiguousarray(image[tuple(index)], dtype=np.float32)


def _axis_chunks(n: int, target: int, depth: int) -> tuple:
    """Regular chunks of about ``target`` whose last chunk is not thinner than ``depth``."""
    if n <= target:
        return (n,)
    lo = max(2 * depth, MIN_SIZE, target // 2)
    for c in range(target, lo - 1, -1):
        r = n % c
        if r == 0 or r >= max(depth, MIN_SIZE):
            return (c,) * (n // c) + ((r,) if r else ())
    c = target
    q, r = divmod(n, c)
    return (c,) * (q - 1) + (c + r,)


def predict_dask(
    array,
    model_or_bundle,
    *,
    tile=None,
    overlap=None,
    batch=None,
    device="auto",
    amp=None,
    channel_axis=None,
    chunks=None,
    backend="auto",
    threads=None,
):
    """Lazy SR of a dask (or NumPy) array, chunk by chunk with an ``overlap`` halo.

    Every chunk is grown by ``overlap`` LR px from its neighbours
    (:func:`dask.array.overlap.overlap`, no padding at the image border), run
    through the same tiled engine as :func:`predict`, and cropped back, so
    output chunks are ``scale`` x the input chunks; for local models with
    ``overlap >= receptive_field`` the result equals :func:`predict`.
    Spatial chunks are rechunked to ``chunks`` (default: kept when between
    ``2 * overlap`` and 1024 px, else 512) so that every chunk is at least the
    halo deep; colour is one chunk. Intensity normalisation is fitted once on
    the whole array (a strided subsample for percentiles), not per chunk.
    Returns a float32 dask array in the input's layout (no ``prior``: parsing
    priors are interactive, use :func:`predict`). NaN in a chunk raises
    :class:`~napari_resolve.errors.InputError` when that chunk is computed.
    """
    model, meta = resolve_model(model_or_bundle)
    return _predict_dask(
        array,
        model,
        meta,
        model_or_bundle,
        tile=tile,
        overlap=overlap,
        batch=batch,
        device=device,
        amp=amp,
        channel_axis=channel_axis,
        chunks=chunks,
        backend=backend,
        threads=threads,
    )


def thread_rule_workers() -> int:
    """Chunks dask may run at once here (its local schedulers use one per core)."""
    from napari_resolve import threads as thread_rule

    return thread_rule.usable_cores()


def _predict_dask(
    array, model, meta, source, *, tile, overlap, batch, device, amp, channel_axis, chunks,
    backend="auto", threads=None,
):
    import dask.array as da

    from napari_resolve.data.normalize import Normalizer

    if not isinstance(array, da.Array):
        arr_np = np.asarray(array)
        array = da.from_array(arr_np, chunks=arr_np.shape)
    lay = _layout(array.shape, array.dtype, channel_axis, model)
    opts = _resolve_opts(model, tile, overlap, batch, device, amp, backend, threads,
                         share=thread_rule_workers())
    if lay.channel_axis is not None and lay.channel_axis != array.ndim - 1:
        array = da.moveaxis(array, lay.channel_axis, -1)
        lay = _layout(array.shape, array.dtype, array.ndim - 1, model)
        moved = True
    else:
        moved = False
    ndim = array.ndim
    spatial = (1, 2) if lay.stack else (0, 1)
    norm = Normalizer.from_meta(meta.get("normalization")).fit(array)
    norm = fit_output_level((model, meta), array, norm, channel_axis=lay.channel_axis,
                            stack=lay.stack, tile=tile, overlap=overlap, batch=batch,
                            device=device, amp=amp)
    ov = opts.overlap
    new_chunks = {}
    for ax in spatial:
        current = array.chunks[ax]
        if chunks is None:
            target = current[0] if (2 * ov <= current[0] <= 1024) else 512
        else:
            target = int(chunks)
        target = max(target, 2 * ov, MIN_SIZE)
        wanted = _axis_chunks(array.shape[ax], target, ov)
        new_chunks[ax] = wanted
    if lay.stack:
        new_chunks[0] = array.chunks[0]
    if lay.channel_axis is not None:
        new_chunks[ndim - 1] = (array.shape[-1],)
    array = array.rechunk(tuple(new_chunks[a] for a in range(ndim)))
    depth = {ax: (ov if len(array.chunks[ax]) > 1 else 0) for ax in spatial}
    halo = da.overlap.overlap(
        array,
        depth={a: depth.get(a, 0) for a in range(ndim)},
        boundary={a: "none" for a in range(ndim)},
    )
    s = int(model.scale)
    out_c = 3 if lay.via_y else lay.channels
    out_chunks = []
    for ax in range(ndim):
        if ax in spatial:
            out_chunks.append(tuple(s * c for c in array.chunks[ax]))
        elif lay.channel_axis is not None and ax == ndim - 1:
            out_chunks.append((out_c,))
        else:
            out_chunks.append(array.chunks[ax])
    ref = _ModelRef.for_model(source, model, meta)
    from napari_resolve import runtime
    from napari_resolve import threads as thread_rule

    if opts.device.type == "cpu":
        opts.threads = thread_rule.apply(opts.threads)
    sr_px = int(np.prod(array.shape)) // max(lay.channels, 1) * s * s
    backend_used = runtime.select(model, opts.backend, opts.device, sr_px=sr_px,
                                  threads=opts.threads)
    # tiles sized once for the whole graph, sharing the free memory between workers
    tile_kw = tile if tile is not None else int(opts.tile[0])
    opts_kw = {"tile": tile_kw, "overlap": ov, "batch": batch, "device": str(opts.device),
               "amp": amp, "backend": backend_used, "threads": opts.threads,
               "area_budget": opts.area_budget}
    result = da.map_blocks(
        _sr_block,
        halo,
        dtype=np.float32,
        chunks=tuple(out_chunks),
        meta=np.empty((0,) * ndim, dtype=np.float32),
        ref=ref,
        norm=norm,
        spatial=spatial,
        depth=depth,
        scale=s,
        lay_kw={"channel_axis": lay.channel_axis},
        opts_kw=opts_kw,
        name=f"{_SR_NAME}-{uuid.uuid4().hex[:12]}",
    )
    if moved:
        result = da.moveaxis(result, -1, channel_axis % ndim)
    return result


# ----------------------------------------------------------------------------- zarr / OME-Zarr


def _open_zarr(src):
    """(dask array, axes names or None, scale list or None, translation list or None, unit)."""
    import dask.array as da
    import zarr

    path = Path(src)
    if not path.exists():
        raise InputError(f"input not found: {path}")
    try:
        node = zarr.open(str(path), mode="r")
    except Exception as exc:
        raise InputError(
            f"{path.name} is not a zarr store: {' '.join(str(exc).split())[:160]}"
        ) from None
    axes = scale = translate = None
    unit = None
    if isinstance(node, zarr.Group):
        attrs = dict(node.attrs)
        ms = attrs.get("multiscales") or (attrs.get("ome") or {}).get("multiscales")
        if not ms:
            arrays = list(node.array_keys())
            if len(arrays) != 1:
                raise InputError(
                    f"{path.name} is a zarr group without OME-NGFF multiscales metadata"
                )
            node = node[arrays[0]]
        else:
            ms0 = ms[0]
            ds0 = ms0["datasets"][0]
            axes_meta = ms0.get("axes")
            if axes_meta:
                axes = [a["name"] if isinstance(a, dict) else str(a) for a in axes_meta]
                units = [
                    a.get("unit")
                    for a in axes_meta
                    if isinstance(a, dict) and a.get("type") == "space"
                ]
                unit = units[-1] if units else None
            for t in ds0.get("coordinateTransformations", []):
                if t.get("type") == "scale":
                    scale = list(t["scale"])
                elif t.get("type") == "translation":
                    translate = list(t["translation"])
            node = node[ds0["path"]]
    return da.from_zarr(node), axes, scale, translate, unit


def _ngff_axes(lay_stack: bool, channels: bool, unit):
    axes = []
    if channels:
        axes.append({"name": "c", "type": "channel"})
    if lay_stack:
        axes.append({"name": "z", "type": "space", **({"unit": unit} if unit else {})})
    for name in ("y", "x"):
        axes.append({"name": name, "type": "space", **({"unit": unit} if unit else {})})
    return axes


def predict_to_zarr(
    src,
    dst,
    model_or_bundle,
    *,
    tile=None,
    overlap=None,
    batch=None,
    device="auto",
    amp=None,
    channel_axis=None,
    chunks=None,
    backend="auto",
    threads=None,
    pixel_size=None,
    unit=None,
    overwrite=False,
    progress=None,
):
    """Super-resolve ``src`` (a zarr / OME-Zarr path, or a dask/NumPy array) into an OME-Zarr.

    The output is an OME-NGFF 0.4 image (zarr format 2, the version most
    readers support): a group with one level ``"0"`` (float32, channels first
    as NGFF requires) and ``multiscales`` metadata whose pixel size is the
    input's divided by the scale, shifted by ``-pixel * (1 - 1/s) / 2`` so
    that it covers the input's field exactly (docs/architecture.md,
    Geometry). The input's pixel size comes from its OME metadata, else
    ``pixel_size`` (number or (y, x)) and ``unit``, else 1 (input pixels).
    It is computed lazily chunk by chunk (:func:`predict_dask`) on the current
    dask scheduler (a ``dask.distributed`` client when one is active) into a
    temporary directory renamed onto ``dst`` at the end: an error or Ctrl-C
    leaves no partial output. ``progress(Progress)`` reports finished chunks
    (local schedulers only). Returns ``dst``.
    """
    import dask
    import dask.array as da
    import zarr

    from napari_resolve._atomic import atomic_path

    dst = Path(dst)
    if dst.exists() and not overwrite:
        raise InputError(f"output {dst} exists; pass overwrite=True (--overwrite) to replace it")
    in_scale = in_translate = None
    in_unit = unit
    if isinstance(src, (str, Path)):
        arr, axes, in_scale, in_translate, zunit = _open_zarr(src)
        in_unit = zunit or unit
        if axes and channel_axis is None and "c" in axes:
            channel_axis = axes.index("c")
        if axes and len(axes) != arr.ndim:
            axes = None
    else:
        arr, axes = src, None
        if not isinstance(arr, da.Array):
            arr = da.from_array(np.asarray(arr))
    model, meta = resolve_model(model_or_bundle)
    sr = _predict_dask(
        arr,
        model,
        meta,
        model_or_bundle,
        tile=tile,
        overlap=overlap,
        batch=batch,
        device=device,
        amp=amp,
        channel_axis=channel_axis,
        chunks=chunks,
        backend=backend,
        threads=threads,
    )
    lay = _layout(arr.shape, arr.dtype, channel_axis, model)
    s = int(model.scale)
    # NGFF order: c, z, y, x
    if lay.channel_axis is not None:
        sr_out = da.moveaxis(sr, lay.channel_axis, 0)
    else:
        sr_out = sr
    # spatial pixel size of the input (y, x) and its origin
    spatial_axes = [a for a in range(arr.ndim) if a != lay.channel_axis][-2:]
    if in_scale is not None and len(in_scale) == arr.ndim:
        py, px = (float(in_scale[a]) for a in spatial_axes)
        ty, tx = (float(in_translate[a]) for a in spatial_axes) if in_translate else (0.0, 0.0)
        pz = (
            float(in_scale[[a for a in range(arr.ndim) if a != lay.channel_axis][0]])
            if lay.stack
            else 1.0
        )
    else:
        if pixel_size is None:
            py = px = 1.0
        elif np.ndim(pixel_size) == 0:
            py = px = float(pixel_size)
        else:
            py, px = (float(v) for v in pixel_size)
        if not (py > 0 and px > 0 and math.isfinite(py) and math.isfinite(px)):
            raise InputError(f"pixel_size must be positive, got {pixel_size!r}")
        ty = tx = 0.0
        pz = 1.0
    out_scale = (
        ([1.0] if lay.channel_axis is not None else [])
        + ([pz] if lay.stack else [])
        + [py / s, px / s]
    )
    out_translate = (
        ([0.0] if lay.channel_axis is not None else [])
        + ([0.0] if lay.stack else [])
        + [ty - py * (1 - 1 / s) / 2, tx - px * (1 - 1 / s) / 2]
    )
    zchunks = tuple(c[0] for c in sr_out.chunks)
    sr_out = sr_out.rechunk(zchunks)  # regular chunks for zarr
    multiscales = [
        {
            "version": "0.4",
            "name": dst.stem,
            "axes": _ngff_axes(lay.stack, lay.channel_axis is not None, in_unit),
            "datasets": [
                {
                    "path": "0",
                    "coordinateTransformations": [
                        {"type": "scale", "scale": out_scale},
                        {"type": "translation", "translation": out_translate},
                    ],
                }
            ],
            "metadata": {
                "method": "napari-resolve predict",
                "model": meta.get("architecture"),
                "scale_factor": s,
            },
        }
    ]
    with atomic_path(dst) as tmp:
        root = zarr.open_group(str(tmp), mode="w", zarr_format=2)
        target = root.create_array(
            "0", shape=sr_out.shape, chunks=zchunks, dtype="float32", fill_value=0.0
        )
        root.attrs["multiscales"] = multiscales
        root.attrs["napari_resolve"] = {
            "model": meta.get("architecture"),
            "scale": s,
            "version": meta.get("version"),
        }
        store = da.store(sr_out, target, lock=False, compute=False)
        if progress is None:
            dask.compute(store)
        else:
            from dask.callbacks import Callback

            class _Count(Callback):  # finished dask tasks (local schedulers; fused graph)
                def _start_state(self, dsk, state):
                    self.total = max(len(dsk), 1)
                    self.done = 0
                    progress(Progress(0, self.total, "tasks"))

                def _posttask(self, key, result, dsk, state, worker_id):
                    self.done = min(self.done + 1, self.total)
                    progress(Progress(self.done, self.total, "tasks"))

            counter = _Count()
            with counter:
                dask.compute(store)
            if getattr(counter, "total", 0) and counter.done < counter.total:
                progress(Progress(counter.total, counter.total, "tasks"))
    return dst
