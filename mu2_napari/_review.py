"""The review half of the Mu2 widget: accept / edit / reject a draft into ``engine.review``, and export.

``ReviewController`` owns the "Report review" and "Export report" sections; ``Mu2Widget`` hands it each
finished draft and shows what it reports through ``status`` / ``failed``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from qtpy.QtCore import QObject, Qt, Signal
from qtpy.QtWidgets import QApplication, QFileDialog, QWidget

from mu2_napari._export import export_report
from mu2_napari._widget_parts import ExportParts, ReviewParts
from mu2_napari._worker import describe_error

log = logging.getLogger(__name__)


def same_report(a: str, b: str) -> bool:
    """Equal up to whitespace: reflowing the draft for display is not an edit."""
    return a.split() == b.split()


class ReviewController(QObject):
    """Records the radiologist's decision on the current draft and exports the reviewed report."""

    recorded = Signal(object)  # engine.review.ReviewRecord
    failed = Signal(str)
    status = Signal(str)

    def __init__(self, review: ReviewParts, exports: ExportParts, parent: QWidget):
        super().__init__(parent)
        self.parts, self.exports = review, exports
        self._dialog_parent = parent
        self.draft: Any = None
        self.volume: Any = None
        self.last_review: Any = None
        self._recorded_text: str | None = None
        self._busy = False
        self.review_dir = Path("reviews")
        review.accept.clicked.connect(lambda: self.accept())
        review.reject.clicked.connect(lambda: self.reject())
        review.choose_folder.clicked.connect(self._choose_review_dir)
        review.editor.textChanged.connect(self.update_buttons)
        exports.text.clicked.connect(lambda: self._export_dialog("text"))
        exports.json.clicked.connect(lambda: self._export_dialog("json"))
        exports.sr.clicked.connect(lambda: self._export_dialog("sr"))

    @property
    def review_dir(self) -> Path:
        return self._review_dir

    @review_dir.setter
    def review_dir(self, folder: str | Path) -> None:
        self._review_dir = Path(folder).expanduser().resolve()
        self.parts.folder.setText(str(self._review_dir))
        self.parts.folder.setToolTip(str(self._review_dir))

    @property
    def text(self) -> str:
        return self.parts.editor.toPlainText()

    def set_draft(self, draft: Any, volume: Any) -> None:
        """A new draft to review (``None`` while drafting or after a failed draft)."""
        self.draft, self.volume = draft, volume
        self.last_review, self._recorded_text = None, None
        self.update_buttons()

    def set_busy(self, busy: bool) -> None:
        self._busy = busy
        self.update_buttons()

    def accept(self) -> Any:
        """Record ``accepted`` (report unchanged) or ``edited`` (report changed); returns the record."""
        draft = self._reviewable()
        if draft is None:
            return None
        final = self.text
        if same_report(final, draft.text):
            return self._record("accepted", draft.text)
        if not final.strip():
            return self._fail("the report is empty: write the report, or reject the draft")
        return self._record("edited", final)

    def reject(self) -> Any:
        """Record ``rejected``, with the corrected text when one was written, else the draft text."""
        draft = self._reviewable()
        if draft is None:
            return None
        final = self.text
        if same_report(final, draft.text) or not final.strip():
            final = draft.text
        return self._record("rejected", final)

    def export(self, kind: str, path: str | Path) -> Path | None:
        """Write the reviewed report as ``text``, ``json`` or ``sr`` (DICOM SR) to ``path``."""
        if self.draft is None:
            return self._fail("nothing to export: draft a report first")
        reviewer = self.parts.reviewer.text().strip() or None
        try:
            out = export_report(
                kind, Path(path), self.draft, self.text, self.last_review, self.volume, reviewer
            )
        except Exception as err:  # noqa: BLE001 - shown in the widget, never raised into napari
            return self._fail(describe_error(err))
        self.status.emit(f"exported {kind} to {out}")
        return out

    def update_buttons(self) -> None:
        ready = self.draft is not None and not self._busy
        # After a review the buttons wake up again only when the text changes (a correction).
        unreviewed = self.last_review is None or self.text != self._recorded_text
        for button in (self.parts.accept, self.parts.reject):
            button.setEnabled(ready and unreviewed)
        for button in (self.exports.text, self.exports.json, self.exports.sr):
            button.setEnabled(ready)

    def _reviewable(self) -> Any:
        if self._busy:
            return self._fail("wait for the draft to finish (or cancel it) before reviewing")
        if self.draft is None:
            return self._fail("nothing to review: draft a report first")
        return self.draft

    def _record(self, decision: str, final_text: str) -> Any:
        from engine.review import ReviewStore

        previous = self.last_review
        QApplication.setOverrideCursor(Qt.WaitCursor)
        try:
            record = ReviewStore(self._review_dir).record(
                self.draft,
                final_text,
                decision,
                reviewer=self.parts.reviewer.text().strip() or None,
                comment=self.parts.comment.text().strip() or None,
                # A second decision on the same draft is a correction of the first.
                supersedes=previous.review_id if previous is not None else None,
            )
        except Exception as err:  # noqa: BLE001 - shown in the widget, never raised into napari
            return self._fail(describe_error(err))
        finally:
            QApplication.restoreOverrideCursor()
        self.last_review, self._recorded_text = record, self.text
        self.update_buttons()
        self.status.emit(f"recorded '{decision}' (review {record.review_id[:8]}) in {self._review_dir}")
        self.recorded.emit(record)
        return record

    def _fail(self, message: str) -> None:
        self.failed.emit(message)
        return None

    def _choose_review_dir(self) -> None:
        folder = QFileDialog.getExistingDirectory(
            self._dialog_parent, "Reviews folder", str(self._review_dir)
        )
        if folder:
            self.review_dir = folder

    def _export_dialog(self, kind: str) -> None:
        suffix = {"text": "Text (*.txt)", "json": "JSON (*.json)", "sr": "DICOM SR (*.dcm)"}[kind]
        path, _ = QFileDialog.getSaveFileName(self._dialog_parent, f"Export report ({kind})", "", suffix)
        if path:
            self.export(kind, path)
