"""Write a phantom as a DICOM CT series: one Explicit VR Little Endian file per slice.

Pixels are int16 with RescaleSlope 1 and RescaleIntercept -1024, so whole-HU phantoms round-trip
exactly. Geometry (ImagePositionPatient, ImageOrientationPatient, PixelSpacing, SliceThickness) is
taken from the ``Volume``, so SimpleITK's ``ImageSeriesReader`` reproduces its grid. Identifiers are
obviously synthetic (``PHANTOM^SYNTHETIC``) and UIDs are derived from the seed and the findings, so
the same phantom always gets the same UIDs and different phantoms never share them.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, CTImageStorage, ExplicitVRLittleEndian, generate_uid

from engine.errors import Mu2InputError

if TYPE_CHECKING:
    from engine.phantom import Phantom

logger = logging.getLogger(__name__)

_INTERCEPT = -1024.0


def _ds(value: float) -> str:
    # DS strings are at most 16 characters; 6 decimals keep geometry well below 1e-4 mm error.
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def _uid(key: str, *parts: object) -> str:
    return generate_uid(entropy_srcs=[key, *(str(p) for p in parts)])


def write_phantom_dicom(phantom: Phantom, folder: str | Path) -> list[Path]:
    """Write ``phantom`` as a CT series in ``folder`` (created if needed).

    Parameters
    ----------
    phantom
        A ``Phantom`` from ``make_phantom``.
    folder
        Target folder; files are named ``slice_0000.dcm`` ... in inferior-to-superior order.

    Returns
    -------
    list of Path
        The written files, one per slice, in slice order.

    Raises
    ------
    Mu2InputError
        When the folder cannot be created or written.
    """
    vol = phantom.volume
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise Mu2InputError(
            f"cannot create the DICOM folder {folder}: {err}; choose a writable folder"
        ) from err

    nz, ny, nx = vol.shape
    sz, sy, sx = (float(s) for s in vol.spacing)
    direction = vol.direction_matrix()
    row_dir, col_dir, slice_dir = direction[:, 0], direction[:, 1], direction[:, 2]
    origin = np.asarray(vol.origin, dtype=np.float64)
    digest = hashlib.sha256(
        repr(([f.as_dict() for f in phantom.findings], vol.shape, vol.spacing)).encode()
    ).hexdigest()[:16]
    key = f"mu2-phantom-{phantom.seed}-{digest}"
    study_uid, series_uid, frame_uid = (_uid(key, part) for part in ("study", "series", "frame"))
    stored = np.clip(np.rint(vol.voxels - _INTERCEPT), -32768, 32767).astype(np.int16)

    paths = []
    for k in range(nz):
        sop_uid = _uid(key, "sop", k)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID

        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop_uid
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.Modality = "CT"
        ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
        ds.Manufacturer = "Mu2"
        ds.SeriesDescription = vol.series_description or "Mu2 synthetic chest phantom"
        ds.StudyDescription = "Synthetic chest CT phantom"
        ds.BodyPartExamined = "CHEST"
        ds.PatientName = "PHANTOM^SYNTHETIC"
        ds.PatientID = f"PHANTOM-{phantom.seed}"
        # Type 2 attributes stay present but empty: a phantom has no birth date, sex or dates.
        for empty in (
            "PatientBirthDate",
            "PatientSex",
            "StudyDate",
            "StudyTime",
            "AccessionNumber",
            "ReferringPhysicianName",
        ):
            setattr(ds, empty, "")
        ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = "Synthetic phantom, no patient data"
        ds.StudyID = "1"
        ds.SeriesNumber = 1
        ds.InstanceNumber = k + 1
        ds.PatientPosition = "HFS"

        position = origin + k * sz * slice_dir
        ds.ImagePositionPatient = [_ds(v) for v in position]
        ds.ImageOrientationPatient = [_ds(v) for v in (*row_dir, *col_dir)]
        ds.PixelSpacing = [_ds(sy), _ds(sx)]
        ds.SliceThickness = _ds(sz)
        ds.SpacingBetweenSlices = _ds(sz)
        ds.SliceLocation = _ds(float(position @ slice_dir))

        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = ny, nx
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.RescaleIntercept = _ds(_INTERCEPT)
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
        ds.WindowCenter = "40"
        ds.WindowWidth = "400"
        ds.PixelData = np.ascontiguousarray(stored[k]).tobytes()

        path = folder / f"slice_{k:04d}.dcm"
        try:
            ds.save_as(path, enforce_file_format=True)
        except OSError as err:
            raise Mu2InputError(f"cannot write {path}: {err}; choose a writable folder") from err
        paths.append(path)
    logger.info("wrote %d DICOM slices of %s to %s", len(paths), vol.case_id, folder)
    return paths
