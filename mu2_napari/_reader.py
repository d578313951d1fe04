"""napari reader: CT volumes (DICOM folders/files, NIfTI, NRRD, MHA/MHD, M3D ``.npy``) via ``engine``.

``napari_get_reader`` decides from the path alone (cheap checks, never raises) whether Mu2 handles it.
A handled path that then turns out to be unreadable does not raise into napari: the reader shows the
engine's message as a napari error notification and returns napari's "opened, but no layers" sentinel
``[(None,)]`` (an empty list would make napari raise "No readers returned data").
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from mu2_napari.layers import ct_layer_data, layer_name

log = logging.getLogger(__name__)

VOLUME_SUFFIXES = (".dcm", ".dicom", ".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd", ".npy")
_NO_LAYERS = [(None,)]  # npe2's null-layer sentinel: handled, nothing to add
_DIR_PROBE = 16  # files looked at to decide whether a folder holds DICOM


def _has_dicom_magic(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def _is_dicom_folder(folder: Path, depth: int = 3) -> bool:
    """Whether ``folder`` (or a subfolder, as in DICOMDIR exports) holds DICOM; looks at a few entries only."""
    subfolders: list[str] = []
    try:
        with os.scandir(folder) as entries:
            for i, entry in enumerate(entries):
                if i >= _DIR_PROBE * 4:
                    break
                if entry.is_dir():
                    subfolders.append(entry.path)
                    continue
                name = entry.name.lower()
                if name.endswith((".dcm", ".dicom")) or name == "dicomdir":
                    return True
                if "." not in name and _has_dicom_magic(Path(entry.path)):
                    return True
    except OSError:
        return False
    return depth > 0 and any(_is_dicom_folder(Path(sub), depth - 1) for sub in subfolders[:_DIR_PROBE])


def handles(path: str | os.PathLike) -> bool:
    """Whether Mu2 reads ``path``: a known volume suffix, a DICOM folder, or an extension-less DICOM file."""
    try:
        p = Path(path)
        name = p.name.lower()
        if p.is_dir():
            return _is_dicom_folder(p)
        if name.endswith(VOLUME_SUFFIXES):
            return True
        # Extension-less files are DICOM only when they carry the preamble; anything else is not ours.
        return "." not in name and p.is_file() and _has_dicom_magic(p)
    except (OSError, TypeError, ValueError):
        return False


def napari_get_reader(path: str | Sequence[str]) -> Callable | None:
    """npe2 reader contribution: a reader function for ``path``, or ``None`` when Mu2 does not handle it."""
    try:
        paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
        if not paths or not all(handles(p) for p in paths):
            return None
    except Exception:  # noqa: BLE001 - the contract is "never raise"; a bad argument is just not ours
        log.debug("not handling %r", path, exc_info=True)
        return None
    return read_volumes


def read_volumes(path: str | Sequence[str], stack: bool = False) -> list:
    """Read each path as one CT layer; problems become notifications, never exceptions."""
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    layers = []
    for p in paths:
        layer = _read_one(p)
        if layer is not None:
            layers.append(layer)
    return layers or _NO_LAYERS


def _read_one(path: str | os.PathLike) -> tuple | None:
    from engine.errors import Mu2Error
    from engine.volume import load_volume

    try:
        volume = load_volume(path)
    except Mu2Error as err:
        _notify_error(str(err))
        return None
    except Exception as err:  # noqa: BLE001 - a reader must not take napari down on a malformed file
        log.exception("unexpected failure reading %s", path)
        _notify_error(f"cannot read {Path(path).name}: {type(err).__name__}: {err}")
        return None
    if volume.warnings:
        # The user must see these (another series was loaded, too few slices, padding replaced …).
        from napari.utils.notifications import show_warning

        message = f"Mu2: {layer_name(volume)}: " + "; ".join(volume.warnings)
        log.warning("%s", message)
        show_warning(message)
    return ct_layer_data(volume)


def _notify_error(message: str) -> None:
    from napari.utils.notifications import show_error

    log.error("%s", message)
    show_error(f"Mu2: {message}")
