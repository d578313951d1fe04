"""Mu2's napari plugin: the report widget, a CT reader, a NIfTI writer and the phantom sample.

``Mu2Widget`` is imported lazily so that napari can use the reader without loading the widget's Qt code.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mu2_napari._widget import Mu2Widget

__all__ = ["Mu2Widget"]


def __getattr__(name: str) -> Any:
    if name == "Mu2Widget":
        from mu2_napari._widget import Mu2Widget

        return Mu2Widget
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
