"""Ctrl-C and SIGTERM as a stop request at the next training step (issue 15, item 5).

A ``KeyboardInterrupt`` raised in the middle of a step unwinds the training
generator before it can save anything. Inside :class:`StopOnSignal` the
first SIGINT or SIGTERM only sets an event that the engine polls between
steps (its ``stop=`` argument): the step finishes, the model is validated,
the best model and the resume state are written, and the run returns with
``stopped == "user"``. A second Ctrl-C raises ``KeyboardInterrupt`` as
usual (abort without saving). Outside the main thread (napari workers) it
does nothing: the widgets stop through the same ``stop`` event.

The engine polls ``stop`` with :func:`_should_stop` and ends a run early by
raising :class:`_Stop` (user, time or step budget, a non-finite loss).
"""

from __future__ import annotations

import signal
import sys
import threading

__all__ = ["StopOnSignal"]


class _Stop(Exception):
    """Ends a run early: ``reason`` is ``"user"``, ``"time"``, ``"steps"`` or ``"nan"``."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


def _should_stop(stop) -> bool:
    if stop is None:
        return False
    if isinstance(stop, threading.Event):
        return stop.is_set()
    return bool(stop())


class StopOnSignal:
    """Context manager: SIGINT / SIGTERM set :attr:`event` (once) instead of killing the run."""

    def __init__(self, message: str = "stopping after this step: saving the best model and "
                 "the resume state (Ctrl-C again aborts without saving)"):
        self.event = threading.Event()
        self.signal: int | None = None
        self.message = message
        self._old: dict = {}

    def __call__(self) -> bool:  # usable as the engine's ``stop`` callable
        return self.event.is_set()

    def _handle(self, signum, frame):
        if self.event.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal = signum
        self.event.set()
        print(f"\n{self.message}", file=sys.stderr, flush=True)

    def __enter__(self) -> "StopOnSignal":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()
