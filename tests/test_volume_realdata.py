"""load_volume on the real third-party CTs in ../shared/realdata (skipped when it is absent)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from engine.errors import Mu2InputError
from engine.volume import Volume, load_volume

CPTAC = "ct/dicom_chest_cptac_C3N-00247"
TOTALSEG = "ct/totalsegmentator"
TILT = "ct/dicom_head_gantry_tilt_dcm_qa_ct_GE"
EDGE = "ct/dicom_edge_cases"


def sitk_series(folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))  # GDCM sorts by position
    return reader.Execute()


def assert_same_grid(vol: Volume, img: sitk.Image, values: bool = True) -> None:
    assert vol.shape == img.GetSize()[::-1]
    np.testing.assert_allclose(vol.spacing, img.GetSpacing()[::-1], atol=1e-4)
    np.testing.assert_allclose(vol.origin, img.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(vol.direction, img.GetDirection(), atol=1e-4)
    if values:
        np.testing.assert_array_equal(vol.voxels, sitk.GetArrayFromImage(img).astype(np.float32))


def test_chest_ct_out_of_order_names_matches_simpleitk(realdata):
    folder = realdata / CPTAC
    names = sorted(folder.glob("*.dcm"))
    first = pydicom.dcmread(names[0], stop_before_pixels=True)
    assert int(first.InstanceNumber) != 1  # the point of this series: names are not slice order
    vol = load_volume(folder)
    assert_same_grid(vol, sitk_series(folder))
    assert vol.shape == (99, 512, 512) and vol.spacing[0] == pytest.approx(3.0)
    assert vol.warnings == []
    assert vol.series_description == "LUNG 3.0  B70f"
    assert vol.summary()["hu_min"] == -1024.0


def test_jpeg2000_series_with_overlapping_slices(realdata):
    folder = realdata / TOTALSEG / "example_ct_dicom"
    vol = load_volume(folder)
    assert_same_grid(vol, sitk_series(folder))
    assert vol.spacing[0] == pytest.approx(2.0)  # the 2 mm step, not the 3 mm slice thickness
    # TotalSegmentator's labels were written (dcm2niix, LAS) on this very grid: the same world box.
    seg = sitk.ReadImage(str(realdata / TOTALSEG / "example_seg_dicom.nii.gz"))
    corners = np.array([[z, y, x] for z in (0, vol.shape[0] - 1) for y in (0, 511) for x in (0, 511)], float)
    ours = np.sort(vol.index_to_world(corners), axis=0)
    theirs = np.sort([seg.TransformContinuousIndexToPhysicalPoint(c[::-1].tolist()) for c in corners], axis=0)
    np.testing.assert_allclose(ours, theirs, atol=0.01)


@pytest.mark.parametrize("name", ["example_ct_sm.nii.gz", "example_ct.nii.gz"])
def test_nifti_matches_simpleitk(realdata, name):
    path = realdata / TOTALSEG / name
    vol = load_volume(path)
    assert_same_grid(vol, sitk.ReadImage(str(path)))
    assert vol.case_id.startswith("c-") and vol.warnings == []


def test_gantry_tilt_and_varying_spacing(realdata):
    folder = realdata / TILT
    vol = load_volume(folder)
    ref = json.loads((folder / "dcm2niix_reference_json" / "_2.json").read_text())
    assert ref["Modality"] == vol.modality == "CT"
    note = " ".join(vol.warnings)
    assert "18.5°" in note and "gantry tilt" in note  # the shear, measured and from the header
    assert "spacing varies" in note and "resampled" in note
    assert "padding" in note  # PixelPaddingValue -1500
    # The volume keeps the slices' own orientation (dcm2niix's ImageOrientationPatientDICOM).
    d = vol.direction_matrix()
    np.testing.assert_allclose(np.r_[d[:, 0], d[:, 1]], ref["ImageOrientationPatientDICOM"], atol=1e-4)
    assert vol.spacing[1:] == pytest.approx((0.48828, 0.48828), abs=1e-4)
    assert vol.voxels.min() >= -1024.0
    # Geometry check: sample the volume where every pixel of slice 20 lies in the world.
    ds = pydicom.dcmread(folder / "20.dcm")
    hu = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    iop = np.array(ds.ImageOrientationPatient, float)
    j, i = np.mgrid[100:400:7, 100:400:7]
    world = np.array(ds.ImagePositionPatient, float) + (
        i[..., None] * iop[:3] + j[..., None] * iop[3:]
    ) * float(ds.PixelSpacing[0])
    img = vol.to_sitk()
    ours = np.array([img.EvaluateAtPhysicalPoint(tuple(p), sitk.sitkLinear) for p in world.reshape(-1, 3)])
    theirs = hu[j, i].reshape(-1)
    assert np.corrcoef(ours, theirs)[0, 1] > 0.98
    assert np.median(np.abs(ours - theirs)) < 15.0


def test_enhanced_ct_multiframe(realdata):
    path = realdata / EDGE / "pydicom_data" / "eCT_Supplemental.dcm"
    vol = load_volume(path)
    assert vol.shape == (2, 512, 512) and vol.spacing[0] == pytest.approx(10.0)
    assert vol.origin == pytest.approx((99.5, -301.5, -149.0))  # the frame lowest along the normal
    np.testing.assert_allclose(vol.direction_matrix()[:, 0], [-1, 0, 0])
    raw = pydicom.dcmread(path).pixel_array.astype(np.float32) - 1024.0
    # Frame 1 (z = -149) comes first along the normal (0, 0, -1); frame 0 (z = -159) second.
    np.testing.assert_array_equal(vol.voxels, raw[[1, 0]])


EDGE_EXPECT = {
    # path relative to dicom_edge_cases: (shape or None for refused, words the message/warnings must hold)
    "dcmqi_ct3slice_with_seg": ((3, 512, 512), "padding"),
    "dcmqi_sr_no_pixel_data": (None, "no images"),
    "dcmqi_sr_no_pixel_data/tid1500_sr.dcm": (None, "no images"),
    "dcmqi_ct3slice_with_seg/liver_seg.dcm": (None, "no images"),
    "lungmask_minimal_lidc": ((2, 512, 512), "modality"),
    "pydicom/MR_truncated.dcm": (None, "MR"),
    "pydicom/meta_missing_tsyntax.dcm": (None, "transfer syntax"),
    "pydicom/no_meta.dcm": (None, "not a readable DICOM"),
    "pydicom/image_dfl.dcm": (None, "OT"),
    "pydicom/CT_small.dcm": (None, "only one slice"),
    "pydicom_data/bad_sequence.dcm": (None, "only one slice"),
    "pydicom_data/693_J2KR.dcm": (None, "only one slice"),
    "pydicom_data/explicit_VR-UN.dcm": (None, "only one slice"),
    "nema_wg04_via_dwv/nema-ct1_jpll.dcm": (None, "only one slice"),
    "nema_wg04_via_dwv": (None, "one slice position"),
    "pydicom_dicomdir_mixed_series/77654033/CT2": ((3, 16, 16), "separate blocks"),
    "pydicom_dicomdir_mixed_series/98892001": ((5, 16, 16), "localizer"),
    "pydicom_dicomdir_mixed_series/98892001/CT2N": (None, "localizer"),
}


def _edge_paths(root: Path) -> list[Path]:
    return [root] + sorted(root.rglob("*"))


def test_every_edge_case_loads_or_is_refused_clearly(realdata):
    root = realdata / EDGE
    seen = set()
    for path in _edge_paths(root):
        rel = path.relative_to(root).as_posix() if path != root else ""
        try:
            vol = load_volume(path)
        except Mu2InputError as err:
            msg = str(err)
            assert len(msg) > 30 and "Traceback" not in msg
            outcome = (None, msg)
        else:
            assert vol.voxels.dtype == np.float32 and vol.voxels.ndim == 3 and np.isfinite(vol.voxels).all()
            assert np.all(np.array(vol.spacing) > 0)
            np.testing.assert_allclose(
                vol.direction_matrix() @ vol.direction_matrix().T, np.eye(3), atol=1e-6
            )
            outcome = (vol.shape, " ".join(vol.warnings))
        if rel in EDGE_EXPECT:
            shape, words = EDGE_EXPECT[rel]
            assert outcome[0] == shape, rel
            assert words in outcome[1], (rel, outcome[1])
            seen.add(rel)
    assert seen == set(EDGE_EXPECT)


def test_minimal_tags_series_geometry(realdata):
    vol = load_volume(realdata / EDGE / "lungmask_minimal_lidc")
    assert vol.spacing == pytest.approx((1.0, 0.625, 0.625))
    assert vol.origin == pytest.approx((0.0, 0.0, 0.0))
    assert vol.voxels.min() > -1100.0  # the -2048 outside the field of view became air (noise stays)
    assert any("-2048" in w for w in vol.warnings)


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom, while this test rewrites the files
@pytest.mark.parametrize(
    "name",
    [
        "nema_wg04_via_dwv/nema-ct1_jpll.dcm",  # JPEG Lossless
        "nema_wg04_via_dwv/nema-ct1_j2ki.dcm",  # lossy JPEG 2000
        "pydicom_data/bad_sequence.dcm",  # JPEG Lossless with an invalid sequence
        "pydicom_data/693_J2KR.dcm",  # J2K bit-depth mismatch
        "pydicom_data/explicit_VR-UN.dcm",  # VR UN everywhere
        "pydicom/CT_small.dcm",
    ],
)
def test_compressed_single_slices_decode_in_a_series(realdata, tmp_path, name):
    """Single slices are refused as volumes, so give each a second position and decode the pair."""
    src = realdata / EDGE / name
    ds = pydicom.dcmread(src)
    expected = ds.pixel_array.astype(np.float32) * float(ds.get("RescaleSlope", 1)) + float(
        ds.get("RescaleIntercept", 0)
    )
    shutil.copy(src, tmp_path / "a.dcm")
    ds2 = pydicom.dcmread(src)
    ipp = [float(v) for v in ds2.ImagePositionPatient]
    normal = np.cross(*np.array(ds2.ImageOrientationPatient, float).reshape(2, 3))
    ds2.ImagePositionPatient = [f"{v:.4f}" for v in np.array(ipp) + 5.0 * normal]
    ds2.SOPInstanceUID = pydicom.uid.generate_uid()
    ds2.save_as(tmp_path / "b.dcm")
    vol = load_volume(tmp_path)
    assert vol.shape == (2, *expected.shape) and vol.spacing[0] == pytest.approx(5.0, abs=1e-3)
    first = vol.voxels[0]
    pad = first == -1024.0  # values marked as padding become air; compare the rest
    np.testing.assert_array_equal(first[~pad], expected[~pad])
    np.testing.assert_array_equal(vol.voxels[1], first)


def test_truncated_slice_in_a_series_is_refused(realdata, tmp_path):
    files = sorted((realdata / CPTAC).glob("*.dcm"))[:6]
    for f in files:
        shutil.copy(f, tmp_path / f.name)
    victim = tmp_path / files[3].name
    victim.write_bytes(victim.read_bytes()[:-5000])
    with pytest.raises(Mu2InputError, match="truncated"):
        load_volume(tmp_path)
