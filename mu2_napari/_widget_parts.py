"""Builders of the Mu2 widget's sections: each returns its ``QGroupBox`` and the controls in it.

Only layout lives here; ``_widget.Mu2Widget`` wires the controls to the engine.
"""

from __future__ import annotations

from dataclasses import dataclass

from qtpy.QtCore import Qt
from qtpy.QtGui import QFont
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QSlider,
    QSpinBox,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from mu2_napari.layers import CT_PRESETS, DEFAULT_PRESET

WARNING_STYLE = "color: #e8a33d;"
ERROR_STYLE = "color: #ff6b6b;"


def _wrap_label(text: str = "", style: str = "") -> QLabel:
    label = QLabel(text)
    label.setWordWrap(True)
    label.setTextInteractionFlags(Qt.TextSelectableByMouse)
    if style:
        label.setStyleSheet(style)
    return label


def _row(*widgets: QWidget) -> QHBoxLayout:
    row = QHBoxLayout()
    row.setContentsMargins(0, 0, 0, 0)
    for w in widgets:
        row.addWidget(w)
    return row


@dataclass
class InputParts:
    box: QGroupBox
    layer: QComboBox
    preset: QComboBox
    weights: QLineEdit
    choose_weights: QPushButton
    use_demo: QPushButton
    demo_warning: QLabel


def build_input_group(parent: QWidget) -> InputParts:
    """CT layer, contrast preset and checkpoint folder."""
    box = QGroupBox("CT and model", parent)
    form = QFormLayout(box)
    layer = QComboBox(box)
    layer.setToolTip("The CT image layer to draft a report for")
    # Long layer names must not widen the dock: the combo elides instead.
    layer.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
    layer.setMinimumContentsLength(12)
    preset = QComboBox(box)
    preset.addItems(list(CT_PRESETS))
    preset.setCurrentText(DEFAULT_PRESET)
    preset.setToolTip("CT window (level/width) applied to the selected layer")
    weights = QLineEdit(box)
    weights.setReadOnly(True)
    weights.setPlaceholderText("bundled demo model")
    choose = QPushButton("Choose…", box)
    choose.setToolTip("Choose a Mu2 checkpoint folder (config.json + safetensors)")
    demo = QPushButton("Demo", box)
    demo.setToolTip("Use the bundled demo model")
    warning = _wrap_label(style=WARNING_STYLE)
    warning.setVisible(False)
    form.addRow("Image", layer)
    form.addRow("Window", preset)
    form.addRow("Model", _row(weights, choose, demo))
    form.addRow(warning)
    return InputParts(box, layer, preset, weights, choose, demo, warning)


@dataclass
class QuestionParts:
    box: QGroupBox
    question: QPlainTextEdit
    toggle: QToolButton
    advanced: QWidget
    mode: QComboBox
    temperature: QDoubleSpinBox
    top_p: QDoubleSpinBox
    max_new_tokens: QSpinBox
    seed: QSpinBox


def build_question_group(parent: QWidget) -> QuestionParts:
    """The question to the model and, folded away, the sampling settings."""
    box = QGroupBox("Question", parent)
    layout = QVBoxLayout(box)
    question = QPlainTextEdit(box)
    question.setMaximumHeight(60)
    question.setPlaceholderText("the checkpoint's default question")
    question.setToolTip("What the model is asked; the checkpoint's default question to start with")
    toggle = QToolButton(box)
    toggle.setText("Advanced sampling")
    toggle.setCheckable(True)
    toggle.setToolButtonStyle(Qt.ToolButtonTextBesideIcon)
    toggle.setArrowType(Qt.RightArrow)
    advanced = QWidget(box)
    form = QFormLayout(advanced)
    form.setContentsMargins(0, 0, 0, 0)
    mode = QComboBox(advanced)
    mode.addItems(["greedy", "sample"])
    temperature = QDoubleSpinBox(advanced)
    temperature.setRange(0.05, 2.0)
    temperature.setSingleStep(0.05)
    temperature.setValue(1.0)
    top_p = QDoubleSpinBox(advanced)
    top_p.setRange(0.05, 1.0)
    top_p.setSingleStep(0.05)
    top_p.setValue(1.0)
    max_new = QSpinBox(advanced)
    max_new.setRange(1, 4096)
    max_new.setValue(256)
    seed = QSpinBox(advanced)
    seed.setRange(-1, 2**31 - 1)
    seed.setValue(-1)
    seed.setSpecialValueText("none")  # -1 shows as "none": no fixed seed
    form.addRow("Decoding", mode)
    form.addRow("Temperature", temperature)
    form.addRow("Top-p", top_p)
    form.addRow("Max new tokens", max_new)
    form.addRow("Seed", seed)
    advanced.setVisible(False)

    def _fold(open_: bool) -> None:
        advanced.setVisible(open_)
        toggle.setArrowType(Qt.DownArrow if open_ else Qt.RightArrow)

    def _sampling_enabled(text: str) -> None:
        for w in (temperature, top_p):
            w.setEnabled(text == "sample")

    toggle.toggled.connect(_fold)
    mode.currentTextChanged.connect(_sampling_enabled)
    _sampling_enabled(mode.currentText())
    layout.addWidget(question)
    layout.addWidget(toggle)
    layout.addWidget(advanced)
    return QuestionParts(box, question, toggle, advanced, mode, temperature, top_p, max_new, seed)


