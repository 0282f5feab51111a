"""How parsing maps look in napari: paper 000's colours and named labels."""

from __future__ import annotations

from napari_resolve.napari._jobs import DEFAULT_LABEL_NAMES, PARSING_COLORS


def parsing_style(label_names: dict | None = None) -> dict:
    """Labels-layer keywords for a parsing map (0 background, 1 cytoplasm, 2 nucleus).

    Colours follow paper 000 §3.1 (cytoplasm red, nucleus blue; background
    transparent instead of black so the image stays visible); the label names
    go into the layer's ``features`` so napari's status bar shows them.
    """
    from napari.utils.colormaps import DirectLabelColormap

    names = {int(k): str(v) for k, v in (label_names or DEFAULT_LABEL_NAMES).items()}
    index = sorted(names)
    return {
        "colormap": DirectLabelColormap(color_dict=dict(PARSING_COLORS)),
        "features": {"index": index, "name": [names[i] for i in index]},
        "opacity": 0.5,
    }
