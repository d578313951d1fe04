"""The CT ``Volume`` and ``load_volume``: every supported file format ends here as HU voxels + geometry.

Conventions (kept identical everywhere in Mu2):

* ``voxels`` is a float32 array indexed ``(z, y, x)`` holding Hounsfield units.
* ``spacing`` is ``(z, y, x)`` in mm, matching the array axes.
* ``origin`` is the LPS world position ``(x, y, z)`` in mm of voxel ``[0, 0, 0]``, exactly as
  ``SimpleITK.Image.GetOrigin()`` reports it.
* ``direction`` is a 3x3 matrix exactly as ``SimpleITK.Image.GetDirection()`` (row-major): column ``j``
  is the LPS unit vector of image index axis ``j`` in SimpleITK's ``(i, j, k) = (x, y, z)`` order.

So ``Volume.to_sitk()`` gives an image on precisely the input's grid, which is what heatmaps are
written on. No field ever holds patient-identifying data (name, ID, birth date, accession number,
institution, dates).

For M3D-style ``.npy`` inputs (``prepared=True``) ``voxels`` holds the model's [0, 1] intensities
instead of HU and the geometry is unknown (1 mm, identity), which ``warnings`` says.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.errors import Mu2InputError

log = logging.getLogger(__name__)

# A pseudonym is only as private as its key: sites set MU2_SITE_KEY so that case ids cannot be
# recomputed from UIDs elsewhere. The default keeps ids stable for single-user setups.
_DEFAULT_SITE_KEY = "mu2-default-site-key"
SITK_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")


@dataclass
class Volume:
    voxels: np.ndarray
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    modality: str = "CT"
    series_description: str = ""
    case_id: str = ""
    warnings: list[str] = field(default_factory=list)
    # True for M3D-style .npy inputs that are already the model's prepared [0, 1] chunks.
    prepared: bool = False

    def __repr__(self) -> str:
        # The default dataclass repr would print the whole voxel array.
        return (
            f"Volume(shape={self.shape}, spacing={tuple(round(float(s), 4) for s in self.spacing)}, "
            f"modality={self.modality!r}, series_description={self.series_description!r}, "
            f"case_id={self.case_id!r}, prepared={self.prepared}, warnings={len(self.warnings)})"
        )

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.voxels.shape)  # type: ignore[return-value]

    def direction_matrix(self) -> np.ndarray:
        return np.asarray(self.direction, dtype=np.float64).reshape(3, 3)

    def index_to_world(self, zyx: np.ndarray) -> np.ndarray:
        """Map ``(..., 3)`` continuous voxel indices ``(z, y, x)`` to LPS world ``(x, y, z)`` in mm."""
        zyx = np.asarray(zyx, dtype=np.float64)
        ijk = zyx[..., ::-1] * np.asarray(self.spacing[::-1])
        return ijk @ self.direction_matrix().T + np.asarray(self.origin)

    def world_to_index(self, xyz: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`index_to_world`: LPS ``(..., 3)`` in mm to continuous ``(z, y, x)`` indices."""
        xyz = np.asarray(xyz, dtype=np.float64) - np.asarray(self.origin)
        ijk = xyz @ np.linalg.inv(self.direction_matrix()).T / np.asarray(self.spacing[::-1])
        return ijk[..., ::-1]

    def to_sitk(self, array: np.ndarray | None = None):
        """A SimpleITK image on this volume's grid holding ``array`` (default: the HU voxels)."""
        import SimpleITK as sitk

        data = self.voxels if array is None else array
        if tuple(data.shape) != self.shape:
            raise ValueError(f"array shape {data.shape} does not match the volume grid {self.shape}")
        img = sitk.GetImageFromArray(np.ascontiguousarray(data))
        img.SetSpacing(tuple(float(s) for s in self.spacing[::-1]))
        img.SetOrigin(tuple(float(o) for o in self.origin))
        img.SetDirection(tuple(float(d) for d in self.direction))
        return img

    def summary(self) -> dict:
        """PHI-free JSON-ready description (what ``mu2 info --json`` prints)."""
        finite = self.voxels[np.isfinite(self.voxels)] if self.voxels.size else self.voxels
        return {
            "shape": list(self.shape),
            "spacing": [float(s) for s in self.spacing],
            "origin": [float(o) for o in self.origin],
            "direction": [float(d) for d in self.direction],
            "modality": self.modality,
            "series_description": self.series_description,
            "case_id": self.case_id,
            "hu_min": float(finite.min()) if finite.size else None,
            "hu_max": float(finite.max()) if finite.size else None,
            "prepared": self.prepared,
            "warnings": list(self.warnings),
        }


