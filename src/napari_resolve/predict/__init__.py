"""Tiled super-resolution inference: NumPy and dask, any size, any device.

The engine (issue 4) follows the whole-slide procedure of paper 002 (PathSRGAN,
§IV.D "Super Resolution of WSIs"): the LR image is split into overlapping
tiles ("the redundancy corresponded to 64 pixels"), each tile is
super-resolved, and the redundant regions of neighbouring tiles are "weighted
and summed based on the distance to the center line".

>>> from napari_resolve.predict import predict
>>> result = predict("gp-x4", image)                # a pretrained name, a file,
>>> result.image, result.labels                      # a (model, meta) tuple or a model

Tiling (choices the paper leaves open)
--------------------------------------
* ``tile`` is the LR side of a tile. Default on the CPU: the largest tile
  whose forward fits half the memory available now (:func:`~napari_resolve.
  predict.tiling.memory_tile`: peak = 10 x the widest activation, probed once
  per architecture), so an ordinary image (a 640 x 480 smear) is one tile
  and pays no overlap. The budget is an area (:func:`~napari_resolve.predict.
  tiling.fit_tile`): a plane that fits it is one piece whatever its aspect,
  a larger one is cut in full-height or full-width strips where its short
  side fits, else in squares. Never below the old default (about 1024 SR px
  per side, at least 4 x overlap), which stays the GPU default (2048 SR px).
  Chunks of :func:`predict_dask` share the memory between workers.
  ``tile=0`` runs the whole image in one piece.
  Tile sides are snapped down to ``model.size_multiple``; tiles are spread
  evenly over the image (all the same size, so they batch), tile origins sit
  on multiples of ``size_multiple`` (so U-Nets see the same pooling grid as
  on the whole image) and the last tile is shifted inside the image instead
  of padded. An image no larger than one tile is run in one piece.
* ``overlap`` is the context in LR px that each tile reaches beyond its border
  with a neighbour (the depth of :func:`dask.array.map_overlap`), so
  neighbouring tiles share ``2 * overlap`` px. Default: the model's
  ``receptive_field`` (at least 8) for models without global operations,
  which makes tiling exact; 32 for models with global operations or an
  unknown receptive field, i.e. neighbouring tiles share paper 002's 64 px.
  ``tile`` must exceed ``2 * overlap``.
* Blending: in the band shared by two tiles each tile first drops a margin
  ``m`` next to its own edge (``m = min(receptive_field, overlap)``, or
  ``overlap // 2`` when the receptive field is unknown: those pixels saw the
  tile's zero padding), then its weight rises linearly from 0 to 1 across the
  rest of the band, centred on the band's centre line, so the weights of the
  two tiles sum to one. Image borders are not down-weighted: a tile edge on
  the image border has weight 1 up to the edge. For a model without global
  operations and ``overlap >= receptive_field``, tiled == untiled (< 1e-4;
  tested for tile sizes that do not divide the image).
* Models with global operations (FFT channel attention in MHTCUN's FCABs and
  DFCAN, global pooling) see different statistics in each tile, so tiled and
  untiled results differ. Measured with random weights on a 104² LR image in
  80-px tiles (``benchmarks/predict.py``, ``docs/benchmarks.md``): max
  difference 8e-6 (DFCAN) and 4e-8 (MHTCUN-lite) in the [0, 1] scale; trained
  weights may be more sensitive. ``tile=0`` gives the untiled result.

Data
----
* ``image``: 2-D grey (H, W); colour (H, W, 3) (a last axis of 3 is colour
  unless ``channel_axis`` says otherwise); stacks (Z, H, W) or (Z, H, W, C),
  run plane by plane (tiles of all planes are batched together). Any real
  dtype. 5-D and higher are refused.
* A single-channel model on an RGB image: Y of YCbCr (MATLAB ``rgb2ycbcr``)
  through the network, Cb and Cr upsampled with MATLAB bicubic, back to RGB
  (paper 000 §3.1). ``ycbcr_to_rgb`` clips RGB to [0, 1] in the normalised
  scale.
* Intensities go through the bundle's ``normalization`` and back with the
  same fitted parameters (:func:`~napari_resolve.data.normalize.to_model_scale`
  / :func:`~napari_resolve.data.normalize.from_model_scale`, fitted on the
  whole image or stack, by the data for every type but uint8), so
  ``result.image`` is on the input's intensity scale: float32 (float64 for
  float64 and 32/64-bit integer inputs), clipped to an integer input's range
  (unsigned stays >= 0, signed keeps its sign); float inputs are not clipped.
  ``"match-lr"`` bundles (fluorescence) also fit one gain / offset so that
  the SR shrunk back matches the input (``result.meta["predict"]["intensity"]``;
  the lazy paths fit it once on a centre crop).
* Tiny images: sides below 4 px are refused (nothing to super-resolve; a
  1-px axis is usually a wrong axis order); sides from 4 to 15 px are padded
  (mirror, on both sides, centred) to 16 px and the output cropped back; a
  model with a ``pad_to`` attribute (GP with the LR prior: 7) is padded only
  below that, as it pads small inputs itself.
* ``prior``: a parsing map at SR size, labels (0 background, 1 cytoplasm,
  2 nucleus) (sH, sW) or (Z, sH, sW), or one-hot (3, sH, sW) / (Z, 3, sH, sW),
  cut into tiles with the image (only for models that predict a parsing map).
* ``result.labels``: argmax of the blended ``"parsing"`` logits (uint8 at SR
  size) for models that predict one, else None. ``result.extras`` (only with
  ``extras=True``): the model's other outputs (``"mr"``, ``"stages"``...),
  tiled like ``"sr"``, in the input's layout; on the input's intensity scale
  when their channels match the input's, else as the network gives them
  (normalised; e.g. the Y channel of an RGB image).

Device: ``"auto"`` = CUDA, then Apple MPS, then CPU. AMP (bfloat16 where
supported, else float16) is on by default on CUDA only (``amp=False`` turns
it off). When a tile does not fit in GPU memory the cache is emptied, the
tile is halved and the pass restarts (one warning, never a crash, until the
tile would be smaller than ``2 * overlap + size_multiple``).

Runtime and threads: each tile runs through a backend of
:mod:`napari_resolve.runtime` (``backend="auto"``: the fastest installed CPU
runtime for this model, measured once; eager PyTorch on GPUs, with priors or
extras, and when no extra is installed) with the thread count of
:mod:`napari_resolve.threads` (the cores free now; ``threads=N`` overrides).
``result.meta["predict"]`` records the backend and threads used. A
``model_or_bundle`` ending in ``.onnx`` is an ONNX file exported by
:func:`napari_resolve.runtime.onnx.export_onnx` (onnxruntime).

Long work: :func:`predict_iter` is a generator yielding :class:`Progress`
and returning :class:`PredictResult`; stop iterating (or ``.close()``) to
cancel: nothing is returned and nothing was written. Each batch of tiles runs
on a worker thread while the generator reports progress at least every
second (``fraction``, ``eta_s``, ``message``), and cancelling stops the
running tile inside (eager: at the next layer; onnxruntime: ``terminate``;
OpenVINO: ``cancel``). :func:`predict` runs it
to the end. Large data: :func:`predict_dask` (lazy, chunk by chunk with
``overlap`` halo, the model loaded once per worker) and
:func:`predict_to_zarr` (OME-Zarr written atomically).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from napari_resolve._generators import run_to_end
from napari_resolve.data.normalize import output_dtype
from napari_resolve.errors import InputError
from napari_resolve.predict.engine import (  # noqa: F401  (re-exported)
    PredictResult,
    Progress,
    _amp_dtype,
    _engine,
    _flatten_outputs,
    _is_oom,
    _Opts,
    _resolve_opts,
    _run_model,
    _tiles_iter,
    apply_whole_image_stage,
    choose_device,
    resolve_model,
    whole_image_stage,
)
from napari_resolve.predict.tiling import (  # noqa: F401  (re-exported)
    CPU_SR_SIDE,
    GLOBAL_OVERLAP,
    GPU_SR_SIDE,
    MIN_OVERLAP,
    MIN_SIZE,
    PAD_TO,
    _profile,
    _ramp,
    _snap_down,
    _snap_up,
    default_overlap,
    default_tile,
    fit_tile,
    tile_plan,
)

__all__ = [
    "Progress",
    "PredictResult",
    "predict_iter",
    "predict",
    "predict_dask",
    "predict_to_zarr",
    "resolve_model",
    "choose_device",
    "default_tile",
    "fit_tile",
    "default_overlap",
    "tile_plan",
]


# ----------------------------------------------------------------------------- input layout


@dataclass(frozen=True)
class _Layout:
    """How the user's array maps to (Z, C, H, W) planes."""

    shape: tuple
    stack: bool  # a leading Z axis
    channels: int  # C of the image (1 when it has no channel axis)
    channel_axis: int | None  # axis of C in the user's array (None: none)
    via_y: bool  # RGB image through a 1-channel model (Y of YCbCr)

    @property
    def hw(self):
        if self.channel_axis is None:
            return tuple(self.shape[-2:])
        rest = [s for a, s in enumerate(self.shape) if a != self.channel_axis]
        return tuple(rest[-2:])

    @property
    def z(self):
        if not self.stack:
            return 1
        return self.shape[0] if self.channel_axis != 0 else self.shape[1]


