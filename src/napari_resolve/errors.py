"""User-facing errors.

Every error a user can cause (bad input, wrong file, incompatible model) is a
:class:`ResolveError` with a one-line message that names the problem. The CLI
prints it as ``error: <message>`` with exit code 2, the napari widgets show it
as a notification; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class ResolveError(ValueError):
    """A problem with the user's input, file or model; the message is one line."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


class InputError(ResolveError):
    """An image, label map or argument that cannot be used."""


class BundleError(ResolveError):
    """A model file that cannot be read, is unsafe, or does not fit its architecture."""


class Cancelled(Exception):
    """Raised inside long work when the caller asked it to stop."""
