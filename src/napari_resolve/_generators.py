"""Long work is a generator of progress events that returns its result (DESIGN.md).

The napari widgets iterate such a generator in a ``thread_worker`` (so they
can show progress and stop it); scripts call the blocking form, which is
:func:`run_to_end` of the generator.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import TypeVar

R = TypeVar("R")


def run_to_end(gen: Generator[object, object, R], callback: Callable | None = None) -> R:
    """Exhaust ``gen`` and return its return value; ``callback(event)`` sees every event."""
    while True:
        try:
            event = next(gen)
        except StopIteration as done:
            return done.value
        if callback is not None:
            callback(event)
