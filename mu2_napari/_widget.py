"""``Mu2Widget``: draft a CT report with a Mu2 checkpoint, see the token-selection heatmap, review it.

Handlers stay thin: ``_drafting.DraftRunner`` drafts in a napari worker thread, ``_review.ReviewController``
records reviews and exports through ``engine.review`` / ``engine.export``. Layers are only touched here,
on the GUI thread.
"""

from __future__ import annotations

import functools
import logging
import re
import threading
import weakref
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import Qt, Signal
from qtpy.QtGui import QKeySequence
from qtpy.QtWidgets import QFileDialog, QScrollArea, QShortcut, QVBoxLayout, QWidget

from mu2_napari import _widget_parts as parts
from mu2_napari._drafting import DraftRunner
from mu2_napari._review import ReviewController
from mu2_napari._worker import (
    DraftRequest,
    default_question,
    engine_loaded,
    model_card_warning,
    preload_engine,
)
from mu2_napari.layers import CT_PRESETS, VOLUME_KEY, contrast_limits, heatmap_kwargs, volume_from_layer

if TYPE_CHECKING:
    import napari.viewer

log = logging.getLogger(__name__)

# engine.draft.HEATMAP_LABEL, repeated so that building the widget does not import torch (tests compare).
HEATMAP_LABEL = "tokens selected by μ²Tokenizer"
HEATMAP_KEY = "mu2_heatmap"
_IMPRESSION = re.compile(r"\s*(IMPRESSION\s*:)", re.IGNORECASE)


def format_report(text: str) -> str:
    """The draft as shown in the editor: IMPRESSION on its own paragraph."""
    return _IMPRESSION.sub(r"\n\n\1", text).strip()


