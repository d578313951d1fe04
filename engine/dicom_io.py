"""Read a CT volume from a DICOM folder or file (classic single-frame series or Enhanced CT multi-frame).

Headers are read once with pixel data deferred (``engine.dicom_scan``), the series is chosen and its
geometry planned from headers alone (``engine.dicom_geometry``), and only then are the chosen frames
decoded (pydicom with pylibjpeg: JPEG 2000, JPEG Lossless, deflate…), rescaled to HU and placed on
the grid. Nothing identifying leaves this module: messages and warnings name series by their
pseudonymous key, number and protocol description, never by path, UID or patient field.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from engine.dicom_geometry import apply_plan, plan_stack
from engine.dicom_scan import (
    FrameRef,
    SeriesInfo,
    describe,
    frames_of,
    group_series,
    list_files,
    quiet_pydicom,
    read_header,
)
from engine.errors import Mu2InputError
from engine.volume import Volume, keyed_digest
from engine.volume_formats import AIR_HU, check_finite, fix_padding

log = logging.getLogger(__name__)

_OTHER_FORMATS = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd", ".npy")


def _scan(path: Path) -> tuple[list[FrameRef], dict[str, int]]:
    """Frames of every image under ``path`` plus counts of what was skipped (for messages)."""
    single = path.is_file()
    files = [path] if single else list_files(path)
    frames: list[FrameRef] = []
    skipped = {"not_dicom": 0, "no_image": 0, "no_tsyntax": 0, "other_formats": 0}
    with quiet_pydicom():  # values are validated lazily, so keep pydicom quiet while reading them too
        for f in files:
            ds = read_header(f, force=False)
            if ds is None and single:
                ds = read_header(f, force=True)
                if ds is not None and "SOPClassUID" not in ds and "Rows" not in ds:
                    ds = None  # force=True parses anything; without these tags it was not DICOM
            if ds is None:
                skipped["not_dicom"] += 1
                if f.name.lower().endswith(_OTHER_FORMATS):
                    skipped["other_formats"] += 1
                continue
            meta = getattr(ds, "file_meta", None)
            if meta is not None and len(meta) and "TransferSyntaxUID" not in meta:
                skipped["no_tsyntax"] += 1  # the data set cannot even be parsed reliably
                continue
            got = frames_of(ds)
            if not got:
                skipped["no_image"] += 1
            frames.extend(got)
    log.debug("scanned %d files: %d image frames, skipped %s", len(files), len(frames), skipped)
    return frames, skipped


def list_series(path: str | Path) -> list[SeriesInfo]:
    """PHI-free descriptions of the image series in a DICOM folder or file (e.g. for a series chooser)."""
    path = Path(path)
    if not path.exists():
        raise Mu2InputError("no file or folder exists at the given path; check the path and try again")
    frames, _ = _scan(path)
    return [describe(uid, frs) for uid, frs in group_series(frames).items()]


def _match(series: str, infos: list[SeriesInfo]) -> SeriesInfo:
    wanted = series.strip()
    exact = [
        i
        for i in infos
        if wanted in (i.uid, i.key) or (i.number is not None and wanted.lstrip("#") == str(i.number))
    ]
    found = exact or [i for i in infos if i.uid and i.uid.startswith(wanted)]
    if len(found) == 1:
        return found[0]
    listing = _listing(infos, limit=20)
    if not found:
        raise Mu2InputError(f"no series matches the one requested; this folder holds: {listing}")
    raise Mu2InputError(
        f"the requested series matches {len(found)} series, be more specific; found: {listing}"
    )


def _listing(infos: list[SeriesInfo], limit: int = 6) -> str:
    text = "; ".join(i.label() for i in infos[:limit])
    return text + (f"; and {len(infos) - limit} more" if len(infos) > limit else "")


def _choose(
    infos: list[SeriesInfo], skipped: dict[str, int], single_file: bool
) -> tuple[SeriesInfo, list[str]]:
    if not infos:
        if skipped["no_tsyntax"]:
            raise Mu2InputError(
                "the DICOM file-meta header names no transfer syntax, so the pixels cannot be decoded; "
                "re-export the images from the scanner or PACS"
            )
        if skipped["no_image"]:
            raise Mu2InputError(
                "no images here: only DICOM objects without pixel data or non-image objects (structured "
                "reports, segmentations…); open the folder holding the CT image series"
            )
        if single_file:
            raise Mu2InputError(
                "this file is not a readable DICOM image (no DICOM header, damaged, or another format); "
                "Mu2 reads DICOM folders/files, NIfTI, NRRD, MHA/MHD and M3D .npy"
            )
        others = skipped.get("other_formats", 0)
        hint = (
            f" It holds {others} NIfTI/NRRD/MHA/.npy file(s): open one of those files itself."
            if others
            else ""
        )
        raise Mu2InputError(
            "no DICOM images were found in this folder; open the folder holding the CT series, or a NIfTI, "
            f"NRRD, MHA/MHD or M3D .npy file.{hint}"
        )
    ct = [i for i in infos if i.modality in ("CT", "") and not i.localizer]
    if not ct:
        found = sorted({i.modality or "unknown" for i in infos})
        if all(i.localizer for i in infos):
            raise Mu2InputError(
                "only localizer (scout) images here, no CT volume; open the folder of the CT series"
            )
        raise Mu2InputError(
            f"this holds {'/'.join(found)} images, not CT; Mu2 drafts CT reports only (open a CT series)"
        )
    volumes = [i for i in ct if i.n_frames >= 2]
    if not volumes:
        what = "this file holds" if single_file else "the CT series here hold"
        raise Mu2InputError(
            f"{what} only one slice; Mu2 needs a CT volume (many slices): open the folder that holds the "
            "whole series"
        )
    axial = [i for i in volumes if i.orientation == "axial"] or volumes
    axial.sort(key=lambda i: -i.n_frames)
    if len(axial) > 1 and axial[0].n_frames == axial[1].n_frames:
        tied = "; ".join(i.label() for i in axial if i.n_frames == axial[0].n_frames)
        raise Mu2InputError(
            f"this folder holds several CT series of the same size and Mu2 cannot tell which to read: {tied}. "
            "Choose one with series=<key> (mu2 … --series <key>)"
        )
    chosen = axial[0]
    notes = []
    others = [i for i in infos if i is not chosen]
    if others:
        plane = "axial " if chosen.orientation == "axial" else ""
        notes.append(
            f"this folder holds {len(infos)} image series; loaded the {plane}CT series with the most slices, "
            f"{chosen.label()}; others: {_listing(others)}. Pass series=<key> to load another"
        )
    if chosen.orientation not in ("axial", "unknown"):
        notes.append(f"this series is {chosen.orientation}, not axial; the model was trained on axial CT")
    return chosen, notes


_NATIVE_LE = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.1.99"}
_NATIVE_DTYPES = {(16, 0): "<u2", (16, 1): "<i2", (8, 0): "u1", (8, 1): "i1"}


def _native_pixels(fr: FrameRef) -> np.ndarray | None:
    """Uncompressed little-endian grey pixels straight from the bytes (what ``pixel_array`` gives by
    default, without its per-file overhead, which is most of the load time of a series); ``None`` when
    pydicom's full decoder is needed."""
    ds = fr.ds
    if fr.transfer_syntax not in _NATIVE_LE or fr.samples_per_pixel != 1:
        return None
    try:
        key = (int(ds.BitsAllocated), int(ds.PixelRepresentation))  # type: ignore[attr-defined]
    except (AttributeError, TypeError, ValueError):
        return None
    dtype = _NATIVE_DTYPES.get(key)
    if dtype is None or "PixelData" not in ds:  # type: ignore[operator]
        return None
    raw = ds.PixelData  # type: ignore[attr-defined]
    count = fr.n_frames * fr.rows * fr.cols
    need = count * np.dtype(dtype).itemsize
    if not isinstance(raw, bytes | bytearray) or len(raw) < need:
        raise Mu2InputError(
            f"the pixel data of instance {fr.instance} are truncated ({len(raw or b'')} of {need} bytes): the file "
            "is incomplete or damaged; copy or re-export the series again"
        )
    return np.frombuffer(raw, dtype=dtype, count=count).reshape(fr.n_frames, fr.rows, fr.cols)


