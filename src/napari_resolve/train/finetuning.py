"""Fine-tuning on the user's own images, measured before and after (issue 8).

The piece shared by the napari *Fine-tune* widget, ``napari-resolve
finetune`` and ``benchmarks/finetune.py``; Qt-free. It wraps
:func:`napari_resolve.train.finetune_iter` (the engine and the paper's
fine-tuning recipe, :func:`~napari_resolve.train.recipes.finetune_recipe`)
with what a fine-tuning *session* needs. The user's data, its checks, the
held-out validation set and the degradation of HR-only data are
:mod:`napari_resolve.train.finetune_data`; measuring a model on that set is
:mod:`napari_resolve.train.finetune_measure` (both re-exported here). A session:

* the user's data as :class:`TrainingImage` (arrays), in three forms:
  HR images only (self-supervised: the LR input is made with the bundle's
  degradation, :func:`self_supervised_degradation`), registered LR/HR pairs,
  or HR images with a parsing map (labels 0/1/2; paper 000 §2.3, for models
  that predict one), checked by :func:`check_images` with one-line messages;
* a validation set held back *without overlap* (:func:`hold_out`) or given;
* the base model measured on that validation set before training and the
  fine-tuned model after it (:func:`measure`): validation PSNR / SSIM as the
  engine computes them, and the decorrelation resolution (Descloux 2019, the
  estimate paper 003 §4.4 reports) of each super-resolved validation image;
* a time budget that excludes pauses, and a pause that holds training
  between two steps;
* the best bundle re-written (atomically) with the before/after figures.

Choices the papers leave open, made here (the data's are in
:mod:`~napari_resolve.train.finetune_data`):

* Validation crops: whole validation images when each is at most 256² HR px,
  else the engine's 256-px centre crop (validation runs after every epoch).
* The patch side is the recipe's, shrunk to the smallest training image.
* ``minutes`` counts training time only (not pauses, not the before/after
  measurement). With only ``minutes`` the epochs are unbounded; with neither
  ``minutes`` nor ``epochs`` the recipe's epochs run.
* The fine-tuned bundle's ``pixel_size`` is the user's LR pixel size when the
  data are calibrated, else the parent's.
"""

from __future__ import annotations

import math
import threading
import time
import traceback
from dataclasses import dataclass, field, replace

from napari_resolve import threads as _threads
from napari_resolve._generators import run_to_end
from napari_resolve.errors import InputError, ResolveError
from napari_resolve.train.events import TrainResult
from napari_resolve.train.finetune_data import (  # noqa: F401  (re-exported)
    FORMS, MIN_VAL_SIDE, WHOLE_VAL_AREA, TrainingImage, _cut, _lr_pixel_nm, _plane,
    check_images, hold_out, recorded_degradation, self_supervised_degradation,
)
from napari_resolve.train.finetune_measure import (  # noqa: F401  (re-exported)
    Measurement, _grey, _psnr_affine, _resolution, add_resolutions, measure,
    measure_references,
)

__all__ = [
    "FORMS",
    "FinetuneReport",
    "Measurement",
    "TrainingImage",
    "check_images",
    "finetune",
    "finetune_iter",
    "finetune_measured",
    "finetune_measured_iter",
    "hold_out",
    "measure",
    "add_resolutions",
    "measure_references",
    "recorded_degradation",
    "self_supervised_degradation",
    "validation_dataset",
]


# --------------------------------------------------------------------------- the session
@dataclass
class FinetuneReport:
    """What a session gave.

    ``result``: the engine's :class:`~napari_resolve.train.TrainResult` (None
    when it failed before training); ``before`` / ``after``: the base and the
    fine-tuned model on the validation set; ``bundle``: the best model file
    (None when none was written); ``error``: a one-line message when the run
    failed (``traceback`` holds the details of a crash); ``val``: the
    validation images (their HR arrays, names and origins);
    ``val_crops``: (y0, x0, h, w) HR px of each validated crop within its image.
    """

    result: object = None
    before: Measurement | None = None
    after: Measurement | None = None
    bundle: object = None
    error: str | None = None
    traceback: str = ""
    warnings: list = field(default_factory=list)
    data: dict = field(default_factory=dict)
    val: list = field(default_factory=list, repr=False)
    val_crops: list = field(default_factory=list)
    degradation: dict | None = None
    stopped: str | None = None
    references: dict = field(default_factory=dict)

    @property
    def psnr_gain(self) -> float | None:
        if self.before is None or self.after is None:
            return None
        gain = self.after.psnr - self.before.psnr
        return gain if math.isfinite(gain) else None

    def table(self) -> str:
        """Before / after as a small text table (CLI, logs)."""
        if self.before is None:
            return ""
        rows = [("model", "val PSNR (dB)", "after intensity fit", "val SSIM",
                 f"resolution ({self.before.unit})")]
        for label, m in (("base", self.before), ("fine-tuned", self.after)):
            if m is None:
                continue
            res = m.resolution
            rows.append((label, f"{m.psnr:.2f}", f"{m.psnr_affine:.2f}", f"{m.ssim:.4f}",
                         "no peak" if res is None else f"{res:.4g}"))
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in
                           enumerate(zip(r, widths))) for r in rows]
        lines.insert(1, "-" * len(lines[0]))
        if self.psnr_gain is not None:
            lines.append(f"PSNR gain {self.psnr_gain:+.2f} dB")
        return "\n".join(lines)


