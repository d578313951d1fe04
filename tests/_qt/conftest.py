"""Fixtures of the napari/Qt tests. Tests that need Qt skip cleanly when there is no display.

A QApplication on a machine without a display aborts the whole process (it does not raise), so the
skip has to happen before any Qt fixture is set up: run these under ``xvfb-run -a`` on a headless box.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

QT_FIXTURES = {"qtbot", "qapp", "make_napari_viewer", "make_napari_viewer_proxy", "viewer_widget"}
CT3 = "ct/dicom_edge_cases/dcmqi_ct3slice_with_seg"


def _have_display() -> bool:
    if os.environ.get("QT_QPA_PLATFORM", "") in ("offscreen", "minimal", "vnc"):
        return True
    if sys.platform.startswith("linux"):
        return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    return True


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    no_display = pytest.mark.skip(reason="no display: run GUI tests under `xvfb-run -a`")
    for item in items:
        if here not in Path(str(item.fspath)).parents:
            continue
        if QT_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.gui)
            if not _have_display():
                item.add_marker(no_display)


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight ``tiny`` checkpoint, made once per session (skips while the model is missing)."""
    try:
        from engine.assemble import new_checkpoint

        folder = tmp_path_factory.mktemp("ckpt") / "tiny"
        new_checkpoint("tiny", folder)
    except (ImportError, NotImplementedError) as err:
        pytest.skip(f"the engine cannot build a tiny checkpoint yet: {err}")
    return folder


@pytest.fixture
def ct3_dir(realdata: Path) -> Path:
    """A small real CT series: 3 slices of 512x512 (plus a SEG object the loader must skip)."""
    folder = realdata / CT3
    if not folder.is_dir():
        pytest.skip(f"{folder} is not present")
    return folder


@pytest.fixture
def viewer_widget(make_napari_viewer, tiny_ckpt: Path, tmp_path: Path):
    """A napari viewer with ``Mu2Widget`` docked, the tiny checkpoint chosen and reviews under tmp_path."""
    from mu2_napari import Mu2Widget

    viewer = make_napari_viewer()
    widget = Mu2Widget(viewer)
    viewer.window.add_dock_widget(widget, name="Mu2 report")
    widget.weights_dir = tiny_ckpt
    widget.review_dir = tmp_path / "reviews"
    # Keep tiny drafts short so the suite stays fast.
    widget.questions.max_new_tokens.setValue(24)
    return viewer, widget