def _check_dtype(dtype) -> None:
    dtype = np.dtype(dtype)
    if (
        dtype.kind == "b"
        or not np.issubdtype(dtype, np.number)
        or np.issubdtype(dtype, np.complexfloating)
    ):
        raise InputError(f"image must be a real numeric array, got dtype {dtype}")


def _layout(shape, dtype, channel_axis, model, *, guess: bool = True) -> _Layout:
    """Classify the array; ``guess=False``: no channel axis unless ``channel_axis`` says so."""
    _check_dtype(dtype)
    shape = tuple(int(s) for s in shape)
    ndim = len(shape)
    if ndim < 2:
        raise InputError(f"image must be 2-D (H, W) or more, got shape {shape}")
    if ndim > 4:
        raise InputError(
            f"image has {ndim} dimensions {shape}; napari-resolve takes (H, W), (H, W, C), "
            "(Z, H, W) or (Z, H, W, C): run time points or other axes one by one"
        )
    if 0 in shape:
        raise InputError(f"image is empty (shape {shape})")
    if channel_axis is not None:
        try:
            channel_axis = int(channel_axis) % ndim
        except (TypeError, ValueError):
            raise InputError(f"channel_axis must be an integer, got {channel_axis!r}") from None
        if ndim == 2:
            raise InputError(f"a 2-D image {shape} has no channel axis {channel_axis}")
        if channel_axis not in (0, ndim - 1):
            raise InputError(f"channel_axis must be the first or last axis, got {channel_axis}")
    elif ndim == 4:
        channel_axis = 3
    elif guess and ndim == 3 and shape[-1] in (1, 3, 4):
        channel_axis = 2  # (H, W, 3) colour, as napari guesses rgb
    stack = (ndim - (channel_axis is not None)) == 3
    channels = shape[channel_axis] if channel_axis is not None else 1
    inc = int(model.in_channels)
    via_y = False
    if channels != inc:
        if inc == 1 and channels == 3:
            via_y = True
        elif channels == 4:
            raise InputError(
                f"image has 4 channels (RGBA?) on axis {channel_axis}; drop the alpha channel "
                f"(the model takes {inc})"
            )
        else:
            what = "RGB (3 channels)" if inc == 3 else f"{inc} channel(s)"
            raise InputError(
                f"model {model.arch or type(model).__name__} expects {what}, "
                f"the image has {channels} (shape {shape})"
            )
    lay = _Layout(shape, stack, channels, channel_axis, via_y)
    h, w = lay.hw
    if min(h, w) < MIN_SIZE:
        raise InputError(
            f"image is {h}x{w} px; the smallest image napari-resolve super-resolves is "
            f"{MIN_SIZE}x{MIN_SIZE} px (is an axis in the wrong place?)"
        )
    return lay


