"""Synthetic chest phantoms: anatomy in HU, LPS orientation, ground-truth masks, reports, DICOM."""

from __future__ import annotations

import re

import numpy as np
import pytest
from scipy import ndimage

from engine.phantom import (
    KINDS,
    LOBES,
    Finding,
    Tissue,
    load_phantom_sample,
    make_phantom,
    report_for,
    write_phantom_dicom,
)
from engine.phantom_findings import LUNG_KINDS, draw_findings
from engine.volume import Volume

ALL_FINDINGS = [
    Finding("Lung nodule", lobe="right upper lobe", size_mm=16),
    Finding("Consolidation", lobe="left lower lobe"),
    Finding("Pleural effusion", side="right", size_mm=30),
    Finding("Pericardial effusion", size_mm=12),
    Finding("Cardiomegaly"),
    Finding("Emphysema"),
    Finding("Atelectasis", lobe="right middle lobe"),
    Finding("Lymphadenopathy", size_mm=18),
    Finding("Arterial wall calcification"),
    Finding("Coronary artery wall calcification"),
]

# Words that name a finding; in a normal report every sentence holding one must negate it.
FINDING_WORDS = re.compile(
    r"nodul|consolidat|effusion|cardiomegaly|enlarged|emphysem|atelecta|lymphadenopath|lymph node|"
    r"calcif|atheroscl",
    re.IGNORECASE,
)
NEGATION = re.compile(r"\b(?:no|not|without)\b", re.IGNORECASE)


@pytest.fixture(scope="module")
def normal():
    return make_phantom(1, findings=[])


@pytest.fixture(scope="module")
def everything():
    return make_phantom(11, findings=ALL_FINDINGS)


def _sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.;])\s+|\n+", text) if s.strip()]


def test_default_grid_and_identity(normal):
    vol = normal.volume
    assert isinstance(vol, Volume)
    assert vol.shape == (64, 128, 128)
    assert vol.voxels.dtype == np.float32
    assert vol.spacing == pytest.approx((5.0, 2.8, 2.8))
    assert vol.direction == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    assert vol.modality == "CT"
    assert vol.case_id == "phantom-1"
    assert vol.series_description == "Mu2 synthetic chest phantom"
    fov = np.array(vol.shape) * np.array(vol.spacing)
    assert 280 <= fov[0] <= 340 and 330 <= fov[1] <= 380 and 330 <= fov[2] <= 380
    # Whole HU within the CT range, so DICOM int16 storage is lossless.
    assert np.array_equal(vol.voxels, np.rint(vol.voxels))
    assert vol.voxels.min() >= -1024 and vol.voxels.max() <= 3071


def test_tissue_hu_ranges(normal):
    v, lab = normal.volume.voxels, normal.labels

    def median(t):
        return float(np.median(v[lab == t]))

    assert v[normal.lung_mask()].mean() < -700
    assert v[lab == Tissue.LUNG].mean() < -780
    assert abs(median(Tissue.HEART) - 40) < 15
    assert v[lab == Tissue.BONE].mean() > 300
    assert abs(median(Tissue.OUTSIDE) + 1000) < 15
    assert abs(median(Tissue.FAT) + 100) < 25
    assert abs(median(Tissue.MUSCLE) - 40) < 15
    assert abs(median(Tissue.LIVER) - 60) < 15
    assert median(Tissue.AIRWAY) < -700
    # Noise of 10-20 HU, measured in air well away from the body (clipping at -1024 trims it a little).
    air = v[ndimage.binary_erosion(lab == Tissue.OUTSIDE, iterations=3)]
    assert 5 < air.std() < 20
    for t in (Tissue.HEART, Tissue.GREAT_VESSEL, Tissue.VESSEL, Tissue.PERICARDIUM, Tissue.MEDIASTINUM):
        assert (lab == t).sum() > 0, t.name


def test_contrast_brightens_blood_pool():
    plain = make_phantom(2, findings=[])
    enhanced = make_phantom(2, findings=[], contrast=True)
    aorta = plain.labels == Tissue.GREAT_VESSEL
    assert np.median(enhanced.volume.voxels[aorta]) > np.median(plain.volume.voxels[aorta]) + 120


