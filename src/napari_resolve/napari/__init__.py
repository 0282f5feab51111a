"""The napari plugin: the only package of napari-resolve that imports napari or Qt."""