def _to_zhwc(arr: np.ndarray, lay: _Layout) -> np.ndarray:
    """User array -> (Z, H, W, C)."""
    if lay.channel_axis is None:
        arr = arr[..., None]
    elif lay.channel_axis != arr.ndim - 1:
        arr = np.moveaxis(arr, lay.channel_axis, -1)
    if not lay.stack:
        arr = arr[None]
    return arr


def _from_zhwc(arr: np.ndarray, lay: _Layout) -> np.ndarray:
    """(Z, H', W', C') -> the user's layout (no channel axis when the input had none)."""
    if not lay.stack:
        arr = arr[0]
    if lay.channel_axis is None:
        return arr[..., 0]
    if lay.channel_axis != len(lay.shape) - 1:
        arr = np.moveaxis(arr, -1, lay.channel_axis)  # channel axis is first or last
    return arr


def _check_finite(arr: np.ndarray) -> None:
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        raise InputError("image contains NaN or infinite values")


def _prepare_prior(prior, lay: _Layout, model) -> np.ndarray | None:
    """Validate a parsing prior; return (Z, sH, sW) int64 labels or (Z, 3, sH, sW) float32."""
    if prior is None:
        return None
    if not getattr(model, "predicts_parsing", False):
        raise InputError(
            f"model {model.arch or type(model).__name__} takes no parsing prior "
            "(only geometry-prior models such as 'gp' do)"
        )
    p = np.asarray(prior)
    s = int(model.scale)
    h, w = lay.hw
    sr_hw = (s * h, s * w)
    z = lay.z
    if p.dtype == bool or not np.issubdtype(p.dtype, np.number):
        raise InputError(f"prior must be numeric labels 0..2 or one-hot, got dtype {p.dtype}")
    onehot = None
    if p.ndim == 2:
        onehot = False
    elif p.ndim == 3:
        if lay.stack and p.shape[0] == z:
            onehot = False
        elif p.shape[0] == 3:
            onehot = True
    elif p.ndim == 4 and lay.stack and p.shape[0] == z and p.shape[1] == 3:
        onehot = True
    if onehot is None or tuple(p.shape[-2:]) != sr_hw:
        want = f"{sr_hw}" if not lay.stack else f"({z}, {sr_hw[0]}, {sr_hw[1]})"
        hint = (
            f" (that is the LR size: upsample it x{s}, nearest)"
            if tuple(p.shape[-2:]) == (h, w)
            else ""
        )
        raise InputError(
            f"prior must be labels at the SR size {want} or one-hot with 3 classes, "
            f"got shape {p.shape}{hint}"
        )
    if np.issubdtype(p.dtype, np.floating) and not np.isfinite(p).all():
        raise InputError("prior contains NaN or infinite values")
    if onehot:
        if p.min() < 0 or p.max() > 1:
            raise InputError(f"one-hot prior values must lie in [0, 1], got {p.min()}..{p.max()}")
        out = p.astype(np.float32)
        return out[None] if out.ndim == 3 else out
    if np.issubdtype(p.dtype, np.floating) and not np.array_equal(p, np.round(p)):
        raise InputError(
            "prior labels must be whole numbers 0 (background), 1 (cytoplasm), 2 (nucleus)"
        )
    if p.min() < 0 or p.max() > 2:
        raise InputError(
            "prior labels must be 0 (background), 1 (cytoplasm) or 2 (nucleus), "
            f"got {p.min()}..{p.max()}"
        )
    out = p.astype(np.int64)
    if out.ndim == 2:
        out = np.broadcast_to(out, (z, *sr_hw))
    return out