def test_same_seed_same_phantom():
    a, b = make_phantom(5), make_phantom(5)
    assert np.array_equal(a.volume.voxels, b.volume.voxels)
    assert a.findings == b.findings
    assert a.report == b.report
    assert all(np.array_equal(x, y) for x, y in zip(a.masks, b.masks))


def test_seeds_vary_anatomy_and_findings():
    phantoms = [make_phantom(s) for s in range(4)]
    body = [(p.labels != Tissue.OUTSIDE).sum() for p in phantoms]
    lungs = [p.lung_mask().sum() for p in phantoms]
    assert len(set(body)) == 4 and len(set(lungs)) == 4
    assert not np.array_equal(phantoms[0].volume.voxels, phantoms[1].volume.voxels)
    assert len({tuple(p.findings) for p in phantoms}) > 1


def test_random_findings_include_normal_studies():
    draws = [draw_findings(np.random.default_rng(s)) for s in range(400)]
    normal_fraction = sum(not d for d in draws) / len(draws)
    assert 0.12 < normal_fraction < 0.3
    seen = {f.kind for d in draws for f in d}
    assert seen == set(KINDS)
    assert all(len({f.kind for f in d}) == len(d) for d in draws)


def test_editing_findings_keeps_the_anatomy():
    base = make_phantom(8, findings=[])
    edited = make_phantom(8, findings=[Finding("Lung nodule", lobe="left upper lobe", size_mm=12)])
    changed = base.volume.voxels != edited.volume.voxels
    assert changed.any()
    near = ndimage.binary_dilation(edited.masks[0], iterations=3)
    assert not (changed & ~near).any()


def test_findings_resolved_and_masks_nonempty(everything):
    assert [f.kind for f in everything.findings] == [f.kind for f in ALL_FINDINGS]
    assert len(everything.masks) == len(everything.findings)
    for f, m in zip(everything.findings, everything.masks):
        assert m.shape == everything.volume.shape and m.dtype == bool
        assert m.sum() > 0, f
    auto = make_phantom(3, findings=[Finding("Lung nodule"), Finding("Pleural effusion")])
    nodule, effusion = auto.findings
    assert nodule.lobe in LOBES and nodule.side == nodule.lobe.split()[0] and 5 <= nodule.size_mm <= 30
    assert effusion.side in ("right", "left", "bilateral") and effusion.size_mm > 0


def test_lung_masks_inside_lungs_and_lobes(everything):
    lungs = everything.lung_mask()
    for f, m in zip(everything.findings, everything.masks):
        if f.kind in LUNG_KINDS:
            assert not (m & ~lungs).any(), f
        if f.lobe:
            assert not (m & ~everything.lung_mask(f.lobe)).any(), f
    assert not (everything.mask_of("Pleural effusion") & ~everything.lung_mask("right")).any()
    emph = everything.mask_of("Emphysema")
    upper = everything.lung_mask("right upper lobe") | everything.lung_mask("left upper lobe")
    assert not (emph & ~upper).any()


def test_findings_look_like_their_kind(everything):
    v = everything.volume.voxels

    def core(kind):
        return ndimage.binary_erosion(everything.mask_of(kind))

    lung_hu = v[everything.labels == Tissue.LUNG].mean()
    assert v[core("Lung nodule")].mean() > lung_hu + 600
    assert abs(v[core("Pleural effusion")].mean() - 10) < 40
    assert v[everything.mask_of("Emphysema")].mean() < -880
    assert v[everything.mask_of("Arterial wall calcification")].max() > 300
    assert v[everything.mask_of("Coronary artery wall calcification")].max() > 300
    # Cardiomegaly: the heart is wider than in a normal phantom of the same seed.
    plain = make_phantom(11, findings=[])

    def width(p):
        heart = p.labels == Tissue.HEART
        return max(
            np.ptp(np.flatnonzero(heart[z].any(axis=0))) for z in range(heart.shape[0]) if heart[z].any()
        )

    assert width(everything) > 1.15 * width(plain)