def _site_key() -> bytes:
    key = os.environ.get("MU2_SITE_KEY") or _DEFAULT_SITE_KEY
    # BLAKE2b takes keys of at most 64 bytes; hashing first accepts keys of any length.
    return hashlib.sha256(key.encode("utf-8")).digest()


def keyed_digest(*parts: bytes | str | np.ndarray, prefix: str = "c-", n_hex: int = 12) -> str:
    """A pseudonym: keyed BLAKE2b (site key from ``MU2_SITE_KEY``) of ``parts``, e.g. ``'c-1a2b3c4d5e6f'``.

    Parameters
    ----------
    *parts : bytes, str or numpy.ndarray
        What identifies the case (Study/Series UIDs, or the voxel data when there are no UIDs).
    prefix : str
        Prepended to the hex digest.
    n_hex : int
        Number of hex digits kept.
    """
    h = hashlib.blake2b(key=_site_key(), digest_size=32)
    for part in parts:
        if isinstance(part, np.ndarray):
            h.update(memoryview(np.ascontiguousarray(part)).cast("B"))
        elif isinstance(part, str):
            h.update(part.encode("utf-8"))
        else:
            h.update(part)
        h.update(b"\x00")  # separator: ("ab", "c") and ("a", "bc") must differ
    return prefix + h.hexdigest()[:n_hex]


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def load_volume(path: str | Path, series: str | None = None) -> Volume:
    """Read a CT study from ``path`` (DICOM folder/file, NIfTI, NRRD, MHA/MHD, M3D ``.npy``).

    Parameters
    ----------
    path : str or Path
        A DICOM folder (searched recursively; any file names), a DICOM file (single- or multi-frame),
        ``.nii``/``.nii.gz``, ``.nrrd``/``.nhdr``, ``.mha``/``.mhd``, or an M3D-prepared ``.npy``.
    series : str, optional
        DICOM only: which series to load when a folder holds several — a SeriesInstanceUID, a unique
        prefix of one, the series key Mu2 lists (``'s-…'``) or the series number.

    Returns
    -------
    Volume
        HU voxels on a regular grid; anything Mu2 changed or assumed is described in ``warnings``.

    Raises
    ------
    Mu2InputError
        When ``path`` is not a usable CT volume; the message says why and what to do.
    """
    # Paths are never put into messages: folder and file names often carry patient names.
    p = Path(path).expanduser()
    if not p.exists():
        raise Mu2InputError("no file or folder exists at the given path; check the path and try again")
    if p.name.upper() == "DICOMDIR":
        p = p.parent  # file dialogs offer the DICOMDIR index; the images are in its folder
    if p.is_dir():
        from engine.dicom_io import read_dicom

        return read_dicom(p, series=series)
    suffix = _suffix(p)
    if series is not None and (suffix in SITK_SUFFIXES or suffix == ".npy"):
        raise Mu2InputError("a series can only be chosen in a DICOM folder; this file holds one volume")
    if suffix in SITK_SUFFIXES:
        from engine.volume_formats import read_sitk_file

        return read_sitk_file(p)
    if suffix == ".npy":
        from engine.volume_formats import read_npy

        return read_npy(p)
    from engine.dicom_io import read_dicom

    return read_dicom(p, series=series)
