"""``DraftRunner``: one draft at a time in a napari worker, with progress, streaming text and cancel.

It owns the "Draft" section's progress bar and streams tokens into the report editor; the widget
decides what a finished draft means (heatmap layer, review, status line).
"""

from __future__ import annotations

import logging
from typing import Any

from qtpy.QtCore import QEventLoop, QObject, QTimer, Signal
from qtpy.QtGui import QTextCursor
from qtpy.QtWidgets import QPlainTextEdit, QProgressBar

from mu2_napari._worker import STAGES, DraftRequest, DraftSignals, describe_error, run_draft

log = logging.getLogger(__name__)

FLUSH_MS = 50  # streamed text and progress reach the GUI at up to 20 updates a second
STAGE_LABELS = {
    "load": "loading model",
    "prepare": "preparing volume",
    "encode": "encoding CT",
    "generate": "generating",
    "heatmap": "heatmap",
}


class DraftRunner(QObject):
    """Runs ``_worker.run_draft`` off the GUI thread and reports back on it."""

    succeeded = Signal(object, object)  # (engine Draft, the Volume it was drafted from)
    failed = Signal(str)  # a message for the user: error or cancellation
    finished = Signal()  # after succeeded/failed, when the runner is idle again

    def __init__(self, progress: QProgressBar, editor: QPlainTextEdit, parent: QObject):
        super().__init__(parent)
        self.progress, self.editor = progress, editor
        self.request: DraftRequest | None = None
        self.n_tokens = 0
        self._worker: Any = None
        self._signals: DraftSignals | None = None
        self._pending: list[str] = []
        self._stage = ""
        self._cursor: QTextCursor | None = None
        self._loops: list[QEventLoop] = []
        self._flush_timer = QTimer(self)
        self._flush_timer.setSingleShot(True)
        self._flush_timer.setInterval(FLUSH_MS)
        self._flush_timer.timeout.connect(self._flush)

    @property
    def busy(self) -> bool:
        return self._worker is not None

    def start(self, request: DraftRequest) -> None:
        """Start drafting ``request``; the editor is cleared and receives the streamed text."""
        from napari.qt.threading import create_worker

        self.request, self.n_tokens, self._stage = request, 0, ""
        self._pending.clear()
        # Not parented: a signal a late worker emits after the widget is gone must reach nothing.
        self._signals = signals = DraftSignals()
        signals.stage.connect(self._on_stage)
        signals.token.connect(self._on_token)
        self.editor.clear()
        self._cursor = QTextCursor(self.editor.document())
        self.progress.setRange(0, len(STAGES) + request.max_new_tokens)
        self.progress.setValue(0)
        self.progress.setFormat("starting…")
        worker = create_worker(run_draft, request, signals, _start_thread=False, _ignore_errors=True)
        worker.returned.connect(self._on_returned)
        worker.errored.connect(self._on_errored)
        worker.finished.connect(self._on_finished)
        self._worker = worker
        worker.start()

    def cancel(self) -> bool:
        """Ask the running draft to stop at its next stage or token; ``False`` when none runs."""
        if self._worker is None or self.request is None:
            return False
        self.request.cancel.set()
        return True

    def wait(self) -> None:
        """Block until the running draft is done, processing Qt events meanwhile."""
        if self._worker is None:
            return
        loop = QEventLoop(self)
        self._loops.append(loop)
        # `finished` is a queued signal, so it cannot have fired before exec_() runs the loop.
        loop.exec_()

    # ---- worker signals (queued onto the GUI thread) -------------------------------------------------

    def _on_stage(self, stage: str) -> None:
        self._stage = stage
        self._schedule()

    def _on_token(self, text: str) -> None:
        self._pending.append(text)
        self._schedule()

    def _schedule(self) -> None:
        # Slots only buffer: each Qt call made while the worker holds the GIL waits for a GIL hand-over
        # (up to the 5 ms switch interval), so the progress bar and editor are updated in batches.
        if not self._flush_timer.isActive():
            self._flush_timer.start()

    def _flush(self) -> None:
        self._flush_timer.stop()
        text, self.n_tokens = "".join(self._pending), self.n_tokens + len(self._pending)
        self._pending.clear()
        bar, top = self.progress, self.progress.maximum() - 1
        if self._stage == "generate" and self.n_tokens:
            bar.setValue(min(top, STAGES.index("generate") + self.n_tokens))
            max_tokens = self.request.max_new_tokens if self.request else 0
            bar.setFormat(f"generating: {self.n_tokens} / {max_tokens} tokens")
        elif self._stage:
            bar.setValue(top if self._stage == "heatmap" else STAGES.index(self._stage))
            bar.setFormat(STAGE_LABELS.get(self._stage, self._stage) + "…")
        if text and self._cursor is not None:
            self._cursor.insertText(text)

    def _on_returned(self, result: tuple[Any, Any]) -> None:
        self._flush()
        draft, volume = result
        if draft.cancelled:
            self._stopped(f"the draft was cancelled after {draft.n_tokens} tokens")
            return
        self.progress.setValue(self.progress.maximum())
        self.progress.setFormat("done")
        self.succeeded.emit(draft, volume)

    def _on_errored(self, err: BaseException) -> None:
        self._flush()
        log.error("draft failed: %s", err, exc_info=(type(err), err, err.__traceback__))
        self._stopped(describe_error(err))

    def _stopped(self, message: str) -> None:
        self.progress.setFormat("stopped")
        self.failed.emit(message)

    def _on_finished(self) -> None:
        self._worker = None
        if self._signals is not None:
            self._signals.deleteLater()
            self._signals = None
        self._cursor = None
        self.finished.emit()
        loops, self._loops = self._loops, []
        for loop in loops:
            loop.quit()
