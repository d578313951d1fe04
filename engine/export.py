"""Report and heatmap export: plain text, JSON, DICOM SR (highdicom) and the heatmap as NIfTI.

PHI: a ``Volume`` carries no patient data and no DICOM UIDs, by design. An SR exported from a ``Volume``
therefore gets a PHI-free patient/study header — the pseudonymous ``case_id`` as PatientID, empty
PatientName, birth date, sex, accession number, study ID, study date and time, and new Study/Series/SOP
Instance UIDs unless given — and references no source images. Such an SR does not file itself into the
patient's study in a PACS. To attach it to the real study, pass the source series' DICOM dataset (or
the path of one of its files) instead: that is an explicit request, and the SR then copies the patient and
study attributes (PHI included) from it and lists it as evidence, as DICOM requires.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import Mu2Error
from engine.review_store import json_default
from engine.volume import Volume

log = logging.getLogger(__name__)

MANUFACTURER = "Mu2"
# Same headers as engine.draft.split_sections; parsed here so export needs no torch, and so text before
# the first header is kept instead of dropped.
_SECTION = re.compile(r"(?im)^\s*(findings|impression)\s*:\s*")


def _write_atomic(path: str | Path, data: bytes) -> Path:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=path.suffix, dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except OSError as err:
        raise Mu2Error(f"cannot write {path}: {err}") from err
    return path


def _report_text(item: Any) -> str:
    if isinstance(item, str):
        return item
    if hasattr(item, "final_text") and hasattr(item, "decision"):  # a ReviewRecord
        if not item.final_text.strip():
            raise Mu2Error(f"review {item.review_id} was rejected without a final report; nothing to export")
        return item.final_text
    if hasattr(item, "text"):  # a Draft
        return item.text
    raise Mu2Error(f"cannot export a {type(item).__name__} as a report; pass a Draft, ReviewRecord or text")


def export_text(draft_or_record: Any, path: str | Path) -> Path:
    """Write the report as UTF-8 plain text.

    Parameters
    ----------
    draft_or_record : Draft, ReviewRecord or str
        A draft exports its text; a review record its final (signed-off) text.
    path : str or Path
        Output file; parent folders are created.

    Returns
    -------
    Path
        The written file.
    """
    text = _report_text(draft_or_record)
    return _write_atomic(path, (text if text.endswith("\n") else text + "\n").encode("utf-8"))


def export_json(draft_or_record: Any, path: str | Path) -> Path:
    """Write a draft (``Draft.to_json()``, no arrays) or a review record (``to_dict()``) as JSON.

    ``ReviewRecord.from_dict(json.load(...))`` restores an exported record.
    """
    if hasattr(draft_or_record, "to_dict"):
        data = draft_or_record.to_dict()
    elif hasattr(draft_or_record, "to_json"):
        data = draft_or_record.to_json()
    elif isinstance(draft_or_record, dict):
        data = draft_or_record
    else:
        raise Mu2Error(
            f"cannot export a {type(draft_or_record).__name__} as JSON; pass a Draft or ReviewRecord"
        )
    text = json.dumps(data, ensure_ascii=False, indent=2, default=json_default)
    return _write_atomic(path, (text + "\n").encode("utf-8"))


def split_report(text: str) -> tuple[str, str]:
    """``(findings, impression)`` of a report with ``FINDINGS:``/``IMPRESSION:`` headers.

    Without headers everything is findings. Text before the first header is kept at the start of the
    findings, and repeated sections are joined, so no words of the report are lost.
    """
    parts = _SECTION.split(text)
    findings, impression = [parts[0].strip()], []
    for i in range(1, len(parts) - 1, 2):
        (findings if parts[i].lower() == "findings" else impression).append(parts[i + 1].strip())
    return "\n\n".join(p for p in findings if p), "\n\n".join(p for p in impression if p)


def _evidence_from(volume_or_reference: Any, study_uid: str | None):
    """(evidence dataset, whether it is a real source instance) for highdicom."""
    from pydicom import dcmread
    from pydicom.dataset import Dataset
    from pydicom.errors import InvalidDicomError
    from pydicom.uid import CTImageStorage, generate_uid

    if isinstance(volume_or_reference, (str, Path)):
        try:
            volume_or_reference = dcmread(volume_or_reference, stop_before_pixels=True)
        except (OSError, InvalidDicomError) as err:
            raise Mu2Error(f"cannot read the reference DICOM file {volume_or_reference}: {err}") from err
    if isinstance(volume_or_reference, Dataset):
        ref = volume_or_reference
        missing = [
            k
            for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")
            if k not in ref
        ]
        if missing:
            raise Mu2Error(
                f"the reference DICOM dataset lacks {', '.join(missing)}; pass an image of the series"
            )
        ref = ref.copy()
        for name in (
            "PatientID",
            "PatientName",
            "PatientBirthDate",
            "PatientSex",
            "AccessionNumber",
            "StudyID",
            "StudyDate",
            "StudyTime",
        ):
            if name not in ref:
                setattr(ref, name, "")  # type 2 in the SR: present, possibly empty
        return ref, True
    if not isinstance(volume_or_reference, Volume):
        raise Mu2Error(
            f"export_dicom_sr needs a Volume, a pydicom Dataset or a DICOM file path, not "
            f"{type(volume_or_reference).__name__}"
        )
    # A stand-in "source image" from PHI-free values only; it is never listed as evidence.
    ev = Dataset()
    ev.SOPClassUID = CTImageStorage
    ev.SOPInstanceUID = generate_uid()
    ev.StudyInstanceUID = study_uid or generate_uid()
    ev.SeriesInstanceUID = generate_uid()
    ev.PatientID = volume_or_reference.case_id
    for name in (
        "PatientName",
        "PatientBirthDate",
        "PatientSex",
        "AccessionNumber",
        "StudyID",
        "StudyDate",
        "StudyTime",
        "ReferringPhysicianName",
    ):
        setattr(ev, name, "")
    return ev, False


def _content(findings: str, impression: str, model_id: str | None):
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    def code(value: str, scheme: str, meaning: str) -> hd.sr.CodedConcept:
        return hd.sr.CodedConcept(value=value, scheme_designator=scheme, meaning=meaning)

    contains = hd.sr.RelationshipTypeValues.CONTAINS
    # TID 2000 Basic Diagnostic Imaging Report: language, observer context, then one container per section.
    root = hd.sr.ContainerContentItem(code("18748-4", "LN", "Diagnostic Imaging Report"), template_id="2000")
    items = list(
        hd.sr.LanguageOfContentItemAndDescendants(code("en-US", "RFC5646", "English (United States)"))
    )
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        # A stable UID per model, so reports of one model share their device observer.
        uid=generate_uid(entropy_srcs=["mu2", model_id or "unknown"]),
        name=f"Mu2 {model_id}" if model_id else "Mu2",
        manufacturer_name=MANUFACTURER,
        model_name=model_id,
    )
    items += list(hd.sr.ObserverContext(codes.DCM.Device, device))
    for title, item, text in (
        (code("121070", "DCM", "Findings"), code("121071", "DCM", "Finding"), findings),
        (code("121072", "DCM", "Impressions"), code("121073", "DCM", "Impression"), impression),
    ):
        if not text:
            continue
        section = hd.sr.ContainerContentItem(title, relationship_type=contains)
        section.ContentSequence = hd.sr.ContentSequence(
            [hd.sr.TextContentItem(item, text, relationship_type=contains)]
        )
        items.append(section)
    root.ContentSequence = hd.sr.ContentSequence(items)
    return root


def export_dicom_sr(
    report_text: str,
    volume_or_reference: Volume | Any,
    path: str | Path,
    verified: bool = False,
    observer: str | None = None,
    *,
    organization: str = MANUFACTURER,
    model_id: str | None = None,
    study_instance_uid: str | None = None,
    series_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
    series_number: int = 901,
) -> Path:
    """Write the report as a DICOM Enhanced SR (TID 2000 layout: FINDINGS and IMPRESSION text sections).

    Parameters
    ----------
    report_text : str
        The report; ``FINDINGS:``/``IMPRESSION:`` headers split it into sections.
    volume_or_reference : Volume, pydicom.Dataset, str or Path
        A ``Volume`` gives a PHI-free header (see the module docstring); a dataset or file of the source
        series attaches the SR to that study and copies its patient data — only pass one on purpose.
    path : str or Path
        Output ``.dcm`` file.
    verified : bool
        ``True`` only when a radiologist signed the text off (accepted or edited it): VerificationFlag
        ``VERIFIED``, CompletionFlag ``COMPLETE``, PreliminaryFlag ``FINAL``. Otherwise ``UNVERIFIED``,
        ``PARTIAL``, ``PRELIMINARY`` — a machine draft.
    observer : str, optional
        The verifying observer, required when ``verified`` (ignored otherwise): the pseudonymous reviewer
        id, written as the family-name component of VerifyingObserverName.
    organization : str
        Verifying organization.
    model_id : str, optional
        Names the drafting model in the SR's device observer context and ManufacturerModelName.
    study_instance_uid, series_instance_uid, sop_instance_uid : str, optional
        UIDs to use; new ones are generated otherwise (the study UID only for a ``Volume``).
    series_number : int
        Series Number of the SR.

    Returns
    -------
    Path
        The written file.
    """
    import highdicom as hd
    from pydicom.uid import generate_uid

    if verified and not (observer and observer.strip()):
        raise Mu2Error("a verified SR needs the verifying observer: pass the (pseudonymous) reviewer id")
    if verified and "^" not in observer:
        observer = observer.strip() + "^"  # a PN with the family-name component only, not a malformed name
    findings, impression = split_report(report_text)
    if not findings and not impression:
        raise Mu2Error("the report is empty; nothing to export as DICOM SR")
    evidence, real = _evidence_from(volume_or_reference, study_instance_uid)
    try:
        sr = hd.sr.EnhancedSR(
            evidence=[evidence],
            content=_content(findings, impression, model_id),
            series_instance_uid=series_instance_uid or generate_uid(),
            series_number=series_number,
            sop_instance_uid=sop_instance_uid or generate_uid(),
            instance_number=1,
            manufacturer=MANUFACTURER,
            is_complete=verified,
            is_final=verified,
            is_verified=verified,
            verifying_observer_name=observer if verified else None,
            verifying_organization=organization if verified else None,
            record_evidence=real,
            series_description="Mu2 report (verified)" if verified else "Mu2 AI draft report (unverified)",
            manufacturer_model_name=model_id,
            # UTF-8 whatever the source used, since reports hold characters like µ and ±.
            specific_character_set="ISO_IR 192",
        )
    except (ValueError, TypeError, AttributeError) as err:
        raise Mu2Error(f"cannot build the DICOM SR: {err}") from err
    if not real:
        # highdicom lists the stand-in as evidence of the current procedure; it does not exist, so drop it.
        for name in ("CurrentRequestedProcedureEvidenceSequence", "PertinentOtherEvidenceSequence"):
            if name in sr:
                delattr(sr, name)
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".dcm", dir=path.parent)
        os.close(fd)
        try:
            sr.save_as(tmp, enforce_file_format=True)
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    except OSError as err:
        raise Mu2Error(f"cannot write {path}: {err}") from err
    log.info("wrote %s DICOM SR %s", "verified" if verified else "unverified", path)
    return path


def export_heatmap_nifti(heatmap: np.ndarray, volume: Volume, path: str | Path) -> Path:
    """Write the token-selection heatmap as NIfTI on exactly the volume's grid.

    Parameters
    ----------
    heatmap : numpy.ndarray
        ``(z, y, x)`` map with the volume's shape (``Draft.heatmap``), stored as float32.
    volume : Volume
        Supplies spacing, origin and direction.
    path : str or Path
        Output file ending in ``.nii.gz`` (or ``.nii``).

    Returns
    -------
    Path
        The written file.
    """
    import SimpleITK as sitk

    path = Path(path)
    if not path.name.endswith((".nii.gz", ".nii")):
        raise Mu2Error(f"heatmap export writes NIfTI: name the file *.nii.gz, not {path.name}")
    try:
        image = volume.to_sitk(np.asarray(heatmap, dtype=np.float32))
    except ValueError as err:
        raise Mu2Error(f"the heatmap does not fit this volume: {err}") from err
    suffix = ".nii.gz" if path.name.endswith(".nii.gz") else ".nii"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=path.parent)
        os.close(fd)
        try:
            sitk.WriteImage(image, tmp, useCompression=suffix == ".nii.gz")
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    except (OSError, RuntimeError) as err:
        raise Mu2Error(f"cannot write {path}: {err}") from err
    return path