def test_right_is_low_x_index_in_lps():
    p = make_phantom(
        4,
        findings=[
            Finding("Lung nodule", lobe="right upper lobe", size_mm=14),
            Finding("Lung nodule", lobe="left upper lobe", size_mm=14),
            Finding("Pleural effusion", side="right", size_mm=30),
        ],
    )
    right, left, effusion = (ndimage.center_of_mass(m) for m in p.masks)
    assert right[2] < left[2]
    # With identity direction +x is the patient's left: the right nodule lies at negative world x.
    assert p.volume.index_to_world(np.array(right))[0] < 0 < p.volume.index_to_world(np.array(left))[0]
    assert ndimage.center_of_mass(p.lung_mask("right"))[2] < ndimage.center_of_mass(p.lung_mask("left"))[2]
    # Dependent fluid is posterior (high y index) in a supine patient; upper lobes are superior.
    assert effusion[1] > ndimage.center_of_mass(p.lung_mask("right"))[1]
    upper = ndimage.center_of_mass(p.lung_mask("right upper lobe"))
    lower = ndimage.center_of_mass(p.lung_mask("right lower lobe"))
    assert upper[0] > lower[0]
    # The liver dome is under the right hemidiaphragm, at the bottom of the volume.
    liver = ndimage.center_of_mass(p.labels == Tissue.LIVER)
    assert liver[2] < p.volume.shape[2] / 2 and liver[0] < p.volume.shape[0] / 3


def test_report_mentions_every_finding(everything):
    report = everything.report
    assert report.count("FINDINGS:") == 1 and report.count("IMPRESSION:") == 1
    assert report.startswith("FINDINGS:\n") and "\n\nIMPRESSION:\n" in report
    findings_text, impression = report.split("\n\nIMPRESSION:\n")
    words = {
        "Lung nodule": "nodule",
        "Consolidation": "consolidation",
        "Pleural effusion": "pleural effusion",
        "Pericardial effusion": "pericardial effusion",
        "Cardiomegaly": "cardiomegaly",
        "Emphysema": "emphysem",
        "Atelectasis": "atelectasis",
        "Lymphadenopathy": "lymph",
        "Arterial wall calcification": "aort",
        "Coronary artery wall calcification": "coronary artery calcification",
    }
    for f in everything.findings:
        for text in (findings_text.lower(), impression.lower()):
            assert words[f.kind] in text, (f, text)
        if f.lobe:
            assert f.lobe in findings_text and f.lobe in impression
        if f.kind in ("Lung nodule", "Lymphadenopathy", "Pleural effusion", "Pericardial effusion"):
            assert f"{f.size_mm:.0f} mm" in findings_text
    assert re.search(r"\bright pleural effusion\b|pleural effusion[^.]* on the right", findings_text.lower())
    assert "None" not in report


def test_normal_report_has_no_positive_finding(normal):
    reports = [normal.report] + [report_for([], rng) for rng in range(40)]
    for report in reports:
        assert "FINDINGS:\n" in report and "\n\nIMPRESSION:\n" in report
        for sentence in _sentences(report):
            if FINDING_WORDS.search(sentence):
                assert NEGATION.search(sentence), sentence


def test_normal_statements_never_contradict_findings():
    for kind in KINDS:
        for rng in range(15):
            report = report_for([Finding(kind)], rng).lower()
            if kind == "Pleural effusion":
                assert "no pleural" not in report and "pleural effusion-thickening was not" not in report
            if kind == "Pericardial effusion":
                assert (
                    "pericardial effusion was" not in report
                    and "pericardial effusion-thickening" not in report
                )
            if kind == "Lymphadenopathy":
                assert "no enlarged lymph" not in report and "no mediastinal or hilar" not in report
            if kind == "Cardiomegaly":
                assert (
                    "heart size is normal" not in report and "heart contour and size are normal" not in report
                )
            if kind in ("Lung nodule", "Consolidation", "Atelectasis"):
                assert "no nodul" not in report and "no nodule" not in report


