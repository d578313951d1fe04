"""napari writer: an image layer (the μ²Tokenizer heatmap, or the CT itself) as NIfTI via ``engine.export``.

The file lands on the CT's own grid (spacing, origin and full direction): the layer's ``Volume`` is
used when the layer carries one (the reader's CT layers and the widget's heatmap layer do), otherwise
the geometry is rebuilt from the layer's ``scale``/``translate`` with an identity direction.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from mu2_napari.layers import VOLUME_KEY

log = logging.getLogger(__name__)


def _volume_for(array: np.ndarray, meta: dict) -> Any:
    from engine.volume import Volume

    volume = (meta.get("metadata") or {}).get(VOLUME_KEY)
    if volume is not None and tuple(volume.shape) == array.shape:
        return volume
    scale = meta.get("scale") or (1.0, 1.0, 1.0)
    translate = meta.get("translate") or (0.0, 0.0, 0.0)
    # Only the grid matters to the export: a read-only broadcast stands in for the voxels.
    return Volume(
        voxels=np.broadcast_to(np.float32(0), array.shape),
        spacing=tuple(float(s) for s in scale),
        origin=tuple(float(t) for t in translate[::-1]),
    )


def write_image_nifti(path: str, data: Any, meta: dict) -> list[str]:
    """npe2 single-layer writer: ``path`` (``.nii.gz``/``.nii``) ← the image layer ``data``."""
    from engine.errors import Mu2Error
    from engine.export import export_heatmap_nifti

    array = np.asarray(data[0] if meta.get("multiscale") else data, dtype=np.float32)
    if array.ndim != 3:
        raise Mu2Error(f"Mu2 writes 3D image layers as NIfTI; layer {meta.get('name')!r} is {array.ndim}D")
    out = Path(path)
    if not out.name.endswith((".nii", ".nii.gz")):
        out = out.with_name(out.name + ".nii.gz")
    volume = _volume_for(array, meta)
    export_heatmap_nifti(array, volume, out)
    log.info("wrote %s", out)
    return [str(out)]
