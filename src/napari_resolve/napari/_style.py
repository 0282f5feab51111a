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


def theme_colors(viewer=None) -> dict:
    """napari's theme as matplotlib colours: ``background``, ``axes`` and ``text`` (hex)."""
    from napari.utils.theme import get_theme

    name = getattr(viewer, "theme", None) or "dark"
    try:
        theme = get_theme(name)
    except (KeyError, ValueError):
        theme = get_theme("dark")
    return {"background": theme.background.as_hex(), "axes": theme.foreground.as_hex(),
            "text": theme.text.as_hex()}


def theme_figure(figure, viewer=None) -> None:
    """Colour a matplotlib ``figure`` (and its axes, legends) like napari's dark / light theme."""
    colors = theme_colors(viewer)
    figure.set_facecolor(colors["background"])
    for ax in figure.axes:
        ax.set_facecolor(colors["axes"])
        for spine in ax.spines.values():
            spine.set_color(colors["text"])
        ax.tick_params(colors=colors["text"], which="both")
        ax.xaxis.label.set_color(colors["text"])
        ax.yaxis.label.set_color(colors["text"])
        ax.title.set_color(colors["text"])
        legend = ax.get_legend()
        if legend is not None:
            legend.get_frame().set_facecolor(colors["background"])
            legend.get_frame().set_edgecolor(colors["text"])
            for text in legend.get_texts():
                text.set_color(colors["text"])
