"""Sub-commands of the ``napari-resolve`` CLI (see :mod:`napari_resolve.cli`)."""
