"""Readers for the non-DICOM formats: NIfTI / NRRD / MHA / MHD through SimpleITK, and M3D ``.npy``.

Error messages never include the path: file names often carry patient names.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from engine.errors import Mu2InputError
from engine.volume import Volume, keyed_digest

log = logging.getLogger(__name__)

# Below this the image holds no air, which every CT of a body part has around it.
_MAX_PLAUSIBLE_CT_MIN = -500.0
AIR_HU = -1024.0
_PAD_MIN_HU = -1500.0  # CT values below this are never tissue or air: they mark pixels outside the scan
_PAD_MIN_FRACTION = 0.001


def check_finite(voxels: np.ndarray) -> None:
    """Raise :class:`Mu2InputError` when ``voxels`` holds NaN or infinite values."""
    # np.isfinite(min) and (max) is enough: any NaN propagates into min/max.
    lo, hi = float(np.min(voxels)), float(np.max(voxels))
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise Mu2InputError(
            "the image holds NaN or infinite values, so it is not a valid CT volume; "
            "re-export it from the original DICOM series"
        )


def fix_padding(voxels: np.ndarray) -> str | None:
    """Set a padding value far below air (outside the reconstruction circle) to air, in place.

    Returns the warning to show, or ``None`` when nothing was changed. Padding matters beyond display:
    at -2048 or -3024 HU it would move the percentiles the intensity scaling is anchored to.
    """
    lo = float(voxels.min())
    if lo > _PAD_MIN_HU:
        return None
    mask = voxels == lo
    fraction = float(np.count_nonzero(mask)) / voxels.size
    if fraction < _PAD_MIN_FRACTION:
        return None
    voxels[mask] = AIR_HU
    return (
        f"{100 * fraction:.1f}% of the voxels held {lo:.0f} HU, a padding value outside the reconstructed "
        "field of view; set to air (-1024 HU)"
    )


def ct_plausibility_warnings(voxels: np.ndarray) -> list[str]:
    """Warnings for data that do not look like Hounsfield units (the model was trained on HU)."""
    lo = float(np.min(voxels))
    if lo > _MAX_PLAUSIBLE_CT_MIN:
        return [
            f"the lowest value is {lo:.0f}, but a CT in Hounsfield units has air near -1000; "
            "this may not be a CT in HU (e.g. an MR or a normalised image) and the draft may be meaningless"
        ]
    return []


def read_sitk_file(path: Path) -> Volume:
    """Read a NIfTI / NRRD / MHA / MHD file with SimpleITK into a :class:`Volume`.

    Raises
    ------
    Mu2InputError
        When the file is damaged, not 3-D, not scalar, a single slice, or holds NaNs.
    """
    import SimpleITK as sitk

    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as err:
        log.debug("SimpleITK could not read the file: %s", type(err).__name__)
        raise Mu2InputError(
            "this file could not be read as a NIfTI/NRRD/MHA image: it is damaged, truncated or not an image"
        ) from None
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise Mu2InputError("this image has colour/vector pixels; Mu2 needs a grey-scale CT volume in HU")
    if img.GetDimension() == 4:
        size = img.GetSize()
        if size[3] != 1:
            raise Mu2InputError(
                f"this is a 4-D image ({size[3]} volumes); Mu2 needs one 3-D CT volume, save one phase on its own"
            )
        img = img[:, :, :, 0]
    if img.GetDimension() == 2 or (img.GetDimension() == 3 and 1 in img.GetSize()[2:]):
        raise Mu2InputError("this image has only one slice; Mu2 needs a CT volume (many slices)")
    if img.GetDimension() != 3:
        raise Mu2InputError(f"this is a {img.GetDimension()}-D image; Mu2 needs a 3-D CT volume")
    voxels = sitk.GetArrayViewFromImage(img)
    voxels = np.array(voxels, dtype=np.float32, copy=True)
    check_finite(voxels)
    warnings = [w for w in [fix_padding(voxels)] if w] + ct_plausibility_warnings(voxels)
    spacing = tuple(float(s) for s in img.GetSpacing()[::-1])
    origin = tuple(float(o) for o in img.GetOrigin())
    direction = tuple(float(d) for d in img.GetDirection())
    return Volume(
        voxels=voxels,
        spacing=spacing,  # type: ignore[arg-type]
        origin=origin,  # type: ignore[arg-type]
        direction=direction,
        modality="CT",
        series_description="",
        case_id=keyed_digest(voxels, np.asarray(spacing + origin + direction)),
        warnings=warnings,
    )


def _as_prepared_stack(arr: np.ndarray) -> np.ndarray:
    """(32,256,256), (1,32,256,256), (T,32,256,256), (1,1,32,256,256)… → (D, H, W)."""
    while arr.ndim > 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim == 4:
        arr = arr.reshape(-1, *arr.shape[2:])
    if arr.ndim != 3:
        raise Mu2InputError(
            f"this .npy array has shape {tuple(arr.shape)}; Mu2 reads M3D-prepared arrays shaped "
            "(1, 32, 256, 256), (32, 256, 256) or (chunks, 32, 256, 256)"
        )
    return arr


def read_npy(path: Path) -> Volume:
    """Read an M3D-style prepared ``.npy`` (values in [0, 1], no geometry) as a ``prepared`` Volume.

    Raises
    ------
    Mu2InputError
        When the file is not a plain numeric array in [0, 1] of a supported shape.
    """
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        log.debug("np.load failed: %s", type(err).__name__)
        raise Mu2InputError(
            "this .npy file could not be read as a plain numeric array (damaged, truncated or pickled)"
        ) from None
    if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "fiu" or arr.size == 0:
        raise Mu2InputError("this .npy file does not hold a numeric image array")
    arr = _as_prepared_stack(arr)
    voxels = np.ascontiguousarray(arr, dtype=np.float32)
    check_finite(voxels)
    lo, hi = float(voxels.min()), float(voxels.max())
    if lo < -1e-3 or hi > 1 + 1e-3:
        raise Mu2InputError(
            f"this .npy array holds values from {lo:.4g} to {hi:.4g}; Mu2 reads .npy only as an "
            "M3D-prepared volume scaled to [0, 1] (a .npy has no geometry). Save raw CT as NIfTI instead"
        )
    np.clip(voxels, 0.0, 1.0, out=voxels)
    return Volume(
        voxels=voxels,
        modality="CT",
        case_id=keyed_digest(voxels),
        warnings=[
            "M3D-prepared .npy: values are model intensities in [0, 1], not HU, and the file stores no "
            "geometry (spacing shown as 1 mm, orientation unknown)"
        ],
        prepared=True,
    )
