"""How a ``Volume`` and its heatmap become napari layers (no Qt here, so the reader stays light).

Axis convention
---------------
The voxel array is ``(z, y, x)``; napari's world is in millimetres with the same axis order:

* ``scale`` = ``Volume.spacing`` (z, y, x) in mm,
* ``translate`` = ``Volume.origin`` (LPS x, y, z) reversed to (z, y, x): the world position of voxel
  ``[0, 0, 0]``,
* ``rotate`` = the direction matrix reordered to (z, y, x), but only when it is an axis-aligned proper
  rotation (for instance a NIfTI stored RAS, which SimpleITK reports as ``diag(-1, -1, 1)``): then the
  layer's world coordinates are exact LPS millimetres and the slices keep the radiological left/right.

Simplification: oblique directions (gantry tilt, oblique acquisitions) and reflections are *not* shown
rotated: napari cannot slice a rotated volume in 2D, so the layer is displayed along its index axes
and the world coordinates are exact only along them. The full direction stays in the layer's metadata
(``metadata[VOLUME_KEY]``), and everything written to disk (heatmap NIfTI, SR) uses the Volume's own
geometry, so nothing downstream depends on the simplification.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

# (level, width) in HU: the usual chest CT windows.
CT_PRESETS: dict[str, tuple[float, float]] = {
    "mediastinum": (40.0, 400.0),
    "lung": (-600.0, 1500.0),
    "bone": (400.0, 1800.0),
}
DEFAULT_PRESET = "mediastinum"

# Keys of an image layer's ``metadata``: the PHI-free summary, and the Volume itself so that the widget
# drafts from exactly what the reader loaded (no second read, no lossy round trip through the layer).
SUMMARY_KEY = "mu2"
VOLUME_KEY = "mu2_volume"
HEATMAP_COLORMAP = "inferno"


def contrast_limits(preset: str = DEFAULT_PRESET) -> list[float]:
    """``[L - W/2, L + W/2]`` of a CT window preset."""
    try:
        level, width = CT_PRESETS[preset]
    except KeyError as err:
        raise ValueError(f"unknown CT preset {preset!r}; choose one of {', '.join(CT_PRESETS)}") from err
    return [level - width / 2, level + width / 2]


def axis_aligned_rotation(direction: tuple[float, ...] | np.ndarray) -> np.ndarray | None:
    """The direction as a (z, y, x) rotation matrix when it is axis-aligned and proper, else ``None``.

    ``direction`` is SimpleITK's row-major 3x3 in (x, y, z) index order. Reversing both rows and columns
    gives the same map in napari's (z, y, x) order.
    """
    d = np.asarray(direction, dtype=np.float64).reshape(3, 3)[::-1, ::-1]
    rounded = np.round(d)
    is_signed_permutation = np.allclose(d, rounded, atol=1e-4) and all(
        np.count_nonzero(rounded[i]) == 1 and np.count_nonzero(rounded[:, i]) == 1 for i in range(3)
    )
    if not is_signed_permutation or np.linalg.det(rounded) < 0:
        return None
    return rounded


def geometry_kwargs(volume: Any) -> dict:
    """``scale``/``translate`` (and ``rotate`` when usable) that put ``volume`` in world millimetres."""
    kwargs: dict = {
        "scale": tuple(float(s) for s in volume.spacing),
        "translate": tuple(float(o) for o in volume.origin[::-1]),
    }
    rotation = axis_aligned_rotation(volume.direction)
    if rotation is not None and not np.allclose(rotation, np.eye(3)):
        kwargs["rotate"] = rotation
    elif rotation is None:
        log.info(
            "direction %s is oblique or a reflection; the layer is shown along its index axes",
            list(volume.direction),
        )
    return kwargs


def layer_name(volume: Any) -> str:
    """A display name without PHI: the series description and the pseudonymous case id."""
    parts = [p for p in (volume.series_description.strip(), volume.case_id) if p]
    return " · ".join(parts) or "CT"


def ct_layer_data(volume: Any, preset: str = DEFAULT_PRESET) -> tuple[np.ndarray, dict, str]:
    """A napari ``LayerDataTuple`` for a CT ``Volume`` (gray, windowed, physical geometry)."""
    kwargs = {
        "name": layer_name(volume),
        "colormap": "gray",
        "contrast_limits": contrast_limits(preset),
        "metadata": {SUMMARY_KEY: volume.summary(), VOLUME_KEY: volume},
        **geometry_kwargs(volume),
    }
    if getattr(volume, "prepared", False):
        # M3D .npy inputs hold [0, 1] intensities, not HU: an HU window would show a flat image.
        kwargs["contrast_limits"] = [0.0, 1.0]
    return volume.voxels, kwargs, "image"


def heatmap_kwargs(ct_layer: Any, label: str, opacity: float = 0.5) -> dict:
    """Add-kwargs that put a heatmap on exactly ``ct_layer``'s grid (copied from the layer itself)."""
    return {
        "name": label,
        "colormap": HEATMAP_COLORMAP,
        "blending": "additive",
        "opacity": opacity,
        # The heatmap is normalised to max 1, so fixed limits keep drafts comparable and skip a scan.
        "contrast_limits": [0.0, 1.0],
        "scale": tuple(ct_layer.scale),
        "translate": tuple(ct_layer.translate),
        "rotate": np.asarray(ct_layer.rotate),
    }


def volume_from_layer(layer: Any) -> Any:
    """The layer's ``Volume``: the reader's own when present, else one built from data and geometry.

    Reads the layer's data (which may be lazy), so call it off the GUI thread.
    """
    from engine.errors import Mu2InputError
    from engine.volume import Volume

    volume = layer.metadata.get(VOLUME_KEY) if isinstance(layer.metadata, dict) else None
    if volume is not None:
        return volume
    if getattr(layer, "multiscale", False):
        data = layer.data[0]
    else:
        data = layer.data
    if getattr(layer, "rgb", False) or data.ndim != 3:
        raise Mu2InputError(
            f"layer {layer.name!r} is not a 3D grayscale volume (shape {tuple(data.shape)}); pick a CT layer"
        )
    voxels = np.asarray(data, dtype=np.float32)
    return Volume(
        voxels=voxels,
        spacing=tuple(float(s) for s in layer.scale),
        origin=tuple(float(t) for t in layer.translate[::-1]),
        series_description=str(layer.name),
        warnings=["geometry taken from the napari layer (scale/translate); direction assumed identity"],
    )


def strongest_slice(heatmap: np.ndarray) -> int:
    """Index along z of the slice holding the most heatmap weight (where to scroll to show it)."""
    if heatmap.ndim != 3 or heatmap.size == 0:
        return 0
    return int(np.argmax(heatmap.reshape(heatmap.shape[0], -1).sum(axis=1)))
