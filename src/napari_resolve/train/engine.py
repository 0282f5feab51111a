"""The training / fine-tuning engine: a generator of progress events.

``train_iter(...)`` yields :class:`TrainEvent` after every optimiser step
and every validation, and *returns* a :class:`TrainResult` (the value of
``StopIteration``, which ``napari.qt.threading.thread_worker`` emits as
``returned``). ``train(...)`` runs it to the end with an optional callback.

What it does, in order: build the model (or take one, or rebuild it from a
resume checkpoint), the datasets (:func:`napari_resolve.data.datasets.make_dataset`),
the recipe's phases (:mod:`napari_resolve.train.recipes`); then per phase,
per epoch, per batch: forward, the phase's loss terms, discriminator and
generator steps (Adam). After each epoch: validation PSNR / SSIM
(:mod:`napari_resolve.metrics.quality`, on the Y / grey channel, border of
``scale`` px cropped), the best weights written as a bundle
(:func:`napari_resolve.bundle.save`, atomic), and a resume checkpoint
(:mod:`napari_resolve.train.checkpoint`).

Stopping:

* ``stop`` (a ``threading.Event`` or a callable) is checked after every step;
  ``minutes`` and ``max_steps`` are budgets. The run then validates once
  more, keeps the best weights and returns with ``stopped`` set to ``"user"``,
  ``"time"`` or ``"steps"``.
* A non-finite loss or gradient stops before the optimiser step, so the
  weights are those of the last good step (``stopped="nan"``); the best
  bundle on disk is untouched and the checkpoint holds the last good state.
* Closing the generator (``worker.quit()``) leaves the last best bundle;
  everything is written atomically, so a killed process leaves nothing
  half-written.

Its parts: :mod:`~napari_resolve.train.events` (the events and the result),
:mod:`~napari_resolve.train.devices` (devices, torchrun, batches),
:mod:`~napari_resolve.train.objectives` (loss terms, discriminators,
optimisers, validation quality), :mod:`~napari_resolve.train.checkpoint`
(resume files), :mod:`~napari_resolve.train.run_data` (the run's datasets), :mod:`~napari_resolve.train.interrupt` (stop requests).
Fine-tuning a bundle (:func:`finetune_iter`) lives in
:mod:`~napari_resolve.train.finetuning` and is re-exported here.

Devices: ``device="auto"`` picks CUDA when available. On CUDA, automatic mixed
precision (bfloat16 when supported, else float16 with a gradient scaler).
Under ``torchrun`` (``WORLD_SIZE`` > 1) the engine joins the process group
(NCCL on CUDA, gloo on CPU), wraps the networks in
``DistributedDataParallel`` and gives each process every ``world``-th sample
of the epoch's order; ``batch_size`` is per process. Only rank 0 validates
and writes files.
"""

from __future__ import annotations

import datetime as _dt
import math
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from napari_resolve._generators import run_to_end
from napari_resolve.errors import InputError
from napari_resolve.train import checkpoint as ckpt
from napari_resolve.train import recipes as R
from napari_resolve.train.checkpoint import _json_num, _source_spec  # noqa: F401
from napari_resolve.train.devices import (  # noqa: F401  (re-exported)
    _all_max, _build_model, _device, _dist_setup, _epoch_batches, _finite_grads, _unwrap
)
from napari_resolve.train.events import TrainEvent, TrainResult
from napari_resolve.train.finetuning import (  # noqa: F401  (re-exported)
    finetune, finetune_iter, recorded_degradation
)
from napari_resolve.train.interrupt import _should_stop, _Stop  # noqa: F401
from napari_resolve.train.objectives import (  # noqa: F401  (re-exported)
    _auto_features, _disc_logits, _make_discriminator, _optimizer, _quality, _Terms, _validate
)
from napari_resolve.train.run_data import run_datasets

__all__ = ["TrainEvent", "TrainResult", "train_iter", "train", "finetune_iter", "finetune"]


