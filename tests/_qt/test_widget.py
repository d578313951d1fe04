"""Mu2Widget end to end: real DICOM in, tiny model drafts, heatmap on the CT grid, reviews recorded PHI-free."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("engine.volume")

from mu2_napari._review import same_report  # noqa: E402
from mu2_napari._widget import HEATMAP_LABEL, Mu2Widget  # noqa: E402

CHEST = "ct/dicom_chest_cptac_C3N-00247"
EDITED = "FINDINGS: Edited by the radiologist: no nodule.\n\nIMPRESSION: No acute abnormality."


def _open_ct(viewer, folder: Path):
    (layer,) = viewer.open(str(folder), plugin="mu2-napari")
    return layer


def _draft(widget: Mu2Widget):
    draft = widget.draft(wait=True)
    assert draft is not None, widget.drafting.error.text()
    return draft


def _records(widget: Mu2Widget) -> list:
    from engine.review import ReviewStore

    return ReviewStore(widget.review_dir).records()


def _patient_strings(folder: Path) -> list[str]:
    import pydicom

    ds = pydicom.dcmread(sorted(folder.glob("*.dcm"))[0], stop_before_pixels=True)
    return [s for s in (str(ds.PatientName), str(ds.PatientID)) if len(s) >= 5]


def test_draft_puts_heatmap_on_the_ct_grid_and_replaces_it(viewer_widget, ct3_dir: Path) -> None:
    from engine.draft import HEATMAP_LABEL as ENGINE_LABEL

    viewer, widget = viewer_widget
    ct = _open_ct(viewer, ct3_dir)
    assert widget.inputs.layer.currentText() == ct.name
    finished: list = []
    widget.draft_finished.connect(finished.append)

    draft = _draft(widget)

    assert finished == [draft] and widget.last_draft is draft
    heat = widget.heatmap_layer
    assert heat.name == HEATMAP_LABEL == ENGINE_LABEL
    assert heat.data.shape == ct.data.shape
    np.testing.assert_allclose(heat.scale, ct.scale)
    np.testing.assert_allclose(heat.translate, ct.translate)
    np.testing.assert_allclose(heat.rotate, ct.rotate)
    assert heat.colormap.name == "inferno" and str(heat.blending) == "additive"
    assert same_report(widget.report_text, draft.text)
    assert draft.model_id in widget.drafting.status.text()
    assert widget.runner.n_tokens >= (1 if draft.text else 0)  # tokens streamed into the editor first

    widget.heat.opacity.setValue(20)
    widget.heat.show.setChecked(False)
    assert heat.opacity == pytest.approx(0.2) and not heat.visible

    second = _draft(widget)
    assert [layer.name for layer in viewer.layers].count(HEATMAP_LABEL) == 1
    assert widget.heatmap_layer.data is second.heatmap and second is not draft  # replaced, not added
    assert widget.heatmap_layer.opacity == pytest.approx(0.2) and not widget.heatmap_layer.visible
    assert widget.inputs.layer.currentText() == ct.name  # the heatmap is never offered as a CT


def test_edit_then_accept_records_one_edited_review_without_phi(viewer_widget, realdata: Path) -> None:
    folder = realdata / CHEST
    if not folder.is_dir():
        pytest.skip(f"{folder} is not present")
    viewer, widget = viewer_widget
    _open_ct(viewer, folder)
    draft = _draft(widget)
    widget.report_text = EDITED
    widget.review.reviewer.setText("r-0123456789ab")
    widget.review.comment.setText("nodule call was wrong")

    record = widget.accept()

    assert record is not None and record.decision == "edited"
    (stored,) = _records(widget)
    assert stored == record
    assert stored.final_text == EDITED and stored.draft_text == draft.text
    assert stored.reviewer == "r-0123456789ab" and stored.comment == "nodule call was wrong"
    assert not widget.review.accept.isEnabled()  # one decision per text; a new edit re-enables
    blob = b"".join(p.read_bytes() for p in widget.review_dir.rglob("*") if p.is_file())
    phi = _patient_strings(folder)
    assert phi, "the test series should carry patient strings to look for"
    for s in phi:
        assert s.encode() not in blob, f"{s!r} leaked into the reviews folder"


def test_accept_unchanged_records_accepted_with_the_draft_text(viewer_widget, ct3_dir: Path) -> None:
    viewer, widget = viewer_widget
    _open_ct(viewer, ct3_dir)
    draft = _draft(widget)
    record = widget.accept()
    assert record.decision == "accepted" and record.final_text == draft.text
    assert len(_records(widget)) == 1


def test_reject_keeps_the_draft_then_a_correction_supersedes(viewer_widget, ct3_dir: Path) -> None:
    viewer, widget = viewer_widget
    _open_ct(viewer, ct3_dir)
    draft = _draft(widget)

    first = widget.reject()
    assert first.decision == "rejected" and first.final_text == draft.text

    widget.report_text = EDITED
    assert widget.review.reject.isEnabled()
    second = widget.reject()
    assert second.decision == "rejected" and second.final_text == EDITED
    assert second.supersedes == first.review_id
    assert [r.review_id for r in _records(widget)] == [first.review_id, second.review_id]


def test_cancel_stops_the_draft_and_records_nothing(viewer_widget, ct3_dir: Path, qtbot) -> None:
    viewer, widget = viewer_widget
    _open_ct(viewer, ct3_dir)
    errors: list[str] = []
    widget.error.connect(errors.append)

    assert widget.draft() is None and widget.busy
    assert widget.drafting.cancel.isEnabled() and not widget.drafting.draft.isEnabled()
    widget.cancel()
    qtbot.waitUntil(lambda: not widget.busy, timeout=60_000)

    assert "cancelled" in errors[-1] and widget.drafting.error.isVisibleTo(widget)
    assert widget.last_draft is None and widget.heatmap_layer is None
    assert widget.accept() is None and "nothing to review" in errors[-1]
    assert _records(widget) == []
    assert widget.drafting.draft.isEnabled()


def test_errors_are_shown_in_the_widget_not_raised(viewer_widget, tmp_path: Path, monkeypatch) -> None:
    viewer, widget = viewer_widget
    errors: list[str] = []
    widget.error.connect(errors.append)

    assert widget.draft(wait=True) is None
    assert "no CT image layer" in errors[-1] and widget.drafting.error.isVisibleTo(widget)

    viewer.add_image(np.zeros((8, 8), np.float32), name="a 2D picture")  # not offered as a CT
    assert widget.draft(wait=True) is None and "no CT image layer" in errors[-1]

    viewer.add_image(np.full((6, 32, 32), -500, np.float32), name="ct")
    widget.weights_dir = tmp_path / "no-such-checkpoint"
    assert widget.draft(wait=True) is None
    assert "does not exist" in errors[-1]

    def out_of_memory(*_args, **_kwargs):
        raise MemoryError

    monkeypatch.setattr("mu2_napari._drafting.run_draft", out_of_memory)
    assert widget.draft(wait=True) is None and "out of memory" in errors[-1]
    assert widget.accept() is None and widget.reject() is None
    assert widget.export("text", tmp_path / "r.txt") is None and "draft a report first" in errors[-1]


def test_export_marks_the_sr_unverified_until_accepted(viewer_widget, ct3_dir: Path, tmp_path: Path) -> None:
    import pydicom

    viewer, widget = viewer_widget
    _open_ct(viewer, ct3_dir)
    draft = _draft(widget)
    draft_sr = widget.export("sr", tmp_path / "draft_sr.dcm")
    assert pydicom.dcmread(draft_sr).VerificationFlag == "UNVERIFIED"

    widget.report_text = EDITED
    widget.review.reviewer.setText("r-0123456789ab")
    assert widget.accept().decision == "edited"
    sr = pydicom.dcmread(widget.export("sr", tmp_path / "final_sr.dcm"))
    assert sr.VerificationFlag == "VERIFIED"
    for s in _patient_strings(ct3_dir):
        assert s not in str(sr.PatientName) + str(sr.PatientID)
    assert widget.export("text", tmp_path / "report.txt").read_text().strip() == EDITED
    exported = json.loads(widget.export("json", tmp_path / "report.json").read_text())
    assert exported["final_text"] == EDITED and exported["decision"] == "edited" and exported["verified"]
    assert exported["text"] == draft.text


def test_question_and_demo_notice_follow_the_checkpoint(
    viewer_widget, tiny_ckpt: Path, tmp_path: Path
) -> None:
    _, widget = viewer_widget
    config = json.loads((tiny_ckpt / "config.json").read_text())
    assert widget.questions.question.toPlainText() == config["default_question"]
    assert not widget.inputs.demo_warning.isVisibleTo(widget)

    demo_like = tmp_path / "demo-like"
    shutil.copytree(tiny_ckpt, demo_like)
    (demo_like / "README.md").write_text(
        "# demo\n\nTrained on synthetic phantoms only — a demonstration, not for clinical use.\n"
    )
    widget.weights_dir = demo_like
    assert widget.inputs.demo_warning.isVisibleTo(widget)
    assert "synthetic phantoms only" in widget.inputs.demo_warning.text()

    widget.questions.question.setPlainText("Is there a nodule?")
    widget.weights_dir = tiny_ckpt
    assert widget.questions.question.toPlainText() == "Is there a nodule?"  # the user's question stays
    assert not widget.inputs.demo_warning.isVisibleTo(widget)


def test_sampling_settings_fold_and_reach_the_draft(viewer_widget, ct3_dir: Path) -> None:
    viewer, widget = viewer_widget
    _open_ct(viewer, ct3_dir)
    q = widget.questions
    assert not q.advanced.isVisibleTo(widget)
    q.toggle.setChecked(True)
    assert q.advanced.isVisibleTo(widget)
    q.mode.setCurrentText("sample")
    q.temperature.setValue(0.7)
    q.top_p.setValue(0.9)
    q.seed.setValue(3)
    q.max_new_tokens.setValue(5)
    draft = _draft(widget)
    assert draft.sampling["do_sample"] is True and draft.sampling["seed"] == 3
    assert draft.sampling["temperature"] == pytest.approx(0.7) and draft.sampling["max_new_tokens"] == 5
    assert draft.n_tokens <= 5


def test_shortcuts_draft_and_review(viewer_widget, ct3_dir: Path, qtbot) -> None:
    from qtpy.QtWidgets import QShortcut

    viewer, widget = viewer_widget
    _open_ct(viewer, ct3_dir)
    shortcuts = {s.key().toString(): s for s in widget.findChildren(QShortcut)}
    assert set(shortcuts) == {"Ctrl+Shift+D", "Ctrl+Shift+A", "Ctrl+Shift+R"}
    with qtbot.waitSignal(widget.draft_finished, timeout=60_000):
        shortcuts["Ctrl+Shift+D"].activated.emit()
    with qtbot.waitSignal(widget.reviewed, timeout=5_000) as blocker:
        shortcuts["Ctrl+Shift+A"].activated.emit()
    assert blocker.args[0].decision == "accepted"


def test_the_plugin_widget_drafts_through_napari_s_viewer_proxy(
    make_napari_viewer, tiny_ckpt: Path, ct3_dir: Path, tmp_path: Path
) -> None:
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("mu2-napari", "Mu2 report")
    assert isinstance(widget, Mu2Widget)  # napari hands it a PublicOnlyProxy of the viewer
    assert widget.review_dir == Path("reviews").resolve()
    widget.weights_dir, widget.review_dir = tiny_ckpt, tmp_path / "reviews"
    ct = _open_ct(viewer, ct3_dir)
    _draft(widget)
    assert widget.heatmap_layer.data.shape == ct.data.shape
    np.testing.assert_allclose(widget.heatmap_layer.translate, ct.translate)
    assert widget.accept().decision == "accepted"


def test_closing_the_dock_disconnects_from_the_viewer(make_napari_viewer, qtbot) -> None:
    viewer = make_napari_viewer(strict_qt="raise")
    other = make_napari_viewer(strict_qt="raise")
    before = len(viewer.layers.events.inserted.callbacks)
    widget = Mu2Widget(viewer)
    second = Mu2Widget(other)
    other.window.add_dock_widget(second, name="Mu2 report")
    dock = viewer.window.add_dock_widget(widget, name="Mu2 report")
    assert len(viewer.layers.events.inserted.callbacks) > before

    viewer.window.remove_dock_widget(dock)
    widget.close()
    qtbot.wait(50)
    assert len(viewer.layers.events.inserted.callbacks) == before
    viewer.add_image(np.zeros((4, 8, 8), np.float32), name="after")  # no callback into a dead widget
    other.add_image(np.zeros((4, 8, 8), np.float32), name="ct")
    assert second.inputs.layer.currentText() == "ct"  # the other viewer's widget is untouched


def test_launch_opens_the_ct_with_the_widget_docked(qapp, ct3_dir: Path, tmp_path: Path) -> None:
    import gc

    from napari._qt.qt_viewer import QtViewer

    from engine.errors import Mu2InputError
    from mu2_napari.launch import open_viewer

    with pytest.raises(Mu2InputError):
        open_viewer(tmp_path / "missing.nii.gz", show=False)
    viewer, widget = open_viewer(ct3_dir, show=False)
    try:
        assert len(viewer.layers) == 1
        assert widget.inputs.layer.currentText() == viewer.layers[0].name
        assert widget.drafting.draft.isEnabled()
    finally:
        viewer.close()
    del viewer, widget
    qapp.processEvents()
    gc.collect()
    # Later tests' make_napari_viewer insists that no QtViewer outlives its test.
    assert len(QtViewer._instances) == 0
