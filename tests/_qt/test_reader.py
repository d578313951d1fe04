"""The napari reader, writer and sample data of mu2_napari (through npe2, as napari calls them)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("engine.volume")

from mu2_napari._reader import napari_get_reader  # noqa: E402
from mu2_napari.layers import SUMMARY_KEY, VOLUME_KEY, contrast_limits  # noqa: E402

NIFTI_RAS = "ct/totalsegmentator/example_ct_sm.nii.gz"


def _phi_strings(folder: Path) -> list[str]:
    import pydicom

    first = next(
        p
        for p in sorted(folder.glob("*.dcm"))
        if pydicom.dcmread(p, stop_before_pixels=True).Modality == "CT"
    )
    ds = pydicom.dcmread(first, stop_before_pixels=True)
    return [s for s in (str(ds.get("PatientName", "")), str(ds.get("PatientID", ""))) if s]


@pytest.fixture
def notifications(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    import napari.utils.notifications as notes

    shown: list[str] = []
    monkeypatch.setattr(notes, "show_error", lambda message: shown.append(str(message)))
    return shown


def test_unhandled_paths_get_no_reader(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not a CT")
    plain = tmp_path / "README"
    plain.write_text("an extension-less file that is not DICOM")
    empty = tmp_path / "empty_folder"
    empty.mkdir()
    for path in (str(text), str(plain), str(empty), str(tmp_path / "missing.txt"), [str(text)], []):
        assert napari_get_reader(path) is None
    assert napari_get_reader(None) is None  # a bad argument is "not ours", never an exception


def test_handled_paths_get_a_reader(tmp_path: Path, ct3_dir: Path) -> None:
    bare = tmp_path / "IM0001"  # extension-less DICOM, as PACS exports write them
    shutil.copy(ct3_dir / "01.dcm", bare)
    for path in (
        ct3_dir,
        ct3_dir / "01.dcm",
        bare,
        tmp_path / "x.nii.gz",
        tmp_path / "x.nrrd",
        tmp_path / "x.npy",
    ):
        assert callable(napari_get_reader(str(path))), path


def test_dicom_folder_reads_as_one_windowed_ct_layer_without_phi(ct3_dir: Path) -> None:
    layers = napari_get_reader(str(ct3_dir))(str(ct3_dir))
    assert len(layers) == 1
    data, kwargs, layer_type = layers[0]
    volume = kwargs["metadata"][VOLUME_KEY]
    assert layer_type == "image"
    assert data.shape == (3, 512, 512) and data.dtype == np.float32
    assert kwargs["colormap"] == "gray"
    assert kwargs["contrast_limits"] == contrast_limits("mediastinum") == [-160.0, 240.0]
    assert kwargs["scale"] == pytest.approx(volume.spacing)
    assert kwargs["translate"] == pytest.approx(volume.origin[::-1])
    assert kwargs["scale"][1] == pytest.approx(0.810547)
    summary = json.dumps(kwargs["metadata"][SUMMARY_KEY]) + kwargs["name"]
    for phi in _phi_strings(ct3_dir):
        assert phi not in summary


def test_corrupt_dicom_is_a_notification_not_an_exception(tmp_path: Path, notifications: list[str]) -> None:
    bad = tmp_path / "broken.dcm"
    bad.write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00garbage" * 20)
    reader = napari_get_reader(str(bad))
    assert callable(reader)
    assert reader(str(bad)) == [(None,)]  # npe2's "handled, no layers" sentinel
    assert len(notifications) == 1 and notifications[0].startswith("Mu2: ")


def test_corrupt_dicom_opened_in_napari_adds_nothing(
    make_napari_viewer, tmp_path: Path, notifications
) -> None:
    viewer = make_napari_viewer()
    bad = tmp_path / "broken.dcm"
    bad.write_bytes(b"this is not DICOM at all")
    viewer.open(str(bad), plugin="mu2-napari")
    assert len(viewer.layers) == 0
    assert notifications


def test_nifti_geometry_matches_the_volume_in_napari_world(make_napari_viewer, realdata: Path) -> None:
    path = realdata / NIFTI_RAS
    if not path.exists():
        pytest.skip(f"{path} is not present")
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(path), plugin="mu2-napari")
    volume = layer.metadata[VOLUME_KEY]
    assert layer.data.shape == volume.shape
    # Every voxel lands at its LPS position (in z, y, x order), including the RAS flip of this file.
    rng = np.random.default_rng(0)
    for index in [(0, 0, 0), *rng.integers(0, volume.shape, size=(5, 3))]:
        world = np.asarray(layer.data_to_world(tuple(int(i) for i in index)))
        expected = volume.index_to_world(np.asarray(index, dtype=float))[::-1]
        np.testing.assert_allclose(world, expected, atol=1e-3)


def test_writer_puts_a_layer_back_on_the_ct_grid(make_napari_viewer, ct3_dir: Path, tmp_path: Path) -> None:
    import SimpleITK as sitk

    viewer = make_napari_viewer()
    (ct,) = viewer.open(str(ct3_dir), plugin="mu2-napari")
    heat = viewer.add_image(
        np.random.default_rng(0).random(ct.data.shape, dtype=np.float32),
        scale=ct.scale,
        translate=ct.translate,
        metadata={VOLUME_KEY: ct.metadata[VOLUME_KEY]},
    )
    from napari.plugins.io import save_layers

    written = save_layers(str(tmp_path / "heat.nii.gz"), [heat], plugin="mu2-napari")
    assert written == [str(tmp_path / "heat.nii.gz")]
    image = sitk.ReadImage(written[0])
    volume = ct.metadata[VOLUME_KEY]
    assert image.GetSize() == volume.shape[::-1]
    np.testing.assert_allclose(image.GetSpacing(), volume.spacing[::-1], atol=1e-4)
    np.testing.assert_allclose(image.GetOrigin(), volume.origin, atol=1e-3)
    np.testing.assert_allclose(sitk.GetArrayFromImage(image), heat.data, atol=1e-6)


def test_sample_data_is_the_phantom() -> None:
    pytest.importorskip("engine.phantom")
    from mu2_napari._sample_data import phantom_sample

    ((data, kwargs, layer_type),) = phantom_sample()
    assert layer_type == "image" and data.ndim == 3
    assert kwargs["metadata"][SUMMARY_KEY]["case_id"].startswith("phantom")


def test_manifest_declares_reader_writer_widget_and_sample() -> None:
    import npe2

    manifest = npe2.PluginManifest.from_distribution("mu2-napari")
    contributions = manifest.contributions
    assert [w.display_name for w in contributions.widgets] == ["Mu2 report"]
    (reader,) = contributions.readers
    assert reader.accepts_directories and {"*.dcm", "*.nii.gz", "*"} <= set(reader.filename_patterns)
    assert [s.key for s in contributions.sample_data] == ["phantom"]
    assert contributions.writers[0].layer_types == ["image"]


def test_loader_warnings_reach_the_user(realdata: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import napari.utils.notifications as notes

    folder = realdata / "ct/dicom_edge_cases/pydicom_dicomdir_mixed_series"
    if not folder.is_dir():
        pytest.skip(f"{folder} is not present")
    shown: list[str] = []
    monkeypatch.setattr(notes, "show_warning", lambda message: shown.append(str(message)))
    ((data, kwargs, _),) = napari_get_reader(str(folder))(str(folder))
    assert data.ndim == 3
    assert len(shown) == 1 and "series" in shown[0]  # which of the folder's series was loaded
