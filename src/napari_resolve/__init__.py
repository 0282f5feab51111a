"""napari-resolve: interactive super-resolution for light microscopy.

The core (``models``, ``data``, ``bundle``, ``predict``, ``train``, ``metrics``)
never imports napari or Qt; ``napari_resolve.napari`` holds the plugin.
"""

__version__ = "0.1.0"

from napari_resolve import threads as _threads  # noqa: E402

_threads.set_passive_wait_policy()  # before torch starts OpenMP (threads.py)

from napari_resolve.errors import ResolveError  # noqa: E402

__all__ = ["ResolveError", "__version__"]
