"""``mu2 demo``: napari with the Mu2 widget docked and a CT loaded, ready to draft."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

WIDGET_NAME = "Mu2 report"


def load_layers(path: str | Path | None) -> list[tuple]:
    """The CT layer(s) to open: ``path`` read with Mu2's reader, or the synthetic phantom sample.

    Raises
    ------
    engine.errors.Mu2InputError
        When ``path`` is not a readable CT, before any window opens (so the CLI can say why).
    """
    from mu2_napari._sample_data import phantom_sample
    from mu2_napari.layers import ct_layer_data

    if path is None:
        return phantom_sample()
    from engine.volume import load_volume

    return [ct_layer_data(load_volume(path))]


def open_viewer(path: str | Path | None = None, show: bool = True) -> tuple[Any, Any]:
    """A napari viewer with the CT loaded and ``Mu2Widget`` docked on the right; returns both."""
    import napari

    from mu2_napari._widget import Mu2Widget
    from mu2_napari._worker import preload_engine

    layers = load_layers(path)
    # Import torch & co. now, before the window shows, rather than as stutter in a live viewer.
    preload_engine()
    viewer = napari.Viewer(title="Mu2", show=show)
    for data, kwargs, layer_type in layers:
        getattr(viewer, f"add_{layer_type}")(data, **kwargs)
    widget = Mu2Widget(viewer)
    viewer.window.add_dock_widget(widget, name=WIDGET_NAME, area="right")
    return viewer, widget


def launch(path: str | Path | None = None) -> int:
    """Open napari with the Mu2 widget and ``path`` (default: the phantom sample); run until closed."""
    import napari

    open_viewer(path)
    napari.run()
    return 0