class Mu2Widget(QWidget):
    """Dock widget: image layer + checkpoint → streamed draft + heatmap → accept / edit / reject → export.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
        The viewer whose image layers are drafted and which receives the heatmap layer.
    """

    draft_finished = Signal(object)  # engine.draft.Draft
    reviewed = Signal(object)  # engine.review.ReviewRecord
    error = Signal(str)

    # napari injects the viewer by this exact annotation (a string here, which napari accepts).
    def __init__(self, viewer: napari.viewer.Viewer, parent: QWidget | None = None):
        super().__init__(parent)
        self.viewer = viewer
        self._weights_dir: Path | None = None
        self._last_draft: Any = None
        self._heatmap_layer: Any = None
        self._draft_layer: Any = None
        self._question_default = ""
        self._connections: list[tuple[Any, weakref.WeakMethod]] = []
        self._build()
        self._wire()
        self.set_weights_dir(None)
        self._refresh_layers()
        if not engine_loaded():
            # A plain daemon thread, not a napari worker: it has no Qt signals that could outlive
            # the viewer, and it must never keep napari from quitting.
            threading.Thread(target=preload_engine, name="mu2-preload", daemon=True).start()

    def _build(self) -> None:
        self.inputs = parts.build_input_group(self)
        self.questions = parts.build_question_group(self)
        self.drafting = parts.build_draft_group(self)
        self.heat = parts.build_heatmap_group(self, HEATMAP_LABEL)
        self.review = parts.build_review_group(self)
        self.exports = parts.build_export_group(self)
        self.reviews = ReviewController(self.review, self.exports, self)
        self.runner = DraftRunner(self.drafting.progress, self.review.editor, self)
        body = QWidget(self)
        column = QVBoxLayout(body)
        for group in (self.inputs, self.questions, self.drafting, self.heat, self.review, self.exports):
            column.addWidget(group.box)
        column.addStretch(1)
        scroll = QScrollArea(self)
        scroll.setWidgetResizable(True)
        # Wrap rather than scroll sideways: a dock is narrow, and sideways scrolling hides the buttons.
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        scroll.setWidget(body)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(scroll)

    def _wire(self) -> None:
        self.inputs.choose_weights.clicked.connect(self._choose_weights)
        self.inputs.use_demo.clicked.connect(lambda: self.set_weights_dir(None))
        self.inputs.preset.currentTextChanged.connect(self._apply_preset)
        self.drafting.draft.clicked.connect(lambda: self.draft())
        self.drafting.cancel.clicked.connect(self.cancel)
        self.heat.show.toggled.connect(self._sync_heatmap)
        self.heat.opacity.valueChanged.connect(self._sync_heatmap)
        self.reviews.status.connect(self._on_review_status)
        self.reviews.failed.connect(self._show_error)
        self.reviews.recorded.connect(self.reviewed)
        self.runner.succeeded.connect(self._on_succeeded)
        self.runner.failed.connect(self._show_error)
        self.runner.finished.connect(self._on_runner_finished)
        for keys, slot in (
            ("Ctrl+Shift+D", self.draft),
            ("Ctrl+Shift+A", self.accept),
            ("Ctrl+Shift+R", self.reject),
        ):
            shortcut = QShortcut(QKeySequence(keys), self)
            shortcut.activated.connect(functools.partial(_call, slot))
        events = self.viewer.layers.events
        for emitter in (events.inserted, events.removed, events.moved):
            emitter.connect(self._refresh_layers)
            # Weak, so this list (held by the `destroyed` slot) cannot keep the widget or viewer alive.
            self._connections.append((emitter, weakref.WeakMethod(self._refresh_layers)))
        # Qt deletes the widget with its dock; drop the viewer's references to it at the same time.
        self.destroyed.connect(functools.partial(_disconnect_all, self._connections))

    # ---- scripting API -------------------------------------------------------------------------------

    @property
    def weights_dir(self) -> Path | None:
        """The checkpoint folder; ``None`` means the bundled demo model."""
        return self._weights_dir

    @weights_dir.setter
    def weights_dir(self, folder: str | Path | None) -> None:
        self.set_weights_dir(folder)

    @property
    def review_dir(self) -> Path:
        """The (shared, append-only) reviews folder; default ``./reviews``."""
        return self.reviews.review_dir

    @review_dir.setter
    def review_dir(self, folder: str | Path) -> None:
        self.reviews.review_dir = folder

    @property
    def report_text(self) -> str:
        return self.review.editor.toPlainText()

    @report_text.setter
    def report_text(self, text: str) -> None:
        self.review.editor.setPlainText(text)

    @property
    def heatmap_layer(self) -> Any:
        """The heatmap image layer of the last draft, or ``None``."""
        layer = self._heatmap_layer
        return layer if layer is not None and layer in self.viewer.layers else None

    @property
    def last_draft(self) -> Any:
        """The last completed (not cancelled) ``engine.draft.Draft``, or ``None``."""
        return self._last_draft

    @property
    def last_review(self) -> Any:
        """The ``engine.review.ReviewRecord`` of the last decision on the current draft, or ``None``."""
        return self.reviews.last_review

    @property
    def busy(self) -> bool:
        return self.runner.busy

    def set_weights_dir(self, folder: str | Path | None) -> None:
        """Use the checkpoint in ``folder`` (``None``: the bundled demo); the model loads at the next draft."""
        self._weights_dir = None if folder in (None, "") else Path(folder).expanduser()
        self.inputs.weights.setText("" if self._weights_dir is None else str(self._weights_dir))
        self.inputs.weights.setToolTip(self.inputs.weights.text() or "bundled demo model")
        warning = model_card_warning(self._weights_dir)
        self.inputs.demo_warning.setText(warning)
        self.inputs.demo_warning.setVisible(bool(warning))
        # Follow the checkpoint's default question unless the user wrote their own.
        question = default_question(self._weights_dir)
        current = self.questions.question.toPlainText().strip()
        if question and current in ("", self._question_default):
            self.questions.question.setPlainText(question)
        self._question_default = question or self._question_default

    def draft(self, wait: bool = False) -> Any:
        """Draft a report for the selected CT layer in a worker thread.

        With ``wait=True`` block until the draft is done while processing Qt events (napari stays live),
        and return it (``None`` on error or cancel).
        """
        if self.runner.busy:
            return self._show_error("a draft is already running; cancel it first")
        layer = self._selected_layer()
        if layer is None:
            return self._show_error(
                "no CT image layer: open a CT (File ▸ Open) or load the phantom sample first"
            )
        self._start_draft(layer)
        if wait:
            self.runner.wait()
            return self._last_draft
        return None

    def cancel(self) -> None:
        """Ask the running draft to stop (at the next stage or token)."""
        if self.runner.cancel():
            self.drafting.status.setText("cancelling…")

    def accept(self) -> Any:
        """Record ``accepted`` (report unchanged) or ``edited`` (report changed); returns the record."""
        return self.reviews.accept()

    def reject(self) -> Any:
        """Record ``rejected``, with the corrected text when one was written, else the draft text."""
        return self.reviews.reject()

    def export(self, kind: str, path: str | Path) -> Path | None:
        """Write the reviewed report as ``text``, ``json`` or ``sr`` (DICOM SR, verified once accepted)."""
        return self.reviews.export(kind, path)

    # ---- drafting ------------------------------------------------------------------------------------

    def _start_draft(self, layer: Any) -> None:
        q = self.questions
        seed = q.seed.value()
        sampling = {
            "do_sample": q.mode.currentText() == "sample",
            "temperature": q.temperature.value(),
            "top_p": q.top_p.value(),
            "seed": None if seed < 0 else seed,
        }
        # Snapshot the layer on the GUI thread; the worker reads only the snapshot's plain attributes.
        snapshot = SimpleNamespace(
            name=layer.name,
            data=layer.data,
            metadata=dict(layer.metadata),
            scale=tuple(layer.scale),
            translate=tuple(layer.translate),
            multiscale=layer.multiscale,
            rgb=layer.rgb,
        )
        request = DraftRequest(
            weights_dir=self._weights_dir,
            question=q.question.toPlainText().strip(),
            max_new_tokens=q.max_new_tokens.value(),
            sampling=sampling,
            load_volume=functools.partial(volume_from_layer, snapshot),
        )
        self._draft_layer = layer
        self._last_draft = None
        self.reviews.set_draft(None, None)
        self._clear_error()
        self._show_status(f"drafting with {self._weights_dir or 'the bundled demo model'}…")
        self._set_running(True)
        self.runner.start(request)

    def _on_succeeded(self, draft: Any, volume: Any) -> None:
        self._last_draft = draft
        self.review.editor.setPlainText(format_report(draft.text))
        self.reviews.set_draft(draft, volume)
        self._show_heatmap(draft, volume)
        t = draft.timings
        steps = " · ".join(
            f"{k} {t[k]:.2f} s" for k in ("load", "prepare", "encode", "prefill", "decode") if k in t
        )
        self._show_status(
            f"{draft.model_id} ({draft.weights_hash}) · {draft.n_tokens} tokens · {steps}"
            f" · {t.get('tokens_per_s', 0.0):.1f} tok/s"
        )

    def _on_runner_finished(self) -> None:
        self._set_running(False)
        # Announced only now, when the widget is idle again, so listeners may review or draft at once.
        if self._last_draft is not None:
            self.draft_finished.emit(self._last_draft)

    def _show_heatmap(self, draft: Any, volume: Any) -> None:
        ct = self._draft_layer
        kwargs = heatmap_kwargs(ct, HEATMAP_LABEL, opacity=self.heat.opacity.value() / 100)
        # Draft.to_json() deep-copies the arrays first (tens of ms); the layer needs only the identity.
        identity = {k: getattr(draft, k) for k in ("model_id", "weights_hash", "fingerprint", "case_id")}
        metadata = {HEATMAP_KEY: identity | {"label": HEATMAP_LABEL}, VOLUME_KEY: volume}
        layer = self.heatmap_layer
        if layer is None:
            kwargs |= {"visible": self.heat.show.isChecked(), "metadata": metadata}
            self._heatmap_layer = self.viewer.add_image(draft.heatmap, **kwargs)
        else:
            # Reuse the layer: creating one costs napari ~0.2-0.5 s of GUI time (controls, vispy
            # nodes, relayout), swapping its data re-uploads one slice.
            layer.metadata = metadata
            for key in ("scale", "translate", "rotate"):
                if np.shape(getattr(layer, key)) != np.shape(kwargs[key]) or not np.allclose(
                    getattr(layer, key), kwargs[key]
                ):
                    setattr(layer, key, kwargs[key])
            layer.data = draft.heatmap
        self.heat.box.setEnabled(True)
        # Adding a layer selects it; keep the CT active so its contrast controls stay in front.
        if ct in self.viewer.layers:
            self.viewer.layers.selection.active = ct

    def _sync_heatmap(self, *_: Any) -> None:
        layer = self.heatmap_layer
        if layer is not None:
            layer.visible = self.heat.show.isChecked()
            layer.opacity = self.heat.opacity.value() / 100

    # ---- small handlers ------------------------------------------------------------------------------

    def _set_running(self, running: bool) -> None:
        self.drafting.draft.setEnabled(not running)
        self.drafting.cancel.setEnabled(running)
        self.inputs.choose_weights.setEnabled(not running)
        self.inputs.use_demo.setEnabled(not running)
        self.reviews.set_busy(running)

    def _selected_layer(self) -> Any:
        name = self.inputs.layer.currentText()
        return self.viewer.layers[name] if name and name in self.viewer.layers else None

    def _refresh_layers(self, *_: Any) -> None:
        from napari.layers import Image

        combo = self.inputs.layer
        current = combo.currentText()
        names = [
            layer.name
            for layer in self.viewer.layers
            if isinstance(layer, Image) and layer.ndim == 3 and HEATMAP_KEY not in layer.metadata
        ]
        combo.blockSignals(True)
        combo.clear()
        combo.addItems(names)
        # Keep the user's choice; else the newest CT, which is what was just opened.
        combo.setCurrentText(current if current in names else (names[-1] if names else ""))
        combo.blockSignals(False)

    def _apply_preset(self, preset: str) -> None:
        layer = self._selected_layer()
        if layer is not None and preset in CT_PRESETS:
            layer.contrast_limits = contrast_limits(preset)

    def _choose_weights(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Mu2 checkpoint folder", str(self._weights_dir or ""))
        if folder:
            self.set_weights_dir(folder)

    def _on_review_status(self, text: str) -> None:
        self._clear_error()
        self._show_status(text)

    def _show_status(self, text: str) -> None:
        self.drafting.status.setText(text)

    def _show_error(self, message: str) -> None:
        self.drafting.error.setText(message)
        self.drafting.error.setVisible(True)
        log.warning("%s", message)
        self.error.emit(message)

    def _clear_error(self) -> None:
        self.drafting.error.clear()
        self.drafting.error.setVisible(False)

    def closeEvent(self, event: Any) -> None:  # noqa: N802 - Qt override
        self.cancel()
        _disconnect_all(self._connections)
        super().closeEvent(event)


def _call(slot: Any) -> None:
    # QShortcut.activated passes nothing, but a bound method given straight to connect() gets `False`.
    slot()


def _disconnect_all(connections: list[tuple[Any, weakref.WeakMethod]], *_: Any) -> None:
    while connections:
        emitter, ref = connections.pop()
        callback = ref()
        if callback is None:
            continue
        try:
            emitter.disconnect(callback)
        except (RuntimeError, ValueError, TypeError):  # already gone with the viewer
            pass
