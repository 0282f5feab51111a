"""How many CPU threads torch may use: the cores actually free, never more.

Two OpenMP threads that spin-wait on a 2-core machine where another job runs
lose up to 8x (issue 17: measured on pathsrgan, 0.12x of one thread). The rule:

1. ``OMP_WAIT_POLICY=PASSIVE`` is set when :mod:`napari_resolve` is imported,
   unless the user set it (it only acts if torch's OpenMP runtime has not
   started yet, which is the case for the CLI and the napari plugin).
2. Before long work (predict, train, fine-tune), :func:`apply` sets torch's
   intra-op threads to the cores free *now*: the usable cores (affinity mask)
   minus the others' load, rounded (``+0.25``: a core 3/4 free counts), at
   least 1. The others' load is the smaller of the 1-minute load average and
   the runnable threads at this instant (``procs_running`` of ``/proc/stat``,
   less the one reading it; Linux only). The instant count matters because the
   1-minute average still holds *our own* previous run for a minute after it
   ends: a second predict right after a first one would otherwise drop to one
   thread on an idle machine; the average guards against a momentary lull.
   onnxruntime and OpenVINO sessions take the same count
   (:mod:`napari_resolve.runtime`), and onnxruntime is told not to spin when
   the count is below the usable cores.
3. An explicit request (``threads=N``, ``--threads N`` or the
   ``NAPARI_RESOLVE_THREADS`` variable) wins over the measurement.

The core imports torch lazily here so that the rule can run before it.
"""

from __future__ import annotations

import math
import os

ENV_VAR = "NAPARI_RESOLVE_THREADS"


def usable_cores() -> int:
    """Cores this process may run on (affinity mask, not the machine's total)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # macOS / Windows
        return max(1, os.cpu_count() or 1)


def running_now() -> int | None:
    """Runnable threads on the machine at this instant (Linux ``/proc/stat``), else None."""
    try:
        with open("/proc/stat") as fh:
            for line in fh:
                if line.startswith("procs_running"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def other_load(own_threads: int = 0) -> float:
    """Runnable threads that are not ours (see the module docstring), minus ``own_threads``."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        load = None
    now = running_now()
    if now is not None:
        now = max(0, now - 1)  # the thread reading /proc/stat
        load = now if load is None else min(load, now)
    if load is None:
        return 0.0
    return max(0.0, load - own_threads)


def free_cores(own_threads: int = 0) -> int:
    """Cores free for new work now: usable cores minus the others' load, at least 1."""
    cores = usable_cores()
    return max(1, min(cores, math.floor(cores - other_load(own_threads) + 0.25)))


def choose(requested: int | None = None) -> int:
    """The thread count the rule gives (see the module docstring)."""
    if requested is None:
        env = os.environ.get(ENV_VAR, "").strip()
        if env:
            try:
                requested = int(env)
            except ValueError:
                requested = None
    if requested is not None and requested > 0:
        return int(requested)
    return free_cores()


def apply(requested: int | None = None) -> int:
    """Set torch's intra-op thread count by :func:`choose`; returns it."""
    import torch

    n = choose(requested)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


def set_passive_wait_policy() -> None:
    """Ask OpenMP to sleep, not spin, between parallel regions (unless the user chose)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