def _decode(frames: list[FrameRef]) -> tuple[np.ndarray, bool]:
    """Decode ``frames`` (in order) into an (N, rows, cols) float32 HU stack, rescaled per frame.

    Also returns whether any pixel was marked as padding (PixelPaddingValue) and set to air.
    """
    first = frames[0]
    stack = np.empty((len(frames), first.rows, first.cols), dtype=np.float32)
    by_file: dict[int, np.ndarray] = {}
    pad_mask_used = False
    for k, fr in enumerate(frames):
        what = f"image {k + 1} of {len(frames)} (instance {fr.instance})"
        if fr.transfer_syntax is None:
            raise Mu2InputError(
                f"{what} has no transfer syntax (its DICOM file-meta header is incomplete), so its pixels cannot "
                "be decoded safely; re-export the series from the scanner or PACS"
            )
        if fr.samples_per_pixel != 1:
            raise Mu2InputError(f"{what} is a colour image; Mu2 needs grey-scale CT slices")
        key = id(fr.ds)
        if key not in by_file:
            by_file.clear()  # frames of one file are consecutive in practice; keep memory flat
            try:
                with quiet_pydicom():
                    arr = _native_pixels(fr)
                    if arr is None:
                        arr = fr.ds.pixel_array  # type: ignore[attr-defined]
            except Mu2InputError:
                raise
            except Exception as err:
                log.debug("pixel decoding failed: %s", type(err).__name__)
                raise Mu2InputError(
                    f"the pixel data of {what} cannot be decoded: the file is truncated, damaged or uses an "
                    f"unsupported compression ({type(err).__name__}); re-export the series"
                ) from None
            by_file[key] = arr.reshape(fr.n_frames, *arr.shape[-2:]) if arr.ndim >= 2 else arr
        raw = by_file[key][fr.frame] if by_file[key].ndim == 3 else by_file[key]
        if raw.shape != (fr.rows, fr.cols):
            raise Mu2InputError(f"the pixel data of {what} do not match its stated size; the file is damaged")
        out = stack[k]
        np.copyto(out, raw, casting="unsafe")
        if fr.slope != 1.0:
            out *= fr.slope
        if fr.intercept != 0.0:
            out += fr.intercept
        if fr.padding is not None:
            pad = (raw >= fr.padding[0]) & (raw <= fr.padding[1])
            if pad.any():
                out[pad] = AIR_HU
                pad_mask_used = True
    return stack, pad_mask_used


