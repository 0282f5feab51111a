"""What a training run reports: :class:`TrainEvent` (progress) and :class:`TrainResult`.

:func:`napari_resolve.train.engine.train_iter` yields the events and returns
the result (the value of ``StopIteration``, which
``napari.qt.threading.thread_worker`` emits as ``returned``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

__all__ = ["TrainEvent", "TrainResult"]


@dataclass
class TrainEvent:
    """Progress of a run.

    ``kind``: ``"step"`` (after an optimiser step), ``"epoch"`` (after a
    validation; ``val`` is set), ``"phase"`` (a phase starts) or ``"info"``
    (a message, e.g. a loss term left out). ``step`` counts optimiser steps
    from the start of the run (resumes continue the count); ``total_steps`` is
    None when only a time budget bounds the run; ``eta_s`` the estimated
    seconds left.
    """

    epoch: int
    step: int
    total_steps: int | None
    phase: str
    losses: dict
    val: dict | None = None
    eta_s: float | None = None
    message: str = ""
    kind: str = "step"


@dataclass
class TrainResult:
    """Outcome of a run.

    ``bundle``: the best model file (None without ``output``); ``best``:
    its validation metrics (``psnr``, ``ssim``, ``epoch``, ``step``);
    ``history``: one dict per epoch; ``stopped``: None when the schedule
    completed, else ``"user"``, ``"time"``, ``"steps"`` or ``"nan"``;
    ``model``: the network with the best weights (last good weights if no
    validation ran), in eval mode on the CPU; ``state``: the resume checkpoint.
    """

    bundle: Path | None
    best: dict
    history: list
    stopped: str | None
    message: str = ""
    model: nn.Module | None = None
    state: Path | None = None
    meta: dict = field(default_factory=dict)