@dataclass
class DraftParts:
    box: QGroupBox
    draft: QPushButton
    cancel: QPushButton
    progress: QProgressBar
    status: QLabel
    error: QLabel


def build_draft_group(parent: QWidget) -> DraftParts:
    """Draft / Cancel, the progress bar, the status (timings, model id) and the error line."""
    box = QGroupBox("Draft", parent)
    layout = QVBoxLayout(box)
    draft = QPushButton("Draft", box)
    draft.setToolTip("Draft a report for the selected CT (Ctrl+Shift+D)")
    cancel = QPushButton("Cancel", box)
    cancel.setEnabled(False)
    progress = QProgressBar(box)
    progress.setRange(0, 1)
    progress.setValue(0)
    progress.setTextVisible(True)
    progress.setFormat("idle")
    status = _wrap_label()
    error = _wrap_label(style=ERROR_STYLE)
    error.setVisible(False)
    layout.addLayout(_row(draft, cancel))
    layout.addWidget(progress)
    layout.addWidget(status)
    layout.addWidget(error)
    return DraftParts(box, draft, cancel, progress, status, error)


@dataclass
class HeatmapParts:
    box: QGroupBox
    show: QCheckBox
    opacity: QSlider


def build_heatmap_group(parent: QWidget, title: str) -> HeatmapParts:
    """Show/hide and opacity of the token-selection heatmap."""
    box = QGroupBox(title, parent)
    box.setToolTip("Where the visual tokens the model used came from — not a disease-location map")
    show = QCheckBox("Show", box)
    show.setChecked(True)
    opacity = QSlider(Qt.Horizontal, box)
    opacity.setRange(0, 100)
    opacity.setValue(50)
    opacity.setToolTip("Heatmap opacity")
    layout = QHBoxLayout(box)
    layout.addWidget(show)
    layout.addWidget(QLabel("Opacity", box))
    layout.addWidget(opacity)
    box.setEnabled(False)
    return HeatmapParts(box, show, opacity)


@dataclass
class ReviewParts:
    box: QGroupBox
    editor: QPlainTextEdit
    reviewer: QLineEdit
    comment: QLineEdit
    accept: QPushButton
    reject: QPushButton
    folder: QLineEdit
    choose_folder: QPushButton


def build_review_group(parent: QWidget) -> ReviewParts:
    """The report editor and the review decision."""
    box = QGroupBox("Report review", parent)
    layout = QVBoxLayout(box)
    editor = QPlainTextEdit(box)
    editor.setPlaceholderText("FINDINGS: …\n\nIMPRESSION: …")
    editor.setMinimumHeight(160)
    editor.setFont(QFont("monospace"))
    reviewer = QLineEdit(box)
    reviewer.setPlaceholderText("pseudonymous reviewer id (optional)")
    comment = QLineEdit(box)
    comment.setPlaceholderText("comment (optional)")
    accept = QPushButton("Accept", box)
    accept.setToolTip("Record the report as accepted, or as edited if you changed it (Ctrl+Shift+A)")
    reject = QPushButton("Reject", box)
    reject.setToolTip(
        "Record the draft as rejected, with your corrected text if you wrote one (Ctrl+Shift+R)"
    )
    for b in (accept, reject):
        b.setEnabled(False)
    folder = QLineEdit(box)
    folder.setReadOnly(True)
    choose = QPushButton("Choose…", box)
    choose.setToolTip("Folder where reviews are recorded (shared, append-only)")
    form = QFormLayout()
    form.addRow("Reviewer", reviewer)
    form.addRow("Comment", comment)
    form.addRow("Reviews", _row(folder, choose))
    layout.addWidget(editor)
    layout.addLayout(form)
    layout.addLayout(_row(accept, reject))
    return ReviewParts(box, editor, reviewer, comment, accept, reject, folder, choose)


@dataclass
class ExportParts:
    box: QGroupBox
    text: QPushButton
    json: QPushButton
    sr: QPushButton


def build_export_group(parent: QWidget) -> ExportParts:
    """Export of the reviewed report."""
    box = QGroupBox("Export report", parent)
    text = QPushButton("Text…", box)
    as_json = QPushButton("JSON…", box)
    sr = QPushButton("DICOM SR…", box)
    sr.setToolTip("Structured report; marked unverified until the report is accepted")
    layout = QHBoxLayout(box)
    for b in (text, as_json, sr):
        b.setEnabled(False)
        layout.addWidget(b)
    return ExportParts(box, text, as_json, sr)