def test_report_for_is_deterministic_and_varies():
    findings = [Finding("Lung nodule", lobe="left lower lobe", size_mm=7.5), Finding("Emphysema")]
    assert report_for(findings, 3) == report_for(findings, 3)
    assert report_for(findings, np.random.default_rng(3)) == report_for(findings, 3)
    assert len({report_for(findings, s) for s in range(12)}) > 3
    assert "7.5 mm" in report_for(findings, 0)
    # Partially specified findings (a reviewer's edit) still read naturally.
    loose = report_for([Finding("Lung nodule"), Finding("Pleural effusion")], 1)
    assert "nodule" in loose and "pleural effusion" in loose.lower() and "None" not in loose


def test_finding_validation():
    assert Finding("Atelectasis", lobe="left upper lobe").side == "left"
    f = Finding("Lung nodule", lobe="right middle lobe", size_mm=9)
    assert Finding(**f.as_dict()) == f
    with pytest.raises(ValueError):
        Finding("Pneumothorax")
    with pytest.raises(ValueError):
        Finding("Lung nodule", side="left", lobe="right upper lobe")
    with pytest.raises(ValueError):
        Finding("Lung nodule", lobe="lingula")
    with pytest.raises(ValueError):
        make_phantom(-1)
    with pytest.raises(ValueError):
        make_phantom(0, shape=(4, 128, 128))


def test_other_shapes_keep_the_field_of_view():
    small = make_phantom(
        2, findings=[Finding("Lung nodule", lobe="right lower lobe", size_mm=20)], shape=(32, 64, 64)
    )
    assert small.volume.spacing == pytest.approx((10.0, 5.6, 5.6))
    assert small.masks[0].sum() > 0
    fixed = make_phantom(2, findings=[], shape=(16, 32, 32), spacing=(4.0, 4.0, 4.0))
    assert fixed.volume.spacing == (4.0, 4.0, 4.0) and fixed.volume.shape == (16, 32, 32)


def test_dicom_roundtrip_through_simpleitk(tmp_path):
    sitk = pytest.importorskip("SimpleITK")
    pydicom = pytest.importorskip("pydicom")
    phantom = make_phantom(6)
    paths = write_phantom_dicom(phantom, tmp_path / "series")
    assert len(paths) == phantom.volume.shape[0] and all(p.exists() for p in paths)

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(tmp_path / "series")))
    image = reader.Execute()
    array = sitk.GetArrayFromImage(image).astype(np.float32)
    vol = phantom.volume
    assert array.shape == vol.shape
    assert np.abs(array - vol.voxels).max() <= 1.0
    assert np.allclose(image.GetOrigin(), vol.origin, atol=1e-4)
    assert np.allclose(image.GetSpacing(), vol.spacing[::-1], atol=1e-4)
    assert np.allclose(image.GetDirection(), vol.direction, atol=1e-4)

    ds = pydicom.dcmread(paths[0])
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert str(ds.PatientName) == "PHANTOM^SYNTHETIC" and ds.PatientID == "PHANTOM-6"
    assert ds.SeriesDescription == "Mu2 synthetic chest phantom"
    assert ds.Modality == "CT" and float(ds.RescaleIntercept) == -1024 and float(ds.RescaleSlope) == 1
    assert ds.PixelRepresentation == 1 and ds.BitsAllocated == 16
    again = pydicom.dcmread(write_phantom_dicom(phantom, tmp_path / "again")[0])
    assert again.SOPInstanceUID == ds.SOPInstanceUID and again.SeriesInstanceUID == ds.SeriesInstanceUID
    other = pydicom.dcmread(write_phantom_dicom(make_phantom(7), tmp_path / "other")[0])
    assert other.SeriesInstanceUID != ds.SeriesInstanceUID


def test_load_phantom_sample():
    vol = load_phantom_sample()
    assert isinstance(vol, Volume)
    assert vol.case_id == "phantom-7" and vol.shape == (64, 128, 128)
    assert vol.voxels.min() < -900 and vol.voxels.max() > 300