def _prepare(model, meta, image: np.ndarray, lay: _Layout, norm):
    """Normalise; return (planes (Z, C, H, W) float32, pad (top, bottom, left, right), chroma
    or None)."""
    from napari_resolve.data.normalize import Normalizer

    if norm is None:
        norm = Normalizer.from_meta(meta.get("normalization")).fit(image)
    zhwc = _to_zhwc(image, lay)
    x = norm.forward(zhwc)
    chroma = None
    if lay.via_y:
        from napari_resolve.data.color import rgb_to_ycbcr

        ycc = rgb_to_ycbcr(x.astype(np.float32))
        chroma = ycc[..., 1:]
        x = ycc[..., :1]
    planes = np.ascontiguousarray(np.moveaxis(x, -1, 1), dtype=np.float32)
    h, w = planes.shape[-2:]
    pad_to = int(getattr(model, "pad_to", PAD_TO))  # a model that pads small inputs itself says so
    ph, pw = max(pad_to - h, 0), max(pad_to - w, 0)
    pad = (ph // 2, ph - ph // 2, pw // 2, pw - pw // 2)  # top, bottom, left, right
    if ph or pw:
        # tiny image: mirror-padded on all sides, centred, so that every network's size
        # rules work and each edge sees the same context (MATLAB imresize's own boundary
        # rule; one-sided padding gave GP's prior an off-centre reflection of ×8 cells)
        planes = np.pad(planes, ((0, 0), (0, 0), pad[:2], pad[2:]), mode="symmetric")
    return planes, pad, chroma, norm


def _finish(model, outputs: dict, lay: _Layout, pad, chroma, norm, image_dtype, want_extras):
    """Crop padding, undo colour / normalisation, return (image, labels, extras)."""
    from napari_resolve.data.degrade import imresize

    s = int(model.scale)
    h, w = lay.hw
    top, left = pad[0], pad[2]

    def crop(arr, f):
        return arr[..., f * top : f * (top + h), f * left : f * (left + w)]

    sr = crop(outputs["sr"], s)  # (Z, C, sH, sW) normalised
    sr = norm.adjust(np.moveaxis(sr, 1, -1))  # (Z, sH, sW, C); "match-lr" level, network space
    if lay.via_y:
        from napari_resolve.data.color import ycbcr_to_rgb

        cbcr = imresize(chroma, s, channel_axis=-1)  # (Z, sH, sW, 2), MATLAB bicubic
        sr = ycbcr_to_rgb(np.concatenate([sr, cbcr.astype(np.float32)], axis=-1).astype(np.float32))
    image = norm.restore(sr, image_dtype)  # data/normalize.from_model_scale without adjust
    image = _from_zhwc(image, lay)
    labels = None
    if "parsing" in outputs:
        parsing = crop(outputs["parsing"], s)
        labels = np.argmax(parsing, axis=1).astype(np.uint8)
        labels = labels if lay.stack else labels[0]
    extras = {}
    if want_extras:
        net_channels = outputs["sr"].shape[1]
        for key, arr in outputs.items():
            if key in ("sr", "parsing"):
                continue
            f = arr.shape[-1] // (w + pad[2] + pad[3])
            a = np.moveaxis(crop(arr, f), 1, -1)
            if a.shape[-1] == lay.channels and not lay.via_y and a.shape[-1] == net_channels:
                a = norm.restore(norm.adjust(a), image_dtype)
            a = np.asarray(a, dtype=output_dtype(image_dtype))
            if a.shape[-1] == lay.channels and not lay.via_y:
                a = _from_zhwc(a, lay)
            else:  # e.g. Y only for an RGB image
                a = a if lay.stack else a[0]
                a = a[..., 0] if a.shape[-1] == 1 else a
            name, _, idx = key.partition("/")
            if idx:
                extras.setdefault(name, []).append(a)
            else:
                extras[name] = a
    return image, labels, extras


def predict_iter(
    model_or_bundle,
    image,
    *,
    tile=None,
    overlap=None,
    batch=None,
    device="auto",
    amp=None,
    prior=None,
    channel_axis=None,
    extras=False,
    backend="auto",
    threads=None,
    background_removal=True,
    _norm=None,
    _restore_mode=True,
):
    """Super-resolve ``image``; a generator of :class:`Progress` returning :class:`PredictResult`.

    Parameters
    ----------
    model_or_bundle : str, Path, (model, meta) or SRModel
        Pretrained name, ``.safetensors`` file, loaded bundle, or a model
        (its metadata then comes from :func:`bundle.default_meta`).
    image : array
        (H, W), (H, W, 3), (Z, H, W) or (Z, H, W, C), any real dtype.
    tile, overlap : int, optional
        LR tile side (0 = one piece) and per-side context; defaults in the
        module docstring. ``tile`` must exceed ``2 * overlap``.
    batch : int, optional
        Tiles per forward pass (default 1 on the CPU, 4 on a GPU).
    device, amp
        ``"auto"`` / ``"cpu"`` / ``"cuda"`` / ``"mps"``; AMP on CUDA by default.
    prior : array, optional
        Parsing map at the SR size (labels 0..2 or one-hot), for ``gp``.
    channel_axis : int, optional
        Colour axis when it is not the last one (or for a 3-D stack of 3).
    extras : bool
        Also return the model's other outputs (``"mr"``, ``"stages"``).
    backend : str
        ``"auto"`` (default), ``"eager"``, ``"onnxruntime"``, ``"openvino"``
        or ``"compile"`` (:mod:`napari_resolve.runtime`).
    threads : int, optional
        CPU threads (default: the cores free now, :mod:`napari_resolve.threads`).
    background_removal : bool
        Apply the model's out-of-focus background-removal stage, if it has one (the x4
        fluorescence bundles, :class:`~napari_resolve.models.blocks.HazeRemoval`); it
        runs once on the whole stitched image. False leaves it out (thin samples).

    Inputs are checked (one :class:`~napari_resolve.errors.InputError` naming
    the problem) at the first ``next()``, before any tile runs. Stop
    iterating (or ``close()``) to cancel; the model's train/eval mode is
    restored either way. After a GPU out-of-memory retry the progress starts
    again from 0 with the new total.
    """
    model, meta = resolve_model(model_or_bundle)
    if not isinstance(background_removal, (bool, np.bool_)):
        raise InputError(f"background_removal must be True or False, got {background_removal!r}")
    if hasattr(image, "compute") and not isinstance(image, np.ndarray):
        raise InputError("image is a lazy (dask) array: use predict_dask or predict_to_zarr")
    try:
        arr = np.asarray(image)
    except Exception as exc:  # ragged lists and the like
        raise InputError(f"image cannot be read as an array: {exc}") from None
    lay = _layout(arr.shape, arr.dtype, channel_axis, model)
    _check_finite(arr)
    prior_arr = _prepare_prior(prior, lay, model)
    opts = _resolve_opts(model, tile, overlap, batch, device, amp, backend, threads)
    planes, pad, chroma, norm = _prepare(model, meta, arr, lay, _norm)
    if prior_arr is not None and any(pad):
        s = int(model.scale)
        widths = [(0, 0)] * (prior_arr.ndim - 2) + [(s * pad[0], s * pad[1]), (s * pad[2], s * pad[3])]
        prior_arr = np.pad(prior_arr, widths, mode="edge")

    was_training = model.training
    model.eval()
    model.to(opts.device)
    try:
        tiles_model, stage = whole_image_stage(model)
        runner, backend_used = yield from _make_runner(
            tiles_model, planes, prior_arr is not None, extras, opts
        )
        rate_hint = _rate_hint(tiles_model, backend_used, opts)
        outputs, tile_used = yield from _engine(
            tiles_model, planes, prior_arr, opts, extras, runner, rate_hint
        )
        if not background_removal:
            stage = None
        outputs = apply_whole_image_stage(stage, outputs)
    finally:
        if _restore_mode and was_training:
            model.train()
    if norm.matches_lr:  # "match-lr": one gain / offset so that the SR shrunk back ~ the input
        h, w = lay.hw
        s = int(model.scale)
        top, left = pad[0], pad[2]
        norm = norm.fit_output(outputs["sr"][..., s * top : s * (top + h), s * left : s * (left + w)],
                               planes[..., top : top + h, left : left + w], s)
    image_out, labels, extra_out = _finish(
        model, outputs, lay, pad, chroma, norm, arr.dtype, extras
    )
    run_meta = dict(meta)
    run_meta["predict"] = {
        "tile": list(tile_used) if tile_used[0] < (1 << 30) else None,
        "overlap": opts.overlap,
        "batch": opts.batch,
        "device": str(opts.device),
        "amp": str(opts.amp_dtype).replace("torch.", "") if opts.amp_dtype is not None else None,
        "via_y": lay.via_y,
        "backend": backend_used,
        "threads": opts.threads,
        "background_removal": None if stage is None else {"sigma_hr_px": stage.sigma,
                                                          "weight": stage.weight},
        "intensity": None if norm.out_gain is None else {
            "gain": norm.out_gain, "offset": norm.out_offset},
    }
    return PredictResult(image_out, labels, extra_out, run_meta)


def _rate_hint(model, backend: str, opts) -> float | None:
    """Seconds per LR pixel expected (last run of this model, else its calibration)."""
    from napari_resolve import runtime
    from napari_resolve.predict import engine

    try:
        seen = engine.RATES.get(model, {}).get(backend)
    except TypeError:
        seen = None
    if seen or opts.device.type != "cpu":
        return seen
    return runtime.calibration_rate(model, backend, opts.threads)


def _make_runner(model, planes, has_prior: bool, extras: bool, opts):
    """Apply the thread rule and build the runner of the backend this job gets.

    Generator: choosing may export the model and time the runtimes once
    (``runtime.calibrate``, seconds to a minute); that runs on a worker thread
    while ``Progress(0, 1, "runtime")`` events keep coming. Returns
    ``(runner, backend name)``.
    """
    import threading

    from napari_resolve import runtime
    from napari_resolve import threads as thread_rule
    from napari_resolve.predict import engine

    if opts.device.type == "cpu":
        opts.threads = thread_rule.apply(opts.threads)
    z, h, w = int(planes.shape[0]), int(planes.shape[-2]), int(planes.shape[-1])
    sr_px = z * h * w * int(model.scale) ** 2
    box: dict = {}

    def work():
        try:
            name = runtime.select(model, opts.backend, opts.device, sr_px=sr_px,
                                  prior=has_prior, extras=extras, threads=opts.threads)
            box["out"] = (
                runtime.make_runner(model, name, opts.device, amp_dtype=opts.amp_dtype,
                                    threads=opts.threads),
                name,
            )
        except BaseException as exc:  # noqa: BLE001 - re-raised here
            box["err"] = exc

    # a daemon thread: a cancelled job does not wait for a calibration, which then
    # finishes in the background and is cached for the next run
    worker = threading.Thread(target=work, name="napari-resolve-runtime", daemon=True)
    worker.start()
    worker.join(engine.PROGRESS_EVERY_S)
    while worker.is_alive():
        yield Progress(0, 1, "runtime", None, None,
                       "preparing the fastest runtime for this model (once per model)")
        worker.join(engine.PROGRESS_EVERY_S)
    if "err" in box:
        raise box["err"]
    return box["out"]


def predict(model_or_bundle, image, *, progress=None, **kwargs) -> PredictResult:
    """Run :func:`predict_iter` to the end; ``progress(Progress)`` is called on each event."""
    return run_to_end(predict_iter(model_or_bundle, image, **kwargs), progress)


# dask / zarr (imports the helpers above, so it comes last)
from napari_resolve.predict.lazy import (  # noqa: E402, F401  (re-exported)
    _LOAD_COUNT,
    _SR_NAME,
    _WORKER_LOCK,
    _WORKER_MODELS,
    _axis_chunks,
    _ModelRef,
    _ngff_axes,
    _open_zarr,
    _predict_dask,
    _sr_block,
    fit_output_level,
    predict_dask,
    predict_to_zarr,
)
