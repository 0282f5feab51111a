"""Where a training run computes: the device, the torchrun process group, each process's batches.

``device="auto"`` picks CUDA when available. Under ``torchrun`` (``WORLD_SIZE``
> 1) the engine joins the process group (NCCL on CUDA, gloo on CPU) and gives
each process every ``world``-th sample of the epoch's order
(:func:`_epoch_batches`); decisions every process must agree on (stop, a
non-finite loss) go through :func:`_all_max`. Also the model a run trains
(:func:`_build_model`: a registry name or a network).
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torch import nn

from napari_resolve.errors import InputError


def _device(device) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError("device 'cuda' asked for but CUDA is not available")
    return dev


def _dist_setup(device: torch.device):
    """Join the process group when launched by torchrun; returns (rank, world, device, owned)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        owned = False
    elif int(os.environ.get("WORLD_SIZE", "1")) > 1 and dist.is_available():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend)
        rank, world = dist.get_rank(), dist.get_world_size()
        owned = True
    else:
        return 0, 1, device, False
    if device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", rank % max(1, torch.cuda.device_count())))
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    return rank, world, device, owned


def _all_max(value: float, world: int, device) -> float:
    if world == 1:
        return value
    import torch.distributed as dist

    t = torch.tensor([float(value)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())

def _finite_grads(params) -> bool:
    for p in params:
        if p.grad is not None and not bool(torch.isfinite(p.grad).all()):
            return False
    return True


def _unwrap(m: nn.Module) -> nn.Module:
    return (
        m.module
        if hasattr(m, "module") and isinstance(m, nn.parallel.DistributedDataParallel)
        else m
    )

def _build_model(model, config, scale, in_channels):
    from napari_resolve import models

    if isinstance(model, nn.Module):
        return model
    if isinstance(model, str):
        cfg = dict(config or {})
        if scale is not None:
            cfg["scale"] = int(scale)
        if in_channels is not None:
            cfg["in_channels"] = int(in_channels)
        return models.build(model, **cfg)
    raise InputError(f"model must be a registry name or a model, got {type(model).__name__}")

def _epoch_batches(n: int, batch_size: int, seed: int, epoch: int, rank: int, world: int):
    """This process's batches of sample indices for ``epoch`` (same order on every process)."""
    order = np.random.default_rng([seed, epoch, 104729]).permutation(n)
    per_step = batch_size * world
    steps = n // per_step
    if steps == 0:  # fewer samples than one global batch: one smaller batch
        mine = order[rank::world].tolist()
        return [mine] if mine else []
    return [order[i * per_step + rank : (i + 1) * per_step : world].tolist() for i in range(steps)]