def train_iter(
    model=None,
    data=None,
    *,
    config: dict | None = None,
    scale: int | None = None,
    in_channels: int | None = None,
    recipe=None,
    epochs=None,
    minutes: float | None = None,
    max_steps: int | None = None,
    batch_size: int | None = None,
    patch_size="recipe",
    patches_per_image: int | None = None,
    learning_rate: float | None = None,
    val_data=None,
    val_fraction: float = 0.1,
    val_patch: int | None = 256,
    output=None,
    resume=None,
    device="auto",
    amp: bool = True,
    seed: int = 0,
    workers: int = 0,
    normalization: dict | None = None,
    degradation: dict | None = None,
    pixel_size=None,
    parent=None,
    feature_extractor="auto",
    feature_steps: int = 200,
    task_model: nn.Module | None = None,
    stop=None,
    meta: dict | None = None,
    checkpoint_interval_s: float | None = 60.0,
    data_source=None,
    val_source=None,
    keep_initial: bool = False,
):
    """Train ``model`` on ``data`` with a paper's recipe; a generator (see the module docstring).

    Parameters
    ----------
    model : registry name (built with ``config``, ``scale``, ``in_channels``) or SRModel;
        None with ``resume`` rebuilds it from the checkpoint.
    data : folder, glob, file list, array(s), dict(hr=, lr=, labels=) or SRDataset
        (:func:`napari_resolve.data.datasets.make_dataset`).
    recipe : name, :class:`~napari_resolve.train.recipes.Recipe` or None (the
        architecture's paper recipe).
    epochs : None (paper), int (shared among phases) or one per phase.
    minutes, max_steps : budgets; the run stops cleanly when one is spent.
    batch_size, patch_size, learning_rate : override the recipe (``patch_size=None``:
        whole images).
    patches_per_image : samples per image per epoch (default: enough for 8
        batches per epoch with patches, 1 with whole images).
    val_data : validation images; else ``val_fraction`` of the images (at least 1).
    output : path of the best bundle (``.safetensors``); the resume checkpoint
        goes beside it (``.state.safetensors``). None: nothing is written.
    resume : a checkpoint (or the bundle beside it) to continue from.
    normalization, degradation : bundle-style dicts (default: dtype; MATLAB bicubic).
    pixel_size : LR pixel size for the bundle (e.g. ``{"value": 62.6, "unit": "nm"}``).
    parent : the bundle this run fine-tunes (recorded in the metadata).
    feature_extractor : a :class:`~napari_resolve.losses.FeatureExtractor`,
        ``"auto"`` (a :class:`~napari_resolve.losses.ConvEncoder` fitted on the
        training HR patches for ``feature_steps`` steps when a perceptual
        term is used) or None (perceptual terms left out).
    task_model : frozen task network for ``task`` terms (paper 002 §IV-E).
    stop : ``threading.Event`` or callable; set/true = stop after this step (the CLI
        sets it on Ctrl-C / SIGTERM: :class:`~napari_resolve.train.interrupt.StopOnSignal`);
        the run then validates, keeps the best model and writes the resume state.
    meta : extra bundle metadata.
    checkpoint_interval_s : also write the resume state at the first step boundary
        after this many seconds since the last one (None: only per epoch), so a
        killed run (SIGKILL, power cut) loses at most this much.
    data_source, val_source : paths (JSON-able, as ``data``) recorded in the resume
        state when ``data`` / ``val_data`` are in-memory datasets built from them,
        so that ``--resume`` alone finds the data again.
    keep_initial : validate the starting weights first and keep them as the best
        until a step beats them (fine-tuning: a base no step improves comes back).
    """
    from napari_resolve.data import datasets as D

    t_start = time.monotonic()
    started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    dev = _device(device)
    rank, world, dev, owned_pg = _dist_setup(dev)
    output = Path(output) if output is not None else None
    if output is not None and output.suffix.lower() != ".safetensors":
        raise InputError(f"output must be a .safetensors file, got {output.name}")
    if max_steps is not None and int(max_steps) < 1:
        raise InputError(f"max_steps must be >= 1, got {max_steps}")
    if val_fraction is not None and not 0.0 < float(val_fraction) < 1.0:
        raise InputError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    if int(workers) < 0:
        raise InputError(f"workers must be 0 or more, got {workers}")

    # ---- resume: the checkpoint decides architecture, recipe and position
    state_meta, parts = None, None
    if resume is not None:
        state_meta = ckpt.read_state_meta(resume)
        if model is None:  # shapes checked against the file before anything is allocated
            model = ckpt.build_model(resume, state_meta)
        state_meta, parts = ckpt.load_state(resume)
        if recipe is None:
            recipe = state_meta.get("recipe_name")
        if output is None:
            # beside the state the caller named, never the path stored in the file
            # (a crafted state must not choose where this run writes)
            sp = ckpt.state_path(resume)
            output = sp.with_name(sp.name[: -len(".state.safetensors")] + ".safetensors")
        seed = int(state_meta.get("seed", seed))
        run = state_meta.get("run") or {}
        # what the interrupted run used, unless given again
        data = run.get("data") if data is None else data
        val_data = run.get("val_data") if val_data is None else val_data
        normalization = normalization or run.get("normalization")
        degradation = degradation or run.get("degradation")
        pixel_size = pixel_size if pixel_size is not None else run.get("pixel_size")
        parent = parent if parent is not None else run.get("parent")
        batch_size = batch_size or run.get("batch_size")
        if patch_size == "recipe" and "patch_size" in run:
            patch_size = run["patch_size"]
        if patches_per_image is None:
            patches_per_image = run.get("patches_per_image")
        if epochs is None and minutes is None:  # the same length as the interrupted run
            epochs = run.get("epochs")
            if run.get("minutes") is not None:
                used = float((state_meta.get("training") or {}).get("time_s", 0.0))
                minutes = max(0.05, float(run["minutes"]) - used / 60.0)
    if model is None:
        raise InputError("give a model (registry name or model) or resume=")
    net = _build_model(model, config, scale, in_channels)
    if not any(p.requires_grad for p in net.parameters()):
        raise InputError(
            f"model {getattr(net, 'arch', '') or type(net).__name__} has no weights to train"
        )
    arch = getattr(net, "arch", "") or type(net).__name__.lower()
    if isinstance(recipe, str) and recipe.endswith("-finetune") and recipe not in R.RECIPES:
        rec = R.finetune_recipe(R.get(recipe[: -len("-finetune")]))
    else:
        rec = R.default_for(arch) if recipe is None else R.get(recipe)
    if learning_rate is not None:
        if not (float(learning_rate) > 0):
            raise InputError(f"learning rate must be positive, got {learning_rate}")
        rec = replace(rec, lr=float(learning_rate))
    bs = int(batch_size or rec.batch_size)
    if bs < 1:
        raise InputError(f"batch size must be >= 1, got {batch_size}")
    ps = rec.patch_size if patch_size == "recipe" else patch_size
    phase_plan = R.plan(rec, epochs, minutes)

    # ---- data
    train_ds, val_ds = run_datasets(
        data, val_data, scale=net.scale, in_channels=net.in_channels, normalization=normalization,
        degradation=degradation, patch_size=ps, seed=seed, batch_size=bs, world=world,
        patches_per_image=patches_per_image, val_patch=val_patch, val_fraction=val_fraction,
    )
    rgb_input = bool(train_ds._load(0)["rgb"])
    has_labels = train_ds.has_labels

    # ---- networks, state
    net = net.to(dev)
    discs: dict[str, nn.Module] = {}
    optimizers: dict[str, torch.optim.Optimizer] = {}
    history: list = []
    best = {"psnr": -math.inf}
    best_state = None
    step, phase_idx, epoch, batch_in_epoch, epoch_in_phase = 0, 0, 0, 0, 0
    phase_elapsed = 0.0
    pending_discs: dict = {}
    pending_opts = None
    opt_phase = -1
    kept_best = False  # resumed with a best bundle already written (by the interrupted run)
    if state_meta is not None:
        try:
            net.load_state_dict(parts["model"])
        except RuntimeError as exc:  # a state from another architecture or config
            raise InputError(f"{ckpt.state_path(resume).name} does not fit the model: "
                             f"{' '.join(str(exc).split())[:160]}") from None
        history = list(state_meta.get("history", []))
        best = dict(state_meta.get("best") or best)
        if best.get("psnr") is None:
            best["psnr"] = -math.inf
        kept_best = output is not None and best["psnr"] > -math.inf
        step = int(state_meta["step"])
        phase_idx = int(state_meta["phase_index"])
        epoch = int(state_meta["epoch"])
        epoch_in_phase = int(state_meta["epoch_in_phase"])
        batch_in_epoch = int(state_meta["batch_in_epoch"])
        phase_elapsed = float(state_meta.get("phase_elapsed_s", 0.0))
        if minutes is not None:
            # a time budget on resume (given, or what the interrupted run had left) is
            # planned from now: a phase's share measured from its original start would
            # already be spent, and the run would stop after one step
            phase_elapsed = 0.0
        pending_discs = dict(parts["discriminators"])
        if int(state_meta.get("optimizer_phase", -1)) == phase_idx:
            pending_opts = dict(parts["optimizers"])
        if parts["rng"] is not None:
            torch.set_rng_state(parts["rng"])
    if world > 1:
        torch.manual_seed(seed)  # identical initial discriminators on every process
    use_amp = bool(amp) and dev.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    features = None if feature_extractor == "auto" else feature_extractor
    state_file = ckpt.state_path(output) if output is not None else None
    device_desc = "cpu" if dev.type == "cpu" else f"cuda ({torch.cuda.get_device_name(dev)})"

    steps_per_epoch = len(_epoch_batches(len(train_ds), bs, seed, 0, 0, world))
    total_steps = None
    if all(p["epochs"] is not None for p in phase_plan):
        total_steps = steps_per_epoch * sum(p["epochs"] for p in phase_plan)
        if max_steps is not None:
            total_steps = min(total_steps, int(max_steps))
    elif max_steps is not None:
        total_steps = int(max_steps)
    deadline = t_start + 60.0 * float(minutes) if minutes is not None else None
    step_times: list[float] = []
    val_time = [0.0]
    last_val_step = [-1]
    stopped, message = None, ""

    def eta() -> float | None:
        if not step_times:
            return None
        per = float(np.mean(step_times[-50:]))
        left = None
        if total_steps is not None:
            n_val = max(0, (total_steps - step)) / max(steps_per_epoch, 1)
            left = max(0, total_steps - step) * per + n_val * val_time[0]
        if deadline is not None:
            t = max(0.0, deadline - time.monotonic())
            left = t if left is None else min(left, t)
        return left

    def bundle_meta(metrics: dict) -> dict:
        base = ckpt_meta_common()
        m = {
            "normalization": train_ds.normalization,
            "degradation": (
                dict(train_ds.degradation)
                if not train_ds.has_lr
                else {"kind": "paired", "scale": net.scale, "data": train_ds.description}
            ),
            "color_mode": (
                "y"
                if rgb_input and net.in_channels == 1
                else "rgb"
                if net.in_channels == 3
                else "grey"
            ),
            "pixel_size": pixel_size,
            "training": base,
            "metrics": {k: _json_num(v) for k, v in metrics.items()},
            "parent": parent,
        }
        m.update(meta or {})
        return m

    def ckpt_meta_common() -> dict:
        return {
            "recipe": rec.describe(),
            "data": train_ds.description,
            "images": len(train_ds.items),
            "val_images": len(val_ds.items),
            "labels": has_labels,
            "epochs": epoch,
            "steps": step,
            "batch_size": bs,
            "world_size": world,
            "patch_size": train_ds.patch_size,
            "seed": seed,
            "device": device_desc,
            "amp": str(amp_dtype).replace("torch.", "") if use_amp else None,
            "started": started,
            "time_s": round(time.monotonic() - t_start, 1),
            "stopped": stopped,
        }

    last_ckpt = [time.monotonic()]

    def save_checkpoint():
        last_ckpt[0] = time.monotonic()
        if state_file is None or rank != 0:
            return
        m = {
            "architecture": _unwrap(net).arch,
            "config": _unwrap(net).config,
            "recipe_name": rec.name,
            "output": str(output),
            "seed": seed,
            "step": step,
            "epoch": epoch,
            "phase_index": phase_idx,
            "epoch_in_phase": epoch_in_phase,
            "batch_in_epoch": batch_in_epoch,
            "phase_elapsed_s": phase_elapsed,
            "optimizer_phase": opt_phase,
            "history": history,
            "best": {k: _json_num(v) for k, v in best.items()},
            "run": {
                "data": _source_spec(data) if _source_spec(data) is not None
                else _source_spec(data_source),
                "val_data": _source_spec(val_data) if _source_spec(val_data) is not None
                else _source_spec(val_source),
                "epochs": epochs,
                "minutes": minutes,
                "normalization": train_ds.normalization,
                "degradation": train_ds.degradation,
                "pixel_size": pixel_size,
                "parent": parent,
                "batch_size": bs,
                "patch_size": train_ds.patch_size,
                "patches_per_image": train_ds.patches_per_image,
            },
            "training": ckpt_meta_common(),
        }
        ckpt.save_state(
            state_file,
            model=_unwrap(net),
            optimizers=optimizers,
            discriminators={k: _unwrap(d) for k, d in discs.items()},
            meta=m,
        )

    def validate() -> dict:
        t0 = time.monotonic()
        val = _validate(_unwrap(net), val_ds, dev, amp_dtype, use_amp,
                        fit=rec.options.get("val_metric") == "fit")  # fluorescence: fit-PSNR
        val_time[0] = time.monotonic() - t0
        last_val_step[0] = step
        return val

    def after_validation(val: dict) -> bool:
        nonlocal best, best_state
        improved = val["psnr"] > best.get("psnr", -math.inf)
        if improved:
            best = {"psnr": val["psnr"], "ssim": val["ssim"], "epoch": epoch, "step": step}
            best_state = {
                k: v.detach().to("cpu").clone() for k, v in _unwrap(net).state_dict().items()
            }
            if output is not None and rank == 0:
                from napari_resolve import bundle

                base = _unwrap(net)
                metrics = {
                    "val_psnr": val["psnr"],
                    "val_ssim": val["ssim"],
                    "epoch": epoch,
                    "step": step,
                }
                bundle.save(output, base, bundle_meta(metrics))
        return improved

    # ---- the loop
    current_phase = rec.phases[min(phase_idx, len(rec.phases) - 1)].name
    try:
        if resume is not None:
            yield TrainEvent(
                epoch,
                step,
                total_steps,
                current_phase,
                {},
                None,
                None,
                f"resumed from {ckpt.state_path(resume).name} at step {step}",
                "info",
            )
        elif keep_initial and rank == 0:
            val0 = validate()
            after_validation(val0)
            yield TrainEvent(0, 0, total_steps, current_phase, {}, None, None,
                             f"starting weights: validation PSNR {val0['psnr']:.2f} dB "
                             "(kept until a step beats them)", "info")
        while phase_idx < len(rec.phases):
            phase = rec.phases[phase_idx]
            pplan = phase_plan[phase_idx]
            current_phase = phase.name
            if pplan["epochs"] is not None and epoch_in_phase >= pplan["epochs"]:
                phase_idx, epoch_in_phase, phase_elapsed = phase_idx + 1, 0, 0.0
                continue  # skipped (0 epochs) or finished before a resume
            base = _unwrap(net)
            # trainable parts
            trainable = [getattr(base, n) for n in phase.train] if phase.train else [base]
            for n in phase.train:
                if not isinstance(getattr(base, n, None), nn.Module):
                    raise InputError(f"recipe {rec.name} trains {n!r} but {arch} has no such part")
            base.requires_grad_(False)
            for part in trainable:
                part.requires_grad_(True)
            params = [p for p in base.parameters() if p.requires_grad]
            wants_features = any(k.startswith("perceptual") for k in phase.losses)
            if wants_features and features is None and feature_extractor == "auto":
                yield TrainEvent(
                    epoch,
                    step,
                    total_steps,
                    phase.name,
                    {},
                    None,
                    None,
                    "fitting the feature network for the perceptual loss "
                    "(denoising autoencoder on the training images)",
                    "info",
                )
                features = _auto_features(train_ds, base.in_channels, dev, seed, feature_steps)
            terms = _Terms(rec, phase, base.scale, features, task_model, has_labels, net)
            if features is None:
                for k in [k for k in terms.terms if k.startswith("perceptual")]:
                    terms.terms.pop(k)
                    terms.skipped.append(f"{k} (no feature network)")
            if not terms.terms:
                raise InputError(
                    f"recipe {rec.name}, phase {phase.name!r}: no loss term applies "
                    f"({', '.join(terms.skipped)})"
                )
            for key in terms.adversarial:
                if key not in discs:
                    size = train_ds.patch_size or int(min(train_ds[0]["hr"].shape[-2:]))
                    if key != "sr":  # PathSRGAN's MR output
                        size = size * int(getattr(base, "mr_scale", 2)) // base.scale
                    d = _make_discriminator(
                        rec.discriminator or "patchgan", base.in_channels, size,
                        rec.options.get("discriminator_channels"),
                    ).to(dev)
                    if key in pending_discs:  # trained before the run was resumed
                        d.load_state_dict(pending_discs.pop(key))
                    discs[key] = d
            # DDP wrapping per phase: the set of trainable parameters changes
            gnet = net
            dnets = dict(discs)
            if world > 1:
                from torch.nn.parallel import DistributedDataParallel as DDP

                ids = [dev.index] if dev.type == "cuda" else None
                # SRSEG's segmentation head sits idle in phases without segmentation loss
                idle = (
                    getattr(base, "segmentation_head", None) is not None
                    and not terms.with_segmentation
                )
                gnet = DDP(base, device_ids=ids, find_unused_parameters=idle)
                dnets = {k: DDP(d, device_ids=ids) for k, d in discs.items()}
            lr0 = float(phase.lr or rec.lr)
            optimizers = {"generator": _optimizer(rec, params, lr0)}
            opt_phase = phase_idx
            for key in terms.adversarial:
                optimizers[f"D@{key}"] = _optimizer(rec, discs[key].parameters(), lr0)
            if pending_opts is not None:  # resuming inside this phase: its optimiser moments
                for name, opt in optimizers.items():
                    if name in pending_opts:
                        opt.load_state_dict(pending_opts[name])
                pending_opts = None
            frozen = [c for n, c in base.named_children() if phase.train and n not in phase.train]

            def train_mode(base=base, frozen=frozen):
                base.train()
                for child in frozen:  # frozen parts stay in eval (BN statistics fixed)
                    child.eval()

            train_mode()
            msg = f"phase {phase_idx + 1}/{len(rec.phases)} '{phase.name}': " + ", ".join(
                f"{k}×{v:g}" for k, v in terms.terms.items()
            )
            if terms.skipped:
                msg += "; left out: " + ", ".join(terms.skipped)
            yield TrainEvent(epoch, step, total_steps, phase.name, {}, None, eta(), msg, "phase")
            phase_t0 = time.monotonic() - phase_elapsed

            while pplan["epochs"] is None or epoch_in_phase < pplan["epochs"]:
                # learning rate of this epoch (schedule restarts per phase)
                if rec.schedule == "halve-per-epoch":
                    lr_now = lr0 * 0.5**epoch_in_phase
                elif rec.schedule == "step":
                    lr_now = lr0 * rec.gamma ** (epoch_in_phase // pplan["step_epochs"])
                else:
                    lr_now = lr0
                for opt in optimizers.values():
                    for g in opt.param_groups:
                        g["lr"] = lr_now
                train_ds.set_epoch(epoch)
                batches = _epoch_batches(len(train_ds), bs, seed, epoch, rank, world)
                loader = torch.utils.data.DataLoader(
                    train_ds,
                    batch_sampler=batches[batch_in_epoch:],
                    collate_fn=D.collate,
                    num_workers=int(workers),
                )
                sums: dict[str, float] = {}
                count = 0
                for batch in loader:
                    t0 = time.monotonic()
                    batch = {k: v.to(dev, non_blocking=True) for k, v in batch.items()}
                    with torch.autocast(dev.type, dtype=amp_dtype, enabled=use_amp):
                        kwargs = {"with_segmentation": True} if terms.with_segmentation else {}
                        out = gnet(batch["lr"], **kwargs)
                    logs = {}
                    # discriminators first (SRGAN's alternating updates), on detached fakes
                    if terms.adversarial:
                        for d in discs.values():
                            d.requires_grad_(True)
                        with torch.autocast(dev.type, dtype=amp_dtype, enabled=use_amp):
                            dparts = terms.discriminator(out, batch, dnets)
                        for key, v in dparts.items():
                            if _all_max(0.0 if bool(torch.isfinite(v)) else 1.0, world, dev) > 0:
                                raise _Stop("nan", f"discriminator loss {key} is not finite")
                            opt = optimizers[key]
                            opt.zero_grad(set_to_none=True)
                            scaler.scale(v).backward()
                            scaler.step(opt)
                            logs[key] = float(v.detach())
                        for d in discs.values():
                            d.requires_grad_(False)
                    with torch.autocast(dev.type, dtype=amp_dtype, enabled=use_amp):
                        # unwrapped discriminators: frozen here, only the generator learns
                        gparts = terms.generator(out, batch, discs)
                    total = sum(w * v.float() for w, v in gparts.values())
                    bad = not bool(torch.isfinite(total))
                    if _all_max(1.0 if bad else 0.0, world, dev) > 0:
                        raise _Stop(
                            "nan",
                            "loss is not finite ("
                            + ", ".join(
                                f"{k}={float(v.detach()):.4g}" for k, (w, v) in gparts.items()
                            )
                            + ")",
                        )
                    opt = optimizers["generator"]
                    opt.zero_grad(set_to_none=True)
                    scaler.scale(total).backward()
                    if not scaler.is_enabled():
                        ok = _finite_grads(params)
                        if _all_max(0.0 if ok else 1.0, world, dev) > 0:
                            raise _Stop("nan", "gradients are not finite")
                    scaler.step(opt)
                    scaler.update()
                    step += 1
                    batch_in_epoch += 1
                    phase_elapsed = time.monotonic() - phase_t0  # a mid-epoch state resumes here
                    logs.update({k: float(v.detach()) for k, (w, v) in gparts.items()})
                    logs["total"] = float(total.detach())
                    for k, v in logs.items():
                        sums[k] = sums.get(k, 0.0) + v
                    count += 1
                    step_times.append(time.monotonic() - t0)
                    if (
                        checkpoint_interval_s is not None
                        and time.monotonic() - last_ckpt[0] >= float(checkpoint_interval_s)
                    ):
                        save_checkpoint()  # a killed run loses at most this interval
                    yield TrainEvent(
                        epoch + 1, step, total_steps, phase.name, logs, None, eta(), "", "step"
                    )
                    # budgets and the stop button (agreed across processes)
                    flag = 0.0
                    if _should_stop(stop):
                        flag = 3.0
                    elif deadline is not None and time.monotonic() >= deadline:
                        flag = 2.0
                    elif max_steps is not None and step >= int(max_steps):
                        flag = 1.0
                    elif (
                        pplan["seconds"] is not None
                        and time.monotonic() - phase_t0 >= pplan["seconds"]
                    ):
                        flag = 0.5
                    flag = _all_max(flag, world, dev)
                    if flag >= 1.0:
                        if flag == 3.0:
                            raise _Stop("user", "stopped by the user")
                        if flag == 2.0:
                            raise _Stop("time", f"time budget of {float(minutes):g} min spent")
                        raise _Stop("steps", f"reached {int(max_steps)} steps")
                    if flag == 0.5:
                        break  # this phase's share of the time is spent
                # ---- end of epoch: validate, keep the best, checkpoint
                phase_over = (
                    pplan["seconds"] is not None and time.monotonic() - phase_t0 >= pplan["seconds"]
                )
                epoch += 1
                epoch_in_phase += 1
                batch_in_epoch = 0
                phase_elapsed = time.monotonic() - phase_t0
                val = validate() if rank == 0 else None
                improved = after_validation(val) if rank == 0 else False
                train_mode()
                rec_h = {
                    "epoch": epoch,
                    "phase": phase.name,
                    "step": step,
                    "lr": lr_now,
                    "losses": {k: v / max(count, 1) for k, v in sums.items()},
                    "val": {k: _json_num(v) for k, v in (val or {}).items()},
                    "best": improved,
                    "time_s": round(time.monotonic() - t_start, 2),
                }
                history.append(rec_h)
                if phase_over:
                    phase_idx, epoch_in_phase, phase_elapsed = phase_idx + 1, 0, 0.0
                save_checkpoint()
                yield TrainEvent(
                    epoch,
                    step,
                    total_steps,
                    phase.name,
                    rec_h["losses"],
                    val,
                    eta(),
                    ("new best" if improved else ""),
                    "epoch",
                )
                if phase_over:
                    break
            else:
                # the checkpoint keeps (phase, epoch in phase) of the last epoch, so a
                # resume with more epochs continues this phase
                phase_idx, epoch_in_phase, phase_elapsed = phase_idx + 1, 0, 0.0
    except _Stop as s:
        stopped, message = s.reason, s.message
        if s.reason == "nan":
            message = (
                f"{s.message} at epoch {epoch + 1}, step {step + 1}; training stopped and "
                "kept the last good weights (try a lower learning rate)"
            )
        else:
            phase_elapsed = 0.0 if phase_idx >= len(rec.phases) else phase_elapsed
            if rank == 0 and last_val_step[0] != step:
                val = validate()
                improved = after_validation(val)
                history.append(
                    {
                        "epoch": epoch,
                        "phase": current_phase,
                        "step": step,
                        "val": {k: _json_num(v) for k, v in val.items()},
                        "best": improved,
                        "stopped": stopped,
                        "time_s": round(time.monotonic() - t_start, 2),
                    }
                )
                yield TrainEvent(
                    epoch, step, total_steps, current_phase, {}, val, 0.0, message, "epoch"
                )
        save_checkpoint()
    except GeneratorExit:
        # the consumer stopped iterating (napari worker.quit()): keep a resumable state
        stopped = "user"
        save_checkpoint()
        raise
    finally:
        if owned_pg:
            import torch.distributed as dist

            dist.destroy_process_group()

    from napari_resolve import bundle

    final = _unwrap(net)
    # resumed, and no step beat the best of before the resume: that bundle stays as it
    # is, and it is the result (not the last weights)
    keep = best_state is None and kept_best and output.exists()
    if best_state is not None:
        final.load_state_dict(best_state)
    elif keep:
        final.load_state_dict(bundle.load(output)[0].state_dict())
    final = final.to("cpu").eval()
    if output is not None and rank == 0 and best_state is None and not keep and stopped != "nan":
        bundle.save(output, final, bundle_meta({}))
    bundle_path = output if output is not None and output.exists() else None
    if not message:
        message = (
            f"done: {epoch} epochs, {step} steps; best validation PSNR "
            f"{best.get('psnr', float('nan')):.2f} dB"
            if best_state is not None
            else "done"
        )
    return TrainResult(
        bundle_path,
        {k: v for k, v in best.items() if v != -math.inf},
        history,
        stopped,
        message,
        final,
        state_file if state_file and state_file.exists() else None,
        {"recipe": rec.name, "device": device_desc},
    )

def train(*args, callback=None, **kwargs) -> TrainResult:
    """Run :func:`train_iter` to the end; ``callback(event)`` sees every event."""
    return run_to_end(train_iter(*args, **kwargs), callback)
