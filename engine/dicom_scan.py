"""Scan DICOM files: read headers only, describe each image frame without PHI, group frames by series.

Pixel data are not read here (``defer_size``): pydicom records where they are and decodes them later,
only for the series that is loaded. Only geometry and technical fields are copied out of the headers;
patient, study-date, institution and accession fields are never touched.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.errors import Mu2InputError
from engine.volume import keyed_digest

log = logging.getLogger(__name__)

MAX_FILES = 50_000  # a folder larger than this is not one study; refuse rather than scan for minutes
_NON_IMAGE_MODALITIES = {
    "SR",
    "SEG",
    "RTSTRUCT",
    "RTPLAN",
    "RTRECORD",
    "PR",
    "KO",
    "DOC",
    "REG",
    "RWV",
    "PLAN",
}
_SEG_SOP = "1.2.840.10008.5.1.4.1.1.66.4"
_SKIP_NAMES = {"DICOMDIR"}
_MAX_SIDE = 8192  # pixels per image side; larger values are damaged headers, not CT
_MAX_MM = 1e5


@dataclass
class FrameRef:
    """One 2-D image frame of one file: the PHI-free header facts Mu2 needs to place it in a volume."""

    ds: object = field(repr=False)  # pydicom Dataset with deferred pixel data (never shown)
    frame: int  # index within a multi-frame file, 0 for single-frame files
    n_frames: int
    series_uid: str
    study_uid: str
    series_number: int | None
    description: str
    modality: str
    image_type: tuple[str, ...]
    rows: int
    cols: int
    ipp: np.ndarray | None  # ImagePositionPatient (LPS mm)
    iop: np.ndarray | None  # ImageOrientationPatient (row cosine, column cosine)
    pixel_spacing: tuple[float, float] | None  # (between rows, between columns) in mm
    slope: float
    intercept: float
    rescale_type: str
    padding: tuple[float, float] | None  # raw stored value range marking padding (inclusive)
    instance: int
    gantry_tilt: float
    transfer_syntax: str | None
    samples_per_pixel: int


_quiet_lock = threading.Lock()
_quiet_depth = 0
_quiet_saved: dict = {}
_tls = threading.local()


class _DropWhileQuiet(logging.Filter):
    """Drops pydicom log records emitted by a thread that is inside :func:`quiet_pydicom`."""

    def filter(self, record: logging.LogRecord) -> bool:  # noqa: D102 - logging API
        return not getattr(_tls, "quiet", False)


_PYDICOM_LOG_FILTER = _DropWhileQuiet()


@contextlib.contextmanager
def quiet_pydicom() -> Iterator[None]:
    """Silence pydicom's warnings and logs while reading: their texts may quote header values (PHI).

    Thread-safe and re-entrant: log records are dropped only for the calling thread; the global
    settings (validation mode, a warnings filter for pydicom's modules) are set by the outermost
    entry and restored by the last exit.
    """
    import pydicom.config

    global _quiet_depth
    logger = logging.getLogger("pydicom")
    with _quiet_lock:
        if _PYDICOM_LOG_FILTER not in logger.filters:
            logger.addFilter(_PYDICOM_LOG_FILTER)
        if _quiet_depth == 0:
            _quiet_saved["mode"] = pydicom.config.settings.reading_validation_mode
            pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
            warnings.filterwarnings("ignore", module=r"pydicom(\.|$)")
            _quiet_saved["filter"] = warnings.filters[0]
        _quiet_depth += 1
    was_quiet = getattr(_tls, "quiet", False)
    _tls.quiet = True
    try:
        yield
    finally:
        _tls.quiet = was_quiet
        with _quiet_lock:
            _quiet_depth -= 1
            if _quiet_depth == 0:
                pydicom.config.settings.reading_validation_mode = _quiet_saved.pop("mode")
                entry = _quiet_saved.pop("filter")
                if entry in warnings.filters:
                    # An "ignore" entry leaves no trace in the warning registries, so removing it is enough;
                    # CPython's cache-invalidation hook is called where it exists.
                    warnings.filters.remove(entry)
                    getattr(warnings, "_filters_mutated", lambda: None)()


def _float(value, default: float | None = None) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return default


def _floats(value, n: int) -> np.ndarray | None:
    try:
        arr = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return arr if arr.shape == (n,) and np.all(np.isfinite(arr)) else None


def _int(value, default: int | None = None) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _get(ds, keyword: str, default=None):
    try:
        value = ds.get(keyword, default)
    except Exception:  # a damaged element must not stop the scan
        return default
    return default if value is None or value == "" else value


def _first_item(ds, seq_keyword: str):
    seq = _get(ds, seq_keyword)
    try:
        return seq[0] if seq else None
    except (TypeError, IndexError):
        return None


def _functional(ds, frame: int, seq_keyword: str):
    """An Enhanced-object functional group item: the per-frame one, else the shared one."""
    per_frame = _get(ds, "PerFrameFunctionalGroupsSequence")
    if per_frame is not None and frame < len(per_frame):
        item = _first_item(per_frame[frame], seq_keyword)
        if item is not None:
            return item
    shared = _first_item(ds, "SharedFunctionalGroupsSequence")
    return _first_item(shared, seq_keyword) if shared is not None else None


def _padding(ds) -> tuple[float, float] | None:
    pad = _float(_get(ds, "PixelPaddingValue"))
    if pad is None:
        return None
    limit = _float(_get(ds, "PixelPaddingRangeLimit"), pad)
    return (min(pad, limit), max(pad, limit))


def _valid_iop(iop: np.ndarray) -> bool:
    row, col = iop[:3], iop[3:]
    nr, nc = np.linalg.norm(row), np.linalg.norm(col)
    return bool(abs(nr - 1) < 0.05 and abs(nc - 1) < 0.05 and abs(row @ col) < 0.05)


def frames_of(ds) -> list[FrameRef]:
    """Describe every image frame of a header-only dataset (empty when it holds no image)."""
    modality = str(_get(ds, "Modality", "")).upper()
    sop_class = str(_get(ds, "SOPClassUID", ""))
    if modality in _NON_IMAGE_MODALITIES or sop_class == _SEG_SOP or "PixelData" not in ds:
        return []
    rows, cols = _int(_get(ds, "Rows"), 0), _int(_get(ds, "Columns"), 0)
    if not rows or not cols or rows > _MAX_SIDE or cols > _MAX_SIDE:
        return []
    if (_int(_get(ds, "SamplesPerPixel"), 1) or 1) != 1:
        return []  # colour: screenshots, dose reports, secondary captures — never a CT slice
    n_frames = max(1, _int(_get(ds, "NumberOfFrames"), 1) or 1)
    if n_frames > 20_000:
        return []
    meta = getattr(ds, "file_meta", None)
    tsyntax = str(meta.get("TransferSyntaxUID")) if meta is not None and "TransferSyntaxUID" in meta else None
    common = {
        "ds": ds,
        "n_frames": n_frames,
        "series_uid": str(_get(ds, "SeriesInstanceUID", "")),
        "study_uid": str(_get(ds, "StudyInstanceUID", "")),
        "series_number": _int(_get(ds, "SeriesNumber")),
        "description": str(_get(ds, "SeriesDescription", "")).strip(),
        "modality": modality,
        "image_type": tuple(str(t).upper() for t in (_get(ds, "ImageType") or ())),
        "rows": rows,
        "cols": cols,
        "instance": _int(_get(ds, "InstanceNumber"), 0) or 0,
        "gantry_tilt": _float(_get(ds, "GantryDetectorTilt"), 0.0) or 0.0,
        "transfer_syntax": tsyntax,
        "samples_per_pixel": _int(_get(ds, "SamplesPerPixel"), 1) or 1,
        "padding": _padding(ds),
    }
    enhanced = _get(ds, "PerFrameFunctionalGroupsSequence") is not None
    out = []
    for frame in range(n_frames):
        if enhanced:
            pos = _functional(ds, frame, "PlanePositionSequence")
            ori = _functional(ds, frame, "PlaneOrientationSequence")
            meas = _functional(ds, frame, "PixelMeasuresSequence")
            pvt = _functional(ds, frame, "PixelValueTransformationSequence")
            src = {"ipp": pos, "iop": ori, "ps": meas, "rescale": pvt}
        else:
            src = {"ipp": ds, "iop": ds, "ps": ds, "rescale": ds}
        ipp = _floats(_get(src["ipp"], "ImagePositionPatient"), 3) if src["ipp"] is not None else None
        iop = _floats(_get(src["iop"], "ImageOrientationPatient"), 6) if src["iop"] is not None else None
        ps = _floats(_get(src["ps"], "PixelSpacing"), 2) if src["ps"] is not None else None
        # Implausible geometry (damaged headers) is treated as missing rather than trusted.
        if ipp is not None and np.abs(ipp).max() > _MAX_MM:
            ipp = None
        if iop is not None and not _valid_iop(iop):
            iop = None
        if ps is not None and not (np.all(ps > 1e-3) and np.all(ps < 100)):
            ps = None
        resc = src["rescale"] if src["rescale"] is not None else ds
        out.append(
            FrameRef(
                frame=frame,
                ipp=ipp,
                iop=iop,
                pixel_spacing=(float(ps[0]), float(ps[1])) if ps is not None else None,
                slope=_float(_get(resc, "RescaleSlope"), 1.0) or 1.0,
                intercept=_float(_get(resc, "RescaleIntercept"), 0.0) or 0.0,
                rescale_type=str(_get(resc, "RescaleType", "")).upper(),
                **common,
            )
        )
    return out


def read_header(path: Path, force: bool = False):
    """Header-only pydicom read (pixel data deferred); ``None`` when the file is not DICOM."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        with quiet_pydicom():
            return pydicom.dcmread(str(path), defer_size=1024, force=force)
    except (InvalidDicomError, EOFError):
        return None
    except Exception as err:  # damaged files of any kind are reported, never a traceback
        log.debug("unreadable DICOM header (%s)", type(err).__name__)
        return None


def list_files(folder: Path) -> list[Path]:
    """All regular files under ``folder`` (recursive, hidden files and DICOMDIR skipped), sorted."""
    files: list[Path] = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            if name.startswith(".") or name.upper() in _SKIP_NAMES:
                continue
            files.append(Path(root) / name)
            if len(files) > MAX_FILES:
                raise Mu2InputError(
                    f"this folder holds more than {MAX_FILES} files; open the folder of one CT study or series"
                )
    return files


@dataclass
class SeriesInfo:
    """A PHI-free description of one image series found in a folder."""

    key: str  # pseudonymous selector, 's-…'
    number: int | None
    description: str
    modality: str
    n_frames: int
    orientation: str  # 'axial', 'coronal', 'sagittal', 'oblique', 'unknown'
    localizer: bool
    uid: str = field(repr=False, default="")  # used for selection only; never shown

    def label(self) -> str:
        num = f"#{self.number} " if self.number is not None else ""
        desc = f"'{self.description}' " if self.description else ""
        kind = "localizer" if self.localizer else self.orientation
        return f"{self.key} {num}{desc}({self.modality or 'modality unknown'}, {kind}, {self.n_frames} image{'s' if self.n_frames != 1 else ''})"


def orientation_of(iop: np.ndarray | None) -> str:
    """Name the acquisition plane from ImageOrientationPatient (by the slice normal's main axis)."""
    if iop is None:
        return "unknown"
    normal = np.cross(iop[:3], iop[3:])
    norm = np.linalg.norm(normal)
    if norm < 1e-6:
        return "unknown"
    normal = np.abs(normal / norm)
    axis = int(np.argmax(normal))
    if normal[axis] < 0.8:  # more than ~37° off every axis
        return "oblique"
    return ("sagittal", "coronal", "axial")[axis]


def series_key(uid: str) -> str:
    return keyed_digest(uid, prefix="s-", n_hex=8)


def group_series(frames: list[FrameRef]) -> dict[str, list[FrameRef]]:
    """Frames grouped by SeriesInstanceUID (insertion order kept)."""
    groups: dict[str, list[FrameRef]] = {}
    for fr in frames:
        groups.setdefault(fr.series_uid, []).append(fr)
    return groups


def describe(uid: str, frames: list[FrameRef]) -> SeriesInfo:
    first = frames[0]
    iops = [f.iop for f in frames if f.iop is not None]
    orientations = {orientation_of(iop) for iop in iops} or {"unknown"}
    localizer = any("LOCALIZER" in f.image_type or "SCOUT" in f.image_type for f in frames)
    # Localizers are a few orthogonal images; mixed planes in one series mean the same.
    localizer = localizer or (len(orientations) > 1 and len(frames) <= 3)
    return SeriesInfo(
        key=series_key(uid),
        number=first.series_number,
        description=first.description,
        modality=first.modality,
        n_frames=len(frames),
        orientation=orientations.pop() if len(orientations) == 1 else "mixed",
        localizer=localizer,
        uid=uid,
    )
