"""load_volume on synthetic DICOM series with known geometry: sorting, irregular stacks, series choice, PHI."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from engine.errors import Mu2InputError
from engine.volume import Volume, load_volume

PHI = {
    "PatientName": "Doe^Jane^Q",
    "PatientID": "PID-98765",
    "PatientBirthDate": "19610203",
    "AccessionNumber": "ACC-55555",
    "InstitutionName": "Saint Example Hospital",
    "StudyDate": "20240102",
    "SeriesDate": "20240102",
    "ReferringPhysicianName": "Who^Doctor",
}
PHI_STRINGS = [
    "Doe",
    "Jane",
    "PID-98765",
    "98765",
    "19610203",
    "1961",
    "ACC-55555",
    "55555",
    "Saint Example",
    "20240102",
]


def field_hu(world: np.ndarray) -> np.ndarray:
    """A linear HU field: linear interpolation reproduces it exactly, so resampled values are checkable."""
    return 100.0 + 2.0 * world[..., 0] + 1.5 * world[..., 1] + 3.0 * world[..., 2]


def write_series(
    folder: Path,
    positions: list[tuple[float, float, float]],
    iop=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
    shape=(24, 20),
    pixel_spacing=(0.8, 0.7),
    series_uid: str | None = None,
    study_uid: str | None = None,
    modality: str = "CT",
    description: str = "CHEST 1.0 B30f",
    series_number: int = 3,
    image_type=("ORIGINAL", "PRIMARY", "AXIAL"),
    padding: int | None = None,
    hu=field_hu,
    phi: bool = False,
    shuffle_seed: int | None = 0,
    extra: dict | None = None,
) -> tuple[str, str]:
    """Write one CT slice per position (uint16, slope 0.05: HU within ±0.025) with scrambled names."""
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    study_uid = study_uid or generate_uid()
    rows, cols = shape
    row, col = np.array(iop[:3]), np.array(iop[3:])
    order = list(range(len(positions)))
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(order)
    for idx, k in enumerate(order):
        ipp = np.array(positions[k], dtype=float)
        j, i = np.mgrid[:rows, :cols]
        world = ipp + i[..., None] * pixel_spacing[1] * row + j[..., None] * pixel_spacing[0] * col
        raw = np.clip(np.round((hu(world) + 1024.0) / 0.05), 0, 65535).astype(np.uint16)
        if padding is not None:
            raw[:2, :] = padding  # a padding band at the top of each slice
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.Modality, ds.SeriesDescription, ds.SeriesNumber = modality, description, series_number
        ds.ImageType = list(image_type)
        ds.InstanceNumber = (idx * 7) % len(positions) + 1  # unrelated to position on purpose
        ds.ImagePositionPatient = [f"{v:.6f}" for v in ipp]
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in iop]
        ds.PixelSpacing = [str(v) for v in pixel_spacing]
        ds.SliceThickness = "1.5"
        ds.Rows, ds.Columns = rows, cols
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleSlope, ds.RescaleIntercept = "0.05", "-1024"
        if padding is not None:
            ds.PixelPaddingValue = padding
        if phi:
            for key, value in PHI.items():
                setattr(ds, key, value)
        for key, value in (extra or {}).items():
            setattr(ds, key, value)
        ds.PixelData = raw.astype("<u2").tobytes()
        ds.save_as(folder / f"IMG{random.Random(idx).randint(0, 10**8):09d}_{idx}", enforce_file_format=True)
    return series_uid, study_uid


def z_stack(n: int, step: float = 2.0, origin=(-8.0, -9.5, -30.0)) -> list[tuple[float, float, float]]:
    return [(origin[0], origin[1], origin[2] + k * step) for k in range(n)]


def world_grid(vol: Volume) -> np.ndarray:
    idx = np.stack(np.meshgrid(*[np.arange(s) for s in vol.shape], indexing="ij"), axis=-1)
    return vol.index_to_world(idx)


def test_regular_series_sorted_by_position_not_names(tmp_path):
    write_series(tmp_path / "s", z_stack(16))
    vol = load_volume(tmp_path / "s")
    assert vol.shape == (16, 24, 20)
    assert vol.spacing == pytest.approx((2.0, 0.8, 0.7))
    assert vol.origin == pytest.approx((-8.0, -9.5, -30.0))
    assert vol.direction == pytest.approx((1, 0, 0, 0, 1, 0, 0, 0, 1))
    assert vol.voxels.dtype == np.float32
    np.testing.assert_allclose(vol.voxels, field_hu(world_grid(vol)), atol=0.026)
    assert vol.warnings == []
    assert vol.case_id.startswith("c-") and len(vol.case_id) == 14


def test_descending_and_oblique_positions(tmp_path):
    # Slices listed feet-first along a rotated normal still end up ordered along +normal.
    a = np.radians(20)
    iop = (np.cos(a), np.sin(a), 0.0, -np.sin(a), np.cos(a), 0.0)
    write_series(tmp_path / "s", z_stack(8, step=-2.5)[::-1], iop=iop)
    vol = load_volume(tmp_path / "s")
    d = vol.direction_matrix()
    np.testing.assert_allclose(d[:, 0], iop[:3], atol=1e-6)
    np.testing.assert_allclose(d[:, 2], [0, 0, 1], atol=1e-6)
    np.testing.assert_allclose(vol.voxels, field_hu(world_grid(vol)), atol=0.026)


def test_missing_and_uneven_slices_are_resampled_with_warning(tmp_path):
    pos = [0, 2, 4, 8, 10, 12, 13, 14]  # one slice missing at 6, a 1 mm step near the end
    write_series(tmp_path / "s", [(-8.0, -9.5, z) for z in pos])
    vol = load_volume(tmp_path / "s")
    assert vol.spacing[0] == pytest.approx(2.0)
    assert vol.shape[0] == 8  # 0..14 at 2 mm
    assert any("spacing varies" in w and "missing" in w for w in vol.warnings)
    np.testing.assert_allclose(vol.voxels, field_hu(world_grid(vol)), atol=0.026)


def test_gantry_tilt_is_deskewed_in_slice_planes(tmp_path):
    tilt = np.radians(15.0)
    iop = (1.0, 0.0, 0.0, 0.0, np.cos(tilt), -np.sin(tilt))
    write_series(tmp_path / "s", z_stack(10, step=3.0), iop=iop, extra={"GantryDetectorTilt": "15"})
    vol = load_volume(tmp_path / "s")
    note = " ".join(vol.warnings)
    assert "15.0°" in note and "gantry tilt" in note and "shifted" in note
    d = vol.direction_matrix()
    np.testing.assert_allclose(d[:, 1], iop[3:], atol=1e-6)  # kept the slices' own orientation
    assert vol.shape[1] > 24  # field of view widened to hold every shifted slice
    hu = field_hu(world_grid(vol))
    inside = vol.voxels != -1024.0  # the corners outside every slice are air
    assert inside.mean() > 0.6
    np.testing.assert_allclose(vol.voxels[inside], hu[inside], atol=0.026)


def test_duplicate_positions_kept_once(tmp_path):
    write_series(tmp_path / "s", z_stack(6) + z_stack(6)[2:4])
    vol = load_volume(tmp_path / "s")
    assert vol.shape[0] == 6
    assert any("repeat slice positions" in w for w in vol.warnings)


def test_several_series_choice_and_selection(tmp_path):
    big, _ = write_series(tmp_path / "a", z_stack(10), series_number=2, description="BODY 5mm")
    small, _ = write_series(tmp_path / "b", z_stack(6), series_number=7, description="LUNG 1mm")
    write_series(
        tmp_path / "c",
        [(0, 0, 0), (0, 0, 50)],
        series_number=1,
        description="Topogram",
        image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"),
    )
    vol = load_volume(tmp_path)
    assert vol.shape[0] == 10 and vol.series_description == "BODY 5mm"
    note = vol.warnings[0]
    assert "3 image series" in note and "LUNG 1mm" in note and "localizer" in note
    assert big not in note and small not in note  # UIDs may embed dates: never shown
    from engine.dicom_scan import series_key

    for selector in (series_key(small), small, small[:-3], "7", "#7"):
        assert load_volume(tmp_path, series=selector).shape[0] == 6
    with pytest.raises(Mu2InputError, match="no series matches"):
        load_volume(tmp_path, series="s-00000000")
    with pytest.raises(Mu2InputError, match="matches 3 series"):
        load_volume(tmp_path, series=big[:4])  # a prefix shared by all generated UIDs


def test_same_size_series_cannot_be_chosen(tmp_path):
    write_series(tmp_path / "a", z_stack(5), description="A")
    write_series(tmp_path / "b", z_stack(5), description="B")
    with pytest.raises(Mu2InputError, match="cannot tell which") as err:
        load_volume(tmp_path)
    assert "'A'" in str(err.value) and "'B'" in str(err.value) and "--series" in str(err.value)


def test_padding_value_becomes_air_with_warning(tmp_path):
    write_series(tmp_path / "s", z_stack(4), padding=65535)
    vol = load_volume(tmp_path / "s")
    assert float(vol.voxels[:, :2].max()) == -1024.0
    assert any("padding" in w for w in vol.warnings)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"modality": "MR"}, "MR images, not CT"),
        ({"image_type": ("ORIGINAL", "PRIMARY", "LOCALIZER")}, "localizer"),
    ],
)
def test_refused_series(tmp_path, kwargs, message):
    write_series(tmp_path / "s", z_stack(5), **kwargs)
    with pytest.raises(Mu2InputError, match=message):
        load_volume(tmp_path / "s")


def test_dicomdir_file_opens_its_folder(tmp_path):
    write_series(tmp_path, z_stack(4))
    (tmp_path / "DICOMDIR").write_bytes(b"index")
    assert load_volume(tmp_path / "DICOMDIR").shape[0] == 4


def test_single_slice_refused(tmp_path):
    write_series(tmp_path / "s", z_stack(1))
    (f,) = (tmp_path / "s").iterdir()
    for target in (f, tmp_path / "s"):
        with pytest.raises(Mu2InputError, match="only one slice"):
            load_volume(target)


def test_bad_paths_and_files(tmp_path):
    with pytest.raises(Mu2InputError, match="no file or folder"):
        load_volume(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(Mu2InputError, match="no DICOM images"):
        load_volume(tmp_path / "empty")
    (tmp_path / "nifti").mkdir()
    (tmp_path / "nifti" / "ct.nii.gz").write_bytes(b"x")
    with pytest.raises(Mu2InputError, match="open one of those files"):
        load_volume(tmp_path / "nifti")
    text = tmp_path / "notes.txt"
    text.write_text("FINDINGS: none\n" * 20)
    with pytest.raises(Mu2InputError, match="not a readable DICOM"):
        load_volume(text)


def test_phi_never_leaves_the_loader(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    root = tmp_path / "Doe_Jane_PID-98765"
    write_series(root / "a", z_stack(8), phi=True, padding=65535)
    write_series(root / "b", z_stack(3), phi=True, description="LUNG")
    vol = load_volume(root)
    assert vol.warnings  # several series + padding: there is text to leak into
    texts = [
        repr(vol),
        str(vol.summary()),
        " ".join(vol.warnings),
        caplog.text,
        vol.series_description,
        vol.case_id,
    ]
    write_series(root / "c", z_stack(8), phi=True)  # now two series of 8: the error lists series
    with pytest.raises(Mu2InputError) as err:
        load_volume(root)
    texts.append(str(err.value))
    from engine.dicom_io import list_series

    texts.append(repr(list_series(root)))
    for text in texts:
        for phi in PHI_STRINGS:
            assert phi not in text, f"{phi!r} leaked into {text[:120]!r}"


def test_case_id_is_keyed_and_stable(tmp_path, monkeypatch):
    write_series(tmp_path / "s", z_stack(3), series_uid="1.2.3.4", study_uid="1.2.3")
    a = load_volume(tmp_path / "s").case_id
    assert load_volume(tmp_path / "s").case_id == a
    monkeypatch.setenv("MU2_SITE_KEY", "another-site")
    assert load_volume(tmp_path / "s").case_id != a


def test_compressed_series_decode_like_uncompressed(tmp_path):
    pytest.importorskip("pylibjpeg")
    import pydicom
    from pydicom.uid import JPEG2000Lossless, RLELossless

    # 64×64: OpenJPEG's default 6 resolution levels need images of at least 32 pixels a side.
    write_series(tmp_path / "plain", z_stack(4), shape=(64, 64), hu=lambda w: np.round(field_hu(w)))
    ref = load_volume(tmp_path / "plain")
    for syntax in (RLELossless, JPEG2000Lossless):
        out = tmp_path / syntax.name.replace(" ", "_")
        out.mkdir()
        for f in (tmp_path / "plain").iterdir():
            ds = pydicom.dcmread(f)
            # 16-bit HU with an identity rescale: what the encoders take.
            arr = np.round(ds.pixel_array * 0.05 - 1024).astype(np.int16)
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
            ds.RescaleSlope = "1"
            ds.RescaleIntercept = "0"
            try:
                ds.compress(syntax, arr)
            except Exception as exc:  # encoder plugin missing on this machine
                pytest.skip(f"cannot encode {syntax.name}: {exc}")
            ds.save_as(out / f.name, enforce_file_format=True)
        vol = load_volume(out)
        assert vol.shape == ref.shape and vol.origin == pytest.approx(ref.origin)
        np.testing.assert_array_equal(vol.voxels, ref.voxels)


def test_npy_inputs(tmp_path):
    good = tmp_path / "m3d.npy"
    np.save(good, np.random.default_rng(0).random((1, 32, 64, 64), dtype=np.float32))
    vol = load_volume(good)
    assert vol.prepared and vol.shape == (32, 64, 64) and "no geometry" in vol.warnings[0]
    np.save(tmp_path / "hu.npy", np.full((8, 16, 16), -1000.0, np.float32))
    with pytest.raises(Mu2InputError, match=r"\[0, 1\]"):
        load_volume(tmp_path / "hu.npy")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(Mu2InputError):
        load_volume(tmp_path / "obj.npy")
    np.save(tmp_path / "nan.npy", np.full((1, 32, 8, 8), np.nan, np.float32))
    with pytest.raises(Mu2InputError, match="NaN"):
        load_volume(tmp_path / "nan.npy")
    with pytest.raises(Mu2InputError, match="series"):
        load_volume(good, series="1.2.3")


def test_sitk_formats(tmp_path):
    import SimpleITK as sitk

    arr = np.full((5, 12, 10), -1000, np.int16)
    arr[2, 5, 5] = 300
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((0.7, 0.8, 2.5))
    img.SetOrigin((1.0, 2.0, 3.0))
    img.SetDirection((0, 1, 0, 1, 0, 0, 0, 0, -1))
    for name in ("ct.nrrd", "ct.mha", "ct.mhd", "ct.nii"):
        sitk.WriteImage(img, str(tmp_path / name))
        vol = load_volume(tmp_path / name)
        assert vol.shape == (5, 12, 10) and vol.voxels[2, 5, 5] == 300.0
        assert vol.spacing == pytest.approx((2.5, 0.8, 0.7)) and vol.origin == pytest.approx((1.0, 2.0, 3.0))
        assert vol.direction == pytest.approx((0, 1, 0, 1, 0, 0, 0, 0, -1))
    four_d = sitk.JoinSeries([img, img])
    sitk.WriteImage(four_d, str(tmp_path / "4d.nrrd"))
    with pytest.raises(Mu2InputError, match="4-D"):
        load_volume(tmp_path / "4d.nrrd")
    (tmp_path / "broken.nii.gz").write_bytes(b"\x1f\x8b" + b"0" * 100)
    with pytest.raises(Mu2InputError, match="could not be read"):
        load_volume(tmp_path / "broken.nii.gz")