def _val_crop(shape, s: int, val_patch):
    """(y0, x0, h, w) HR px that ``SRDataset`` validates (its centre-crop rule)."""
    H, W = shape[0] // s * s, shape[1] // s * s
    if not val_patch:
        return (0, 0, H, W)
    ps = min(int(val_patch) // s * s, H, W) // s * s
    return ((H - ps) // 2 // s * s, (W - ps) // 2 // s * s, ps, ps)


def _dataset(images, scale, in_channels, normalization, degradation, seed, patch_size=None):
    from napari_resolve.data.datasets import make_dataset

    data = {
        "hr": [im.hr for im in images],
        "lr": [im.lr for im in images] if images[0].lr is not None else None,
        "labels": [im.labels for im in images] if images[0].labels is not None else None,
    }
    ds = make_dataset(data, scale=scale, in_channels=in_channels, normalization=normalization,
                      degradation=degradation, patch_size=patch_size, seed=seed)
    ds.description = ", ".join(im.name for im in images)[:300]
    return ds


def validation_dataset(images, meta: dict, degradation: dict | None = None, seed: int = 0,
                       val_patch=None):
    """The validation samples a session measures on (for a caller's own comparisons).

    ``images``: :class:`TrainingImage` s; ``meta``: the base bundle's metadata
    (scale, channels, normalisation); ``degradation``: for HR-only images
    (default :func:`self_supervised_degradation`). The LR inputs (and their
    noise) are the ones :func:`finetune_measured_iter` validates with for the same seed.
    """
    deg = degradation or self_supervised_degradation(meta)
    ds = _dataset(list(images), int(meta["scale"]), int(meta.get("in_channels", 1)),
                  meta.get("normalization") or {"mode": "dtype"}, deg, seed)
    return ds.as_validation(val_patch)


def finetune_measured_iter(
    source,
    images,
    *,
    val_images=None,
    val_fraction: float = 0.2,
    epochs=None,
    minutes: float | None = None,
    max_steps: int | None = None,
    learning_rate: float | None = None,
    patch_size="recipe",
    batch_size: int | None = None,
    degradation: dict | None = None,
    output=None,
    device="auto",
    seed: int = 0,
    stop=None,
    pause=None,
    val_patch="auto",
    note: str = "",
    data_source=None,
    val_source=None,
    checkpoint_interval_s: float | None = 60.0,
    threads: int | None = None,
):
    """Fine-tune bundle ``source`` on ``images``; a generator of ``TrainEvent``, returns a report.

    ``images`` / ``val_images``: :class:`TrainingImage` lists (without
    ``val_images``, :func:`hold_out` with ``val_fraction``). ``stop`` /
    ``pause``: ``threading.Event`` (pause holds training between two steps).
    ``degradation``: overrides :func:`self_supervised_degradation` for HR-only
    data. ``data_source`` / ``val_source``: the paths the images came from,
    recorded in the resume state so that ``--resume`` alone continues.
    ``threads``: torch's CPU threads (default :func:`napari_resolve.threads.choose`,
    the cores free now). The other arguments are those of
    :func:`napari_resolve.train.train_iter`.
    Events: ``"info"`` messages, the engine's events (``eta_s`` from the time
    budget when one is given) and, right after the first step, an ``"epoch"``
    event at step 0 with the base model's validation metrics (measured then,
    so that the first step is not kept waiting). ``stop`` also acts *inside* a
    step (:func:`_stop_inside_steps`). User problems (and crashes) come back
    as :attr:`FinetuneReport.error`; the best bundle written so far stays.
    """
    from napari_resolve import bundle
    from napari_resolve.train import TrainEvent
    from napari_resolve.train.devices import _device

    report = FinetuneReport()
    step_box = [0]
    try:
        if minutes is not None and not float(minutes) > 0:
            raise InputError(f"minutes must be positive, got {minutes}")
        path = bundle.resolve(source)
        parent = path.stem if path.parent == bundle.pretrained_dir() else str(source)
        meta = bundle.read_meta(path)
        s, channels = int(meta["scale"]), int(meta.get("in_channels", 1))
        parsing = bool(meta.get("labels"))  # bundles of parsing models name their labels
        images, warnings = check_images(images, scale=s, in_channels=channels,
                                        predicts_parsing=parsing)
        if val_images:
            val_images, w2 = check_images(val_images, scale=s, in_channels=channels,
                                          predicts_parsing=parsing, what="validation")
            if (val_images[0].form == "pairs") != (images[0].form == "pairs"):
                raise InputError("validation and training data must both be LR/HR pairs or not")
            val_images = [replace(v, labels=None) for v in val_images]
            warnings += w2
            val_kind = "given"
        else:
            images, val_images = hold_out(images, val_fraction, s)
            val_kind = f"held out ({val_fraction:g})"
        report.warnings = warnings
        for w in warnings:
            yield TrainEvent(0, 0, None, "", {}, None, None, w, "info")
        form = images[0].form
        deg = degradation or self_supervised_degradation(meta)
        report.degradation = deg if form != "pairs" else None
        norm = meta.get("normalization") or {"mode": "dtype"}
        # the recipe's patch, shrunk to the smallest training image
        from napari_resolve.train import recipes as R

        rec = R.finetune_recipe(R.for_bundle(meta), learning_rate)
        ps = rec.patch_size if patch_size == "recipe" else patch_size
        smallest = min(min(im.hr.shape[:2]) for im in images) // s * s
        if ps is not None and int(ps) > smallest:
            yield TrainEvent(0, 0, None, "", {}, None, None,
                             f"patch size {ps} px is larger than the smallest training image; "
                             f"using {smallest} px", "info")
            ps = smallest
        if val_patch == "auto":
            val_patch = None if all(v.hr.shape[0] * v.hr.shape[1] <= WHOLE_VAL_AREA
                                    for v in val_images) else 256
        report.val = val_images
        report.val_crops = [_val_crop(v.hr.shape, s, val_patch) for v in val_images]
        px_nm = images[0].pixel_size_nm
        val_px = val_images[0].pixel_size_nm
        data_info = {
            "form": {"hr": "HR only (self-supervised)", "pairs": "LR/HR pairs",
                     "labels": "HR + parsing labels"}[form],
            "images": [im.describe() for im in images],
            "validation": {"kind": val_kind, "images": [v.describe() for v in val_images],
                           "crops": [list(c) for c in report.val_crops]},
            "degradation": report.degradation,
        }
        if note:
            data_info["note"] = note
        report.data = data_info
        val_ds = _dataset(val_images, s, channels, norm, deg, seed)
        dev = str(_device(device))
        used = _threads.apply(threads)

        def measure_base():
            # PSNR / SSIM only (the resolution estimates wait for the end of the run)
            base, _ = bundle.load(path)
            report.before = measure(base, val_ds.as_validation(val_patch), val_px, dev,
                                    resolution=False)
            return TrainEvent(0, 0, None, "base", {},
                              {"psnr": report.before.psnr, "ssim": report.before.ssim}, None,
                              "base model", "epoch")

        # the base model is measured after the first step, so that training starts at once
        yield TrainEvent(0, 0, None, "", {}, None, None,
                         f"starting ({used} CPU thread{'s' if used > 1 else ''}); the base model "
                         "is measured after the first step", "info")

        # ---- train (own time budget: pauses do not count)
        paused_s = [0.0]
        t0 = [time.monotonic()]
        budget_hit = [False]

        def active_s():
            return time.monotonic() - t0[0] - paused_s[0]

        def should_stop():
            if pause is not None and pause.is_set():
                p0 = time.monotonic()
                while pause.is_set() and not (stop is not None and _is_set(stop)):
                    time.sleep(0.05)
                paused_s[0] += time.monotonic() - p0
            if stop is not None and _is_set(stop):
                return True
            if minutes is not None and active_s() >= 60.0 * float(minutes):
                budget_hit[0] = True
                return True
            return False

        run_epochs = epochs if (epochs is not None or minutes is None) else 10**6
        lr_px = None
        if px_nm:
            lr_px = {"value": round(px_nm * s / 1000.0, 6), "unit": "µm"}
        train_ds = _dataset(images, s, channels, norm, deg, seed, ps)
        gen = finetune_iter(
            path, train_ds, val_data=val_ds, output=output, epochs=run_epochs,
            max_steps=max_steps, learning_rate=learning_rate, patch_size=ps,
            batch_size=batch_size, device=device, seed=seed, stop=should_stop,
            val_patch=val_patch, parent=parent, meta={"finetune": data_info},
            data_source=data_source, val_source=val_source,
            checkpoint_interval_s=checkpoint_interval_s,
            **({"degradation": deg} if form != "pairs" else {}),
            **({"pixel_size": lr_px} if lr_px else {}),
        )
        t0[0] = time.monotonic()
        with _stop_inside_steps(stop) as interrupt:
            while True:
                try:
                    interrupt.owner = threading.get_ident()
                    ev = next(gen)
                except StopIteration as done:
                    result = done.value
                    break
                step_box[0] = ev.step
                if budget_hit[0] and ev.message == "stopped by the user":
                    ev = replace(ev, message=f"time budget of {float(minutes):g} min spent")
                if minutes is not None:
                    left = max(0.0, 60.0 * float(minutes) - active_s())
                    eta = left if (ev.eta_s is None or epochs is None) else min(left, ev.eta_s)
                    ev = replace(ev, eta_s=eta, total_steps=ev.total_steps if epochs else None)
                yield ev
                if report.before is None and ev.kind == "step":
                    p0 = time.monotonic()
                    yield measure_base()
                    paused_s[0] += time.monotonic() - p0  # not training time
        if report.before is None:  # stopped (or failed) before the first step
            yield measure_base()
        if budget_hit[0] and result.stopped == "user":
            result.stopped, result.message = "time", f"time budget of {float(minutes):g} min spent"
        report.result, report.stopped = result, result.stopped
        report.bundle = result.bundle
        if result.stopped == "nan":
            report.error = result.message

        # ---- after
        yield TrainEvent(0, step_box[0], None, "", {}, None, 0.0,
                         "measuring the fine-tuned model on the validation images", "info")
        report.after = measure(result.model, val_ds.as_validation(val_patch), val_px, "cpu",
                               resolution=False)
        yield TrainEvent(0, step_box[0], None, "", {}, None, 0.0,
                         "estimating the resolution before and after", "info")
        add_resolutions(report.before, val_px)
        add_resolutions(report.after, val_px)
        report.references = measure_references(val_ds.as_validation(val_patch), val_px)
        if report.psnr_gain is not None and report.psnr_gain <= 0:
            # no step beat the base on the validation images: the engine kept the base
            # weights (keep_initial); a lower figure here comes from measuring differently
            note_ = (f"the fine-tuned model does not beat the base model on the validation "
                     f"images ({report.psnr_gain:+.2f} dB; the file then holds the base weights): "
                     "train longer, with a lower learning rate or more images")
            report.warnings.append(note_)
            yield TrainEvent(0, step_box[0], None, "", {}, None, 0.0, note_, "info")
        if result.bundle is not None:
            _write_figures(result, report)
        return report
    except ResolveError as exc:
        report.error = str(exc)
    except Exception as exc:  # a crash (a bug, out of memory): the message and the traceback
        report.error = _crash_message(exc, step_box[0], output)
        report.traceback = traceback.format_exc()
    from pathlib import Path

    if output is not None and Path(output).exists():
        report.bundle = Path(output)
    return report


class _stop_inside_steps:
    """While active, a set ``stop`` interrupts the training step in flight.

    The engine checks ``stop`` between steps; a step of a large model on a
    busy CPU can take a minute. A global forward hook (cheap: one flag test
    per module call) raises the engine's user-stop inside the forward pass,
    and a gradient hook on each module output does the same inside the
    backward pass; the engine then keeps the weights of the last whole step,
    validates and returns as for a stop between steps. Only modules in
    training mode on the thread that runs the session (``owner``) are
    affected: validation, measurements and other threads' predictions never.
    """

    def __init__(self, stop):
        self.stop = stop
        self.owner = None
        self._handle = None

    def _stopping(self, module) -> bool:
        return (module.training and self.stop is not None and _is_set(self.stop)
                and threading.get_ident() == self.owner)

    def _raise(self):
        from napari_resolve.train.interrupt import _Stop

        raise _Stop("user", "stopped by the user")

    def _hook(self, module, args, output):
        if self._stopping(module):
            self._raise()
        if module.training and threading.get_ident() == self.owner:
            import torch

            if isinstance(output, torch.Tensor) and output.requires_grad:
                output.register_hook(self._grad_hook)

    def _grad_hook(self, grad):
        if self.stop is not None and _is_set(self.stop):
            self._raise()
        return None

    def __enter__(self):
        from torch.nn.modules.module import register_module_forward_hook

        if self.stop is not None:
            self._handle = register_module_forward_hook(self._hook)
        return self

    def __exit__(self, *exc):
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        return False


def _is_set(stop) -> bool:
    return stop.is_set() if isinstance(stop, threading.Event) else bool(stop())


def _crash_message(exc: BaseException, step: int, output) -> str:
    text = " ".join(str(exc).split())[:200] or type(exc).__name__
    msg = f"fine-tuning failed after {step} steps: {type(exc).__name__}: {text}"
    if "out of memory" in text.lower() or isinstance(exc, MemoryError):
        msg += " (choose a smaller patch size or batch size)"
    from pathlib import Path

    if output is not None and Path(output).exists():
        msg += f"; the best model so far is kept in {Path(output).name}"
    return msg


def _write_figures(result, report: FinetuneReport) -> None:
    """Add the before/after figures to the best bundle (atomic rewrite, same weights)."""
    from napari_resolve import bundle

    meta = bundle.read_meta(result.bundle)
    ft = dict(meta.get("finetune") or {})
    ft["before"] = report.before.to_dict()
    ft["after"] = report.after.to_dict()
    ft["references"] = report.references
    meta["finetune"] = ft
    metrics = dict(meta.get("metrics") or {})
    metrics["base_val_psnr"] = ft["before"]["val_psnr"]
    if report.psnr_gain is not None:
        metrics["psnr_gain_db"] = round(report.psnr_gain, 4)
    unit = report.after.unit
    for key, m in (("base", report.before), ("finetuned", report.after)):
        if m.resolution is not None:
            metrics[f"resolution_{key}_{unit}"] = round(m.resolution, 3)
    meta["metrics"] = metrics
    training = dict(meta.get("training") or {})
    training["stopped"] = result.stopped
    meta["training"] = training
    bundle.save(result.bundle, result.model, meta)


def finetune_measured(*args, callback=None, **kwargs) -> FinetuneReport:
    """Run :func:`finetune_measured_iter` to the end; ``callback(event)`` sees every event."""
    return run_to_end(finetune_measured_iter(*args, **kwargs), callback)


# --------------------------------------------------------------------------- from a bundle
def finetune_iter(source, data=None, *, recipe=None, learning_rate=None, **kwargs):
    """Fine-tune the bundle ``source`` (path or pretrained name); a generator as :func:`train_iter`.

    The model, its normalisation and its degradation come from the bundle
    (HR-only data is degraded the way the model was trained); the recipe is
    :func:`~napari_resolve.train.recipes.finetune_recipe` of the architecture's
    paper recipe unless given. The parent bundle is recorded in the metadata.
    """
    from napari_resolve import bundle
    from napari_resolve.train import recipes as R
    from napari_resolve.train.engine import train_iter

    model, meta = bundle.load(source)
    kwargs.setdefault("normalization", meta.get("normalization"))
    deg = recorded_degradation(meta)
    if deg is not None:
        kwargs.setdefault("degradation", deg)
    kwargs.setdefault("pixel_size", meta.get("pixel_size"))
    kwargs.setdefault("parent", str(source))
    kwargs.setdefault("keep_initial", True)  # a fine-tune never returns worse than its base
    rec = R.finetune_recipe(R.for_bundle(meta), learning_rate) if recipe is None else recipe
    return (
        yield from train_iter(
            model,
            data,
            recipe=rec,
            learning_rate=None if recipe is None else learning_rate,
            **kwargs,
        )
    )


def finetune(source, data=None, *, callback=None, **kwargs) -> TrainResult:
    """Run :func:`finetune_iter` to the end; ``callback(event)`` sees every event."""
    return run_to_end(finetune_iter(source, data, **kwargs), callback)
