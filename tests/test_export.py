"""Report export (text, JSON, DICOM SR) and heatmap export (NIfTI on the volume grid)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from engine.errors import Mu2Error
from engine.export import export_dicom_sr, export_heatmap_nifti, export_json, export_text, split_report
from engine.review import ReviewRecord
from engine.volume import Volume

REPORT = "FINDINGS: 4 mm nodule in the right upper lobe (± 1 mm, µ-calcified).\nIMPRESSION: Small pulmonary nodule."


def make_volume() -> Volume:
    c, s = np.cos(0.3), np.sin(0.3)
    return Volume(
        voxels=np.zeros((5, 6, 7), dtype=np.float32),
        spacing=(2.5, 0.7, 0.8),  # (z, y, x)
        origin=(-120.5, 33.25, 410.0),
        direction=(c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0),
        case_id="c-5f3a9e01",
    )


def make_record(decision: str = "edited", final_text: str = REPORT) -> ReviewRecord:
    return ReviewRecord(
        review_id="c" * 32,
        time="2025-01-02T03:04:05.000+00:00",
        case_id="c-5f3a9e01",
        fingerprint="fp1",
        model_id="demo",
        weights_hash="h",
        question="Describe the findings.",
        sampling={"do_sample": False},
        draft_text="FINDINGS: Normal.",
        final_text=final_text,
        decision=decision,
        reviewer="r-0123456789ab",
    )


def text_items(ds: pydicom.Dataset) -> dict[str, str]:
    """Concept meaning → text value of every TEXT item in the SR content tree."""
    found = {}
    for item in ds.get("ContentSequence", []):
        if item.ValueType == "TEXT":
            found[item.ConceptNameCodeSequence[0].CodeMeaning] = item.TextValue
        found.update(text_items(item))
    return found


def test_text_export_round_trip(tmp_path: Path) -> None:
    draft = SimpleNamespace(text=REPORT)
    assert export_text(draft, tmp_path / "a" / "draft.txt").read_text(encoding="utf-8") == REPORT + "\n"
    assert export_text(make_record(), tmp_path / "final.txt").read_text(encoding="utf-8") == REPORT + "\n"
    assert export_text("plain\n", tmp_path / "plain.txt").read_text(encoding="utf-8") == "plain\n"
    with pytest.raises(Mu2Error, match="rejected without a final report"):
        export_text(make_record("rejected", ""), tmp_path / "none.txt")
    assert not (tmp_path / "none.txt").exists()


def test_json_export_round_trip(tmp_path: Path) -> None:
    rec = make_record()
    path = export_json(rec, tmp_path / "review.json")
    assert ReviewRecord.from_dict(json.loads(path.read_text(encoding="utf-8"))) == rec

    draft_json = {"text": REPORT, "timings": {"encode": np.float64(0.25)}, "n_tokens": np.int64(12)}
    draft = SimpleNamespace(to_json=lambda: draft_json)
    back = json.loads(export_json(draft, tmp_path / "draft.json").read_text(encoding="utf-8"))
    assert back == {"text": REPORT, "timings": {"encode": 0.25}, "n_tokens": 12}


def test_split_report_keeps_every_word() -> None:
    assert split_report(REPORT) == (
        "4 mm nodule in the right upper lobe (± 1 mm, µ-calcified).",
        "Small pulmonary nodule.",
    )
    assert split_report("No headers here.") == ("No headers here.", "")
    assert split_report("Technique: CT.\nFindings: Clear.\nImpression: Normal.") == (
        "Technique: CT.\n\nClear.",
        "Normal.",
    )


def test_unverified_sr_from_a_volume_is_phi_free_and_holds_the_report(tmp_path: Path) -> None:
    vol = make_volume()
    path = export_dicom_sr(REPORT, vol, tmp_path / "draft_sr.dcm", verified=False, model_id="demo")
    ds = pydicom.dcmread(path)

    assert ds.SOPClassUID == pydicom.uid.EnhancedSRStorage and ds.Modality == "SR"
    assert (ds.VerificationFlag, ds.CompletionFlag, ds.PreliminaryFlag) == (
        "UNVERIFIED",
        "PARTIAL",
        "PRELIMINARY",
    )
    assert "VerifyingObserverSequence" not in ds
    items = text_items(ds)
    assert items["Finding"] == "4 mm nodule in the right upper lobe (± 1 mm, µ-calcified)."
    assert items["Impression"] == "Small pulmonary nodule."
    assert ds.ConceptNameCodeSequence[0].CodeValue == "18748-4"
    assert ds.ContentTemplateSequence[0].TemplateIdentifier == "2000"

    assert ds.PatientID == "c-5f3a9e01"
    for name in (
        "PatientName",
        "PatientBirthDate",
        "PatientSex",
        "AccessionNumber",
        "StudyDate",
        "StudyTime",
    ):
        assert ds.get(name) in ("", None), name
    assert "InstitutionName" not in ds
    # The stand-in source image does not exist, so it is not listed as evidence.
    assert "CurrentRequestedProcedureEvidenceSequence" not in ds
    assert "PertinentOtherEvidenceSequence" not in ds

    uid = pydicom.uid.generate_uid()
    again = pydicom.dcmread(export_dicom_sr(REPORT, vol, tmp_path / "b.dcm", study_instance_uid=uid))
    assert again.StudyInstanceUID == uid and again.SOPInstanceUID != ds.SOPInstanceUID


def test_verified_sr_names_the_pseudonymous_observer(tmp_path: Path) -> None:
    ds = pydicom.dcmread(
        export_dicom_sr(REPORT, make_volume(), tmp_path / "sr.dcm", verified=True, observer="r-0123456789ab")
    )
    assert (ds.VerificationFlag, ds.CompletionFlag, ds.PreliminaryFlag) == ("VERIFIED", "COMPLETE", "FINAL")
    observer = ds.VerifyingObserverSequence[0]
    assert observer.VerifyingObserverName.family_name == "r-0123456789ab"
    assert observer.VerifyingOrganization == "Mu2"
    assert "Small pulmonary nodule." in text_items(ds).values()

    with pytest.raises(Mu2Error, match="verifying observer"):
        export_dicom_sr(REPORT, make_volume(), tmp_path / "x.dcm", verified=True)
    with pytest.raises(Mu2Error, match="empty"):
        export_dicom_sr("  ", make_volume(), tmp_path / "y.dcm")
    with pytest.raises(Mu2Error, match="needs a Volume"):
        export_dicom_sr(REPORT, np.zeros(3), tmp_path / "z.dcm")


def test_sr_attached_to_an_explicit_source_dataset(tmp_path: Path) -> None:
    from pydicom.dataset import Dataset

    src = Dataset()
    src.SOPClassUID = pydicom.uid.CTImageStorage
    src.SOPInstanceUID = pydicom.uid.generate_uid()
    src.StudyInstanceUID = pydicom.uid.generate_uid()
    src.SeriesInstanceUID = pydicom.uid.generate_uid()
    src.PatientID = "MRN123"
    src.PatientName = "Doe^Jane"

    ds = pydicom.dcmread(export_dicom_sr(REPORT, src, tmp_path / "sr.dcm"))
    assert ds.StudyInstanceUID == src.StudyInstanceUID and ds.SeriesInstanceUID != src.SeriesInstanceUID
    assert (ds.PatientID, str(ds.PatientName)) == ("MRN123", "Doe^Jane")  # asked for explicitly
    ref = ds.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert ref.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID


def test_heatmap_nifti_lies_on_the_volume_grid(tmp_path: Path) -> None:
    vol = make_volume()
    heat = np.random.default_rng(0).random(vol.shape).astype(np.float32)
    path = export_heatmap_nifti(heat, vol, tmp_path / "heat.nii.gz")
    img = sitk.ReadImage(str(path))

    assert img.GetSize() == vol.shape[::-1]
    np.testing.assert_allclose(img.GetSpacing(), vol.spacing[::-1], atol=1e-5)
    np.testing.assert_allclose(img.GetOrigin(), vol.origin, atol=1e-5)
    np.testing.assert_allclose(img.GetDirection(), vol.direction, atol=1e-5)
    np.testing.assert_allclose(sitk.GetArrayFromImage(img), heat, atol=1e-6)
    assert [p.name for p in tmp_path.iterdir()] == ["heat.nii.gz"]

    with pytest.raises(Mu2Error, match="does not fit"):
        export_heatmap_nifti(heat[:-1], vol, tmp_path / "bad.nii.gz")
    with pytest.raises(Mu2Error, match="nii.gz"):
        export_heatmap_nifti(heat, vol, tmp_path / "heat.png")