def read_dicom(path: Path, series: str | None = None) -> Volume:
    """Read the CT volume in a DICOM folder (recursive) or a single (multi-frame) DICOM file.

    Parameters
    ----------
    path : Path
        Folder or file.
    series : str, optional
        SeriesInstanceUID, a unique prefix of it, the listed key ``'s-…'`` or the series number.

    Raises
    ------
    Mu2InputError
        No CT volume here, an undecodable or truncated file, or an ambiguous choice of series.
    """
    frames, skipped = _scan(path)
    groups = group_series(frames)
    infos = [describe(uid, frs) for uid, frs in groups.items()]
    if series is not None:
        if not infos:
            _choose(infos, skipped, path.is_file())
        chosen, notes = _match(series, infos), []
        if chosen.modality not in ("CT", ""):
            raise Mu2InputError(f"the chosen series is {chosen.modality}, not CT; Mu2 drafts CT reports only")
    else:
        chosen, notes = _choose(infos, skipped, path.is_file())
    plan = plan_stack(groups[chosen.uid])
    stack, padded = _decode(plan.frames)
    voxels = apply_plan(plan, stack)
    del stack
    check_finite(voxels)
    warnings = notes + plan.warnings
    if skipped["no_tsyntax"]:
        warnings.append(
            f"{skipped['no_tsyntax']} DICOM file(s) here name no transfer syntax and were left out; if slices "
            "are missing, re-export the series"
        )
    if padded:
        warnings.append("pixels marked as padding (outside the scanned field) were set to air (-1024 HU)")
    pad_note = fix_padding(voxels)
    if pad_note:
        warnings.append(pad_note)
    first = plan.frames[0]
    if not first.modality:
        warnings.append("the files do not state their modality; assumed CT")
    if first.rescale_type not in ("", "HU"):
        warnings.append(
            f"rescale type is '{first.rescale_type}', not HU: the values may not be Hounsfield units"
        )
    if voxels.shape[0] < 16:
        extent = voxels.shape[0] * plan.spacing[0]
        warnings.append(
            f"only {voxels.shape[0]} slices ({extent:.0f} mm): Mu2 expects a whole chest CT, the draft may be "
            "meaningless"
        )
    uid_parts = (first.study_uid, first.series_uid)
    case_id = keyed_digest(*uid_parts) if any(uid_parts) else keyed_digest(voxels)
    return Volume(
        voxels=voxels,
        spacing=plan.spacing,
        origin=plan.origin,
        direction=plan.direction,
        modality="CT",
        series_description=first.description,
        case_id=case_id,
        warnings=warnings,
    )
